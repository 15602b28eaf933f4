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
"""

from __future__ import annotations

import functools
import threading
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from compatopt.train._lifting import (call_lifted, flatten_output, lift_in, lift_out,
                                      locked_at_top_level, rebuild_output)
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
    """One traced signature: lifted variables and the compiled function."""

    def __init__(self, written: list, read_only: list) -> None:
        self.written = written
        self.read_only = read_only
        self.jitted: Optional[Callable] = None
        self.out_tree: Any = None
        self.op_positions: list = []


class Function:
    """A step compiled by :func:`function`. ``trace_count`` counts traces (for tests)."""

    def __init__(self, fn: Callable) -> None:
        self._fn = fn
        self._entries: dict = {}
        self._building = threading.RLock()
        self.trace_count = 0
        functools.update_wrapper(self, fn)

    def __get__(self, obj, objtype=None):  # decorating a method
        if obj is None:
            return self
        bound = self.__dict__.setdefault("_bound", {})
        if id(obj) not in bound:
            bound[id(obj)] = Function(self._fn.__get__(obj, objtype))
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
        lifted = call_lifted(self._fn, [], [], *args, **kwargs)
        written = set(lifted.written)
        return _Entry(lifted.written, [v for v in lifted.all_reads if v not in written])

    def _build(self, entry: _Entry, static_leaves: list, treedef) -> Callable:
        written, read_only = entry.written, entry.read_only
        known = set(written) | set(read_only)

        def pure(written_vals, read_vals, dyn_leaves):
            self.trace_count += 1
            leaves = list(static_leaves)
            for i, value in dyn_leaves.items():
                leaves[i] = value
            args, kwargs = jax.tree_util.tree_unflatten(treedef, leaves)
            lifted = call_lifted(self._fn, [*written, *read_only], [*written_vals, *read_vals],
                                 *args, **kwargs)
            out_vals, entry.out_tree, entry.op_positions = flatten_output(lifted.out,
                                                                          with_loss=True)
            new_written = [v for v in lifted.written if v not in set(written)]
            new_read = [v for v in lifted.all_reads if v not in known]
            if new_written or new_read:
                raise _Retrace(new_written, new_read)
            by_var = dict(zip(lifted.written, lifted.written_values))
            return [by_var.get(v, v_in) for v, v_in in zip(written, written_vals)], out_vals

        return jax.jit(pure, donate_argnums=(0,))

    def _call(self, entry: _Entry, args, kwargs):
        leaves, treedef = jax.tree_util.tree_flatten((args, kwargs))
        dyn = {i: leaf for i, leaf in enumerate(leaves) if _is_array(leaf)}
        static = [None if i in dyn else leaf for i, leaf in enumerate(leaves)]
        if entry.jitted is None:
            with self._building:
                if entry.jitted is None:
                    entry.jitted = self._build(entry, static, treedef)
        # The step driver holds the lifted variables' locks from reading their buffers until
        # its results are stored: a step on another thread never sees a donated buffer.
        with locked_at_top_level([*entry.written, *entry.read_only]):
            new_written, out_vals = entry.jitted(lift_in(entry.written, donate=True),
                                                 lift_in(entry.read_only, donate=False), dyn)
            lift_out(entry.written, new_written, owned=True)
        name = getattr(self._fn, "__name__", "function")
        return rebuild_output(entry.out_tree, out_vals, entry.op_positions,
                              lambda loss: Operation(name, lambda: self(*args, **kwargs),
                                                     loss=loss))

    def experimental_get_compiler_ir(self, *args, **kwargs) -> str:
        """The HLO text of the compiled step for these arguments (after one call)."""
        entry = self._entries[_signature(args, kwargs)]
        leaves, _ = jax.tree_util.tree_flatten((args, kwargs))
        dyn = {i: leaf for i, leaf in enumerate(leaves) if _is_array(leaf)}
        return entry.jitted.lower([v.buffer for v in entry.written],
                                  [v.buffer for v in entry.read_only], dyn).as_text()


def _union(a: list, b: list) -> list:
    seen = dict.fromkeys(a)
    seen.update(dict.fromkeys(b))
    return list(seen)


def function(fn: Optional[Callable] = None, **options: Any):
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
    the compiled step again with the same arguments. ``options`` (TF's ``input_signature``,
    ``jit_compile``...) are accepted and ignored.
    """
    if fn is None:
        return lambda f: Function(f)
    return Function(fn)
