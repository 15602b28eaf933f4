"""Packed variables in ``compatopt.function`` steps (``compatopt/train/_packing.py``).

The claim under test: packing changes the layout, never a bit. Every trajectory here is
run twice, ``pack_variables=True`` (the default) and ``False`` (one buffer per variable, the
per-variable rule path), and every variable, slot and non-slot variable must be identical
bit for bit after every step. The TF1 numbers themselves are the per-variable path's, which
tests/rules and tests/train replay against TF1's fixtures.
"""

from __future__ import annotations

import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import compatopt as co
from compatopt.train import _packing

OPTIMIZERS = {
    "sgd": lambda: co.train.GradientDescentOptimizer(0.1),
    "momentum": lambda: co.train.MomentumOptimizer(0.05, 0.9, use_nesterov=True),
    "adagrad": lambda: co.train.AdagradOptimizer(0.1),
    "adagrad_da": lambda: co.train.AdagradDAOptimizer(
        0.1, co.train.get_or_create_global_step(), l1_regularization_strength=0.01),
    "adadelta": lambda: co.train.AdadeltaOptimizer(1.0),
    "adam": lambda: co.train.AdamOptimizer(0.01),
    "ftrl": lambda: co.train.FtrlOptimizer(0.1, l1_regularization_strength=0.01,
                                           l2_shrinkage_regularization_strength=0.02),
    "proximal_gd": lambda: co.train.ProximalGradientDescentOptimizer(0.1, 0.01, 0.01),
    "proximal_adagrad": lambda: co.train.ProximalAdagradOptimizer(0.1, 0.01, 0.01),
    "rmsprop": lambda: co.train.RMSPropOptimizer(0.01, momentum=0.5, centered=True),
}

SHAPES = [(4, 3), (3,), (3, 5), (5,), (5, 2), (2,), (7,)]


def _bits(x) -> np.ndarray:
    a = np.asarray(x)
    return a.view({2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize])


def _model(dtype=jnp.float32, embedding: bool = False):
    co.reset_default_graph()
    rng = np.random.default_rng(0)
    ws = [co.Variable(jnp.asarray(rng.normal(size=s) * 0.5, dtype), name=f"layer{i}/w")
          for i, s in enumerate(SHAPES)]
    emb = (co.Variable(jnp.asarray(rng.normal(size=(11, 4)), dtype), name="embedding")
           if embedding else None)
    return ws, emb


def _loss(ws, emb, x, ids):
    h = x if emb is None else x + jnp.sum(co.nn.embedding_lookup(emb, ids), axis=0)
    h = jnp.tanh(h @ ws[0] + ws[1])
    h = jnp.tanh(h @ ws[2] + ws[3])
    out = h @ ws[4] + ws[5]
    return jnp.sum(out * out) + 0.1 * jnp.sum(ws[6] * ws[6])


def _state(opt, variables, extra=()):
    out = {}
    for v in [*variables, *extra, *opt.variables()]:
        out[v.name] = _bits(v.value)
    return out


def _train(name: str, pack: bool, steps: int = 4, dtype=jnp.float32, embedding=False,
           between=None):
    ws, emb = _model(dtype, embedding)
    gs = co.train.get_or_create_global_step()
    opt = OPTIMIZERS[name]()
    x = jnp.asarray(np.linspace(-1.0, 1.0, 8).reshape(2, 4), dtype)
    ids = jnp.array([1, 5, 1])

    @co.function(pack_variables=pack)
    def step(x, ids):
        return opt.minimize(lambda: _loss(ws, emb, x, ids), global_step=gs)

    variables = ws + ([emb] if emb is not None else [])
    history = []
    for k in range(steps):
        op = step(x, ids)
        history.append((_bits(op.loss), _state(opt, variables, [gs])))
        if between is not None:
            between(k, ws)
    return history, ws, emb, opt, step


