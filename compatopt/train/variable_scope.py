"""TF1's ``get_variable``, ``variable_scope``, ``name_scope`` and initializers.

Behaviour recorded from TF 2.21 graph mode (``tools/make_tf1_variable_scope_fixtures.py``):

* ``variable_scope("a")`` opens variable scope ``a`` (prefix of ``get_variable`` names) and a
  uniquified name scope (``a/``, then ``a_1/`` on re-entry: prefix of ``Variable`` names);
  ``variable_scope(None, default_name="dense")`` gives ``dense``, ``dense_1``...;
* ``get_variable(name)`` is ``<scope>/<name>``: created once; again only with ``reuse=True``
  (or ``AUTO_REUSE``), checking shape and dtype; ``reuse=True`` inherits into nested scopes;
* the optimizers' slots and the global step follow the variable scope (``s/s/w/Adam`` for
  ``s/w`` under ``variable_scope("s")``, ``s/global_step``), non-slot variables the name
  scope (``s/n/beta1_power``), all as TF1 names them.

Initializers: ``initializer`` may be a callable ``(shape, dtype) -> value`` (the ones below,
or a user's), an array (then no ``shape``), or ``None``: the scope's, else TF1's defaults
(``glorot_uniform_initializer()`` for floats, zeros for integers and bools). The random
initializers are JAX's generators, seeded from ``seed`` (or a fixed default): **not** TF1's
random stream, so an exact port restores TF1's initial values from a checkpoint
(``co.train.Saver`` / ``init_from_checkpoint``) instead.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import re
import threading
import weakref
from typing import Any, Callable, Dict, Iterator, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from compatopt.train import _scopes
from compatopt.train._lazy import LazyTensor
from compatopt.train._variable import (GLOBAL_VARIABLES, Graph, Variable, get_default_graph,
                                       to_array)

__all__ = ["AUTO_REUSE", "VariableScope", "get_variable", "get_variable_scope",
           "variable_scope", "name_scope", "zeros_initializer", "ones_initializer",
           "constant_initializer", "glorot_uniform_initializer", "glorot_normal_initializer",
           "random_normal_initializer", "truncated_normal_initializer",
           "random_uniform_initializer", "REGULARIZATION_LOSSES", "get_regularization_losses"]

REGULARIZATION_LOSSES = "regularization_losses"


class _AutoReuse:
    def __repr__(self) -> str:
        return "AUTO_REUSE"


AUTO_REUSE = _AutoReuse()
"""``tf.compat.v1.AUTO_REUSE``: create the variable if it does not exist, else reuse it."""

_store_lock = threading.RLock()
_stores: "weakref.WeakKeyDictionary[Graph, Dict[str, Variable]]" = weakref.WeakKeyDictionary()


def _store(graph: Graph) -> Dict[str, Variable]:
    """The graph's ``get_variable`` store (TF1's ``_VariableStore``): full name -> Variable."""
    with _store_lock:
        return _stores.setdefault(graph, {})


# --------------------------------------------------------------------------- initializers
_seeds = itertools.count(87654321)


def _key(seed: Optional[int]) -> jax.Array:
    return jax.random.key(next(_seeds) if seed is None else int(seed))


def _fans(shape: Sequence[int]) -> tuple:
    """TF1 ``_compute_fans``: (fan_in, fan_out) with the receptive field of conv kernels."""
    shape = tuple(shape)
    if len(shape) < 1:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    receptive = math.prod(shape[:-2])
    return shape[-2] * receptive, shape[-1] * receptive


def zeros_initializer(dtype: Any = jnp.float32) -> Callable:
    """``tf.compat.v1.zeros_initializer``."""
    return lambda shape, dtype=dtype, **_: jnp.zeros(shape, dtype)


def ones_initializer(dtype: Any = jnp.float32) -> Callable:
    """``tf.compat.v1.ones_initializer``."""
    return lambda shape, dtype=dtype, **_: jnp.ones(shape, dtype)


def constant_initializer(value: Any = 0, dtype: Any = jnp.float32) -> Callable:
    """``tf.compat.v1.constant_initializer``: a scalar fills the shape; a list must have the
    shape's number of elements (reshaped, as TF1)."""

    def init(shape, dtype=dtype, **_):
        arr = np.asarray(value)
        if arr.ndim == 0:
            return jnp.full(shape, arr, dtype)
        if arr.size != math.prod(shape):
            raise TypeError(f"Expected Tensor's shape: {tuple(shape)}, but got "
                            f"{tuple(arr.shape)}.")
        return jnp.asarray(arr.reshape(shape), dtype)

    return init


