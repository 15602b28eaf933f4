"""Functional rules on a mesh of 8 CPU devices: sharding kept, no collectives, same bits.

Run by ``test_parallel.py`` in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (the flag must be set before jax
starts, and the rest of the suite keeps one device). To run it by hand::

    XLA_FLAGS=--xla_force_host_platform_device_count=8 \
        python -m pytest -q tests/parallel/_multidevice_cases.py
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import compatopt as co
from compatopt import parallel

from ._helpers import (
    NUM_DEVICES,
    RULES,
    assert_bitwise,
    collectives,
    mesh_1d,
    mesh_2d,
    mlp_batch,
    mlp_loss,
    mlp_params,
    named,
    place,
    slot_leaves,
    to_host,
)

pytestmark = pytest.mark.skipif(
    jax.device_count() != NUM_DEVICES,
    reason="needs XLA_FLAGS=--xla_force_host_platform_device_count=8 (see test_parallel.py)")

SHAPES = {"w": (16, 8), "emb": (32, 4), "b": (8,)}
SPECS = {"w": P("d", "m"), "emb": P("d", None), "b": P()}
K = 6  # sparse gradient rows


def _problem(mesh, seed=0):
    """Sharded params and gradients; ``emb`` also gets an IndexedSlices gradient."""
    rng = np.random.default_rng(seed)
    shard = named(mesh, SPECS)
    host_p = {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
    host_g = {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
    params = place(host_p, shard)
    dense = place(host_g, shard)
    rep = NamedSharding(mesh, P())
    rows = np.array([1, 5, 1, 30, 7, 20], np.int32)  # a repeat, rows on 3 of the 4 "d" shards
    vals = rng.standard_normal((K, 4)).astype(np.float32)
    sparse = dict(dense, emb=co.IndexedSlices(jax.device_put(vals, rep),
                                              jax.device_put(rows, rep), SHAPES["emb"]))
    return params, dense, sparse


def _single_device(tree):
    """The same values committed to one device."""
    return jax.device_put(to_host(tree), jax.devices()[0])


# ------------------------------------------------------------------ init keeps shardings


@pytest.mark.parametrize("axis_type", ["auto", "explicit"])
@pytest.mark.parametrize("name", sorted(RULES))
def test_init_slots_take_the_parameter_sharding(name, axis_type):
    mesh = mesh_2d(axis_type)
    rule = RULES[name]()
    params, _, _ = _problem(mesh)
    state = rule.init(params)
    for slot, leaves in slot_leaves(rule, state).items():
        for leaf, p in zip(leaves, jax.tree_util.tree_leaves(params)):
            assert leaf.sharding == p.sharding, (slot, leaf.sharding, p.sharding)
            assert leaf.addressable_shards[0].data.shape == p.addressable_shards[0].data.shape


@pytest.mark.parametrize("name", sorted(RULES))
def test_jitted_init_when_every_leaf_is_explicitly_sharded(name):
    """Under ``jit`` on an Explicit mesh, taking one element of a sharded leaf is a sharding
    type error; the count must still start at 0 (and at 0 with a NaN in the parameters)."""
    mesh = mesh_2d("explicit")
    params, _, _ = _problem(mesh)
    params = {k: v for k, v in params.items() if k != "b"}  # only the sharded leaves
    rule = RULES[name]()
    with jax.set_mesh(mesh):
        state = jax.jit(rule.init)(params)
        nan_params = dict(params, w=params["w"] * jnp.float32(np.nan))
        nan_state = jax.jit(rule.init)(nan_params)
    for s in (state, nan_state):
        counts = [leaf for leaf in jax.tree_util.tree_leaves(s) if leaf.dtype == jnp.int32]
        assert counts and all(int(c) == 0 for c in counts), counts
    for slot, leaves in slot_leaves(rule, state).items():
        for leaf, p in zip(leaves, jax.tree_util.tree_leaves(params)):
            assert leaf.sharding.spec == p.sharding.spec, (slot, leaf.sharding, p.sharding)


@pytest.mark.parametrize("name", sorted(RULES))
def test_abstract_init_on_shape_dtype_structs(name):
    mesh = mesh_2d()
    rule = RULES[name]()
    params, _, _ = _problem(mesh)
    abstract = jax.tree_util.tree_map(
        lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype, sharding=p.sharding), params)
    state = rule.init(abstract)
    concrete = rule.init(params)
    for leaf, ref in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(concrete)):
        assert isinstance(leaf, jax.ShapeDtypeStruct)
        assert (leaf.shape, leaf.dtype) == (ref.shape, ref.dtype)
    for slot, leaves in slot_leaves(rule, state).items():
        for leaf, p in zip(leaves, jax.tree_util.tree_leaves(params)):
            assert leaf.sharding == p.sharding, (slot, leaf.sharding)


# ------------------------------------------------------------------ jitted apply on a mesh


def _apply_checks(rule, grads, params, allowed_rows=None):
    """Compiles ``apply`` on sharded inputs; returns outputs after checking HLO + shardings."""
    state = rule.init(params)
    step = jax.jit(rule.apply)
    text = step.lower(grads, state, params).compile().as_text()
    for op, shapes in collectives(text):
        # Dense: none at all. Sparse: only the K gathered gradient rows may be all-reduced
        # (a masked gather from a row-sharded slot); never a parameter-sized buffer, never
        # an all-gather or a reshuffle.
        assert allowed_rows is not None and op == "all-reduce", (op, shapes)
        assert all(s[:1] == (allowed_rows,) for s in shapes), (op, shapes)
    new_p, new_s = step(grads, state, params)
    for a, b in zip(jax.tree_util.tree_leaves(new_p), jax.tree_util.tree_leaves(params)):
        assert a.sharding.is_equivalent_to(b.sharding, a.ndim), (a.sharding, b.sharding)
    for slot, leaves in slot_leaves(rule, new_s).items():
        for a, b in zip(leaves, jax.tree_util.tree_leaves(params)):
            assert a.sharding.is_equivalent_to(b.sharding, a.ndim), (slot, a.sharding)
    return state, new_p, new_s


EXPLICIT_SUBSET = ("adam", "ftrl", "proximal_adagrad", "rmsprop_centered")  # CI time


def _dense_cases():
    for name in sorted(RULES):
        for axis_type in ("auto", "explicit"):
            if axis_type == "auto" or name in EXPLICIT_SUBSET:
                yield pytest.param(name, axis_type, id=f"{name}-{axis_type}")


@pytest.mark.parametrize("name, axis_type", list(_dense_cases()))
def test_dense_apply_has_no_collective_and_same_bits(name, axis_type):
    mesh = mesh_2d(axis_type)
    rule = RULES[name]()
    params, dense, _ = _problem(mesh)
    state, new_p, new_s = _apply_checks(rule, dense, params)
    ref_p, ref_s = jax.jit(rule.apply)(_single_device(dense), _single_device(state),
                                       _single_device(params))
    assert_bitwise(new_p, ref_p, f"{name} params")
    assert_bitwise(new_s, ref_s, f"{name} state")


def _sparse_case(name, axis_type):
    mesh = mesh_2d(axis_type)
    rule = RULES[name]()
    params, _, sparse = _problem(mesh)
    state, new_p, new_s = _apply_checks(rule, sparse, params, allowed_rows=K)
    ref_p, ref_s = jax.jit(rule.apply)(_single_device(sparse), _single_device(state),
                                       _single_device(params))
    assert_bitwise(new_p, ref_p, f"{name} params")
    assert_bitwise(new_s, ref_s, f"{name} state")


@pytest.mark.parametrize("name", sorted(RULES))
def test_sparse_apply_on_row_sharded_embedding(name):
    _sparse_case(name, "auto")


@pytest.mark.parametrize("name", ["adam", "adagrad", "gradient_descent"])
def test_sparse_apply_explicit_axes(name):
    _sparse_case(name, "explicit")


def test_update_protocol_keeps_shardings():
    mesh = mesh_2d()
    rule = RULES["adam"]()
    params, dense, _ = _problem(mesh)
    state = rule.init(params)
    step = jax.jit(rule.update)
    assert not collectives(step.lower(dense, state, params).compile().as_text())
    updates, _ = step(dense, state, params)
    new_p = jax.jit(co.apply_updates)(params, updates)
    for u, p, q in zip(*map(jax.tree_util.tree_leaves, (updates, params, new_p))):
        assert u.sharding.is_equivalent_to(p.sharding, p.ndim)
        assert q.sharding.is_equivalent_to(p.sharding, p.ndim)


# ------------------------------------------------------------------ cross-replica reduction


def _per_replica(n, fn, *args, out_specs=P()):
    """Runs ``fn`` per replica over the leading axis of ``args`` on an ``n``-device mesh."""
    mesh = mesh_1d(n)
    shard = NamedSharding(mesh, P("data"))
    f = jax.shard_map(fn, mesh=mesh, in_specs=P("data"), out_specs=out_specs)
    return jax.jit(f)(*[jax.device_put(a, shard) for a in args])


def _sequential_sum(rows):
    acc = rows[0]
    for r in rows[1:]:
        acc = acc + r
    return acc


@pytest.mark.parametrize("fixed_order", [False, True])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_reduce_dense(reduction, fixed_order):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((8, 33)) * np.exp(rng.standard_normal((8, 33)) * 4)).astype(np.float32)
    out = _per_replica(8, lambda a: parallel.reduce_gradients(
        a[0], "data", reduction=reduction, fixed_order=fixed_order), x)
    want = _sequential_sum(list(x))
    if reduction == "mean":
        want = want * np.float32(1 / 8)
    if fixed_order:
        assert_bitwise(out, want)
    else:  # lax.psum: XLA's order (on XLA:CPU today, replica order as well)
        np.testing.assert_allclose(np.asarray(out), want, rtol=1e-6, atol=0)


def test_reduce_groups_sum_in_listed_order():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((8, 1, 5)).astype(np.float32)
    groups = [[6, 4, 2, 0], [1, 3, 5, 7]]
    out = np.asarray(_per_replica(8, lambda a: parallel.reduce_gradients(
        a, "data", reduction="mean", group_assignment=groups), x, out_specs=P("data")))
    for g in groups:
        want = _sequential_sum([x[i] for i in g]) * np.float32(0.25)
        for r in g:
            assert_bitwise(out[r], want, f"replica {r}")


def test_reduce_indexed_slices_gather_and_dense():
    rng = np.random.default_rng(3)
    vals = rng.standard_normal((4, 3, 2)).astype(np.float32)
    idx = rng.integers(0, 5, (4, 3)).astype(np.int32)

    def gathered(v, i):
        g = parallel.reduce_gradients(co.IndexedSlices(v[0], i[0], (5, 2)), "data")
        return g.values, g.indices

    v, i = _per_replica(4, gathered, vals, idx, out_specs=(P(), P()))
    assert_bitwise(v, vals.reshape(12, 2) * np.float32(0.25))
    assert_bitwise(i, idx.reshape(12))

    def densified(v, i):
        return parallel.reduce_gradients(co.IndexedSlices(v[0], i[0], (5, 2)), "data",
                                         reduction="sum", sparse="dense", fixed_order=True)

    dense = _per_replica(4, densified, vals, idx)
    want = _sequential_sum([np.asarray(co.IndexedSlices(vals[r], idx[r], (5, 2)).to_dense())
                            for r in range(4)])
    assert_bitwise(dense, want)


def test_sparse_cross_replica_apply_is_the_concatenated_apply():
    """Each replica's rows, gathered in replica order, then de-duplicated by the rule."""
    rng = np.random.default_rng(4)
    rule = co.adagrad(0.1)
    params = rng.standard_normal((10, 3)).astype(np.float32)
    vals = rng.standard_normal((4, 5, 3)).astype(np.float32)
    idx = rng.integers(0, 10, (4, 5)).astype(np.int32)
    mesh = mesh_1d(4)
    wrapped = parallel.cross_replica(rule, "data", reduction="sum")
    rep, shard = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    step = jax.jit(jax.shard_map(
        lambda p, s, v, i: wrapped.apply(co.IndexedSlices(v[0], i[0], (10, 3)), s, p),
        mesh=mesh, in_specs=(P(), P(), P("data"), P("data")), out_specs=(P(), P())))
    state = rule.init(params)
    got = step(jax.device_put(params, rep), jax.device_put(state, rep),
               jax.device_put(vals, shard), jax.device_put(idx, shard))
    want = jax.jit(rule.apply)(co.IndexedSlices(vals.reshape(20, 3), idx.reshape(20), (10, 3)),
                               state, params)
    assert_bitwise(got, want)


