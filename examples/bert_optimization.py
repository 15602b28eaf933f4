# coding=utf-8
# Copyright 2018 The Google AI Language Team Authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Functions and classes related to optimization (weight updates).

compatopt port of ``bert_optimization_tf1_original.py``: google-research/bert's
``optimization.py`` (``create_optimizer``: ``polynomial_decay`` + linear warmup, BERT's
``AdamWeightDecayOptimizer``, ``tf.gradients``, ``clip_by_global_norm``, ``tf.group``) and a
tiny BERT-like classifier trained with it, on compatopt instead of TensorFlow.

**What changed in BERT's code** (everything above ``# --- Not part of BERT's
optimization.py``): the import, ``import tensorflow as tf`` -> ``import compatopt as co``, so
``tf.X`` is ``co.X`` on every line (``co.train.polynomial_decay``, ``co.cast``,
``co.gradients``, ``co.clip_by_global_norm``, ``co.group``, ``co.get_variable``,
``co.multiply``, ``co.sqrt`` ...) with nothing else on those lines edited, and three other
lines. The import and those three carry ``# port: OLD -> NEW`` (``tests/test_port_bert.py``
checks there is no other difference, and that the TF1 original is BERT's file):

* ``tf.contrib.tpu.CrossShardOptimizer`` -> ``co.train.CrossShardOptimizer`` (TF moved it to
  ``tf.compat.v1.tpu`` too; reached only with ``use_tpu=True``);
* ``shape=param.shape.as_list()`` -> ``shape=list(param.shape)``, twice: a
  ``compatopt.Variable``'s ``shape`` is a tuple, not a ``TensorShape``.

No line needed a ``.value`` read (BERT reads variables only through ``tf`` ops and
operators) nor ``compatopt.tf_math``: ``co.cast``, ``co.multiply``, ``co.square``,
``co.sqrt`` of a Variable or of a lazy value are :class:`compatopt.train.GraphTensor`\\ s,
TF1 graph tensors evaluated when they are read (``param.assign(next_param)``), with TF's
rounding (no fused multiply-add under ``jit``) and Grappler's rewrites. So the warmup is
computed as TF1 graph mode computes it, ``step * fl(init_lr * fl(1 / num_warmup_steps))``,
not as written (``init_lr * (step / num_warmup_steps)`` differs in the last bit at 3 of the
10 warmup steps here); the embedding's ``IndexedSlices`` gradient is densified by
``co.multiply``/``co.square`` as TF's conversion does it (``unsorted_segment_sum``);
``co.gradients(loss, tvars)`` differentiates ``loss``, which is a callable.

