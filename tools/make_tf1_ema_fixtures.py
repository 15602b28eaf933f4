"""Records ``tf.compat.v1.train.ExponentialMovingAverage`` in TF1 graph mode, for the
moving-average tests.

Run with TensorFlow 2.21::

    python tools/make_tf1_ema_fixtures.py [out_dir]

Writes into ``tests/fixtures/tf1/ema/`` (default):

* ``trainings.npz`` + ``trainings.json``: per configuration (``CONFIGS``), the variables'
  initial values and per-step gradients, then ``STEPS`` times ``sess.run(train)`` (the
  optimizer's ``apply_gradients``, with the global step) followed by ``sess.run(ema_op)``;
  the variables, shadows and extra variables (``biased``, ``local_step``) right after
  initialisation (``step 0``) and after each step; their names and
  ``variables_to_restore()``'s keys.
* ``tensors.npz`` + ``tensors.json``: ``apply`` on a non-Variable tensor fed per step
  (TF1's zero-initialised shadow; with ``zero_debias``, ``biased`` and ``local_step``).
* ``names.json``: shadow names for two averages on one variable, a custom ``name``, a
  second ``apply``, ``average_name`` before and after ``apply``, ``variables_to_restore``
  with and without ``moving_avg_variables``.
* ``errors.json``: exception type (with its built-in bases) and message for bad input.

The problem (``STEPS``, ``CONFIGS``, ``TENSOR_VALUES``) is defined here and imported by the
tests (it needs no TensorFlow).
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

STEPS = 6
SHAPES = {"w": ((2, 3), "float32"), "h": ((4,), "float16"), "b": ((3,), "float64")}
# name: (variables, optimizer, optimizer kwargs, EMA kwargs; "num_updates": "global_step"
# means the global step Variable, "decay": "variable" a float32 Variable holding 0.75)
CONFIGS = {
    "decay": (["w", "h"], "GradientDescent", {"learning_rate": 0.1}, {"decay": 0.9}),
    "num_updates": (["w", "h"], "Momentum", {"learning_rate": 0.05, "momentum": 0.9},
                    {"decay": 0.999, "num_updates": "global_step"}),
    "num_updates_const": (["w"], "GradientDescent", {"learning_rate": 0.1},
                          {"decay": 0.99, "num_updates": 3}),
    "zero_debias_vars": (["w"], "GradientDescent", {"learning_rate": 0.1},
                         {"decay": 0.9, "zero_debias": True, "name": "avg"}),
    "decay_variable": (["w"], "Momentum", {"learning_rate": 0.05, "momentum": 0.5},
                       {"decay": "variable"}),
    "float64": (["b"], "Momentum", {"learning_rate": 0.05, "momentum": 0.9},
                {"decay": 0.9, "num_updates": "global_step"}),
}
TENSOR_VALUES = np.array([[1.5, -2.0, 0.25], [0.5, 3.0, -1.0], [2.0, 2.0, 2.0],
                          [-0.125, 7.0, 1.0], [0.3, 0.1, 0.7]], np.float32)
TENSOR_CONFIGS = {"plain": {"decay": 0.9}, "zero_debias": {"decay": 0.9, "zero_debias": True},
                  "zero_debias_f64": {"decay": 0.8, "zero_debias": True}}


def initial_and_grads(key: str) -> dict:
    """The variables' initial values and gradients (``{name: array}``, ``{name + "/g":
    [STEPS, *shape]}``), seeded by the configuration's name."""
    rng = np.random.default_rng(sum(map(ord, key)))
    out = {}
    for name in CONFIGS[key][0]:
        shape, dtype = SHAPES[name]
        out[name] = rng.standard_normal(shape).astype(dtype)
        out[name + "/g"] = rng.standard_normal((STEPS, *shape)).astype(dtype)
    return out


def _exc(e: BaseException) -> dict:
    bases = [c.__name__ for c in type(e).__mro__ if c.__module__ == "builtins"]
    return {"type": type(e).__name__, "bases": bases, "message": str(e)}


