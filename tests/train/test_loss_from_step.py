"""``minimize``'s op carries the loss of its step (TF1's ``sess.run([loss, train_op])``)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

import compatopt as co


def _problem():
    w = co.Variable(np.asarray([1.0, -2.0, 0.5], np.float32), name="w")
    return w, lambda x: ((w * x) ** 2).sum()


def test_eager_op_loss_is_the_loss_before_the_update():
    w, loss = _problem()
    want = float(loss(jnp.float32(1.5)))
    op = co.train.AdamOptimizer(0.1).minimize(lambda: loss(jnp.float32(1.5)))
    assert isinstance(op.loss, jnp.ndarray) and float(op.loss) == want
    after = float(loss(jnp.float32(1.5)))
    op.run()
    assert float(op.loss) == after  # each run() reports its own step's loss


def test_compiled_step_returns_the_loss_from_one_forward_pass():
    w, loss = _problem()
    calls = []

    def counted(x):
        calls.append(1)
        return loss(x)

    opt = co.train.GradientDescentOptimizer(0.1)
    gs = co.train.get_or_create_global_step()

    @co.function
    def step(x):
        return opt.minimize(lambda: counted(x), global_step=gs)

    reference_w = co.Variable(w.value, name="w_ref")
    ref_opt = co.train.GradientDescentOptimizer(0.1)
    losses, ref_losses = [], []
    for i in range(4):
        x = jnp.float32(1.0 + i)
        ref_losses.append(float(ref_opt.minimize(lambda: ((reference_w * x) ** 2).sum()).loss))
        losses.append(float(step(x).loss))
    traced_calls = len(calls)
    step(jnp.float32(9.0))
    assert len(calls) == traced_calls  # compiled: the loss is not run again in Python
    assert step.trace_count == 1
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-6)
    assert int(gs.value) == 5


def test_loss_scaled_minimize_reports_the_unscaled_loss():
    w, loss = _problem()
    want = float(loss(jnp.float32(1.0)))
    opt = co.train.experimental.MixedPrecisionLossScaleOptimizer(
        co.train.GradientDescentOptimizer(0.1), 1024.0)
    assert float(opt.minimize(lambda: loss(jnp.float32(1.0))).loss) == want


def test_apply_gradients_op_has_no_loss():
    w, _ = _problem()
    op = co.train.GradientDescentOptimizer(0.1).apply_gradients([(jnp.ones(3), w)])
    assert op.loss is None
