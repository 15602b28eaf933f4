"""``tf1_mlp_original.py`` ported to compatopt: the graph-and-Session loop becomes a
``compatopt.function`` step; ``tf.compat.v1.train`` becomes ``compatopt.train``.

What changed, line for line:

* ``tf.Variable(...)`` → ``co.Variable(...)``; placeholders → arguments of the step;
* the graph (forward pass, ``minimize``) → the body of ``@co.function def train_step(x, y)``,
  with the loss as a callable (``minimize(lambda: loss_fn(x, y), ...)``), as eager TF1 needs;
* ``sess.run([train_op, loss], feed_dict=...)`` → ``train_step(x_batch, y_batch)``;
* ``tf.train.exponential_decay`` / ``AdamOptimizer`` / ``get_or_create_global_step`` →
  the same names under ``co.train``.

The step compiles once (plus once for a differently sized last batch); the parameters,
Adam's slots, its beta powers and the global step live in donated device buffers.

    python examples/port_tf1_mlp.py                       # port only
    python examples/port_tf1_mlp.py --tf-python /path/to/python-with-tensorflow

With TensorFlow (importable here, or through ``--tf-python``/``$TF_PYTHON``), the original
runs on the same data, initial weights and batches, and both loss curves are plotted into
``port_tf1_mlp.png`` (needs matplotlib). Data: scikit-learn's digits (ships with the package).
"""

from __future__ import annotations

import argparse
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


def make_data(epochs: int, batch_size: int, seed: int = 0) -> dict:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int32)
    rs = np.random.RandomState(seed)
    n = len(x)
    batches = []
    for _ in range(epochs):
        perm = rs.permutation(n)
        batches += [perm[i:i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]
    return {"x": x, "y": y, "batches": np.stack(batches),
            "w1": (rs.standard_normal((64, 64)) * 0.1).astype(np.float32),
            "b1": np.zeros(64, np.float32),
            "w2": (rs.standard_normal((64, 10)) * 0.1).astype(np.float32),
            "b2": np.zeros(10, np.float32)}


def run_port(d: dict) -> list:
    W1 = co.Variable(d["w1"], name="W1")
    b1 = co.Variable(d["b1"], name="b1")
    W2 = co.Variable(d["w2"], name="W2")
    b2 = co.Variable(d["b2"], name="b2")

    def loss_fn(x, labels):
        h = jax.nn.relu(x @ W1 + b1)
        logits = h @ W2 + b2
        nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1)
        return jnp.mean(nll)

    global_step = co.train.get_or_create_global_step()
    lr = co.train.exponential_decay(0.01, global_step, 100, 0.5, staircase=True)
    optimizer = co.train.AdamOptimizer(lr)

    @co.function
    def train_step(x, labels):
        loss = loss_fn(x, labels)
        optimizer.minimize(lambda: loss_fn(x, labels), global_step=global_step)
        return loss

    x, y = jnp.asarray(d["x"]), jnp.asarray(d["y"])
    losses = [float(train_step(x[batch], y[batch])) for batch in d["batches"]]
    print(f"port: {len(losses)} steps, {train_step.trace_count} trace(s), "
          f"global_step={int(global_step.numpy())}, final loss {losses[-1]:.5f}")
    return losses


def find_tf_python(arg: str | None) -> str | None:
    if arg or os.environ.get("TF_PYTHON"):
        return arg or os.environ["TF_PYTHON"]
    try:
        import tensorflow  # noqa: F401
        return sys.executable
    except ImportError:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--tf-python", default=None)
    parser.add_argument("--png", default="port_tf1_mlp.png")
    args = parser.parse_args()
    d = make_data(args.epochs, args.batch_size)
    port = run_port(d)
    tf_python = find_tf_python(args.tf_python)
    if tf_python is None:
        print("TensorFlow not found: no comparison (pass --tf-python)")
        return
    with tempfile.TemporaryDirectory() as tmp:
        data, out = os.path.join(tmp, "data.npz"), os.path.join(tmp, "losses.json")
        np.savez(data, **d)
        subprocess.run([tf_python, os.path.join(HERE, "tf1_mlp_original.py"), "--data", data,
                        "--out", out], check=True, stderr=subprocess.DEVNULL)
        with open(out) as f:
            original = json.load(f)
    port_a, tf_a = np.asarray(port), np.asarray(original)
    rel = np.abs(port_a - tf_a) / np.abs(tf_a)
    print(f"TF1 original: final loss {tf_a[-1]:.5f}; max relative difference of the loss "
          f"curves {rel.max():.2e} (median {np.median(rel):.2e})")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(7, 6), sharex=True,
                                  gridspec_kw={"height_ratios": [3, 1]})
    ax.plot(tf_a, label="TF1 original (graph + Session)", lw=2.5, alpha=0.6)
    ax.plot(port_a, label="compatopt port (co.function)", lw=1, color="k")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("MLP on digits: Adam + exponential_decay, TF1 vs compatopt")
    ax2.semilogy(np.maximum(rel, 1e-9))
    ax2.set_ylabel("relative diff.")
    ax2.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(args.png, dpi=100)
    print(f"plot saved to {args.png}")


if __name__ == "__main__":
    main()
