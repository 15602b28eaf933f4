"""``deepfm_tf1_original.py`` ported to compatopt: DeepFM (a CTR model with embedding tables)
trained with TF1's Adam, Adagrad or FTRL, whose sparse kernels update the tables' rows.

What changed, line for line (the model function is the original's, op for op):

* imports: ``tensorflow.compat.v1 as tf`` → ``jax``, ``jax.numpy as jnp``, ``compatopt as
  co``; each ``tf.*`` op → its ``jnp`` namesake (``tf.reduce_sum`` → ``jnp.sum``,
  ``tf.concat`` → ``jnp.concatenate``, ``tf.nn.sigmoid`` → ``jax.nn.sigmoid``, ...);
  ``tf.losses.log_loss`` → :func:`log_loss` (TF1's formula, six lines);
  ``tf.nn.dropout`` → :func:`dropout` (keep probabilities are fed as 1.0 in both scripts);
* ``tf.Variable(...)`` → ``co.Variable(...)`` (the same unnamed ``Variable_1`` ... names,
  so the slots are ``feature_embeddings/Adam`` and ``Variable_4/Adagrad``, as TF1);
* ``tf.nn.embedding_lookup`` → ``co.nn.embedding_lookup``: the tables' gradients are
  ``IndexedSlices`` and the sparse kernels run, as in TF1 graph mode;
* variable reads for ``jnp``: ``jnp.matmul(y, w.value)``;
* ``tf.train.*Optimizer`` → ``co.train.*Optimizer`` (the same switch, ``"ftrl"`` included);
* placeholders + ``sess.run((loss, train_op), feed_dict)`` → a ``@co.function`` step taking
  the batch and returning ``minimize``'s op, whose ``.loss`` is the loss of that step.

    python examples/deepfm.py                         # Adam, against the recorded TF1 run
    python examples/deepfm.py --optimizer ftrl --steps 20
    python examples/deepfm.py --tf-python /path/to/python-with-tensorflow

Data: synthetic Criteo-like clicks from a fixed NumPy seed (:func:`make_data`): 6 numeric
fields (one id each, the value is a log count) and 14 categorical fields (one-hot: value
1.0, Zipf-distributed ids), 1,000 feature ids, labels from a hidden logistic model. Without
TensorFlow the port is compared with the run ``tools/make_tf1_deepfm_fixtures.py`` recorded
from the original (``tests/fixtures/tf1/programs/deepfm/``); with it (``--tf-python`` or
``$TF_PYTHON``) the original runs now on the same data, initial weights and batches.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

import compatopt as co

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.normpath(os.path.join(HERE, "..", "tests", "fixtures", "tf1", "programs",
                                         "deepfm"))
OPTIMIZERS = ("adam", "adagrad", "ftrl")
NUMERIC_FIELDS = 6
VOCAB = (320, 200, 120, 80, 60, 50, 40, 30, 25, 20, 20, 15, 10, 4)  # categorical fields
FEATURE_SIZE = NUMERIC_FIELDS + sum(VOCAB)  # 1000 ids
FIELD_SIZE = NUMERIC_FIELDS + len(VOCAB)  # 20 fields
EMBEDDING_SIZE = 8
DEEP_LAYERS = (32, 32)
WEIGHT_KEYS = ("feature_embeddings", "feature_bias", "layer_0", "bias_0", "layer_1",
               "bias_1", "concat_projection", "concat_bias")
DATA_KEYS = ("xi", "xv", "y", "batches") + WEIGHT_KEYS


def make_data(steps: int = 40, batch_size: int = 256, samples: int = 2048,
              seed: int = 2016) -> dict:
    """The inputs of both scripts: ``xi``/``xv`` [samples, F] int32 ids / float32 values,
    ``y`` [samples] float32 clicks, ``batches`` [steps, batch_size] row order (a fresh
    permutation each epoch) and the initial weights, drawn as the original draws them
    (embeddings ``N(0, 0.01)``, biases ``U(0, 1)``, layers Glorot-normal)."""
    rs = np.random.RandomState(seed)
    counts = rs.poisson(rs.uniform(0.5, 20.0, NUMERIC_FIELDS), (samples, NUMERIC_FIELDS))
    xi = np.zeros((samples, FIELD_SIZE), np.int32)
    xv = np.ones((samples, FIELD_SIZE), np.float32)
    xi[:, :NUMERIC_FIELDS] = np.arange(NUMERIC_FIELDS)
    xv[:, :NUMERIC_FIELDS] = np.log1p(counts) / 3.0
    offset = NUMERIC_FIELDS
    for j, size in enumerate(VOCAB):
        p = 1.0 / np.arange(1, size + 1) ** 1.1
        xi[:, NUMERIC_FIELDS + j] = offset + rs.choice(size, samples, p=p / p.sum())
        offset += size
    w_true = rs.standard_normal(FEATURE_SIZE) * 0.5
    score = (w_true[xi] * xv).sum(axis=1) - 1.0
    y = (rs.uniform(size=samples) < 1.0 / (1.0 + np.exp(-score))).astype(np.float32)
    per_epoch = samples // batch_size
    order = np.concatenate([rs.permutation(samples) for _ in range(-(-steps // per_epoch))])
    batches = order[:steps * batch_size].reshape(steps, batch_size).astype(np.int32)

    def glorot(fan_in, fan_out, shape):
        return rs.normal(0.0, np.sqrt(2.0 / (fan_in + fan_out)), shape).astype(np.float32)

    input_size = FIELD_SIZE * EMBEDDING_SIZE
    concat_size = FIELD_SIZE + EMBEDDING_SIZE + DEEP_LAYERS[-1]
    return {
        "xi": xi, "xv": xv, "y": y, "batches": batches,
        "feature_embeddings": rs.normal(0.0, 0.01, (FEATURE_SIZE, EMBEDDING_SIZE)).astype(
            np.float32),
        "feature_bias": rs.uniform(0.0, 1.0, (FEATURE_SIZE, 1)).astype(np.float32),
        "layer_0": glorot(input_size, DEEP_LAYERS[0], (input_size, DEEP_LAYERS[0])),
        "bias_0": glorot(input_size, DEEP_LAYERS[0], (1, DEEP_LAYERS[0])),
        "layer_1": glorot(DEEP_LAYERS[0], DEEP_LAYERS[1], DEEP_LAYERS),
        "bias_1": glorot(DEEP_LAYERS[0], DEEP_LAYERS[1], (1, DEEP_LAYERS[1])),
        "concat_projection": glorot(concat_size, 1, (concat_size, 1)),
        "concat_bias": np.float32(0.01),
    }


def data_digest(d: dict) -> str:
    """SHA-256 of the data, weights and batch order: ties a recorded run to its inputs."""
    h = hashlib.sha256()
    for k in DATA_KEYS:
        a = np.ascontiguousarray(d[k])
        h.update(f"{k}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def dropout(x, keep_prob, key, i):
    """``tf.nn.dropout(x, keep_prob)``: inverted dropout with mask ``i`` of the step's ``key``
    (JAX's random stream, not TF's). ``keep_prob`` is a Python float (a static argument of
    the step); at 1.0, as both scripts feed it, ``x`` itself (TF1: ``x`` bit for bit)."""
    if keep_prob == 1.0:
        return x
    keep = jax.random.uniform(jax.random.fold_in(key, i), jnp.shape(x), x.dtype) >= 1 - keep_prob
    return jnp.where(keep, x / keep_prob, jnp.zeros_like(x))


def log_loss(labels, predictions, epsilon=1e-7):
    """``tf.compat.v1.losses.log_loss(labels, predictions)`` (weights 1, the default
    ``SUM_BY_NONZERO_WEIGHTS`` reduction: the sum over the batch divided by its size)."""
    losses = -jnp.multiply(labels, jnp.log(predictions + epsilon)) - jnp.multiply(
        (1 - labels), jnp.log(1 - predictions + epsilon))
    return jnp.sum(losses) / losses.size


class DeepFM:
    """The original's model, variables and optimizer switch (``_init_graph``), ported."""

    def __init__(self, d: dict, optimizer_type: str = "adam", learning_rate: float = 0.001,
                 feature_size: int = FEATURE_SIZE, field_size: int = FIELD_SIZE,
                 embedding_size: int = EMBEDDING_SIZE, deep_layers=DEEP_LAYERS,
                 deep_layers_activation=jax.nn.relu, use_fm: bool = True,
                 use_deep: bool = True) -> None:
        self.feature_size, self.field_size = feature_size, field_size
        self.embedding_size, self.deep_layers = embedding_size, list(deep_layers)
        self.deep_layers_activation = deep_layers_activation
        self.use_fm, self.use_deep = use_fm, use_deep
        self.weights = self._initialize_weights(d)

        if optimizer_type == "adam":
            self.optimizer = co.train.AdamOptimizer(learning_rate=learning_rate, beta1=0.9,
                                                    beta2=0.999, epsilon=1e-8)
        elif optimizer_type == "adagrad":
            self.optimizer = co.train.AdagradOptimizer(learning_rate=learning_rate,
                                                       initial_accumulator_value=1e-8)
        elif optimizer_type == "gd":
            self.optimizer = co.train.GradientDescentOptimizer(learning_rate=learning_rate)
        elif optimizer_type == "momentum":
            self.optimizer = co.train.MomentumOptimizer(learning_rate=learning_rate,
                                                        momentum=0.95)
        elif optimizer_type == "ftrl":
            self.optimizer = co.train.FtrlOptimizer(learning_rate=learning_rate)
        else:
            raise ValueError(f"unknown optimizer_type {optimizer_type!r}")

        @co.function
        def train_step(feat_index, feat_value, label, dropout_keep_fm, dropout_keep_deep,
                       key):
            return self.optimizer.minimize(lambda: self.loss(
                feat_index, feat_value, label, dropout_keep_fm, dropout_keep_deep, key))

        self.train_step = train_step

    def _initialize_weights(self, d: dict) -> dict:
        weights = dict()
        weights["feature_embeddings"] = co.Variable(d["feature_embeddings"],
                                                    name="feature_embeddings")  # M * K
        weights["feature_bias"] = co.Variable(d["feature_bias"], name="feature_bias")  # M * 1
        for i in range(len(self.deep_layers)):
            weights["layer_%d" % i] = co.Variable(d["layer_%d" % i], dtype=np.float32)
            weights["bias_%d" % i] = co.Variable(d["bias_%d" % i], dtype=np.float32)
        weights["concat_projection"] = co.Variable(d["concat_projection"], dtype=np.float32)
        weights["concat_bias"] = co.Variable(d["concat_bias"], dtype=np.float32)
        return weights

    def loss(self, feat_index, feat_value, label, dropout_keep_fm, dropout_keep_deep, key):
        """The original's graph from ``feat_index`` [N, F] to ``tf.losses.log_loss``."""
        embeddings = co.nn.embedding_lookup(self.weights["feature_embeddings"],
                                            feat_index)  # None * F * K
        feat_value = jnp.reshape(feat_value, (-1, self.field_size, 1))
        embeddings = jnp.multiply(embeddings, feat_value)

        # ---------- first order term ----------
        y_first_order = co.nn.embedding_lookup(self.weights["feature_bias"],
                                               feat_index)  # None * F * 1
        y_first_order = jnp.sum(jnp.multiply(y_first_order, feat_value), 2)  # None * F
        y_first_order = dropout(y_first_order, dropout_keep_fm[0], key, 0)

        # ---------- second order term ----------
        summed_features_emb = jnp.sum(embeddings, 1)  # None * K
        summed_features_emb_square = jnp.square(summed_features_emb)
        squared_features_emb = jnp.square(embeddings)
        squared_sum_features_emb = jnp.sum(squared_features_emb, 1)  # None * K
        y_second_order = 0.5 * jnp.subtract(summed_features_emb_square,
                                            squared_sum_features_emb)  # None * K
        y_second_order = dropout(y_second_order, dropout_keep_fm[1], key, 1)

        # ---------- deep component ----------
        y_deep = jnp.reshape(embeddings, (-1, self.field_size * self.embedding_size))
        y_deep = dropout(y_deep, dropout_keep_deep[0], key, 2)
        for i in range(0, len(self.deep_layers)):
            y_deep = jnp.add(jnp.matmul(y_deep, self.weights["layer_%d" % i].value),
                             self.weights["bias_%d" % i].value)  # None * layer[i]
            y_deep = self.deep_layers_activation(y_deep)
            y_deep = dropout(y_deep, dropout_keep_deep[1 + i], key, 3 + i)

        # ---------- DeepFM ----------
        if self.use_fm and self.use_deep:
            concat_input = jnp.concatenate([y_first_order, y_second_order, y_deep], axis=1)
        elif self.use_fm:
            concat_input = jnp.concatenate([y_first_order, y_second_order], axis=1)
        else:
            concat_input = y_deep
        out = jnp.add(jnp.matmul(concat_input, self.weights["concat_projection"].value),
                      self.weights["concat_bias"].value)
        out = jax.nn.sigmoid(out)
        return log_loss(label, out)

    def fit_on_batch(self, xi, xv, y, dropout_fm=(1.0, 1.0),
                     dropout_deep=(1.0, 1.0, 1.0), key=None):
        """One step (``sess.run((loss, optimizer), feed_dict)``); returns the loss."""
        key = jax.random.PRNGKey(0) if key is None else key  # a uint32[2] key
        op = self.train_step(xi, xv, y, tuple(dropout_fm), tuple(dropout_deep), key)
        return op.loss


