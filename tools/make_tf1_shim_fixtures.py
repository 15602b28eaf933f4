"""Records the reference behaviour of ``tf.compat.v1.train`` for the compat-shim tests.

Run with TensorFlow 2.21 (``pip install compatopt[tf]``)::

    python tools/make_tf1_shim_fixtures.py [out_dir]

Writes into ``tests/fixtures/tf1/shim/`` (default):

* ``trainings.npz`` + ``trainings.json``: per optimizer configuration, 200 eager
  ``minimize`` steps of a 2-layer MLP (float32, fixed data): the loss before every step,
  the final variables, slots and non-slot variables; 50 steps of an embedding model whose
  gradient is an ``IndexedSlices`` (``tf.gather``); and the values after 30
  ``apply_gradients`` calls with gradients drawn by :func:`replay_gradients`.
* ``names.json``: slot names, slot variable names, ``variables()``, ``get_slot_names()``
  per optimizer, in graph mode (the shim uniquifies names as graph mode does) and eager.
* ``subclasses.npz`` / ``.json``: two custom ``Optimizer`` subclasses written with TF1's
  hooks (BERT's AdamWeightDecay math; a momentum with a non-slot counter, ``_finish`` and
  sparse rows): losses, final variables, ``variables()`` names.
* ``errors.json``: exception type and message for every error case of spec §2/§3/§5.

The data and initial values come from :func:`problem` (NumPy ``RandomState``), which the
tests import, so they are not stored.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "train"))
import tensorflow as tf  # noqa: E402
from shim_problem import CONFIGS, MLP_STEPS, REPLAY_STEPS, SPARSE_STEPS, problem, replay_gradients  # noqa: E402

v1 = tf.compat.v1


def make_optimizer(kind: str, kwargs: dict, global_step=None):
    kwargs = dict(kwargs)
    if kind == "AdagradDA":
        kwargs["global_step"] = global_step
    if kwargs.pop("callable_lr", False):
        lr = kwargs.pop("learning_rate")
        kwargs["learning_rate"] = lambda: lr
    return getattr(v1.train, kind + "Optimizer")(**kwargs)


def mlp_loss(p, x, y):
    h = tf.tanh(tf.matmul(x, p["w1"]) + p["b1"])
    return tf.reduce_mean(tf.square(tf.matmul(h, p["w2"]) + p["b2"] - y))


def sparse_loss(p, ids, c):
    rows = tf.gather(p["emb"], ids)
    return tf.reduce_sum(tf.tanh(rows) * c)


def run_training(name, kind, kwargs, init, loss_fn, steps):
    gs = tf.Variable(np.int64(0), name="global_step", trainable=False)
    params = {k: tf.Variable(v, name=k) for k, v in init.items()}
    opt = make_optimizer(kind, kwargs, gs)
    losses = []
    for _ in range(steps):
        losses.append(float(loss_fn(params).numpy()))
        opt.minimize(lambda: loss_fn(params), global_step=gs)
    out = {f"{name}/loss": np.asarray(losses, np.float32)}
    for k, v in params.items():
        out[f"{name}/var/{k}"] = v.numpy()
        for s in opt.get_slot_names():
            slot = opt.get_slot(v, s)
            if slot is not None:
                out[f"{name}/slot/{k}/{s}"] = slot.numpy()
    for v in opt._non_slot_variables():
        out[f"{name}/nonslot/{v.name.split(':')[0]}"] = v.numpy()
    assert int(gs.numpy()) == steps
    return out


def run_replay(name, kind, kwargs, init):
    gs = tf.Variable(np.int64(0), name="global_step", trainable=False)
    params = {k: tf.Variable(v, name=k) for k, v in init.items()}
    opt = make_optimizer(kind, kwargs, gs)
    for grads in replay_gradients(init, REPLAY_STEPS):
        opt.apply_gradients([(tf.constant(grads[k]), params[k]) for k in params],
                            global_step=gs)
    out = {f"{name}/replay/var/{k}": v.numpy() for k, v in params.items()}
    for k, v in params.items():
        for s in opt.get_slot_names():
            out[f"{name}/replay/slot/{k}/{s}"] = opt.get_slot(v, s).numpy()
    return out


def record_names(kind, kwargs):
    """Names in graph mode and in eager mode, for one variable ``w`` and two optimizers."""
    result = {}
    for mode in ("graph", "eager"):
        entries = []

        def body():
            w = v1.Variable(np.ones((3, 2), np.float32), name="w")
            b = v1.Variable(np.zeros(2, np.float32), name="b")
            gs = v1.train.get_or_create_global_step()
            for _ in range(2):
                opt = make_optimizer(kind, kwargs, gs)
                loss = lambda: tf.reduce_sum(tf.tanh(w)) + tf.reduce_sum(b * b)  # noqa: E731
                if mode == "graph":
                    opt.minimize(loss(), global_step=gs)
                else:
                    opt.minimize(loss, global_step=gs)
                entries.append({
                    "get_slot_names": opt.get_slot_names(),
                    "slot_variable_names": {
                        var.name.split(":")[0]: {s: opt.get_slot(var, s).name for s in opt.get_slot_names()}
                        for var in (w, b)},
                    "variables": [v.name for v in opt.variables()],
                    "missing_slot": opt.get_slot(w, "nope") is None,
                })
            return entries

        if mode == "graph":
            with tf.Graph().as_default():
                result[mode] = body()
        else:
            result[mode] = body()
    return result


class TFAdamWeightDecay(v1.train.Optimizer):
    """BERT's AdamWeightDecayOptimizer math written with TF1's hooks (the port's original)."""

    def __init__(self, learning_rate, weight_decay_rate=0.0, beta_1=0.9, beta_2=0.999,
                 epsilon=1e-6, exclude_from_weight_decay=None, name="AdamWeightDecayOptimizer"):
        super().__init__(False, name)
        self.learning_rate, self.weight_decay_rate = learning_rate, weight_decay_rate
        self.beta_1, self.beta_2, self.epsilon = beta_1, beta_2, epsilon
        self.exclude_from_weight_decay = exclude_from_weight_decay

    def _create_slots(self, var_list):
        for v in var_list:
            self._zeros_slot(v, "m", "adam_m")
            self._zeros_slot(v, "v", "adam_v")

    def _prepare(self):
        self._lr_t = tf.convert_to_tensor(self._call_if_callable(self.learning_rate))

    def _resource_apply_dense(self, grad, param):
        import re
        m, v = self.get_slot(param, "m"), self.get_slot(param, "v")
        next_m = self.beta_1 * m + (1.0 - self.beta_1) * grad
        next_v = self.beta_2 * v + (1.0 - self.beta_2) * tf.square(grad)
        update = next_m / (tf.sqrt(next_v) + self.epsilon)
        if self.weight_decay_rate and not any(
                re.search(r, param.name) for r in self.exclude_from_weight_decay or ()):
            update += self.weight_decay_rate * param
        return tf.group(param.assign(param - self._lr_t * update), m.assign(next_m),
                        v.assign(next_v))


class TFCountingMomentum(v1.train.Optimizer):
    """A custom optimizer using every other hook: non-slot variable, _finish, sparse rows."""

    def __init__(self, learning_rate, momentum, name="CountingMomentum"):
        super().__init__(False, name)
        self._lr, self._mu = learning_rate, momentum

    def _create_slots(self, var_list):
        first = min(var_list, key=lambda v: v.name)
        self._create_non_slot_variable(initial_value=0.0, name="applies", colocate_with=first)
        for v in var_list:
            self._get_or_make_slot(v, tf.ones_like(v) * 0.5, "acc", self._name)

    def _prepare(self):
        self._lr_t = tf.convert_to_tensor(self._call_if_callable(self._lr))

    def _resource_apply_dense(self, grad, var):
        acc = self.get_slot(var, "acc")
        n = self._get_non_slot_variable("applies")
        new_acc = acc * self._mu + grad
        acc.assign(new_acc)
        return var.assign_sub(self._lr_t * new_acc / (1.0 + n))

    def _resource_apply_sparse(self, grad, var, indices):
        acc = self.get_slot(var, "acc")
        rows = tf.gather(acc, indices) * self._mu + grad
        acc.scatter_update(tf.IndexedSlices(rows, indices))
        return var.scatter_sub(tf.IndexedSlices(self._lr_t * rows, indices))

    def _finish(self, update_ops, name_scope):
        return self._get_non_slot_variable("applies").assign_add(1.0)


def record_subclasses():
    out = {}
    mlp, sparse = problem()
    cases = {
        "AdamWeightDecay": (lambda: TFAdamWeightDecay(0.01, weight_decay_rate=0.01,
                                                      exclude_from_weight_decay=["b1", "b2"]),
                            mlp["init"], lambda p: mlp_loss(p, mlp["x"], mlp["y"]), 50),
        "CountingMomentum": (lambda: TFCountingMomentum(lambda: 0.05, 0.9), mlp["init"],
                             lambda p: mlp_loss(p, mlp["x"], mlp["y"]), 30),
        "CountingMomentum@sparse": (lambda: TFCountingMomentum(0.05, 0.9), sparse["init"],
                                    lambda p: sparse_loss(p, sparse["ids"], sparse["c"]), 20),
    }
    names = {}
    for name, (make, init, loss_fn, steps) in cases.items():
        params = {k: tf.Variable(v, name=k) for k, v in init.items()}
        opt = make()
        losses = []
        for _ in range(steps):
            losses.append(float(loss_fn(params).numpy()))
            opt.minimize(lambda: loss_fn(params))
        out[f"{name}/loss"] = np.asarray(losses, np.float32)
        for k, v in params.items():
            out[f"{name}/var/{k}"] = v.numpy()
        names[name] = [v.name for v in opt.variables()]
    return out, names


def capture(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001
        return {"type": type(e).__name__, "message": str(e)}
    return None


def record_errors():
    tr = v1.train
    w = tf.Variable(np.ones(2, np.float32), name="w")
    e = {}
    e["empty_name"] = capture(lambda: tr.GradientDescentOptimizer(0.1, name=""))
    e["none_name"] = capture(lambda: tr.AdamOptimizer(name=None))
    e["adagrad_init"] = capture(lambda: tr.AdagradOptimizer(0.1, initial_accumulator_value=0.0))
    e["adagrad_init_before_name"] = capture(
        lambda: tr.AdagradOptimizer(0.1, initial_accumulator_value=-1.0, name=""))
    e["adagrad_da_init"] = capture(lambda: tr.AdagradDAOptimizer(
        0.1, None, initial_gradient_squared_accumulator_value=0.0, name=""))
    e["proximal_adagrad_init"] = capture(
        lambda: tr.ProximalAdagradOptimizer(0.1, initial_accumulator_value=0.0, name=""))
    e["ftrl_name_first"] = capture(lambda: tr.FtrlOptimizer(0.1, initial_accumulator_value=-1.0,
                                                            name=""))
    e["ftrl_init"] = capture(lambda: tr.FtrlOptimizer(0.1, initial_accumulator_value=-1.0))
    e["ftrl_power"] = capture(lambda: tr.FtrlOptimizer(0.1, learning_rate_power=0.5))
    e["ftrl_l1"] = capture(lambda: tr.FtrlOptimizer(0.1, l1_regularization_strength=-1.0))
    e["ftrl_l2"] = capture(lambda: tr.FtrlOptimizer(0.1, l2_regularization_strength=-1.0))
    e["ftrl_l2_shrinkage"] = capture(
        lambda: tr.FtrlOptimizer(0.1, l2_shrinkage_regularization_strength=-1.0))
    opt = tr.GradientDescentOptimizer(0.1)
    e["apply_empty"] = capture(lambda: opt.apply_gradients([]))
    e["apply_all_none"] = capture(lambda: opt.apply_gradients([(None, w)]))
    e["apply_bad_grad"] = capture(lambda: opt.apply_gradients([(object(), w)]))
    e["minimize_no_vars"] = capture(lambda: opt.minimize(lambda: tf.constant(1.0)))
    e["minimize_unconnected"] = capture(lambda: opt.minimize(lambda: tf.constant(1.0),
                                                             var_list=[w]))
    e["compute_gradients_tensor"] = capture(lambda: opt.compute_gradients(tf.constant(1.0)))
    e["ftrl_callable_lr"] = capture(
        lambda: tr.FtrlOptimizer(lambda: 0.1).minimize(lambda: tf.reduce_sum(w * w)))
    e["adagrad_da_no_step"] = capture(
        lambda: tr.AdagradDAOptimizer(0.1, None).minimize(lambda: tf.reduce_sum(w * w)))
    wc = tf.Variable(np.ones((3, 2), np.float32), name="wc", constraint=lambda x: x)
    e["sparse_constraint"] = capture(lambda: opt.apply_gradients(
        [(tf.IndexedSlices(tf.ones((1, 2)), tf.constant([0]), tf.constant([3, 2])), wc)]))
    e["assign_shape"] = capture(lambda: w.assign(np.ones(3, np.float32)))
    with tf.Graph().as_default():
        x = v1.Variable(np.ones(2, np.float32), name="x")
        loss = tf.reduce_sum(x * x)
        g = tr.GradientDescentOptimizer(0.1)
        e["gate_gradients"] = capture(lambda: g.compute_gradients(loss, gate_gradients=7))
        e["aggregation_method"] = capture(lambda: g.compute_gradients(loss,
                                                                      aggregation_method=7))
        tr.create_global_step()
        e["create_global_step_twice"] = capture(lambda: tr.create_global_step())
    with tf.Graph().as_default():
        bad = v1.Variable(np.float32(0), name="step", trainable=False,
                          collections=[v1.GraphKeys.GLOBAL_VARIABLES, v1.GraphKeys.GLOBAL_STEP])
        e["global_step_float"] = capture(lambda: tr.get_global_step())
        del bad
    with tf.Graph().as_default():
        v1.Variable(np.zeros(2, np.int64), name="step", trainable=False,
                    collections=[v1.GraphKeys.GLOBAL_VARIABLES, v1.GraphKeys.GLOBAL_STEP])
        e["global_step_not_scalar"] = capture(lambda: tr.get_global_step())
    return e


def main(out_dir: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    tf.config.set_visible_devices([], "GPU")
    arrays, meta = {}, {}
    for name, (kind, kwargs) in CONFIGS.items():
        mlp, sparse = problem()
        arrays.update(run_training(name, kind, kwargs, mlp["init"],
                                   lambda p: mlp_loss(p, mlp["x"], mlp["y"]), MLP_STEPS))
        arrays.update(run_training(name + "@sparse", kind, kwargs, sparse["init"],
                                   lambda p: sparse_loss(p, sparse["ids"], sparse["c"]),
                                   SPARSE_STEPS))
        arrays.update(run_replay(name, kind, kwargs, mlp["init"]))
        meta[name] = {"kind": kind, "kwargs": kwargs}
    sub_arrays, sub_names = record_subclasses()
    np.savez_compressed(os.path.join(out_dir, "subclasses.npz"), **sub_arrays)
    with open(os.path.join(out_dir, "subclasses.json"), "w") as f:
        json.dump(sub_names, f, indent=1, sort_keys=True)
    np.savez_compressed(os.path.join(out_dir, "trainings.npz"), **arrays)
    meta["_tensorflow"] = tf.__version__
    with open(os.path.join(out_dir, "trainings.json"), "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
    names = {name: record_names(kind, kwargs) for name, (kind, kwargs) in CONFIGS.items()}
    names["Ftrl_named_slots"] = record_names("Ftrl", {"learning_rate": 0.1, "accum_name": "acc",
                                                      "linear_name": "lin"})
    names["Adam_own_namescope"] = record_names("Adam", {
        "use_own_namescope_for_non_slot_vars": True})
    with open(os.path.join(out_dir, "names.json"), "w") as f:
        json.dump(names, f, indent=1, sort_keys=True)
    with open(os.path.join(out_dir, "errors.json"), "w") as f:
        json.dump(record_errors(), f, indent=1, sort_keys=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else
         os.path.join(HERE, "..", "tests", "fixtures", "tf1", "shim"))
