"""compatopt.train's decay functions: TF1 eager signatures, step re-reading, error timing.

The values are replayed from TF 2.21 fixtures (tests/fixtures/tf1/schedules/, recorded with
a ``tf.Variable`` int64 step assigned before each call); the arithmetic itself is tested in
tests/test_schedules.py, so only a sample of steps is replayed here (eager calls).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import compatopt as co
from compatopt.errors import InvalidArgumentError
from compatopt.train import learning_rate_decay as lrd

FIXTURES = Path(__file__).parent.parent / "fixtures" / "tf1" / "schedules"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())
VALUES = np.load(FIXTURES / "values.npz")
CASES = {k: v for k, v in MANIFEST["cases"].items() if v["function"] != "piecewise_constant"}
NONE_STEP = MANIFEST["errors"]["exponential_none_step"]["message"]


@pytest.fixture(autouse=True)
def _eager_mode():
    """The fixtures here were recorded eagerly: replay them in TF1 eager mode's arithmetic
    (graph mode, the default, is tests/test_schedules_graph.py)."""
    with co.tf1_mode("eager"):
        yield


def decode(arg):
    if "py" in arg:
        return arg["py"]
    return np.dtype(arg["np"]).type(arg["value"])


def bits(x):
    x = np.asarray(x)
    return x.view({2: np.uint16, 4: np.uint32, 8: np.uint64}[x.dtype.itemsize])


def assert_bits_equal(got, want, where):
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype, where
    same = (bits(got) == bits(want)) | (np.isnan(got) & np.isnan(want))
    assert same.all(), f"{where}: got {got[~same][:3]} want {want[~same][:3]}"


class DuckStep:
    """Anything with a ``.value`` works as a global step."""

    def __init__(self, value):
        self.value = value


@pytest.mark.parametrize("name", sorted(CASES))
def test_replays_tf_with_a_step_variable(name):
    case = CASES[name]
    steps, want = VALUES[f"{name}__steps"], VALUES[f"{name}__values"]
    pick = np.r_[0:len(steps):53, len(steps) - 3:len(steps)]
    x64 = jax.enable_x64(True) if "64" in case["dtype"] else contextlib.nullcontext()
    with x64:
        step = co.Variable(0, trainable=False)
        kwargs = {k: decode(v) for k, v in case["kwargs"].items()}
        decayed = getattr(lrd, case["function"])(
            decode(case["learning_rate"]), step, *[decode(a) for a in case["args"]], **kwargs)
        got = []
        for s in steps[pick]:
            step.assign(int(s))
            got.append(decayed())
        assert_bits_equal(got, want[pick], name)


def test_piecewise_replays_tf_and_alias():
    assert lrd.piecewise_constant_decay is lrd.piecewise_constant
    steps, want = VALUES["piecewise__steps"], VALUES["piecewise__values"]
    x = co.Variable(0, trainable=False)
    decayed = lrd.piecewise_constant(x, [100, 200], [1.0, 0.5, 0.1])
    for k in (0, 99, 100, 101, 200, 201, 500):
        x.assign(int(steps[k]))
        assert_bits_equal(decayed(), want[k], f"piecewise step {steps[k]}")


def test_step_is_read_at_each_call_from_any_value_holder():
    want = VALUES["polynomial__values"]
    holder = DuckStep(jnp.int32(0))
    decayed = lrd.polynomial_decay(0.1, holder, 100)
    assert_bits_equal(decayed(), want[0], "step 0")
    holder.value = jnp.int32(37)
    assert_bits_equal(decayed(), want[37], "step 37")
    assert_bits_equal(lrd.polynomial_decay(0.1, 250, 100)(), want[250], "int step")
    assert_bits_equal(lrd.polynomial_decay(0.1, jnp.int32(60), 100)(), want[60], "array step")


def test_drives_an_optimizer_with_the_global_step():
    want = VALUES["exponential_staircase__values"]
    gs = co.train.get_or_create_global_step()
    w = co.Variable(0.0)
    opt = co.train.GradientDescentOptimizer(lrd.exponential_decay(0.1, gs, 7, 0.96,
                                                                  staircase=True))
    expected = np.float32(0.0)
    for k in range(10):
        opt.minimize(lambda: w * 1.0, global_step=gs)
        expected = np.float32(expected - want[k])
        assert_bits_equal(w.value, expected, f"minimize {k}")
    assert int(gs.value) == 10


_SCHEDULES = {
    "exponential": lambda step: lrd.exponential_decay(0.1, step, 10, 0.96),
    "natural_exp": lambda step: lrd.natural_exp_decay(0.1, step, 10, 0.5),
    "inverse_time": lambda step: lrd.inverse_time_decay(0.1, step, 10, 0.5),
    "polynomial": lambda step: lrd.polynomial_decay(0.1, step, 10),
    "cosine": lambda step: lrd.cosine_decay(0.1, step, 10),
    "restarts": lambda step: lrd.cosine_decay_restarts(0.1, step, 10),
    "linear_cosine": lambda step: lrd.linear_cosine_decay(0.1, step, 10),
    "noisy": lambda step: lrd.noisy_linear_cosine_decay(0.1, step, 10),
}


@pytest.mark.parametrize("name", sorted(_SCHEDULES))
def test_none_step_fails_when_called_as_in_tf(name):
    assert MANIFEST["error_timing"]["exponential_none_step"] == "call"
    decayed = _SCHEDULES[name](None)  # no error yet: TF eager returns a partial
    with pytest.raises(ValueError) as info:
        decayed()
    assert str(info.value) == MANIFEST["errors"][f"{name}_none_step"]["message"] == NONE_STEP


def test_argument_errors_surface_when_tf_raises_them():
    timing = MANIFEST["error_timing"]
    errors = MANIFEST["errors"]
    step = co.Variable(5, trainable=False)
    assert timing["cosine_f64"] == "call"
    with jax.enable_x64(True):
        decayed = lrd.cosine_decay(np.float64(0.1), step, 10)
        with pytest.raises(InvalidArgumentError) as info:
            decayed()
    assert errors["cosine_f64"]["message"].startswith(str(info.value))
    assert timing["piecewise_length"] == timing["piecewise_mixed_values"] == "construction"
    for name, args in {"piecewise_length": ([10, 20], [1.0, 2.0]),
                       "piecewise_mixed_values": ([10], [1.0, 2]),
                       "piecewise_float_boundaries_int_x": ([1.5, 2.5], [1.0, 2.0, 3.0])}.items():
        with pytest.raises(ValueError) as info:
            lrd.piecewise_constant(step, *args)
        assert str(info.value) == errors[name]["message"].replace("int64", str(step.dtype))
    with pytest.raises(ValueError) as info:
        lrd.piecewise_constant(None, [10], [0.1, 0.01])
    assert str(info.value) == errors["piecewise_none_x"]["message"]


def test_natural_exp_rate_is_computed_at_construction():
    with pytest.raises(ValueError, match="Attempt to convert a value"):
        lrd.natural_exp_decay(0.1, 5, 10, None)