def _assert_same(a, b):
    assert len(a) == len(b)
    for k, ((loss_a, sa), (loss_b, sb)) in enumerate(zip(a, b)):
        np.testing.assert_array_equal(loss_a, loss_b, err_msg=f"loss at step {k + 1}")
        assert sa.keys() == sb.keys()
        for n in sa:
            np.testing.assert_array_equal(sa[n], sb[n], err_msg=f"{n} after step {k + 1}")


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_packed_step_is_bit_identical_to_per_variable(name):
    packed, ws, _, opt, _ = _train(name, pack=True)
    per_var, ws_ref, _, _, _ = _train(name, pack=False)
    _assert_same(packed, per_var)
    assert all(w._pack is not None for w in ws), "the default step packs its variables"
    assert len({id(w._pack) for w in ws}) == 1
    assert all(w._pack is None for w in ws_ref)
    for slot_name in opt.get_slot_names():  # each slot family packed in the same layout
        slots = tuple(opt.get_slot(w, slot_name) for w in ws)
        assert slots[0]._pack is not None and slots[0]._pack.members == slots


def test_half_precision_packed_is_bit_identical():
    _assert_same(_train("adam", True, dtype=jnp.bfloat16)[0],
                 _train("adam", False, dtype=jnp.bfloat16)[0])


@pytest.mark.parametrize("name", ["adam", "adagrad", "ftrl", "momentum"])
def test_sparse_tables_stay_alone_and_keep_their_sparse_updates(name):
    packed, ws, emb, opt, _ = _train(name, pack=True, embedding=True)
    per_var = _train(name, pack=False, embedding=True)[0]
    _assert_same(packed, per_var)
    assert emb._pack is None  # read with embedding_lookup: TF1 updates it sparsely
    assert ws[0]._pack is not None
    for slot_name in opt.get_slot_names():
        assert opt.get_slot(emb, slot_name)._pack is None


def test_eager_reads_and_writes_between_steps():
    def between(k, ws):
        assert isinstance(ws[0].value, jax.Array) and ws[0].value.shape == (4, 3)
        if k == 1:
            ws[2].assign(ws[2].value * 0.5)
            ws[3].assign_add(jnp.ones((5,)))

    _assert_same(_train("adam", True, between=between)[0],
                 _train("adam", False, between=between)[0])


def test_many_eager_writes_then_a_step():
    def between(k, ws):
        if k == 0:
            for w in ws:  # more than the per-variable write-back threshold
                w.assign(w.value + 1.0)

    _assert_same(_train("momentum", True, between=between)[0],
                 _train("momentum", False, between=between)[0])


def test_saver_round_trip_with_packed_variables(tmp_path):
    history, ws, _, opt, step = _train("adam", True, steps=2)
    saver = co.train.Saver()
    prefix = saver.save(None, str(tmp_path / "model.ckpt"))
    saved = {v.name: _bits(v.value) for v in co.global_variables()}
    x = jnp.asarray(np.linspace(-1.0, 1.0, 8).reshape(2, 4), jnp.float32)
    step(x, jnp.array([1, 5, 1]))
    saver.restore(None, prefix)
    for v in co.global_variables():
        np.testing.assert_array_equal(_bits(v.value), saved[v.name], err_msg=v.name)
    # the next step starts from the restored values: it repeats step 3 of a fresh run
    op = step(x, jnp.array([1, 5, 1]))
    reference = _train("adam", False, steps=3)[0]
    np.testing.assert_array_equal(_bits(op.loss), reference[2][0])


def test_a_second_step_reads_the_packs():
    history, ws, _, opt, step = _train("sgd", True, steps=1)

    @co.function
    def evaluate(x):
        return jnp.sum(x @ ws[0].value)

    x = jnp.ones((2, 4), jnp.float32)
    first = float(evaluate(x))
    step(x, jnp.array([1]))
    assert float(evaluate(x)) != first
    np.testing.assert_allclose(float(evaluate(x)), float(jnp.sum(x @ ws[0].value)), rtol=1e-6)


