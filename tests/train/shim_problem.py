"""The problems the shim fixtures are recorded on (shared by the TF recorder and the tests).

Pure NumPy, so that ``tools/make_tf1_shim_fixtures.py`` (TensorFlow) and the tests (JAX)
build bit-identical data, initial values and replayed gradients.
"""

from __future__ import annotations

import numpy as np

MLP_STEPS = 200
SPARSE_STEPS = 50
REPLAY_STEPS = 30

_REG = {"l1_regularization_strength": 0.001, "l2_regularization_strength": 0.001}

# Learning rates are chosen so that 200 steps stay well conditioned: a 1e-6 relative
# change of the data moves the losses by ~1e-6 at most (last-bit differences between TF's
# and XLA's matmul/reduce then stay far below the tests' rtol of 1e-5).
CONFIGS = {
    "GradientDescent": ("GradientDescent", {"learning_rate": 0.05}),
    "Momentum": ("Momentum", {"learning_rate": 0.01, "momentum": 0.9}),
    "MomentumNesterov": ("Momentum", {"learning_rate": 0.01, "momentum": 0.9,
                                      "use_nesterov": True}),
    "Adagrad": ("Adagrad", {"learning_rate": 0.01}),
    "AdagradDA": ("AdagradDA", {"learning_rate": 0.05, **_REG}),
    "Adadelta": ("Adadelta", {"learning_rate": 1.0}),
    "Adam": ("Adam", {"learning_rate": 0.002}),
    "AdamCallable": ("Adam", {"learning_rate": 0.002, "callable_lr": True}),
    "Ftrl": ("Ftrl", {"learning_rate": 0.05, **_REG}),
    "ProximalGradientDescent": ("ProximalGradientDescent", {"learning_rate": 0.05, **_REG}),
    "ProximalAdagrad": ("ProximalAdagrad", {"learning_rate": 0.01, **_REG}),
    "RMSProp": ("RMSProp", {"learning_rate": 0.001, "epsilon": 1e-4}),
    "RMSPropCentered": ("RMSProp", {"learning_rate": 0.0001, "momentum": 0.5,
                                    "epsilon": 1e-4, "centered": True}),
}


def problem():
    """``(mlp, sparse)``: data and float32 initial values of the two models."""
    rs = np.random.RandomState(1234)
    f = lambda *s: rs.standard_normal(s).astype(np.float32)  # noqa: E731
    mlp = {"x": f(32, 8), "y": f(32, 1),
           "init": {"w1": f(8, 16) * np.float32(0.5), "b1": f(16) * np.float32(0.1),
                    "w2": f(16, 1) * np.float32(0.5), "b2": f(1) * np.float32(0.1)}}
    sparse = {"ids": np.array([1, 3, 3, 7, 0, 3], np.int32), "c": f(6, 4),
              "init": {"emb": f(10, 4) * np.float32(0.5)}}
    return mlp, sparse


def replay_gradients(init, steps):
    """Deterministic float32 gradients, one dict per step, shaped like ``init``."""
    rs = np.random.RandomState(99)
    for _ in range(steps):
        yield {k: (rs.standard_normal(v.shape) * 0.3).astype(np.float32)
               for k, v in sorted(init.items())}
