"""TF1 graph mode timings, for the comparison columns of the report (needs TensorFlow).

Run by ``benchmarks/run.py`` with an interpreter that can ``import tensorflow`` (the same
one, or ``--tf-python``), or alone::

    /work/tfenv/bin/python -m benchmarks.tf1_bench --out benchmarks/results [--quick]

It writes ``tf1.json``: ``Session.run(train_op)`` for the MLP step and update-only steps
(each timed interleaved with the NumPy floor kernel of the same traffic, so the report can
compare against compatopt's numbers from another process through the floor), and the cost
of a trivial ``sess.run``. No JAX is imported here.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time

import numpy as np

from benchmarks._floor import NumpyFloor
from benchmarks._harness import Candidate, cpu_model, interleave, ratio_stats, stats

SIZES = (784, 512, 512, 10)
BATCH = 128


def _tf():
    import tensorflow as tf
    tf.compat.v1.disable_eager_execution()
    return tf


def _session(tf):
    cfg = tf.compat.v1.ConfigProto()
    return tf.compat.v1.Session(config=cfg)


def mlp_step(tf, rounds: int) -> dict:
    """The MLP of ``train_step.py`` (same init and batch), Adam, ``sess.run(train_op)``."""
    tf.compat.v1.reset_default_graph()
    rng = np.random.default_rng(0)
    ws = []
    for a, b in zip(SIZES[:-1], SIZES[1:]):
        ws.append((rng.standard_normal((a, b)) * np.sqrt(2.0 / a)).astype(np.float32))
        ws.append(np.zeros(b, np.float32))
    rng = np.random.default_rng(1)
    x = rng.standard_normal((BATCH, SIZES[0])).astype(np.float32)
    y = rng.integers(0, SIZES[-1], BATCH).astype(np.int32)
    vs = [tf.compat.v1.Variable(w) for w in ws]
    h = tf.constant(x)
    n = len(vs) // 2
    for i in range(n):
        h = tf.matmul(h, vs[2 * i]) + vs[2 * i + 1]
        if i < n - 1:
            h = tf.nn.relu(h)
    loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.constant(y), logits=h))
    train_op = tf.compat.v1.train.AdamOptimizer(0.001).minimize(loss)
    sess = _session(tf)
    sess.run(tf.compat.v1.global_variables_initializer())
    t0 = time.perf_counter()
    sess.run(train_op)
    first = time.perf_counter() - t0
    noop = tf.no_op()
    times = interleave([Candidate("tf1_graph", lambda: sess.run(train_op)),
                        Candidate("tf1_sess_run_noop", lambda: sess.run(noop))], rounds,
                       min_round_s=0.05)
    sess.close()
    return {"seconds": stats(times["tf1_graph"]), "first_run_s": first,
            "sess_run_noop": stats(times["tf1_sess_run_noop"])}


_OPTS = {
    "adam": (lambda tf: tf.compat.v1.train.AdamOptimizer(0.001), 1, 3, 0),
    "momentum": (lambda tf: tf.compat.v1.train.MomentumOptimizer(0.01, 0.9), 1, 2, 0),
    "sgd": (lambda tf: tf.compat.v1.train.GradientDescentOptimizer(0.01), 1, 1, 0),
}


def update_only(tf, rule: str, leaves: int, size: int, rounds: int) -> dict:
    """``apply_gradients`` on ``leaves`` variables of ``size`` floats (constant gradients)."""
    tf.compat.v1.reset_default_graph()
    make, reads, rw, writes = _OPTS[rule]
    rng = np.random.default_rng(2)
    t0 = time.perf_counter()
    vs = [tf.compat.v1.Variable(np.full(size, 0.5, np.float32)) for _ in range(leaves)]
    gs = [tf.constant((0.01 + 0.01 * rng.standard_normal(size)).astype(np.float32))
          for _ in range(leaves)]
    train_op = make(tf).apply_gradients(list(zip(gs, vs)))
    sess = _session(tf)
    sess.run(tf.compat.v1.global_variables_initializer())
    sess.run(train_op)
    build_s = time.perf_counter() - t0
    floor = NumpyFloor(leaves * size, reads, rw, writes)
    times = interleave([Candidate("tf1", lambda: sess.run(train_op)),
                        Candidate("floor", floor.step)], rounds)
    sess.close()
    return {"rule": rule, "leaves": leaves, "size": size, "build_s": build_s,
            "seconds": stats(times["tf1"]), "floor_seconds": stats(times["floor"]),
            "of_floor": ratio_stats(times, "floor", "tf1")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--full", action="store_true", help="also 10,000 variables")
    args = parser.parse_args(argv)
    tf = _tf()
    rounds = 3 if args.quick else 7
    shapes = ([(1, 4_096_000), (100, 16_384)] if args.quick else
              [(1, 16_384_000), (1000, 16_384)] + ([(10_000, 1_638)] if args.full else []))
    out = {"stamp": {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                     "tensorflow": tf.__version__, "cpu": cpu_model(),
                     "cpu_cores": os.cpu_count(), "python": platform.python_version()},
           "mlp": mlp_step(tf, rounds), "update": []}
    rules = ["adam"] if args.quick else ["adam", "momentum", "sgd"]
    for rule in rules:
        for leaves, size in shapes:
            if leaves >= 10_000 and rule != "adam":
                continue
            out["update"].append(update_only(tf, rule, leaves, size, rounds))
            print(f"tf1 {rule} {leaves}x{size}: "
                  f"{out['update'][-1]['seconds']['median'] * 1e3:.1f} ms", file=sys.stderr)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "tf1.json"), "w") as f:
        json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