def test_custom_hook_subclass_uses_the_per_variable_path_on_packed_storage():
    class ScaledSGD(co.train.GradientDescentOptimizer):
        def _resource_apply_dense(self, grad, handle):
            handle.assign_sub(grad * 0.5)

    def run(pack):
        ws, _ = _model()
        opt = ScaledSGD(0.1)
        x = jnp.ones((2, 4), jnp.float32)

        @co.function(pack_variables=pack)
        def step(x):
            return opt.minimize(lambda: _loss(ws, None, x, None))

        for _ in range(3):
            step(x)
        return [_bits(w.value) for w in ws]

    for a, b in zip(run(True), run(False)):
        np.testing.assert_array_equal(a, b)


def test_placing_a_member_dissolves_its_pack_and_the_step_repacks():
    history, ws, _, opt, step = _train("adam", True, steps=1)
    old = ws[0]._pack
    ws[0].place(jax.sharding.SingleDeviceSharding(jax.devices()[0]))
    assert not old.alive and ws[0]._pack is None and ws[1]._pack is None
    x = jnp.asarray(np.linspace(-1.0, 1.0, 8).reshape(2, 4), jnp.float32)
    op = step(x, jnp.array([1, 5, 1]))
    assert ws[0]._pack is not None and ws[0]._pack is not old
    np.testing.assert_array_equal(_bits(op.loss), _train("adam", False, steps=2)[0][1][0])


def test_concurrent_steps_on_packed_variables_serialise():
    ws, _ = _model()
    gs = co.train.get_or_create_global_step()
    opt = co.train.MomentumOptimizer(0.01, 0.9)
    x = jnp.ones((2, 4), jnp.float32)

    @co.function
    def step(x):
        return opt.minimize(lambda: _loss(ws, None, x, None), global_step=gs)

    step(x)
    errors = []

    def worker():
        try:
            for _ in range(5):
                step(x)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert int(gs.value) == 16
    ws_ref, _ = _model()  # a fresh graph, the same start
    gs_ref = co.train.get_or_create_global_step()
    opt_ref = co.train.MomentumOptimizer(0.01, 0.9)

    @co.function(pack_variables=False)
    def step_ref(x):
        return opt_ref.minimize(lambda: _loss(ws_ref, None, x, None), global_step=gs_ref)

    for _ in range(16):
        step_ref(x)
    for w, r in zip(ws, ws_ref):
        np.testing.assert_array_equal(_bits(w.value), _bits(r.value))


def test_loss_scaled_packed_step_is_bit_identical():
    def run(pack):
        ws, _ = _model()
        opt = co.train.experimental.MixedPrecisionLossScaleOptimizer(
            co.train.AdamOptimizer(0.01), "dynamic")
        x = jnp.ones((2, 4), jnp.float32)

        @co.function(pack_variables=pack)
        def step(x, big):
            return opt.minimize(lambda: _loss(ws, None, x, None) * big)

        for k in range(4):  # step 2 overflows: skipped, nothing changes
            step(x, jnp.float32(1e38 if k == 1 else 1.0))
        return [_bits(v.value) for v in co.global_variables()]

    for a, b in zip(run(True), run(False)):
        np.testing.assert_array_equal(a, b)


def test_packing_lifts_one_argument_per_pack():
    history, ws, _, opt, step = _train("adam", True, steps=1)
    x = jnp.asarray(np.linspace(-1.0, 1.0, 8).reshape(2, 4), jnp.float32)
    entry = next(iter(step._entries.values()))
    packs = [u for u in entry.written_units if isinstance(u, _packing.Pack)]
    assert len(packs) == 3  # params, m, v
    singles = [u for u in entry.written_units if not isinstance(u, _packing.Pack)]
    assert sorted(v.op.name for v in singles) == ["beta1_power", "beta2_power", "global_step"]
    hlo = step.experimental_get_compiler_ir(x, jnp.array([1, 5, 1]))
    assert "dynamic_update_slice" not in hlo  # every pack written whole by the flat update
