"""``compatopt.train.experimental.MixedPrecisionLossScaleOptimizer`` against TF1 graph mode.

Replays ``tools/make_tf1_loss_scale_fixtures.py``: every step's ``w``, optimizer variables,
``global_step``, ``current_loss_scale`` and ``good_steps`` bit for bit (eagerly and inside
``compatopt.function``), the checkpoint names, and TF1's errors.
"""

import json
import os
import sys

import jax.numpy as jnp
import numpy as np
import pytest

import compatopt as co
from compatopt.train import experimental as exp

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tools"))
from make_tf1_loss_scale_fixtures import C, CONFIGS, FACTORS, W0  # noqa: E402

FIX = os.path.join(HERE, "..", "fixtures", "tf1", "loss_scale")
with np.load(os.path.join(FIX, "trainings.npz")) as _npz:
    ARRAYS = dict(_npz)


def _json(name):
    with open(os.path.join(FIX, name)) as f:
        return json.load(f)


META = _json("trainings.json")
ERRORS = _json("errors.json")


def _build(key):
    kind, kwargs, spec = CONFIGS[key]
    w = co.Variable(W0, name="w")
    gs = co.train.get_or_create_global_step()
    factor = co.Variable(np.float32(1), trainable=False, name="factor", collections=[])
    if spec[0] == "fixed":
        ls = exp.FixedLossScale(spec[1])
    elif spec[0] == "dynamic":
        ls = exp.DynamicLossScale(spec[1], spec[2], spec[3])
    else:
        ls = spec[1]
    opt = exp.MixedPrecisionLossScaleOptimizer(
        getattr(co.train, kind + "Optimizer")(**kwargs), ls)

    def loss():
        return jnp.sum(w * w.value * C) * factor.value

    return w, gs, factor, opt, loss


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "function"])
@pytest.mark.parametrize("key", sorted(CONFIGS))
def test_steps_match_tf1(key, compiled):
    w, gs, factor, opt, loss = _build(key)

    def step():
        return opt.minimize(loss, global_step=gs)

    run = co.function(step) if compiled else step
    names = META["configs"][key]["variables"]
    for i, f in enumerate(FACTORS):
        factor.assign(np.float32(f))
        run()
        np.testing.assert_array_equal(w.numpy(), ARRAYS[f"{key}/w"][i], err_msg=f"step {i}")
        assert int(gs.numpy()) == int(ARRAYS[f"{key}/global_step"][i]), f"step {i}"
        got = {v.name: v.numpy() for v in opt.variables()}
        assert sorted(got) == names
        for n in names:
            np.testing.assert_array_equal(got[n], ARRAYS[f"{key}/{n}"][i],
                                          err_msg=f"{n} step {i}")
            assert got[n].dtype.kind == ARRAYS[f"{key}/{n}"][i].dtype.kind


def test_skipped_step_keeps_global_step():
    gs_rows = ARRAYS["sgd_dynamic/global_step"]
    skipped = [i for i, f in enumerate(FACTORS) if not np.isfinite(f * 4.0)]
    assert all(gs_rows[i] == gs_rows[i - 1] for i in skipped)


@pytest.mark.parametrize("key", ["adam_dynamic", "sgd_fixed8"])
def test_checkpoint_names(key, tmp_path):
    w, gs, factor, opt, loss = _build(key)
    opt.minimize(loss, global_step=gs)
    saver = co.train.Saver()
    path = saver.save(None, str(tmp_path / "ckpt"))
    names = sorted(n for n, _ in co.train.list_variables(path))
    assert names == META["configs"][key]["checkpoint"]


def test_restore_dynamic_state(tmp_path):
    w, gs, factor, opt, loss = _build("sgd_dynamic")
    for _ in range(3):
        opt.minimize(loss, global_step=gs)
    path = co.train.Saver().save(None, str(tmp_path / "ckpt"))
    saved = {v.name: v.numpy() for v in opt.variables()}
    factor.assign(np.float32(np.inf))
    opt.minimize(loss, global_step=gs)
    co.train.Saver().restore(None, path)
    for v in opt.variables():
        np.testing.assert_array_equal(v.numpy(), saved[v.name])