def random_uniform_initializer(minval: float = 0.0, maxval: float = 0.05,
                               seed: Optional[int] = None, dtype: Any = jnp.float32) -> Callable:
    """``tf.compat.v1.random_uniform_initializer`` (JAX's generator, not TF1's stream)."""
    return lambda shape, dtype=dtype, **_: jax.random.uniform(
        _key(seed), shape, dtype, minval, maxval)


def random_normal_initializer(mean: float = 0.0, stddev: float = 1.0,
                              seed: Optional[int] = None, dtype: Any = jnp.float32) -> Callable:
    """``tf.compat.v1.random_normal_initializer`` (JAX's generator, not TF1's stream)."""
    return lambda shape, dtype=dtype, **_: (
        mean + stddev * jax.random.normal(_key(seed), shape, dtype)).astype(dtype)


def truncated_normal_initializer(mean: float = 0.0, stddev: float = 1.0,
                                 seed: Optional[int] = None,
                                 dtype: Any = jnp.float32) -> Callable:
    """``tf.compat.v1.truncated_normal_initializer``: normal truncated at two standard
    deviations (JAX's generator, not TF1's stream)."""
    return lambda shape, dtype=dtype, **_: (
        mean + stddev * jax.random.truncated_normal(_key(seed), -2.0, 2.0, shape, dtype)
    ).astype(dtype)


def glorot_uniform_initializer(seed: Optional[int] = None, dtype: Any = jnp.float32) -> Callable:
    """``tf.compat.v1.glorot_uniform_initializer`` (get_variable's default for floats):
    uniform in ``±sqrt(6 / (fan_in + fan_out))`` (JAX's generator, not TF1's stream)."""

    def init(shape, dtype=dtype, **_):
        fan_in, fan_out = _fans(shape)
        limit = math.sqrt(6.0 / max(1.0, fan_in + fan_out))
        return jax.random.uniform(_key(seed), shape, dtype, -limit, limit)

    return init


def glorot_normal_initializer(seed: Optional[int] = None, dtype: Any = jnp.float32) -> Callable:
    """``tf.compat.v1.glorot_normal_initializer``: truncated normal with
    ``stddev = sqrt(2 / (fan_in + fan_out)) / .87962566103423978`` (TF1's variance scaling)."""

    def init(shape, dtype=dtype, **_):
        fan_in, fan_out = _fans(shape)
        stddev = math.sqrt(2.0 / max(1.0, fan_in + fan_out)) / .87962566103423978
        return (stddev * jax.random.truncated_normal(_key(seed), -2.0, 2.0, shape, dtype)
                ).astype(dtype)

    return init


# ------------------------------------------------------------------------------ scopes
class VariableScope:
    """``tf.compat.v1.VariableScope``: a variable scope's name and defaults.

    Attributes:
      name: the full scope name (``""`` at the root).
      original_name_scope: the name scope opened when the scope was first entered.
      reuse: ``True``, ``False`` or :data:`AUTO_REUSE`.
    """

    def __init__(self, state: _scopes.ScopeState) -> None:
        self._state = state

    @property
    def name(self) -> str:
        return self._state.name

    @property
    def original_name_scope(self) -> str:
        return self._state.name_scope

    @property
    def reuse(self) -> Any:
        return self._state.reuse

    @property
    def initializer(self) -> Any:
        return self._state.initializer

    @property
    def dtype(self) -> Any:
        return self._state.dtype

    def reuse_variables(self) -> None:
        """From now on ``get_variable`` in this scope reuses (TF1's ``reuse_variables``)."""
        self._state.reuse = True

    def set_initializer(self, initializer: Any) -> None:
        self._state.initializer = initializer

    def __repr__(self) -> str:
        return f"<compatopt VariableScope '{self.name}' reuse={self.reuse}>"


def get_variable_scope() -> VariableScope:
    """``tf.compat.v1.get_variable_scope()``: the current variable scope."""
    return VariableScope(_scopes.current())


def _unique_name_scope(graph: Graph, parent: str, name: str) -> str:
    return graph.unique_name(parent + name) + "/"


