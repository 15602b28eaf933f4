"""The model the checkpoint fixtures are recorded on (shared by the TF recorder and the tests).

Pure NumPy, so ``tools/make_tf1_checkpoint_fixtures.py`` (TensorFlow) and the tests (JAX)
build bit-identical data and initial values. A 2-layer MLP whose variables carry TF1 scope
names (``hidden/kernel``...), trained ``STEPS_BEFORE`` steps, saved, then ``STEPS_AFTER``
more.
"""

from __future__ import annotations

import os

import numpy as np

STEPS_BEFORE = 50
STEPS_AFTER = 50
VARS = ("hidden/kernel", "hidden/bias", "out/kernel", "out/bias")

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "tf1",
                        "checkpoints")

# kind, constructor arguments, slot names in TF1's creation order
CONFIGS = {
    "adam": ("Adam", {"learning_rate": 0.01}, ("m", "v")),
    "momentum": ("Momentum", {"learning_rate": 0.05, "momentum": 0.9, "use_nesterov": True},
                 ("momentum",)),
    "rmsprop": ("RMSProp", {"learning_rate": 0.005, "decay": 0.9, "momentum": 0.5,
                            "epsilon": 1e-6, "centered": True}, ("rms", "mg", "momentum")),
}

# A second, dtype-only checkpoint: name -> (numpy dtype name, shape)
DTYPE_VARS = {"f16": ("float16", (3,)), "bf16": ("bfloat16", (2, 2)), "f64": ("float64", (4,)),
              "i32": ("int32", (2,)), "i64": ("int64", ()), "flag": ("bool", (3,))}
DTYPE_STEP = 7


def problem():
    """``(x, y, init)``: float32 data and initial values keyed by TF1 variable name."""
    rs = np.random.RandomState(2024)
    f = lambda *s: rs.standard_normal(s).astype(np.float32)  # noqa: E731
    x, y = f(32, 8), f(32, 1)
    init = {"hidden/kernel": f(8, 16) * np.float32(0.5), "hidden/bias": f(16) * np.float32(0.1),
            "out/kernel": f(16, 1) * np.float32(0.5), "out/bias": f(1) * np.float32(0.1)}
    return x, y, init


def dtype_values():
    """Values of the dtype checkpoint, as NumPy arrays of their (ml_dtypes) dtypes."""
    import ml_dtypes
    rs = np.random.RandomState(7)
    out = {}
    for name, (dtype, shape) in DTYPE_VARS.items():
        dt = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.dtype(dtype)
        if dtype == "bool":
            out[name] = rs.rand(*shape) > 0.5
        elif dtype.startswith("int"):
            out[name] = np.asarray(rs.randint(-1000, 1000, size=shape), dt)
        else:
            out[name] = np.asarray(rs.standard_normal(shape), dt)
    out["i64"] = np.asarray(2**40 + 5, np.int64)  # does not fit int32
    return out