def test_already_summed_gradient_is_not_summed_again():
    """``shard_map(check_vma=True)`` sums the gradient of replicated params itself."""
    rng = np.random.default_rng(5)
    w = rng.standard_normal(3).astype(np.float32)
    x = rng.standard_normal((8, 3)).astype(np.float32)
    mesh = mesh_1d(8)

    def body(w, x):
        auto = jax.grad(lambda w: jnp.sum(w * x))(w)  # invariant: JAX already psum'd it
        per = jax.grad(lambda w: jnp.sum(w * x))(jax.lax.pcast(w, "data", to="varying"))
        return (parallel.reduce_gradients(auto, "data", reduction="sum"),
                parallel.reduce_gradients(per, "data", reduction="sum"))

    f = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(P(), P("data")), out_specs=(P(), P())))
    auto, per = f(jax.device_put(w, NamedSharding(mesh, P())),
                  jax.device_put(x, NamedSharding(mesh, P("data"))))
    np.testing.assert_allclose(np.asarray(auto), x.sum(0), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(per), x.sum(0), rtol=1e-6)
    with pytest.raises(ValueError, match="per-replica"):
        jax.jit(jax.shard_map(
            lambda w, x: parallel.reduce_gradients(
                jax.grad(lambda w: jnp.sum(w * x))(w), "data",
                group_assignment=[[0, 1, 2, 3], [4, 5, 6, 7]]),
            mesh=mesh, in_specs=(P(), P("data")), out_specs=P("data")))(
                jax.device_put(w, NamedSharding(mesh, P())),
                jax.device_put(x, NamedSharding(mesh, P("data"))))


