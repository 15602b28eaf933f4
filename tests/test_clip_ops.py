"""compatopt.clip_ops against TF1 graph-mode fixtures (tools/make_tf1_clip_embedding_fixtures.py).

Bit for bit: global_norm (Eigen's L2Loss and Sum orders), clip_by_global_norm, clip_by_norm
over all or trailing axes, clip_by_value, clip_by_average_norm; eagerly and under jit.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import compatopt as co
from compatopt import clip_ops

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "fixtures", "tf1", "clip_embedding")
DATA = np.load(os.path.join(FIX, "clip.npz"))
with open(os.path.join(FIX, "meta.json")) as _f:
    META = json.load(_f)
DTYPES = ("float32", "float64")
# A subset of the fixture's sizes (each size compiles): one, partial and whole packets, the
# four-accumulator blocks and their remainders, a tree split (8193 > 8 * 1024).
SWEEP_TESTED = (1, 7, 8, 9, 17, 33, 37, 65, 1000, 8193)


def sweep_input(n: int, dtype: str) -> np.ndarray:  # as the generator's
    return (np.random.RandomState(1000 + n).standard_normal(n) * 1.7).astype(dtype)


def assert_bits(actual, expected) -> None:
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    np.testing.assert_array_equal(actual.view(f"u{actual.itemsize}"),
                                  expected.view(f"u{expected.itemsize}"))


def t_list(dt: str, special=None) -> list:
    ts = [jnp.asarray(DATA[f"list/{dt}/t{i}"]) for i in range(5)]
    if special:
        bad = np.array(DATA[f"list/{dt}/t2"])
        bad[3] = np.inf if special == "inf" else np.nan
        ts[2] = jnp.asarray(bad)
    sl = co.IndexedSlices(DATA[f"list/{dt}/slices_values"], DATA[f"list/{dt}/slices_indices"],
                          (6, 4))
    return [ts[0], None, ts[1], ts[2], sl, ts[3], None, ts[4]]


@pytest.mark.parametrize("case", META["gnorm"], ids=lambda c: f"{c['dtype']}-{c['case']}")
def test_clip_by_global_norm(case):
    dt = case["dtype"]
    with jax.enable_x64(dt == "float64"):
        ts = t_list(dt, case["special"])
        key = f"gnorm/{dt}/{case['case']}"
        assert_bits(co.global_norm(ts), DATA[key + "/global_norm"])
        fns = [co.clip_by_global_norm]
        if case["case"] == "clip":
            fns.append(jax.jit(co.clip_by_global_norm, static_argnums=1))
        for fn in fns:
            clipped, norm = fn(ts, case["clip_norm"])
            assert_bits(norm, DATA[key + "/norm"])
            assert clipped[1] is None and clipped[6] is None
            assert isinstance(clipped[4], co.IndexedSlices)
            np.testing.assert_array_equal(clipped[4].indices, [0, 2, 0, 3, 2])
            assert clipped[4].dense_shape == (6, 4)
            for i, c in enumerate(clipped):
                if c is not None:
                    assert_bits(c.values if isinstance(c, co.IndexedSlices) else c,
                                DATA[f"{key}/c{i}"])


def test_not_clipped_is_still_scaled_by_c_times_one_over_c():
    # TF1 multiplies by clip_norm * (1 / clip_norm) even when nothing is clipped.
    clipped, _ = co.clip_by_global_norm(t_list("float32"), 1e6)
    expected = DATA["gnorm/float32/noclip/c0"]
    assert_bits(clipped[0], expected)


def test_inf_and_nan_norm_give_nan_everywhere():
    for special in ("inf", "nan"):
        clipped, norm = co.clip_by_global_norm(t_list("float32", special), 5.0)
        assert np.isnan(np.asarray(clipped[0])).all()
        assert np.isnan(np.asarray(clipped[4].values)).all()


@pytest.mark.parametrize("dt", DTYPES)
def test_use_norm(dt):
    with jax.enable_x64(dt == "float64"):
        ts = [jnp.asarray(DATA[f"list/{dt}/t{i}"]) for i in range(5)]
        clipped, norm = co.clip_by_global_norm(ts, 2.5, use_norm=jnp.asarray(7.25, dt))
        for i, c in enumerate(clipped):
            assert_bits(c, DATA[f"usenorm/{dt}/c{i}"])


@pytest.mark.parametrize("dt", DTYPES)
def test_global_norm_size_sweep(dt):
    """One tensor of n values: Eigen's four-accumulator packets, tail and tree split."""
    with jax.enable_x64(dt == "float64"):
        jitted = jax.jit(lambda x: co.global_norm([x]))
        for n in SWEEP_TESTED:
            x = sweep_input(n, dt)
            expected = DATA[f"sweep/{dt}/{n}/norm"]
            assert_bits(co.global_norm([x]), expected)
            if n in (13, 64, 1000, 8193):
                assert_bits(jitted(x), expected)
            assert_bits(clip_ops.eigen_sum(jnp.asarray(x) * jnp.asarray(x)), DATA[f"sweep/{dt}/{n}/sum"])


