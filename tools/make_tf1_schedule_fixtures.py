"""Records TF1's learning-rate decay functions (eager) as fixtures for compatopt's tests.

Run with the TensorFlow venv (TF 2.21, CPU, eager)::

    /work/tfenv/bin/python tools/make_tf1_schedule_fixtures.py

Writes ``tests/fixtures/tf1/schedules/``:

* ``values.npz``: for each case ``<case>__steps`` (int64) and ``<case>__values`` (in the
  learning rate's dtype), the value of the ``tf.compat.v1.train.*`` callable after the global
  step variable (int64) was assigned each step;
* ``noisy.npz``: repeated draws of ``noisy_linear_cosine_decay`` at a few steps (TF's noise
  is unseeded, so only its distribution can be compared);
* ``manifest.json``: each case's function and arguments, each error case's TF exception type
  and message, and the TF version and host that produced them.

Arguments are encoded as ``{"py": value}`` (a Python scalar or list, passed as is) or
``{"np": dtype, "value": value}`` (a NumPy scalar of that dtype).
"""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import tensorflow as tf  # noqa: E402

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "tf1" / "schedules"
train = tf.compat.v1.train

STEPS = np.concatenate([
    np.arange(0, 501),
    [511, 512, 513, 999, 1000, 1001, 4095, 4096, 10_000, 65_535, 100_003, 1 << 20,
     (1 << 24) - 1, 1 << 24, (1 << 24) + 1, (1 << 24) + 3, 123_456_789, (1 << 31) - 1],
]).astype(np.int64)


def py(v):
    return {"py": v}


def npv(dtype: str, v: float):
    return {"np": dtype, "value": v}


def decode(arg):
    if "py" in arg:
        return arg["py"]
    return np.dtype(arg["np"]).type(arg["value"])


# name -> (function, learning_rate, positional args after global_step, keyword args)
CASES = {
    # exponential_decay(learning_rate, global_step, decay_steps, decay_rate, staircase)
    "exponential": ("exponential_decay", py(0.1), [py(7), py(0.96)], {}),
    "exponential_staircase": ("exponential_decay", py(0.1), [py(7), py(0.96)],
                              {"staircase": py(True)}),
    "exponential_half": ("exponential_decay", py(0.5), [py(100), py(0.5)], {}),
    "exponential_fast": ("exponential_decay", py(1.0), [py(3), py(0.1)], {}),
    "exponential_float_steps": ("exponential_decay", py(0.01), [py(12.5), py(0.9)], {}),
    "exponential_f64": ("exponential_decay", npv("float64", 0.1), [py(7), py(0.96)], {}),
    "exponential_f64_np_rate": ("exponential_decay", npv("float64", 0.1),
                                [py(7), npv("float64", 0.96)], {}),
    "exponential_f16": ("exponential_decay", npv("float16", 0.1), [py(10), py(0.9)], {}),
    "exponential_zero_steps": ("exponential_decay", py(0.1), [py(0), py(0.96)], {}),
    # natural_exp_decay: rate' = exp(-rate) at construction, then exponential_decay
    "natural_exp": ("natural_exp_decay", py(0.1), [py(5), py(0.5)], {}),
    "natural_exp_staircase": ("natural_exp_decay", py(0.1), [py(5), py(0.5)],
                              {"staircase": py(True)}),
    "natural_exp_small": ("natural_exp_decay", py(0.3), [py(1), py(0.01)], {}),
    "natural_exp_f64": ("natural_exp_decay", npv("float64", 0.1), [py(5), py(0.5)], {}),
    # inverse_time_decay
    "inverse_time": ("inverse_time_decay", py(0.1), [py(10), py(0.5)], {}),
    "inverse_time_staircase": ("inverse_time_decay", py(0.1), [py(10), py(0.5)],
                               {"staircase": py(True)}),
    "inverse_time_f64": ("inverse_time_decay", npv("float64", 0.1), [py(3), py(0.7)], {}),
    # polynomial_decay(lr, gs, decay_steps, end_learning_rate, power, cycle)
    "polynomial": ("polynomial_decay", py(0.1), [py(100)], {}),
    "polynomial_sqrt": ("polynomial_decay", py(0.1), [py(300)], {"power": py(0.5)}),
    "polynomial_cycle": ("polynomial_decay", py(0.1), [py(37)],
                         {"end_learning_rate": py(0.01), "power": py(2.0),
                          "cycle": py(True)}),
    "polynomial_cycle_float_steps": ("polynomial_decay", py(0.05), [py(33.3)],
                                     {"power": py(0.5), "cycle": py(True)}),
    "polynomial_f64": ("polynomial_decay", npv("float64", 0.1), [py(100)],
                       {"end_learning_rate": py(0.001), "power": py(3.0)}),
    "polynomial_f64_cycle_float_steps": ("polynomial_decay", npv("float64", 0.1), [py(33.3)],
                                         {"cycle": py(True)}),
    # cosine_decay(lr, gs, decay_steps, alpha)
    "cosine": ("cosine_decay", py(0.1), [py(100)], {}),
    "cosine_alpha": ("cosine_decay", py(0.1), [py(333)], {"alpha": py(0.1)}),
    "cosine_alpha_np32": ("cosine_decay", py(0.2), [py(50)],
                          {"alpha": npv("float32", 0.3)}),
    # cosine_decay_restarts(lr, gs, first_decay_steps, t_mul, m_mul, alpha)
    "restarts": ("cosine_decay_restarts", py(0.1), [py(10)], {}),
    "restarts_tmul1": ("cosine_decay_restarts", py(0.1), [py(50)], {"t_mul": py(1.0),
                                                                    "m_mul": py(0.9)}),
    "restarts_geometric": ("cosine_decay_restarts", py(0.1), [py(20)],
                           {"t_mul": py(1.5), "m_mul": py(0.8), "alpha": py(0.05)}),
    "restarts_tmul3": ("cosine_decay_restarts", py(0.3), [py(7)], {"t_mul": py(3.0),
                                                                   "alpha": py(0.01)}),
    "restarts_tmul_small": ("cosine_decay_restarts", py(0.1), [py(13)],
                            {"t_mul": py(1.1), "m_mul": py(0.95)}),
    # linear_cosine_decay(lr, gs, decay_steps, num_periods, alpha, beta)
    "linear_cosine": ("linear_cosine_decay", py(0.1), [py(100)], {}),
    "linear_cosine_periods": ("linear_cosine_decay", py(0.1), [py(250)],
                              {"num_periods": py(2.0), "alpha": py(0.1), "beta": py(0.01)}),
    # noisy_linear_cosine_decay without noise (initial_variance=0 gives a zero stddev)
    "noisy_linear_cosine_novariance": ("noisy_linear_cosine_decay", py(0.1), [py(100)],
                                       {"initial_variance": py(0.0)}),
}

