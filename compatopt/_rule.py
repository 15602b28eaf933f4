"""Builds a :class:`~compatopt.Rule` from one TF1 optimizer's kernels.

Each rule module states only TF1's math: the slots and their initial values, the
hyper-parameters, a dense kernel, a sparse kernel and the once-per-apply ``finish`` (Adam's
beta powers). This module does what is common to all of them: walking the pytrees,
validating every leaf before anything is computed (so a bad call changes nothing), turning
hyper-parameters into tensors as TF1's ``_prepare`` does, counting applies, and deriving the
optax-style ``update`` from the kernel's ``delta``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Optional, cast

import jax
import jax.numpy as jnp
import numpy as np

from compatopt import _numerics, _sparse
from compatopt._base import ArrayTree, IndexedSlices, LeafUpdate, Rule, is_grad_leaf
from compatopt.errors import InvalidArgumentError

DenseKernel = Callable[[jax.Array, jax.Array, dict, "Hyper"], LeafUpdate]
SparseKernel = Callable[[jax.Array, jax.Array, jax.Array, dict, "Hyper"], LeafUpdate]

ALL_FLOATS = frozenset(_numerics.FLOAT_DTYPES)


class Hyper(dict):
    """This apply's hyper-parameters as TF1 tensors (``_prepare``), plus non-slot values.

    ``hp.cast(name, dtype)`` is TF1's ``math_ops.cast(self._name_t, var.dtype.base_dtype)``.
    """

    weak: frozenset = frozenset()  # names given as Python scalars to an uncast kernel
    # names given as concrete values (not schedules, not traced): TF1 graph mode would hold
    # them as Const nodes, which Grappler folds and pushes down (spec §1.6)
    constant: frozenset = frozenset()

    def with_values(self, values: Mapping[str, Any]) -> "Hyper":
        """The same names' flags over other values (traced copies)."""
        hp = Hyper(values)
        hp.weak, hp.constant = self.weak, self.constant
        return hp

    def cast(self, name: str, dtype: Any) -> jax.Array:
        return _numerics.cast(self[name], dtype)

    def __missing__(self, name: str) -> jax.Array:
        # a hyper-parameter given as None: TF1's ``_prepare`` fails converting it (graph
        # mode's message first, then eager's)
        raise ValueError(f"None values not supported ('{name}'): Attempt to convert a value "
                         f"(None) with an unsupported type (<class 'NoneType'>) to a Tensor.")


# The names TF1's kernels give their scalar inputs (training_ops.cc), for their messages.
_KERNEL_INPUT = {"learning_rate": "lr", "l1_regularization_strength": "l1",
                 "l2_regularization_strength": "l2", "learning_rate_power": "lr_power",
                 "l2_shrinkage_regularization_strength": "l2_shrinkage"}


