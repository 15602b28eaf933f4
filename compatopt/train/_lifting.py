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
import threading
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import jax

from compatopt.train._operation import Operation
from compatopt.train._packing import write_pack
from compatopt.train._variable import Frame, Variable, active_frames, locked


class Lifted:
    """What one lifted call of user code did.

    Attributes:
      out: the code's return value, unchanged.
      written: variables it assigned, in first-write order (members of a pack it wrote
        whole included).
      written_values: their final values (traced inside a trace); computed when read.
      reads: variables whose value it read (``v.value``, operators), first-read order.
      all_reads: ``reads`` plus reads of variables being written or overridden.
      pack_writes: ``{pack: new buffer}`` for packs written whole (``_packing``).
    """

    __slots__ = ("out", "written", "reads", "all_reads", "frame")

    def __init__(self, out: Any, frame: Frame) -> None:
        self.out = out
        self.frame = frame
        self.written: List[Variable] = list(frame.writes)
        self.reads: List[Variable] = list(frame.reads)
        self.all_reads: List[Variable] = list(frame.all_reads)

    def value_of(self, var: Variable) -> Any:
        overrides = self.frame.overrides
        if var in overrides:
            return overrides[var]
        return overrides[var._pack].view(var)

    @property
    def written_values(self) -> List[Any]:
        return [self.value_of(v) for v in self.written]

    @property
    def pack_writes(self) -> Dict[Any, Any]:
        overrides = self.frame.overrides
        return {p: overrides[p].buffer for p in self.frame.pack_writes}

    def member_writes(self) -> List[Variable]:
        """``written`` less the members whose latest write was their pack's whole write."""
        overrides, packs = self.frame.overrides, self.frame.pack_writes
        return [v for v in self.written if v in overrides or v._pack not in packs]


def call_lifted(fn: Callable, variables: Sequence[Any], values: Sequence[Any], *args: Any,
                sparse_read_hook: Optional[Callable] = None, **kwargs: Any) -> Lifted:
    """Runs ``fn(*args, **kwargs)`` with ``variables`` reading as ``values``, writes captured.

    Nothing is stored into any variable: the writes come back in the result. A variable not
    in ``variables`` reads as its enclosing frame's value, or its stored one. ``variables``
    may hold packs (``_packing.Pack``) with ``_packing.PackValue`` values: their members
    read as slices of the traced buffer.
    """
    with Frame(overrides=dict(zip(variables, values)), capture=True) as frame:
        frame.sparse_read_hook = sparse_read_hook
        out = fn(*args, **kwargs)
    return Lifted(out, frame)


_discovery = threading.local()


@contextlib.contextmanager
def discovery_run():
    """Marks a run of user code whose values are thrown away (``compatopt.function``'s first,
    eager run, which only finds the variables a step reads and writes and creates its
    slots): code that would compile for speed (an optimizer's whole-apply ``jit``) runs
    op by op instead, since it runs once."""
    before = getattr(_discovery, "depth", 0)
    _discovery.depth = before + 1
    try:
        yield
    finally:
        _discovery.depth = before


def in_discovery_run() -> bool:
    """Inside :func:`discovery_run` on this thread."""
    return getattr(_discovery, "depth", 0) > 0


def commit(lifted: Lifted) -> None:
    """Stores a lifted call's writes where a plain call would have made them: the enclosing
    frame (packs written whole stay whole) or the variables."""
    for pack, buffer in lifted.pack_writes.items():
        write_pack(pack, buffer)
    members = lifted.member_writes()
    lift_out(members, [lifted.value_of(v) for v in members], owned=False)


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
