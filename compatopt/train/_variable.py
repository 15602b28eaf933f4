"""``compatopt.Variable``, the default graph's collections, and the read/write frames.

A :class:`Variable` holds one ``jax.Array``. Outside any frame, reading ``v.value`` returns
the stored array and ``v.assign(x)`` replaces it. Two kinds of *frame* change that, so the
same user code runs eagerly, under autodiff and inside :func:`compatopt.function`:

* a frame may *override* a variable's value (``jax.vjp`` passes the values being
  differentiated, ``compatopt.function`` passes the traced arguments);
* a *capturing* frame keeps the writes (``assign``) to itself instead of storing them, so
  a compiled step can return them and a failed step changes nothing.

Every frame records which variables were read (first-read order) and written; that is how
``compute_gradients(loss)`` finds the variables a loss reads, as eager TF's tape does.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional

import jax
import jax.numpy as jnp
import numpy as np

from compatopt import _numerics, _sparse
from compatopt._tf_names import NameCounters
from compatopt.train import _jax_values, _scopes

GLOBAL_VARIABLES = "variables"
TRAINABLE_VARIABLES = "trainable_variables"
GLOBAL_STEP = "global_step"
TRAIN_OP = "train_op"


class Graph(NameCounters):
    """TF1's default graph, as far as the shim needs it: collections and name counters."""

    def __init__(self) -> None:
        super().__init__()
        self.collections: Dict[str, list] = {}

    def add_to_collection(self, key: str, value: Any) -> None:
        with self.lock:
            self.collections.setdefault(key, []).append(value)
            for journal in self._journal_stack():
                journal.setdefault(("added", str(id(value))), value)

    def undo(self, journal: dict) -> None:
        """Undoes one failed call: the variables it created leave the collections and their
        names are free again; what other threads created meanwhile stays."""
        with self.lock:
            super().undo(journal)
            added = {id(v) for v in self.created_in(journal)}
            for key, values in self.collections.items():
                self.collections[key] = [v for v in values if id(v) not in added]

    @staticmethod
    def created_in(journal: dict) -> list:
        """The variables a journaled call added to collections."""
        return [v for (kind, _), v in journal.items() if kind == "added"]

    def get_collection(self, key: str) -> list:
        return list(self.collections.get(key, []))


_default_graph = Graph()


def get_default_graph() -> Graph:
    return _default_graph


def reset_default_graph() -> None:
    """Starts a fresh default graph: empty collections, name counters back to zero.

    Existing :class:`Variable` objects keep working; they are just no longer listed.
    """
    global _default_graph
    _default_graph = Graph()


def global_variables() -> List["Variable"]:
    """``tf.compat.v1.global_variables()``: every variable of the default graph, in order."""
    return _default_graph.get_collection(GLOBAL_VARIABLES)


def trainable_variables() -> List["Variable"]:
    """``tf.compat.v1.trainable_variables()``: variables created with ``trainable=True``."""
    return _default_graph.get_collection(TRAINABLE_VARIABLES)


# ---------------------------------------------------------------------------- frames


class Frame:
    """Records reads/writes; optionally overrides values and captures writes.

    Attributes:
      overrides: ``{variable: value}`` seen by reads instead of the stored value.
      capture: when True, ``assign`` lands in ``overrides`` (and ``writes``) only.
      reads / writes: variables in first-touch order (dicts used as ordered sets).
    """

    def __init__(self, overrides: Optional[dict] = None, capture: bool = False) -> None:
        self.overrides: dict = dict(overrides or {})
        self.capture = capture
        self.reads: dict = {}
        self.all_reads: dict = {}
        self.writes: dict = {}
        self.pack_writes: dict = {}  # packs (``_packing.Pack``) written whole, as ordered set
        self.sparse_read_hook: Optional[Callable] = None

    def __enter__(self) -> "Frame":
        _frames().append(self)
        return self

    def __exit__(self, *exc) -> None:
        stack = _frames()
        assert stack and stack[-1] is self, "frames must be closed in order"
        stack.pop()


_local = threading.local()


def _frames() -> list:
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    return stack


def active_frames() -> list:
    return list(_frames())


