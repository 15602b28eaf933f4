"""Records TF1 graph mode running the word2vec tutorial (``examples/word2vec_tf1_original.py``)
and the sampled losses and candidate samplers under it, for ``tests/test_port_word2vec.py``
and ``tests/train/test_nn_sampled.py``.

Run from this checkout's Python (JAX, compatopt), with TensorFlow 2.21 in another one::

    python tools/make_tf1_word2vec_fixtures.py [--tf-python PYTHON] [--out-dir DIR]

``PYTHON`` (default ``$TF_PYTHON``, else ``/tmp/tfenv/bin/python``) runs TensorFlow; this
interpreter builds the port's inputs (``examples/word2vec.py``'s ``make_data``: corpus,
initial weights, :data:`STEPS` batches, the negatives drawn by
``co.nn.log_uniform_candidate_sampler``). Writes, under ``tests/fixtures/tf1`` (default):

* ``programs/word2vec/run.npz``: the original's loss at every step; after the last step
  ``nce_biases``, the first :data:`KEEP_ROWS` rows of ``embeddings``, ``nce_weights`` and
  ``normalized_embeddings``, and ``similarity`` (valid words × vocabulary); the negatives
  fed (``sampled``, ``true_expected_count``, ``sampled_expected_count``); and step 1 alone
  (the same graph with ``compute_gradients`` + ``apply_gradients``): the ``IndexedSlices``
  ``grad/<var>/values`` / ``grad/<var>/indices`` and the updated rows ``after/<var>``
  (``after/<var>/rows`` their ids, sorted, unique). ``run.json``: versions, ``STEPS``, and
  the SHA-256 of the inputs the test regenerates (corpus, weights, batches).
* ``sampled_losses/cases.npz`` + ``cases.json``: ``nce_loss`` / ``sampled_softmax_loss``
  (1 and 2 true classes, accidental hits removed or not, 1 or 3 partitions "mod"/"div"):
  per-example losses, the logits of ``_compute_sampled_logits``, the gradients of
  ``sum(loss * w)`` (``IndexedSlices`` per partition and for the biases, dense for the
  inputs); ``sigmoid_cross_entropy_with_logits`` and its gradient; the log-uniform and
  uniform samplers' outputs (``unique`` or not, repeated draws); ``compute_accidental_hits``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, ".."))
EXAMPLE = os.path.join(ROOT, "examples", "word2vec.py")
ORIGINAL = os.path.join(ROOT, "examples", "word2vec_tf1_original.py")
OUT = os.path.join(ROOT, "tests", "fixtures", "tf1")

STEPS = 60
KEEP_ROWS = 64
INPUT_KEYS = ("words", "vocabulary_size", "valid_examples", "embeddings", "nce_weights",
              "nce_biases", "batch_inputs", "batch_labels")
NEGATIVE_KEYS = ("sampled", "true_expected_count", "sampled_expected_count")
VARS = ("embeddings", "nce_weights", "nce_biases")

# sampled-loss cases: (key, loss, num_true, remove_accidental_hits, partitions, strategy)
NUM_CLASSES, DIM, BATCH, NUM_SAMPLED = 50, 8, 6, 10
LOSS_CASES = [(f"{loss}/{key}", loss, nt, rah, parts, strategy)
              for loss in ("nce", "softmax")
              for key, nt, rah, parts, strategy in (
                  ("t1", 1, False, 1, "mod"), ("t1_hits", 1, True, 1, "mod"),
                  ("t2_hits", 2, True, 1, "mod"), ("t2", 2, False, 1, "mod"),
                  ("mod3", 2, True, 3, "mod"), ("div3", 1, False, 3, "div"))]
SAMPLER_CASES = [(f"{kind}/{'unique' if unique else 'repeat'}/{rng}", kind, unique, rng)
                 for kind in ("log_uniform", "uniform") for unique in (True, False)
                 for rng in (NUM_CLASSES, 1000)]
SAMPLER_DRAWS = 12


def digest(d: dict) -> str:
    """SHA-256 of the inputs the port regenerates (``INPUT_KEYS``)."""
    h = hashlib.sha256()
    for k in INPUT_KEYS:
        a = np.ascontiguousarray(d[k])
        h.update(f"{k}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def loss_inputs() -> dict:
    """The sampled-loss cases' inputs (NumPy ``RandomState(0)``)."""
    rs = np.random.RandomState(0)
    labels2 = rs.randint(0, 6, (BATCH, 2)).astype(np.int64)
    labels2[1] = [3, 3]  # a repeated true class
    return {
        "weights": (rs.standard_normal((NUM_CLASSES, DIM)) * 0.5).astype(np.float32),
        "biases": (rs.standard_normal(NUM_CLASSES) * 0.1).astype(np.float32),
        "inputs": rs.standard_normal((BATCH, DIM)).astype(np.float32),
        "labels1": labels2[:, :1].copy(),
        "labels2": labels2,
        # repeated candidates (2 and 5) and candidates that are true classes (accidental hits)
        "sampled": np.array([2, 0, 5, 17, 2, 31, 5, 1, 44, 9], np.int64),
        "true_expected_count2": rs.uniform(0.05, 1.5, (BATCH, 2)).astype(np.float32),
        "sampled_expected_count": rs.uniform(0.05, 1.5, NUM_SAMPLED).astype(np.float32),
        "loss_weights": rs.uniform(0.5, 1.5, BATCH).astype(np.float32),
        "sigmoid_logits": np.concatenate([np.linspace(-30, 30, 97),
                                          rs.standard_normal(31) * 4]).astype(np.float32),
        "sigmoid_labels": rs.uniform(0, 1, 128).astype(np.float32),
        "sigmoid_weights": rs.uniform(0.5, 1.5, 128).astype(np.float32),
        "sampler_true": rs.randint(0, NUM_CLASSES, (BATCH, 2)).astype(np.int64),
    }


