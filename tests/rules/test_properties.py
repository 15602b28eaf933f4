"""Property tests: any rule, dtype, shape and hyper-parameters in TF1's valid range.

For finite inputs every step must run, keep each leaf's shape and dtype, and stay finite,
except where TF1 itself is not finite (those cases are excluded from the ranges below and
pinned by the deterministic tests at the end, with TF1's documented result):

* float16 rounds ``epsilon`` below ~6e-8 to 0: Adam's ``0 / (0 + 0)`` is NaN on entries with
  ``m = v = 0`` (spec §3.6), Adadelta never moves (§3.5); so float16 draws ``epsilon >= 1e-4``.
* bfloat16 rounds ``beta2 = 0.999`` to 1.0: Adam's ``v`` stays 0 and the update becomes
  ``m * alpha / eps`` (§3.6): still finite, so it is inside the ranges.
* float16 overflows above 65504: magnitudes are kept small (``|g| <= 4``, ``|var| <= 2``,
  ``lr >= 0.01``) so that e.g. FTRL's ``sqrt(accum) / lr * var`` stays representable.

Hyper-parameters reach the jitted step as float32 arrays, as TF1 converts Python floats;
rebuilding the rule inside the step keeps one compilation per rule, dtype and shape.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import compatopt as co

from .rule_table import BF16, F16, F32, RULES, avals

SETTINGS = settings(max_examples=5, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
LOW = (F16, BF16)


def _u(lo, hi):
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False, allow_subnormal=False)


def _eps(dtype):
    return _u(1e-4, 1e-2) if dtype == F16 else _u(1e-8, 1e-2)


# TF1's valid ranges (narrowed only where float16 would overflow or round to 0).
def _hyper(factory, dtype):
    lr = _u(0.01, 1.0)
    if factory is co.gradient_descent:
        return st.fixed_dictionaries({"learning_rate": lr}), {}
    if factory is co.momentum:
        return (st.fixed_dictionaries({"learning_rate": lr, "momentum": _u(0.0, 0.99)}),
                {"use_nesterov": st.booleans()})
    if factory is co.adagrad:
        return st.fixed_dictionaries({"learning_rate": lr,
                                      "initial_accumulator_value": _u(0.01, 1.0)}), {}
    if factory is co.adagrad_da:
        return st.fixed_dictionaries({
            "learning_rate": lr, "initial_gradient_squared_accumulator_value": _u(0.01, 1.0),
            "l1_regularization_strength": _u(0.0, 0.1),
            "l2_regularization_strength": _u(0.0, 0.1)}), {}
    if factory is co.adadelta:
        return st.fixed_dictionaries({"learning_rate": lr, "rho": _u(0.5, 0.99),
                                      "epsilon": _eps(dtype)}), {}
    if factory is co.adam:
        return st.fixed_dictionaries({"learning_rate": _u(0.001, 0.1), "beta1": _u(0.0, 0.99),
                                      "beta2": _u(0.5, 0.999), "epsilon": _eps(dtype)}), {}
    if factory is co.ftrl:
        return st.fixed_dictionaries({
            "learning_rate": lr, "learning_rate_power": _u(-1.0, 0.0),
            "initial_accumulator_value": _u(0.01, 1.0),
            "l1_regularization_strength": _u(0.0, 0.1),
            "l2_regularization_strength": _u(0.0, 0.1),
            "l2_shrinkage_regularization_strength": _u(0.0, 0.1), "beta": _u(0.0, 1.0)}), {}
    if factory is co.proximal_gradient_descent:
        return st.fixed_dictionaries({"learning_rate": lr,
                                      "l1_regularization_strength": _u(0.0, 0.1),
                                      "l2_regularization_strength": _u(0.0, 0.1)}), {}
    if factory is co.proximal_adagrad:
        return st.fixed_dictionaries({"learning_rate": lr,
                                      "initial_accumulator_value": _u(0.01, 1.0),
                                      "l1_regularization_strength": _u(0.0, 0.1),
                                      "l2_regularization_strength": _u(0.0, 0.1)}), {}
    if factory is co.rmsprop:
        return (st.fixed_dictionaries({"learning_rate": _u(0.001, 0.1), "decay": _u(0.5, 0.99),
                                       "momentum": _u(0.0, 0.99), "epsilon": _eps(dtype)}),
                {"centered": st.booleans()})
    raise AssertionError(factory)


# One representative spec per constructor (the table lists some twice).
FACTORIES = {}
for _s in RULES:
    FACTORIES.setdefault(_s.factory.__name__, _s)
SPEC_NAMES = sorted(FACTORIES)


@functools.lru_cache(maxsize=None)
def _stepper(name: str, static: tuple):
    factory = FACTORIES[name].factory

    def step(hyper, grads, state, params):
        return factory(**hyper, **dict(static)).apply(grads, state, params)

    return jax.jit(step)


def _values(draw, shape, bound, dtype, zeros=True):
    n = int(np.prod(shape))
    elems = _u(-bound, bound)
    if zeros:
        elems = st.one_of(st.just(0.0), elems)
    vals = draw(st.lists(elems, min_size=n, max_size=n))
    return jnp.asarray(np.asarray(vals, np.float32).reshape(shape)).astype(dtype)


def _finite(tree) -> bool:
    return all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves(tree))


def _check_steps(draw, name, dtype, shapes, make_grad):
    spec = FACTORIES[name]
    hyper_st, static_st = _hyper(spec.factory, dtype)
    hyper = draw(hyper_st)
    static = tuple(sorted((k, draw(v)) for k, v in static_st.items()))
    rule = spec.factory(**hyper, **dict(static))  # concrete: TF1's constructor checks run
    params = {k: _values(draw, s, 2.0, dtype) for k, s in shapes.items()}
    state = rule.init(params)
    before = avals((params, state))
    # Traced hyper-parameters are float32 arrays (as inject_hyperparams makes them), except
    # those an uncast kernel (the proximal pair) takes: arrays of the parameters' dtype.
    uncast = set(rule.definition.check_dense_hyper_dtype)
    arrays = {k: np.asarray(v, dtype if k in uncast else np.float32) for k, v in hyper.items()}
    step = _stepper(name, static)
    for _ in range(2):
        grads = {k: make_grad(draw, k, s) for k, s in shapes.items()}
        params, state = step(arrays, grads, state, params)
        assert avals((params, state)) == before
        assert _finite((params, state)), (name, dtype, hyper, static, params, state)


def _dense_cases():  # float64 would need x64 and adds nothing to these properties
    return [(n, d) for n in SPEC_NAMES for d in FACTORIES[n].dense_dtypes if d != "float64"]


def _sparse_cases():
    return [(n, d) for n in SPEC_NAMES for d in FACTORIES[n].sparse_dtypes if d != "float64"]


@pytest.mark.parametrize("name,dtype", _dense_cases())
@SETTINGS
@given(data=st.data())
def test_dense_steps_keep_shapes_dtypes_and_stay_finite(name, dtype, data):
    shapes = {"w": (2, 3), "v": (3,), "s": ()}  # one tree, every rank: one compilation

    def grad(draw, k, s):
        return _values(draw, s, 4.0, dtype)

    _check_steps(data.draw, name, dtype, shapes, grad)


@pytest.mark.parametrize("name,dtype", _sparse_cases())
@SETTINGS
@given(data=st.data())
def test_sparse_steps_keep_shapes_dtypes_and_stay_finite(name, dtype, data):
    shapes = {"w": (4, 2), "v": (5,)}
    k = 3

    def grad(draw, key, s):
        idx = draw(st.lists(st.integers(0, s[0] - 1), min_size=k, max_size=k))  # repeats ok
        return co.IndexedSlices(_values(draw, (k,) + s[1:], 4.0, dtype),
                                jnp.asarray(idx, jnp.int32), s)

    _check_steps(data.draw, name, dtype, shapes, grad)


# ------------------------------------------------ TF1's documented non-finite low precision


def _step(rule, g, dtype, n=1, shape=(8,)):
    params = {"w": jnp.ones(shape, dtype)}
    state = rule.init(params)
    for _ in range(n):
        params, state = jax.jit(rule.apply)({"w": g}, state, params)
    return params["w"], state


def test_float16_adam_default_epsilon_gives_nan_where_m_and_v_are_zero():
    """TF1 (spec §3.6): ``float16(1e-8) == 0``, so ``(0 * alpha) / (sqrt(0) + 0)`` is NaN."""
    g = jnp.asarray([0.0, 1.0, -0.5, 0.0, 2.0, 0.25, 0.0, -1.0], jnp.float16)
    w, _ = _step(co.adam(0.001), g, jnp.float16)
    w = np.asarray(w, np.float32)
    zero = np.asarray(g) == 0
    assert np.all(np.isnan(w[zero])) and np.all(np.isfinite(w[~zero]))


def test_float16_adadelta_default_epsilon_never_moves():
    """TF1 (spec §3.5): with ``epsilon`` rounded to 0, ``sqrt(accum_update + 0) == 0``."""
    g = jnp.asarray([1.0, -0.5, 2.0, 0.25, 3.0, -1.0, 0.125, 4.0], jnp.float16)
    w, state = _step(co.adadelta(1.0), g, jnp.float16, n=3)
    np.testing.assert_array_equal(np.asarray(w, np.float32), np.ones(8))
    np.testing.assert_array_equal(np.asarray(state.accum_update["w"], np.float32), 0)


def test_bfloat16_adam_default_beta2_keeps_v_at_zero():
    """TF1 (spec §3.6): ``bfloat16(0.999) == 1``, so ``1 - beta2 == 0`` and ``v`` stays 0."""
    g = jnp.full((8,), 0.5, jnp.bfloat16)
    w, state = _step(co.adam(0.001), g, jnp.bfloat16, n=3)
    np.testing.assert_array_equal(np.asarray(state.v["w"], np.float32), 0)
    assert np.all(np.isfinite(np.asarray(w, np.float32)))


def test_float16_rmsprop_default_epsilon_stays_finite():
    """``float16(1e-10) == 0`` is harmless for RMSProp: ``ms`` starts at 1 (spec §3.10)."""
    g = jnp.asarray([0.0, 1.0, -0.5, 0.0, 2.0, 0.25, 0.0, -1.0], jnp.float16)
    for centered in (False, True):
        w, _ = _step(co.rmsprop(0.01, centered=centered), g, jnp.float16, n=3)
        assert np.all(np.isfinite(np.asarray(w, np.float32)))


@pytest.mark.parametrize("dtype", [F32])
def test_float32_adam_zero_gradient_is_finite(dtype):
    """In float32 ``epsilon = 1e-8`` survives: ``0 / (0 + eps) == 0`` (no NaN)."""
    w, _ = _step(co.adam(0.001), jnp.zeros(8, dtype), dtype)
    np.testing.assert_array_equal(np.asarray(w), np.ones(8))
