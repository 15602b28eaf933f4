"""Train a small MLP classifier on scikit-learn's handwritten digits with a TF1 rule.

The data set (1,797 8x8 images, 10 classes) ships inside the scikit-learn package, so this
runs offline. The step is one jitted XLA computation with the parameters and optimizer state
donated; the update is TF1's Adam (or any other rule, ``--optimizer``), bit for bit.

    python examples/train_digits.py                 # Adam, 30 epochs
    python examples/train_digits.py --optimizer rmsprop --epochs 10
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import compatopt as co

RULES = {
    "adam": lambda: co.adam(learning_rate=0.001),
    "gradient_descent": lambda: co.gradient_descent(learning_rate=0.1),
    "momentum": lambda: co.momentum(learning_rate=0.05, momentum=0.9, use_nesterov=True),
    "adagrad": lambda: co.adagrad(learning_rate=0.1),
    "adagrad_da": lambda: co.adagrad_da(learning_rate=0.1),
    "adadelta": lambda: co.adadelta(learning_rate=1.0),
    "ftrl": lambda: co.ftrl(learning_rate=0.1),
    "proximal_gradient_descent": lambda: co.proximal_gradient_descent(learning_rate=0.1),
    "proximal_adagrad": lambda: co.proximal_adagrad(learning_rate=0.1),
    "rmsprop": lambda: co.rmsprop(learning_rate=0.001, momentum=0.9, centered=True),
}


def load_digits_split(seed: int = 0):
    """Standardised digits features and labels, split 80/20 into train and test."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int32)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    cut = int(0.8 * len(x))
    return (x[:cut], y[:cut]), (x[cut:], y[cut:])


def init_mlp(key: jax.Array, sizes=(64, 128, 10)) -> dict:
    """Glorot-uniform weights and zero biases, as ``tf.compat.v1.layers.dense``."""
    params = {}
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        key, sub = jax.random.split(key)
        limit = np.sqrt(6.0 / (n_in + n_out))
        params[f"dense_{i}/kernel"] = jax.random.uniform(sub, (n_in, n_out), jnp.float32,
                                                         -limit, limit)
        params[f"dense_{i}/bias"] = jnp.zeros((n_out,), jnp.float32)
    return params


def logits_fn(params: dict, x: jax.Array) -> jax.Array:
    h = jax.nn.relu(x @ params["dense_0/kernel"] + params["dense_0/bias"])
    return h @ params["dense_1/kernel"] + params["dense_1/bias"]


def loss_fn(params: dict, x: jax.Array, y: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy (``tf.losses.sparse_softmax_cross_entropy``)."""
    logp = jax.nn.log_softmax(logits_fn(params, x))
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))


def progress(epoch: int, epochs: int, loss: float, acc: float, width: int = 30) -> None:
    done = int(width * epoch / epochs)
    bar = "#" * done + "-" * (width - done)
    sys.stdout.write(f"\r[{bar}] epoch {epoch:3d}/{epochs}  loss {loss:.4f}  "
                     f"test acc {acc:.3f}")
    sys.stdout.flush()


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--optimizer", choices=sorted(RULES), default="adam")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)

    (x_train, y_train), (x_test, y_test) = load_digits_split()
    rule = RULES[args.optimizer]()
    params = init_mlp(jax.random.PRNGKey(0))
    state = rule.init(params)

    @jax.jit
    def accuracy(params, x, y):
        return jnp.mean(jnp.argmax(logits_fn(params, x), axis=1) == y)

    def step(params, state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        params, state = rule.apply(grads, state, params)
        return params, state, loss

    step = jax.jit(step, donate_argnums=(0, 1))

    print(f"compatopt {co.__version__}: {rule!r} on {jax.devices()[0].platform}, "
          f"{len(x_train)} training images")
    start = time.perf_counter()
    steps_per_epoch = len(x_train) // args.batch_size
    rng = np.random.default_rng(1)
    acc = 0.0
    for epoch in range(1, args.epochs + 1):
        order = rng.permutation(len(x_train))
        losses = []
        for i in range(steps_per_epoch):
            idx = order[i * args.batch_size:(i + 1) * args.batch_size]
            params, state, loss = step(params, state, x_train[idx], y_train[idx])
            losses.append(loss)
        acc = float(accuracy(params, x_test, y_test))
        progress(epoch, args.epochs, float(np.mean(jax.device_get(losses))), acc)
    elapsed = time.perf_counter() - start
    print(f"\n{args.epochs * steps_per_epoch} steps in {elapsed:.1f} s; "
          f"test accuracy {acc:.3f}")
    return acc


if __name__ == "__main__":
    main()
