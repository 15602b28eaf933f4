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

    python examples/port_tf1_mlp.py                # against the recorded TF1 curve
    python examples/port_tf1_mlp.py --tf-python /path/to/python-with-tensorflow
    python examples/port_tf1_mlp.py --steps 50 --png /tmp/curves.png

With TensorFlow (importable here, or through ``--tf-python``/``$TF_PYTHON``), the original
runs now on the same data, initial weights and batches. Without it, the port is compared
with the TF1 loss curve recorded from that same script by TensorFlow 2.21
(``tests/fixtures/tf1/examples/port_tf1_mlp_loss.json``, written by
``tools/make_tf1_example_fixtures.py``; ``--recorded`` uses it even where TensorFlow is
installed). The curve is recorded for the default ``--epochs``/``--batch-size``; ``--steps``
keeps the first steps of the same run. Both curves are plotted into ``--png`` (default
``port_tf1_mlp.png`` in the current folder; needs matplotlib). Data: scikit-learn's digits
(ships with the package).
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
RECORDED = os.path.normpath(os.path.join(HERE, "..", "tests", "fixtures", "tf1", "examples",
                                         "port_tf1_mlp_loss.json"))
DATA_KEYS = ("x", "y", "batches", "w1", "b1", "w2", "b2")


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


def data_digest(d: dict) -> str:
    """SHA-256 of the data, weights and batch order: ties a recorded curve to its inputs."""
    h = hashlib.sha256()
    for k in DATA_KEYS:
        a = np.ascontiguousarray(d[k])
        h.update(f"{k}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


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


def run_tf1_original(tf_python: str, d: dict) -> list:
    """Runs ``tf1_mlp_original.py`` (graph + Session) under ``tf_python`` on ``d``."""
    with tempfile.TemporaryDirectory() as tmp:
        data, out = os.path.join(tmp, "data.npz"), os.path.join(tmp, "losses.json")
        np.savez(data, **d)
        subprocess.run([tf_python, os.path.join(HERE, "tf1_mlp_original.py"), "--data", data,
                        "--out", out], check=True, stderr=subprocess.DEVNULL)
        with open(out) as f:
            return json.load(f)


def load_recorded(path: str, digest: str, epochs: int,
                  batch_size: int) -> tuple[list | None, str]:
    """The recorded TF1 curve for the run whose data has ``digest``, or ``(None, why not)``."""
    if not os.path.exists(path):
        return None, f"no recorded TF1 curve at {path}"
    with open(path) as f:
        rec = json.load(f)
    if (rec["epochs"], rec["batch_size"]) != (epochs, batch_size):
        return None, (f"the recorded TF1 curve is for --epochs {rec['epochs']} --batch-size "
                      f"{rec['batch_size']}")
    if rec["data_sha256"] != digest:
        return None, ("the data differs from the recorded run's (another scikit-learn digits "
                      "or NumPy RandomState stream?)")
    return rec["loss"], f"recorded with TensorFlow {rec['tensorflow']}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--steps", type=int, default=None,
                        help="train only the first STEPS batches of the run (default: all)")
    parser.add_argument("--tf-python", default=None)
    parser.add_argument("--recorded", action="store_true",
                        help="compare with the recorded TF1 curve even if TensorFlow is found")
    parser.add_argument("--tf1-losses", default=RECORDED,
                        help="recorded TF1 curve (default: %(default)s)")
    parser.add_argument("--png", default="port_tf1_mlp.png", help="where to write the plot")
    args = parser.parse_args(argv)
    d = make_data(args.epochs, args.batch_size)
    digest = data_digest(d)  # of the whole run, before --steps cuts it
    if args.steps is not None:
        d["batches"] = d["batches"][:args.steps]
    port = run_port(d)
    tf_python = None if args.recorded else find_tf_python(args.tf_python)
    if tf_python is not None:
        original, source = run_tf1_original(tf_python, d), "run now"
    else:
        original, source = load_recorded(args.tf1_losses, digest, args.epochs, args.batch_size)
        if original is None:
            print(f"TensorFlow not found and {source}: no comparison (pass --tf-python)")
            return
        original = original[:len(port)]
    port_a, tf_a = np.asarray(port), np.asarray(original)
    rel = np.abs(port_a - tf_a) / np.abs(tf_a)
    print(f"TF1 original ({source}): final loss {tf_a[-1]:.5f}; max relative difference of "
          f"the loss curves {rel.max():.2e} (median {np.median(rel):.2e}) over {len(rel)} steps")
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no plot")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(7, 6), sharex=True,
                                  gridspec_kw={"height_ratios": [3, 1]})
    label = "TF1 original (graph + Session)"
    if source != "run now":
        label += f", {source}"
    ax.plot(tf_a, label=label, lw=2.5, alpha=0.6)
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
    plt.close(fig)
    print(f"plot saved to {args.png}")


if __name__ == "__main__":
    main()