def test_pmap_axis():
    x = np.random.default_rng(6).standard_normal((8, 4)).astype(np.float32)
    out = jax.pmap(lambda a: parallel.reduce_gradients(a, "i", fixed_order=True),
                   axis_name="i")(x)
    assert_bitwise(np.asarray(out)[3], _sequential_sum(list(x)) * np.float32(0.125))


# ------------------------------------------------------------------ data-parallel training

GLOBAL_BATCH, STEPS = 32, 3
# Versus one device on the whole batch, only the gradient's reduction order differs
# (the batch mean is split into per-replica means): after 3 Adam steps the parameters
# agree to ~1e-5 relative (measured <= 9e-6 on 2/4/8 devices).
RTOL, ATOL = 1e-4, 1e-6


def _mlp_batches():
    return [mlp_batch(s, GLOBAL_BATCH) for s in range(STEPS)]


def _single_device_run(rule, micro_batches: int):
    """One device; the gradient is the mean of ``micro_batches`` per-slice gradients, summed
    one after another in slice order (what ``fixed_order=True`` computes across replicas)."""
    dev = jax.devices()[0]
    params = jax.device_put(mlp_params(), dev)
    state = rule.init(params)
    grad_fn = jax.jit(jax.grad(mlp_loss))
    apply = jax.jit(rule.apply)
    for x, y in _mlp_batches():
        grads = [grad_fn(params, xs, ys)
                 for xs, ys in zip(np.split(x, micro_batches), np.split(y, micro_batches))]
        g = grads[0]
        for h in grads[1:]:
            g = jax.tree_util.tree_map(jnp.add, g, h)
        g = jax.tree_util.tree_map(lambda a: a * jnp.float32(1 / micro_batches), g)
        params, state = apply(g, state, params)
    return params, state