def peek(var: "Variable") -> jax.Array:
    """The value a read would return, without recording the read.

    A stored buffer handed out this way may be held by the caller, so the next compiled step
    copies it instead of donating it (a step on another thread never deletes it under the
    reader).
    """
    pack = var._pack
    for frame in reversed(_frames()):
        overrides = frame.overrides
        if var in overrides:
            return overrides[var]
        if pack is not None and pack in overrides:  # a packed variable's traced slice
            return overrides[pack].view(var)
    # A thread already holding variables' locks (a step being traced) only takes this one if
    # it is free: waiting here, out of creation order, could deadlock.
    if not var._lock.acquire(blocking=getattr(_local, "held", 0) == 0):
        var._owned = False
        return var._stored
    try:
        var._owned = False
        return var._stored
    finally:
        var._lock.release()


_serials = itertools.count()


def read_together(variables: Iterable["Variable"]) -> List[jax.Array]:
    """The stored values of ``variables`` as of one moment: no compiled step that holds
    their locks runs in between (a consistent snapshot for ``Saver.save``)."""
    variables = list(variables)
    with locked(variables):
        return [peek(v) for v in variables]


@contextlib.contextmanager
def locked(variables: Iterable["Variable"]) -> Iterator[None]:
    """Holds the locks of ``variables`` (TF1: each variable's mutex), taken in creation
    order, so two steps sharing several variables never deadlock."""
    unique = sorted({id(v): v for v in variables}.values(), key=lambda v: v._serial)
    with contextlib.ExitStack() as stack:
        for v in unique:
            stack.enter_context(v._lock)
        _local.held = getattr(_local, "held", 0) + len(unique)
        try:
            yield
        finally:
            _local.held -= len(unique)


def _read(var: "Variable") -> jax.Array:
    for frame in _frames():
        frame.reads.setdefault(var, None)
        frame.all_reads.setdefault(var, None)
    return peek(var)


def _write(var: "Variable", value: jax.Array) -> None:
    stack = _frames()
    for frame in reversed(stack):
        frame.writes.setdefault(var, None)
        if frame.capture:
            frame.overrides[var] = value
            return
        if var in frame.overrides:  # a value being differentiated cannot be stored
            raise RuntimeError(
                f"Cannot assign to {var.name} while it is being differentiated; move the "
                f"assignment out of the loss function")
    if not _numerics.is_concrete(value):
        raise RuntimeError(
            f"Cannot store a traced value in {var.name} outside compatopt.function; "
            f"assign a concrete array")
    with var._lock:
        var._stored = value
        var._owned = False  # the caller may hold this array: compatopt.function copies it first


# -------------------------------------------------------------------------- variable


def tf_dtype_repr(dtype: Any) -> str:
    return f"<dtype: '{jnp.dtype(dtype).name}'>"


def to_array(value: Any, dtype: Any = None) -> jax.Array:
    """``convert_to_tensor``: Python floats become float32 and ints int32 (as TF)."""
    if isinstance(value, Variable):
        value = value.value
    if dtype is None:
        if isinstance(value, (bool, int, float)):
            return _numerics.to_tf_tensor(value)
        if isinstance(value, (list, tuple)):
            arr = np.asarray(value)
            if arr.dtype == np.float64:
                arr = arr.astype(np.float32)
            elif arr.dtype == np.int64:
                arr = arr.astype(np.int32)
            return jnp.asarray(arr)
        return jnp.asarray(value)
    return jnp.asarray(value, dtype=dtype)


