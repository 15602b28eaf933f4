"""Packed storage: Variables of one dtype kept as slices of one flat buffer.

A :class:`Pack` owns one 1-D buffer that holds its member variables back to back (tree of
offsets fixed at packing time). Nothing changes for the members' users: ``w.value`` outside
a step is a copy of ``w``'s slice, ``w.assign(x)`` is kept aside and written back into the
buffer before the next compiled step, shapes, dtypes, names, slots and checkpoints are the
variables' own. What changes is the compiled step (:func:`compatopt.function`):

* it lifts a pack as **one** donated argument instead of one per member, and each member
  reads as ``dynamic_slice(buffer, offset_i)`` where ``offset_i`` comes out of a
  ``lax.cond`` XLA cannot decide, so all members of one shape share one XLA computation
  (constant offsets would make one kernel per variable: minutes of LLVM time at thousands
  of variables);
* a built-in optimizer whose variables fill a pack and whose slots fill packs of the same
  layout runs its rule **once** over the flat buffers (``concat`` of the gradients, the
  dense kernel over ``P``, ``M``, ``V``...) instead of once per variable. Every dense kernel
  is elementwise with scalar hyper-parameters, so each element sees the same operations in
  the same order: the bits are the per-variable path's (tests/train/test_packing.py);
* members written one by one (sparse rows, a custom ``_apply_dense``, ``assign`` in the
  step) are written back with ``dynamic_update_slice`` at the same opaque offsets.

Packing policy (:func:`plan_units`, at a compiled step's first call): among the variables
the step *writes* that are not packed yet, the trainable ones of one (dtype, placement) that
were never read sparsely form a pack in creation order, and each slot family of theirs
(``m`` of one optimizer, ``v``...) whose members are all written forms a pack of the same
layout. Scalars and groups of one stay as they are; so do variables on a sharded layout.
``compatopt.function(fn, pack_variables=False)`` turns packing off for one step.
"""

from __future__ import annotations

import threading
from typing import Any, Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from compatopt import _multi_tensor, _numerics
from compatopt.train._variable import Variable, active_frames, locked

_MAX_PACK = (1 << 31) - 1  # int32 offsets


# --------------------------------------------------------------------- compiled views

def _slice_fn(size: int, shape: tuple):
    def view(buf, offset):
        return lax.reshape(lax.dynamic_slice(buf, (offset,), (size,)), shape)
    return view


_eager_views: Dict[Tuple[int, tuple], Any] = {}
_cache_lock = threading.Lock()


def _eager_view(size: int, shape: tuple):
    key = (size, shape)
    fn = _eager_views.get(key)
    if fn is None:
        with _cache_lock:
            fn = _eager_views.setdefault(key, jax.jit(_slice_fn(size, shape)))
    return fn


def _write_fn(buf, value, offset):
    return lax.dynamic_update_slice(buf, lax.reshape(value, (value.size,)), (offset,))


_eager_write = jax.jit(_write_fn, donate_argnums=(0,))


def opaque_offsets(offsets: Sequence[int], zero: jax.Array) -> tuple:
    """``offsets`` as traced int32 scalars XLA cannot fold (``zero`` is a runtime 0): the
    multi-tensor layout's ``lax.cond`` trick."""
    return _multi_tensor._opaque_offsets(tuple(offsets), zero)


