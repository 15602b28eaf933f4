"""Exception types with TF1's names.

TF1 raises ``tf.errors.InvalidArgumentError`` (an ``OpError``) from its kernels, for example
when a gradient's shape differs from its variable's or a sparse index is out of range.
compatopt raises the same names; they also derive from the Python exception a JAX user
would catch (``ValueError``), so both styles of ``except`` work.
"""

from __future__ import annotations


class OpError(Exception):
    """Base of the TF-style runtime errors (``tf.errors.OpError``)."""


class InvalidArgumentError(OpError, ValueError):
    """An argument has the wrong shape, value or range (``tf.errors.InvalidArgumentError``)."""


class NotFoundError(OpError, LookupError):
    """A named thing does not exist (``tf.errors.NotFoundError``)."""


class FailedPreconditionError(OpError, RuntimeError):
    """A variable was read before it was initialised (``tf.errors.FailedPreconditionError``)."""


class DataLossError(OpError, IOError):
    """A checkpoint file is truncated or corrupt (``tf.errors.DataLossError``)."""