def _trainings(tf, arrays: dict, meta: dict) -> None:
    v1 = tf.compat.v1
    for key, (names, opt_name, opt_kwargs, ema_kwargs) in CONFIGS.items():
        data = initial_and_grads(key)
        for k, v in data.items():
            arrays[f"{key}:{k}"] = v
        with tf.Graph().as_default():
            variables = [v1.Variable(data[n], name=n) for n in names]
            gs = v1.train.get_or_create_global_step()
            grads = [v1.placeholder(v.dtype.base_dtype, v.shape) for v in variables]
            opt = getattr(v1.train, opt_name + "Optimizer")(**opt_kwargs)
            train = opt.apply_gradients(list(zip(grads, variables)), global_step=gs)
            kwargs = dict(ema_kwargs)
            if kwargs.get("decay") == "variable":
                kwargs["decay"] = v1.Variable(np.float32(0.75), trainable=False, name="decay")
            if kwargs.get("num_updates") == "global_step":
                kwargs["num_updates"] = gs
            ema = v1.train.ExponentialMovingAverage(**kwargs)
            ema_op = ema.apply(variables)
            known = {id(v) for v in [*variables, gs, *opt.variables()]}
            tracked = [v for v in v1.global_variables() if id(v) not in known]
            with v1.Session() as sess:
                sess.run(v1.global_variables_initializer())
                rows: dict = {v.op.name: [] for v in [*variables, *tracked, gs]}

                def record():
                    for v in [*variables, *tracked, gs]:
                        rows[v.op.name].append(sess.run(v))

                record()
                for t in range(STEPS):
                    sess.run(train, {g: data[n + "/g"][t] for g, n in zip(grads, names)})
                    sess.run(ema_op)
                    record()
            for k, v in rows.items():
                arrays[f"{key}:trajectory:{k}"] = np.stack(v)
            meta[key] = {
                "global_variables": [v.name for v in v1.global_variables()],
                "averages": {v.op.name: ema.average(v).name for v in variables},
                "tracked": [v.op.name for v in tracked],
                "variables_to_restore": sorted(
                    (k, v.name) for k, v in ema.variables_to_restore().items()),
                "moving_average_variables": [v.name for v in v1.moving_average_variables()],
            }


def _tensors(tf, arrays: dict, meta: dict) -> None:
    v1 = tf.compat.v1
    for key, kwargs in TENSOR_CONFIGS.items():
        dtype = np.float64 if key.endswith("f64") else np.float32
        with tf.Graph().as_default():
            x = v1.placeholder(dtype, TENSOR_VALUES.shape[1:])
            t = tf.identity(x, name="total_loss")
            ema = v1.train.ExponentialMovingAverage(**kwargs)
            op = ema.apply([t])
            extra = list(v1.global_variables())
            with v1.Session() as sess:
                sess.run(v1.global_variables_initializer())
                rows: dict = {v.op.name: [sess.run(v)] for v in extra}
                for value in TENSOR_VALUES:
                    sess.run(op, {x: value.astype(dtype)})
                    for v in extra:
                        rows[v.op.name].append(sess.run(v))
            for k, v in rows.items():
                arrays[f"{key}:{k}"] = np.stack(v)
            meta[key] = {"variables": [v.name for v in extra],
                         "dtypes": [v.dtype.base_dtype.name for v in extra]}