class Pack:
    """One flat buffer holding ``members`` (Variables of one dtype and placement).

    Attributes:
      members: the variables, in buffer order; ``index[v]`` is ``v``'s position.
      shapes, sizes, offsets: each member's shape, element count and start in the buffer.
      alive: False once :meth:`dissolve` gave every member its own buffer back.
    """

    def __init__(self, members: Sequence[Variable]) -> None:
        self.members = tuple(members)
        self.index = {v: i for i, v in enumerate(self.members)}
        self.shapes = tuple(v.shape for v in self.members)
        self.sizes = tuple(int(np.prod(s, dtype=np.int64)) for s in self.shapes)
        self.offsets = tuple(int(o) for o in np.cumsum((0,) + self.sizes[:-1]))
        self.dtype = self.members[0].dtype
        self.alive = True
        values = [v._own for v in self.members]
        sharding = getattr(values[0], "sharding", None)
        host = np.concatenate([np.asarray(x).reshape(-1) for x in values])
        self._buffer: jax.Array = (jax.device_put(host, sharding) if sharding is not None
                                   else jnp.asarray(host))
        self._views: Dict[int, jax.Array] = {}
        self._detached: Dict[int, jax.Array] = {}  # eager writes not yet in the buffer
        for v in self.members:
            v._pack, v._own = self, None

    @property
    def total(self) -> int:
        return int(sum(self.sizes))

    def __repr__(self) -> str:
        return (f"<Pack {self.dtype.name}[{self.total}] of {len(self.members)} variables "
                f"({self.members[0].op.name}, ...)>")

    # -- eager access (the members' stored values)
    def read(self, var: Variable) -> jax.Array:
        """``var``'s stored value: its slice of the buffer (a copy, cached) or its pending
        eager write."""
        i = self.index[var]
        value = self._detached.get(i)
        if value is not None:
            return value
        value = self._views.get(i)
        if value is None:
            value = _eager_view(self.sizes[i], self.shapes[i])(self._buffer,
                                                                np.int32(self.offsets[i]))
            self._views[i] = value
        return value

    def write(self, var: Variable, value: jax.Array) -> None:
        """Stores ``value`` for ``var`` (written into the buffer before the next step)."""
        i = self.index[var]
        self._detached[i] = value
        self._views.pop(i, None)

    def sync(self) -> None:
        """Writes pending eager writes into the buffer (in place: the buffer is donated)."""
        if not self._detached:
            return
        if len(self._detached) > 8:  # a restore: one host pass instead of many dispatches
            host = np.array(self._buffer)
            for i, value in self._detached.items():
                start = self.offsets[i]
                host[start:start + self.sizes[i]] = np.asarray(value).reshape(-1)
            self._buffer = jax.device_put(host, self._buffer.sharding)
        else:
            for i, value in self._detached.items():
                self._buffer = _eager_write(self._buffer, value, np.int32(self.offsets[i]))
        self._detached.clear()
        self._views.clear()

    def buffer(self) -> jax.Array:
        """The flat buffer, up to date; nothing else holds it (member reads are copies), so
        a compiled step may donate it."""
        self.sync()
        return self._buffer

    def adopt(self, buffer: jax.Array) -> None:
        """Stores a compiled step's new buffer."""
        self._buffer = buffer
        self._views.clear()
        self._detached.clear()

    def dissolve(self) -> None:
        """Gives every member its own buffer again (for per-variable placement)."""
        if not self.alive:
            return
        values = [self.read(v) for v in self.members]
        for v, value in zip(self.members, values):
            v._pack, v._own = None, value
        self.alive = False
        self._views.clear()
        self._detached.clear()


# ------------------------------------------------------------------ traced pack values

class PackValue:
    """A pack's buffer inside a trace, with its opaque offsets and cached member views."""

    __slots__ = ("pack", "buffer", "offsets", "_views")

    def __init__(self, pack: Pack, buffer: jax.Array, offsets: tuple) -> None:
        self.pack, self.buffer, self.offsets = pack, buffer, offsets
        self._views: Dict[int, jax.Array] = {}

    def view(self, var: Variable) -> jax.Array:
        i = self.pack.index[var]
        value = self._views.get(i)
        if value is None:
            pack = self.pack
            value = _slice_fn(pack.sizes[i], pack.shapes[i])(self.buffer, self.offsets[i])
            self._views[i] = value
        return value

    def replaced(self, buffer: jax.Array) -> "PackValue":
        return PackValue(self.pack, buffer, self.offsets)

    def with_member_writes(self, written: Dict[Variable, jax.Array]) -> jax.Array:
        """The buffer with ``written`` members' values stored at their offsets."""
        buf = self.buffer
        for var, value in written.items():
            buf = _write_fn(buf, value, self.offsets[self.pack.index[var]])
        return buf


def pack_value(pack: Pack) -> Optional[PackValue]:
    """The pack's current traced value, if the innermost frames hold it whole: no frame
    between here and the one lifting the pack has written a member on its own."""
    for frame in reversed(active_frames()):
        if any(v in frame.overrides for v in pack.members):
            return None
        value = frame.overrides.get(pack)
        if value is not None:
            return value
    return None


