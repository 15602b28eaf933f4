"""``compatopt.function``: a whole training step as one XLA computation (TF's ``tf.function``).

On the first call with a new input signature the step runs once *eagerly* in a capturing
frame, which creates whatever it creates (slots, non-slot variables, the global step) and
records every :class:`~compatopt.Variable` it reads and writes, then discards the writes.
The step is then traced once under ``jax.jit``: the variables it writes are lifted in as
*donated* arguments and out as results, the variables it only reads are lifted in as plain
arguments, and the step's Python code (gradients, gradient processing, ``apply_gradients``,
``global_step += 1``) becomes one computation. Later calls with the same signature run that
computation directly: no Python, no retracing.

Signature: the tree structure of the arguments, shape and dtype of every array leaf, and the
value of every other leaf (Python numbers are static, as in ``tf.function``).

If a trace touches a variable the eager run did not (a data-dependent Python branch), it
is traced again with that variable lifted too.

Before the first trace the variables the step writes are packed (``_packing``): those of
one dtype live as slices of one flat buffer across steps, lifted as one argument, and a
built-in optimizer updates a whole pack with one kernel, with the per-variable path's bits.
"""

from __future__ import annotations

import functools
import threading
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from compatopt import _multi_tensor
from compatopt.train import _packing
from compatopt.train._lifting import (call_lifted, discovery_run, flatten_output,
                                      locked_at_top_level, nested, rebuild_output)
from compatopt.train._operation import Operation
from compatopt.train._variable import Variable


class _Retrace(Exception):
    pass


def _is_array(x: Any) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, np.generic))


def _signature(args: tuple, kwargs: dict):
    leaves, treedef = jax.tree_util.tree_flatten((args, kwargs))
    sig = []
    for leaf in leaves:
        if _is_array(leaf):
            sig.append(("array", tuple(np.shape(leaf)), jnp.dtype(leaf.dtype).name))
        elif isinstance(leaf, Variable):
            sig.append(("variable", id(leaf)))
        else:
            try:
                hash(leaf)
                sig.append(("static", type(leaf).__name__, leaf))
            except TypeError:
                sig.append(("object", id(leaf)))
    return treedef, tuple(sig)


class _Entry:
    """One traced signature: lifted variables, their storage units, the compiled function.

    ``written_units`` / ``read_units``: what the compiled step takes, each a pack
    (``_packing.Pack``, lifted whole) or a Variable; ``lock_vars``: every variable in them.
    """

    def __init__(self, written: list, read_only: list) -> None:
        self.written = written
        self.read_only = read_only
        self.written_units: list = []
        self.read_units: list = []
        self.lock_vars: list = []
        self.jitted: Optional[Callable] = None
        self.out_tree: Any = None
        self.op_positions: list = []

    def plan(self, pack: bool) -> None:
        self.written_units, self.read_units = _packing.plan_units(self.written, self.read_only,
                                                                  pack_new=pack)
        self.lock_vars = _packing.unit_members([*self.written_units, *self.read_units])

    def stale(self) -> bool:
        """A pack it lifts was dissolved, or a variable it lifts alone joined a pack."""
        return any((not u.alive) if isinstance(u, _packing.Pack) else u._pack is not None
                   for u in (*self.written_units, *self.read_units))


_zero_cell: list = []


def _runtime_zero() -> jax.Array:
    """An int32 0 passed to every step: the predicate behind the packs' opaque offsets."""
    if not _zero_cell:
        _zero_cell.append(jnp.zeros((), jnp.int32))
    return _zero_cell[0]


def _unit_values(units: list, values: list, zero: jax.Array) -> list:
    return [_packing.PackValue(u, x, _packing.opaque_offsets(u.offsets, zero))
            if isinstance(u, _packing.Pack) else x for u, x in zip(units, values)]


def _lift_in(units: list, donate: bool) -> list:
    """The values a compiled step receives for its units (see ``_lifting.lift_in``)."""
    if nested():
        out = []
        for u in units:
            if isinstance(u, _packing.Pack):
                current = _packing.pack_value(u)
                out.append(current.buffer if current is not None
                           else _multi_tensor._flatten([v.value for v in u.members]))
            else:
                out.append(u.value)
        return out
    return [u.buffer() if isinstance(u, _packing.Pack) else
            (u.donatable_buffer() if donate else u.buffer) for u in units]


