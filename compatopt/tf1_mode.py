"""Which TF1 execution mode's arithmetic compatopt reproduces: ``"graph"`` (default) or
``"eager"``.

TF1's fused kernels (``ApplyAdam``, ``SparseApplyAdagrad`` ...) give the same bits in both
modes. The arithmetic TF1 composes in Python does not: in graph mode (``Session``, and
``tf.function``) Grappler rewrites it before it runs (spec §1.6: ``x / C`` becomes
``x * (1/C)``, constants are pushed down ``(g*g) * C -> g * (g*C)`` ...), while eager mode
runs it op by op. That concerns sparse Adam's moments and the learning-rate decay functions.

A ported program that built a graph and ran it in a ``Session`` (``tf.compat.v1`` with
eager execution disabled, the usual TF1 script) needs ``"graph"``; one that ran eagerly
(TF2 with ``tf.compat.v1.train`` optimizers, no ``Session``) needs ``"eager"``::

    import compatopt as co
    co.set_tf1_mode("eager")            # for the whole program, or
    with co.tf1_mode("eager"):          # for what is built / traced inside
        ...

The mode is read when a rule's step or a schedule's value is computed (at trace time under
``jit``): set it before the first step. It is per process, not per thread.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Literal

Mode = Literal["graph", "eager"]
MODES = ("graph", "eager")
_mode: list = ["graph"]


def get_tf1_mode() -> Mode:
    """The current mode, ``"graph"`` or ``"eager"``."""
    return _mode[0]


def set_tf1_mode(mode: Mode) -> None:
    """Reproduce TF1 ``mode``'s arithmetic from now on (``ValueError`` for another name)."""
    if mode not in MODES:
        raise ValueError(f"tf1 mode must be one of {MODES}, got {mode!r}")
    _mode[0] = mode


@contextlib.contextmanager
def tf1_mode(mode: Mode) -> Iterator[None]:
    """``with tf1_mode("eager"):`` the given mode inside the block, the previous one after."""
    previous = get_tf1_mode()
    set_tf1_mode(mode)
    try:
        yield
    finally:
        _mode[0] = previous


def graph_mode() -> bool:
    """Whether TF1 graph mode's (Grappler-rewritten) arithmetic is to be reproduced."""
    return _mode[0] == "graph"
