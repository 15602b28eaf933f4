"""``SyncReplicasOptimizer`` on one replica and its TF1 API surface (the multi-replica
average is checked on 8 devices in tests/parallel/_shim_cases.py)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import compatopt as co


@pytest.fixture(autouse=True)
def _fresh():
    co.reset_default_graph()
    yield
    co.reset_default_graph()


def _run(wrap: bool):
    co.reset_default_graph()
    w = co.Variable(np.asarray([1.0, -2.0, 0.5], np.float32), name="w")
    gs = co.train.get_or_create_global_step()
    opt = co.train.AdamOptimizer(0.05)
    if wrap:
        opt = co.train.SyncReplicasOptimizer(opt, replicas_to_aggregate=1)
    for i in range(4):
        opt.minimize(lambda: ((w * (i + 1.0)) ** 2).sum(), global_step=gs)
    return np.asarray(w.value), int(gs.value), [v.name for v in opt.variables()]


def test_one_replica_is_the_wrapped_optimizer():
    got, want = _run(True), _run(False)
    np.testing.assert_array_equal(got[0], want[0])
    assert got[1:] == want[1:] == (4, ["beta1_power:0", "beta2_power:0", "w/Adam:0",
                                       "w/Adam_1:0"])


def test_tf1_session_api_runs():
    opt = co.train.SyncReplicasOptimizer(co.train.GradientDescentOptimizer(0.1), 1,
                                         total_num_replicas=1)
    hook = opt.make_session_run_hook(is_chief=True, num_tokens=-1)
    hook.begin()
    hook.after_create_session(None, None)
    opt.get_init_tokens_op().run()
    assert opt.get_chief_queue_runner() is None


def test_errors():
    w = co.Variable(np.ones(2, np.float32), name="w")
    opt = co.train.SyncReplicasOptimizer(co.train.GradientDescentOptimizer(0.1), 1)
    with pytest.raises(ValueError, match="Global step is required to check staleness"):
        opt.apply_gradients([(jnp.ones(2), w)])
    with pytest.raises(ValueError, match="backup workers"):
        co.train.SyncReplicasOptimizer(co.train.GradientDescentOptimizer(0.1), 2,
                                       total_num_replicas=3)
    gs = co.train.get_or_create_global_step()
    two = co.train.SyncReplicasOptimizer(co.train.GradientDescentOptimizer(0.1), 2)
    with pytest.raises(ValueError, match="runs on 1 replica"):
        two.apply_gradients([(jnp.ones(2), w)], global_step=gs)
    with pytest.raises(TypeError, match="compatopt.train.Optimizer"):
        co.train.SyncReplicasOptimizer(co.adam(0.1), 1)  # type: ignore[arg-type]
    np.testing.assert_array_equal(w.value, np.ones(2, np.float32))
    assert int(gs.value) == 0


def test_moving_averages_applied_after_each_update():
    w = co.Variable(np.ones(2, np.float32), name="w")
    gs = co.train.get_or_create_global_step()
    ema = co.train.ExponentialMovingAverage(0.5)
    opt = co.train.SyncReplicasOptimizer(co.train.GradientDescentOptimizer(0.5), 1,
                                         variable_averages=ema, variables_to_average=[w])
    opt.apply_gradients([(jnp.ones(2), w)], global_step=gs)
    # shadow created from w's value before apply saw it (0.5), then averaged towards 0.5
    np.testing.assert_allclose(np.asarray(ema.average(w).value), [0.5, 0.5])
