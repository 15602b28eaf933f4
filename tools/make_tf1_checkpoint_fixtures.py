"""Records TF1 checkpoints and the trainings around them for the checkpoint tests.

Needs TensorFlow 2.21 and compatopt in one interpreter (``pip install -e ".[tf]"``)::

    python tools/make_tf1_checkpoint_fixtures.py [out_dir]

Writes into ``tests/fixtures/tf1/checkpoints/`` (default), per optimizer configuration of
``tests/checkpoint/ckpt_problem.py`` (``adam``, ``momentum``, ``rmsprop``):

* ``<cfg>/tf1/``: the checkpoint ``tf.compat.v1.train.Saver`` wrote after 50 graph-mode
  training steps (``model.ckpt-50.index``/``.data-00000-of-00001`` and the ``checkpoint``
  state file; no ``.meta``);
* ``<cfg>/converted/model.ckpt-50.npz``: the same checkpoint converted by
  ``compatopt.train.convert_tf1_checkpoint`` (TensorFlow's reader), which the tests restore
  without TensorFlow;
* ``reference.npz``: per configuration the values of every variable at step 50 (read from
  the session, not from the file), the gradients TF computed at steps 51..100, the losses
  and the values of every variable, slot and non-slot variable after step 100;
* ``names.json``: per TF checkpoint, ``tf.train.list_variables`` (name → shape) and
  each entry's dtype.

And ``dtypes/``: a checkpoint of float16/bfloat16/float64/int32/int64/bool variables
(global step 7), converted likewise, with its values in ``reference.npz`` (bfloat16 as its
uint16 bits).
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "checkpoint"))
import tensorflow as tf  # noqa: E402
from ckpt_problem import (  # noqa: E402
    CONFIGS,
    DTYPE_STEP,
    DTYPE_VARS,
    STEPS_AFTER,
    STEPS_BEFORE,
    VARS,
    dtype_values,
    problem,
)

v1 = tf.compat.v1
v1.disable_eager_execution()

import compatopt.train.saver as co_saver  # noqa: E402


def make_optimizer(kind: str, kwargs: dict):
    return getattr(v1.train, kind + "Optimizer")(**kwargs)


def build_model(init):
    """Variables under TF1 variable scopes, the loss and its gradients."""
    x_np, y_np, _ = problem()
    params = {}
    for name in VARS:
        scope, short = name.split("/")
        with v1.variable_scope(scope, reuse=v1.AUTO_REUSE):
            params[name] = v1.get_variable(short, initializer=init[name], use_resource=True)
    x, y = tf.constant(x_np), tf.constant(y_np)
    h = tf.tanh(tf.matmul(x, params["hidden/kernel"]) + params["hidden/bias"])
    loss = tf.reduce_mean(tf.square(tf.matmul(h, params["out/kernel"]) + params["out/bias"] - y))
    return params, loss


def record_training(cfg: str, out_dir: str) -> dict:
    kind, kwargs, _ = CONFIGS[cfg]
    _, _, init = problem()
    ref = {}
    graph = tf.Graph()
    with graph.as_default():
        gs = v1.train.get_or_create_global_step()
        params, loss = build_model(init)
        var_list = [params[n] for n in VARS]
        grads = tf.gradients(loss, var_list)
        feeds = [v1.placeholder(tf.float32, v.shape) for v in var_list]
        opt = make_optimizer(kind, kwargs)
        train_op = opt.apply_gradients(list(zip(feeds, var_list)), global_step=gs)
        saver = v1.train.Saver(max_to_keep=1)
        all_vars = {v.op.name: v for v in v1.global_variables()}
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            losses, recorded = [], {n: [] for n in VARS}
            for step in range(STEPS_BEFORE + STEPS_AFTER):
                if step == STEPS_BEFORE:
                    for name, value in sess.run(all_vars).items():
                        ref[f"{cfg}/step50/{name}"] = value
                    cwd = os.getcwd()
                    os.chdir(os.path.join(out_dir, cfg))
                    try:  # relative save path: the state file holds relative paths
                        saver.save(sess, "tf1/model.ckpt", global_step=gs,
                                   write_meta_graph=False)
                    finally:
                        os.chdir(cwd)
                loss_v, g = sess.run([loss, grads])
                if step >= STEPS_BEFORE:
                    losses.append(loss_v)
                    for n, gv in zip(VARS, g):
                        recorded[n].append(gv)
                sess.run(train_op, feed_dict=dict(zip(feeds, g)))
            for name, value in sess.run(all_vars).items():
                ref[f"{cfg}/step100/{name}"] = value
    ref[f"{cfg}/loss"] = np.asarray(losses, np.float32)
    for n in VARS:
        ref[f"{cfg}/grads/{n}"] = np.stack(recorded[n])
    assert int(ref[f"{cfg}/step100/global_step"]) == STEPS_BEFORE + STEPS_AFTER
    return ref


def record_dtypes(out_dir: str) -> dict:
    values = dtype_values()
    graph = tf.Graph()
    with graph.as_default():
        gs = v1.Variable(np.int64(DTYPE_STEP), name="global_step", trainable=False)
        variables = [v1.Variable(values[n], name=n) for n in DTYPE_VARS]
        saver = v1.train.Saver()
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            cwd = os.getcwd()
            os.chdir(os.path.join(out_dir, "dtypes"))
            try:
                saver.save(sess, "tf1/model.ckpt", global_step=gs, write_meta_graph=False)
            finally:
                os.chdir(cwd)
            got = sess.run({v.op.name: v for v in variables})
    ref = {}
    for n, value in got.items():
        value = np.asarray(value)
        ref[f"dtypes/{n}"] = value.view(np.uint16) if DTYPE_VARS[n][0] == "bfloat16" else value
    return ref


def main(out_dir: str) -> None:
    ref, names = {}, {}
    for cfg in list(CONFIGS) + ["dtypes"]:
        shutil.rmtree(os.path.join(out_dir, cfg), ignore_errors=True)
        os.makedirs(os.path.join(out_dir, cfg, "converted"))
        ref.update(record_dtypes(out_dir) if cfg == "dtypes" else record_training(cfg, out_dir))
        saved_at = DTYPE_STEP if cfg == "dtypes" else STEPS_BEFORE
        src = os.path.join(out_dir, cfg, "tf1", f"model.ckpt-{saved_at}")
        co_saver.convert_tf1_checkpoint(src, os.path.join(out_dir, cfg, "converted",
                                                          os.path.basename(src)))
        dtypes = tf.train.load_checkpoint(src).get_variable_to_dtype_map()
        names[cfg] = {n: {"shape": list(s), "dtype": dtypes[n].name}
                      for n, s in tf.train.list_variables(src)}
    np.savez(os.path.join(out_dir, "reference.npz"), **ref)
    with open(os.path.join(out_dir, "names.json"), "w") as f:
        json.dump(names, f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else
         os.path.join(HERE, "..", "tests", "fixtures", "tf1", "checkpoints"))