PIECEWISE = {
    # name: (boundaries (Python ints), values, NumPy dtype of the values or None for Python
    # floats/ints, dtype of the step variable x)
    "piecewise": ([100, 200], [1.0, 0.5, 0.1], None, "int64"),
    "piecewise_int32_x": ([100, 200, 300], [0.1, 0.05, 0.01, 0.001], None, "int32"),
    "piecewise_int_values": ([250], [3, 7], None, "int64"),
    "piecewise_f64_values": ([10, 20, 400], [1.0, 0.1, 0.01, 0.001], "float64", "int64"),
}


def build_case(fn: str, lr, args, kwargs, step):
    f = getattr(train, fn)
    return f(decode(lr), step, *[decode(a) for a in args],
             **{k: decode(v) for k, v in kwargs.items()})


def record_values():
    arrays = {}
    manifest = {}
    for name, (fn, lr, args, kwargs) in CASES.items():
        step = tf.Variable(0, dtype=tf.int64, trainable=False)
        decayed = build_case(fn, lr, args, kwargs, step)
        vals = []
        for s in STEPS:
            step.assign(int(s))
            vals.append(decayed().numpy())
        vals = np.array(vals)
        arrays[f"{name}__steps"] = STEPS
        arrays[f"{name}__values"] = vals
        manifest[name] = {"function": fn, "learning_rate": lr, "args": args,
                          "kwargs": kwargs, "dtype": str(vals.dtype)}
    for name, (bounds, values, vdtype, xdtype) in PIECEWISE.items():
        steps = STEPS[STEPS < 2**31] if xdtype == "int32" else STEPS
        x = tf.Variable(0, dtype=getattr(tf, xdtype), trainable=False)
        vals = values if vdtype is None else [np.dtype(vdtype).type(v) for v in values]
        decayed = train.piecewise_constant(x, bounds, vals)
        out = []
        for s in steps:
            x.assign(int(s))
            out.append(decayed().numpy())
        out = np.array(out)
        arrays[f"{name}__steps"] = steps
        arrays[f"{name}__values"] = out
        manifest[name] = {"function": "piecewise_constant", "x_dtype": xdtype,
                          "boundaries": bounds, "values": values, "values_np_dtype": vdtype,
                          "dtype": str(out.dtype)}
    # A float x against float boundaries (boundaries belong to the lower interval).
    xs = np.array([-1.0, 0.0, 0.5, 0.99999994, 1.0, 1.0000001, 1.5, 2.0, 2.5, np.nan, np.inf],
                  np.float32)
    decayed = [train.piecewise_constant(tf.constant(x), [1.0, 2.0], [10.0, 20.0, 30.0])()
               .numpy() for x in xs]
    arrays["piecewise_float_x__x"] = xs
    arrays["piecewise_float_x__values"] = np.array(decayed)
    manifest["piecewise_float_x"] = {"function": "piecewise_constant", "x_dtype": "float32",
                                     "boundaries": [1.0, 2.0], "values": [10.0, 20.0, 30.0],
                                     "values_np_dtype": None, "dtype": "float32"}
    return arrays, manifest