def _shard_map_run(rule, n, **reduce_kwargs):
    mesh = mesh_1d(n)
    wrapped = parallel.cross_replica(rule, "data", **reduce_kwargs)

    def step(params, state, x, y):
        per_replica = jax.lax.pcast(params, "data", to="varying")
        grads = jax.grad(mlp_loss)(per_replica, x, y)
        return wrapped.apply(grads, state, params)

    step = jax.jit(jax.shard_map(step, mesh=mesh, in_specs=(P(), P(), P("data"), P("data")),
                                 out_specs=(P(), P())))
    rep, data = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    params = jax.device_put(mlp_params(), rep)
    state = jax.device_put(rule.init(mlp_params()), rep)
    for x, y in _mlp_batches():
        params, state = step(params, state, jax.device_put(x, data), jax.device_put(y, data))
    return params, state


@pytest.mark.parametrize("n", [1, 2, 4, 8])
def test_data_parallel_matches_one_device(n):
    rule = co.adam(0.01)
    got = _shard_map_run(rule, n, fixed_order=True)
    # Bit-exact against the same reduction order on one device ...
    assert_bitwise(got, _single_device_run(rule, n), f"{n} devices")
    # ... and within the stated tolerance of the plain whole-batch run.
    want, _ = _single_device_run(rule, 1)
    for a, b in zip(jax.tree_util.tree_leaves(got[0]), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=RTOL, atol=ATOL)


