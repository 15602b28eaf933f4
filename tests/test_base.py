"""``compatopt._base``: ``IndexedSlices`` as a pytree, ``apply_updates``, ``Rule``."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import compatopt as co
from compatopt._base import is_grad_leaf


def _slices(dense_shape=(4, 2)):
    return co.IndexedSlices(jnp.asarray([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], jnp.float32),
                            jnp.asarray([2, 0, 2]), dense_shape)


# --------------------------------------------------------------------------- IndexedSlices


def test_indexed_slices_converts_and_keeps_static_shape():
    s = co.IndexedSlices([[1.0, 2.0]], [3], dense_shape=np.asarray([5, 2]))
    assert isinstance(s.values, jax.Array) and isinstance(s.indices, jax.Array)
    assert s.dense_shape == (5, 2) and all(type(d) is int for d in s.dense_shape)
    assert s.dtype == s.values.dtype
    assert co.IndexedSlices(jnp.ones((1, 2)), jnp.asarray([0])).dense_shape is None
    assert "IndexedSlices(values=" in repr(s) and "dense_shape=(5, 2)" in repr(s)


def test_indexed_slices_is_a_pytree_node():
    s = _slices()
    leaves, treedef = jax.tree_util.tree_flatten(s)
    assert len(leaves) == 2 and leaves[0] is s.values and leaves[1] is s.indices
    back = jax.tree_util.tree_unflatten(treedef, leaves)
    assert isinstance(back, co.IndexedSlices) and back.dense_shape == (4, 2)
    # dense_shape is static: two shapes are two tree structures (two jit cache entries)
    assert jax.tree_util.tree_structure(_slices((5, 2))) != treedef


def test_indexed_slices_round_trips_through_jit():
    s = _slices()
    out = jax.jit(lambda t: t)(s)
    assert isinstance(out, co.IndexedSlices) and out.dense_shape == (4, 2)
    np.testing.assert_array_equal(np.asarray(out.values), np.asarray(s.values))
    np.testing.assert_array_equal(np.asarray(out.indices), np.asarray(s.indices))
    doubled = jax.jit(lambda t: co.IndexedSlices(t.values * 2, t.indices, t.dense_shape))(s)
    assert doubled.dense_shape == (4, 2)
    np.testing.assert_array_equal(np.asarray(doubled.values), 2 * np.asarray(s.values))


def test_indexed_slices_through_vmap_and_tree_map():
    batch = co.IndexedSlices(jnp.ones((3, 2, 2)), jnp.asarray([[0, 1], [1, 1], [3, 0]]), (4, 2))
    dense = jax.vmap(lambda t: t.to_dense())(batch)
    assert dense.shape == (3, 4, 2)
    np.testing.assert_array_equal(np.asarray(dense[1]), [[0, 0], [2, 2], [0, 0], [0, 0]])
    neg = jax.tree_util.tree_map(jnp.negative, {"w": _slices()})
    assert isinstance(neg["w"], co.IndexedSlices)


def test_to_dense_sums_repeated_rows():
    dense = _slices().to_dense()
    np.testing.assert_array_equal(np.asarray(dense), [[3, 4], [0, 0], [6, 8], [0, 0]])
    assert dense.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(jax.jit(lambda s: s.to_dense())(_slices())),
                                  np.asarray(dense))


def test_to_dense_needs_dense_shape():
    with pytest.raises(ValueError, match="dense_shape"):
        co.IndexedSlices(jnp.ones((1, 2)), jnp.asarray([0])).to_dense()


def test_grad_leaves():
    assert is_grad_leaf(None) and is_grad_leaf(_slices())
    assert not is_grad_leaf(jnp.ones(2)) and not is_grad_leaf({"w": None})


# --------------------------------------------------------------------------- apply_updates


def test_apply_updates_adds_and_keeps_param_dtype():
    params = {"a": jnp.ones(3, jnp.float16), "b": {"c": jnp.zeros((2, 2), jnp.float32)}}
    updates = {"a": jnp.full(3, 0.5, jnp.float32), "b": {"c": jnp.ones((2, 2), jnp.float32)}}
    out = co.apply_updates(params, updates)
    assert out["a"].dtype == jnp.float16 and out["b"]["c"].dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(out["a"], np.float32), [1.5] * 3)
    np.testing.assert_array_equal(np.asarray(out["b"]["c"]), np.ones((2, 2)))


def test_apply_updates_with_none_keeps_the_param():
    p = jnp.arange(3.0)
    params = {"a": p, "b": jnp.ones(2)}
    out = co.apply_updates(params, {"a": None, "b": jnp.ones(2)})
    assert out["a"] is p
    np.testing.assert_array_equal(np.asarray(out["b"]), [2.0, 2.0])
    out = jax.jit(co.apply_updates)(params, {"a": None, "b": jnp.ones(2)})
    np.testing.assert_array_equal(np.asarray(out["a"]), np.asarray(p))


def test_apply_updates_is_one_rounding_per_leaf():
    p = np.float32([1.0, 1e8, -3.25])
    u = np.float32([1e-8, 1.0, 0.125])
    out = jax.jit(co.apply_updates)(jnp.asarray(p), jnp.asarray(u))
    np.testing.assert_array_equal(np.asarray(out), p + u)


def test_apply_updates_structure_mismatch_raises():
    with pytest.raises(ValueError):
        co.apply_updates({"a": jnp.ones(2)}, {"b": jnp.ones(2)})


# ------------------------------------------------------------------------------------ Rule


def test_rule_is_a_frozen_description():
    rule = co.adam(0.01)
    assert rule.name == "Adam"
    assert rule.hyperparams["learning_rate"] == 0.01
    assert repr(rule).startswith("AdamRule(learning_rate=0.01")
    assert rule.definition is not None and rule.definition.name == "Adam"
    with pytest.raises(dataclasses.FrozenInstanceError):
        rule.name = "x"
    assert "use_nesterov=True" in repr(co.momentum(0.1, 0.9, use_nesterov=True))


def test_rule_fits_the_optax_protocol():
    import optax

    rule = co.momentum(0.1, 0.9)
    assert callable(rule.init) and callable(rule.update)
    params = {"w": jnp.ones(2)}
    state = rule.init(params)
    updates, state = optax.with_extra_args_support(rule).update({"w": jnp.ones(2)}, state, params)
    np.testing.assert_allclose(np.asarray(updates["w"]), [-0.1, -0.1])


# ------------------------------------------------------------- IndexedSlices arithmetic


def _two_rows():
    return co.IndexedSlices(jnp.asarray([[1.0, 2.0], [3.0, 4.0]], jnp.float32),
                            jnp.asarray([2, 0]), (3, 2))


def test_indexed_slices_scale_and_negate_stay_sparse():
    g = _two_rows()
    for got, want in [(g * 2.0, g.values * 2.0), (0.5 * g, 0.5 * g.values),
                      (g / 4.0, g.values / 4.0), (-g, -g.values),
                      (g * jnp.float32(3), g.values * 3)]:
        assert isinstance(got, co.IndexedSlices) and got.dense_shape == (3, 2)
        np.testing.assert_array_equal(got.values, want)
        np.testing.assert_array_equal(got.indices, g.indices)
    assert g.shape == (3, 2)
    half = co.IndexedSlices(g.values.astype(jnp.float16), g.indices, (3, 2))
    assert (half * 0.5).values.dtype == jnp.float16


def test_indexed_slices_sum_concatenates_as_tf1_aggregates():
    g = _two_rows()
    total = g + co.IndexedSlices(jnp.ones((1, 2)), jnp.asarray([2]), (3, 2))
    assert total.indices.tolist() == [2, 0, 2]
    np.testing.assert_array_equal(total.to_dense(), g.to_dense() + jnp.asarray(
        [[0, 0], [0, 0], [1, 1]], jnp.float32))
    with pytest.raises(ValueError, match="dense_shape"):
        _ = g + co.IndexedSlices(jnp.ones((1, 2)), jnp.asarray([0]), (4, 2))


@pytest.mark.parametrize("op", [
    lambda g: g + jnp.ones((3, 2)), lambda g: g * jnp.ones((3, 2)), lambda g: np.asarray(g),
    lambda g: jnp.asarray(g)])
def test_dense_use_of_indexed_slices_says_how_to_densify(op):
    with pytest.raises(TypeError, match=r"densify it first with `g.to_dense\(\)`"):
        op(_two_rows())


def test_indexed_slices_scaling_works_under_jit():
    out = jax.jit(lambda g, s: g * s)(_two_rows(), jnp.float32(2))
    np.testing.assert_array_equal(out.values, _two_rows().values * 2)
