"""Decayed rates as TF1 graph tensors: lazy arithmetic, accepted by every optimizer.

TF1 graph mode feeds ``FtrlOptimizer``, the proximal pair and ``AdagradDAOptimizer`` a
decayed learning rate as a tensor, and BERT-style code blends decayed rates with the step
(``(1 - is_warmup) * lr + is_warmup * warmup_lr``). Here the decay functions return a
``co.train.LazyTensor``: its operators stay lazy, and each optimizer reads its value at
every apply. The reference for "reads the value at every apply" is the same optimizer fed
the value through a Variable assigned before each step (TF1's other way to feed a rate).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import compatopt as co
from compatopt.errors import InvalidArgumentError

tr = co.train

# TF1's kernels for these take the decayed rate as a tensor; the Python classes never call
# a plain callable (tests/train/test_errors.py records TF1 refusing FtrlOptimizer(lambda)).
TENSOR_ONLY = {
    "Ftrl": lambda lr: tr.FtrlOptimizer(lr, l1_regularization_strength=0.01),
    "ProximalGradientDescent": lambda lr: tr.ProximalGradientDescentOptimizer(
        lr, l1_regularization_strength=0.01),
    "ProximalAdagrad": lambda lr: tr.ProximalAdagradOptimizer(lr, l2_regularization_strength=0.1),
    "AdagradDA": lambda lr: tr.AdagradDAOptimizer(lr, global_step=_STEP_FOR_DA[0]),
}
_STEP_FOR_DA: list = [None]
W0 = np.array([1.5, -0.75, 0.3, 2.0], np.float32)
C = np.array([0.5, 1.25, -2.0, 0.1], np.float32)


def _train(make, rate_of_step, steps=6, feed_variable=False):
    step = co.Variable(0, trainable=False, name="global_step")
    _STEP_FOR_DA[0] = step
    w = co.Variable(W0, name="w")
    if feed_variable:
        lr_var = co.Variable(np.float32(0), trainable=False, name="lr")
        opt = make(lr_var)
    else:
        opt = make(rate_of_step(step))
    out = []
    for _ in range(steps):
        if feed_variable:
            lr_var.assign(rate_of_step(step)())
        opt.minimize(lambda: ((w * w) * C).sum(), var_list=[w], global_step=step)
        out.append(np.asarray(w.value))
    return np.stack(out)


def _decay(step):
    return tr.exponential_decay(0.1, step, decay_steps=2, decay_rate=0.5)


@pytest.mark.parametrize("name", sorted(TENSOR_ONLY))
def test_decayed_rate_is_read_at_every_apply(name):
    got = _train(TENSOR_ONLY[name], _decay)
    want = _train(TENSOR_ONLY[name], _decay, feed_variable=True)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    assert not np.array_equal(got[1] - got[0], got[-1] - got[-2])  # the rate did change


@pytest.mark.parametrize("name", sorted(TENSOR_ONLY))
def test_arithmetic_on_a_decayed_rate_stays_lazy(name):
    got = _train(TENSOR_ONLY[name], lambda s: 0.5 * _decay(s) + _decay(s) / 4.0)
    want = _train(TENSOR_ONLY[name], lambda s: 0.5 * _decay(s) + _decay(s) / 4.0,
                  feed_variable=True)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


def test_plain_callables_are_still_refused_where_tf1_refuses_them():
    w = co.Variable(W0, name="w")
    with pytest.raises(ValueError, match="unsupported type"):
        tr.FtrlOptimizer(lambda: 0.1).minimize(lambda: (w * w).sum(), var_list=[w])
    np.testing.assert_array_equal(w.value, W0)


def test_proximal_adagrad_checks_the_decayed_rate_when_the_step_runs():
    """Graph mode checks ``lr > 0`` in the kernel: a rate decayed to 0 fails that step and
    changes nothing (not at construction, where the placeholder used to be checked)."""
    step = co.Variable(0, trainable=False, name="global_step")
    w = co.Variable(W0, name="w")
    lr = tr.piecewise_constant(step, [1], [0.1, 0.0])  # x <= 1: 0.1, as TF
    opt = tr.ProximalAdagradOptimizer(lr)
    loss = lambda: (w * w).sum()  # noqa: E731
    opt.minimize(loss, var_list=[w], global_step=step)
    opt.minimize(loss, var_list=[w], global_step=step)
    before = (np.asarray(w.value), np.asarray(opt.get_slot(w, "accumulator").value),
              int(step.value))
    with pytest.raises(InvalidArgumentError, match="lr is not a positive scalar: 0.0"):
        opt.minimize(loss, var_list=[w], global_step=step)
    after = (np.asarray(w.value), np.asarray(opt.get_slot(w, "accumulator").value),
             int(step.value))
    np.testing.assert_array_equal(before[0], after[0])
    np.testing.assert_array_equal(before[1], after[1])
    assert before[2] == after[2] == 2


def test_bert_warmup_blend_ports_as_written():
    """BERT's ``optimization.py`` warmup, written as TF1 code with compatopt names."""
    step = co.Variable(0, trainable=False, name="global_step")
    init_lr, warmup, total = 0.1, 3, 10
    lr = tr.polynomial_decay(init_lr, step, total, end_learning_rate=0.0, power=1.0)
    gs = tr.lazy(step).astype(jnp.int32)
    gs_float = gs.astype(jnp.float32)
    warmup_lr = init_lr * (gs_float / float(warmup))
    is_warmup = (gs < warmup).astype(jnp.float32)
    blended = (1.0 - is_warmup) * lr + is_warmup * warmup_lr
    seen, want = [], []
    for s in range(6):
        step.assign(s)
        seen.append(float(blended()))
        warm = np.float32(init_lr) * (np.float32(s) / np.float32(warmup))
        want.append(float(warm) if s < warmup else float(lr()))
    assert seen == want


def test_lazy_values_refuse_truth_and_read_variables():
    v = co.Variable(np.float32(2.0), trainable=False, name="v")
    x = tr.lazy(v) * 3.0
    assert float(x) == 6.0
    v.assign(np.float32(5.0))
    assert float(x()) == 15.0
    assert float((-x).map(jnp.abs)()) == 15.0
    with pytest.raises(TypeError, match="truth value"):
        bool(x > 1.0)
    assert "LazyTensor" in repr(x)
    d = {x: 1}  # hashable, as a TF1 tensor
    assert d[x] == 1
