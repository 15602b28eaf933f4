"""Functional state: every rule's state is a plain pytree of arrays.

* orbax-checkpoint saves and restores it bit for bit, also into an abstract target
  (``jax.eval_shape(rule.init, params)``), keeping the state's NamedTuple type (skipped
  cleanly when orbax is not installed);
* ``compatopt.checkpoint`` names it as TF1 does and round-trips it through a compatopt
  checkpoint, which ``compatopt.train.Saver`` reads into shim variables of the same names.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import compatopt as co
from compatopt import checkpoint as C
from compatopt import errors
from compatopt.train import saver as S

RULES = {
    "gradient_descent": lambda: co.gradient_descent(0.1),
    "momentum": lambda: co.momentum(0.1, 0.9, use_nesterov=True),
    "adagrad": lambda: co.adagrad(0.1),
    "adagrad_da": lambda: co.adagrad_da(0.1, l1_regularization_strength=0.01),
    "adadelta": lambda: co.adadelta(1.0),
    "adam": lambda: co.adam(0.01),
    "ftrl": lambda: co.ftrl(0.1, l2_shrinkage_regularization_strength=0.01),
    "proximal_gradient_descent": lambda: co.proximal_gradient_descent(0.1, 0.01, 0.01),
    "proximal_adagrad": lambda: co.proximal_adagrad(0.1, l1_regularization_strength=0.01),
    "rmsprop": lambda: co.rmsprop(0.01, momentum=0.9),
    "rmsprop_centered": lambda: co.rmsprop(0.01, momentum=0.9, centered=True),
}


def trained(rule, steps=2):
    rs = np.random.RandomState(0)
    params = {"dense": {"kernel": jnp.asarray(rs.randn(4, 3), jnp.float32),
                        "bias": jnp.asarray(rs.randn(3), jnp.float32)},
              "emb": jnp.asarray(rs.randn(4, 3), jnp.float32)}
    state = rule.init(params)
    for _ in range(steps):
        grads = jax.tree.map(lambda p: jnp.asarray(rs.randn(*p.shape), p.dtype), params)
        params, state = rule.apply(grads, state, params)
    return params, state


@pytest.fixture(scope="module")
def states():
    """``{name: (rule, params, state)}`` after two applies (computed once: eager applies
    compile each primitive once per shape, shared by all rules)."""
    out = {}
    for name, make in RULES.items():
        rule = make()
        out[name] = (rule, *trained(rule))
    return out


def assert_bit_equal(a, b):
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    assert ta == tb
    for x, y in zip(la, lb):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_orbax_round_trip_every_rule_bit_equal(tmp_path, states):
    """One orbax checkpoint holding every rule's params and state."""
    ocp = pytest.importorskip("orbax.checkpoint")
    rules = {}
    tree, abstract = {}, {}
    for name, (rule, params, state) in states.items():
        rules[name] = rule
        tree[name] = {"params": params, "opt_state": state}
        abstract[name] = {"params": jax.eval_shape(lambda p=params: p),
                          "opt_state": jax.eval_shape(rule.init, params)}
    # a bfloat16 state too
    bf = co.adam(0.01)
    w = {"w": jnp.linspace(-1, 1, 12, dtype=jnp.bfloat16).reshape(3, 4)}
    w, bf_state = bf.apply({"w": jnp.full((3, 4), 0.3, jnp.bfloat16)}, bf.init(w), w)
    tree["adam_bf16"] = {"params": w, "opt_state": bf_state}
    abstract["adam_bf16"] = {"params": jax.eval_shape(lambda: w),
                             "opt_state": jax.eval_shape(bf.init, w)}
    rules["adam_bf16"] = bf

    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(tmp_path / "all", tree)
        ckptr.wait_until_finished()
        restored = ckptr.restore(tmp_path / "all", abstract)
    assert_bit_equal(restored, tree)
    assert restored["adam_bf16"]["opt_state"].m["w"].dtype == jnp.bfloat16
    for name in rules:  # same NamedTuple types, so training continues from them as is
        assert type(restored[name]["opt_state"]) is type(tree[name]["opt_state"]), name