def batch(d: dict, rows) -> tuple:
    """``get_batch``: ids, values and labels [N, 1] of the given sample rows."""
    return (jnp.asarray(d["xi"][rows]), jnp.asarray(d["xv"][rows]),
            jnp.asarray(d["y"][rows][:, None]))


def run_port(d: dict, optimizer_type: str = "adam", learning_rate: float = 0.001,
             steps: int | None = None) -> tuple:
    """Trains on ``d["batches"]`` (the first ``steps``); returns ``(model, losses)``."""
    co.reset_default_graph()
    model = DeepFM(d, optimizer_type, learning_rate)
    losses = [float(model.fit_on_batch(*batch(d, rows))) for rows in d["batches"][:steps]]
    return model, losses


def state() -> dict:
    """Every global variable of the default graph (weights, slots, beta powers) by TF1 op
    name, as NumPy (TF1: ``tf.global_variables()``)."""
    return {v.op.name: np.asarray(v.value) for v in co.global_variables()}


def find_tf_python(arg: str | None) -> str | None:
    if arg or os.environ.get("TF_PYTHON"):
        return arg or os.environ["TF_PYTHON"]
    try:
        import tensorflow  # noqa: F401
        return sys.executable
    except ImportError:
        return None


def run_tf1_original(tf_python: str, d: dict, optimizer_type: str, learning_rate: float,
                     steps: int | None = None) -> tuple:
    """Runs ``deepfm_tf1_original.py`` (graph + Session) under ``tf_python`` on ``d``;
    returns ``(losses, {variable op name: final value})``."""
    with tempfile.TemporaryDirectory() as tmp:
        data, out = os.path.join(tmp, "data.npz"), os.path.join(tmp, "out.npz")
        np.savez(data, **d)
        cmd = [tf_python, os.path.join(HERE, "deepfm_tf1_original.py"), "--data", data,
               "--out", out, "--optimizer", optimizer_type, "--learning-rate",
               repr(learning_rate)]
        if steps is not None:
            cmd += ["--steps", str(steps)]
        subprocess.run(cmd, check=True, stderr=subprocess.DEVNULL)
        with np.load(out) as f:
            values = dict(f)
    losses = values.pop("__losses__")
    return [float(v) for v in losses], values