def partition(table: np.ndarray, parts: int, strategy: str) -> list:
    """TF1's partitions of ``table``: rows ``p::P`` ("mod"), contiguous ("div")."""
    if parts == 1:
        return [table]
    if strategy == "mod":
        return [table[p::parts] for p in range(parts)]
    sizes = [len(table) // parts + (p < len(table) % parts) for p in range(parts)]
    return np.split(table, np.cumsum(sizes)[:-1])


# ------------------------------------------------------------------ TensorFlow side


def _tf():
    import tensorflow.compat.v1 as tf  # pyright: ignore[reportMissingImports]

    tf.disable_v2_behavior()
    return tf


def tf_first_step(data_path: str, out_path: str) -> None:
    """Step 1 of the original's graph, its gradients fetched from the same run."""
    tf = _tf()
    d = np.load(data_path)
    vocabulary_size, num_sampled = int(d["vocabulary_size"]), d["sampled"].shape[1]
    with tf.Graph().as_default() as graph:
        train_inputs = tf.placeholder(tf.int32, shape=[128])
        train_labels = tf.placeholder(tf.int32, shape=[128, 1])
        sampled = tf.placeholder(tf.int64, shape=[num_sampled])
        true_ec = tf.placeholder(tf.float32, shape=[128, 1])
        sampled_ec = tf.placeholder(tf.float32, shape=[num_sampled])
        with tf.name_scope("embeddings"):
            embeddings = tf.Variable(d["embeddings"])
            embed = tf.nn.embedding_lookup(embeddings, train_inputs)
        with tf.name_scope("weights"):
            nce_weights = tf.Variable(d["nce_weights"])
        with tf.name_scope("biases"):
            nce_biases = tf.Variable(d["nce_biases"])
        loss = tf.reduce_mean(tf.nn.nce_loss(
            weights=nce_weights, biases=nce_biases, labels=train_labels, inputs=embed,
            num_sampled=num_sampled, num_classes=vocabulary_size,
            sampled_values=(sampled, true_ec, sampled_ec)))
        opt = tf.train.GradientDescentOptimizer(1.0)
        gvs = opt.compute_gradients(loss)
        train = opt.apply_gradients(gvs)
        variables = {"embeddings": embeddings, "nce_weights": nce_weights,
                     "nce_biases": nce_biases}
        with tf.Session(graph=graph) as sess:
            sess.run(tf.global_variables_initializer())
            feed = {train_inputs: d["batch_inputs"][0], train_labels: d["batch_labels"][0],
                    sampled: d["sampled"][0], true_ec: d["true_expected_count"][0],
                    sampled_ec: d["sampled_expected_count"][0]}
            fetched = sess.run([loss, [g for g, _ in gvs], train], feed)
            after = sess.run(variables)
    out = {"loss": np.float32(fetched[0])}
    names = {v.name: k for k, v in variables.items()}
    for (_, v), g in zip(gvs, fetched[1]):
        k = names[v.name]
        assert type(g).__name__ == "IndexedSlicesValue", (k, type(g))
        rows = np.unique(g.indices)
        out[f"grad/{k}/values"], out[f"grad/{k}/indices"] = g.values, g.indices
        out[f"after/{k}"], out[f"after/{k}/rows"] = after[k][rows], rows
    np.savez(out_path, **out)


def tf_cases(out_path: str, meta_path: str) -> None:
    """The sampled losses, sigmoid cross-entropy, samplers and accidental hits."""
    tf = _tf()
    from tensorflow.python.ops import nn_impl  # pyright: ignore[reportMissingImports]

    x = loss_inputs()
    out: dict = {}
    meta: dict = {"loss_cases": [], "sampler_cases": []}
    for key, loss, nt, rah, parts, strategy in LOSS_CASES:
        labels = x["labels1"] if nt == 1 else x["labels2"]
        true_ec = x["true_expected_count2"][:, :nt]
        with tf.Graph().as_default(), tf.Session() as sess:
            ws = [tf.Variable(p, name=f"w{i}")
                  for i, p in enumerate(partition(x["weights"], parts, strategy))]
            b = tf.Variable(x["biases"], name="b")
            inp = tf.Variable(x["inputs"], name="inputs")
            sv = (tf.constant(x["sampled"]), tf.constant(true_ec),
                  tf.constant(x["sampled_expected_count"]))
            weights = ws if parts > 1 else ws[0]
            args = dict(weights=weights, biases=b, labels=tf.constant(labels), inputs=inp,
                        num_sampled=NUM_SAMPLED, num_classes=NUM_CLASSES, num_true=nt,
                        sampled_values=sv, remove_accidental_hits=rah,
                        partition_strategy=strategy)
            fn = tf.nn.nce_loss if loss == "nce" else tf.nn.sampled_softmax_loss
            per_example = fn(**args)
            logits, out_labels = nn_impl._compute_sampled_logits(
                subtract_log_q=True, **args)
            total = tf.reduce_sum(per_example * x["loss_weights"])
            grads = tf.gradients(total, ws + [b, inp])
            sess.run(tf.global_variables_initializer())
            res = sess.run({"loss": per_example, "logits": logits, "labels": out_labels,
                            "grads": grads})
        out[f"{key}/loss"], out[f"{key}/logits"] = res["loss"], res["logits"]
        out[f"{key}/labels"] = res["labels"]
        for i, g in enumerate(res["grads"]):
            name = "inputs" if i == len(ws) + 1 else ("b" if i == len(ws) else f"w{i}")
            if name == "inputs":
                out[f"{key}/grad/inputs"] = g
            else:
                out[f"{key}/grad/{name}/values"] = g.values
                out[f"{key}/grad/{name}/indices"] = g.indices
        meta["loss_cases"].append(dict(key=key, loss=loss, num_true=nt,
                                       remove_accidental_hits=rah, partitions=parts,
                                       strategy=strategy))

    with tf.Graph().as_default(), tf.Session() as sess:
        logits = tf.Variable(x["sigmoid_logits"])
        ce = tf.nn.sigmoid_cross_entropy_with_logits(labels=x["sigmoid_labels"],
                                                     logits=logits)
        (g,) = tf.gradients(tf.reduce_sum(ce * x["sigmoid_weights"]), [logits])
        sess.run(tf.global_variables_initializer())
        out["sigmoid/loss"], out["sigmoid/grad"] = sess.run([ce, g])

    for key, kind, unique, rng in SAMPLER_CASES:
        fn = (tf.nn.log_uniform_candidate_sampler if kind == "log_uniform"
              else tf.nn.uniform_candidate_sampler)
        true = x["sampler_true"] % rng
        with tf.Graph().as_default(), tf.Session() as sess:
            op = fn(true_classes=tf.constant(true), num_true=2, num_sampled=NUM_SAMPLED,
                    unique=unique, range_max=rng, seed=7)
            draws = [sess.run(op) for _ in range(SAMPLER_DRAWS)]
        out[f"{key}/true_classes"] = true
        for j, name in enumerate(NEGATIVE_KEYS):
            out[f"{key}/{name}"] = np.stack([dr[j] for dr in draws])
        meta["sampler_cases"].append(dict(key=key, kind=kind, unique=unique, range_max=rng))

    with tf.Graph().as_default(), tf.Session() as sess:
        hits = sess.run(tf.nn.compute_accidental_hits(
            tf.constant(x["labels2"]), tf.constant(x["sampled"]), num_true=2))
    for name, v in zip(("indices", "ids", "weights"), hits):
        out[f"hits/{name}"] = v
    meta["tensorflow"] = tf.__version__ if hasattr(tf, "__version__") else None
    np.savez_compressed(out_path, **out)
    with open(meta_path, "w") as f:
        json.dump(meta, f, indent=1)


# ------------------------------------------------------------------ orchestration


def _example():
    spec = importlib.util.spec_from_file_location("word2vec_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tf-python", default=os.environ.get("TF_PYTHON",
                                                              "/tmp/tfenv/bin/python"))
    parser.add_argument("--out-dir", default=OUT)
    args = parser.parse_args()
    tf_python = args.tf_python
    versions = json.loads(subprocess.run(
        [tf_python, "-c", "import json, numpy, tensorflow; print(json.dumps("
         "[tensorflow.__version__, numpy.__version__]))"],
        check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
    d = _example().make_data(STEPS, negatives=True)
    prog = os.path.join(args.out_dir, "programs", "word2vec")
    sampled_dir = os.path.join(args.out_dir, "sampled_losses")
    os.makedirs(prog, exist_ok=True)
    os.makedirs(sampled_dir, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        data, run, first = (os.path.join(tmp, n) for n in ("data.npz", "run.npz", "first.npz"))
        np.savez(data, **d)
        subprocess.run([tf_python, ORIGINAL, "--data", data, "--out", run,
                        "--log_dir", os.path.join(tmp, "log")], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        subprocess.run([tf_python, __file__, "--tf-first-step", data, first], check=True,
                       stderr=subprocess.DEVNULL)
        subprocess.run([tf_python, __file__, "--tf-cases", os.path.join(sampled_dir, "cases.npz"),
                        os.path.join(sampled_dir, "cases.json")], check=True,
                       stderr=subprocess.DEVNULL)
        with np.load(run) as r, np.load(first) as f1:
            out = {"losses": r["losses"], "nce_biases": r["nce_biases"],
                   "similarity": r["similarity"]}
            for k in ("embeddings", "nce_weights", "normalized_embeddings"):
                out[k] = r[k][:KEEP_ROWS]
            out.update({k: d[k] for k in NEGATIVE_KEYS})
            out.update({f"step1/{k}": v for k, v in f1.items()})
    np.savez_compressed(os.path.join(prog, "run.npz"), **out)
    with open(os.path.join(prog, "run.json"), "w") as f:
        json.dump({"what": "examples/word2vec_tf1_original.py, TF1 graph mode (Session), "
                           f"{STEPS} steps from examples/word2vec.py's make_data",
                   "generator": "tools/make_tf1_word2vec_fixtures.py", "steps": STEPS,
                   "keep_rows": KEEP_ROWS, "inputs_sha256": digest(d),
                   "tensorflow": versions[0], "numpy": versions[1]}, f, indent=1)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--tf-first-step":
        tf_first_step(sys.argv[2], sys.argv[3])
    elif len(sys.argv) > 1 and sys.argv[1] == "--tf-cases":
        tf_cases(sys.argv[2], sys.argv[3])
    else:
        main()