def record_noisy():
    draws = {}
    for s in (0, 10, 60, 1000):
        step = tf.Variable(s, dtype=tf.int64, trainable=False)
        decayed = train.noisy_linear_cosine_decay(0.1, step, 100)
        draws[f"step_{s}"] = np.array([decayed().numpy() for _ in range(3000)], np.float32)
    return draws


def error_of(thunk):
    try:
        result = thunk()
        if callable(result):
            result()
    except Exception as e:  # noqa: BLE001 - recording whatever TF raises
        return {"type": type(e).__name__, "module": type(e).__module__,
                "is_value_error": isinstance(e, ValueError),
                "is_type_error": isinstance(e, TypeError), "message": str(e)}
    return None


def record_errors():
    step = tf.Variable(5, dtype=tf.int64, trainable=False)
    f64 = np.float64(0.1)
    cases = {
        "exponential_none_step": lambda: train.exponential_decay(0.1, None, 10, 0.96),
        "natural_exp_none_step": lambda: train.natural_exp_decay(0.1, None, 10, 0.5),
        "inverse_time_none_step": lambda: train.inverse_time_decay(0.1, None, 10, 0.5),
        "polynomial_none_step": lambda: train.polynomial_decay(0.1, None, 10),
        "cosine_none_step": lambda: train.cosine_decay(0.1, None, 10),
        "restarts_none_step": lambda: train.cosine_decay_restarts(0.1, None, 10),
        "linear_cosine_none_step": lambda: train.linear_cosine_decay(0.1, None, 10),
        "noisy_none_step": lambda: train.noisy_linear_cosine_decay(0.1, None, 10),
        "piecewise_none_x": lambda: train.piecewise_constant(None, [10], [0.1, 0.01]),
        "exponential_int_lr": lambda: train.exponential_decay(1, step, 10, 0.96),
        "inverse_time_int_lr": lambda: train.inverse_time_decay(1, step, 10, 0.5),
        "polynomial_int_lr": lambda: train.polynomial_decay(1, step, 10),
        "cosine_int_lr": lambda: train.cosine_decay(1, step, 10),
        "cosine_f64": lambda: train.cosine_decay(f64, step, 10),
        "cosine_f16": lambda: train.cosine_decay(np.float16(0.1), step, 10),
        "restarts_f64": lambda: train.cosine_decay_restarts(f64, step, 10),
        "linear_cosine_f64": lambda: train.linear_cosine_decay(f64, step, 10),
        "noisy_f64": lambda: train.noisy_linear_cosine_decay(f64, step, 10),
        "piecewise_float_boundaries_int_x":
            lambda: train.piecewise_constant(step, [1.5, 2.5], [1.0, 2.0, 3.0]),
        "piecewise_int_boundaries_float_x":
            lambda: train.piecewise_constant(tf.constant(1.0), [1, 2], [1.0, 2.0, 3.0]),
        "piecewise_int64_boundaries_int32_x":
            lambda: train.piecewise_constant(tf.constant(1, tf.int32), [np.int64(1)],
                                             [1.0, 2.0]),
        "piecewise_mixed_values": lambda: train.piecewise_constant(step, [10], [1.0, 2]),
        "piecewise_mixed_values_f64":
            lambda: train.piecewise_constant(step, [10], [1.0, np.float64(2.0)]),
        "piecewise_length": lambda: train.piecewise_constant(step, [10, 20], [1.0, 2.0]),
        "piecewise_unsorted": lambda: train.piecewise_constant(step, [10, 2], [1.0, 2.0, 3.0]),
    }
    return {name: error_of(thunk) for name, thunk in cases.items()}


def record_timing():
    """When the errors surface: at construction or at the first call (eager)."""
    out = {}
    step = tf.Variable(5, dtype=tf.int64, trainable=False)
    for name, thunk in {
        "exponential_none_step": lambda: train.exponential_decay(0.1, None, 10, 0.96),
        "cosine_f64": lambda: train.cosine_decay(np.float64(0.1), step, 10),
        "piecewise_length": lambda: train.piecewise_constant(step, [10, 20], [1.0, 2.0]),
        "piecewise_mixed_values": lambda: train.piecewise_constant(step, [10], [1.0, 2]),
    }.items():
        try:
            thunk()
            out[name] = "call"
        except Exception:  # noqa: BLE001
            out[name] = "construction"
    return out


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    arrays, cases = record_values()
    np.savez_compressed(OUT / "values.npz", **arrays)
    np.savez_compressed(OUT / "noisy.npz", **record_noisy())
    manifest = {
        "generator": "tools/make_tf1_schedule_fixtures.py",
        "tensorflow": tf.__version__,
        "python": sys.version.split()[0],
        "host": {"machine": platform.machine(), "libc": " ".join(platform.libc_ver())},
        "mode": "eager; global step = tf.Variable(int64) assigned before each call",
        "noisy": {"function": "noisy_linear_cosine_decay", "learning_rate": 0.1,
                  "decay_steps": 100, "draws_per_step": 3000},
        "cases": cases,
        "errors": record_errors(),
        "error_timing": record_timing(),
    }
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(cases)} cases to {OUT}")


if __name__ == "__main__":
    main()
