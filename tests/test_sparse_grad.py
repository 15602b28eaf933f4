"""``co.lookup`` + ``co.value_and_sparse_grad``: TF1's IndexedSlices gradients for JAX
autodiff, so the rules' lazy sparse kernels run on functional models."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import compatopt as co

RNG = np.random.default_rng(0)
PARAMS = {"emb": jnp.asarray(RNG.standard_normal((10, 3)), jnp.float32),
          "w": jnp.asarray(RNG.standard_normal((3,)), jnp.float32)}
Y = jnp.asarray([0.5, 1.0, 2.0, -1.0], jnp.float32)


def _loss(p, ids, y):
    return jnp.mean((co.lookup(p["emb"], ids) @ p["w"] - y) ** 2)


def _dense_loss(p, ids, y):
    return jnp.mean((jnp.take(p["emb"], ids, axis=0) @ p["w"] - y) ** 2)


def test_looked_up_table_gets_tf1s_indexed_slices():
    ids = jnp.asarray([1, 4, 1, 7])
    for f in (co.value_and_sparse_grad(_loss), jax.jit(co.value_and_sparse_grad(_loss))):
        value, grads = f(PARAMS, ids, Y)
        want_value, want = jax.value_and_grad(_dense_loss)(PARAMS, ids, Y)
        g = grads["emb"]
        assert isinstance(g, co.IndexedSlices) and g.dense_shape == (10, 3)
        assert g.indices.tolist() == [1, 4, 1, 7]  # repeats kept, as TF1
        assert g.values.shape == (4, 3)
        np.testing.assert_allclose(g.to_dense(), want["emb"], rtol=1e-6)
        np.testing.assert_allclose(grads["w"], want["w"], rtol=1e-6)
        np.testing.assert_allclose(value, want_value, rtol=1e-6)  # eager vs jit mean order


def test_two_lookups_concatenate_and_dense_use_gives_the_dense_sum():
    def two(p, a, b):
        return jnp.sum(co.lookup(p["emb"], a) * 2.0) + jnp.sum(co.lookup(p["emb"], b)) + p["w"][0]

    _, grads = co.value_and_sparse_grad(two)(PARAMS, jnp.asarray([0, 2]), jnp.asarray([[2, 9]]))
    assert grads["emb"].indices.tolist() == [0, 2, 2, 9]
    np.testing.assert_array_equal(grads["emb"].values[:2], 2.0)

    def mixed(p, ids, y):
        return _loss(p, ids, y) + 0.1 * jnp.sum(p["emb"] ** 2)

    _, grads = co.value_and_sparse_grad(mixed)(PARAMS, jnp.asarray([1, 3, 3, 5]), Y)
    want = jax.grad(lambda p, i, y: _dense_loss(p, i, y) + 0.1 * jnp.sum(p["emb"] ** 2))(
        PARAMS, jnp.asarray([1, 3, 3, 5]), Y)
    assert not isinstance(grads["emb"], co.IndexedSlices)  # TF1 densifies mixed use
    np.testing.assert_allclose(grads["emb"], want["emb"], rtol=1e-6)


def test_has_aux():
    def with_aux(p, ids, y):
        return _loss(p, ids, y), {"n": ids.size}

    (value, aux), grads = co.value_and_sparse_grad(with_aux, has_aux=True)(
        PARAMS, jnp.asarray([2, 2, 0, 1]), Y)
    assert aux == {"n": 4} and isinstance(grads["emb"], co.IndexedSlices)


def test_momentum_updates_rows_lazily_as_tf1():
    """Sparse: rows not looked up this step keep their value even with momentum left over
    (TF1's SparseApplyMomentum); the dense gradient would move them."""
    rule = co.momentum(0.1, 0.9)
    grad_fn = jax.jit(co.value_and_sparse_grad(_loss))
    params, state = PARAMS, rule.init(PARAMS)
    dense_params, dense_state = PARAMS, rule.init(PARAMS)
    for ids in (jnp.asarray([1, 4, 1, 7]), jnp.asarray([2, 2, 3, 5])):
        _, grads = grad_fn(params, ids, Y)
        params, state = rule.apply(grads, state, params)
        dense = jax.grad(_dense_loss)(dense_params, ids, Y)
        dense_params, dense_state = rule.apply(dense, dense_state, dense_params)
    after_first = rule.apply(grad_fn(PARAMS, jnp.asarray([1, 4, 1, 7]), Y)[1],
                             rule.init(PARAMS), PARAMS)[0]
    np.testing.assert_array_equal(params["emb"][1], after_first["emb"][1])  # untouched
    assert not np.array_equal(dense_params["emb"][1], after_first["emb"][1])