@contextlib.contextmanager
def name_scope(name: Optional[str], default_name: Optional[str] = None,
               values: Any = None) -> Iterator[str]:
    """``tf.compat.v1.name_scope``: prefixes the names of Variables created inside
    (uniquified: ``a/``, ``a_1/``; a name ending in ``/`` is used as is; ``None`` or ``""``
    resets to the root). Yields the scope string. ``get_variable`` names are unaffected."""
    del values
    state = _scopes.current()
    graph = get_default_graph()
    if name is None and default_name is not None:
        name = default_name
    if not name:
        scope = ""
    elif name.endswith("/"):
        scope = name
    else:
        scope = _unique_name_scope(graph, state.name_scope, name)
    inner = _scopes.ScopeState(**{**state.__dict__, "name_scope": scope})
    with _scopes.entered(inner):
        yield scope


@contextlib.contextmanager
def variable_scope(name_or_scope: Any, default_name: Optional[str] = None, values: Any = None,
                   initializer: Any = None, regularizer: Any = None,
                   caching_device: Any = None, partitioner: Any = None,
                   custom_getter: Any = None, reuse: Any = None, dtype: Any = None,
                   use_resource: Any = None, constraint: Any = None,
                   auxiliary_name_scope: bool = True) -> Iterator[VariableScope]:
    """``tf.compat.v1.variable_scope``: see the module docstring for the naming rules.

    ``reuse``: ``True`` / :data:`AUTO_REUSE` / ``None`` (inherit; ``True`` is always
    inherited); ``initializer``, ``regularizer``, ``dtype``, ``constraint``,
    ``custom_getter``: defaults for ``get_variable`` inside. ``partitioner`` is not
    supported (``NotImplementedError``); ``caching_device`` and ``use_resource`` are
    accepted and ignored.
    """
    del values, caching_device, use_resource
    if partitioner is not None:
        raise NotImplementedError("compatopt.variable_scope: partitioned variables are not "
                                  "supported; create one variable (shard it with jax "
                                  "sharding) or a list of variables")
    if name_or_scope is None and default_name is None:
        raise TypeError("If default_name is None then name_or_scope is required")
    if reuse is False:
        reuse = None  # TF1: False means "inherit" as None does
    outer = _scopes.current()
    graph = get_default_graph()
    if isinstance(name_or_scope, VariableScope):  # re-entered: its name, a new name scope
        base = name_or_scope._state
        full = base.name
        ns = _unique_name_scope(graph, outer.name_scope, full)  # TF1: "outer_1/"
    else:
        base = outer
        if name_or_scope is not None:
            short = str(name_or_scope)
        else:
            prefix = f"{outer.name}/" if outer.name else ""
            assert default_name is not None
            short = graph.unique_scope(prefix + default_name)[len(prefix):]
        full = f"{outer.name}/{short}" if outer.name else short
        ns = _unique_name_scope(graph, outer.name_scope, short)
    inherited = base.reuse if reuse is None else reuse
    state = _scopes.ScopeState(
        name=full, name_scope=ns if auxiliary_name_scope else outer.name_scope,
        reuse=True if outer.reuse is True else inherited,
        initializer=initializer if initializer is not None else base.initializer,
        regularizer=regularizer if regularizer is not None else base.regularizer,
        dtype=dtype if dtype is not None else base.dtype,
        constraint=constraint if constraint is not None else base.constraint,
        custom_getter=custom_getter if custom_getter is not None else base.custom_getter)
    with _scopes.entered(state):
        yield VariableScope(state)


# ---------------------------------------------------------------------------- variables
def _initial_value(full: str, shape: Any, dtype: Any, initializer: Any) -> jax.Array:
    if initializer is not None and not callable(initializer):
        if shape is not None:
            raise ValueError("If initializer is a constant, do not specify shape.")
        return to_array(initializer, dtype)
    if shape is None:
        raise ValueError(f"Variable {full} did not get an initializer, so its `shape` "
                         f"argument must be specified.")
    shape = tuple(int(d) for d in shape)
    dt = jnp.dtype(dtype if dtype is not None else jnp.float32)
    if initializer is None:
        floating = jnp.issubdtype(dt, jnp.floating)
        if floating:
            initializer = glorot_uniform_initializer()
        elif jnp.issubdtype(dt, jnp.integer) or dt == jnp.bool_:
            initializer = zeros_initializer()
        else:
            raise ValueError(f"An initializer for variable {full} of {dt.name} is required")
    with jax.ensure_compile_time_eval():
        return jnp.asarray(initializer(shape, dtype=dt), dt)


