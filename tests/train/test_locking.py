"""use_locking=True serialises concurrent apply_gradients on one optimizer."""

import threading

import jax.numpy as jnp
import numpy as np

import compatopt as co


def test_eight_threads_times_200_applies_lose_no_update():
    w = co.Variable(jnp.zeros(3), name="w")
    gs = co.train.get_or_create_global_step()
    opt = co.train.MomentumOptimizer(1.0, 0.0, use_locking=True)
    grad = jnp.ones(3)
    errors = []

    def worker():
        try:
            for _ in range(200):
                opt.apply_gradients([(grad, w)], global_step=gs)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert int(gs.numpy()) == 1600
    # every apply subtracts exactly 1 (momentum 0: accum = g): integers are exact in f32
    np.testing.assert_array_equal(w.numpy(), [-1600.0] * 3)
    np.testing.assert_array_equal(opt.get_slot(w, "momentum").numpy(), [1.0] * 3)
