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

compatopt example: the TF1 original that ``examples/bert_optimization.py`` ports. Everything
above the line ``# --- Not part of BERT's optimization.py`` is google-research/bert's
``optimization.py`` (commit eedf571, the head of ``master``; Apache-2.0) byte for byte,
2-space indentation included, except this paragraph of the docstring and ONE change, the
import (two lines marked ``# compatopt example``): ``import tensorflow as tf`` became
``import tensorflow.compat.v1 as tf`` + ``tf.disable_v2_behavior()``, as TensorFlow 2.21 has
the TF1 API only under ``compat.v1`` (graph mode, ``Session``, Grappler on, as TF 1.15 ran
it). ``tf.contrib.tpu`` is reached only with ``use_tpu=True``, never passed here.
``tests/test_port_bert.py`` checks this against the SHA-256 of BERT's file.

Below that line, not BERT's: a tiny BERT-like classifier (BERT's variable names:
``bert/embeddings/word_embeddings`` read with ``tf.gather``, ``bert/embeddings/LayerNorm``,
one dense layer ``bert/encoder/layer_0/intermediate/dense/{kernel,bias}``, and
``run_classifier.py``'s ``output_weights``/``output_bias`` head and loss) and a
``sess.run([loss, train_op])`` loop. Differences from a stock BERT run:

* the data (token ids, labels), the configuration and the initial weights come from the
  ``.npz`` that ``bert_optimization.py`` writes (TF's and JAX's random generators differ),
  read with ``get_variable(..., initializer=<array>)``;
* ``tf.contrib.layers.layer_norm`` (gone in TF 2) is written out with the ops contrib used
  (``moments``, then ``batch_normalization``'s ``x * inv + (beta - mean * inv)``);
* the global step is created before ``create_optimizer`` (as BERT's ``TPUEstimator`` does),
  as a resource variable, and the ``Session`` runs on one thread. BERT's ``create_optimizer``
  has a data race (google-research/bert issue #1050): nothing orders the learning rate's
  read of the step before ``global_step.assign(global_step + 1)``. With TF1's default (ref)
  step variable TF 2.21 mostly reads it after the increment (``lr(step + 1)``, now and then
  ``lr(step)``, run to run); a resource step on one thread reads it before, every time, as
  the program is written (and as the port computes);
* recording: each step also fetches the learning rate and the clipped gradients the
  optimizer consumed, found by walking the graph back from ``train_op`` (read only:
  :func:`optimizer_inputs`), and at the end every variable (``adam_m``/``adam_v`` included).

Run: ``python examples/bert_optimization_tf1_original.py --data d.npz --out tf1.npz``
(needs TensorFlow; ``bert_optimization.py --tf-python`` and ``tools/make_tf1_bert_fixtures.py``
call it).
"""

from __future__ import absolute_import
from __future__ import division
from __future__ import print_function

import re
import tensorflow.compat.v1 as tf  # compatopt example: was `import tensorflow as tf`
tf.disable_v2_behavior()  # compatopt example: added


def create_optimizer(loss, init_lr, num_train_steps, num_warmup_steps, use_tpu):
  """Creates an optimizer training op."""
  global_step = tf.train.get_or_create_global_step()

  learning_rate = tf.constant(value=init_lr, shape=[], dtype=tf.float32)

  # Implements linear decay of the learning rate.
  learning_rate = tf.train.polynomial_decay(
      learning_rate,
      global_step,
      num_train_steps,
      end_learning_rate=0.0,
      power=1.0,
      cycle=False)

  # Implements linear warmup. I.e., if global_step < num_warmup_steps, the
  # learning rate will be `global_step/num_warmup_steps * init_lr`.
  if num_warmup_steps:
    global_steps_int = tf.cast(global_step, tf.int32)
    warmup_steps_int = tf.constant(num_warmup_steps, dtype=tf.int32)

    global_steps_float = tf.cast(global_steps_int, tf.float32)
    warmup_steps_float = tf.cast(warmup_steps_int, tf.float32)

    warmup_percent_done = global_steps_float / warmup_steps_float
    warmup_learning_rate = init_lr * warmup_percent_done

    is_warmup = tf.cast(global_steps_int < warmup_steps_int, tf.float32)
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
    optimizer = tf.contrib.tpu.CrossShardOptimizer(optimizer)

  tvars = tf.trainable_variables()
  grads = tf.gradients(loss, tvars)

  # This is how the model was pre-trained.
  (grads, _) = tf.clip_by_global_norm(grads, clip_norm=1.0)

  train_op = optimizer.apply_gradients(
      zip(grads, tvars), global_step=global_step)

  # Normally the global step update is done inside of `apply_gradients`.
  # However, `AdamWeightDecayOptimizer` doesn't do this. But if you use
  # a different optimizer, you should probably take this line out.
  new_global_step = global_step + 1
  train_op = tf.group(train_op, [global_step.assign(new_global_step)])
  return train_op


class AdamWeightDecayOptimizer(tf.train.Optimizer):
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

      m = tf.get_variable(
          name=param_name + "/adam_m",
          shape=param.shape.as_list(),
          dtype=tf.float32,
          trainable=False,
          initializer=tf.zeros_initializer())
      v = tf.get_variable(
          name=param_name + "/adam_v",
          shape=param.shape.as_list(),
          dtype=tf.float32,
          trainable=False,
          initializer=tf.zeros_initializer())

      # Standard Adam update.
      next_m = (
          tf.multiply(self.beta_1, m) + tf.multiply(1.0 - self.beta_1, grad))
      next_v = (
          tf.multiply(self.beta_2, v) + tf.multiply(1.0 - self.beta_2,
                                                    tf.square(grad)))

      update = next_m / (tf.sqrt(next_v) + self.epsilon)

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
    return tf.group(*assignments, name=name)

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


# --- Not part of BERT's optimization.py: a tiny BERT-like classifier and its Session loop. ---

import argparse  # noqa: E402

import numpy as np  # noqa: E402


def layer_norm(x, d, name="LayerNorm"):
    """``tf.contrib.layers.layer_norm(x, begin_norm_axis=-1, begin_params_axis=-1)``: beta,
    then gamma (contrib's creation order), ``nn.moments`` and ``nn.batch_normalization``."""
    with tf.variable_scope(name) as scope:
        beta = tf.get_variable("beta", initializer=d[scope.name + "/beta"])
        gamma = tf.get_variable("gamma", initializer=d[scope.name + "/gamma"])
        mean = tf.reduce_mean(x, axis=[-1], keepdims=True)
        variance = tf.reduce_mean(tf.squared_difference(x, tf.stop_gradient(mean)),
                                  axis=[-1], keepdims=True)
        inv = tf.math.rsqrt(variance + 1e-12) * gamma
        return x * inv + (beta - mean * inv)


def create_model(input_ids, label_ids, d):
    """Embeddings + LayerNorm, one dense layer, mean pooling, ``run_classifier``'s head."""
    num_labels = d["output_bias"].shape[0]
    with tf.variable_scope("bert"):
        with tf.variable_scope("embeddings") as scope:
            embedding_table = tf.get_variable(
                "word_embeddings", initializer=d[scope.name + "/word_embeddings"])
            x = tf.gather(embedding_table, input_ids)            # [B, T, H]
            x = layer_norm(x, d)
        with tf.variable_scope("encoder/layer_0/intermediate/dense") as scope:
            kernel = tf.get_variable("kernel", initializer=d[scope.name + "/kernel"])
            bias = tf.get_variable("bias", initializer=d[scope.name + "/bias"])
            h = tf.reshape(x, [-1, x.shape[-1]])                  # [B*T, H]
            h = tf.tanh(tf.matmul(h, kernel) + bias)              # [B*T, I]
            h = tf.reshape(h, [-1, input_ids.shape[1], kernel.shape[1]])
        pooled = tf.reduce_mean(h, axis=1)                        # [B, I]
    output_weights = tf.get_variable("output_weights", initializer=d["output_weights"])
    output_bias = tf.get_variable("output_bias", initializer=d["output_bias"])
    logits = tf.matmul(pooled, output_weights, transpose_b=True)
    logits = tf.nn.bias_add(logits, output_bias)
    log_probs = tf.nn.log_softmax(logits, axis=-1)
    one_hot_labels = tf.one_hot(label_ids, depth=num_labels, dtype=tf.float32)
    per_example_loss = -tf.reduce_sum(one_hot_labels * log_probs, axis=-1)
    return tf.reduce_mean(per_example_loss)


def optimizer_inputs(train_op, tvars):
    """The learning rate and each variable's gradient as ``AdamWeightDecayOptimizer`` used
    them, found in the graph (``train_op`` -> ``param.assign(param - lr * update)`` and
    ``m.assign(beta_1 * m + (1 - beta_1) * grad)``). A gradient that was an
    ``IndexedSlices`` comes with the values and indices it was densified from."""
    assigns = {}
    for group in train_op.control_inputs:
        for op in group.control_inputs:
            if op.type == "Assign":
                assigns[op.inputs[0].op.name] = op
    lr, grads = None, {}
    for var in tvars:
        name = var.op.name
        next_param = assigns[name].inputs[1].op                  # param - update_with_lr
        lr = next_param.inputs[1].op.inputs[0]                    # self.learning_rate
        next_m = assigns[name + "/adam_m"].inputs[1].op            # Mul(...) + Mul(..., grad)
        grad = next_m.inputs[1].op.inputs[1]
        entry = {"dense": grad}
        if grad.op.type == "UnsortedSegmentSum":                    # IndexedSlices -> Tensor
            entry.update(values=grad.op.inputs[0], indices=grad.op.inputs[1])
        grads[name] = entry
    return lr, grads


def main(argv=None):
    parser = argparse.ArgumentParser(description="BERT's optimization.py, TF1 graph mode")
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--no-recording", action="store_true",
                        help="fetch only [loss, train_op] (to check the recording is inert)")
    args = parser.parse_args(argv)
    d = dict(np.load(args.data))

    input_ids = tf.placeholder(tf.int32, d["input_ids"].shape[1:], name="input_ids")
    label_ids = tf.placeholder(tf.int32, d["label_ids"].shape[1:], name="label_ids")
    with tf.variable_scope("", use_resource=True):  # see the module docstring: the race
        tf.train.create_global_step()
    loss = create_model(input_ids, label_ids, d)
    train_op = create_optimizer(loss, float(d["init_lr"]), int(d["num_train_steps"]),
                                int(d["num_warmup_steps"]), use_tpu=False)
    tvars = tf.trainable_variables()
    fetches = {"loss": loss, "train_op": train_op}
    if not args.no_recording:
        fetches["lr"], fetches["grads"] = optimizer_inputs(train_op, tvars)

    rows = {}
    one_thread = tf.ConfigProto(inter_op_parallelism_threads=1,
                                intra_op_parallelism_threads=1)
    with tf.Session(config=one_thread) as sess:
        sess.run(tf.global_variables_initializer())
        for k in range(d["input_ids"].shape[0]):
            out = sess.run(fetches, {input_ids: d["input_ids"][k],
                                     label_ids: d["label_ids"][k]})
            rows.setdefault("loss", []).append(out["loss"])
            if "lr" in out:
                rows.setdefault("lr", []).append(out["lr"])
                for n, g in out["grads"].items():
                    for kind, value in g.items():
                        rows.setdefault(f"grad_{kind}/{n}", []).append(value)
        variables = tf.global_variables()
        final = dict(zip([f"final/{v.op.name}" for v in variables], sess.run(variables)))
    result = {k: np.stack(v) for k, v in rows.items()}
    result.update(final)
    result["tvars"] = np.array([v.op.name for v in tvars])
    result["global_variables"] = np.array([v.op.name for v in variables])
    np.savez(args.out, **result)


if __name__ == "__main__":
    main()