def test_compatopt_checkpoint_round_trip_every_rule(tmp_path, states):
    for name, (rule, params, state) in states.items():
        prefix = C.save(str(tmp_path / name), rule, params, state, global_step=state.count)
        like = jax.eval_shape(lambda: params)
        p2, s2 = C.load(prefix, rule, like)
        assert type(s2) is type(state)
        assert_bit_equal((p2, s2), (params, state))


def test_tf1_names_follow_slot_creation_order():
    params = {"dense": {"kernel": jnp.zeros((2, 2))}}
    assert C.tf1_names(co.adam(0.1), params) == {
        "dense/kernel": "params['dense']['kernel']", "dense/kernel/Adam": "m['dense']['kernel']",
        "dense/kernel/Adam_1": "v['dense']['kernel']", "beta1_power": "beta1_power",
        "beta2_power": "beta2_power"}
    names = C.tf1_names(co.rmsprop(0.1, centered=True), params)
    assert [k for k in names if "/RMSProp" in k] == [
        "dense/kernel/RMSProp", "dense/kernel/RMSProp_1", "dense/kernel/RMSProp_2"]
    assert names["dense/kernel/RMSProp_1"] == "mg['dense']['kernel']"
    # FTRL's accum_name/linear_name, an optimizer name and a scope via name_map
    names = C.tf1_names(co.ftrl(0.1), params, slot_op_names={"accum": "acc", "linear": "lin"},
                        name_map=lambda n: "model/" + n)
    assert sorted(names) == ["model/dense/kernel", "model/dense/kernel/acc",
                             "model/dense/kernel/lin"]
    names = C.tf1_names(co.momentum(0.1, 0.9), [jnp.zeros(2)], names=["w"],
                        optimizer_name="Mom")
    assert sorted(names) == ["w", "w/Mom"]


def test_functional_checkpoint_restores_into_the_shim(tmp_path, states):
    """``C.save`` → ``train.Saver.restore`` → shim training == functional training."""
    rule, params, state = states["adam"]
    prefix = C.save(str(tmp_path / "f"), rule, params, state, global_step=state.count)
    names = {"dense/kernel": params["dense"]["kernel"], "dense/bias": params["dense"]["bias"],
             "emb": params["emb"]}
    variables = {n: co.Variable(jnp.zeros_like(p), name=n) for n, p in names.items()}
    step = co.train.get_or_create_global_step()
    opt = co.train.AdamOptimizer(0.01)
    S.create_slots(opt, list(variables.values()))
    S.Saver().restore(None, prefix)
    assert int(step.numpy()) == 2
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
    new_params, new_state = rule.apply(grads, state, params)
    flat = {"dense/kernel": grads["dense"]["kernel"], "dense/bias": grads["dense"]["bias"],
            "emb": grads["emb"]}
    opt.apply_gradients([(flat[n], v) for n, v in variables.items()], global_step=step)
    want = C.to_tf1(rule, new_params, new_state, global_step=3)
    got = {v.op.name: v.numpy() for v in co.global_variables()}
    assert sorted(got) == sorted(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_from_tf1_errors_and_sharded_target():
    rule = co.momentum(0.1, 0.9)
    params = {"w": jnp.ones((2, 2), jnp.float32)}
    tensors = {"w": np.ones((2, 2), np.float32), "w/Momentum": np.zeros((2, 2), np.float32)}
    with pytest.raises(errors.NotFoundError, match="'w/Momentum' not found"):
        C.from_tf1(rule, {"w": tensors["w"]}, params)
    with pytest.raises(errors.NotFoundError, match="'extra'"):
        C.from_tf1(rule, {**tensors, "extra": np.zeros(1)}, params)
    C.from_tf1(rule, {**tensors, "extra": np.zeros(1)}, params, expect_partial=True)
    with pytest.raises(errors.InvalidArgumentError, match="'w/Momentum'.*float64"):
        C.from_tf1(rule, {**tensors, "w/Momentum": np.zeros((2, 2))}, params)
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    like = {"w": jax.ShapeDtypeStruct((2, 2), jnp.float32, sharding=sharding)}
    p, s = C.from_tf1(rule, {**tensors, "global_step": np.int64(9)}, like)
    assert p["w"].sharding == sharding and s.momentum["w"].sharding == sharding
    assert int(s.count) == 9
    _, s = C.from_tf1(rule, tensors, like, count=4)
    assert int(s.count) == 4
