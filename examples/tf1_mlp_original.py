"""The TF1 original that ``port_tf1_mlp.py`` ports: a graph-mode MLP classifier.

Classic TF1 style (as in the TF1 MNIST tutorials): placeholders, a graph built once, a
``Session`` loop feeding mini-batches into ``sess.run([train_op, loss])``, Adam with an
``exponential_decay`` learning rate driven by the global step. Needs TensorFlow::

    python examples/tf1_mlp_original.py --data digits.npz --out tf1_losses.json

The only change from a stock script is that the data, the initial weights and the batch
order come from the ``.npz`` written by ``port_tf1_mlp.py`` (TF's and JAX's random number
generators differ), so that both runs start from the same point.
"""

import argparse
import json

import numpy as np
import tensorflow.compat.v1 as tf

tf.disable_v2_behavior()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    d = np.load(args.data)

    x = tf.placeholder(tf.float32, [None, 64], name="x")
    y_ = tf.placeholder(tf.int32, [None], name="labels")
    W1 = tf.Variable(d["w1"], name="W1")
    b1 = tf.Variable(d["b1"], name="b1")
    W2 = tf.Variable(d["w2"], name="W2")
    b2 = tf.Variable(d["b2"], name="b2")
    h = tf.nn.relu(tf.matmul(x, W1) + b1)
    logits = tf.matmul(h, W2) + b2
    loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y_,
                                                                         logits=logits))
    global_step = tf.train.get_or_create_global_step()
    lr = tf.train.exponential_decay(0.01, global_step, 100, 0.5, staircase=True)
    train_op = tf.train.AdamOptimizer(lr).minimize(loss, global_step=global_step)

    losses = []
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        for batch in d["batches"]:
            _, value = sess.run([train_op, loss], feed_dict={x: d["x"][batch],
                                                             y_: d["y"][batch]})
            losses.append(float(value))
    with open(args.out, "w") as f:
        json.dump(losses, f)


if __name__ == "__main__":
    main()