def test_compute_then_apply_matches_minimize():
    w, gs, factor, opt, loss = _build("adam_dynamic")
    for i, f in enumerate(FACTORS[:5]):
        factor.assign(np.float32(f))
        opt.apply_gradients(opt.compute_gradients(loss), global_step=gs)
        np.testing.assert_array_equal(w.numpy(), ARRAYS["adam_dynamic/w"][i])


def test_operation_rerun_skips_again():
    w, gs, factor, opt, loss = _build("sgd_dynamic")
    bad = [(jnp.array([np.nan, 0, 0, 0], jnp.float32), w)]
    op = opt.apply_gradients(bad, global_step=gs)
    op.run()
    np.testing.assert_array_equal(w.numpy(), W0)
    assert int(gs.numpy()) == 0
    assert float(opt._loss_scale()) == 1.0  # 4 -> 2 -> 1 (never below 1)


def test_sparse_gradient_unscaled_and_checked():
    emb = co.Variable(np.ones((3, 2), np.float32), name="emb")
    opt = exp.MixedPrecisionLossScaleOptimizer(co.train.GradientDescentOptimizer(1.0),
                                               exp.DynamicLossScale(8.0, 10, 2.0))
    with pytest.warns(UserWarning, match="only through a gather"):  # a dense gather, on purpose
        gvs = opt.compute_gradients(lambda: jnp.sum(jnp.take(emb.value, jnp.array([0, 2]), 0)))
    (g, _), = gvs
    opt.apply_gradients(gvs)
    np.testing.assert_array_equal(np.asarray(g), np.ones((3, 2)) * np.array([[1], [0], [1]]))
    sl = co.IndexedSlices(jnp.array([[np.inf, 0.]], jnp.float32), jnp.array([1]), (3, 2))
    before = emb.numpy()
    opt.apply_gradients([(sl, emb)])
    np.testing.assert_array_equal(emb.numpy(), before)



@pytest.mark.parametrize("name,make", [
    ("fixed_below_one", lambda: exp.FixedLossScale(0.5)),
    ("fixed_string", lambda: exp.FixedLossScale("8")),
    ("fixed_zero_int", lambda: exp.FixedLossScale(0)),
    ("opt_bad_string", lambda: exp.MixedPrecisionLossScaleOptimizer(
        co.train.GradientDescentOptimizer(0.1), "static")),
    ("opt_bad_list", lambda: exp.MixedPrecisionLossScaleOptimizer(
        co.train.GradientDescentOptimizer(0.1), [8])),
    ("opt_below_one", lambda: exp.MixedPrecisionLossScaleOptimizer(
        co.train.GradientDescentOptimizer(0.1), 0.25)),
    ("opt_not_optimizer", lambda: exp.MixedPrecisionLossScaleOptimizer("sgd", 8)),
    ("opt_none", lambda: exp.MixedPrecisionLossScaleOptimizer(
        co.train.GradientDescentOptimizer(0.1), None)),
])
def test_errors_match_tf1(name, make):
    expected = ERRORS[name]
    with pytest.raises(Exception) as info:
        make()
    assert type(info.value).__name__ == expected["type"]
    assert str(info.value) == expected["message"]


def test_wrong_optimizer_type_functional_rule():
    with pytest.raises(ValueError, match="must be an instance of Optimizer"):
        exp.MixedPrecisionLossScaleOptimizer(co.adam(1e-3), "dynamic")


def test_default_dynamic_values():
    ls = exp.get("dynamic")
    assert isinstance(ls, exp.DynamicLossScale)
    assert float(ls()) == 2.0 ** 15 and ls.increment_period == 2000 and ls.multiplier == 2.0
    assert exp.get(None) is None
    assert isinstance(exp.get(4), exp.FixedLossScale)