def test_jnp_sum_order_differs_from_tfs():
    """Negative control: a plain jnp.sum / np.sum misses TF's bits for some sizes."""
    misses = 0
    for n in META["sweep"]:
        x = sweep_input(n, "float32")
        half = (x * x) * np.float32(0.5)
        misses += np.float32(np.sqrt(np.sum(half) * np.float32(2))) != DATA[
            f"sweep/float32/{n}/norm"]
    assert misses > 0


@pytest.mark.parametrize("case", META["cbn"], ids=lambda c: c["key"])
def test_clip_by_norm(case):
    with jax.enable_x64(case["dtype"] == "float64"):
        x = DATA[case["key"] + "/x"]
        axes = case["axes"]
        out = co.clip_by_norm(jnp.asarray(x), case["clip_norm"], axes)
        trailing = axes is None or axes[-1] == x.ndim - 1 and axes == list(
            range(x.ndim - len(axes), x.ndim))
        if trailing:
            assert_bits(out, DATA[case["key"] + "/out"])
            if x.ndim > 1:  # jit once per layout, not for every case
                assert_bits(jax.jit(lambda v: co.clip_by_norm(v, case["clip_norm"], axes))(x),
                            DATA[case["key"] + "/out"])
        else:  # other axes: jnp.sum's order (documented bound)
            np.testing.assert_allclose(out, DATA[case["key"] + "/out"], rtol=4e-7
                                       if case["dtype"] == "float32" else 1e-15)


@pytest.mark.parametrize("dt", DTYPES)
def test_clip_by_norm_indexed_slices(dt):
    with jax.enable_x64(dt == "float64"):
        sl = co.IndexedSlices(DATA[f"list/{dt}/slices_values"],
                              DATA[f"list/{dt}/slices_indices"], (6, 4))
        out = co.clip_by_norm(sl, 1.0)
        assert isinstance(out, co.IndexedSlices) and out.dense_shape == (6, 4)
        assert_bits(out.values, DATA[f"cbn_slices/{dt}/values"])
        np.testing.assert_array_equal(out.indices, DATA[f"cbn_slices/{dt}/indices"])


@pytest.mark.parametrize("dt", DTYPES)
def test_clip_by_value(dt):
    with jax.enable_x64(dt == "float64"):
        assert_bits(co.clip_by_value(jnp.asarray(DATA[f"cbv/{dt}/x"]), -0.5, 0.75),
                    DATA[f"cbv/{dt}/out"])
    out = co.clip_by_value(jnp.asarray([1.0, np.nan, -3.0]), -1.0, 1.0)
    np.testing.assert_array_equal(out, [1.0, np.nan, -1.0])
    with pytest.raises(TypeError):
        co.clip_by_value(jnp.asarray([1, 2, 3]), -3.1, 3.1)


def test_clip_by_average_norm():
    x = jnp.asarray(DATA["cban/x"])
    assert_bits(co.clip_by_average_norm(x, 0.1), DATA["cban/out"])
    assert_bits(co.clip_by_average_norm(x, 100.0), DATA["cban/out_noclip"])


def test_errors_match_tf1():
    errors = META["errors"]
    with pytest.raises(TypeError) as e:
        co.global_norm({"a": jnp.ones(1)})  # type: ignore[arg-type]
    assert str(e.value) == errors["global_norm_not_sequence"]["message"]
    with pytest.raises(TypeError, match="`t_list` should be a sequence of tensors"):
        co.clip_by_global_norm(jnp.ones(1), 1.0)  # type: ignore[arg-type]


def test_empty_and_none_lists():
    assert float(co.global_norm([None, None])) == 0.0
    clipped, norm = co.clip_by_global_norm((None,), 1.0)
    assert clipped == [None]


def test_tuple_of_grads_from_a_pytree_under_jit():
    grads = {"w": jnp.ones((3, 4)), "b": jnp.full((4,), 2.0)}

    @jax.jit
    def clip(grads):
        leaves, treedef = jax.tree_util.tree_flatten(grads)
        clipped, norm = co.clip_by_global_norm(tuple(leaves), 1.0)
        return jax.tree_util.tree_unflatten(treedef, clipped), norm

    out, norm = clip(grads)
    assert_bits(norm, np.float32(np.sqrt(np.float32(28.0))))
    np.testing.assert_allclose(out["w"], 1 / np.sqrt(28), rtol=1e-6)
