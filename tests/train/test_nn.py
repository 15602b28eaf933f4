"""co.nn.embedding_lookup / compatopt.gather against TF1 graph-mode fixtures
(tools/make_tf1_clip_embedding_fixtures.py): lookups, the IndexedSlices gradients per
partition ("mod" and "div", 1-3 partitions), a sparse Adagrad training, TF1's errors."""

from __future__ import annotations

import json
import os
from typing import Any

import jax.numpy as jnp
import numpy as np
import pytest

import compatopt as co

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "..", "fixtures", "tf1", "clip_embedding")
DATA = np.load(os.path.join(FIX, "embedding.npz"))
with open(os.path.join(FIX, "meta.json")) as _f:
    META = json.load(_f)
IDS, WEIGHTS = DATA["ids"], jnp.asarray(DATA["weights"])


def assert_bits(actual, expected) -> None:
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    np.testing.assert_array_equal(actual.view(f"u{actual.itemsize}"),
                                  expected.view(f"u{expected.itemsize}"))


def partitions(key: str, n: int) -> list:
    co.reset_default_graph()
    return [co.Variable(DATA[f"{key}/part{p}"], name=f"emb_{p}") for p in range(n)]


@pytest.mark.parametrize("case", META["emb"], ids=lambda c: c["key"])
def test_lookup_and_sparse_gradients(case):
    key, n = case["key"], case["partitions"]
    vs = partitions(key, n)
    params = vs if n > 1 else vs[0]

    def lookup():
        return co.nn.embedding_lookup(params, IDS, partition_strategy=case["strategy"],
                                      max_norm=case["max_norm"])

    out = lookup()
    assert_bits(out, DATA[f"{key}/out"])
    opt = co.train.GradientDescentOptimizer(0.1)
    grads = opt.compute_gradients(lambda: jnp.sum(lookup() * WEIGHTS), var_list=vs)
    for p, (g, v) in enumerate(grads):
        assert v is vs[p] and isinstance(g, co.IndexedSlices)
        np.testing.assert_array_equal(g.indices, DATA[f"{key}/g{p}/indices"])
        assert g.dense_shape == tuple(DATA[f"{key}/g{p}/dense_shape"])
        if case["max_norm"] is None:  # the gradient is a gather of the weights: exact
            assert_bits(g.values, DATA[f"{key}/g{p}/values"])
        else:  # through clip_by_norm's gradient, which XLA's autodiff orders differently
            np.testing.assert_allclose(g.values, DATA[f"{key}/g{p}/values"], rtol=2e-6,
                                       atol=1e-7)


def test_mod_and_div_assign_ids_as_tf1():
    co.reset_default_graph()
    # 13 ids in 5 partitions (TF1's docstring example)
    mod = [co.Variable(jnp.arange(13.0)[p::5].reshape(-1, 1), name="m") for p in range(5)]
    sizes = [3, 3, 3, 2, 2]
    starts = np.cumsum([0] + sizes)
    div = [co.Variable(jnp.arange(float(starts[p]), float(starts[p + 1])).reshape(-1, 1),
                       name="d") for p in range(5)]
    ids = np.arange(13)
    for params, strategy in ((mod, "mod"), (div, "div")):
        out = co.nn.embedding_lookup(params, ids, partition_strategy=strategy)
        np.testing.assert_array_equal(out[:, 0], np.arange(13.0))


