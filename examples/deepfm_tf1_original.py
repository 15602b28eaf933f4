"""The TF1 original that ``deepfm.py`` ports: DeepFM for CTR prediction, in graph mode.

The model is the graph of ChenglongChen/tensorflow-DeepFM's ``DeepFM.py`` (the widely used
public TF1 DeepFM; MIT license, Copyright (c) 2017 Chenglong Chen), written out here op for
op with its variable names, shapes, initial distributions and optimizer switch:
``feature_embeddings`` looked up with ``tf.nn.embedding_lookup``, the FM first and second
order terms, the deep layers, the concat projection, ``tf.losses.log_loss``, placeholders
fed by a ``Session`` loop. Needs TensorFlow::

    python examples/deepfm_tf1_original.py --data data.npz --out out.npz --optimizer adam

Changes from the original script, each needed to run it reproducibly under TF 2.x:

1. The data, the initial weights and the batch order come from the ``.npz`` that
   ``deepfm.py`` writes (``tf.random_normal`` / ``np.random`` initial values and the
   per-epoch ``np.random.shuffle`` are replaced by arrays from it): TF's and JAX's random
   streams differ, so both runs must start from the same point.
2. The dropout keep probabilities are fed as 1.0 (the original's ``dropout_deep`` default is
   0.5): dropout's random masks would differ; the dropout ops stay in the graph.
3. ``batch_norm`` (``tf.contrib.layers.batch_norm``), the ``l2_reg`` regularizer
   (``tf.contrib.layers.l2_regularizer``) and the ``yellowfin`` optimizer (a separate
   package) are left out: ``tf.contrib`` is gone from TF 2; the first two are off by default.
4. One line added to the optimizer switch: ``elif optimizer_type == "ftrl":
   tf.train.FtrlOptimizer(learning_rate=learning_rate)`` (TF1's defaults otherwise).
5. ``import tensorflow.compat.v1 as tf`` + ``tf.disable_v2_behavior()`` (graph mode,
   reference variables, as TF1); no scikit-learn wrapper, ``fit``/``evaluate`` loop or
   ``ConfigProto``: the script trains on the given batches and writes the loss of every
   step (fetched with the train op) and every global variable (weights, slots, beta powers)
   to ``--out``.
"""

import argparse

import numpy as np
import tensorflow.compat.v1 as tf

tf.disable_v2_behavior()


