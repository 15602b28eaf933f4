"""compatopt.function: one compiled computation per step, variables lifted and donated."""

import jax.numpy as jnp
import numpy as np
import pytest

import compatopt as co

from .shim_models import mlp_loss
from .shim_problem import problem


def _setup(opt_factory=lambda: co.train.AdamOptimizer(0.01)):
    mlp, _ = problem()
    params = {k: co.Variable(v, name=k) for k, v in mlp["init"].items()}
    gs = co.train.get_or_create_global_step()
    opt = opt_factory()
    x, y = jnp.asarray(mlp["x"]), jnp.asarray(mlp["y"])
    return params, gs, opt, x, y


def test_compiled_step_traces_once_and_matches_eager():
    params, gs, opt, x, y = _setup()

    @co.function
    def step(x, y):
        return opt.minimize(lambda: mlp_loss(params, x, y), global_step=gs)

    for _ in range(20):
        step(x, y)
    assert step.trace_count == 1
    assert int(gs.numpy()) == 20
    assert [v.name for v in opt.variables()][:2] == ["b1/Adam:0", "b1/Adam_1:0"]
    compiled = {k: v.numpy() for k, v in params.items()}
    co.reset_default_graph()
    params2, gs2, opt2, _, _ = _setup()
    for _ in range(20):
        opt2.minimize(lambda: mlp_loss(params2, x, y), global_step=gs2)
    for k in params:
        np.testing.assert_allclose(compiled[k], params2[k].numpy(), rtol=1e-5, atol=1e-6)


def test_no_recompilation_after_first_call_only_for_new_shapes():
    params, gs, opt, x, y = _setup()

    @co.function
    def step(x, y):
        opt.minimize(lambda: mlp_loss(params, x, y), global_step=gs)
        return mlp_loss(params, x, y)

    losses = [float(step(x, y)) for _ in range(10)]
    assert step.trace_count == 1 and losses[-1] < losses[0]
    step(x[:8], y[:8])  # a new batch shape: one more trace
    step(x[:8], y[:8])
    assert step.trace_count == 2
    step(x, y)
    assert step.trace_count == 2


def test_first_call_does_not_compile_the_eager_apply():
    """The first call runs the step once eagerly to find its variables and make its slots;
    that run's values are thrown away, so the optimizer's whole-apply jit (seconds of
    compile at thousands of variables) is not used there."""
    params, gs, opt, x, y = _setup()

    @co.function
    def step(x, y):
        return opt.minimize(lambda: mlp_loss(params, x, y), global_step=gs)

    step(x, y)
    step(x, y)
    assert opt._jit_apply._cache_size() == 0
    assert int(gs.numpy()) == 2
    opt.minimize(lambda: mlp_loss(params, x, y), global_step=gs)  # eager: the jit as before
    assert opt._jit_apply._cache_size() == 1


@pytest.mark.parametrize("pack", [True, False], ids=["packed", "per_variable"])
def test_second_call_reuses_the_first_calls_compiled_code(pack):
    """The first call's inputs (new variables, slots, packs) are not committed to a device
    and a step's outputs are; jit would compile the step again for the second call."""
    params, gs, opt, x, y = _setup()

    @co.function(pack_variables=pack)
    def step(x, y):
        return opt.minimize(lambda: mlp_loss(params, x, y), global_step=gs)

    for _ in range(3):
        step(x, y)
        held = params["w1"].value  # handed out: the next step donates a copy of it
        assert held.shape == (8, 16)
    (entry,) = step._entries.values()
    assert entry.jitted._cache_size() == 1
    assert step.trace_count == 1


@pytest.mark.parametrize("pack", [True, False], ids=["packed", "per_variable"])
def test_written_buffers_are_donated(pack):
    params, gs, opt, x, y = _setup()

    @co.function(pack_variables=pack)
    def step(x, y):
        opt.minimize(lambda: mlp_loss(params, x, y), global_step=gs)

    def stored(v):  # a packed variable lives in its pack's buffer
        return v._pack._buffer if v._pack is not None else v.buffer

    step(x, y)
    lifted = [params["w1"], gs, opt.get_slot(params["w1"], "m"),
              opt._get_non_slot_variable("beta1_power")]
    assert all((v._pack is not None) == (pack and v.ndim > 0) for v in lifted)
    before = [stored(v) for v in lifted]  # the step's own outputs: donated by the next step
    held = params["w2"].value           # handed out: copied once, stays valid
    held_bits = np.asarray(held).copy()
    step(x, y)
    assert all(a.is_deleted() for a in before)
    assert not held.is_deleted() and np.array_equal(np.asarray(held), held_bits)
    assert not x.is_deleted()
    again = stored(params["w2"])
    step(x, y)
    assert again.is_deleted()
    hlo = step.experimental_get_compiler_ir(x, y)
    assert "tf.aliasing_output" in hlo or "jax.buffer_donor" in hlo


def test_an_array_assigned_eagerly_is_copied_before_donation():
    w = co.Variable(jnp.ones(3), name="w")
    shared = jnp.full(3, 2.0)
    w.assign(shared)
    opt = co.train.GradientDescentOptimizer(0.5)

    @co.function
    def step():
        opt.minimize(lambda: jnp.sum(w * w))

    step()
    assert not shared.is_deleted()
    np.testing.assert_array_equal(w.numpy(), [0.0, 0.0, 0.0])


def test_operation_run_repeats_the_compiled_step():
    params, gs, opt, x, y = _setup(lambda: co.train.GradientDescentOptimizer(0.1))

    @co.function
    def step(x, y):
        return opt.minimize(lambda: mlp_loss(params, x, y), global_step=gs)

    op = step(x, y)
    assert isinstance(op, co.train.Operation)
    op.run()
    op.run()
    assert int(gs.numpy()) == 3 and step.trace_count == 1


def test_compute_apply_with_gradient_processing_in_one_step():
    params, gs, opt, x, y = _setup(lambda: co.train.MomentumOptimizer(0.05, 0.9))

    @co.function
    def step(x, y):
        gvs = opt.compute_gradients(lambda: mlp_loss(params, x, y))
        clipped = [(jnp.clip(g, -0.1, 0.1), v) for g, v in gvs]
        return opt.apply_gradients(clipped, global_step=gs)

    for _ in range(5):
        step(x, y)
    assert step.trace_count == 1 and int(gs.numpy()) == 5
    assert opt.get_slot(params["w1"], "momentum").name == "w1/Momentum:0"


def test_eager_minimize_returns_an_operation_that_runs_again():
    w = co.Variable(jnp.zeros(2), name="w")
    gs = co.train.get_or_create_global_step()
    op = co.train.GradientDescentOptimizer(1.0).minimize(lambda: jnp.sum(w * 1.0),
                                                         global_step=gs)
    op.run()
    np.testing.assert_array_equal(w.numpy(), [-2.0, -2.0])
    assert int(gs.numpy()) == 2


def test_eager_apply_does_not_recompile_in_a_loop():
    w = co.Variable(jnp.zeros((4, 3)), name="w")
    opt = co.train.AdamOptimizer(0.1)
    for _ in range(3):
        opt.apply_gradients([(jnp.ones((4, 3)), w)])
    assert opt._jit_apply._cache_size() == 1
