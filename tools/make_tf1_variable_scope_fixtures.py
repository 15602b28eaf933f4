"""Records TF1 graph mode's ``get_variable`` / ``variable_scope`` / ``name_scope`` behaviour.

Each scenario builds a fresh ``tf.Graph`` (eager execution disabled) and records the names
of the global variables it ends with, selected values, and the exception type and message
of each bad call; ``tests/train/test_variable_scope.py`` runs the same scenarios with
compatopt's names. Run with TensorFlow 2.21::

    python tools/make_tf1_variable_scope_fixtures.py [out_dir]

Writes ``scopes.json`` (default ``tests/fixtures/tf1/variable_scope/``).
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np


def _err(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001
        return {"type": type(e).__name__, "message": str(e).split("\n")[0]}
    return None


def record(tf) -> dict:
    v1 = tf.compat.v1
    out: dict = {}

    def names():
        return [v.name for v in v1.global_variables()]

    with tf.Graph().as_default():
        with v1.variable_scope("s"):
            w = v1.get_variable("w", [2], initializer=v1.zeros_initializer())
            x = v1.Variable(np.ones(2, np.float32), name="x")
            gs = v1.train.get_or_create_global_step()
            with v1.name_scope("n"):
                y = v1.Variable(np.ones(2, np.float32), name="y")
                z = v1.get_variable("z", [2])
                v1.train.AdamOptimizer(0.1).minimize(
                    tf.reduce_sum(w * w + x * x + y * y + z * z), global_step=gs)
        with v1.variable_scope("s"):
            v1.Variable(np.ones(2, np.float32), name="x")
            v1.get_variable("w3", [2])
        with v1.variable_scope("s", reuse=True):
            same = v1.get_variable("w") is w
        with v1.variable_scope(None, default_name="dense"):
            v1.get_variable("k", [1])
        with v1.variable_scope(None, default_name="dense"):
            v1.get_variable("k", [1])
        with v1.name_scope("s"):
            v1.Variable(1.0, name="q")
        out["names"] = {"names": names(), "reuse_is_same": same}

    with tf.Graph().as_default():
        e = {}
        with v1.variable_scope("s"):
            v1.get_variable("w", [2])
            e["exists_disallowed"] = _err(lambda: v1.get_variable("w", [2]))
        with v1.variable_scope("s", reuse=True):
            e["not_exist_reuse"] = _err(lambda: v1.get_variable("nope", [2]))
            e["shape_mismatch"] = _err(lambda: v1.get_variable("w", [3]))
            e["dtype_mismatch"] = _err(lambda: v1.get_variable("w", [2], dtype=tf.float64))
        e["no_shape"] = _err(lambda: v1.get_variable("noshape"))
        e["constant_with_shape"] = _err(
            lambda: v1.get_variable("c", [2], initializer=tf.constant([1.0, 2.0])))
        e["no_name_no_default"] = _err(lambda: v1.variable_scope(None).__enter__())
        out["errors"] = e

    with tf.Graph().as_default():
        with v1.variable_scope("t", reuse=v1.AUTO_REUSE):
            a = v1.get_variable("t", [1])
            b = v1.get_variable("t", [1])
        with v1.variable_scope("a", reuse=True):
            with v1.variable_scope("b"):
                inner_reuse = v1.get_variable_scope().reuse
        with v1.variable_scope("a"):
            with v1.variable_scope("b"):
                made = v1.get_variable("v", [1]).name
        with v1.variable_scope("a", reuse=True):
            with v1.variable_scope("b"):
                found = v1.get_variable("v", [1]).name
        with v1.variable_scope("outer") as captured:
            pass
        with v1.variable_scope(captured):
            in_captured = v1.get_variable("v", [1]).name
            plain_in_captured = v1.Variable(1.0, name="p").name
            scope_name = v1.get_variable_scope().name
        with v1.variable_scope("r"):
            v1.get_variable("v", [1])
            v1.get_variable_scope().reuse_variables()
            after_reuse_variables = v1.get_variable("v", [1]).name
        step = v1.train.get_or_create_global_step().name
        iv = v1.get_variable("iv", [2], dtype=tf.int32)
        cv = v1.get_variable("cv", initializer=tf.constant([1.0, 2.0]))
        with v1.variable_scope("i", initializer=v1.constant_initializer(3.0)):
            sv = v1.get_variable("v", [2])
        ci = v1.get_variable("ci", [2, 2], initializer=v1.constant_initializer([1, 2, 3, 4]))
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            values = {k: sess.run(v).tolist() for k, v in
                      {"iv": iv, "cv": cv, "scope_init": sv, "ci": ci}.items()}
        out["reuse"] = {"auto_reuse_same": a is b, "inner_reuse": inner_reuse is True,
                        "made": made, "found": found, "in_captured": in_captured,
                        "plain_in_captured": plain_in_captured, "scope_name": scope_name,
                        "after_reuse_variables": after_reuse_variables, "global_step": step,
                        "values": values, "iv_dtype": iv.dtype.base_dtype.name,
                        "names": names()}
    return out


def main(out_dir: str) -> None:
    import tensorflow as tf

    tf.compat.v1.disable_eager_execution()
    data = record(tf)
    data["_tensorflow"] = tf.__version__
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "scopes.json"), "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)


if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    main(sys.argv[1] if len(sys.argv) > 1 else
         os.path.join(here, "..", "tests", "fixtures", "tf1", "variable_scope"))
