"""Every rule as an optax ``GradientTransformation``: in ``optax.chain`` and under
``optax.inject_hyperparams``.

``inject_hyperparams`` rebuilds the rule inside every ``update`` from hyper-parameters kept
in its state as float32 arrays (traced under ``jit``). A Python float is converted to
float32 by TF1 as well, so the injected rule must give the plain rule's bits. What cannot
carry over is validation: a traced value cannot raise, so TF1's hyper-parameter checks only
run where the injected values are concrete (eager ``init``/``update``).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import compatopt as co
from compatopt.errors import InvalidArgumentError

from .rule_table import RULES, assert_trees_bitwise_equal, avals, random_tree

TARGET = {"w": jnp.asarray([1.0, -2.0, 0.5], jnp.float32), "b": jnp.asarray(0.75, jnp.float32)}


def _loss(params):
    return (jnp.sum((params["w"] - TARGET["w"]) ** 2) + (params["b"] - TARGET["b"]) ** 2)


def _train(tx, params, steps):
    chex.clear_trace_counter()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(params, state):
        loss, grads = jax.value_and_grad(_loss)(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    state = tx.init(params)
    first = avals(state)
    losses = []
    for _ in range(steps):
        params, state, loss = step(params, state)
        assert avals(state) == first
        losses.append(float(loss))
    return params, state, losses + [float(_loss(params))]


@pytest.mark.parametrize("spec", RULES, ids=str)
def test_rule_in_chain_with_clipping_decreases_the_loss(spec):
    tx = optax.chain(optax.clip_by_global_norm(1.0), spec.make())
    params = {"w": jnp.zeros(3, jnp.float32), "b": jnp.zeros((), jnp.float32)}
    _, state, losses = _train(tx, params, steps=10)
    assert losses[-1] < losses[0], losses
    assert np.all(np.isfinite(losses))
    assert isinstance(state[1], type(spec.make().init(params)))


@pytest.mark.parametrize("spec", RULES, ids=str)
def test_chain_applies_the_rule_to_clipped_gradients(spec):
    """``chain(clip, rule)`` == ``rule`` applied by hand to the clipped gradients (bitwise)."""
    rule = spec.make()
    tx = optax.chain(optax.clip_by_global_norm(1.0), rule)
    params, grads = random_tree(0), random_tree(1, scale=3.0)
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    clip = optax.clip_by_global_norm(1.0)
    clipped, _ = jax.jit(clip.update)(grads, clip.init(params))
    expected, _ = jax.jit(rule.update)(clipped, rule.init(params), params)
    assert_trees_bitwise_equal(updates, expected)


def _run_update(tx, params, n=3, seed=10):
    state = tx.init(params)
    step = jax.jit(tx.update)
    for i in range(n):
        updates, state = step(random_tree(seed + i), state, params)
        params = optax.apply_updates(params, updates)
    return params, state


@pytest.mark.parametrize("spec", RULES, ids=str)
def test_inject_hyperparams_equals_plain_rule(spec):
    injected = optax.inject_hyperparams(spec.factory)(**spec.kwargs)
    plain = spec.make()
    params = random_tree(0)
    got_p, got_s = _run_update(injected, params)
    want_p, want_s = _run_update(plain, params)
    assert_trees_bitwise_equal(got_p, want_p)
    assert_trees_bitwise_equal(got_s.inner_state, want_s)
    assert set(spec.kwargs) - {"use_nesterov", "centered"} <= set(got_s.hyperparams)
    assert all(v.dtype == jnp.float32 for v in got_s.hyperparams.values())


def test_inject_hyperparams_adam_learning_rate_can_be_changed_in_the_state():
    tx = optax.inject_hyperparams(co.adam)(learning_rate=0.01)
    params = random_tree(0)
    state = tx.init(params)
    state.hyperparams["learning_rate"] = jnp.asarray(0.02, jnp.float32)
    got, _ = jax.jit(tx.update)(random_tree(1), state, params)
    plain = co.adam(0.02)
    want, _ = jax.jit(plain.update)(random_tree(1), plain.init(params), params)
    assert_trees_bitwise_equal(got, want)


def test_inject_hyperparams_schedule_equals_rule_callable():
    """optax's schedule sees inject's count, compatopt's callable the rule's count: the same
    sequence 0, 1, 2..."""
    sched = optax.linear_schedule(0.1, 0.01, transition_steps=3)
    injected = optax.inject_hyperparams(co.momentum)(learning_rate=sched, momentum=0.9)
    plain = co.momentum(learning_rate=sched, momentum=0.9)
    params = random_tree(0)
    got_p, got_s = _run_update(injected, params, n=4)
    want_p, want_s = _run_update(plain, params, n=4)
    assert_trees_bitwise_equal(got_p, want_p)
    assert_trees_bitwise_equal(got_s.inner_state, want_s)


def test_inject_hyperparams_adagrad_da_global_step_must_be_static():
    """inject_hyperparams treats every callable as a schedule of its own count; AdagradDA's
    ``global_step`` callable returns a step, not a hyper-parameter value, so it must be named
    in ``static_args``."""
    params = random_tree(0)
    tx = optax.inject_hyperparams(co.adagrad_da, static_args="global_step")(
        learning_rate=0.1, global_step=lambda count: count)
    got, _ = _run_update(tx, params)
    want, _ = _run_update(co.adagrad_da(0.1), params)
    assert_trees_bitwise_equal(got, want)


# --------------------------------------------------------- validation of injected values


def test_injected_initial_accumulator_is_checked_when_concrete():
    tx = optax.inject_hyperparams(co.adagrad)(learning_rate=0.1, initial_accumulator_value=-1.0)
    with pytest.raises(ValueError, match="initial_accumulator_value must be positive"):
        tx.init(random_tree(0))


def test_injected_initial_accumulator_is_not_checked_when_traced():
    """A limitation, not TF1 behaviour: under ``jit`` the value is a tracer and cannot raise,
    so the accumulator starts at the invalid value. Call ``init`` eagerly to get the check."""
    tx = optax.inject_hyperparams(co.adagrad)(learning_rate=0.1, initial_accumulator_value=-1.0)
    state = jax.jit(tx.init)(random_tree(0))
    np.testing.assert_array_equal(np.asarray(state.inner_state.accumulator["w"]), -1.0)


def test_injected_proximal_adagrad_lr_checked_eagerly_not_under_jit():
    tx = optax.inject_hyperparams(co.proximal_adagrad)(learning_rate=0.1)
    params = random_tree(0)
    state = tx.init(params)
    state.hyperparams["learning_rate"] = jnp.asarray(-0.1, jnp.float32)
    with pytest.raises(InvalidArgumentError, match="lr is not a positive scalar"):
        tx.update(random_tree(1), state, params)
    updates, _ = jax.jit(tx.update)(random_tree(1), state, params)  # traced: not checked
    assert jax.tree_util.tree_structure(updates) == jax.tree_util.tree_structure(params)


def test_injected_ftrl_learning_rate_power_traced_takes_the_generic_power_path():
    """FTRL picks sqrt for ``learning_rate_power == -0.5`` at construction when the value is
    concrete; a traced value selects it at run time, with the same bits."""
    params = random_tree(0)
    for lrp in (-0.5, -0.3, 0.0):
        injected = optax.inject_hyperparams(co.ftrl)(learning_rate=0.1, learning_rate_power=lrp)
        got, _ = _run_update(injected, params)
        want, _ = _run_update(co.ftrl(0.1, learning_rate_power=lrp), params)
        assert_trees_bitwise_equal(got, want, f"lr_power={lrp} ")


@pytest.mark.parametrize("spec", RULES, ids=str)
def test_update_takes_optax_extra_args(spec):
    """optax's ``GradientTransformationExtraArgs`` protocol: ``update(..., value=loss)``
    gives the same bits as without, directly and inside a chain with an extra-args
    transformation that reads ``value`` (``optax.contrib.reduce_on_plateau``)."""
    rule = spec.make()
    params, grads = random_tree(0), random_tree(1)
    state = rule.init(params)
    plain = jax.jit(rule.update)(grads, state, params)
    extra = jax.jit(lambda g, s, p: rule.update(g, s, p, value=jnp.float32(2.0)))(
        grads, state, params)
    assert_trees_bitwise_equal(extra, plain)
    tx = optax.chain(rule, optax.contrib.reduce_on_plateau(patience=1))
    chained_state = tx.init(params)
    for _ in range(3):
        updates, chained_state = tx.update(grads, chained_state, params, value=jnp.float32(1.0))
    assert_trees_bitwise_equal(jax.tree_util.tree_map(jnp.shape, updates),
                               jax.tree_util.tree_map(jnp.shape, plain[0]))