def _committed(buffers: list, others: list) -> list:
    """``buffers`` committed to their device (the same memory, not a copy), when every
    array of the step (``buffers`` and ``others``) is on one and the same device.

    ``jax.jit`` keys its compiled code on whether each argument is committed: a step's
    outputs are, a variable's first value (``jnp`` arrays, packs, new slots) is not, so
    without this the second call of every step compiled it again. Across several devices an
    uncommitted scalar is what lets jit place it with the sharded arguments, so it stays so.
    Every later step's buffers are committed already: it returns at the first check.
    """
    if all(getattr(x, "committed", True) for x in buffers):
        return buffers
    devices = set()
    for x in (*buffers, *others):
        sharding = getattr(x, "sharding", None)
        if sharding is not None:
            devices |= set(sharding.device_set)
    if len(devices) != 1:
        return buffers
    return [x if getattr(x, "committed", True) else jax.device_put(x, x.sharding)
            for x in buffers]


def _lift_out(units: list, values: list) -> None:
    """Stores a compiled step's new unit values (see ``_lifting.lift_out``)."""
    if not nested():
        for u, x in zip(units, values):
            if isinstance(u, _packing.Pack):
                u.adopt(x)
            else:
                u.adopt_buffer(x)
        return
    for u, x in zip(units, values):
        if not isinstance(u, _packing.Pack):
            u.assign(x)
        elif _packing.pack_value(u) is not None:
            _packing.write_pack(u, x)
        else:
            for v, off, size in zip(u.members, u.offsets, u.sizes):
                v.assign(jnp.reshape(x[off:off + size], v.shape))


