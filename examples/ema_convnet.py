"""A CIFAR-10-tutorial-style convnet with moving averages, ported by TF1's names.

TensorFlow's CIFAR-10 tutorial (``cifar10.py`` / ``cifar10_eval.py``) builds its layers with
``tf.get_variable`` inside ``tf.variable_scope``, trains with ``GradientDescentOptimizer``
on an ``exponential_decay`` learning rate, keeps an ``ExponentialMovingAverage`` of every
trainable variable (``num_updates=global_step``), and evaluates with the averages restored
through ``Saver(ema.variables_to_restore())``. This is that program on scikit-learn's 8x8
digits (so it runs in seconds), with the TF1 calls kept as written: ``tf.`` became ``co.``,
and the graph became a ``@co.function`` step.

Run: ``python examples/ema_convnet.py [--steps N] [--plot PATH]``: trains, then evaluates
the raw weights and the moving averages (restored from a checkpoint into a fresh model, as
``cifar10_eval.py`` does) and prints both test accuracies; ``--plot`` saves the loss curve
and the learning rate.
"""

from __future__ import annotations

import argparse
import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

import compatopt as co

MOVING_AVERAGE_DECAY = 0.99


def load_digits(seed: int = 0):
    from sklearn.datasets import load_digits as _load

    d = _load()
    x = (d.images / 16.0).astype(np.float32)[..., None]  # [N, 8, 8, 1], NHWC as the tutorial
    y = d.target.astype(np.int32)
    order = np.random.RandomState(seed).permutation(len(x))
    x, y = x[order], y[order]
    return (x[:1400], y[:1400]), (x[1400:], y[1400:])


def inference(images):
    """The tutorial's ``inference``: conv -> relu -> pool, then two dense layers."""
    with co.variable_scope("conv1"):
        kernel = co.get_variable("weights", [3, 3, 1, 16],
                                 initializer=co.truncated_normal_initializer(stddev=0.1, seed=1))
        biases = co.get_variable("biases", [16], initializer=co.constant_initializer(0.0))
        conv = jax.lax.conv_general_dilated(images, kernel.value, (1, 1), "SAME",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))
        conv1 = jax.nn.relu(conv + biases)
    pool1 = jax.lax.reduce_window(conv1, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1),
                                  "SAME")
    flat = pool1.reshape(pool1.shape[0], -1)
    with co.variable_scope("local3"):
        weights = co.get_variable("weights", [flat.shape[1], 64],
                                  initializer=co.truncated_normal_initializer(stddev=0.05,
                                                                              seed=2))
        biases = co.get_variable("biases", [64], initializer=co.constant_initializer(0.1))
        local3 = jax.nn.relu(flat @ weights + biases)
    with co.variable_scope("softmax_linear"):
        weights = co.get_variable("weights", [64, 10],
                                  initializer=co.truncated_normal_initializer(stddev=0.05,
                                                                              seed=3))
        biases = co.get_variable("biases", [10], initializer=co.constant_initializer(0.0))
        return local3 @ weights + biases


def loss_fn(logits, labels):
    """``sparse_softmax_cross_entropy_with_logits``, averaged."""
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=1))


def accuracy(images, labels) -> float:
    with co.variable_scope("", reuse=True):
        logits = inference(jnp.asarray(images))
    return float(jnp.mean(jnp.argmax(logits, axis=1) == jnp.asarray(labels)))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--plot", default=None)
    args = parser.parse_args(argv)
    (x_train, y_train), (x_test, y_test) = load_digits()

    co.reset_default_graph()
    global_step = co.train.get_or_create_global_step()
    lr = co.train.exponential_decay(0.1, global_step, decay_steps=100, decay_rate=0.5,
                                    staircase=True)
    opt = co.train.GradientDescentOptimizer(lr)
    inference(jnp.asarray(x_train[:1]))  # creates the variables (the tutorial's graph build)
    ema = co.train.ExponentialMovingAverage(MOVING_AVERAGE_DECAY, global_step)
    ema.apply(co.trainable_variables())  # shadows start at the initial values

    @co.function
    def train_step(images, labels):
        def loss():
            with co.variable_scope("", reuse=True):
                return loss_fn(inference(images), labels)

        train_op = opt.minimize(loss, global_step=global_step)
        ema.apply(co.trainable_variables())  # the tutorial's control dependency
        return train_op

    rng = np.random.RandomState(1)
    losses, rates = [], []
    for _ in range(args.steps):
        idx = rng.randint(0, len(x_train), args.batch_size)
        rates.append(float(lr()))
        op = train_step(jnp.asarray(x_train[idx]), jnp.asarray(y_train[idx]))
        losses.append(float(op.loss))
    raw = accuracy(x_test, y_test)

    # cifar10_eval.py: a fresh model, the averages restored into its variables.
    ckpt_dir = tempfile.mkdtemp()
    prefix = co.train.Saver().save(None, os.path.join(ckpt_dir, "model.ckpt"),
                                   global_step=global_step)
    co.reset_default_graph()
    inference(jnp.asarray(x_test[:1]))
    shadow_names = co.train.ExponentialMovingAverage(MOVING_AVERAGE_DECAY).variables_to_restore()
    co.train.Saver(shadow_names).restore(None, prefix)
    averaged = accuracy(x_test, y_test)
    print(f"steps: {args.steps}, final loss {losses[-1]:.4f}, lr {rates[-1]:.4f}")
    print(f"test accuracy: raw weights {raw:.3f}, moving averages {averaged:.3f}")
    print(f"restored: {sorted(shadow_names)[:2]} ...")
    if args.plot:
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(losses, label="training loss")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax2 = ax.twinx()
        ax2.plot(rates, color="tab:orange", label="learning rate (exponential_decay)")
        ax2.set_ylabel("learning rate")
        ax.set_title(f"test accuracy: raw {raw:.3f}, EMA {averaged:.3f}")
        fig.legend(loc="upper right")
        fig.tight_layout()
        fig.savefig(args.plot, dpi=100)
        print(f"plot: {args.plot}")
    return {"raw": raw, "averaged": averaged, "losses": losses}


if __name__ == "__main__":
    main()
