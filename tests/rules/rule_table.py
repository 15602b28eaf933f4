"""The one table of every compatopt rule that drives the generic test suites.

Each :class:`RuleSpec` names a constructor with one hyper-parameter set and the facts about
it that TF1 fixes (spec §3, §3.11): which dtypes have dense / sparse kernels, whether the
optax-style ``update`` lands on ``apply``'s bits through ``apply_updates`` (kernels ending in
``var - delta``), which hyper-parameters TF1 calls when they are callables, and how the
sparse kernel relates to the dense one on the rows it touches.

The module also holds the small comparison helpers the suites share (bitwise and ULP
comparison of pytrees, test data), so that every suite compares the same way.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

import compatopt as co

F16, BF16, F32, F64 = "float16", "bfloat16", "float32", "float64"
ALL = (F16, BF16, F32, F64)


@dataclasses.dataclass(frozen=True)
class RuleSpec:
    """One rule under test.

    Attributes:
      id: pytest id.
      factory: the public constructor (``co.adam``...).
      kwargs: one hyper-parameter set, in TF1's valid range.
      dense_dtypes / sparse_dtypes: parameter dtypes with a kernel (Python-float
        hyper-parameters): all four; TF1 has no half kernels for AdagradDA, the proximal
        pair and sparse bfloat16 RMSProp (compatopt's extension), and its proximal dense
        kernels refuse a float32 hyper-parameter on float64 (a Python float is weak here).
      update_exact: ``apply_updates(p, update(...))`` is bitwise ``apply(...)`` (the kernel
        ends in ``var - delta``): GradientDescent, Momentum, Adagrad, Adadelta, Adam, RMSProp.
      callable_args: the hyper-parameters TF1 takes as tensors, which every rule accepts as
        ``count -> value`` schedules.
      sparse_rows: how a rank-2 sparse apply with unique indices compares with the dense
        apply on the rows it touches: ``"exact"`` (TF1's sparse row formula is the dense
        one) or ``"close"`` (another operation order; a few ulp).
      sparse_all_rows: the sparse kernel changes every row (Adam's Python composite).
      name: TF1's optimizer name (``Rule.name``).
    """

    id: str
    factory: Callable[..., co.Rule]
    kwargs: Mapping[str, Any]
    dense_dtypes: tuple
    sparse_dtypes: tuple
    update_exact: bool
    callable_args: tuple
    sparse_rows: str
    sparse_all_rows: bool
    name: str

    def make(self, **overrides: Any) -> co.Rule:
        """The rule with this spec's hyper-parameters, some replaced by ``overrides``."""
        return self.factory(**{**self.kwargs, **overrides})

    def __str__(self) -> str:
        return self.id


def _spec(id, factory, kwargs, *, dense=ALL, sparse=ALL, update_exact=True, callables=(),
          sparse_rows="exact", sparse_all_rows=False, name):
    return RuleSpec(id, factory, kwargs, tuple(dense), tuple(sparse), update_exact,
                    tuple(callables), sparse_rows, sparse_all_rows, name)


_DA_HYPERS = ("learning_rate", "l1_regularization_strength", "l2_regularization_strength")

RULES = (
    _spec("gradient_descent", co.gradient_descent, {"learning_rate": 0.1},
          callables=("learning_rate",), name="GradientDescent"),
    _spec("momentum", co.momentum, {"learning_rate": 0.1, "momentum": 0.9},
          callables=("learning_rate", "momentum"), name="Momentum"),
    _spec("momentum_nesterov", co.momentum,
          {"learning_rate": 0.1, "momentum": 0.9, "use_nesterov": True},
          callables=("learning_rate", "momentum"), sparse_rows="close", name="Momentum"),
    _spec("adagrad", co.adagrad, {"learning_rate": 0.1, "initial_accumulator_value": 0.1},
          callables=("learning_rate",), name="Adagrad"),
    _spec("adagrad_da", co.adagrad_da, {"learning_rate": 0.1}, update_exact=False,
          callables=("learning_rate",), sparse_rows="close", name="AdagradDA"),
    _spec("adagrad_da_l1l2", co.adagrad_da,
          {"learning_rate": 0.1, "initial_gradient_squared_accumulator_value": 0.2,
           "l1_regularization_strength": 0.01, "l2_regularization_strength": 0.02},
          update_exact=False, callables=_DA_HYPERS, sparse_rows="close", name="AdagradDA"),
    _spec("adadelta", co.adadelta, {"learning_rate": 1.0, "rho": 0.95, "epsilon": 1e-6},
          callables=("learning_rate", "rho", "epsilon"), name="Adadelta"),
    _spec("adam", co.adam, {"learning_rate": 0.01, "beta1": 0.9, "beta2": 0.999,
                            "epsilon": 1e-8},
          callables=("learning_rate", "beta1", "beta2", "epsilon"), sparse_rows="close",
          sparse_all_rows=True, name="Adam"),
    _spec("ftrl", co.ftrl, {"learning_rate": 0.1}, update_exact=False,
          callables=("learning_rate",), name="Ftrl"),
    _spec("ftrl_reg", co.ftrl,
          {"learning_rate": 0.1, "learning_rate_power": -0.3, "initial_accumulator_value": 0.2,
           "l1_regularization_strength": 0.01, "l2_regularization_strength": 0.02,
           "l2_shrinkage_regularization_strength": 0.01, "beta": 0.1},
          update_exact=False, callables=("learning_rate", "learning_rate_power",
                                         "l1_regularization_strength",
                                         "l2_regularization_strength",
                                         "l2_shrinkage_regularization_strength", "beta"),
          name="Ftrl"),
    _spec("proximal_gradient_descent", co.proximal_gradient_descent,
          {"learning_rate": 0.1, "l1_regularization_strength": 0.01,
           "l2_regularization_strength": 0.01},
          update_exact=False, callables=_DA_HYPERS, name="ProximalGradientDescent"),
    _spec("proximal_adagrad", co.proximal_adagrad,
          {"learning_rate": 0.1, "initial_accumulator_value": 0.1,
           "l1_regularization_strength": 0.0, "l2_regularization_strength": 0.01},
          update_exact=False, callables=_DA_HYPERS, name="ProximalAdagrad"),
    _spec("rmsprop", co.rmsprop, {"learning_rate": 0.01, "decay": 0.9, "momentum": 0.9,
                                  "epsilon": 1e-10},
          callables=("learning_rate", "decay", "momentum", "epsilon"),
          sparse_rows="close", name="RMSProp"),
    _spec("rmsprop_centered", co.rmsprop,
          {"learning_rate": 0.01, "decay": 0.9, "momentum": 0.5, "epsilon": 1e-10,
           "centered": True},
          callables=("learning_rate", "decay", "momentum", "epsilon"),
          sparse_rows="close", name="RMSProp"),
)

RULE_IDS = tuple(spec.id for spec in RULES)
BY_ID = {spec.id: spec for spec in RULES}


CALLABLE_RULES = tuple(s for s in RULES if s.callable_args)
NO_CALLABLE_RULES = tuple(s for s in RULES if not s.callable_args)
EXACT_UPDATE_RULES = tuple(s for s in RULES if s.update_exact)


def dense_cases(dtypes=ALL) -> list:
    """``(spec, dtype)`` for every rule and every dense dtype it supports among ``dtypes``."""
    return [(s, d) for s in RULES for d in s.dense_dtypes if d in dtypes]


def sparse_cases(dtypes=ALL) -> list:
    return [(s, d) for s in RULES for d in s.sparse_dtypes if d in dtypes]


def case_id(case) -> str:
    spec, dtype = case
    return f"{spec.id}-{dtype}"


# ------------------------------------------------------------------------------- test data


def dtype_of(name: str) -> jnp.dtype:
    return jnp.dtype(name)


def random_tree(seed: int, dtype: str = F32, shapes: Mapping[str, tuple] = None,
                scale: float = 1.0) -> dict:
    """A ``{"w": [4, 3], "b": [3]}`` tree (or ``shapes``) of normal values in ``dtype``."""
    shapes = {"w": (4, 3), "b": (3,)} if shapes is None else shapes
    rng = np.random.RandomState(seed)
    return {k: jnp.asarray((scale * rng.standard_normal(shape)).astype(np.float32)).astype(dtype)
            for k, shape in shapes.items()}


def sparse_grad(seed: int, dtype: str, num_rows: int, row_shape: tuple, indices) -> co.IndexedSlices:
    """``IndexedSlices`` with normal values for the given ``indices``."""
    rng = np.random.RandomState(seed)
    values = rng.standard_normal((len(indices),) + tuple(row_shape)).astype(np.float32)
    return co.IndexedSlices(jnp.asarray(values).astype(dtype), jnp.asarray(indices, jnp.int32),
                            (num_rows,) + tuple(row_shape))


# ------------------------------------------------------------------------------ comparisons


def bits(x) -> np.ndarray:
    """The raw bit patterns of a float array (an unsigned integer view)."""
    x = np.asarray(x)
    return x.view(np.dtype(f"uint{8 * x.dtype.itemsize}"))


def _leaves_with_paths(tree):
    return jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: x is None)[0]


def assert_trees_bitwise_equal(actual, expected, what: str = "") -> None:
    """Same structure, dtypes, shapes and bit patterns (``-0.0 != 0.0``; NaN == same NaN)."""
    sa = jax.tree_util.tree_structure(actual, is_leaf=lambda x: x is None)
    se = jax.tree_util.tree_structure(expected, is_leaf=lambda x: x is None)
    assert sa == se, f"{what}: tree structures differ: {sa} != {se}"
    for (path, a), (_, e) in zip(_leaves_with_paths(actual), _leaves_with_paths(expected)):
        where = f"{what}{jax.tree_util.keystr(path)}"
        if a is None or e is None:
            assert a is None and e is None, f"{where}: {a!r} vs {e!r}"
            continue
        a, e = np.asarray(a), np.asarray(e)
        assert a.dtype == e.dtype, f"{where}: dtype {a.dtype} != {e.dtype}"
        assert a.shape == e.shape, f"{where}: shape {a.shape} != {e.shape}"
        if a.dtype.kind == "f" or a.dtype.name == "bfloat16":
            diff = bits(a) != bits(e)
        else:
            diff = a != e
        if np.any(diff):
            k = np.flatnonzero(diff)
            raise AssertionError(
                f"{where}: {k.size}/{a.size} elements differ in their bits; first at flat "
                f"index {k[0]}: {a.reshape(-1)[k[0]]!r} vs {e.reshape(-1)[k[0]]!r}")


def ulp_distance(a, b) -> np.ndarray:
    """Number of representable values between ``a`` and ``b`` (same float dtype)."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype
    width = 8 * a.dtype.itemsize
    signed = np.dtype(f"int{width}")

    def ordered(x):
        i = bits(x).view(signed).astype(np.int64)
        return np.where(i < 0, np.int64(np.iinfo(signed).min) - i, i)

    return np.abs(ordered(a) - ordered(b))


def assert_trees_close_ulp(actual, expected, maxulp: int, what: str = "") -> None:
    """Same structure, dtypes and shapes, every element within ``maxulp`` ulp."""
    sa = jax.tree_util.tree_structure(actual)
    se = jax.tree_util.tree_structure(expected)
    assert sa == se, f"{what}: tree structures differ: {sa} != {se}"
    for (path, a), (_, e) in zip(_leaves_with_paths(actual), _leaves_with_paths(expected)):
        where = f"{what}{jax.tree_util.keystr(path)}"
        a, e = np.asarray(a), np.asarray(e)
        assert a.dtype == e.dtype and a.shape == e.shape, f"{where}: {a.dtype}{a.shape} vs {e.dtype}{e.shape}"
        if a.dtype.kind != "f" and a.dtype.name != "bfloat16":
            np.testing.assert_array_equal(a, e, err_msg=where)
            continue
        d = ulp_distance(a, e)
        assert d.max(initial=0) <= maxulp, (
            f"{where}: {int(d.max())} ulp apart (max {maxulp}) at flat index "
            f"{int(d.argmax())}: {a.reshape(-1)[d.argmax()]!r} vs {e.reshape(-1)[d.argmax()]!r}")


def avals(tree) -> Any:
    """``(shape, dtype, weak_type)`` per leaf: what decides whether ``jit`` retraces."""
    return jax.tree_util.tree_map(
        lambda x: (tuple(x.shape), jnp.dtype(x.dtype).name, bool(getattr(x, "weak_type", False))),
        tree)


def dtype_context(dtype: str):
    """``jax.enable_x64(True)`` for float64 cases, else a no-op context."""
    return jax.enable_x64(True) if jnp.dtype(dtype) == jnp.float64 else contextlib.nullcontext()
