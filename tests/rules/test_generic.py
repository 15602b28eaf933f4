"""Generic properties every rule must have, driven by the one table in ``rule_table``.

Compilation (one trace per step shape, a state whose avals do not drift), schedules
(a constant callable equals the float, schedules read the count before the increment),
transformations (``jit`` == eager, ``vmap`` == per-set, ``eval_shape`` of ``init``), the
optax ``update`` path, ``None`` gradients and sparse gradients with unique indices.
Every comparison is bitwise unless TF1 itself computes differently (then in ULPs).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import compatopt as co

from .rule_table import (
    CALLABLE_RULES,
    EXACT_UPDATE_RULES,
    F16,
    F32,
    RULES,
    assert_trees_bitwise_equal,
    assert_trees_close_ulp,
    avals,
    bits,
    case_id,
    dense_cases,
    dtype_context,
    random_tree,
    sparse_cases,
    sparse_grad,
)

STEPS = 3
# Larger leaves where a test looks for rare last-bit differences (eager vs jit).
_BIG = {"w": (32, 8), "b": (24,)}

# Cases that fail because of a bug in the functional core, per suite: {kind: {id: reason}}.
# Each is a strict xfail, so fixing the core turns it into a failure that asks for removal.
KNOWN_BUGS: dict = {}


def _marked(cases, kind: str, ids=case_id) -> list:
    """``cases`` as pytest params, with a strict xfail on the known core bugs of ``kind``."""
    out = []
    for case in cases:
        cid = ids(case)
        reason = KNOWN_BUGS.get(kind, {}).get(cid)
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
        out.append(pytest.param(case, id=cid, marks=marks))
    return out


def _grads(dtype, n=STEPS, shapes=None):
    return [random_tree(100 + i, dtype, shapes) for i in range(n)]


def _run(step, rule, params, grads_list):
    state = rule.init(params)
    for g in grads_list:
        params, state = step(g, state, params)
    return params, state


# ------------------------------------------------------------------------- compilation


@pytest.mark.parametrize("spec", RULES, ids=str)
@pytest.mark.parametrize("method", ["apply", "update"])
def test_second_call_does_not_retrace(spec, method):
    rule = spec.make()
    fn = getattr(rule, method)
    chex.clear_trace_counter()  # chex counts per code object, shared by the parametrizations

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(g, s, p):
        return fn(g, s, p)

    params = random_tree(0)
    state = rule.init(params)
    for g in _grads(F32):
        out, state = step(g, state, params)
        params = out if method == "apply" else co.apply_updates(params, out)


@pytest.mark.parametrize("case", _marked(dense_cases((F32, F16)), "cond"))
def test_state_avals_stable_under_cond(case):
    """``lax.cond`` needs both branches to return the same avals: a step must keep every
    state leaf's shape, dtype and weak type. The branch captures the gradients and params
    as compile-time constants, which exposes rewrites that constant folding enables."""
    spec, dtype = case
    rule = spec.make()
    params = random_tree(0, dtype)
    grads = random_tree(1, dtype)
    state = rule.init(params)
    eager_params, eager_state = rule.apply(grads, state, params)
    assert avals(eager_state) == avals(state)

    @jax.jit
    def step(pred, s):
        return lax.cond(pred, lambda s: rule.apply(grads, s, params)[1], lambda s: s, s)

    taken = step(True, state)
    assert avals(taken) == avals(state)
    assert_trees_bitwise_equal(step(False, state), state, "not taken")
    assert_trees_bitwise_equal(taken, eager_state, "taken")


@pytest.mark.parametrize("spec", RULES, ids=str)
def test_init_on_shape_dtype_structs(spec):
    params = random_tree(0)
    sds = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    rule = spec.make()
    abstract = jax.eval_shape(rule.init, sds)
    concrete = rule.init(params)
    assert jax.tree_util.tree_structure(abstract) == jax.tree_util.tree_structure(concrete)
    assert avals(abstract) == avals(concrete)


# --------------------------------------------------------------------------- schedules


def _constant_callables(spec):
    return {name: (lambda count, v=spec.kwargs[name]: v) for name in spec.callable_args}


@pytest.mark.parametrize("spec", CALLABLE_RULES, ids=str)
def test_constant_schedule_equals_float(spec):
    plain, scheduled = spec.make(), spec.make(**_constant_callables(spec))
    grads = _grads(F32)
    expected = _run(jax.jit(plain.apply), plain, random_tree(0), grads)
    actual = _run(jax.jit(scheduled.apply), scheduled, random_tree(0), grads)
    assert_trees_bitwise_equal(actual, expected)


@pytest.mark.parametrize("spec", _marked(CALLABLE_RULES, "schedule", ids=str))
def test_schedule_reads_count_before_increment(spec):
    """Apply ``k`` uses ``lr(k)``: equal to three rules with the constants, one per apply."""
    lrs = (0.1, 0.05, 0.025)
    table = jnp.asarray(lrs, jnp.float32)
    scheduled = spec.make(learning_rate=lambda count: table[count])
    params = random_tree(0)
    grads = _grads(F32)
    actual = _run(jax.jit(scheduled.apply), scheduled, params, grads)
    state = scheduled.init(params)
    p = params
    for lr, g in zip(lrs, grads):
        p, state = spec.make(learning_rate=lr).apply(g, state, p)
    assert_trees_bitwise_equal(actual, (p, state))


# ----------------------------------------------------------------------- transformations


@pytest.mark.slow  # op by op: every operation dispatched on its own
@pytest.mark.parametrize("case", _marked(dense_cases(), "jit"))
def test_jit_equals_eager_dense(case):
    """A compiled step equals op-by-op execution (``jax.disable_jit``: every operation its
    own computation, rounded once, as TF1's kernels round), where XLA would otherwise fuse
    and rewrite. Both a step with traced gradients and one with the gradients captured as
    constants. (Plain eager ``rule.apply`` is itself one compiled kernel per leaf shape, so it
    is not the reference here.)"""
    spec, dtype = case
    with dtype_context(dtype):
        rule = spec.make()
        grads = _grads(dtype, shapes=_BIG)
        with jax.disable_jit():
            op_by_op = _run(rule.apply, rule, random_tree(0, dtype, _BIG), grads)
        jitted = _run(jax.jit(rule.apply), rule, random_tree(0, dtype, _BIG), grads)
        assert_trees_bitwise_equal(jitted, op_by_op, "traced grads ")
        params = random_tree(0, dtype, _BIG)
        state = rule.init(params)
        const = jax.jit(lambda s, p: rule.apply(grads[0], s, p))(state, params)
        with jax.disable_jit():
            want = rule.apply(grads[0], state, params)
        assert_trees_bitwise_equal(const, want, "constant grads ")


@pytest.mark.parametrize("spec", _marked(RULES, "init_in_jit", ids=str))
def test_jit_with_init_inside_and_constant_gradients_equals_eager(spec):
    """A one-shot ``jit(lambda p: rule.apply(g, rule.init(p), p))`` with a closed-over
    gradient: the count and the fresh slots are compile-time constants too."""
    rule = spec.make()
    params, grads = random_tree(0), random_tree(1)
    want = rule.apply(grads, rule.init(params), params)
    got = jax.jit(lambda p: rule.apply(grads, rule.init(p), p))(params)
    assert_trees_bitwise_equal(got, want)


# Hyper-parameters at the edge of TF1's range, where a constant 0 lets XLA simplify.
EDGE_CASES = (
    ("adam-eps0", co.adam, {"learning_rate": 0.01, "epsilon": 0.0}, F32),
    ("adam-default", co.adam, {}, F16),  # float16(1e-8) == 0
    ("rmsprop-eps0", co.rmsprop, {"learning_rate": 0.01, "epsilon": 0.0}, F32),
    ("rmsprop_centered-eps0", co.rmsprop,
     {"learning_rate": 0.01, "epsilon": 0.0, "centered": True}, F32),
    ("momentum-mu0", co.momentum, {"learning_rate": 0.1, "momentum": 0.0}, F32),
    ("ftrl-l1", co.ftrl, {"learning_rate": 0.1, "l1_regularization_strength": 0.01}, F32),
    ("ftrl-lrpower0", co.ftrl, {"learning_rate": 0.1, "learning_rate_power": 0.0}, F32),
    ("adagrad_da-l2", co.adagrad_da, {"learning_rate": 0.1, "l2_regularization_strength": 0.1},
     F32),
    ("proximal_gradient_descent-plain", co.proximal_gradient_descent, {"learning_rate": 0.1},
     F32),
)


@pytest.mark.parametrize("edge", _marked(EDGE_CASES, "edge", ids=lambda e: e[0]))
def test_jit_equals_eager_edge_hyperparameters(edge):
    _, factory, kwargs, dtype = edge
    rule = factory(**kwargs)
    grads = _grads(dtype, 2, _BIG)
    grads[0]["w"] = grads[0]["w"].at[0].set(0)  # zero-gradient entries (m = v = 0 in Adam)
    for sparse in (False, True):
        if sparse:
            grads = [{"w": sparse_grad(300 + i, dtype, 32, (8,), (2, 0, 2, 31, 7, 9, 0)),
                      "b": None} for i in range(2)]
        eager = _run(rule.apply, rule, random_tree(0, dtype, _BIG), grads)
        jitted = _run(jax.jit(rule.apply), rule, random_tree(0, dtype, _BIG), grads)
        assert_trees_bitwise_equal(jitted, eager, "sparse " if sparse else "dense ")


_SPARSE_SHAPES = {"w": (6, 3), "b": (5,)}


def _sparse_grads(dtype, seed=200, n=STEPS, indices_w=(4, 1, 3), indices_b=(0, 3)):
    return [{"w": sparse_grad(seed + 2 * i, dtype, 6, (3,), indices_w),
             "b": sparse_grad(seed + 2 * i + 1, dtype, 5, (), indices_b)} for i in range(n)]


def _stack(trees):
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees)


def _unstack(tree, n):
    return [jax.tree_util.tree_map(lambda x: x[i], tree) for i in range(n)]


@pytest.mark.parametrize("case", _marked([(s, k) for s in RULES for k in ("dense", "sparse")],
                                          "vmap"))
def test_vmap_equals_per_set(case):
    spec, kind = case
    sparse = kind == "sparse"
    rule = spec.make()
    batch = 3
    if sparse:
        params = [random_tree(i, F32, _SPARSE_SHAPES) for i in range(batch)]
        grads = [_sparse_grads(F32, seed=300 + 10 * i, n=1,
                               indices_w=((4, 1, 3), (0, 5, 2), (1, 2, 3))[i])[0]
                 for i in range(batch)]
    else:
        params = [random_tree(i) for i in range(batch)]
        grads = [random_tree(100 + i) for i in range(batch)]
    states = [rule.init(p) for p in params]
    per_set = [rule.apply(g, s, p) for g, s, p in zip(grads, states, params)]
    batched_state = jax.vmap(rule.init)(_stack(params))
    assert_trees_bitwise_equal(batched_state, _stack(states), "vmap(init)")
    out = jax.jit(jax.vmap(rule.apply))(_stack(grads), batched_state, _stack(params))
    for i, (got, want) in enumerate(zip(_unstack(out, batch), per_set)):
        assert_trees_bitwise_equal(got, want, f"set {i}")


# --------------------------------------------------------------------------- optax update


@pytest.mark.parametrize("case", [c for c in dense_cases((F32, F16)) if c[0].update_exact],
                         ids=case_id)
def test_update_plus_apply_updates_equals_apply(case):
    spec, dtype = case
    with dtype_context(dtype):
        rule = spec.make()

        def via_update(g, s, p):
            u, s = rule.update(g, s, p)
            return co.apply_updates(p, u), s

        grads = _grads(dtype)
        expected = _run(jax.jit(rule.apply), rule, random_tree(0, dtype), grads)
        actual = _run(jax.jit(via_update), rule, random_tree(0, dtype), grads)
        assert_trees_bitwise_equal(actual, expected)


@pytest.mark.parametrize("spec", _marked(EXACT_UPDATE_RULES, "update_sparse", ids=str))
def test_update_plus_apply_updates_equals_apply_sparse(spec):
    rule = spec.make()

    def via_update(g, s, p):
        u, s = rule.update(g, s, p)
        return co.apply_updates(p, u), s

    grads = _sparse_grads(F32)  # unique indices (GradientDescent is exact only then)
    params = random_tree(0, F32, _SPARSE_SHAPES)
    expected = _run(jax.jit(rule.apply), rule, params, grads)
    actual = _run(jax.jit(via_update), rule, params, grads)
    assert_trees_bitwise_equal(actual, expected)


@pytest.mark.parametrize("spec", [s for s in RULES if not s.update_exact], ids=str)
def test_update_of_set_value_rules_is_new_minus_old(spec):
    """FTRL, AdagradDA, the proximal pair set ``var``: the update is ``new - old`` (same
    state; params within 1 ulp of ``apply``, which is the exact path)."""
    rule = spec.make()
    params, grads = random_tree(0), random_tree(1)
    state = rule.init(params)
    new_params, new_state = jax.jit(rule.apply)(grads, state, params)
    updates, upd_state = jax.jit(rule.update)(grads, state, params)
    assert_trees_bitwise_equal(upd_state, new_state)
    expected_updates = jax.tree_util.tree_map(lambda a, b: a - b, new_params, params)
    assert_trees_bitwise_equal(updates, expected_updates)
    # p + (new - p) is new up to one rounding at the scale of max(|p|, |new|).
    for k in params:
        got = np.asarray(co.apply_updates(params, updates)[k])
        new, old = np.asarray(new_params[k]), np.asarray(params[k])
        assert np.all(np.abs(got - new) <= np.spacing(np.maximum(np.abs(new), np.abs(old))))


def test_update_without_params_is_refused():
    rule = co.adam(0.1)
    params = random_tree(0)
    with pytest.raises(ValueError, match="needs params"):
        rule.update(random_tree(1), rule.init(params))


# ---------------------------------------------------------------------- None / sparse


@pytest.mark.parametrize("spec", RULES, ids=str)
def test_none_gradient_leaves_param_and_slots_untouched(spec):
    rule = spec.make()
    params = random_tree(0)
    state = rule.init(params)
    grads = {"w": random_tree(1)["w"], "b": None}
    new_params, new_state = jax.jit(rule.apply)(grads, state, params)
    assert_trees_bitwise_equal(new_params["b"], params["b"], "param b")
    for field in state._fields:
        old = getattr(state, field)
        if isinstance(old, dict):
            assert_trees_bitwise_equal(getattr(new_state, field)["b"], old["b"], field)
    # "w" moves exactly as when "b" is not in the tree at all.
    only_w = rule.init({"w": params["w"]})
    w_params, _ = jax.jit(rule.apply)({"w": grads["w"]}, only_w, {"w": params["w"]})
    assert_trees_bitwise_equal(new_params["w"], w_params["w"], "param w")
    updates, _ = jax.jit(rule.update)(grads, state, params)
    assert updates["b"] is None
    assert_trees_bitwise_equal(co.apply_updates(params, updates)["b"], params["b"])


def _slot_fields(state):
    return [f for f in state._fields if isinstance(getattr(state, f), dict)]


def _warm_state(rule, params, dtype):
    """``params`` and a state whose slots no longer hold their initial values: each slot
    element is its initial value times ``1 + u/2`` plus ``u/10`` (``u`` uniform in [0, 1)),
    which keeps accumulators positive and centered RMSProp's ``ms - mg**2`` positive."""
    state = rule.init(params)
    rng = np.random.RandomState(7)

    def warm(x):
        u = rng.uniform(0.0, 1.0, x.shape).astype(np.float32)
        return (x.astype(jnp.float32) * (1 + u / 2) + u / 10).astype(x.dtype)

    fields = {f: jax.tree_util.tree_map(warm, getattr(state, f)) for f in _slot_fields(state)}
    return params, state._replace(**fields)


@pytest.mark.parametrize("case", _marked(sparse_cases(), "sparse"))
def test_sparse_jit_equals_eager_and_touches_only_listed_rows(case):
    """Repeated indices (summed first, except GradientDescent); TF1 changes only the listed
    rows of the variable and of every slot, except Adam's composite (every row)."""
    spec, dtype = case
    with dtype_context(dtype):
        rule = spec.make()
        params, state = _warm_state(rule, random_tree(0, dtype, _SPARSE_SHAPES), dtype)
        grads = _sparse_grads(dtype, n=1, indices_w=(4, 1, 4), indices_b=(3, 0, 3))[0]
        eager = rule.apply(grads, state, params)
        new_params, new_state = jax.jit(rule.apply)(grads, state, params)
        assert_trees_bitwise_equal((new_params, new_state), eager, "jit vs eager ")
        untouched = {"w": np.array([0, 2, 3, 5]), "b": np.array([1, 2, 4])}
        touched = {"w": np.array([1, 4]), "b": np.array([0, 3])}
        for k in ("w", "b"):
            pairs = [(new_params[k], params[k], f"param {k}")]
            pairs += [(getattr(new_state, f)[k], getattr(state, f)[k], f"{f} {k}")
                      for f in _slot_fields(state)]
            for new, old, what in pairs:
                same = np.asarray(bits(new)[untouched[k]] == bits(old)[untouched[k]])
                if not spec.sparse_all_rows:
                    assert same.all(), f"{what}: an unlisted row changed"
                elif what.startswith("m "):  # (bfloat16's beta2 is 1.0: v need not move)
                    assert not same.all(), f"{what}: Adam's untouched rows did not decay"
            # the listed rows do change (bfloat16 Adam's first step may leave var as it is:
            # beta2 rounds to 1, so alpha = 0; its m still moves)
            assert any(not np.array_equal(bits(new)[touched[k]], bits(old)[touched[k]])
                       for new, old, _ in pairs)


@pytest.mark.parametrize("spec", _marked(RULES, "sparse_vs_dense", ids=str))
def test_sparse_unique_rows_match_dense_rows(spec):
    """Rank 2: TF1's sparse row formula is the dense one (bitwise) or another operation
    order (a few ulp); rank 1 kernels are TF1's scalar code (a few ulp)."""
    rule = spec.make()
    params, state = _warm_state(rule, random_tree(0, F32, _SPARSE_SHAPES), F32)
    sparse = _sparse_grads(F32, n=1)[0]
    dense = {k: g.to_dense() for k, g in sparse.items()}
    sp_params, sp_state = jax.jit(rule.apply)(sparse, state, params)
    de_params, de_state = jax.jit(rule.apply)(dense, state, params)
    rows = {"w": np.array([1, 3, 4]), "b": np.array([0, 3])}
    if spec.sparse_all_rows:
        rows = {"w": np.arange(6), "b": np.arange(5)}
    for k in ("w", "b"):
        sp = [sp_params[k]] + [getattr(sp_state, f)[k] for f in _slot_fields(state)]
        de = [de_params[k]] + [getattr(de_state, f)[k] for f in _slot_fields(state)]
        sp = [np.asarray(x)[rows[k]] for x in sp]
        de = [np.asarray(x)[rows[k]] for x in de]
        if k == "w" and spec.sparse_rows == "exact":
            assert_trees_bitwise_equal(sp, de, f"{spec.id} rank-2 rows")
        else:
            assert_trees_close_ulp(sp, de, maxulp=8, what=f"{spec.id} {k} rows")


@pytest.mark.parametrize("spec", _marked([s for s in RULES if s.id != "gradient_descent"],
                                          "dedup", ids=str))
def test_sparse_repeated_indices_equal_their_presummed_row(spec):
    """TF1 sums a repeated index's rows in input order from +0.0, *then* runs the kernel once:
    ``((0 + 1) + 1e8) + -1e8 == 0`` in float32, whereas adding them one by one to a slot (or in
    another order) would not give 0."""
    rule = spec.make()
    params, state = _warm_state(rule, random_tree(0, F32, _SPARSE_SHAPES), F32)
    rng = np.random.RandomState(5)
    other = rng.standard_normal(3).astype(np.float32)
    rows = np.array([[1.0, 0.5, 3.0], other, [1e8] * 3, [-1e8] * 3], np.float32)
    summed = np.float32(np.float32(np.float32(0) + rows[0]) + rows[2]) + rows[3]
    repeated = {"w": co.IndexedSlices(rows, jnp.asarray([2, 4, 2, 2]), (6, 3)),
                "b": co.IndexedSlices(rows[:, 0], jnp.asarray([2, 4, 2, 2]), (5,))}
    presummed = {"w": co.IndexedSlices(np.stack([summed, other]), jnp.asarray([2, 4]), (6, 3)),
                 "b": co.IndexedSlices(np.stack([summed, other])[:, 0], jnp.asarray([2, 4]),
                                       (5,))}
    got = jax.jit(rule.apply)(repeated, state, params)
    want = jax.jit(rule.apply)(presummed, state, params)
    assert_trees_bitwise_equal(got, want)


def test_sparse_gradient_descent_applies_repeats_one_after_another():
    """TF1's GradientDescent scatter-adds ``(-g) * lr`` per occurrence (no summing first)."""
    rule = co.gradient_descent(1.0)
    params = {"w": jnp.asarray([[1.0], [0.0]], jnp.float32)}
    g = co.IndexedSlices(jnp.asarray([[-1e8], [-1.0], [1e8]], jnp.float32),
                         jnp.asarray([0, 0, 0]), (2, 1))
    out, _ = jax.jit(rule.apply)({"w": g}, rule.init(params), params)
    # ((1 + 1e8) + 1) - 1e8 in float32, left to right: 1 + 1e8 = 1e8, then 1e8 + 1 = 1e8.
    expected = np.float32(np.float32(np.float32(1.0) + np.float32(1e8)) + np.float32(1.0))
    expected = np.float32(expected - np.float32(1e8))
    np.testing.assert_array_equal(np.asarray(out["w"])[:, 0], [expected, 0.0])


# ------------------------------------------------------------------------------ AdagradDA


def test_adagrad_da_global_step_callable_equals_count():
    params, grads = random_tree(0), _grads(F32)
    plain = co.adagrad_da(0.1, l1_regularization_strength=0.01)
    explicit = co.adagrad_da(0.1, global_step=lambda count: count,
                             l1_regularization_strength=0.01)
    assert_trees_bitwise_equal(_run(jax.jit(explicit.apply), explicit, params, grads),
                               _run(jax.jit(plain.apply), plain, params, grads))


def test_adagrad_da_global_step_callable_offsets_t():
    """``global_step = count + 10`` at count 0 is the default rule at count 10."""
    params, grads = random_tree(0), random_tree(1)
    offset = co.adagrad_da(0.1, global_step=lambda count: count + 10,
                           l2_regularization_strength=0.05)
    plain = co.adagrad_da(0.1, l2_regularization_strength=0.05)
    got_p, got_s = jax.jit(offset.apply)(grads, offset.init(params), params)
    state10 = plain.init(params)._replace(count=jnp.asarray(10, jnp.int32))
    want_p, want_s = jax.jit(plain.apply)(grads, state10, params)
    assert_trees_bitwise_equal(got_p, want_p)
    assert_trees_bitwise_equal(got_s._replace(count=want_s.count), want_s)
    assert int(got_s.count) == 1


def test_adagrad_da_constant_global_step_freezes_t():
    """TF1 never increments global_step itself: a constant step keeps ``t`` constant."""
    params, grads = random_tree(0), _grads(F32, 2)
    frozen = co.adagrad_da(0.1, global_step=lambda count: jnp.asarray(0, jnp.int32))
    plain = co.adagrad_da(0.1)
    p, s = params, frozen.init(params)
    q, r = params, plain.init(params)
    for g in grads:
        p, s = jax.jit(frozen.apply)(g, s, p)
        q, r = jax.jit(plain.apply)(g, r._replace(count=jnp.asarray(0, jnp.int32)), q)
    assert_trees_bitwise_equal(p, q)


def test_adagrad_da_float_global_step_is_a_type_error():
    rule = co.adagrad_da(0.1, global_step=lambda count: count.astype(jnp.float32))
    params = random_tree(0)
    with pytest.raises(TypeError, match="global_step must be an integer"):
        rule.apply(random_tree(1), rule.init(params), params)