class Function:
    """A step compiled by :func:`function`. ``trace_count`` counts traces (for tests)."""

    def __init__(self, fn: Callable, pack_variables: bool = True) -> None:
        self._fn = fn
        self._pack = pack_variables
        self._entries: dict = {}
        self._building = threading.RLock()
        self.trace_count = 0
        functools.update_wrapper(self, fn)

    def __get__(self, obj, objtype=None):  # decorating a method
        if obj is None:
            return self
        bound = self.__dict__.setdefault("_bound", {})
        if id(obj) not in bound:
            bound[id(obj)] = Function(self._fn.__get__(obj, objtype), self._pack)
        return bound[id(obj)]

    def __call__(self, *args, **kwargs):
        key = _signature(args, kwargs)
        entry = self._entries.get(key)
        if entry is None:
            with self._building:  # one discovery per signature, also with many threads
                entry = self._entries.get(key)
                if entry is None:
                    entry = self._entries[key] = self._discover(args, kwargs)
        for _ in range(4):
            try:
                return self._call(entry, args, kwargs)
            except _Retrace as extra:
                new_written, new_read = extra.args
                entry = _Entry(_union(entry.written, new_written),
                               [v for v in _union(entry.read_only, new_read)
                                if v not in set(_union(entry.written, new_written))])
                self._entries[key] = entry
        raise RuntimeError("compatopt.function: the set of variables kept changing while "
                           "tracing; create variables outside data-dependent branches")

    def _discover(self, args, kwargs) -> _Entry:
        with discovery_run():
            lifted = call_lifted(self._fn, [], [], *args, **kwargs)
        written = set(lifted.written)
        return _Entry(lifted.written, [v for v in lifted.all_reads if v not in written])

    def _build(self, entry: _Entry, static_leaves: list, treedef) -> Callable:
        w_units, r_units = entry.written_units, entry.read_units
        writable = set(_packing.unit_members(w_units))
        known = writable | set(_packing.unit_members(r_units))

        def pure(written_vals, read_vals, dyn_leaves, zero):
            self.trace_count += 1
            leaves = list(static_leaves)
            for i, value in dyn_leaves.items():
                leaves[i] = value
            args, kwargs = jax.tree_util.tree_unflatten(treedef, leaves)
            values = _unit_values([*w_units, *r_units], [*written_vals, *read_vals], zero)
            lifted = call_lifted(self._fn, [*w_units, *r_units], values, *args, **kwargs)
            out_vals, entry.out_tree, entry.op_positions = flatten_output(lifted.out,
                                                                          with_loss=True)
            new_written = [v for v in lifted.written if v not in writable]
            new_read = [v for v in lifted.all_reads if v not in known]
            if new_written or new_read:
                raise _Retrace(new_written, new_read)
            overrides = lifted.frame.overrides
            new_vals = []
            for u in w_units:
                if isinstance(u, _packing.Pack):
                    members = {v: overrides[v] for v in u.members if v in overrides}
                    new_vals.append(overrides[u].with_member_writes(members))
                else:
                    new_vals.append(overrides[u])
            return new_vals, out_vals

        return jax.jit(pure, donate_argnums=(0,))

    def _call(self, entry: _Entry, args, kwargs):
        leaves, treedef = jax.tree_util.tree_flatten((args, kwargs))
        dyn = {i: leaf for i, leaf in enumerate(leaves) if _is_array(leaf)}
        static = [None if i in dyn else leaf for i, leaf in enumerate(leaves)]
        if entry.jitted is None or entry.stale():
            with self._building:
                if entry.jitted is None or entry.stale():
                    entry.plan(self._pack and not nested())
                    entry.jitted = self._build(entry, static, treedef)
        # The step driver holds the lifted variables' locks (all members of a lifted pack)
        # from reading their buffers until its results are stored: a step on another thread
        # never sees a donated buffer.
        with locked_at_top_level(entry.lock_vars):
            read_vals = _lift_in(entry.read_units, donate=False)
            written_vals = _lift_in(entry.written_units, donate=True)
            if not nested():
                written_vals = _committed(written_vals, [*read_vals, *dyn.values()])
            new_written, out_vals = entry.jitted(written_vals, read_vals, dyn, _runtime_zero())
            _lift_out(entry.written_units, new_written)
        name = getattr(self._fn, "__name__", "function")
        return rebuild_output(entry.out_tree, out_vals, entry.op_positions,
                              lambda loss: Operation(name, lambda: self(*args, **kwargs),
                                                     loss=loss))

    def experimental_get_compiler_ir(self, *args, **kwargs) -> str:
        """The HLO text of the compiled step for these arguments (after one call)."""
        entry = self._entries[_signature(args, kwargs)]
        leaves, _ = jax.tree_util.tree_flatten((args, kwargs))
        dyn = {i: leaf for i, leaf in enumerate(leaves) if _is_array(leaf)}
        return entry.jitted.lower(_lift_in(entry.written_units, donate=False),
                                  _lift_in(entry.read_units, donate=False), dyn,
                                  _runtime_zero()).as_text()


def _union(a: list, b: list) -> list:
    seen = dict.fromkeys(a)
    seen.update(dict.fromkeys(b))
    return list(seen)


def function(fn: Optional[Callable] = None, *, pack_variables: bool = True,
             **options: Any):
    """Compiles ``fn`` (a training step) into one XLA computation per input signature.

    Usage mirrors ``tf.function``::

        @compatopt.function
        def train_step(x, y):
            return opt.minimize(lambda: loss(x, y), global_step=gs)

    Variables and slots the step reads or writes are lifted in and out (written ones are
    donated, except a buffer handed out by ``v.value`` since the last step, which is copied
    once so the array the caller holds stays valid); slots are created on the first call.
    The step recompiles only for new shapes, dtypes or static (non-array) arguments.
    Thread-safe: a call holds the locks of every variable it lifts from reading their
    buffers to storing its results, so concurrent steps on shared variables serialise. An
    ``Operation`` returned by the step comes back as an ``Operation`` whose ``run()`` calls
    the compiled step again with the same arguments.

    ``pack_variables`` (default True): before its first trace the step packs the variables
    it writes (one flat buffer per dtype, slots alike) so that it compiles and runs one
    update per pack instead of one per variable, with the same bits; reads, ``assign``,
    slots, names and checkpoints behave as for unpacked variables. ``options`` (TF's
    ``input_signature``, ``jit_compile``...) are accepted and ignored.
    """
    if fn is None:
        return lambda f: Function(f, pack_variables)
    return Function(fn, pack_variables)
