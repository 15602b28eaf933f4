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
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from compatopt.train._variable import Frame, Variable, active_frames


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
            entry = self._discover(args, kwargs)
            self._entries[key] = entry
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
        with Frame(capture=True) as frame:
            self._fn(*args, **kwargs)
        written = list(frame.writes)
        read_only = [v for v in frame.all_reads if v not in frame.writes]
        return _Entry(written, read_only)

    def _build(self, entry: _Entry, static_leaves: list, treedef) -> Callable:
        written, read_only = entry.written, entry.read_only
        known = set(written) | set(read_only)

        def pure(written_vals, read_vals, dyn_leaves):
            self.trace_count += 1
            leaves = list(static_leaves)
            for i, value in dyn_leaves.items():
                leaves[i] = value
            args, kwargs = jax.tree_util.tree_unflatten(treedef, leaves)
            overrides = dict(zip(written, written_vals))
            overrides.update(zip(read_only, read_vals))
            with Frame(overrides=overrides, capture=True) as frame:
                out = self._fn(*args, **kwargs)
                out_leaves, out_tree = jax.tree_util.tree_flatten(
                    out, is_leaf=lambda x: isinstance(x, Variable) or _is_op(x))
                op_positions = [i for i, x in enumerate(out_leaves) if _is_op(x)]
                out_vals = [None if _is_op(x) else (x.value if isinstance(x, Variable) else x)
                            for x in out_leaves]
            new_written = [v for v in frame.writes if v not in set(written)]
            new_read = [v for v in frame.all_reads if v not in known]
            if new_written or new_read:
                raise _Retrace(new_written, new_read)
            entry.out_tree, entry.op_positions = out_tree, op_positions
            return [frame.overrides[v] for v in written], out_vals

        return jax.jit(pure, donate_argnums=(0,))

    def _call(self, entry: _Entry, args, kwargs):
        leaves, treedef = jax.tree_util.tree_flatten((args, kwargs))
        dyn = {i: leaf for i, leaf in enumerate(leaves) if _is_array(leaf)}
        static = [None if i in dyn else leaf for i, leaf in enumerate(leaves)]
        if entry.jitted is None:
            entry.jitted = self._build(entry, static, treedef)
        nested = bool(active_frames())
        written_vals = []
        for v in entry.written:
            value = v.value if nested else v._stored
            if not nested and not getattr(v, "_owned", False):
                value = jnp.array(value, copy=True)  # never donate a buffer someone else holds
            written_vals.append(value)
        read_vals = [v.value if nested else v._stored for v in entry.read_only]
        new_written, out_vals = entry.jitted(written_vals, read_vals, dyn)
        for v, value in zip(entry.written, new_written):
            if nested:
                v.assign(value)
            else:
                v._stored = value
                v._owned = True
        out_leaves = list(out_vals)
        for i in entry.op_positions:
            from compatopt.train._operation import Operation
            out_leaves[i] = Operation(getattr(self._fn, "__name__", "function"),
                                      lambda: self(*args, **kwargs))
        return jax.tree_util.tree_unflatten(entry.out_tree, out_leaves)

    def experimental_get_compiler_ir(self, *args, **kwargs) -> str:
        """The HLO text of the compiled step for these arguments (after one call)."""
        entry = self._entries[_signature(args, kwargs)]
        leaves, _ = jax.tree_util.tree_flatten((args, kwargs))
        dyn = {i: leaf for i, leaf in enumerate(leaves) if _is_array(leaf)}
        return entry.jitted.lower([v._stored for v in entry.written],
                                  [v._stored for v in entry.read_only], dyn).as_text()


def _is_op(x: Any) -> bool:
    from compatopt.train._operation import Operation
    return isinstance(x, Operation)


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
    donated: arrays read from them earlier are invalidated, use ``v.numpy()`` to keep a
    copy); slots are created on the first call. The step recompiles only for new shapes,
    dtypes or static (non-array) arguments. An ``Operation`` returned by the step comes
    back as an ``Operation`` whose ``run()`` calls the compiled step again with the same
    arguments. ``options`` (TF's ``input_signature``, ``jit_compile``...) are accepted and
    ignored.
    """
    if fn is None:
        return lambda f: Function(f)
    return Function(fn)
