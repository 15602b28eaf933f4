"""``get_variable`` / ``variable_scope`` / ``name_scope`` against TF1 graph mode.

``tests/fixtures/tf1/variable_scope/scopes.json`` (``tools/make_tf1_variable_scope_fixtures
.py``) holds, per scenario, the variable names TF 2.21 ended with (optimizer slots, beta
powers and the global step included), selected values, and TF1's errors; each test below
runs the same scenario with compatopt's names.
"""

from __future__ import annotations

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

import compatopt as co
from compatopt.train import variable_scope as vs

HERE = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(HERE, "..", "fixtures", "tf1", "variable_scope", "scopes.json")) as f:
    TF1 = json.load(f)


@pytest.fixture(autouse=True)
def _fresh_graph():
    co.reset_default_graph()
    yield
    co.reset_default_graph()


def _names():
    return [v.name for v in co.global_variables()]


def test_names_of_variables_slots_and_steps_in_scopes():
    with vs.variable_scope("s"):
        w = vs.get_variable("w", [2], initializer=vs.zeros_initializer())
        x = co.Variable(np.ones(2, np.float32), name="x")
        gs = co.train.get_or_create_global_step()
        with vs.name_scope("n"):
            y = co.Variable(np.ones(2, np.float32), name="y")
            z = vs.get_variable("z", [2])
            co.train.AdamOptimizer(0.1).minimize(
                lambda: (w * w + x * x + y * y + z * z).sum(), global_step=gs)
    with vs.variable_scope("s"):
        co.Variable(np.ones(2, np.float32), name="x")
        vs.get_variable("w3", [2])
    with vs.variable_scope("s", reuse=True):
        same = vs.get_variable("w") is w
    with vs.variable_scope(None, default_name="dense"):
        vs.get_variable("k", [1])
    with vs.variable_scope(None, default_name="dense"):
        vs.get_variable("k", [1])
    with vs.name_scope("s"):
        co.Variable(1.0, name="q")
    assert {"names": _names(), "reuse_is_same": same} == TF1["names"]


def _errors():
    e = {}

    def err(fn):
        try:
            fn()
        except Exception as x:  # noqa: BLE001
            return {"type": type(x).__name__, "message": str(x)}
        return None

    with vs.variable_scope("s"):
        vs.get_variable("w", [2])
        e["exists_disallowed"] = err(lambda: vs.get_variable("w", [2]))
    with vs.variable_scope("s", reuse=True):
        e["not_exist_reuse"] = err(lambda: vs.get_variable("nope", [2]))
        e["shape_mismatch"] = err(lambda: vs.get_variable("w", [3]))
        e["dtype_mismatch"] = err(lambda: vs.get_variable("w", [2], dtype=jnp.float64))
    e["no_shape"] = err(lambda: vs.get_variable("noshape"))
    e["constant_with_shape"] = err(
        lambda: vs.get_variable("c", [2], initializer=jnp.asarray([1.0, 2.0])))
    e["no_name_no_default"] = err(lambda: vs.variable_scope(None).__enter__())
    return e


def test_errors_are_tf1s_and_create_nothing():
    got = _errors()
    assert got == TF1["errors"]
    assert _names() == ["s/w:0"]  # none of the failed calls made a variable


def test_reuse_auto_reuse_captured_scopes_and_initializers():
    with vs.variable_scope("t", reuse=vs.AUTO_REUSE):
        a = vs.get_variable("t", [1])
        b = vs.get_variable("t", [1])
    with vs.variable_scope("a", reuse=True):
        with vs.variable_scope("b"):
            inner_reuse = vs.get_variable_scope().reuse
    with vs.variable_scope("a"):
        with vs.variable_scope("b"):
            made = vs.get_variable("v", [1]).name
    with vs.variable_scope("a", reuse=True):
        with vs.variable_scope("b"):
            found = vs.get_variable("v", [1]).name
    with vs.variable_scope("outer") as captured:
        pass
    with vs.variable_scope(captured):
        in_captured = vs.get_variable("v", [1]).name
        plain_in_captured = co.Variable(1.0, name="p").name
        scope_name = vs.get_variable_scope().name
    with vs.variable_scope("r"):
        vs.get_variable("v", [1])
        vs.get_variable_scope().reuse_variables()
        after_reuse_variables = vs.get_variable("v", [1]).name
    step = co.train.get_or_create_global_step().name
    iv = vs.get_variable("iv", [2], dtype=jnp.int32)
    cv = vs.get_variable("cv", initializer=jnp.asarray([1.0, 2.0]))
    with vs.variable_scope("i", initializer=vs.constant_initializer(3.0)):
        sv = vs.get_variable("v", [2])
    ci = vs.get_variable("ci", [2, 2], initializer=vs.constant_initializer([1, 2, 3, 4]))
    values = {k: np.asarray(v.value).tolist() for k, v in
              {"iv": iv, "cv": cv, "scope_init": sv, "ci": ci}.items()}
    got = {"auto_reuse_same": a is b, "inner_reuse": inner_reuse is True, "made": made,
           "found": found, "in_captured": in_captured, "plain_in_captured": plain_in_captured,
           "scope_name": scope_name, "after_reuse_variables": after_reuse_variables,
           "global_step": step, "values": values, "iv_dtype": iv.dtype.name,
           "names": _names()}
    assert got == TF1["reuse"]


def test_default_float_initializer_is_glorot_uniform_in_range():
    v = vs.get_variable("k", [30, 20])
    limit = (6.0 / 50) ** 0.5
    value = np.asarray(v.value)
    assert v.dtype == jnp.float32 and np.all(np.abs(value) <= limit) and value.std() > 0


def test_regularizer_and_custom_getter():
    with vs.variable_scope("l2", regularizer=lambda x: 0.5 * (x * x).sum()):
        w = vs.get_variable("w", [2], initializer=vs.ones_initializer())
    assert [float(x) for x in vs.get_regularization_losses()] == [1.0]
    w.assign(jnp.full(2, 2.0))
    assert [float(x) for x in vs.get_regularization_losses()] == [4.0]  # read lazily
    seen = []

    def getter(next_getter, name, *args, **kwargs):
        seen.append(name)
        return next_getter(name, *args, **kwargs)

    with vs.variable_scope("g", custom_getter=getter):
        v = vs.get_variable("v", [1])
    assert seen == ["g/v"] and v.name == "g/v:0"


def test_partitioner_is_refused_clearly():
    with pytest.raises(NotImplementedError, match="partitioned"):
        vs.get_variable("p", [4], partitioner=lambda shape, dtype: [2])