def _names(tf) -> dict:
    v1 = tf.compat.v1
    out: dict = {}
    with tf.Graph().as_default():
        w = v1.Variable(np.ones(3, np.float32), name="w")
        k = v1.Variable(np.ones(2, np.float32), name="dense/kernel")
        gs = v1.train.get_or_create_global_step()
        opt = v1.train.MomentumOptimizer(0.1, 0.9)
        opt.apply_gradients([(tf.constant(np.ones(3, np.float32)), w)], global_step=gs)
        ema = v1.train.ExponentialMovingAverage(0.9)
        out["average_name_before"] = ema.average_name(w)
        ema.apply([w, k])
        out["after_first"] = [v.name for v in v1.global_variables()]
        out["average_name_after"] = [ema.average_name(w), ema.average_name(k)]
        ema.apply([w])
        out["after_second_apply"] = [v.name for v in v1.global_variables()]
        ema2 = v1.train.ExponentialMovingAverage(0.9)
        out["ema2_average_name_before"] = ema2.average_name(w)
        ema2.apply([w])
        out["ema2_average"] = ema2.average(w).name
        ema3 = v1.train.ExponentialMovingAverage(0.9, name="avg")
        out["ema3_average_name_before"] = ema3.average_name(w)
        ema3.apply([w])
        out["ema3_average"] = ema3.average(w).name
        out["ema3_average_name_unapplied"] = ema3.average_name(k)
        out["ema3_average_unapplied"] = repr(ema3.average(k))
        out["global_variables"] = [v.name for v in v1.global_variables()]
        out["moving_average_variables"] = [v.name for v in v1.moving_average_variables()]
        for label, e, arg in [("vtr", ema, None), ("vtr_ema2", ema2, None),
                              ("vtr_ema3", ema3, None), ("vtr_list", ema, [w])]:
            out[label] = sorted((key, v.name) for key, v in e.variables_to_restore(arg).items())
    return out


def _errors(tf) -> dict:
    v1 = tf.compat.v1
    out: dict = {}
    with tf.Graph().as_default():
        w = v1.Variable(np.ones(3, np.float32), name="w")
        i = v1.Variable(np.int32(3), name="i")
        ema = v1.train.ExponentialMovingAverage(0.9)
        cases = {
            "int_variable": lambda: ema.apply([i]),
            "python_float": lambda: ema.apply([1.0]),
            "numpy_array": lambda: ema.apply([np.ones(3, np.float32)]),
            "variable_not_list": lambda: ema.apply(w),
            "decay_string": lambda: v1.train.ExponentialMovingAverage("x").apply([w]),
        }
        for label, fn in cases.items():
            try:
                fn()
                out[label] = None
            except Exception as e:  # noqa: BLE001 - recording whatever TF raises
                out[label] = _exc(e)
        before = [v.name for v in v1.global_variables()]
        ema.apply([w])
        ema.apply([w])
        out["apply_twice_new_variables"] = [v.name for v in v1.global_variables()
                                            if v.name not in before]
    with tf.Graph().as_default():
        w = v1.Variable(np.ones(3, np.float32), name="w")
        try:
            v1.train.ExponentialMovingAverage(0.9).apply([w, 1.0])
        except Exception as e:  # noqa: BLE001
            out["partial_failure"] = _exc(e)
        out["partial_failure_variables"] = [v.name for v in v1.global_variables()]
    return out


def main(out_dir: str) -> None:
    import tensorflow as tf

    tf.compat.v1.disable_eager_execution()
    os.makedirs(out_dir, exist_ok=True)
    arrays: dict = {}
    meta: dict = {"steps": STEPS, "tf_version": tf.__version__, "configs": {}}
    _trainings(tf, arrays, meta["configs"])
    np.savez(os.path.join(out_dir, "trainings.npz"), **arrays)
    with open(os.path.join(out_dir, "trainings.json"), "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
    arrays, meta = {}, {}
    _tensors(tf, arrays, meta)
    np.savez(os.path.join(out_dir, "tensors.npz"), **arrays)
    with open(os.path.join(out_dir, "tensors.json"), "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
    for name, data in [("names.json", _names(tf)), ("errors.json", _errors(tf))]:
        with open(os.path.join(out_dir, name), "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)


if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    main(sys.argv[1] if len(sys.argv) > 1 else
         os.path.join(here, "..", "tests", "fixtures", "tf1", "ema"))
