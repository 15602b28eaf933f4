"""``co.moving_averages.ema`` with a flax nnx model: shadows of the parameters, TF1's
arithmetic, evaluated by swapping the averages into a copy of the model."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import compatopt as co
from compatopt import moving_averages

nnx = pytest.importorskip("flax.nnx")
optax = pytest.importorskip("optax")


def test_ema_of_an_nnx_model_matches_tf1_arithmetic():
    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, co.gradient_descent(0.1), wrt=nnx.Param)
    avg = moving_averages.ema(0.9, num_updates=None)
    ema_state = avg.init(nnx.state(model, nnx.Param))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 3)), jnp.float32)

    @nnx.jit
    def step(model, optimizer, x):
        grads = nnx.grad(lambda m: jnp.mean(m(x) ** 2))(model)
        optimizer.update(model, grads)

    shadows = {k: np.asarray(v) for k, v in
               jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.Param))}
    for _ in range(3):
        step(model, optimizer, x)
        ema_state = avg.update(nnx.state(model, nnx.Param), ema_state)
        for path, value in jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.Param)):
            s = shadows[path]
            # TF1 assign_moving_average: s - (s - x) * (1 - d), each op rounded in float32
            shadows[path] = (s - (s - np.asarray(value)) * np.float32(1 - np.float32(0.9))
                             ).astype(np.float32)
    for path, value in jax.tree_util.tree_leaves_with_path(avg.average(ema_state)):
        np.testing.assert_array_equal(np.asarray(value), shadows[path])
    # evaluate with the averages: a copy of the model with the shadows swapped in
    eval_model = nnx.clone(model)
    nnx.update(eval_model, avg.average(ema_state))
    np.testing.assert_array_equal(np.asarray(eval_model.kernel[...]),
                                  np.asarray(avg.average(ema_state)["kernel"][...]))
