"""``compatopt.tf_math``: a custom TF1 optimizer written with it replays TF1 bit for bit.

The fixture (``tools/make_tf1_adamw_fixtures.py``) is BERT's ``AdamWeightDecayOptimizer``
as a TF1 hook-style subclass, run in graph mode on fed gradients; the same subclass in
``examples/adamw_subclass.py`` (written with ``tf_math``) must give the same bits, eagerly
and in a compiled step.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import compatopt as co
from compatopt import tf_math as tm

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..")
sys.path.insert(0, os.path.join(ROOT, "tools"))
from make_tf1_adamw_fixtures import HYPER, SHAPES, STEPS  # noqa: E402

with np.load(os.path.join(HERE, "fixtures", "tf1", "adamw", "adamw.npz")) as _f:
    TF1 = dict(_f)


def _example():
    spec = importlib.util.spec_from_file_location(
        "adamw_subclass", os.path.join(ROOT, "examples", "adamw_subclass.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "function"])
def test_bert_adamw_subclass_replays_tf1_graph_mode(compiled):
    co.reset_default_graph()
    ex = _example()
    vs = {n: co.Variable(TF1[n], name=n) for n in SHAPES}
    opt = ex.AdamWeightDecayOptimizer(**HYPER)

    def step(gk, gb):
        return opt.apply_gradients([(gk, vs["kernel"]), (gb, vs["bias"])])

    run = co.function(step) if compiled else step
    for k in range(STEPS):
        run(jnp.asarray(TF1["grad/kernel"][k]), jnp.asarray(TF1["grad/bias"][k]))
        for n in SHAPES:
            for what, got in (("param", vs[n].value), ("m", opt.get_slot(vs[n], "m").value),
                              ("v", opt.get_slot(vs[n], "v").value)):
                np.testing.assert_array_equal(np.asarray(got).view(np.uint32),
                                              TF1[f"{what}/{n}"][k].view(np.uint32),
                                              err_msg=f"{what}/{n} after step {k + 1}")


def test_ops_round_as_tf1():
    x = jnp.asarray([1.0, 3.0, 7.0], jnp.float32)
    np.testing.assert_array_equal(jax.jit(lambda a: tm.div(a, 3.0))(x),
                                  np.asarray(x) / np.float32(3.0))
    np.testing.assert_array_equal(jax.jit(tm.square)(x), np.asarray(x) * np.asarray(x))
    a, b, c = (jnp.asarray(np.random.default_rng(i).standard_normal(64), jnp.float32)
               for i in range(3))
    fused_free = jax.jit(lambda a, b, c: tm.mul(a, b) + c)(a, b, c)
    np.testing.assert_array_equal(fused_free, np.asarray(a) * np.asarray(b) + np.asarray(c))
