"""Bad input fails early, clearly, like TF1, and changes nothing.

Each case checks the exception type, that the message names the offending leaf (``['w']``)
or hyper-parameter, and that nothing was consumed: the rule validates every leaf while
tracing, before any computation, so under ``jit`` with donated ``state``/``params`` the
buffers are still alive and unchanged after the error, and no partial state is returned.
TF1 messages and behaviours were checked against TF 2.21 (``tf.compat.v1.train``).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import compatopt as co
from compatopt.errors import InvalidArgumentError

from .rule_table import RULES, assert_trees_bitwise_equal, random_tree

W = r"\['w'\]"


def _snapshot(tree):
    return jax.tree_util.tree_map(lambda x: np.array(x, copy=True), tree)


def _arrays(tree):
    return [x for x in jax.tree_util.tree_leaves(tree) if isinstance(x, jax.Array)]


def _expect_error(rule, grads, state, params, exc, match, *, jit=True, method="apply"):
    """``rule.<method>`` raises ``exc`` eagerly and under donating ``jit``; inputs survive."""
    before = _snapshot((grads, state, params))
    modes = ("eager", "jit") if jit else ("eager",)
    for mode in modes:
        fn = getattr(rule, method)
        if mode == "jit":
            fn = jax.jit(fn, donate_argnums=(1, 2))
        with pytest.raises(exc, match=match):
            fn(grads, state, params)
        assert not any(x.is_deleted() for x in _arrays((state, params))), f"{mode}: donated"
        assert_trees_bitwise_equal(_snapshot((grads, state, params)), before, f"{mode}: ")


@pytest.fixture
def tree():
    return random_tree(0), random_tree(1)


# --------------------------------------------------------------------------- structure


@pytest.mark.parametrize("spec", RULES, ids=str)
def test_mismatched_tree_structure(spec, tree):
    params, grads = tree
    rule = spec.make()
    state = rule.init(params)
    match = "same tree structure"
    _expect_error(rule, {"w": grads["w"]}, state, params, ValueError, match)
    _expect_error(rule, {**grads, "extra": grads["b"]}, state, params, ValueError, match)
    _expect_error(rule, [grads["b"], grads["w"]], state, params, ValueError, match)
    if len(state) > 1:  # a state made for other params
        other = rule.init({"w": params["w"]})
        _expect_error(rule, grads, other, params, ValueError, match)


def test_missing_gradient_must_be_none_not_absent(tree):
    params, grads = tree
    rule = co.adam(0.1)
    with pytest.raises(ValueError, match=r"expected keys: \['w'\]; present keys: \['b', 'w'\]"):
        rule.apply({"w": grads["w"]}, rule.init(params), params)
    rule.apply({"w": grads["w"], "b": None}, rule.init(params), params)


@pytest.mark.parametrize("spec", RULES, ids=str)
def test_grad_param_shape_mismatch(spec, tree):
    params, grads = tree
    rule = spec.make()
    grads = {**grads, "w": grads["w"].T}
    _expect_error(rule, grads, rule.init(params), params, InvalidArgumentError,
                  rf"var and grad do not have the same shape \[4, 3\] \[3, 4\] .*{W}")
    _expect_error(rule, grads, rule.init(params), params, InvalidArgumentError, W,
                  method="update")


@pytest.mark.parametrize("spec", [s for s in RULES if len(s.make().init({"w": jnp.ones(1)})) > 1],
                         ids=str)
def test_state_slot_shape_mismatch(spec, tree):
    params, grads = tree
    rule = spec.make()
    state = rule.init({"w": jnp.ones((5, 3)), "b": params["b"]})
    _expect_error(rule, grads, state, params, InvalidArgumentError,
                  rf"slot '\w+' of {W} has shape \(5, 3\)")


# ------------------------------------------------------------------------------ dtypes


@pytest.mark.parametrize("spec", RULES, ids=str)
def test_grad_param_dtype_mismatch(spec, tree):
    params, grads = tree
    rule = spec.make()
    grads = {**grads, "w": grads["w"].astype(jnp.bfloat16)}
    _expect_error(rule, grads, rule.init(params), params, TypeError,
                  rf"gradient for {W} has dtype bfloat16 but the parameter has dtype float32")


@pytest.mark.parametrize("spec", RULES, ids=str)
def test_integer_params(spec):
    params = {"w": jnp.ones((2, 2), jnp.int32)}
    rule = spec.make()
    _expect_error(rule, {"w": jnp.ones((2, 2), jnp.int32)}, rule.init(params), params,
                  TypeError, rf"parameter {W} has dtype int32")


def test_non_array_param():
    rule = co.gradient_descent(0.1)
    with pytest.raises(TypeError, match=rf"parameter {W} is not an array: str"):
        rule.apply({"w": jnp.ones(2)}, rule.init({"w": "x"}), {"w": "x"})


@pytest.mark.parametrize("factory,kwargs,dtype,sparse", [
    (co.adagrad_da, {"learning_rate": 0.1}, jnp.float16, False),
    (co.adagrad_da, {"learning_rate": 0.1}, jnp.bfloat16, True),
    (co.proximal_gradient_descent, {"learning_rate": 0.1}, jnp.float16, False),
    (co.proximal_adagrad, {"learning_rate": 0.1}, jnp.bfloat16, True),
    (co.rmsprop, {"learning_rate": 0.1}, jnp.bfloat16, True),
    (co.rmsprop, {"learning_rate": 0.1, "centered": True}, jnp.bfloat16, True),
], ids=["adagrad_da-f16", "adagrad_da-sparse-bf16", "proximal_gd-f16",
        "proximal_adagrad-sparse-bf16", "rmsprop-sparse-bf16", "rmsprop_centered-sparse-bf16"])
def test_half_precision_beyond_tf1(factory, kwargs, dtype, sparse):
    """TF1 registers no kernel for these pairs; compatopt computes them as its other half
    kernels (float32, one rounding per op): eager equals jit bit for bit, and the result is
    within one half-precision ulp of the float32 rule's, rounded."""
    rule = factory(**kwargs)
    base = jnp.linspace(-1.0, 1.0, 6, dtype=jnp.float32).reshape(3, 2)

    def grads(d):
        g = (0.5 * base + 0.25).astype(d)
        return {"w": co.IndexedSlices(g[:2], jnp.asarray([2, 0]), (3, 2)) if sparse else g}

    params = {"w": base.astype(dtype)}
    eager = rule.apply(grads(dtype), rule.init(params), params)
    jitted = jax.jit(rule.apply)(grads(dtype), rule.init(params), params)
    assert_trees_bitwise_equal(eager, jitted)
    assert eager[0]["w"].dtype == jnp.dtype(dtype)
    p32 = {"w": base}
    wide = rule.apply(grads(jnp.float32), rule.init(p32), p32)[0]["w"]
    ulp = float(jnp.finfo(dtype).eps)
    np.testing.assert_allclose(np.asarray(eager[0]["w"], np.float32), np.asarray(wide),
                               rtol=2 * ulp, atol=2 * ulp)