@dataclasses.dataclass(frozen=True)
class RuleDef:
    """The TF1-specific parts of a rule.

    Attributes:
      name: TF1's default optimizer name (``"Adam"``).
      state_type: NamedTuple type; fields ``count``, then ``non_slots``, then ``slots``.
      slots: ``(slot_name, init_fn)`` in TF1's creation order; ``init_fn(param)`` builds the
        slot's initial value in the parameter's dtype.
      hyperparams: constructor arguments already validated (floats, arrays or callables).
      dense: ``(grad, var, slots, hp) -> LeafUpdate``.
      sparse: ``(values, rows, var, slots, hp) -> LeafUpdate``; ``rows`` are unique (padded)
        unless ``deduplicate`` is False, in which case they are the raw indices.
      non_slots: ``hp -> {name: initial value}`` (Adam's ``beta1_power``...).
      prepare: ``(hp, count) -> {name: value}``, extra per-apply tensors (TF1 ``_prepare``).
      finish: ``(non_slot_values, hp) -> new non_slot_values`` (TF1 ``_finish``).
      dense_dtypes / sparse_dtypes: variable dtypes TF1 has kernels for.
      deduplicate: sum repeated indices before the sparse kernel (all but GradientDescent).
      check_dense_hyper_dtype: the dense kernel takes hyper-parameters uncast (TF1's
        proximal family), so their dtype must equal the variable's.
      kernel_checks: ``(name, condition, message)``: TF1's kernels'
        ``OP_REQUIRES(condition(value))`` on a scalar input, run at every apply on the
        resolved value (a schedule's or a tensor's) whenever it is concrete, raising
        ``InvalidArgumentError(message % value)`` (graph mode's run-time check).
      static: constructor arguments that choose a kernel (``use_nesterov``), for ``repr``.
    """

    name: str
    state_type: type
    slots: tuple
    hyperparams: Mapping[str, Any]
    dense: DenseKernel
    sparse: SparseKernel
    non_slots: Callable[[Hyper], dict] = lambda hp: {}
    prepare: Optional[Callable[[Hyper, jax.Array], dict]] = None
    finish: Optional[Callable[[dict, Hyper], dict]] = None
    dense_dtypes: frozenset = ALL_FLOATS
    sparse_dtypes: frozenset = ALL_FLOATS
    deduplicate: bool = True
    check_dense_hyper_dtype: tuple = ()
    kernel_checks: tuple = ()
    static: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def _leaf_name(path) -> str:
    return jax.tree_util.keystr(path) or "params"


def _increment(count: jax.Array) -> jax.Array:
    limit = jnp.iinfo(jnp.int32).max
    return jnp.where(count < limit, count + 1, limit).astype(jnp.int32)


def _dtype_names(dtypes) -> str:
    return ", ".join(sorted(jnp.dtype(d).name for d in dtypes))


def _check_leaf(rd: RuleDef, where: str, g: Any, p: Any, slots: dict, hp: Hyper) -> None:
    """Raises before any computation if this (grad, param, slots) leaf is malformed."""
    if not hasattr(p, "dtype") or not hasattr(p, "shape"):
        raise TypeError(f"{rd.name}: parameter {where} is not an array: {type(p).__name__}")
    dtype = jnp.dtype(p.dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"{rd.name}: parameter {where} has dtype {dtype.name}; TF1 optimizers update only "
            f"float16, bfloat16, float32 and float64 variables")
    sparse = isinstance(g, IndexedSlices)
    supported = rd.sparse_dtypes if sparse else rd.dense_dtypes
    if dtype not in supported:
        kind = "sparse" if sparse else "dense"
        raise TypeError(
            f"{rd.name}: no {kind} kernel for {dtype.name} (parameter {where}); TF1 registers "
            f"{kind} {rd.name} kernels only for {_dtype_names(supported)}")
    if jnp.dtype(g.dtype) != dtype:
        raise TypeError(
            f"{rd.name}: gradient for {where} has dtype {jnp.dtype(g.dtype).name} but the "
            f"parameter has dtype {dtype.name}")
    for slot_name, slot in slots.items():
        if tuple(slot.shape) != tuple(p.shape):
            raise InvalidArgumentError(
                f"{rd.name}: slot '{slot_name}' of {where} has shape {tuple(slot.shape)} but the "
                f"parameter has shape {tuple(p.shape)}; was the state made by init() on these "
                f"params?")
    if not sparse:
        if tuple(g.shape) != tuple(p.shape):
            raise InvalidArgumentError(
                f"{rd.name}: var and grad do not have the same shape {list(p.shape)} "
                f"{list(g.shape)} (parameter {where})")
        for name in rd.check_dense_hyper_dtype:
            if name in hp.weak:  # a Python scalar takes the parameter's dtype (JAX's rule)
                continue
            hdt = jnp.dtype(hp[name].dtype)
            if hdt != dtype:
                raise TypeError(
                    f"{rd.name}: the dense kernel takes '{name}' uncast, and it is {hdt.name} "
                    f"while parameter {where} is {dtype.name}; pass the hyper-parameters as "
                    f"{dtype.name} arrays (TF1 raises InvalidArgumentError here)")
        return
    if p.ndim < 1:
        raise InvalidArgumentError(
            f"{rd.name}: var must be at least 1 dimensional for a sparse gradient "
            f"(parameter {where})")
    if not jnp.issubdtype(g.indices.dtype, jnp.integer) or g.indices.ndim != 1:
        raise InvalidArgumentError(
            f"{rd.name}: indices must be a vector of int32 or int64 (parameter {where}), got "
            f"{g.indices.dtype.name}{list(g.indices.shape)}")
    if g.values.ndim < 1 or g.values.shape[0] != g.indices.shape[0]:
        raise InvalidArgumentError(
            f"{rd.name}: grad must be the same size as indices in the first dimension "
            f"(parameter {where}): values {list(g.values.shape)}, indices "
            f"{list(g.indices.shape)}")
    if tuple(g.values.shape[1:]) != tuple(p.shape[1:]):
        raise InvalidArgumentError(
            f"{rd.name}: var and grad must match in dimension 1.. (parameter {where}): var "
            f"{list(p.shape)}, grad values {list(g.values.shape)}")
    if g.dense_shape is not None and tuple(g.dense_shape) != tuple(p.shape):
        raise InvalidArgumentError(
            f"{rd.name}: IndexedSlices dense_shape {list(g.dense_shape)} differs from the "
            f"shape {list(p.shape)} of parameter {where}")
    _sparse.check_indices(g.indices, p.shape[0], f"{rd.name} ({where})")


