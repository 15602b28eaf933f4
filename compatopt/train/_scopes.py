"""The current name scope and variable scope (thread-local), read when a Variable is named.

TF1 keeps two prefixes: the *name scope* (``tf.name_scope``, also opened by
``variable_scope``), which prefixes ``tf.Variable`` names, and the *variable scope*, which
prefixes ``get_variable`` names and carries ``reuse``, a default initializer and dtype. This
module only holds the state; :mod:`compatopt.train.variable_scope` is the public API.
Variables the shim makes for itself (slots, the global step, loss-scale state) are named
absolutely, as TF1 names them, via :func:`absolute_names`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from typing import Any, Iterator, List, Optional


@dataclasses.dataclass
class ScopeState:
    """One entry of the scope stack.

    Attributes:
      name: the variable scope's full name (``""`` at the root), prefix of ``get_variable``.
      name_scope: the name scope's prefix (``""`` or ``"a/"``), prefix of Variable names.
      reuse: ``True``, ``False`` or the ``AUTO_REUSE`` marker.
      initializer, regularizer, dtype, constraint, custom_getter: the scope's defaults.
    """

    name: str = ""
    name_scope: str = ""
    reuse: Any = False
    initializer: Any = None
    regularizer: Any = None
    dtype: Any = None
    constraint: Any = None
    custom_getter: Any = None


_state = threading.local()


def _stack() -> List[ScopeState]:
    stack = getattr(_state, "stack", None)
    if stack is None:
        stack = _state.stack = [ScopeState()]
    return stack


def current() -> ScopeState:
    """The innermost scope of this thread."""
    return _stack()[-1]


@contextlib.contextmanager
def entered(scope: ScopeState) -> Iterator[ScopeState]:
    """``scope`` is the current one inside the block."""
    stack = _stack()
    stack.append(scope)
    try:
        yield scope
    finally:
        stack.pop()


@contextlib.contextmanager
def absolute_names() -> Iterator[None]:
    """Variables created inside are named without the current name scope."""
    depth = getattr(_state, "absolute", 0)
    _state.absolute = depth + 1
    try:
        yield
    finally:
        _state.absolute = depth


def prefixed(name: Optional[str]) -> str:
    """The name a ``Variable(name=...)`` gets before uniquification (TF1: name scope +
    name; ``Variable`` when none is given)."""
    base = name or "Variable"
    if getattr(_state, "absolute", 0):
        return base
    return current().name_scope + base