class _OpName:
    """``v.op.name`` (``"w"``), as TF code often reads it."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


class Variable:
    """A mutable array with a TF1-style name, for the ``tf.compat.v1.train`` shim.

    ``v.value`` is the current ``jax.Array``; ``v.name`` is ``"w:0"`` (uniquified as TF1's
    graph mode does: a second ``"w"`` is ``"w_1:0"``) and ``v.op.name`` is ``"w"``.
    Operators (``+ - * / @ **``, unary ``-``, comparisons, indexing) read the value and return
    ``jax.Array``s, so ``x @ w + b`` works. ``jnp`` / ``lax`` functions and ``jax.jit``
    arguments read a Variable's value too (``jnp.tanh(w)`` is ``jnp.tanh(w.value)``, a tracked
    read; :mod:`compatopt.train._jax_values`, since JAX 0.10 no longer calls
    ``__jax_array__`` inside ``jnp.*``). Equality (``==``) is
    identity, as TF1 variables (so variables can be dict keys); use ``w.value == x`` for an
    elementwise comparison.

    Under :func:`compatopt.function` the value read is the traced argument and the buffers
    are donated. An array obtained from ``v.value`` outside a step stays valid: the next
    step copies that buffer once instead of donating it, then donates its own outputs.

    Args:
      initial_value: array-like or zero-argument callable; Python floats become float32.
      trainable: added to ``trainable_variables()`` (default True).
      collections: collection keys (default ``[GLOBAL_VARIABLES]``).
      validate_shape: accepted for TF1 compatibility.
      name: defaults to ``"Variable"``; uniquified.
      dtype: converts the initial value.
      constraint: ``value -> value`` applied after each dense optimizer update.
      shape: accepted for TF1 compatibility (must match when given).
    """

    def __init__(self, initial_value: Any = None, trainable: Optional[bool] = None,
                 collections: Optional[list] = None, validate_shape: bool = True,
                 name: Optional[str] = None, dtype: Any = None,
                 constraint: Optional[Callable] = None, shape: Any = None) -> None:
        if initial_value is None:
            raise ValueError("initial_value must be specified.")
        if constraint is not None and not callable(constraint):
            raise ValueError(f"The `constraint` argument must be a callable. Received: "
                             f"{constraint}")
        if callable(initial_value) and not isinstance(initial_value, Variable):
            initial_value = initial_value()
        with jax.ensure_compile_time_eval():
            value = to_array(initial_value, dtype)
            if isinstance(initial_value, jax.Array) and value is initial_value:
                value = jnp.array(value, copy=True)  # never share a buffer (donation)
        if not _numerics.is_concrete(value):
            raise ValueError(
                f"Variable {name or 'Variable'}: the initial value is a traced array; create "
                f"variables outside the traced code or from concrete values")
        if shape is not None and tuple(shape) != tuple(value.shape):
            raise ValueError(f"Shape {tuple(shape)} of variable {name} does not match the "
                             f"initial value's shape {tuple(value.shape)}")
        self._own: Optional[jax.Array] = value
        self._pack: Any = None  # a ``_packing.Pack`` holding the value, see _stored
        self._owned = False
        self._slot_of: Optional[tuple] = None  # (primary, family) for a slot (_packing)
        self._sparse_read_seen = False
        self._lock = threading.RLock()
        self._serial = next(_serials)
        self.trainable = True if trainable is None else bool(trainable)
        self.constraint = constraint
        graph = get_default_graph()
        self._shared_name = graph.unique_name(_scopes.prefixed(name))
        self._name = self._shared_name + ":0"
        self._unique_id = id(self)
        self.graph = graph
        if collections is None:
            collections = [GLOBAL_VARIABLES]
        for key in collections:
            graph.add_to_collection(key, self)
        if self.trainable and TRAINABLE_VARIABLES not in collections:
            graph.add_to_collection(TRAINABLE_VARIABLES, self)

    # -- storage: the variable's own buffer, or its slice of a pack (compatopt.function)
    @property
    def _stored(self) -> jax.Array:
        pack = self._pack
        return self._own if pack is None else pack.read(self)  # type: ignore[return-value]

    @_stored.setter
    def _stored(self, value: jax.Array) -> None:
        pack = self._pack
        if pack is None:
            self._own = value
        else:
            pack.write(self, value)

    # -- identity and metadata
    @property
    def name(self) -> str:
        return self._name

    @property
    def op(self) -> _OpName:
        return _OpName(self._shared_name)

    @property
    def shape(self) -> tuple:
        pack = self._pack
        if pack is not None:
            return pack.shapes[pack.index[self]]
        return tuple(self._own.shape)  # type: ignore[union-attr]

    @property
    def dtype(self) -> jnp.dtype:
        pack = self._pack
        return pack.dtype if pack is not None else jnp.dtype(self._own.dtype)  # type: ignore

    def get_shape(self) -> tuple:
        return self.shape

    @property
    def device(self) -> str:
        return ""

    # -- reading
    @property
    def value(self) -> jax.Array:
        """The current value (the traced one inside ``compatopt.function`` or autodiff)."""
        return _read(self)

    def read_value(self) -> jax.Array:
        return _read(self)

    # -- the stored buffer, for the step driver (compatopt.function, shard_map) and placement
    @property
    def buffer(self) -> jax.Array:
        """The stored array itself: no frame override, no read recorded."""
        return self._stored

    def donatable_buffer(self) -> jax.Array:
        """The stored array, safe to donate to a compiled step.

        A buffer the variable does not own (one a caller passed to ``assign`` and may still
        hold) is copied first; a buffer a step returned (:meth:`adopt_buffer`) is donated
        as it is.
        """
        if self._owned and self._pack is None:
            return self._stored
        return jnp.array(self._stored, copy=True)

    def adopt_buffer(self, value: jax.Array) -> None:
        """Stores a compiled step's output, which nothing else holds (donatable next time)."""
        self._stored = value
        self._owned = True

    def place(self, sharding: Any) -> None:
        """Moves the stored value onto ``sharding`` (same bits); a packed variable leaves
        its pack (so do the pack's other members)."""
        if self._pack is not None:
            self._pack.dissolve()
        self._stored = jax.device_put(self._stored, sharding)

    def numpy(self) -> np.ndarray:
        return np.array(_read(self))

    def sparse_read(self, indices: Any) -> jax.Array:
        """``tf.gather(v, indices)``; its gradient is an ``IndexedSlices`` (rows only).

        Concrete out-of-range indices raise TF1's CPU gather error
        (``InvalidArgumentError``); traced ones (under ``jit``) cannot, and read NaN rows.
        """
        self._sparse_read_seen = True  # TF1 updates it sparsely: not packed (_packing)
        if _numerics.is_concrete(indices):
            _sparse.check_indices(np.asarray(indices).reshape(-1), self.shape[0],
                                  f"gather from variable '{self.op.name}'")
        stack = _frames()
        for frame in reversed(stack):
            if frame.sparse_read_hook is not None:
                for outer in stack:
                    outer.all_reads.setdefault(self, None)
                return frame.sparse_read_hook(self, indices)
        return jnp.take(_read(self), jnp.asarray(indices), axis=0)

    gather = sparse_read

    # -- writing
    def _check_assignable(self, value: Any) -> jax.Array:
        if (isinstance(value, jax.Array) and value.dtype == self.dtype
                and value.shape == self.shape):
            return value  # the common case, checked cheaply
        if isinstance(value, (bool, int, float, list, tuple)) or (
                isinstance(value, np.ndarray) and value.dtype == np.float64
                and self.dtype != np.float64 and value.ndim == 0):
            new = jnp.asarray(np.asarray(value), dtype=self.dtype)
        else:
            new = value.value if isinstance(value, Variable) else jnp.asarray(value)
            if jnp.dtype(new.dtype) != self.dtype:
                raise TypeError(
                    f"Cannot assign a {jnp.dtype(new.dtype).name} value to variable "
                    f"'{self.name}' of dtype {self.dtype.name}")
        if tuple(new.shape) != self.shape:
            raise ValueError(
                f"Cannot assign value to variable ' {self.name}': Shape mismatch.The variable "
                f"shape {self.shape}, and the assigned value shape {tuple(new.shape)} are "
                f"incompatible.")
        return new

    def assign(self, value: Any, use_locking: Any = None, name: Any = None,
               read_value: bool = True) -> "Variable":
        """Sets the value; a changed shape raises ``ValueError``, a changed dtype
        ``TypeError`` (as TF), and nothing is stored then."""
        _write(self, self._check_assignable(value))
        return self

    def assign_add(self, delta: Any, use_locking: Any = None, name: Any = None,
                   read_value: bool = True) -> "Variable":
        _write(self, self._check_assignable(_read(self) + self._check_assignable(delta)))
        return self

    def assign_sub(self, delta: Any, use_locking: Any = None, name: Any = None,
                   read_value: bool = True) -> "Variable":
        _write(self, self._check_assignable(_read(self) - self._check_assignable(delta)))
        return self

    def scatter_update(self, sparse_delta: Any, use_locking: Any = None,
                       name: Any = None) -> "Variable":
        """``v[indices] = values`` for an ``IndexedSlices`` (TF's ``scatter_update``)."""
        new = _read(self).at[jnp.asarray(sparse_delta.indices)].set(
            sparse_delta.values, mode="drop")
        _write(self, self._check_assignable(new))
        return self

    def scatter_add(self, sparse_delta: Any, use_locking: Any = None,
                    name: Any = None) -> "Variable":
        """``v[indices] += values`` (repeated indices all added, as TF)."""
        new = _read(self).at[jnp.asarray(sparse_delta.indices)].add(
            sparse_delta.values, mode="drop")
        _write(self, self._check_assignable(new))
        return self

    def scatter_sub(self, sparse_delta: Any, use_locking: Any = None,
                    name: Any = None) -> "Variable":
        """``v[indices] -= values`` (repeated indices all subtracted, as TF)."""
        new = _read(self).at[jnp.asarray(sparse_delta.indices)].add(
            -sparse_delta.values, mode="drop")
        _write(self, self._check_assignable(new))
        return self

    # -- operators: read the value, return jax.Arrays (``x @ w + b``)
    def _other(self, other: Any) -> Any:
        return other.value if isinstance(other, Variable) else other

    def __add__(self, other): return self.value + self._other(other)  # noqa: E704
    def __radd__(self, other): return self._other(other) + self.value  # noqa: E704
    def __sub__(self, other): return self.value - self._other(other)  # noqa: E704
    def __rsub__(self, other): return self._other(other) - self.value  # noqa: E704
    def __mul__(self, other): return self.value * self._other(other)  # noqa: E704
    def __rmul__(self, other): return self._other(other) * self.value  # noqa: E704
    def __truediv__(self, other): return self.value / self._other(other)  # noqa: E704
    def __rtruediv__(self, other): return self._other(other) / self.value  # noqa: E704
    def __floordiv__(self, other): return self.value // self._other(other)  # noqa: E704
    def __rfloordiv__(self, other): return self._other(other) // self.value  # noqa: E704
    def __mod__(self, other): return self.value % self._other(other)  # noqa: E704
    def __rmod__(self, other): return self._other(other) % self.value  # noqa: E704
    def __pow__(self, other): return self.value ** self._other(other)  # noqa: E704
    def __rpow__(self, other): return self._other(other) ** self.value  # noqa: E704
    def __matmul__(self, other): return self.value @ self._other(other)  # noqa: E704
    def __rmatmul__(self, other): return self._other(other) @ self.value  # noqa: E704
    def __lt__(self, other): return self.value < self._other(other)  # noqa: E704
    def __le__(self, other): return self.value <= self._other(other)  # noqa: E704
    def __gt__(self, other): return self.value > self._other(other)  # noqa: E704
    def __ge__(self, other): return self.value >= self._other(other)  # noqa: E704
    def __neg__(self): return -self.value  # noqa: E704
    def __pos__(self): return +self.value  # noqa: E704
    def __abs__(self): return abs(self.value)  # noqa: E704
    def __getitem__(self, idx): return self.value[idx]  # noqa: E704
    def __float__(self): return float(self.value)  # noqa: E704
    def __int__(self): return int(self.value)  # noqa: E704
    def __bool__(self): return bool(self.value)  # noqa: E704
    def __len__(self): return self.shape[0]  # noqa: E704

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def T(self) -> jax.Array:
        return self.value.T

    __array_ufunc__ = None  # numpy defers `ndarray op Variable` to Variable.__rop__

    def __array__(self, dtype=None, copy=None):
        if _frames():
            raise TypeError(
                f"{self.name}: a Variable cannot be converted with numpy/jnp.asarray inside a "
                f"loss or a compiled step (the read would not be tracked); write "
                f"`{self.op.name}.value` (or use operators such as `x @ {self.op.name}`)")
        return np.asarray(peek(self), dtype=dtype)

    def __repr__(self) -> str:
        try:
            val = np.array(peek(self))
            body = f", numpy={val!r}"
        except Exception:  # deleted (donated) buffer
            body = ""
        return (f"<compatopt.Variable '{self.name}' shape={self.shape} "
                f"dtype={self.dtype.name}{body}>")

    __str__ = __repr__


_jax_values.register(Variable)  # jnp.tanh(w) reads w.value (JAX 0.10 dropped __jax_array__)
