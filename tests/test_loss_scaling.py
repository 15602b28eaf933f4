"""``compatopt.loss_scaling``: the functional loss-scaled rules against TF1 graph mode.

Replays ``tests/fixtures/tf1/loss_scale`` (``tools/make_tf1_loss_scale_fixtures.py``) with
``dynamic_loss_scale`` / ``fixed_loss_scale`` around the functional rules, jitted: ``w``,
``current_loss_scale`` and ``good_steps`` after every step, bit for bit; then the optax
protocol (``update`` inside ``optax.chain``) and a bfloat16 run.
"""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import compatopt as co
from compatopt import loss_scaling as ls

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tools"))
from make_tf1_loss_scale_fixtures import C, CONFIGS, FACTORS, W0  # noqa: E402

with np.load(os.path.join(HERE, "fixtures", "tf1", "loss_scale", "trainings.npz")) as _npz:
    ARRAYS = dict(_npz)

RULES = {"GradientDescent": co.gradient_descent, "Adam": co.adam, "Momentum": co.momentum}


def _rule(key):
    kind, kwargs, spec = CONFIGS[key]
    inner = RULES[kind](**kwargs)
    if spec[0] == "fixed":
        return ls.fixed_loss_scale(inner, spec[1])
    if spec[0] == "dynamic":
        return ls.dynamic_loss_scale(inner, spec[1], spec[2], spec[3])
    return ls.dynamic_loss_scale(inner)


def _loss(w, factor):
    return jnp.sum(w * w * C) * factor


@pytest.mark.parametrize("key", sorted(CONFIGS))
def test_apply_matches_tf1(key):
    rule = _rule(key)

    @jax.jit
    def step(w, state, factor):
        grads = jax.grad(lambda p: ls.scale_loss(_loss(p, factor), state))(w)
        return rule.apply(grads, state, w)

    w = jnp.asarray(W0)
    state = rule.init(w)
    for i, f in enumerate(FACTORS):
        w, state = step(w, state, jnp.float32(f))
        np.testing.assert_array_equal(np.asarray(w), ARRAYS[f"{key}/w"][i], err_msg=f"{i}")
        if CONFIGS[key][2][0] != "fixed":
            np.testing.assert_array_equal(np.asarray(state.current_loss_scale),
                                          ARRAYS[f"{key}/current_loss_scale:0"][i])
            np.testing.assert_array_equal(np.asarray(state.good_steps),
                                          ARRAYS[f"{key}/good_steps:0"][i])


def test_skip_keeps_params_and_inner_state():
    rule = ls.dynamic_loss_scale(co.adam(0.1), 4.0, 2, 2.0)
    w = jnp.asarray(W0)
    state = rule.init(w)
    bad = jnp.array([1.0, np.nan, 0, 0], jnp.float32)
    w2, state2 = rule.apply(bad, state, w)
    np.testing.assert_array_equal(np.asarray(w2), W0)
    for a, b in zip(jax.tree_util.tree_leaves(state2.inner_state),
                    jax.tree_util.tree_leaves(state.inner_state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert float(state2.current_loss_scale) == 2.0 and int(state2.good_steps) == 0


def test_update_in_optax_chain_matches_apply():
    rule = ls.dynamic_loss_scale(co.gradient_descent(0.1), 4.0, 2, 2.0)
    chain = optax.chain(rule)
    w = jnp.asarray(W0)
    state = chain.init(w)
    for f in FACTORS[:6]:
        scale = ls.current_loss_scale(state)
        grads = jax.grad(lambda p: ls.scale_loss(_loss(p, jnp.float32(f)), scale))(w)
        updates, state = chain.update(grads, state, w)
        w = optax.apply_updates(w, updates)
    np.testing.assert_array_equal(np.asarray(w), ARRAYS["sgd_dynamic/w"][5])


def test_optax_inner_without_apply():
    rule = ls.dynamic_loss_scale(optax.sgd(0.5), 8.0, 3, 2.0)
    w = jnp.ones(3, jnp.float32)
    state = rule.init(w)
    w2, state = rule.apply(jnp.full(3, 8.0, jnp.float32), state, w)
    np.testing.assert_array_equal(np.asarray(w2), np.full(3, 0.5, np.float32))
    w3, state = rule.apply(jnp.full(3, np.inf, jnp.float32), state, w2)
    np.testing.assert_array_equal(np.asarray(w3), np.asarray(w2))
    assert float(state.current_loss_scale) == 4.0


def test_bfloat16_params():
    rule = ls.dynamic_loss_scale(co.gradient_descent(0.25), 2.0 ** 10, 2, 2.0)
    w = jnp.ones(4, jnp.bfloat16)
    state = rule.init(w)

    @jax.jit
    def step(w, state):
        grads = jax.grad(lambda p: ls.scale_loss(jnp.sum(p * p), state))(w)
        return rule.apply(grads, state, w)

    for _ in range(3):
        w, state = step(w, state)
    assert w.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(w, np.float32), np.full(4, 0.125, np.float32))
    assert float(state.current_loss_scale) == 2.0 ** 11


def test_fixed_checks():
    with pytest.raises(ValueError, match="must be at least 1"):
        ls.fixed_loss_scale(co.adam(), 0.5)
    with pytest.raises(ValueError, match="Python int or float"):
        ls.fixed_loss_scale(co.adam(), "8")


def test_next_loss_scale_overflow_keeps_scale():
    scale, steps = ls.next_loss_scale(jnp.float32(3e38), jnp.int32(0), jnp.asarray(True),
                                      1, 2.0)
    assert float(scale) == float(np.float32(3e38)) and int(steps) == 0