@pytest.mark.parametrize("factory", [co.proximal_gradient_descent, co.proximal_adagrad])
def test_proximal_dense_float64_refuses_float32_arrays(factory):
    """TF1's proximal dense kernels take the hyper-parameters uncast: an explicitly typed
    float32 array on a float64 variable is refused, as TF1 does (sparse casts and works);
    a Python float is accepted (beyond TF1): its float32 value (TF1's ``convert_to_tensor``),
    weakly typed, so dense and sparse steps read the same ``float64(float32(x))``."""
    with jax.enable_x64(True):
        params = {"w": jnp.ones((3, 2), jnp.float64)}
        grads = {"w": jnp.ones((3, 2), jnp.float64)}
        rule = factory(np.float32(0.1), l1_regularization_strength=0.01)
        _expect_error(rule, grads, rule.init(params), params, TypeError,
                      rf"takes 'learning_rate' uncast, and it is float32 while parameter {W} "
                      rf"is float64")
        sparse = {"w": co.IndexedSlices(grads["w"][:1], jnp.asarray([2]), (3, 2))}
        rule.apply(sparse, rule.init(params), params)  # sparse casts: fine
        weak = factory(0.1, l1_regularization_strength=0.01)
        strict = factory(np.float64(np.float32(0.1)),
                         l1_regularization_strength=np.float64(np.float32(0.01)))
        assert_trees_bitwise_equal(weak.apply(grads, weak.init(params), params),
                                   strict.apply(grads, strict.init(params), params))


# ------------------------------------------------------------------ hyper-parameter checks


@pytest.mark.parametrize("factory,name", [
    (co.adagrad, "initial_accumulator_value"),
    (co.proximal_adagrad, "initial_accumulator_value"),
    (co.adagrad_da, "initial_gradient_squared_accumulator_value"),
])
@pytest.mark.parametrize("value", [-1.0, 0.0])
def test_initial_accumulator_must_be_positive(factory, name, value):
    with pytest.raises(ValueError, match=rf"^{name} must be positive: {value}$"):
        factory(0.1, **{name: value})


