"""Lifting :class:`~compatopt.Variable`\\ s into and out of traced functions: one helper each way.

Every place that turns stateful shim code into a pure JAX function does the same two things,
and does them here:

* **tracing side** — :func:`call_lifted` runs the user's code with chosen variables reading
  as given values (the traced arguments of ``jax.jit``, ``jax.vjp`` or ``jax.shard_map``) in
  a capturing frame, so ``assign`` lands in the result instead of the variable, and reports
  what the code read and wrote. :func:`flatten_output` turns the code's result into
  leaves, with Variables read and ``Operation``\\ s marked. Used by ``compatopt.function``,
  ``compatopt.train.shard_map`` and the gradients of ``compute_gradients``.
* **calling side** (the step driver) — :func:`lift_in` hands a compiled step the variables'
  buffers (donatable ones for the variables it writes) and :func:`lift_out` stores its
  results back; nested inside another lifted function both go through the enclosing frame.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, List, NamedTuple, Optional, Sequence, Tuple

import jax

from compatopt.train._operation import Operation
from compatopt.train._variable import Frame, Variable, active_frames, locked


class Lifted(NamedTuple):
    """What one lifted call of user code did.

    Attributes:
      out: the code's return value, unchanged.
      written: variables it assigned, in first-write order.
      written_values: their final values (traced inside a trace).
      reads: variables whose value it read (``v.value``, operators), first-read order.
      all_reads: ``reads`` plus reads of variables being written or overridden.
    """

    out: Any
    written: List[Variable]
    written_values: List[Any]
    reads: List[Variable]
    all_reads: List[Variable]


def call_lifted(fn: Callable, variables: Sequence[Variable], values: Sequence[Any], *args: Any,
                sparse_read_hook: Optional[Callable] = None, **kwargs: Any) -> Lifted:
    """Runs ``fn(*args, **kwargs)`` with ``variables`` reading as ``values``, writes captured.

    Nothing is stored into any variable: the writes come back in the result. A variable not
    in ``variables`` reads as its enclosing frame's value, or its stored one.
    """
    with Frame(overrides=dict(zip(variables, values)), capture=True) as frame:
        frame.sparse_read_hook = sparse_read_hook
        out = fn(*args, **kwargs)
    written = list(frame.writes)
    return Lifted(out, written, [frame.overrides[v] for v in written], list(frame.reads),
                  list(frame.all_reads))


def is_operation(x: Any) -> bool:
    return isinstance(x, Operation)


def flatten_output(out: Any, with_loss: bool = False) -> Tuple[list, Any, List[int]]:
    """``(leaves, treedef, operation_positions)`` of a step's result.

    Variables in the result are read (their value is the leaf); ``Operation``\\ s (what
    ``minimize`` returns) are leaves too, marked by position and set to ``None`` (or, with
    ``with_loss``, to the op's ``loss``, so the compiled step returns it), since they are
    not values a traced function can return.
    """
    leaves, tree = jax.tree_util.tree_flatten(
        out, is_leaf=lambda x: isinstance(x, Variable) or is_operation(x))
    positions = [i for i, x in enumerate(leaves) if is_operation(x)]
    values = [(x.loss if with_loss else None) if is_operation(x)
              else (x.value if isinstance(x, Variable) else x) for x in leaves]
    return values, tree, positions


def nested() -> bool:
    """True inside another lifted call (a compiled step called from a traced one)."""
    return bool(active_frames())


def locked_at_top_level(variables: Sequence[Variable]) -> Any:
    """The variables' locks for a step run at top level; nothing inside a lifted call (a
    trace stores nothing, and the outer step already holds what it lifts)."""
    return contextlib.nullcontext() if nested() else locked(variables)


def lift_in(variables: Sequence[Variable], donate: bool) -> list:
    """The values a compiled step receives for ``variables``.

    Top level: the stored buffers, donatable copies where ``donate`` (the step writes them).
    Nested: the enclosing frame's values (reads are recorded there).
    """
    if nested():
        return [v.value for v in variables]
    if donate:
        return [v.donatable_buffer() for v in variables]
    return [v.buffer for v in variables]


def lift_out(variables: Sequence[Variable], values: Sequence[Any], owned: bool) -> None:
    """Stores a compiled step's new values into ``variables``.

    Top level with ``owned`` (fresh outputs of a donated step): adopted as the variables'
    buffers, donatable next time. Otherwise assigned, so a nested call's writes land in the
    enclosing frame and a top-level one is checked as ``assign`` checks.
    """
    if owned and not nested():
        for v, value in zip(variables, values):
            v.adopt_buffer(value)
        return
    for v, value in zip(variables, values):
        v.assign(value)


def rebuild_output(tree: Any, values: Sequence[Any], op_positions: Sequence[int],
                   make_operation: Callable[[Any], Operation]) -> Any:
    """The step's result again, with an ``Operation`` from ``make_operation(value)`` at each
    marked position (``value``: what :func:`flatten_output` put there)."""
    leaves = list(values)
    for i in op_positions:
        leaves[i] = make_operation(leaves[i])
    return jax.tree_util.tree_unflatten(tree, leaves)
