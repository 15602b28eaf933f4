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


class NotAVariableError(TypeError, ValueError, NotImplementedError, AttributeError):
    """Something other than a ``compatopt.Variable`` where an optimizer needs one (in
    ``var_list`` or as the target in ``grads_and_vars``).

    The seed's contract says ``TypeError``. TF1 is less regular (recorded in
    ``tests/fixtures/tf1/error_contract``): graph mode raises ``NotImplementedError``
    ("Trying to update a Tensor") for a tensor target, ``AttributeError`` ("... has no
    attribute 'op'") for other objects, ``ValueError`` ("No gradients provided") for a
    tensor in ``minimize``'s ``var_list``; eager raises ``ValueError`` ("Passed in object
    ... not tf.Tensor or tf.Variable"). Earlier compatopt raised ``NotImplementedError``.
    Every one of these ``except`` clauses catches it.
    """


class MalformedGradientsError(TypeError, ValueError):
    """A ``grads_and_vars`` entry that is not a ``(gradient, variable)`` pair, or a gradient
    that is not an array, an ``IndexedSlices`` or ``None``.

    The seed's contract says ``TypeError``; TF1 raises ``ValueError`` for a wrong-length
    entry (tuple unpacking) and, eagerly, for an unconvertible gradient: both catch it.
    """
