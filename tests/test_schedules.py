"""compatopt.schedules in eager mode against TF 2.21's eager tf.compat.v1.train decay functions.

Fixtures: tests/fixtures/tf1/schedules/ (tools/make_tf1_schedule_fixtures.py). Every case is
replayed under ``jax.jit(jax.vmap(schedule))`` over all recorded steps, and a sample of steps
under scalar ``jit`` and eagerly; all must be bit-exact (NaN == NaN).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import compatopt as co
from compatopt import schedules
from schedule_replay import assert_bits_equal, assert_replays, decode, x64_for
from compatopt.errors import InvalidArgumentError

FIXTURES = Path(__file__).parent / "fixtures" / "tf1" / "schedules"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())
VALUES = np.load(FIXTURES / "values.npz")
NOISY = np.load(FIXTURES / "noisy.npz")

CASES = {k: v for k, v in MANIFEST["cases"].items() if v["function"] != "piecewise_constant"}
PIECEWISE = {k: v for k, v in MANIFEST["cases"].items()
             if v["function"] == "piecewise_constant" and k != "piecewise_float_x"}
ERRORS = MANIFEST["errors"]


@pytest.fixture(autouse=True)
def _eager_mode():
    """The fixtures here were recorded eagerly: replay them in TF1 eager mode's arithmetic
    (graph mode, the default, is tests/test_schedules_graph.py)."""
    with co.tf1_mode("eager"):
        yield


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_tf_bit_for_bit(name):
    assert_replays(name, CASES[name], VALUES[f"{name}__steps"], VALUES[f"{name}__values"])


@pytest.mark.parametrize("name", sorted(PIECEWISE))
def test_piecewise_matches_tf(name):
    case = PIECEWISE[name]
    steps, want = VALUES[f"{name}__steps"], VALUES[f"{name}__values"]
    with x64_for(case["dtype"] + case["x_dtype"]):
        values = case["values"]
        if case["values_np_dtype"]:
            values = [np.dtype(case["values_np_dtype"]).type(v) for v in values]
        sched = schedules.piecewise_constant(case["boundaries"], values)
        x = jnp.asarray(steps, case["x_dtype"])
        assert_bits_equal(jax.jit(jax.vmap(sched))(x), want, name)
        assert_bits_equal([sched(v) for v in x[::131]], want[::131], name + " (eager)")


def test_piecewise_float_x():
    case = MANIFEST["cases"]["piecewise_float_x"]
    sched = schedules.piecewise_constant(case["boundaries"], case["values"])
    x = VALUES["piecewise_float_x__x"]
    assert_bits_equal(jax.vmap(sched)(jnp.asarray(x)), VALUES["piecewise_float_x__values"],
                      "piecewise float x")


def test_piecewise_alias_and_array_values():
    assert schedules.piecewise_constant_decay is schedules.piecewise_constant
    sched = schedules.piecewise_constant([5], [jnp.zeros(3), jnp.ones(3)])
    np.testing.assert_array_equal(sched(6), np.ones(3, np.float32))


def test_noisy_linear_cosine_distribution_matches_tf():
    # TF's noise is unseeded: compare the distribution of 3000 draws per step.
    keys = jax.random.split(jax.random.key(42), 3000)
    draw = jax.jit(jax.vmap(lambda k, step: schedules.noisy_linear_cosine_decay(
        0.1, 100, key=k)(step), in_axes=(0, None)))
    for name in NOISY.files:
        step = int(name.split("_")[1])
        tf_draws = NOISY[name]
        ours = np.asarray(draw(keys, jnp.int32(step)))
        sigma = max(tf_draws.std(), 1e-12)
        assert abs(ours.mean() - tf_draws.mean()) < 5 * sigma / np.sqrt(len(tf_draws)) * 1.5
        assert abs(ours.std() - tf_draws.std()) <= 0.1 * sigma


def test_noisy_linear_cosine_is_a_function_of_key_and_step():
    sched = schedules.noisy_linear_cosine_decay(0.1, 100, key=jax.random.key(7))
    jitted = jax.jit(sched)
    assert jitted(3) == sched(3) == jitted(3)
    assert sched(3) != sched(4)
    other = schedules.noisy_linear_cosine_decay(0.1, 100, key=jax.random.key(8))
    assert other(3) != sched(3)


# ------------------------------------------------------------------ errors (TF's messages)

NONE: Any = None  # TF's error for a None step is the point (not an ArrayLike)


def _error_thunks():
    f64 = np.float64(0.1)
    return {
        "exponential_none_step": lambda: schedules.exponential_decay(0.1, 10, 0.96)(NONE),
        "natural_exp_none_step": lambda: schedules.natural_exp_decay(0.1, 10, 0.5)(NONE),
        "inverse_time_none_step": lambda: schedules.inverse_time_decay(0.1, 10, 0.5)(NONE),
        "polynomial_none_step": lambda: schedules.polynomial_decay(0.1, 10)(NONE),
        "cosine_none_step": lambda: schedules.cosine_decay(0.1, 10)(NONE),
        "restarts_none_step": lambda: schedules.cosine_decay_restarts(0.1, 10)(NONE),
        "linear_cosine_none_step": lambda: schedules.linear_cosine_decay(0.1, 10)(NONE),
        "noisy_none_step": lambda: schedules.noisy_linear_cosine_decay(
            0.1, 10, key=jax.random.key(0))(NONE),
        "piecewise_none_x": lambda: schedules.piecewise_constant([10], [0.1, 0.01])(NONE),
        "exponential_int_lr": lambda: schedules.exponential_decay(1, 10, 0.96),
        "inverse_time_int_lr": lambda: schedules.inverse_time_decay(1, 10, 0.5),
        "polynomial_int_lr": lambda: schedules.polynomial_decay(1, 10),
        "cosine_int_lr": lambda: schedules.cosine_decay(1, 10),
        "cosine_f64": lambda: schedules.cosine_decay(f64, 10),
        "cosine_f16": lambda: schedules.cosine_decay(np.float16(0.1), 10),
        "restarts_f64": lambda: schedules.cosine_decay_restarts(f64, 10),
        "linear_cosine_f64": lambda: schedules.linear_cosine_decay(f64, 10),
        "noisy_f64": lambda: schedules.noisy_linear_cosine_decay(f64, 10,
                                                                 key=jax.random.key(0)),
        "piecewise_float_boundaries_int_x":
            lambda: schedules.piecewise_constant([1.5, 2.5], [1.0, 2.0, 3.0])(
                jnp.asarray(5, jnp.int64)),
        "piecewise_int_boundaries_float_x":
            lambda: schedules.piecewise_constant([1, 2], [1.0, 2.0, 3.0])(1.0),
        "piecewise_int64_boundaries_int32_x":
            lambda: schedules.piecewise_constant([np.int64(1)], [1.0, 2.0])(
                jnp.asarray(1, jnp.int32)),
        "piecewise_mixed_values": lambda: schedules.piecewise_constant([10], [1.0, 2]),
        "piecewise_mixed_values_f64":
            lambda: schedules.piecewise_constant([10], [1.0, np.float64(2.0)]),
        "piecewise_length": lambda: schedules.piecewise_constant([10, 20], [1.0, 2.0]),
        "piecewise_unsorted": lambda: schedules.piecewise_constant([10, 2], [1.0, 2.0, 3.0])(
            jnp.asarray(5, jnp.int64)),
    }


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_errors_like_tf(name):
    tf_error = ERRORS[name]
    expected = InvalidArgumentError if tf_error["type"] == "InvalidArgumentError" else ValueError
    with jax.enable_x64(True), pytest.raises(expected) as info:
        _error_thunks()[name]()
    ours = str(info.value)
    if name == "piecewise_unsorted":
        assert "exclusive=True: more than 1 conditions" in ours
    elif name == "noisy_f64":
        assert tf_error["message"].startswith(ours)
    elif expected is InvalidArgumentError:
        assert tf_error["message"].startswith(ours), (ours, tf_error["message"])
    else:
        assert ours == tf_error["message"]


def test_error_cases_are_all_covered():
    assert set(_error_thunks()) == set(ERRORS)


# ------------------------------------------------------------------ use with a rule, jit

def test_rule_calls_schedule_with_apply_count():
    want = VALUES["exponential_staircase__values"]
    rule = co.gradient_descent(schedules.exponential_decay(0.1, 7, 0.96, staircase=True))
    params = {"w": jnp.zeros((), jnp.float32)}
    state = rule.init(params)
    apply = jax.jit(rule.apply)
    expected = np.float32(0.0)
    for k in range(10):
        params, state = apply({"w": jnp.ones((), jnp.float32)}, state, params)
        expected = np.float32(expected - want[k])
        assert_bits_equal(params["w"], expected, f"apply {k}")


def test_compiles_once_for_all_steps():
    traces = []

    def counted(step):
        traces.append(1)
        return schedules.cosine_decay_restarts(0.1, 10, t_mul=1.5)(step)

    f = jax.jit(counted)
    for s in range(5):
        f(jnp.int32(s))
    assert len(traces) == 1


def test_traced_hyperparameters_match_concrete():
    # Hyper-parameters traced under jit take the in-graph exp/log paths.
    steps = jnp.arange(0, 400, dtype=jnp.int32)
    for name in ("natural_exp", "restarts_geometric", "restarts_tmul1"):
        case = CASES[name]
        lr, args = decode(case["learning_rate"]), [decode(a) for a in case["args"]]
        kwargs = {k: decode(v) for k, v in case["kwargs"].items()}
        fn = getattr(schedules, case["function"])

        @jax.jit
        def traced(lr, args, kwargs):
            return jax.vmap(fn(lr, *args, **kwargs))(steps)

        as_arrays = lambda t: jax.tree_util.tree_map(np.float32, t)  # noqa: E731
        got = traced(np.float32(lr), as_arrays(args), as_arrays(kwargs))
        assert_bits_equal(got, VALUES[f"{name}__values"][:400], name + " (traced)")
