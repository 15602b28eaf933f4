"""The flat layouts on the models JAX users have: flax nnx (``nnx.Optimizer``, and
``nnx.split``/``nnx.merge`` around ``co.flatten_params``) and equinox (``eqx.partition``,
whose ``None`` leaves ``co.multi_tensor`` keeps), bit-identical to the per-leaf rule; and
``FlatParams.tree()``'s views (runtime offsets, a concatenation for the gradient, forward
mode too)."""

from __future__ import annotations

import re

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import compatopt as co


class _DeepMLP(nnx.Module):
    def __init__(self, layers: int, rngs: nnx.Rngs):
        self.layers = nnx.List([nnx.Linear(8, 8, rngs=rngs) for _ in range(layers)])

    def __call__(self, x):
        for layer in self.layers:
            x = jnp.tanh(layer(x))
        return x


def _data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 8)).astype(np.float32)
    return jnp.asarray(x), jnp.asarray(np.tanh(x[:, ::-1]))


def _nnx_optimizer_run(tx, steps=4):
    model = _DeepMLP(3, nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    x, y = _data()

    @nnx.jit
    def step(model, optimizer):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
        optimizer.update(model, grads)
        return loss

    losses = [float(step(model, optimizer)) for _ in range(steps)]
    return losses, jax.tree.leaves(nnx.state(model, nnx.Param))


def _assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("make", [co.adam, lambda lr: co.momentum(lr, 0.9)],
                         ids=["adam", "momentum"])
def test_nnx_optimizer_with_multi_tensor_is_the_per_leaf_rule(make):
    losses, leaves = _nnx_optimizer_run(make(1e-2))
    losses_mt, leaves_mt = _nnx_optimizer_run(co.multi_tensor(make(1e-2)))
    assert losses == losses_mt
    _assert_same(leaves, leaves_mt)


def test_nnx_split_merge_over_flatten_params_is_the_per_leaf_rule():
    _, reference = _nnx_optimizer_run(co.adam(1e-2))
    model = _DeepMLP(3, nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    flat = co.flatten_params(params)
    assert len(flat.buffers) == 1  # 3 x (8 x 8 + 8) float32 in one buffer
    rule = co.adam(1e-2)
    state = rule.init(flat)
    x, y = _data()

    @jax.jit
    def step(flat, state):
        def loss_of(flat):
            return jnp.mean((nnx.merge(graphdef, flat.tree(), rest)(x) - y) ** 2)
        grads = jax.grad(loss_of)(flat)
        return rule.apply(grads, state, flat)

    for _ in range(4):
        flat, state = step(flat, state)
    nnx.update(model, flat.tree())
    _assert_same(reference, jax.tree.leaves(nnx.state(model, nnx.Param)))


def _eqx_run(tx, flat_params=False, steps=4):
    model = eqx.nn.MLP(8, 8, 8, depth=3, activation=jnp.tanh, key=jax.random.PRNGKey(0))
    params, static = eqx.partition(model, eqx.is_inexact_array)
    if flat_params:
        params = co.flatten_params(params)
    state = tx.init(params)
    x, y = _data()

    @jax.jit
    def step(params, state):
        def loss_of(params):
            tree = params.tree() if flat_params else params
            return jnp.mean((jax.vmap(eqx.combine(tree, static))(x) - y) ** 2)
        loss, grads = jax.value_and_grad(loss_of)(params)
        updates, state = tx.update(grads, state, params)
        return eqx.apply_updates(params, updates), state, loss

    losses = []
    for _ in range(steps):
        params, state, loss = step(params, state)
        losses.append(float(loss))
    return losses, jax.tree.leaves(params.tree() if flat_params else params)


def test_equinox_loop_with_multi_tensor_and_flatten_params_is_the_per_leaf_rule():
    losses, leaves = _eqx_run(co.adam(1e-2))
    for run in (_eqx_run(co.multi_tensor(co.adam(1e-2))),
                _eqx_run(co.adam(1e-2), flat_params=True)):
        assert run[0] == losses
        _assert_same(leaves, run[1])


def test_multi_tensor_keeps_none_parameters_and_rejects_a_gradient_for_one():
    rule = co.multi_tensor(co.adam(0.1))
    params = {"a": jnp.ones(3), "act": None, "b": jnp.ones((2, 2))}
    state = rule.init(params)
    grads = {"a": jnp.ones(3), "act": None, "b": jnp.ones((2, 2))}
    new, state2 = rule.apply(grads, state, params)
    assert new["act"] is None
    per_leaf, _ = co.adam(0.1).apply(grads, co.adam(0.1).init(params), params)
    _assert_same(jax.tree.leaves(per_leaf), jax.tree.leaves(new))
    updates, _ = rule.update(grads, state, params)
    assert updates["act"] is None
    with pytest.raises(ValueError, match=r"gradient for .*act.* parameter is None"):
        rule.apply({"a": jnp.ones(3), "act": jnp.ones(1), "b": jnp.ones((2, 2))}, state,
                   params)


def test_flat_params_views_share_one_slice_kernel_per_shape_and_grad_is_a_concatenation():
    params = [jnp.arange(6.0).reshape(2, 3) + i for i in range(12)] + [jnp.ones(5)]
    flat = co.flatten_params(params)
    views = jax.jit(lambda fp: fp.tree()).lower(flat).compile().as_text()
    # runtime offsets: no static slice, and the slice computations are the same code
    # (modulo names) per distinct shape, which XLA:CPU compiles once
    static = [(int(a), int(b)) for a, b in re.findall(r"slice=\{\[(\d+):(\d+)\]\}", views)]
    assert all(b - a == 1 for a, b in static), static  # only the element the offsets read
    bodies = {re.sub(r"[\d.]", "", "\n".join(ln.split("=", 1)[-1].split(", metadata")[0]
                                             for ln in body.splitlines()[1:]))
              for body in re.findall(r"^%fused\S* \(.*?^\}", views, re.M | re.S)}
    assert 1 <= len(bodies) <= 3
    grad_hlo = jax.jit(jax.grad(lambda fp: sum(jnp.sum(t ** 2) for t in fp.tree()))).lower(
        flat).compile().as_text()
    assert "dynamic-update-slice" not in grad_hlo  # the transpose is a concatenation
    g = jax.jit(jax.grad(lambda fp: sum(jnp.sum(t ** 2) for t in fp.tree())))(flat)
    np.testing.assert_array_equal(np.asarray(g.buffers[0]), 2 * np.asarray(flat.buffers[0]))
    for got, want in zip(jax.jit(lambda fp: fp.tree())(flat), params):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_flat_params_views_in_forward_mode_and_eagerly():
    params = {"w": jnp.arange(4.0).reshape(2, 2), "b": jnp.asarray([1.0, -2.0])}
    flat = co.flatten_params(params)
    f = lambda fp: jnp.sum(fp.tree()["w"] ** 3) + jnp.sum(fp.tree()["b"])  # noqa: E731
    primal, tangent = jax.jvp(f, (flat,), (flat,))
    assert float(primal) == 36.0 - 1.0
    assert float(tangent) == float(np.sum(3 * np.arange(4.0) ** 3) + (1.0 - 2.0))
    hvp = jax.grad(lambda fp: jax.jvp(f, (fp,), (fp,))[1])(flat)
    assert hvp.tree()["w"].shape == (2, 2)
    np.testing.assert_array_equal(np.asarray(flat.tree()["b"]), [1.0, -2.0])


def test_flat_params_views_with_nan_and_empty_leaves():
    params = [jnp.asarray([jnp.nan, 1.0]), jnp.zeros((0,)), jnp.asarray([2.0, 3.0])]
    flat = co.flatten_params(params)
    out = jax.jit(lambda fp: fp.tree())(flat)
    np.testing.assert_array_equal(np.asarray(out[0]), [np.nan, 1.0])
    assert out[1].shape == (0,)
    np.testing.assert_array_equal(np.asarray(out[2]), [2.0, 3.0])
    empty = co.flatten_params([jnp.zeros((0,)), jnp.zeros((0, 2))])
    assert [t.shape for t in empty.tree()] == [(0,), (0, 2)]


def test_flat_params_static_offsets_give_the_same_values_and_gradients():
    params = [jnp.arange(6.0).reshape(2, 3) + i for i in range(5)] + [jnp.ones(4)]
    flat = co.flatten_params(params)
    loss = lambda fp, static: sum(jnp.sum(jnp.sin(t) * t) for t in fp.tree(static))  # noqa: E731
    for static in (False, True):
        for got, want in zip(jax.jit(lambda fp: fp.tree(static))(flat), params):
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    g_dyn = jax.jit(jax.grad(lambda fp: loss(fp, False)))(flat)
    g_static = jax.jit(jax.grad(lambda fp: loss(fp, True)))(flat)
    np.testing.assert_array_equal(np.asarray(g_dyn.buffers[0]), np.asarray(g_static.buffers[0]))
    hlo = jax.jit(lambda fp: fp.tree(True)).lower(flat).compile().as_text()
    assert "dynamic-slice" not in hlo
