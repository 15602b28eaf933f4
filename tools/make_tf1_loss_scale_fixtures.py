"""Records ``tf.compat.v1.train.experimental.MixedPrecisionLossScaleOptimizer`` in TF1 graph
mode (fixed and dynamic scales, several optimizers), for the loss-scaling tests.

Run with TensorFlow 2.21::

    python tools/make_tf1_loss_scale_fixtures.py [out_dir]

Writes into ``tests/fixtures/tf1/loss_scale/`` (default):

* ``trainings.npz`` + ``trainings.json``: per configuration (optimizer x loss scale),
  ``len(FACTORS)`` ``minimize`` steps of ``sum(w * w * c) * factor`` where ``factor`` is fed
  per step (``inf`` / ``nan`` give non-finite gradients; ``1e38`` overflows only once scaled):
  ``w``, the optimizer's variables, ``global_step``, ``current_loss_scale`` and
  ``good_steps`` after each step; the checkpoint's variable names.
* ``errors.json``: exception type and message for bad ``loss_scale`` values and a wrong
  optimizer type.

The problem (``W0``, ``C``, ``FACTORS``, ``CONFIGS``) is defined here and imported by the
tests (it needs no TensorFlow).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

import numpy as np

W0 = np.array([1.5, -0.75, 0.3, 2.0], np.float32)
C = np.array([0.5, 1.25, -2.0, 0.1], np.float32)
FACTORS = [1.0, 1.0, float("inf"), 1.0, float("nan"), 1.0, 1.0, 1e38, 1.0, 1.0, 1.0, 1.0]
# name: (optimizer, optimizer kwargs, loss scale spec)
CONFIGS = {
    "sgd_fixed8": ("GradientDescent", {"learning_rate": 0.1}, ("fixed", 8)),
    "sgd_dynamic": ("GradientDescent", {"learning_rate": 0.1}, ("dynamic", 4.0, 2, 2.0)),
    "adam_dynamic": ("Adam", {"learning_rate": 0.05}, ("dynamic", 4.0, 2, 2.0)),
    "momentum_dynamic3": ("Momentum", {"learning_rate": 0.05, "momentum": 0.9},
                          ("dynamic", 7.0, 1, 3.0)),
    "sgd_default": ("GradientDescent", {"learning_rate": 0.01}, ("string", "dynamic")),
    "adam_big": ("Adam", {"learning_rate": 0.05}, ("dynamic", 2.0 ** 126, 3, 4.0)),
}


def main(out_dir: str) -> None:
    import tensorflow as tf

    v1 = tf.compat.v1
    v1.disable_eager_execution()
    exp = v1.train.experimental
    arrays: dict = {}
    meta: dict = {"factors": [repr(f) for f in FACTORS], "configs": {}}
    for key, (kind, kwargs, spec) in CONFIGS.items():
        g = tf.Graph()
        with g.as_default():
            w = v1.Variable(W0, name="w")
            gs = v1.train.get_or_create_global_step()
            factor = v1.placeholder(tf.float32, [])
            if spec[0] == "fixed":
                ls = exp.FixedLossScale(spec[1])
            elif spec[0] == "dynamic":
                ls = exp.DynamicLossScale(spec[1], spec[2], spec[3])
            else:
                ls = spec[1]
            opt = exp.MixedPrecisionLossScaleOptimizer(
                getattr(v1.train, kind + "Optimizer")(**kwargs), ls)
            loss = tf.reduce_sum(w * w * tf.constant(C)) * factor
            train = opt.minimize(loss, global_step=gs)
            opt_vars = sorted(opt.variables(), key=lambda v: v.name)
            saver = v1.train.Saver()
            with v1.Session() as sess:
                sess.run(v1.global_variables_initializer())
                names = [v.name for v in opt_vars]
                rows = {n: [] for n in ["w", "global_step", *names]}
                for f in FACTORS:
                    sess.run(train, {factor: f})
                    rows["w"].append(sess.run(w))
                    rows["global_step"].append(sess.run(gs))
                    for v in opt_vars:
                        rows[v.name].append(sess.run(v))
                path = saver.save(sess, os.path.join(tempfile.mkdtemp(), "ckpt"))
                ckpt_names = sorted(n for n, _ in v1.train.list_variables(path))
        for n, vals in rows.items():
            arrays[f"{key}/{n}"] = np.stack(vals)
        meta["configs"][key] = {"variables": names, "checkpoint": ckpt_names,
                                "global": sorted(v.name for v in g.get_collection(
                                    v1.GraphKeys.GLOBAL_VARIABLES))}
    np.savez_compressed(os.path.join(out_dir, "trainings.npz"), **arrays)
    with open(os.path.join(out_dir, "trainings.json"), "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)

    errors = {}

    def record(name, fn):
        try:
            fn()
        except Exception as e:  # noqa: BLE001
            errors[name] = {"type": type(e).__name__, "message": str(e)}
        else:
            errors[name] = None

    with tf.Graph().as_default():
        sgd = v1.train.GradientDescentOptimizer(0.1)
        record("fixed_below_one", lambda: exp.FixedLossScale(0.5))
        record("fixed_string", lambda: exp.FixedLossScale("8"))
        record("fixed_zero_int", lambda: exp.FixedLossScale(0))
        record("opt_bad_string", lambda: exp.MixedPrecisionLossScaleOptimizer(sgd, "static"))
        record("opt_bad_list", lambda: exp.MixedPrecisionLossScaleOptimizer(sgd, [8]))
        record("opt_below_one", lambda: exp.MixedPrecisionLossScaleOptimizer(sgd, 0.25))
        record("opt_not_optimizer", lambda: exp.MixedPrecisionLossScaleOptimizer("sgd", 8))
        record("opt_none", lambda: exp.MixedPrecisionLossScaleOptimizer(sgd, None))

        def none_minimize():
            w = v1.Variable(W0, name="w")
            o = exp.MixedPrecisionLossScaleOptimizer(sgd, None)
            o.minimize(tf.reduce_sum(w * w))
        record("opt_none_minimize", none_minimize)
    with open(os.path.join(out_dir, "errors.json"), "w") as f:
        json.dump(errors, f, indent=1, sort_keys=True)


if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    main(sys.argv[1] if len(sys.argv) > 1 else
         os.path.join(here, "..", "tests", "fixtures", "tf1", "loss_scale"))