def _get_or_create(full: str, shape: Any, dtype: Any, initializer: Any, regularizer: Any,
                   trainable: Optional[bool], collections: Any, constraint: Any,
                   reuse: Any) -> Variable:
    graph = get_default_graph()
    store = _store(graph)
    with _store_lock:
        found = store.get(full)
        if found is not None:
            if reuse is False or reuse is None:
                raise ValueError(f"Variable {full} already exists, disallowed. Did you mean "
                                 f"to set reuse=True or reuse=tf.AUTO_REUSE in VarScope?")
            if shape is not None and tuple(int(d) for d in shape) != found.shape:
                raise ValueError(f"Trying to share variable {full}, but specified shape "
                                 f"{tuple(int(d) for d in shape)} and found shape "
                                 f"{found.shape}.")
            if dtype is not None and jnp.dtype(dtype) != found.dtype:
                raise ValueError(f"Trying to share variable {full}, but specified dtype "
                                 f"{jnp.dtype(dtype).name} and found dtype "
                                 f"{found.dtype.name}.")
            return found
        if reuse is True:
            raise ValueError(f"Variable {full} does not exist, or was not created with "
                             f"tf.get_variable(). Did you mean to set reuse=tf.AUTO_REUSE in "
                             f"VarScope?")
        value = _initial_value(full, shape, dtype, initializer)
        with _scopes.absolute_names():
            v = Variable(value, trainable=trainable, name=full,
                         collections=collections if collections is not None
                         else [GLOBAL_VARIABLES], constraint=constraint)
        store[full] = v
        if regularizer is not None:
            graph.add_to_collection(REGULARIZATION_LOSSES,
                                    LazyTensor(lambda: regularizer(v.value),
                                               f"{full}/Regularizer"))
        return v


def get_variable(name: str, shape: Any = None, dtype: Any = None, initializer: Any = None,
                 regularizer: Any = None, trainable: Optional[bool] = None,
                 collections: Any = None, caching_device: Any = None, partitioner: Any = None,
                 validate_shape: bool = True, use_resource: Any = None,
                 custom_getter: Any = None, constraint: Any = None, synchronization: Any = None,
                 aggregation: Any = None) -> Variable:
    """``tf.compat.v1.get_variable``: the variable ``<scope>/<name>``, created once.

    Raises TF1's ``ValueError``\\ s (messages as TF 2.21): the variable exists and the scope
    does not reuse; it does not exist and the scope reuses (``reuse=True``); shape or dtype
    differ from the existing one; no shape and no constant initializer; a constant
    initializer with a shape. A regularizer's loss goes to collection
    ``regularization_losses`` as a :class:`~compatopt.train.LazyTensor`.
    """
    del caching_device, validate_shape, use_resource, synchronization, aggregation
    if partitioner is not None:
        raise NotImplementedError("compatopt.get_variable: partitioned variables are not "
                                  "supported (see variable_scope)")
    scope = _scopes.current()
    full = f"{scope.name}/{name}" if scope.name else name
    dtype = dtype if dtype is not None else scope.dtype
    initializer = initializer if initializer is not None else scope.initializer
    regularizer = regularizer if regularizer is not None else scope.regularizer
    constraint = constraint if constraint is not None else scope.constraint
    reuse = True if scope.reuse is True else (scope.reuse if scope.reuse is AUTO_REUSE
                                              else False)

    def getter(name: str = full, shape: Any = shape, dtype: Any = dtype,
               initializer: Any = initializer, regularizer: Any = regularizer,
               trainable: Optional[bool] = trainable, collections: Any = collections,
               constraint: Any = constraint, **_: Any) -> Variable:
        return _get_or_create(name, shape, dtype, initializer, regularizer, trainable,
                              collections, constraint, reuse)

    getters = [g for g in (scope.custom_getter, custom_getter) if g is not None]
    if not getters:
        return getter()
    chained: Callable[..., Variable] = getter
    for custom in getters:
        chained = _wrap_getter(custom, chained)
    return chained(full, shape=shape, dtype=dtype, initializer=initializer,
                   regularizer=regularizer, trainable=trainable, collections=collections,
                   constraint=constraint)


def _wrap_getter(custom: Callable, inner: Callable) -> Callable[..., Variable]:
    """TF1's custom getter protocol: ``custom(getter, name, *args, **kwargs)``."""
    return lambda *args, **kwargs: custom(inner, *args, **kwargs)


def get_regularization_losses(scope: Optional[str] = None) -> list:
    """``tf.compat.v1.losses.get_regularization_losses``: the regularizers' current values;
    with ``scope``, of those whose name matches it (``re.match``, TF1's collection filter)."""
    losses = get_default_graph().get_collection(REGULARIZATION_LOSSES)
    if scope:
        losses = [x for x in losses if re.match(scope, x.name)]
    return [x() for x in losses]