class DeepFM:
    def __init__(self, d, optimizer_type="adam", learning_rate=0.001, feature_size=1000,
                 field_size=20, embedding_size=8, deep_layers=(32, 32),
                 deep_layers_activation=tf.nn.relu, use_fm=True, use_deep=True):
        self.feature_size, self.field_size = feature_size, field_size
        self.embedding_size, self.deep_layers = embedding_size, list(deep_layers)
        self.deep_layers_activation = deep_layers_activation
        self.use_fm, self.use_deep = use_fm, use_deep

        self.feat_index = tf.placeholder(tf.int32, shape=[None, None],
                                         name="feat_index")  # None * F
        self.feat_value = tf.placeholder(tf.float32, shape=[None, None],
                                         name="feat_value")  # None * F
        self.label = tf.placeholder(tf.float32, shape=[None, 1], name="label")  # None * 1
        self.dropout_keep_fm = tf.placeholder(tf.float32, shape=[None], name="dropout_keep_fm")
        self.dropout_keep_deep = tf.placeholder(tf.float32, shape=[None],
                                                name="dropout_keep_deep")
        self.weights = self._initialize_weights(d)

        self.loss = self.build_loss(self.feat_index, self.feat_value, self.label,
                                    self.dropout_keep_fm, self.dropout_keep_deep)

        if optimizer_type == "adam":
            self.optimizer = tf.train.AdamOptimizer(learning_rate=learning_rate, beta1=0.9,
                                                    beta2=0.999, epsilon=1e-8)
        elif optimizer_type == "adagrad":
            self.optimizer = tf.train.AdagradOptimizer(learning_rate=learning_rate,
                                                       initial_accumulator_value=1e-8)
        elif optimizer_type == "gd":
            self.optimizer = tf.train.GradientDescentOptimizer(learning_rate=learning_rate)
        elif optimizer_type == "momentum":
            self.optimizer = tf.train.MomentumOptimizer(learning_rate=learning_rate,
                                                        momentum=0.95)
        elif optimizer_type == "ftrl":
            self.optimizer = tf.train.FtrlOptimizer(learning_rate=learning_rate)
        else:
            raise ValueError(f"unknown optimizer_type {optimizer_type!r}")
        self.train_op = self.optimizer.minimize(self.loss)

        self.sess = tf.Session()
        self.sess.run(tf.global_variables_initializer())

    def _initialize_weights(self, d):
        weights = dict()
        weights["feature_embeddings"] = tf.Variable(d["feature_embeddings"],
                                                    name="feature_embeddings")  # M * K
        weights["feature_bias"] = tf.Variable(d["feature_bias"], name="feature_bias")  # M * 1
        for i in range(len(self.deep_layers)):
            weights["layer_%d" % i] = tf.Variable(d["layer_%d" % i], dtype=np.float32)
            weights["bias_%d" % i] = tf.Variable(d["bias_%d" % i], dtype=np.float32)
        weights["concat_projection"] = tf.Variable(d["concat_projection"], dtype=np.float32)
        weights["concat_bias"] = tf.Variable(d["concat_bias"], dtype=np.float32)
        return weights

    def build_loss(self, feat_index, feat_value, label, dropout_keep_fm, dropout_keep_deep):
        embeddings = tf.nn.embedding_lookup(self.weights["feature_embeddings"],
                                            feat_index)  # None * F * K
        feat_value = tf.reshape(feat_value, shape=[-1, self.field_size, 1])
        embeddings = tf.multiply(embeddings, feat_value)

        # ---------- first order term ----------
        y_first_order = tf.nn.embedding_lookup(self.weights["feature_bias"],
                                               feat_index)  # None * F * 1
        y_first_order = tf.reduce_sum(tf.multiply(y_first_order, feat_value), 2)  # None * F
        y_first_order = tf.nn.dropout(y_first_order, dropout_keep_fm[0])

        # ---------- second order term ----------
        summed_features_emb = tf.reduce_sum(embeddings, 1)  # None * K
        summed_features_emb_square = tf.square(summed_features_emb)
        squared_features_emb = tf.square(embeddings)
        squared_sum_features_emb = tf.reduce_sum(squared_features_emb, 1)  # None * K
        y_second_order = 0.5 * tf.subtract(summed_features_emb_square,
                                           squared_sum_features_emb)  # None * K
        y_second_order = tf.nn.dropout(y_second_order, dropout_keep_fm[1])

        # ---------- deep component ----------
        y_deep = tf.reshape(embeddings, shape=[-1, self.field_size * self.embedding_size])
        y_deep = tf.nn.dropout(y_deep, dropout_keep_deep[0])
        for i in range(0, len(self.deep_layers)):
            y_deep = tf.add(tf.matmul(y_deep, self.weights["layer_%d" % i]),
                            self.weights["bias_%d" % i])  # None * layer[i]
            y_deep = self.deep_layers_activation(y_deep)
            y_deep = tf.nn.dropout(y_deep, dropout_keep_deep[1 + i])

        # ---------- DeepFM ----------
        if self.use_fm and self.use_deep:
            concat_input = tf.concat([y_first_order, y_second_order, y_deep], axis=1)
        elif self.use_fm:
            concat_input = tf.concat([y_first_order, y_second_order], axis=1)
        else:
            concat_input = y_deep
        out = tf.add(tf.matmul(concat_input, self.weights["concat_projection"]),
                     self.weights["concat_bias"])
        out = tf.nn.sigmoid(out)
        return tf.losses.log_loss(label, out)

    def fit_on_batch(self, xi, xv, y, dropout_fm=(1.0, 1.0), dropout_deep=(1.0, 1.0, 1.0)):
        feed_dict = {self.feat_index: xi, self.feat_value: xv, self.label: y,
                     self.dropout_keep_fm: dropout_fm, self.dropout_keep_deep: dropout_deep}
        loss, _ = self.sess.run((self.loss, self.train_op), feed_dict=feed_dict)
        return loss


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--optimizer", default="adam")
    parser.add_argument("--learning-rate", type=float, default=0.001)
    parser.add_argument("--steps", type=int, default=None)
    args = parser.parse_args()
    d = dict(np.load(args.data))

    model = DeepFM(d, args.optimizer, args.learning_rate)
    losses = []
    for rows in d["batches"][:args.steps]:
        losses.append(model.fit_on_batch(d["xi"][rows], d["xv"][rows], d["y"][rows][:, None]))
    out = {v.op.name: model.sess.run(v) for v in tf.global_variables()}
    np.savez(args.out, __losses__=np.asarray(losses, np.float32), **out)


if __name__ == "__main__":
    main()
