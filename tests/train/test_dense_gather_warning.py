"""The porting lint of ``compute_gradients`` / ``minimize``: a variable the loss reads only
through a gather of its value (``jnp.take(w.value, ids)``, ``w.value[ids]``) gets a dense
gradient where TF1's ``tf.gather`` / ``embedding_lookup`` gives ``IndexedSlices`` and sparse
updates, so a ``UserWarning`` names it and the fix; reads that TF1 differentiates densely
too (matmuls, slices, a gather next to a dense use) and sparse reads stay silent. The check
traces each new loss code once (``jax.make_jaxpr``), never per step.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import compatopt as co
from compatopt.train import _dense_gather_check

IDS = jnp.array([1, 4, 4, 7])


def _vars():
    co.reset_default_graph()
    emb = co.Variable(np.arange(30, dtype=np.float32).reshape(10, 3) / 30, name="emb")
    w = co.Variable(np.ones((3, 2), np.float32), name="proj")
    return emb, w


def _warnings(fn, times: int = 1) -> list:
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        for _ in range(times):
            fn()
    return [r for r in rec if issubclass(r.category, UserWarning)]


@pytest.mark.parametrize("read", ["take", "value_index", "variable_index"])
def test_warns_for_a_variable_read_only_through_a_gather(read):
    emb, w = _vars()
    opt = co.train.AdagradOptimizer(0.1)
    rows = {"take": lambda: jnp.take(emb.value, IDS, axis=0),
            "value_index": lambda: emb.value[IDS],
            "variable_index": lambda: emb[IDS]}[read]
    train = opt.minimize if read == "take" else opt.compute_gradients
    rec = _warnings(lambda: train(lambda: jnp.sum(jnp.tanh(rows() @ w.value))))
    assert len(rec) == 1
    message = str(rec[0].message)
    assert "'emb'" in message and "proj" not in message
    assert "co.nn.embedding_lookup(w, ids)" in message and "w.sparse_read(ids)" in message
    assert rec[0].filename == __file__  # points at the caller, not at compatopt


def test_warns_with_an_explicit_var_list():
    emb, w = _vars()
    opt = co.train.GradientDescentOptimizer(0.1)
    rec = _warnings(lambda: opt.compute_gradients(
        lambda: jnp.sum(jnp.take(emb.value, IDS, axis=0) @ w.value), var_list=[emb, w]))
    assert len(rec) == 1 and "'emb'" in str(rec[0].message)


@pytest.mark.parametrize("read", ["embedding_lookup", "sparse_read", "gather", "matmul",
                                  "mixed", "slice", "columns", "elements", "not_trained"])
def test_silent(read):
    emb, w = _vars()
    opt = co.train.AdagradOptimizer(0.1)
    losses = {
        "embedding_lookup": lambda: jnp.sum(co.nn.embedding_lookup(emb, IDS) @ w.value),
        "sparse_read": lambda: jnp.sum(emb.sparse_read(IDS) @ w.value),
        "gather": lambda: jnp.sum(co.gather(emb, IDS) @ w.value),
        "matmul": lambda: jnp.sum(emb.value @ w.value),
        # a gather next to a dense use: TF1's gradient is dense too (IndexedSlices + dense)
        "mixed": lambda: jnp.sum(emb.value[IDS] @ w.value) + jnp.sum(jnp.square(emb.value)),
        "slice": lambda: jnp.sum(emb.value[2] @ w.value) + jnp.sum(emb.value[3:5] @ w.value),
        # gathers TF1 differentiates densely as well: another axis, single elements
        "columns": lambda: jnp.sum(co.gather(emb, jnp.array([0, 2]), axis=1) @ w.value[:2]),
        "elements": lambda: jnp.sum(emb.value[IDS, 1]) * jnp.sum(w.value),
        # gathered rows used only under stop_gradient: no gradient reaches emb at all
        "not_trained": lambda: jnp.sum(
            jnp.take(jax.lax.stop_gradient(emb.value), IDS, axis=0) @ w.value),
    }
    assert _warnings(lambda: opt.compute_gradients(losses[read])) == []


def test_once_per_loss_and_nothing_per_step(monkeypatch):
    emb, w = _vars()
    opt = co.train.AdagradOptimizer(0.1)
    traced = []
    real = _dense_gather_check.check
    monkeypatch.setattr(_dense_gather_check, "check",
                        lambda *a, **k: (traced.append(1), real(*a, **k)))

    def loss(ids):
        return jnp.sum(jnp.take(emb.value, ids, axis=0) @ w.value)

    @co.function
    def step(ids):
        return opt.minimize(lambda: loss(ids))

    rec = _warnings(lambda: step(IDS), times=4)
    assert len(rec) == 1 and len(traced) == 1 and step.trace_count == 1
    rec = _warnings(lambda: opt.minimize(lambda: loss(IDS)), times=3)  # another loss code
    assert len(rec) == 1 and len(traced) == 2


@pytest.mark.parametrize("inspect", [True, False])
def test_the_inspection_creates_no_variables(inspect, monkeypatch):
    if not inspect:
        monkeypatch.setattr(_dense_gather_check, "first_time", lambda loss_fn: False)
    emb, w = _vars()
    opt = co.train.GradientDescentOptimizer(0.1)

    def creating_loss():  # a variable created in the loss: the inspection's one is undone
        scale = co.Variable(2.0, trainable=False, name="scale")
        return jnp.sum(jnp.take(emb.value, IDS, axis=0) @ w.value) * scale.value

    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        opt.compute_gradients(creating_loss)
    # the loss's own runs only (a new loss runs twice): scale, scale_1
    assert [v.op.name for v in co.global_variables()] == ["emb", "proj", "scale", "scale_1"]


def test_a_loss_the_inspection_cannot_trace_is_not_checked(monkeypatch):
    emb, w = _vars()

    def fail(*args, **kwargs):
        raise RuntimeError("not traceable")

    monkeypatch.setattr(_dense_gather_check.jax, "make_jaxpr", fail)
    opt = co.train.GradientDescentOptimizer(0.1)
    rec = _warnings(lambda: opt.compute_gradients(
        lambda: jnp.sum(jnp.take(emb.value, IDS, axis=0) @ w.value)))
    assert rec == []