def _resolve(rd: RuleDef, count: jax.Array, check: bool = True) -> Hyper:
    hp = Hyper()
    weak, constant = set(), set()
    for name, value in rd.hyperparams.items():
        if value is None:
            continue
        if callable(value):
            value = value(count)
        elif _numerics.is_concrete(value):
            constant.add(name)
        if (name in rd.check_dense_hyper_dtype and isinstance(value, (int, float))
                and not isinstance(value, (bool, np.generic))):  # np.float64 is typed
            # An extension beyond TF1, which converts it to a float32 tensor and then refuses
            # a float64 variable: the same float32 value, weakly typed, so it takes the
            # parameter's dtype (the sparse kernels cast that float32 value likewise).
            weak.add(name)
            value = jnp.asarray(float(np.float32(value)))
        else:
            value = _numerics.to_tf_tensor(value)
        if value.ndim != 0:  # TF1's kernels: OP_REQUIRES(IsScalar(lr.shape()), ...)
            raise InvalidArgumentError(
                f"{rd.name}: {_KERNEL_INPUT.get(name, name)} is not a scalar: "
                f"{list(value.shape)}")
        hp[name] = value
    hp.weak, hp.constant = frozenset(weak), frozenset(constant)
    if check:  # at applies, not in init (TF1's kernels check when they run)
        check_kernel_inputs(rd, hp)
    return hp


def check_kernel_inputs(rd: RuleDef, values: Mapping[str, Any]) -> None:
    """TF1's kernels' checks of their scalar inputs (``rd.kernel_checks``) on the concrete
    ones among ``values``; tracers are left alone (checked when they are concrete)."""
    for name, condition, message in rd.kernel_checks:
        value = values.get(name)
        if value is not None and not callable(value):
            require(condition, name, value, message, InvalidArgumentError)


