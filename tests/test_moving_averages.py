"""``compatopt.moving_averages`` against TF1 graph mode's ``ExponentialMovingAverage``.

Replays ``tools/make_tf1_ema_fixtures.py`` bit for bit under ``jax.jit``: shadows of
Variables (from the recorded variable trajectories, and from a whole functional training
with the matching rule), with ``num_updates`` and a float16/float64 leaf, and TF1's
zero-debiased average of a tensor (``biased``, ``local_step``).
"""

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import compatopt as co
from compatopt import moving_averages

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tools"))
from make_tf1_ema_fixtures import (  # noqa: E402  # pyright: ignore[reportMissingImports]
    CONFIGS, STEPS, TENSOR_CONFIGS, TENSOR_VALUES)

FIX = os.path.join(HERE, "fixtures", "tf1", "ema")
with np.load(os.path.join(FIX, "trainings.npz")) as _npz:
    ARRAYS = dict(_npz)
with np.load(os.path.join(FIX, "tensors.npz")) as _npz:
    TENSORS = dict(_npz)
with open(os.path.join(FIX, "trainings.json")) as _f:
    META = json.load(_f)["configs"]


def _bits_equal(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _x64(key):
    return jax.enable_x64(True) if "b" in CONFIGS[key][0] else jax.enable_x64(False)


def _decay(key):
    decay = CONFIGS[key][3]["decay"]
    return 0.75 if decay == "variable" else decay


def _trajectory(key, name):
    return ARRAYS[f"{key}:trajectory:{name}"]


def _shadow_name(key, var):
    return META[key]["averages"][var][:-len(":0")]


@pytest.mark.parametrize("key", sorted(CONFIGS))
def test_shadows_from_recorded_variables(key):
    names, _, _, kw = CONFIGS[key]
    with _x64(key):
        params = {n: jnp.asarray(_trajectory(key, n)[0]) for n in names}
        avg = moving_averages.ema(_decay(key))
        state = avg.init(params)
        update = jax.jit(avg.update)
        steps = _trajectory(key, "global_step")
        for t in range(1, STEPS + 1):
            params = {n: jnp.asarray(_trajectory(key, n)[t]) for n in names}
            n_upd = kw.get("num_updates")
            n_upd = steps[t] if n_upd == "global_step" else n_upd
            state = update(params, state, n_upd)
            for n in names:
                assert _bits_equal(avg.average(state)[n], _trajectory(key, _shadow_name(key, n))[t])
        assert int(state.count) == STEPS


@pytest.mark.parametrize("key", sorted(CONFIGS))
def test_functional_training_matches_tf1(key):
    """The TF1 rule's ``apply`` then ``ema.update`` (``num_updates`` as a callable of the
    count): variables and shadows after every step."""
    names, opt, opt_kwargs, kw = CONFIGS[key]
    with _x64(key):
        rule = {"GradientDescent": co.gradient_descent, "Momentum": co.momentum}[opt](
            **opt_kwargs)
        params = {n: jnp.asarray(ARRAYS[f"{key}:{n}"]) for n in names}
        n_upd = kw.get("num_updates")
        if n_upd == "global_step":
            n_upd = lambda count: count + 1  # noqa: E731 - the global step after the step
        avg = moving_averages.ema(_decay(key), num_updates=n_upd)
        rule_state, ema_state = rule.init(params), avg.init(params)

        @jax.jit
        def step(params, rule_state, ema_state, grads):
            params, rule_state = rule.apply(grads, rule_state, params)
            return params, rule_state, avg.update(params, ema_state)

        for t in range(STEPS):
            grads = {n: jnp.asarray(ARRAYS[f"{key}:{n}/g"][t]) for n in names}
            params, rule_state, ema_state = step(params, rule_state, ema_state, grads)
            for n in names:
                assert _bits_equal(params[n], _trajectory(key, n)[t + 1])
                assert _bits_equal(ema_state.average[n],
                                   _trajectory(key, _shadow_name(key, n))[t + 1])


@pytest.mark.parametrize("key", sorted(TENSOR_CONFIGS))
def test_tensor_average_matches_tf1(key):
    """TF1's average of a tensor: zero-initialised; ``zero_debias`` adds ``biased`` and
    ``local_step`` (TF1 ``total_loss/ExponentialMovingAverage/biased``, ``.../local_step``)."""
    kw = TENSOR_CONFIGS[key]
    dtype = np.float64 if key.endswith("f64") else np.float32
    base = "total_loss/ExponentialMovingAverage"
    with jax.enable_x64(dtype == np.float64):
        avg = moving_averages.ema(**kw)
        state = avg.init(jnp.zeros(TENSOR_VALUES.shape[1:], dtype))
        assert _bits_equal(state.average, TENSORS[f"{key}:{base}"][0])
        update = jax.jit(avg.update)
        for t, value in enumerate(TENSOR_VALUES):
            state = update(jnp.asarray(value.astype(dtype)), state)
            assert _bits_equal(state.average, TENSORS[f"{key}:{base}"][t + 1])
            if kw.get("zero_debias"):
                assert _bits_equal(state.biased, TENSORS[f"{key}:{base}/biased"][t + 1])
                assert _bits_equal(state.local_step, TENSORS[f"{key}:{base}/local_step"][t + 1])
            else:
                assert state.biased is None and state.local_step is None


def test_textbook_formula_misses_tf1_bits():
    """Negative control: ``decay * s + (1 - decay) * x`` (optax's form) is not TF1's."""
    key = "decay"
    s, misses = jnp.asarray(_trajectory(key, "w")[0]), 0
    for t in range(1, STEPS + 1):
        x = jnp.asarray(_trajectory(key, "w")[t])
        s = jnp.float32(0.9) * s + (1 - jnp.float32(0.9)) * x
        s_tf = _trajectory(key, "w/ExponentialMovingAverage")[t]
        misses += int(np.sum(np.asarray(s) != s_tf))
        s = jnp.asarray(s_tf)
    assert misses > 0


def test_decay_value_num_updates():
    assert float(moving_averages.decay_value(0.999, 0)) == np.float32(np.float32(1) / 10)
    assert moving_averages.decay_value(0.9).dtype == jnp.float32
    assert float(moving_averages.decay_value(0.5, 1000)) == np.float32(0.5)
    d1 = moving_averages.one_minus_decay(0.9, None, jnp.float16)
    assert d1.dtype == jnp.float16 and float(d1) == np.float16(np.float32(1) - np.float32(0.9))


def test_errors_match_tf1_types():
    with pytest.raises(TypeError, match=r"^The variables must be half, float, or double: "):
        moving_averages.ema(0.9).init({"i": jnp.zeros(2, jnp.int32)})
    avg = moving_averages.ema("x")  # pyright: ignore[reportArgumentType]
    state = avg.init(jnp.zeros(2))
    with pytest.raises(TypeError, match=r"^Expected float32, but got x of type 'str'\.$"):
        avg.update(jnp.zeros(2), state)


def test_pytree_state_and_single_compile():
    avg = moving_averages.ema(lambda count: 0.5, zero_debias=True)
    params = {"a": jnp.ones(3), "b": (jnp.ones((2, 2), jnp.float16),)}
    state = avg.init(params)
    assert jax.tree_util.tree_structure(state.average) == jax.tree_util.tree_structure(params)
    steps = state.local_step
    assert steps is not None
    assert steps["b"][0].shape == () and steps["b"][0].dtype == jnp.float16
    traces = []

    @jax.jit
    def update(p, s):
        traces.append(1)
        return avg.update(p, s)

    for _ in range(3):
        state = update(params, state)
    assert len(traces) == 1 and int(state.count) == 3
    # zero-debiased average of a constant is the constant (1 / (1 - 0.5^t) * (1 - 0.5^t))
    np.testing.assert_array_equal(avg.average(state)["a"], np.ones(3, np.float32))
