"""compatopt.schedules in its default mode against TF 2.21's **graph-mode** decay functions.

Fixtures: tests/fixtures/tf1/schedules_graph/ (tools/make_tf1_graph_schedule_fixtures.py):
``tf.compat.v1.train.<fn>(..., global_step=<int64 resource Variable>)`` run in a ``Session``
with the default Grappler configuration at every step of the eager fixtures, for the eager
generator's cases and for graph-only ones (other exponents and constants, and arguments held
in a ``tf.Variable``, which Grappler cannot fold: replayed with a ``compatopt.Variable``).
Every case is replayed under ``jax.jit(jax.vmap(schedule))``, a sample under scalar ``jit``
and eagerly, bit for bit (NaN == NaN), and a sample through the ``compatopt.train`` shim.
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
from schedule_replay import arguments, assert_bits_equal, assert_replays, make, x64_for
from compatopt.train import learning_rate_decay as lrd

FIXTURES = Path(__file__).parent / "fixtures" / "tf1"
MANIFEST = json.loads((FIXTURES / "schedules_graph" / "manifest.json").read_text())
VALUES = np.load(FIXTURES / "schedules_graph" / "values.npz")
EAGER_VALUES = np.load(FIXTURES / "schedules" / "values.npz")
ALL = MANIFEST["cases"]
CASES = {k: v for k, v in ALL.items()
         if v["function"] != "piecewise_constant" and "error" not in v}
ERRORS = {k: v for k, v in ALL.items() if "error" in v}
PIECEWISE = {k: v for k, v in ALL.items() if v["function"] == "piecewise_constant"}


@pytest.fixture(autouse=True)
def _graph_mode():
    """These tests are about the default mode; fail loudly if something changed it."""
    assert co.get_tf1_mode() == "graph"
    yield
    assert co.get_tf1_mode() == "graph"


def bits_differ(a, b) -> int:
    a, b = np.asarray(a), np.asarray(b)
    uint = {2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize]
    return int(((a.view(uint) != b.view(uint)) & ~(np.isnan(a) & np.isnan(b))).sum())


def test_fixtures_cover_every_function():
    functions = {v["function"] for v in ALL.values()}
    assert functions == set(schedules.__all__) - {"piecewise_constant_decay"}
    eager = json.loads((FIXTURES / "schedules" / "manifest.json").read_text())["cases"]
    # every eager case also recorded in graph mode (a constant float x has no graph variant)
    assert set(eager) - {"piecewise_float_x"} <= set(ALL)


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_tf_graph_mode_bit_for_bit(name):
    assert_replays(name, CASES[name], VALUES[f"{name}__steps"], VALUES[f"{name}__values"])


@pytest.mark.parametrize("name", sorted(k for k, v in CASES.items() if "same_as_eager" in v))
def test_eager_mode_keeps_eager_arithmetic(name):
    """Where TF1 graph mode changed bits, ``tf1_mode("eager")`` gives the eager fixture."""
    case = CASES[name]
    steps = VALUES[f"{name}__steps"]
    graph, eager = VALUES[f"{name}__values"], EAGER_VALUES[f"{name}__values"]
    assert (bits_differ(graph, eager) == 0) == case["same_as_eager"]
    with x64_for(case["dtype"]):
        sched = make(case)
        in_graph = jax.jit(jax.vmap(sched))(jnp.asarray(steps, jnp.int32))
        with co.tf1_mode("eager"):
            in_eager = jax.jit(jax.vmap(sched))(jnp.asarray(steps, jnp.int32))
    assert_bits_equal(in_graph, graph, name + " (graph)")
    assert_bits_equal(in_eager, eager, name + " (eager mode)")


def test_grappler_changes_what_spec_says():
    """Spec §1.6: graph mode differs for non-staircase schedules, not for staircase ones."""
    changed = {k for k, v in CASES.items() if v.get("same_as_eager") is False}
    assert {"exponential", "natural_exp", "inverse_time", "polynomial", "polynomial_sqrt",
            "cosine", "cosine_alpha", "restarts", "linear_cosine"} <= changed
    assert not {"exponential_staircase", "natural_exp_staircase",
                "inverse_time_staircase"} & changed


def test_cosine_decay_step_3_differs_in_the_last_bit():
    """The observation that started this: cosine_decay(0.1, gs, 5, alpha=0.1) at step 3."""
    sched = schedules.cosine_decay(0.1, 5, alpha=0.1)
    graph = sched(3)
    with co.tf1_mode("eager"):
        eager = sched(3)
    step3 = int(np.flatnonzero(VALUES["cosine_ds5_alpha__steps"] == 3)[0])
    assert_bits_equal(graph, VALUES["cosine_ds5_alpha__values"][step3], "graph")
    assert bits_differ(graph, eager) == 1
    ulps = int(np.asarray(graph).view(np.int32)) - int(np.asarray(eager).view(np.int32))
    assert ulps == 2  # graph 0.04109423, eager 0.04109422 (2 ulp apart)


def test_variable_arguments_are_not_folded():
    """A tf.Variable argument is not folded by Grappler (recorded graphs), nor a
    compatopt.Variable here: with the decay steps in a Variable, ``s / ds`` stays a division."""
    assert any(" = RealDiv(" in line for line in ALL["exponential_var_steps"]["graph"])
    assert any("truediv_recip" in line for line in ALL["exponential"]["graph"])
    assert any(" = Pow(" in line for line in ALL["polynomial_var_power"]["graph"])
    assert any(" = Sqrt(" in line for line in ALL["polynomial_sqrt"]["graph"])
    steps = jnp.asarray(VALUES["exponential__steps"], jnp.int32)
    folded = jax.vmap(schedules.exponential_decay(0.1, 7.0, 0.96))(steps)
    held_steps: Any = co.Variable(7.0)  # a Variable-backed argument (not an ArrayLike)
    held = jax.vmap(schedules.exponential_decay(0.1, held_steps, 0.96))(steps)
    assert bits_differ(folded, VALUES["exponential__values"]) == 0
    assert bits_differ(held, VALUES["exponential_var_steps__values"]) == 0
    assert bits_differ(folded, held) > 0


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_graph_construction_errors_like_tf(name):
    case = ERRORS[name]
    lr, args, kwargs = arguments(case)
    with x64_for(name):
        sched = getattr(schedules, case["function"])(lr, *args, **kwargs)
        with pytest.raises(TypeError) as info:
            sched(3)
        assert str(info.value) == case["error"]["message"]
        with co.tf1_mode("eager"):
            assert np.isfinite(np.asarray(sched(3)))  # eager TF1 computes it


@pytest.mark.parametrize("name", sorted(PIECEWISE))
def test_piecewise_is_the_same_in_graph_mode(name):
    case = PIECEWISE[name]
    assert case["same_as_eager"]
    steps, want = VALUES[f"{name}__steps"], VALUES[f"{name}__values"]
    with x64_for(case["dtype"] + case["x_dtype"]):
        values = case["values"]
        if case["values_np_dtype"]:
            values = [np.dtype(case["values_np_dtype"]).type(v) for v in values]
        sched = schedules.piecewise_constant(case["boundaries"], values)
        assert_bits_equal(jax.jit(jax.vmap(sched))(jnp.asarray(steps, case["x_dtype"])), want,
                          name)


# ------------------------------------------------------------------ the compatopt.train shim

SHIM_CASES = ["exponential", "natural_exp", "inverse_time_f64", "polynomial_cycle",
              "polynomial_pow3", "cosine_alpha", "cosine_ds5_alpha", "restarts_geometric",
              "linear_cosine_nobeta", "exponential_var_lr", "inverse_time_var_rate",
              "natural_exp_var_rate", "polynomial_cycle_var_lr", "cosine_alpha_var_lr",
              "restarts_geometric_var_lr", "linear_cosine_nobeta_var_lr",
              "noisy_linear_cosine_novariance"]


@pytest.mark.parametrize("name", SHIM_CASES)
def test_shim_replays_tf_graph_mode(name):
    case = CASES[name]
    steps, want = VALUES[f"{name}__steps"], VALUES[f"{name}__values"]
    pick = np.r_[0:len(steps):29, len(steps) - 3:len(steps)]
    with x64_for(case["dtype"]):
        lr, args, kwargs = arguments(case)
        step = co.Variable(0, trainable=False)
        decayed = getattr(lrd, case["function"])(lr, step, *args, **kwargs)
        got = []
        for s in steps[pick]:
            step.assign(int(s))
            got.append(decayed())
        assert_bits_equal(got, want[pick], name)
        if case.get("same_as_eager") is False:
            with co.tf1_mode("eager"):
                got_eager = []
                for s in steps[pick]:
                    step.assign(int(s))
                    got_eager.append(decayed())
            assert_bits_equal(got_eager, EAGER_VALUES[f"{name}__values"][pick], name + " eager")


def test_shim_reads_the_mode_at_each_call():
    step = co.Variable(3, trainable=False)
    decayed = lrd.cosine_decay(0.1, step, 5, alpha=0.1)
    graph = decayed()
    with co.tf1_mode("eager"):
        eager = decayed()
    assert bits_differ(graph, eager) == 1
    assert bits_differ(decayed(), graph) == 0