def test_data_parallel_psum_default():
    rule = co.momentum(0.05, 0.9, use_nesterov=True)
    got = _shard_map_run(rule, 8)
    want = _single_device_run(rule, 8)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------ ZeRO-1 placement


def _jit_run(rule, n, zero_axis):
    """Data parallel with ``jit`` + shardings (XLA inserts the gradient all-reduce)."""
    mesh = mesh_1d(n)
    rep, data = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    params = jax.device_put(mlp_params(), rep)
    state_sh = parallel.state_shardings(rule, params, zero_axis=zero_axis)
    state = parallel.init_sharded(rule, params, zero_axis=zero_axis)
    param_sh = jax.tree_util.tree_map(lambda _: rep, params)

    def step(params, state, x, y):
        return rule.apply(jax.grad(mlp_loss)(params, x, y), state, params)

    step = jax.jit(step, in_shardings=(param_sh, state_sh, data, data),
                   out_shardings=(param_sh, state_sh))
    first = (params, state, jax.device_put(_mlp_batches()[0][0], data),
             jax.device_put(_mlp_batches()[0][1], data))
    memory = step.lower(*first).compile().memory_analysis()
    initial_bytes = parallel.device_nbytes(state)
    for x, y in _mlp_batches():
        params, state = step(params, state, jax.device_put(x, data), jax.device_put(y, data))
    return params, state, state_sh, initial_bytes, memory


def test_zero1_state_is_sharded_and_training_is_unchanged():
    rule = co.adam(0.01)
    p_rep, s_rep, _, bytes_rep, mem_rep = _jit_run(rule, 8, None)
    p_z, s_z, sh_z, bytes_z, mem_z = _jit_run(rule, 8, "data")
    # Same bits as the replicated-state run: the update is element-wise per shard.
    assert_bitwise((p_z, s_z), (p_rep, s_rep))
    want, _ = _single_device_run(rule, 1)
    for a, b in zip(jax.tree_util.tree_leaves(p_z), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=RTOL, atol=ATOL)
    # The state keeps its placement across steps, parameters stay replicated.
    for leaf, sh in zip(jax.tree_util.tree_leaves(s_z), jax.tree_util.tree_leaves(sh_z)):
        assert leaf.sharding.is_equivalent_to(sh, leaf.ndim)
    for leaf in jax.tree_util.tree_leaves(p_z):
        assert leaf.sharding.is_fully_replicated
    # Per device: every slot leaf that divides by 8 holds 1/8 (b2 of size 1 stays whole).
    shapes = {k: v.shape for k, v in mlp_params().items()}
    slot_floats = sum(int(np.prod(s)) for s in shapes.values())
    zero_floats = sum(int(np.prod(s)) // (8 if s[0] % 8 == 0 else 1) for s in shapes.values())
    scalars = 3 * 4  # count (int32), beta1_power, beta2_power
    for dev in jax.devices():
        assert bytes_rep[dev] == 2 * 4 * slot_floats + scalars
        assert bytes_z[dev] == 2 * 4 * zero_floats + scalars
    for leaf in jax.tree_util.tree_leaves(s_z):
        assert parallel.device_nbytes(leaf) == {
            d: leaf.addressable_shards[0].data.nbytes for d in jax.devices()}
    assert mem_z.argument_size_in_bytes < mem_rep.argument_size_in_bytes


def test_state_shardings_from_abstract_params():
    mesh = mesh_2d()
    rule = co.rmsprop(0.1, momentum=0.9, centered=True)
    abstract = {"w": jax.ShapeDtypeStruct((16, 6), jnp.float32,
                                          sharding=NamedSharding(mesh, P(None, "m"))),
                "b": jax.ShapeDtypeStruct((6,), jnp.float32, sharding=NamedSharding(mesh, P()))}
    sh = parallel.state_shardings(rule, abstract, zero_axis="d")
    assert sh.count.spec == P() and sh.count.mesh == mesh
    for slot in (sh.rms, sh.momentum, sh.mg):
        assert slot["w"].spec == P("d", "m")
        assert slot["b"].spec == P()  # 6 does not divide by 4: replicated
    plain = parallel.state_shardings(rule, abstract)
    assert plain.rms["w"].spec == P(None, "m")
