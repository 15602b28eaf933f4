"""Slot names, slot variable names, variables() and get_slot_names() as recorded from TF1.

The shim uniquifies variable names as TF1's graph mode does, so the graph-mode recording is
the reference (eager TF1 gives the second Adam's ``beta1_power`` the same name again).
"""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

import compatopt as co

from .conftest import FIXTURES
from .shim_models import make_optimizer
from .shim_problem import CONFIGS

with open(os.path.join(FIXTURES, "names.json")) as f:
    NAMES = json.load(f)

CASES = {**{k: v for k, v in CONFIGS.items()},
         "Ftrl_named_slots": ("Ftrl", {"learning_rate": 0.1, "accum_name": "acc",
                                       "linear_name": "lin"}),
         "Adam_own_namescope": ("Adam", {"use_own_namescope_for_non_slot_vars": True})}


@pytest.mark.parametrize("case", sorted(CASES))
def test_names_match_tf1(case):
    kind, kwargs = CASES[case]
    w = co.Variable(np.ones((3, 2), np.float32), name="w")
    b = co.Variable(np.zeros(2, np.float32), name="b")
    gs = co.train.get_or_create_global_step()
    got = []
    for _ in range(2):
        opt = make_optimizer(kind, kwargs, gs)
        opt.minimize(lambda: jnp.sum(jnp.tanh(w.value)) + jnp.sum(b * b), global_step=gs)
        got.append({
            "get_slot_names": opt.get_slot_names(),
            "slot_variable_names": {var.op.name: {s: opt.get_slot(var, s).name
                                                  for s in opt.get_slot_names()}
                                    for var in (w, b)},
            "variables": [v.name for v in opt.variables()],
            "missing_slot": opt.get_slot(w, "nope") is None,
        })
    assert got == NAMES[case]["graph"]
    assert got[0] == NAMES[case]["eager"][0] or case != "Adam"


def test_slots_are_not_trainable_and_shaped_like_their_variable():
    w = co.Variable(np.ones((3, 2), np.float32), name="w")
    opt = co.train.AdamOptimizer()
    opt.minimize(lambda: jnp.sum(w * w))
    for s in ("m", "v"):
        slot = opt.get_slot(w, s)
        assert not slot.trainable and slot.shape == w.shape and slot.dtype == w.dtype
    b1, b2 = opt._get_beta_accumulators()
    assert b1.dtype == jnp.float32 and b2.dtype == jnp.float32
    assert co.global_variables().index(b1) < co.global_variables().index(opt.get_slot(w, "m"))