def _run_leaf(rd: RuleDef, g, p, slots: dict, hp: Hyper, zero: jax.Array) -> LeafUpdate:
    low_precision = jnp.dtype(p.dtype) in _numerics.LOW_PRECISION
    # Inputs that are compile-time constants (a gradient closed over by a jitted function)
    # would let XLA fold and re-associate the kernel's arithmetic; hidden inputs cannot be.
    p = _numerics.hide(p, zero)
    slots = {name: _numerics.hide(value, zero) for name, value in slots.items()}
    if isinstance(g, IndexedSlices):
        g = IndexedSlices(_numerics.hide(g.values, zero), g.indices, g.dense_shape)
    else:
        g = _numerics.hide(g, zero)

    def call(kernel, *args):
        if not low_precision:
            return kernel(*args, hp)
        # float16/bfloat16: round every operation, as TF1's per-op float32 round trip.
        return _numerics.round_every_op(lambda *a: kernel(*a[:-1], hp.with_values(a[-1])))(
            *args, dict(hp))

    if isinstance(g, IndexedSlices):
        num_rows = p.shape[0]
        # Out-of-range rows (negative ones too, which jnp would wrap) become the padding row
        # ``num_rows``, whose reads are zeros and whose writes are dropped.
        indices = g.indices.astype(jnp.int32)
        indices = jnp.where((indices >= 0) & (indices < num_rows), indices, num_rows)
        if rd.deduplicate:
            uniq = _sparse.deduplicate(g.values, indices, num_rows)
            return call(rd.sparse, uniq.values, uniq.rows, p, slots)
        return call(rd.sparse, g.values, indices, p, slots)
    return call(rd.dense, g, p, slots)


# A kernel's LeafUpdate gives exactly one of ``delta`` and ``value``: where one is None the
# other is used as given (``cast`` is only for the checker; nothing is checked at run time).
def _new_value(p: jax.Array, out: LeafUpdate) -> jax.Array:
    if out.rows is None:
        return out.value if out.value is not None else p - cast(jax.Array, out.delta)
    if out.value is not None:
        rows_new = out.value
    else:
        rows_new = _sparse.gather(p, out.rows) - cast(jax.Array, out.delta)
    return _sparse.scatter(p, out.rows, rows_new)


def _optax_update(p: jax.Array, out: LeafUpdate) -> jax.Array:
    if out.update is not None:
        return out.update
    if out.rows is None:
        return -out.delta if out.delta is not None else cast(jax.Array, out.value) - p
    if out.delta is not None:
        rows_u = -out.delta
    else:
        rows_u = cast(jax.Array, out.value) - _sparse.gather(p, out.rows)
    return _sparse.scatter(jnp.zeros_like(p), out.rows, rows_u)