def test_gather_on_a_variable():
    co.reset_default_graph()
    w = co.Variable(DATA["table"], name="w")
    assert_bits(co.gather(w, IDS), DATA["gather/out"])
    (g, _), = co.train.GradientDescentOptimizer(0.1).compute_gradients(
        lambda: jnp.sum(co.gather(w, IDS) * WEIGHTS))
    assert isinstance(g, co.IndexedSlices)
    np.testing.assert_array_equal(g.indices, DATA["gather/indices"])
    assert_bits(g.values, DATA["gather/values"])
    assert_bits(co.gather(DATA["table"], IDS), DATA["gather/out"])  # arrays too


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("compiled", [False, True])
def test_adagrad_on_a_partitioned_embedding(steps, compiled):
    """TF1's SparseApplyAdagrad on each partition (spec: rsqrt-free Adagrad is exact)."""
    co.reset_default_graph()
    table = DATA["table"]
    vs = [co.Variable(table[p::2], name=f"emb_{p}") for p in range(2)]
    opt = co.train.AdagradOptimizer(0.1)

    def loss():
        out = co.nn.embedding_lookup(vs, IDS)
        return jnp.sum(jnp.square(out) * WEIGHTS)

    def step() -> None:
        opt.minimize(loss)

    run: Any = co.function(step) if compiled else step
    for _ in range(steps):
        run()
    for p, v in enumerate(vs):
        acc = opt.get_slot(v, "accumulator")
        assert acc is not None
        # 2 * x * w: XLA's gradient of square(x) * w rounds as TF's (x * 2 then * w)
        np.testing.assert_allclose(acc.value, DATA[f"adagrad/{steps}/acc{p}"], rtol=1e-6)
        np.testing.assert_allclose(v.value, DATA[f"adagrad/{steps}/var{p}"], rtol=1e-6)


ERR = META["errors"]
TABLE = np.arange(30, dtype=np.float32).reshape(10, 3)


def _one(name="emb"):
    co.reset_default_graph()
    return co.Variable(TABLE, name=name)


def _two(strategy_sizes="mod"):
    co.reset_default_graph()
    if strategy_sizes == "mod":
        return [co.Variable(TABLE[0::2], name="emb_0"), co.Variable(TABLE[1::2], name="emb_1")]
    return [co.Variable(TABLE[:5], name="emb_0"), co.Variable(TABLE[5:], name="emb_1")]


@pytest.mark.parametrize("key, call, var", [
    ("out_of_range_1", lambda: co.nn.embedding_lookup(_one(), [1, 10, 3]), "emb"),
    ("out_of_range_1_2d", lambda: co.nn.embedding_lookup(_one(), [[1, 2], [3, 12]]), "emb"),
    ("negative_1", lambda: co.nn.embedding_lookup(_one(), [-1, 2]), "emb"),
    ("out_of_range_mod2", lambda: co.nn.embedding_lookup(_two(), [1, 13, 3]), "emb_1"),
    ("out_of_range_div2", lambda: co.nn.embedding_lookup(_two("div"), [1, 10, 3],
                                                         partition_strategy="div"), None),
    ("gather_out_of_range", lambda: co.gather(_one("w"), [0, 11]), "w"),
])
def test_invalid_ids_raise_tf1s_error(key, call, var):
    with pytest.raises(co.errors.InvalidArgumentError) as e:
        call()
    assert ERR[key]["type"] == "InvalidArgumentError"
    assert str(e.value).startswith(ERR[key]["message"])
    if var is not None:
        assert f"'{var}'" in str(e.value)


@pytest.mark.parametrize("key, call", [
    ("empty_params", lambda: co.nn.embedding_lookup([], [1])),
    ("none_params", lambda: co.nn.embedding_lookup(None, [1])),
    ("bad_strategy", lambda: co.nn.embedding_lookup(_two(), [1], partition_strategy="rows")),
    ("float_ids", lambda: co.nn.embedding_lookup(_one(), jnp.asarray([1.0, 2.0]))),
])
def test_bad_arguments_raise_tf1s_error(key, call):
    exc = {"ValueError": ValueError, "TypeError": TypeError}[ERR[key]["type"]]
    with pytest.raises(exc) as e:
        call()
    assert str(e.value) == ERR[key]["message"]


def test_max_norm_clips_each_row():
    co.reset_default_graph()
    out = co.nn.embedding_lookup(jnp.asarray(TABLE), [[0, 9]], max_norm=1.0)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(out)[0, 1]), 1.0, rtol=1e-6)
