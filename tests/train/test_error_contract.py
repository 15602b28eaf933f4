"""The seed's error contract, case by case against TF1's recorded behaviour.

``tests/fixtures/tf1/error_contract/errors.json`` (``tools/make_tf1_error_contract_fixtures
.py``) holds what TF 2.21 raises for each malformed call, in graph mode and eagerly. For
every case compatopt's error must be catchable as the seed's type (``TypeError`` for a
malformed ``var_list`` / ``grads_and_vars``, ``ValueError`` when nothing has a gradient or
nothing is given) *and* as every builtin type TF1 raised in either mode, must name the
position or the variable, and must leave every variable, slot and the global step as they
were. Where TF1 graph mode raises nothing (a Tensor in ``var_list`` is silently given a
gradient there), compatopt still raises the seed's error: a jax array is a value, not a
variable, and it could not be updated.
"""

from __future__ import annotations

import json
import os
import sys

import jax.numpy as jnp
import numpy as np
import pytest

import compatopt as co
from compatopt.errors import MalformedGradientsError, NotAVariableError

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tools"))
from make_tf1_error_contract_fixtures import CASES  # noqa: E402

with open(os.path.join(HERE, "..", "fixtures", "tf1", "error_contract", "errors.json")) as f:
    RECORDED = json.load(f)

SEED_TYPE = {  # the seed's documented exception for each kind of case
    "cg_var_list_tensor": TypeError, "cg_var_list_numpy": TypeError,
    "cg_var_list_str": TypeError, "cg_var_list_empty": ValueError,
    "min_var_list_tensor": TypeError, "min_var_list_numpy": TypeError,
    "ag_var_tensor": TypeError, "ag_var_numpy": TypeError, "ag_grad_object": TypeError,
    "ag_not_pair_tensor": TypeError, "ag_not_pair_triple": TypeError,
    "ag_not_pair_single": TypeError, "ag_none": TypeError, "ag_all_none": ValueError,
    "ag_empty": ValueError,
}
NAMES = {  # what the message must point at
    "cg_var_list_tensor": "var_list[1]", "cg_var_list_numpy": "var_list[0]",
    "cg_var_list_str": "var_list[0]", "min_var_list_tensor": "var_list[0]",
    "min_var_list_numpy": "var_list[0]", "ag_var_tensor": "grads_and_vars[0]",
    "ag_var_numpy": "grads_and_vars[0]", "ag_grad_object": "variable 'w'",
    "ag_not_pair_tensor": "grads_and_vars[0]", "ag_not_pair_triple": "grads_and_vars[0]",
    "ag_not_pair_single": "grads_and_vars[0]", "ag_all_none": "'w:0'",
}
# TF1's own message, kept where compatopt's wording follows it.
TF1_PREFIX = {"ag_grad_object": "graph", "cg_var_list_empty": "graph", "ag_empty": "graph",
              "ag_none": "graph", "ag_all_none": None}


def test_every_case_is_recorded_and_classified():
    assert sorted(CASES) == sorted(RECORDED["graph"]) == sorted(RECORDED["eager"])
    assert sorted(SEED_TYPE) == sorted(CASES)


def _env():
    w = co.Variable(np.ones(2, np.float32), name="w")
    u = co.Variable(np.ones(2, np.float32), name="u")
    step = co.Variable(0, trainable=False, name="global_step")
    opt = co.train.AdamOptimizer(0.1)
    opt.minimize(lambda: (w * w).sum(), var_list=[w, u], global_step=step)  # slots exist
    return dict(np=np, w=w, u=u, loss=lambda: (w * w).sum(), t=jnp.asarray([1.0, 2.0]),
                g=jnp.ones(2, jnp.float32), opt=opt), step


def _snapshot(env, step):
    opt = env["opt"]
    return [np.asarray(v.value).copy() for v in [env["w"], env["u"], step] + opt.variables()]


def _builtin_types(record):
    import builtins
    return [getattr(builtins, n) for n in record["builtin_bases"]] if record else []


@pytest.mark.parametrize("case", sorted(CASES))
def test_error_is_the_seeds_and_tf1s_type_names_the_culprit_and_changes_nothing(case):
    env, step = _env()
    before = _snapshot(env, step)
    call = CASES[case].replace("apply_gradients(", "apply_gradients(global_step=step, "
                               "grads_and_vars=", 1) if case.startswith("ag_") else CASES[case]
    env["step"] = step
    with pytest.raises(SEED_TYPE[case]) as info:
        eval("opt." + call, env)  # noqa: S307
    error = info.value
    for mode in ("graph", "eager"):
        for exc_type in _builtin_types(RECORDED[mode][case]):
            assert isinstance(error, exc_type), (mode, exc_type, type(error).__mro__)
    if case in NAMES:
        assert NAMES[case] in str(error), str(error)
    mode = TF1_PREFIX.get(case)
    if mode is not None:
        tf1 = RECORDED[mode][case]["message"]
        head = tf1.split(" <")[0].split(": ")[0]
        assert str(error).startswith(head), (str(error), tf1)
    after = _snapshot(env, step)
    assert all(np.array_equal(a, b) for a, b in zip(before, after))


def test_error_classes_keep_older_except_clauses_working():
    env, _ = _env()
    opt, w = env["opt"], env["w"]
    with pytest.raises(NotImplementedError):  # compatopt's type before the contract
        opt.apply_gradients([(jnp.ones(2), jnp.ones(2))])
    with pytest.raises(ValueError):  # wrong-length entries: TF1's unpacking ValueError
        opt.apply_gradients([(jnp.ones(2), w, 1)])
    assert issubclass(NotAVariableError, (TypeError, NotImplementedError, AttributeError))
    assert issubclass(MalformedGradientsError, (TypeError, ValueError))


@pytest.mark.parametrize("wrapper", ["loss_scale", "cross_shard"])
def test_wrappers_check_grads_and_vars_the_same_way(wrapper):
    w = co.Variable(np.ones(2, np.float32), name="w")
    inner = co.train.GradientDescentOptimizer(0.1)
    opt = (co.train.experimental.MixedPrecisionLossScaleOptimizer(inner, "dynamic")
           if wrapper == "loss_scale" else co.train.CrossShardOptimizer(inner))
    with pytest.raises(MalformedGradientsError, match=r"grads_and_vars\[0\]"):
        opt.apply_gradients([(jnp.ones(2), w, 1)])
    with pytest.raises(NotAVariableError, match=r"grads_and_vars\[0\]"):
        opt.apply_gradients([(jnp.ones(2), jnp.ones(2))])
    np.testing.assert_array_equal(w.value, np.ones(2, np.float32))