**The program around it** (below that line): the model is the TF1 original's with ``tf.X`` ->
``jnp.X`` / ``jax.nn.X`` / ``jax.lax.X`` / ``co.gather`` and the variables read with
``.value``; the graph-and-``Session`` loop is a step function (:func:`make_train_step`):
placeholders are its arguments, the loss tensor is ``lambda: create_model(...)``, and
``sess.run([loss, train_op])`` is ``value = loss(); create_optimizer(loss, ...)`` inside the
step, compiled once by ``co.function``. The graph-building code runs inside the step, more
than once (``co.function``'s first eager run and its trace), so the step opens
``variable_scope(get_variable_scope(), reuse=AUTO_REUSE)`` (TF2's idiom for TF1 code in a
``tf.function``): ``get_variable`` (the model's and ``adam_m``/``adam_v``) finds what the first
run created. The variables keep TF1's names (``bert/embeddings/word_embeddings/adam_m`` ...).

**Exactness** (``tests/test_port_bert.py`` against TF 2.21 graph mode,
``tools/make_tf1_bert_fixtures.py``): the learning rate of every step is TF1's bit for bit
(read before the step's increment, as the code reads; BERT's ``create_optimizer`` races
there in TF1, see the original's docstring); fed TF1's recorded clipped gradients, BERT's
optimizer gives TF1's variables, ``adam_m`` and ``adam_v`` bit for bit after 30 steps, eagerly
and compiled. The whole training uses XLA's forward and backward pass instead of TF's
kernels, which round differently in the last bit (already the first loss): measured, the
losses agree to 2.6e-7 relative and the final variables to 2.6e-6 absolute.

Run: ``python examples/bert_optimization.py [--steps N] [--eager] [--tf-python PYTHON]``:
trains 30 steps (a few seconds) and compares with the recorded TF1 run (or with the TF1
original run now, under ``PYTHON``).
"""

from __future__ import absolute_import
from __future__ import division
from __future__ import print_function

import re
import compatopt as co  # port: import tensorflow as tf -> import compatopt as co


def create_optimizer(loss, init_lr, num_train_steps, num_warmup_steps, use_tpu):
  """Creates an optimizer training op."""
  global_step = co.train.get_or_create_global_step()

  learning_rate = co.constant(value=init_lr, shape=[], dtype=co.float32)

  # Implements linear decay of the learning rate.
  learning_rate = co.train.polynomial_decay(
      learning_rate,
      global_step,
      num_train_steps,
      end_learning_rate=0.0,
      power=1.0,
      cycle=False)

  # Implements linear warmup. I.e., if global_step < num_warmup_steps, the
  # learning rate will be `global_step/num_warmup_steps * init_lr`.
  if num_warmup_steps:
    global_steps_int = co.cast(global_step, co.int32)
    warmup_steps_int = co.constant(num_warmup_steps, dtype=co.int32)

    global_steps_float = co.cast(global_steps_int, co.float32)
    warmup_steps_float = co.cast(warmup_steps_int, co.float32)

    warmup_percent_done = global_steps_float / warmup_steps_float
    warmup_learning_rate = init_lr * warmup_percent_done

    is_warmup = co.cast(global_steps_int < warmup_steps_int, co.float32)
    learning_rate = (
        (1.0 - is_warmup) * learning_rate + is_warmup * warmup_learning_rate)

  # It is recommended that you use this optimizer for fine tuning, since this
  # is how the model was trained (note that the Adam m/v variables are NOT
  # loaded from init_checkpoint.)
  optimizer = AdamWeightDecayOptimizer(
      learning_rate=learning_rate,
      weight_decay_rate=0.01,
      beta_1=0.9,
      beta_2=0.999,
      epsilon=1e-6,
      exclude_from_weight_decay=["LayerNorm", "layer_norm", "bias"])

  if use_tpu:
    optimizer = co.train.CrossShardOptimizer(optimizer)  # port: tf.contrib.tpu -> co.train

  tvars = co.trainable_variables()
  grads = co.gradients(loss, tvars)

  # This is how the model was pre-trained.
  (grads, _) = co.clip_by_global_norm(grads, clip_norm=1.0)

  train_op = optimizer.apply_gradients(
      zip(grads, tvars), global_step=global_step)

  # Normally the global step update is done inside of `apply_gradients`.
  # However, `AdamWeightDecayOptimizer` doesn't do this. But if you use
  # a different optimizer, you should probably take this line out.
  new_global_step = global_step + 1
  train_op = co.group(train_op, [global_step.assign(new_global_step)])
  return train_op


class AdamWeightDecayOptimizer(co.train.Optimizer):
  """A basic Adam optimizer that includes "correct" L2 weight decay."""

  def __init__(self,
               learning_rate,
               weight_decay_rate=0.0,
               beta_1=0.9,
               beta_2=0.999,
               epsilon=1e-6,
               exclude_from_weight_decay=None,
               name="AdamWeightDecayOptimizer"):
    """Constructs a AdamWeightDecayOptimizer."""
    super(AdamWeightDecayOptimizer, self).__init__(False, name)

    self.learning_rate = learning_rate
    self.weight_decay_rate = weight_decay_rate
    self.beta_1 = beta_1
    self.beta_2 = beta_2
    self.epsilon = epsilon
    self.exclude_from_weight_decay = exclude_from_weight_decay

  def apply_gradients(self, grads_and_vars, global_step=None, name=None):
    """See base class."""
    assignments = []
    for (grad, param) in grads_and_vars:
      if grad is None or param is None:
        continue

      param_name = self._get_variable_name(param.name)

      m = co.get_variable(
          name=param_name + "/adam_m",
          shape=list(param.shape),  # port: param.shape.as_list() -> list(param.shape)
          dtype=co.float32,
          trainable=False,
          initializer=co.zeros_initializer())
      v = co.get_variable(
          name=param_name + "/adam_v",
          shape=list(param.shape),  # port: param.shape.as_list() -> list(param.shape)
          dtype=co.float32,
          trainable=False,
          initializer=co.zeros_initializer())

      # Standard Adam update.
      next_m = (
          co.multiply(self.beta_1, m) + co.multiply(1.0 - self.beta_1, grad))
      next_v = (
          co.multiply(self.beta_2, v) + co.multiply(1.0 - self.beta_2,
                                                    co.square(grad)))

      update = next_m / (co.sqrt(next_v) + self.epsilon)

      # Just adding the square of the weights to the loss function is *not*
      # the correct way of using L2 regularization/weight decay with Adam,
      # since that will interact with the m and v parameters in strange ways.
      #
      # Instead we want ot decay the weights in a manner that doesn't interact
      # with the m/v parameters. This is equivalent to adding the square
      # of the weights to the loss with plain (non-momentum) SGD.
      if self._do_use_weight_decay(param_name):
        update += self.weight_decay_rate * param

      update_with_lr = self.learning_rate * update

      next_param = param - update_with_lr

      assignments.extend(
          [param.assign(next_param),
           m.assign(next_m),
           v.assign(next_v)])
    return co.group(*assignments, name=name)

  def _do_use_weight_decay(self, param_name):
    """Whether to use L2 weight decay for `param_name`."""
    if not self.weight_decay_rate:
      return False
    if self.exclude_from_weight_decay:
      for r in self.exclude_from_weight_decay:
        if re.search(r, param_name) is not None:
          return False
    return True

  def _get_variable_name(self, param_name):
    """Get the variable name from the tensor name."""
    m = re.match("^(.*):\\d+$", param_name)
    if m is not None:
      param_name = m.group(1)
    return param_name


# --- Not part of BERT's optimization.py: the tiny classifier and its training step. ---------

import argparse  # noqa: E402
import hashlib  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ORIGINAL = os.path.join(HERE, "bert_optimization_tf1_original.py")
RECORDED = os.path.normpath(os.path.join(HERE, "..", "tests", "fixtures", "tf1", "programs",
                                         "bert", "bert.npz"))

# The lines of BERT's code above that differ from the TF1 original by more than `tf.` ->
# `co.` carry a `# port: OLD -> NEW` comment; tests/test_port_bert.py checks there are no
# others and that the TF1 original is BERT's file.
PORT_MARK = "  # port: "


def make_data(steps: int = 30, batch: int = 8, seq: int = 5, vocab: int = 40,
              hidden: int = 8, intermediate: int = 16, labels: int = 3,
              seed: int = 0) -> dict:
    """Token ids, labels, the configuration and the initial weights (keyed by the
    variables' names), for both programs. The label is the first token's id mod 3."""
    rs = np.random.RandomState(seed)
    ids = rs.randint(0, vocab, (steps, batch, seq)).astype(np.int32)
    f32 = np.float32
    return {
        "input_ids": ids, "label_ids": (ids[..., 0] % labels).astype(np.int32),
        "init_lr": f32(0.02), "num_train_steps": np.int32(steps),
        "num_warmup_steps": np.int32(steps // 3),
        "bert/embeddings/word_embeddings": (rs.standard_normal((vocab, hidden)) * 0.5).astype(f32),
        "bert/embeddings/LayerNorm/beta": (rs.standard_normal(hidden) * 0.1).astype(f32),
        "bert/embeddings/LayerNorm/gamma": (1 + rs.standard_normal(hidden) * 0.1).astype(f32),
        "bert/encoder/layer_0/intermediate/dense/kernel":
            (rs.standard_normal((hidden, intermediate)) * 0.4).astype(f32),
        "bert/encoder/layer_0/intermediate/dense/bias":
            (rs.standard_normal(intermediate) * 0.1).astype(f32),
        "output_weights": (rs.standard_normal((labels, intermediate)) * 0.3).astype(f32),
        "output_bias": np.zeros(labels, f32),
    }


def data_digest(d: dict) -> str:
    """SHA-256 of everything in ``d``: ties a recorded TF1 run to its inputs."""
    h = hashlib.sha256()
    for k in sorted(d):
        a = np.ascontiguousarray(d[k])
        h.update(f"{k}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def layer_norm(x, d, name="LayerNorm"):
    """The TF1 original's ``layer_norm`` (contrib's arithmetic), ``tf.X`` -> ``jnp.X``."""
    with co.variable_scope(name) as scope:
        beta = co.get_variable("beta", initializer=d[scope.name + "/beta"])
        gamma = co.get_variable("gamma", initializer=d[scope.name + "/gamma"])
        mean = jnp.mean(x, axis=-1, keepdims=True)
        variance = jnp.mean(jnp.square(x - jax.lax.stop_gradient(mean)),
                            axis=-1, keepdims=True)
        inv = jax.lax.rsqrt(variance + 1e-12) * gamma.value
        return x * inv + (beta.value - mean * inv)


def create_model(input_ids, label_ids, d):
    """The TF1 original's ``create_model``, ``tf.X`` -> ``jnp.X`` / ``jax.nn.X`` /
    ``co.gather``, variables read with ``.value``."""
    num_labels = d["output_bias"].shape[0]
    with co.variable_scope("bert"):
        with co.variable_scope("embeddings") as scope:
            embedding_table = co.get_variable(
                "word_embeddings", initializer=d[scope.name + "/word_embeddings"])
            x = co.gather(embedding_table, input_ids)             # [B, T, H]
            x = layer_norm(x, d)
        with co.variable_scope("encoder/layer_0/intermediate/dense") as scope:
            kernel = co.get_variable("kernel", initializer=d[scope.name + "/kernel"])
            bias = co.get_variable("bias", initializer=d[scope.name + "/bias"])
            h = jnp.reshape(x, [-1, x.shape[-1]])                  # [B*T, H]
            h = jnp.tanh(jnp.matmul(h, kernel.value) + bias.value)  # [B*T, I]
            h = jnp.reshape(h, [-1, input_ids.shape[1], kernel.shape[1]])
        pooled = jnp.mean(h, axis=1)                               # [B, I]
    output_weights = co.get_variable("output_weights", initializer=d["output_weights"])
    output_bias = co.get_variable("output_bias", initializer=d["output_bias"])
    logits = jnp.matmul(pooled, output_weights.value.T)            # transpose_b=True
    logits = logits + output_bias.value                            # tf.nn.bias_add
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    one_hot_labels = jax.nn.one_hot(label_ids, num_labels, dtype=jnp.float32)
    per_example_loss = -jnp.sum(one_hot_labels * log_probs, axis=-1)
    return jnp.mean(per_example_loss)


def make_train_step(d: dict, compiled: bool = True):
    """The TF1 graph (model + ``create_optimizer``) as one step; ``sess.run([loss,
    train_op])`` becomes a call with the batch, returning the loss before the update."""
    init_lr, num_train_steps = float(d["init_lr"]), int(d["num_train_steps"])
    num_warmup_steps = int(d["num_warmup_steps"])

    def train_step(input_ids, label_ids):
        # The step's Python runs more than once (compatopt.function's first, eager run and
        # its trace; every step when eager): get_variable finds what the first run created.
        with co.variable_scope(co.get_variable_scope(), reuse=co.AUTO_REUSE):
            loss = lambda: create_model(input_ids, label_ids, d)  # noqa: E731 (the tensor)
            value = loss()                                    # the fetched loss
            create_optimizer(loss, init_lr, num_train_steps, num_warmup_steps,
                             use_tpu=False)                   # runs train_op
        return value

    return co.function(train_step) if compiled else train_step


def train(d: dict, steps: int | None = None, compiled: bool = True) -> dict:
    """Runs the port on a fresh graph; returns the losses and every variable's final value
    (keyed as the TF1 original names them), plus the variables' names."""
    co.reset_default_graph()
    co.train.create_global_step()  # before create_optimizer, as the TF1 original does
    step = make_train_step(d, compiled)
    n = d["input_ids"].shape[0] if steps is None else steps
    ids, labels = jnp.asarray(d["input_ids"]), jnp.asarray(d["label_ids"])
    losses = np.asarray([float(step(ids[k], labels[k])) for k in range(n)], np.float32)
    if compiled:
        assert step.trace_count == 1, step.trace_count
    out = {"loss": losses, "trainable": [v.op.name for v in co.trainable_variables()],
           "global_variables": [v.op.name for v in co.global_variables()]}
    out.update({f"final/{v.op.name}": v.numpy() for v in co.global_variables()})
    return out


def run_tf1_original(tf_python: str, d: dict) -> dict:
    """Runs ``bert_optimization_tf1_original.py`` (graph + Session) under ``tf_python``."""
    with tempfile.TemporaryDirectory() as tmp:
        data, out = os.path.join(tmp, "data.npz"), os.path.join(tmp, "tf1.npz")
        np.savez(data, **d)
        subprocess.run([tf_python, ORIGINAL, "--data", data, "--out", out], check=True,
                       stderr=subprocess.DEVNULL)
        with np.load(out) as f:
            return dict(f)


def load_recorded(path: str, d: dict) -> dict | None:
    """The recorded TF1 run, if it was recorded on ``d``."""
    if not os.path.exists(path):
        return None
    with np.load(path) as f:
        rec = dict(f)
    return rec if str(rec["data_sha256"]) == data_digest(d) else None


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description="BERT's optimization.py on compatopt")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--eager", action="store_true", help="run the step op by op")
    parser.add_argument("--tf-python", default=os.environ.get("TF_PYTHON"),
                        help="a Python with TensorFlow: run the TF1 original now")
    args = parser.parse_args(argv)
    d = make_data(steps=args.steps)
    port = train(d, compiled=not args.eager)
    print(f"port ({'eager' if args.eager else 'compatopt.function'}): {args.steps} steps, "
          f"loss {port['loss'][0]:.5f} -> {port['loss'][-1]:.5f}")
    print("slots:", [n for n in port["global_variables"] if n.endswith("adam_m")][:2], "...")
    if args.tf_python:
        tf1, source = run_tf1_original(args.tf_python, d), "run now"
    else:
        tf1, source = load_recorded(RECORDED, d), "recorded"
    if tf1 is None:
        print("no TF1 run for this data (pass --tf-python, or use the default --steps)")
        return port
    rel = np.abs(port["loss"] - tf1["loss"]) / np.abs(tf1["loss"])
    worst = max(float(np.max(np.abs(port[k] - tf1[k]))) for k in port
                if k.startswith("final/") and k != "final/global_step")
    same = [n for n in port["global_variables"]] == [str(n) for n in tf1["global_variables"]]
    print(f"TF1 original ({source}): loss {tf1['loss'][0]:.5f} -> {tf1['loss'][-1]:.5f}; "
          f"loss curves: max relative difference {rel.max():.1e}; final variables and "
          f"adam_m/adam_v: max abs difference {worst:.1e}; variable names "
          f"{'identical' if same else 'DIFFER'}")
    return port


if __name__ == "__main__":
    main(sys.argv[1:])