def load_recorded(optimizer_type: str, digest: str) -> tuple:
    """``(losses, final variables, why)`` recorded by the fixture generator, or
    ``(None, None, why not)``."""
    path = os.path.join(FIXTURES, f"{optimizer_type}.json")
    if not os.path.exists(path):
        return None, None, f"no recorded TF1 run at {path}"
    with open(path) as f:
        rec = json.load(f)
    if rec["data_sha256"] != digest:
        return None, None, "the data differs from the recorded run's (another NumPy stream?)"
    with np.load(os.path.join(FIXTURES, f"{optimizer_type}.npz")) as f:
        values = dict(f)
    return rec["loss"], values, f"recorded with TensorFlow {rec['tensorflow']}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default="adam")
    parser.add_argument("--learning-rate", type=float, default=0.001)
    parser.add_argument("--steps", type=int, default=None, help="first STEPS batches only")
    parser.add_argument("--tf-python", default=None)
    parser.add_argument("--recorded", action="store_true",
                        help="compare with the recorded TF1 run even if TensorFlow is found")
    args = parser.parse_args(argv)
    d = make_data()
    digest = data_digest(d)
    model, port = run_port(d, args.optimizer, args.learning_rate, args.steps)
    print(f"port ({args.optimizer}): {len(port)} steps, {model.train_step.trace_count} "
          f"trace(s), loss {port[0]:.5f} -> {port[-1]:.5f}")
    tf_python = None if args.recorded else find_tf_python(args.tf_python)
    if tf_python is not None:
        original, final, source = *run_tf1_original(
            tf_python, d, args.optimizer, args.learning_rate, args.steps), "run now"
    elif args.learning_rate != 0.001:
        print("the recorded TF1 runs use --learning-rate 0.001: no comparison")
        return
    else:
        original, final, source = load_recorded(args.optimizer, digest)
        if original is None:
            print(f"TensorFlow not found and {source}: no comparison (pass --tf-python)")
            return
        if args.steps is not None:
            final = None  # recorded after all the steps
    rel = np.abs(np.asarray(port) - original[:len(port)]) / np.abs(original[:len(port)])
    print(f"TF1 original ({source}): loss {original[0]:.5f} -> {original[len(port) - 1]:.5f}; "
          f"max relative difference of the losses {rel.max():.2e}")
    if final is not None:
        ours = state()
        worst = max(float(np.max(np.abs(ours[k] - v)) / max(float(np.max(np.abs(v))), 1e-30))
                    for k, v in final.items() if k in ours)
        print(f"final variables and slots: {len(final)} in TF1, names "
              f"{'equal' if set(ours) == set(final) else 'DIFFER'}; largest difference "
              f"{worst:.2e} of a variable's largest magnitude")


if __name__ == "__main__":
    main()