@pytest.mark.parametrize("factory,name", [
    (co.adagrad, "initial_accumulator_value"),
    (co.proximal_adagrad, "initial_accumulator_value"),
    (co.adagrad_da, "initial_gradient_squared_accumulator_value"),
    (co.ftrl, "initial_accumulator_value"),
    (co.ftrl, "l1_regularization_strength"),
    (co.ftrl, "learning_rate_power"),
])
def test_nan_constructor_values_are_accepted_like_tf1(factory, name):
    """TF 2.21 checks these in Python as rejections (``if value <= 0.0: raise``), which NaN
    passes, so the constructors accept NaN (re-checked in graph mode with tensorflow-cpu
    2.21 for all six) (the kernels' own checks, ``lr > 0``, do reject
    it)."""
    factory(0.1, **{name: math.nan})


@pytest.mark.parametrize("kwargs,message", [
    ({"initial_accumulator_value": -1.0},
     "initial_accumulator_value -1.000000 needs to be positive or zero"),
    ({"learning_rate_power": 0.5}, "learning_rate_power 0.500000 needs to be negative or zero"),
    ({"l1_regularization_strength": -0.5},
     "l1_regularization_strength -0.500000 needs to be positive or zero"),
    ({"l2_regularization_strength": -2.0},
     "l2_regularization_strength -2.000000 needs to be positive or zero"),
    ({"l2_shrinkage_regularization_strength": -0.5},
     "l2_shrinkage_regularization_strength -0.500000 needs to be positive or zero"),
])
def test_ftrl_constructor_checks_with_tf1_messages(kwargs, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        co.ftrl(0.1, **kwargs)


def test_ftrl_zero_values_are_allowed():
    co.ftrl(0.1, learning_rate_power=0.0, initial_accumulator_value=0.0)


def test_ftrl_check_order_matches_tf1():
    with pytest.raises(ValueError, match="^learning_rate_power 0.500000"):
        co.ftrl(0.1, learning_rate_power=0.5, l1_regularization_strength=-1.0)


@pytest.mark.parametrize("kwargs,message", [
    ({"learning_rate": -0.1}, "lr is not a positive scalar"),
    ({"learning_rate": 0.0}, "lr is not a positive scalar"),
    ({"learning_rate": math.nan}, "lr is not a positive scalar"),
    ({"learning_rate": 0.1, "l1_regularization_strength": -0.1},
     "l1 regularization strength is not a non-negative scalar"),
    ({"learning_rate": 0.1, "l2_regularization_strength": math.nan},
     "l2 regularization strength is not a non-negative scalar"),
])
def test_proximal_adagrad_kernel_checks(kwargs, message):
    with pytest.raises(InvalidArgumentError, match=message):
        co.proximal_adagrad(**kwargs)


def test_proximal_gradient_descent_has_no_checks():
    """TF1's ProximalGradientDescent kernel accepts a negative lr and l1 (verified)."""
    rule = co.proximal_gradient_descent(-0.1, l1_regularization_strength=-0.1)
    p = {"w": jnp.ones(2)}
    rule.apply({"w": jnp.ones(2)}, rule.init(p), p)


def _ftrl_sparse_case(lr):
    rule = co.ftrl(lr)
    params = {"w": jnp.ones((3, 2))}
    sparse = {"w": co.IndexedSlices(jnp.ones((1, 2)), jnp.asarray([1]), (3, 2))}
    return rule, sparse, params


@pytest.mark.parametrize("lr", [-0.1, 0.0, math.nan])
def test_ftrl_sparse_kernel_checks_lr(lr):
    """TF1's SparseApplyFtrl checks ``lr > 0`` at run time; the dense kernel does not (TF 2.21
    applies a negative or NaN dense lr without complaint)."""
    rule, sparse, params = _ftrl_sparse_case(lr)
    rule.apply({"w": jnp.ones((3, 2))}, rule.init(params), params)  # dense: no check
    _expect_error(rule, sparse, rule.init(params), params, InvalidArgumentError,
                  "lr is not a positive scalar", jit=False)


@pytest.mark.parametrize("lr", [-0.1, math.nan])
def test_ftrl_sparse_kernel_checks_lr_under_jit(lr):
    rule, sparse, params = _ftrl_sparse_case(lr)
    with pytest.raises(InvalidArgumentError, match="lr is not a positive scalar"):
        jax.jit(rule.apply)(sparse, rule.init(params), params)


@pytest.mark.parametrize("factory,kwargs", [
    (co.proximal_adagrad, {"learning_rate": lambda c: jnp.float32(-1.0)}),
    (co.proximal_adagrad, {"learning_rate": 0.1,
                           "l1_regularization_strength": lambda c: jnp.float32(-0.5)}),
], ids=["proximal_adagrad-lr", "proximal_adagrad-l1"])
def test_schedules_checked_at_run_time(factory, kwargs):
    """A schedule's value is checked at each apply, as graph mode's kernels check their
    input tensors (``OP_REQUIRES``), when it is concrete; nothing changes."""
    rule = factory(**kwargs)
    params = {"w": jnp.ones((3, 2))}
    _expect_error(rule, {"w": jnp.ones((3, 2))}, rule.init(params), params,
                  InvalidArgumentError, "is not a (positive|non-negative) scalar", jit=False)


# ----------------------------------------------------------------------------- sparse


def _sparse_case(spec_id="adagrad"):
    spec = next(s for s in RULES if s.id == spec_id)
    rule = spec.make()
    params = {"w": random_tree(0)["w"], "b": random_tree(0)["b"]}
    return rule, params, rule.init(params)


@pytest.mark.parametrize("spec", RULES, ids=str)
@pytest.mark.parametrize("index", [4, 100, -1])
def test_out_of_range_index_eager(spec, index):
    rule = spec.make()
    params = random_tree(0)
    grads = {"w": co.IndexedSlices(jnp.ones((2, 3)), jnp.asarray([1, index]), (4, 3)),
             "b": jnp.ones(3)}
    _expect_error(rule, grads, rule.init(params), params, InvalidArgumentError,
                  rf"^{spec.name} \({W}\): indices\[1\] = {index} is not in \[0, 4\)$",
                  jit=False)


@pytest.mark.parametrize("spec", RULES, ids=str)
def test_out_of_range_index_under_jit_is_dropped(spec):
    """XLA cannot raise from a running computation: the out-of-range row is dropped."""
    rule = spec.make()
    params = random_tree(0)
    state = rule.init(params)
    vals = jnp.asarray(np.random.RandomState(2).standard_normal((2, 3)), jnp.float32)
    bad = {"w": co.IndexedSlices(vals, jnp.asarray([1, 4]), (4, 3)), "b": None}
    good = {"w": co.IndexedSlices(vals[:1], jnp.asarray([1]), (4, 3)), "b": None}
    got = jax.jit(rule.apply)(bad, state, params)
    want = jax.jit(rule.apply)(good, state, params)
    assert_trees_bitwise_equal(got, want)


@pytest.mark.parametrize("spec_id", ["gradient_descent", "adagrad", "adam"])
def test_negative_index_under_jit_is_dropped(spec_id):
    spec = next(s for s in RULES if s.id == spec_id)
    rule = spec.make()
    params = random_tree(0)
    state = rule.init(params)
    vals = jnp.asarray(np.random.RandomState(2).standard_normal((2, 3)), jnp.float32)
    bad = {"w": co.IndexedSlices(vals, jnp.asarray([1, -1]), (4, 3)), "b": None}
    good = {"w": co.IndexedSlices(vals[:1], jnp.asarray([1]), (4, 3)), "b": None}
    assert_trees_bitwise_equal(jax.jit(rule.apply)(bad, state, params),
                               jax.jit(rule.apply)(good, state, params))


@pytest.mark.parametrize("indices", [
    jnp.asarray([0.0, 1.0]), jnp.asarray([[0], [1]]), jnp.asarray([True, False])],
    ids=["float", "rank2", "bool"])
def test_wrong_indices_dtype_or_rank(indices):
    rule, params, state = _sparse_case()
    grads = {"w": co.IndexedSlices(jnp.ones((2, 3)), indices), "b": None}
    _expect_error(rule, grads, state, params, InvalidArgumentError,
                  rf"indices must be a vector of int32 or int64 \(parameter {W}\)")


def test_values_row_shape_mismatch():
    rule, params, state = _sparse_case()
    grads = {"w": co.IndexedSlices(jnp.ones((2, 4)), jnp.asarray([0, 1])), "b": None}
    _expect_error(rule, grads, state, params, InvalidArgumentError,
                  rf"var and grad must match in dimension 1.. \(parameter {W}\): var \[4, 3\], "
                  rf"grad values \[2, 4\]")


def test_values_and_indices_length_mismatch():
    rule, params, state = _sparse_case()
    grads = {"w": co.IndexedSlices(jnp.ones((3, 3)), jnp.asarray([0, 1])), "b": None}
    _expect_error(rule, grads, state, params, InvalidArgumentError,
                  rf"grad must be the same size as indices in the first dimension \(parameter {W}\)")


def test_dense_shape_mismatch():
    rule, params, state = _sparse_case()
    grads = {"w": co.IndexedSlices(jnp.ones((1, 3)), jnp.asarray([0]), (5, 3)), "b": None}
    _expect_error(rule, grads, state, params, InvalidArgumentError,
                  rf"dense_shape \[5, 3\] differs from the shape \[4, 3\] of parameter {W}")


def test_sparse_gradient_for_a_scalar_param():
    rule = co.adagrad(0.1)
    params = {"w": jnp.asarray(1.0)}
    grads = {"w": co.IndexedSlices(jnp.ones((1,)), jnp.asarray([0]))}
    _expect_error(rule, grads, rule.init(params), params, InvalidArgumentError,
                  rf"var must be at least 1 dimensional .*{W}")


def test_sparse_values_dtype_mismatch():
    rule, params, state = _sparse_case("momentum")
    grads = {"w": co.IndexedSlices(jnp.ones((1, 3), jnp.float16), jnp.asarray([0])), "b": None}
    _expect_error(rule, grads, state, params, TypeError,
                  rf"gradient for {W} has dtype float16 but the parameter has dtype float32")


def test_first_bad_leaf_stops_everything():
    """A bad leaf after good ones: nothing is computed for the good ones either."""
    rule = co.adam(0.1)
    params = {"a": jnp.ones(2), "b": jnp.ones(2), "c": jnp.ones(2)}
    state = rule.init(params)
    grads = {"a": jnp.ones(2), "b": jnp.ones(2), "c": jnp.ones(3)}
    _expect_error(rule, grads, state, params, InvalidArgumentError, r"\['c'\]")
    _expect_error(rule, grads, state, params, InvalidArgumentError, r"\['c'\]", method="update")


_CONSTRUCTORS = [co.gradient_descent, co.momentum, co.adagrad, co.adagrad_da, co.adadelta,
                 co.adam, co.ftrl, co.proximal_gradient_descent, co.proximal_adagrad,
                 co.rmsprop]


def _one_apply(rule):
    params = {"w": jnp.ones(3)}
    return rule.apply({"w": jnp.ones(3)}, rule.init(params), params)


@pytest.mark.parametrize("factory", _CONSTRUCTORS, ids=lambda f: f.__name__)
def test_learning_rate_none_is_a_value_error_as_tf1(factory):
    """TF1's ``_prepare`` converts ``None`` and fails with ``ValueError`` (not a KeyError);
    TF 2.21 graph mode says "None values not supported." (checked with tensorflow-cpu)."""
    kwargs = {"momentum": 0.9} if factory is co.momentum else {}
    with pytest.raises(ValueError, match=r"Attempt to convert a value \(None\)"):
        _one_apply(factory(None, **kwargs))


@pytest.mark.parametrize("factory", _CONSTRUCTORS, ids=lambda f: f.__name__)
def test_non_scalar_learning_rate_is_rejected_as_tf1(factory):
    """TF1's kernels: ``lr is not a scalar: [3]`` (an element-wise rate is not applied).
    Graph mode already refuses it at graph construction ("Shape must be rank 0 but is rank
    1", a ValueError, which InvalidArgumentError also is)."""
    kwargs = {"momentum": 0.9} if factory is co.momentum else {}
    with pytest.raises(InvalidArgumentError, match=r"lr is not a scalar: \[3\]"):
        _one_apply(factory(jnp.full(3, 0.1, jnp.float32), **kwargs))


def test_shim_learning_rate_none_and_non_scalar():
    w = co.Variable(jnp.zeros(3), name="w")
    with pytest.raises(ValueError, match=r"Attempt to convert a value \(None\)"):
        co.train.AdamOptimizer(None).apply_gradients([(jnp.ones(3), w)])
    with pytest.raises(InvalidArgumentError, match=r"lr is not a scalar: \[3\]"):
        co.train.AdamOptimizer(jnp.full(3, 0.1)).apply_gradients([(jnp.ones(3), w)])
    np.testing.assert_array_equal(w.numpy(), np.zeros(3))