def build(rd: RuleDef) -> Rule:
    """Assembles ``init``, ``apply`` and ``update`` for one TF1 rule."""
    slot_names = tuple(name for name, _ in rd.slots)

    # One trace per (shape, dtype) of dense leaf instead of one per leaf: a model's many
    # same-shaped leaves (and every later step's retrace) reuse it. XLA inlines the call.
    @jax.jit
    def dense_leaf(g, p, slots, hp, zero):
        return _run_leaf(rd, g, p, slots, Hyper(hp), zero)

    non_slot_names = tuple(rd.non_slots(Hyper({k: v for k, v in rd.hyperparams.items()
                                               if v is not None})).keys())

    def concrete_init(params: ArrayTree):
        hp = _resolve(rd, jnp.zeros((), jnp.int32), check=False)
        fields = {"count": _numerics.initial_count(jax.tree_util.tree_leaves(params))}
        fields.update(rd.non_slots(hp))
        for name, init_fn in rd.slots:
            fields[name] = jax.tree_util.tree_map(init_fn, params)
        return rd.state_type(**fields)

    def init(params: ArrayTree):
        leaves = jax.tree_util.tree_leaves(params)
        if not any(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in leaves):
            return concrete_init(params)
        # Abstract init: shapes and dtypes, and each slot takes its parameter's sharding.
        abstract = jax.eval_shape(concrete_init, params)
        fields = abstract._asdict()
        for name in slot_names:
            fields[name] = jax.tree_util.tree_map(
                lambda s, p: jax.ShapeDtypeStruct(s.shape, s.dtype,
                                                  sharding=getattr(p, "sharding", None)),
                fields[name], params)
        return rd.state_type(**fields)

    def _step(grads, state, params, want_updates: bool):
        flat_g, treedef = jax.tree_util.tree_flatten_with_path(grads, is_leaf=is_grad_leaf)
        try:
            flat_p = treedef.flatten_up_to(params)
            flat_s = {s: treedef.flatten_up_to(getattr(state, s)) for s in slot_names}
        except (ValueError, TypeError) as e:
            raise ValueError(
                f"{rd.name}: grads, params and state must have the same tree structure "
                f"(grads: {treedef}); {e}") from None
        count = state.count
        hp = _resolve(rd, count)
        non_slot = {name: getattr(state, name) for name in non_slot_names}
        hp.update(non_slot)
        for i, ((path, g), p) in enumerate(zip(flat_g, flat_p)):
            if g is not None:
                _check_leaf(rd, _leaf_name(path), g, p, {s: flat_s[s][i] for s in slot_names},
                            hp)
        if rd.prepare is not None:
            hp.update(rd.prepare(hp, count))
        zero = _numerics.runtime_zero(count)

        new_p, new_s, updates = [], {s: [] for s in slot_names}, []
        for i, ((_, g), p) in enumerate(zip(flat_g, flat_p)):
            slots = {s: flat_s[s][i] for s in slot_names}
            if g is None:
                new_p.append(p)
                updates.append(None)
                for s in slot_names:
                    new_s[s].append(slots[s])
                continue
            if isinstance(g, IndexedSlices):
                out = _run_leaf(rd, g, p, slots, hp, zero)
            else:
                out = dense_leaf(g, p, slots, dict(hp), zero)
            if want_updates:
                updates.append(_optax_update(p, out))
            else:
                new_p.append(_new_value(p, out))
            for s in slot_names:
                new_s[s].append(out.slots[s])

        fields = {"count": _increment(count)}
        if rd.finish is not None:
            non_slot = rd.finish(non_slot, hp)
        fields.update(non_slot)
        for s in slot_names:
            fields[s] = jax.tree_util.tree_unflatten(treedef, new_s[s])
        new_state = rd.state_type(**fields)
        result = updates if want_updates else new_p
        return jax.tree_util.tree_unflatten(treedef, result), new_state

    def apply(grads: ArrayTree, state, params: ArrayTree):
        return _step(grads, state, params, want_updates=False)

    def update(grads: ArrayTree, state, params: Optional[ArrayTree] = None, **extra_args):
        del extra_args  # optax's GradientTransformationExtraArgs: TF1's rules take none
        if params is None:
            raise ValueError(
                f"{rd.name}: update() needs params (TF1's kernels read the variable)")
        return _step(grads, state, params, want_updates=True)

    hyper = {**rd.hyperparams, **rd.static}
    return Rule(init=init, apply=apply, update=update, name=rd.name, hyperparams=hyper,
                definition=rd)


# ----------------------------------------------------------------------------- validation


def _concrete_float(value: Any) -> Optional[float]:
    if callable(value) or value is None:
        return None
    if not _numerics.is_concrete(value):
        return None
    arr = np.asarray(value)
    if arr.size != 1:
        return None
    return float(arr.reshape(()))


def require(condition: Callable[[float], bool], name: str, value: Any, message: str,
            exc: type = ValueError, nan_passes: bool = False) -> None:
    """Raises ``exc(message % value)`` when a concrete ``value`` fails ``condition``.

    Kernel checks (``OP_REQUIRES(lr() > 0)``) reject NaN, as here by default. TF1's Python
    constructor checks are written as rejections (``if value <= 0.0: raise``), which NaN
    passes: those use ``nan_passes=True`` (checked against TF 2.21). Tracers and callables
    are checked when they run.
    """
    x = _concrete_float(value)
    if x is None or (nan_passes and math.isnan(x)):
        return
    if math.isnan(x) or not condition(x):
        raise exc(message % (value,))


def zeros_slot(p: jax.Array) -> jax.Array:
    """A slot of zeros shaped, typed and sharded like its parameter (TF1 ``_zeros_slot``)."""
    return jax.lax.full_like(p, 0)


def constant_slot(value: float) -> Callable[[jax.Array], jax.Array]:
    """A slot initialised to ``value`` built directly in the parameter's dtype (TF1)."""

    def init(p):
        return jax.lax.full_like(p, value)

    return init