def write_pack(pack: Pack, buffer: jax.Array) -> None:
    """Writes a whole pack's new buffer into the innermost capturing frame (as ``assign`` of
    every member would, without slicing it into members)."""
    current = pack_value(pack)
    assert current is not None, "write_pack needs the pack's value in the current frames"
    for frame in reversed(active_frames()):
        for v in pack.members:
            frame.writes.setdefault(v, None)
        if frame.capture:
            for v in pack.members:
                frame.overrides.pop(v, None)
            frame.overrides[pack] = current.replaced(buffer)
            frame.pack_writes[pack] = None
            return
    raise RuntimeError("write_pack outside a capturing frame")


# ---------------------------------------------------------------------- the policy

def _placement_key(v: Variable) -> Optional[tuple]:
    """Where ``v`` lives, or None if it may not join a pack (sharded, traced)."""
    stored = v._own
    if stored is None or not _numerics.is_concrete(stored):
        return None
    sharding = getattr(stored, "sharding", None)
    if sharding is None:
        return ("host",)
    if not isinstance(sharding, jax.sharding.SingleDeviceSharding):
        return None  # on a mesh: stays per variable (its spec names the variable's rank)
    return (sharding,)


def _groups(variables: Sequence[Variable]) -> List[List[Variable]]:
    """``variables`` grouped by (dtype, placement), creation order, at most 2**31-1
    elements a group; groups of one dropped."""
    open_groups: Dict[tuple, list] = {}
    out: List[List[Variable]] = []
    for v in sorted(variables, key=lambda v: v._serial):
        if v.ndim == 0 or v._pack is not None:
            continue
        place = _placement_key(v)
        if place is None:
            continue
        key = (v.dtype, place)
        entry = open_groups.get(key)
        size = int(np.prod(v.shape, dtype=np.int64))
        if entry is None or entry[1] + size > _MAX_PACK:
            entry = open_groups[key] = [[], 0]
            out.append(entry[0])
        entry[0].append(v)
        entry[1] += size
    return [g for g in out if len(g) > 1]


def plan_units(written: Sequence[Variable], read_only: Sequence[Variable],
               pack_new: bool) -> Tuple[list, list]:
    """The storage units a compiled step lifts: ``(written_units, read_units)``.

    A unit is a :class:`Pack` (lifted whole; written if any member is) or an unpacked
    Variable. With ``pack_new``, variables of ``written`` that are not packed yet are packed
    as the module docstring says (holding their locks while their storage moves).
    """
    if pack_new:
        with locked([v for v in written if v._pack is None]):
            _pack_new(written)
    written_units = _units(written)
    taken = set(written_units)
    read_units = [u for u in _units(read_only) if u not in taken]
    return written_units, read_units


def _pack_new(written: Sequence[Variable]) -> None:
    primaries = [v for v in written if v._pack is None and v.trainable
                 and v._slot_of is None and not v._sparse_read_seen
                 and jnp.issubdtype(v.dtype, jnp.inexact)]
    slots_of: Dict[Variable, Dict[Any, Variable]] = {}
    for s in written:
        link = s._slot_of
        if link is not None and s._pack is None:
            slots_of.setdefault(link[0], {})[link[1]] = s
    for group in _groups(primaries):
        place = _placement_key(group[0])
        families = {f for v in group for f in slots_of.get(v, {})}
        layouts = []
        for family in sorted(families, key=repr):
            members = [slots_of.get(v, {}).get(family) for v in group]
            if all(s is not None and s.shape == v.shape and s.dtype == v.dtype
                   and _placement_key(s) == place for s, v in zip(members, group)):
                layouts.append(members)
        Pack(group)
        for members in layouts:
            Pack(members)


def _units(variables: Sequence[Variable]) -> list:
    units: Dict[Any, None] = {}
    for v in variables:
        pack = v._pack
        units.setdefault(pack if pack is not None else v, None)
    return list(units)


def unit_members(units: Sequence[Any]) -> List[Variable]:
    out: List[Variable] = []
    for u in units:
        out.extend(u.members if isinstance(u, Pack) else (u,))
    return out
