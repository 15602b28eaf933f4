"""Records BERT's ``optimization.py`` training the tiny classifier in TF1 graph mode, for
``tests/test_port_bert.py``.

Runs the example's TF1 original, ``examples/bert_optimization_tf1_original.py`` (BERT's file
with its import changed, a ``Session``, Grappler on), under a Python with TensorFlow 2.21::

    python tools/make_tf1_bert_fixtures.py --tf-python /tmp/tfenv/bin/python [--out DIR]

This interpreter (with compatopt) builds the data, configuration and initial weights with
the port's ``make_data`` (30 steps, 10 of warmup, ``init_lr = 0.02``); ``--tf-python``
(default ``$TF_PYTHON``, else this interpreter if it imports TensorFlow) runs TF1. Writes
into ``tests/fixtures/tf1/programs/bert/`` (default):

* ``bert.npz``: per step ``loss`` [30] and the learning rate ``lr`` [30] the optimizer used,
  the clipped gradients it consumed (``grad_dense/<var>`` [30, ...]; for the embedding also
  ``grad_values/<var>`` and ``grad_indices/<var>``, the ``IndexedSlices`` it densified),
  ``final/<var>`` for every variable after the last step (``adam_m``/``adam_v`` and
  ``global_step`` included), ``tvars`` / ``global_variables`` (names, in TF's order),
  ``data_sha256`` of the inputs, ``tensorflow`` (version);
* ``graph_arithmetic.npz``: :data:`EXPRESSIONS` (Python arithmetic on a non-constant float32
  tensor ``t``, the kinds Grappler's constant folding rewrites), each evaluated in its own
  graph and ``Session`` on :func:`arithmetic_inputs` (with a second, unrelated fetch: TF does
  not optimize graphs of fewer than 4 nodes).

The generator also runs the original once fetching only ``[loss, train_op]`` and checks the
recording fetches change no bit of the training.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLE = os.path.join(HERE, "..", "examples", "bert_optimization.py")
OUT = os.path.join(HERE, "..", "tests", "fixtures", "tf1", "programs", "bert")

# name -> expression in ``t``; evaluated with the same source by TF and by compatopt
EXPRESSIONS = {
    "bert_warmup": "0.02 * (t / 10.0)",
    "div_const": "t / 7.0",
    "div_div": "(t / 3.0) / 7.0",
    "mul_chain_left": "0.7 * (t * 0.3)",
    "mul_chain_right": "(t * 0.3) * 0.7",
    "mul_chain_inner_left": "0.7 * (0.3 * t)",
    "square_times_const": "(t * t) * 0.1",
    "mul_then_div": "(t * 0.3) / 7.0",
    "add_chain": "1.5 + (t + 0.1)",
    "const_minus_add": "1.5 - (t + 0.1)",
    "sub_plus_const": "(t - 0.1) + 1.5",
    "const_minus_sub": "1.5 - (0.1 - t)",
    "sub_minus_const": "(0.1 - t) - 1.5",
    "two_consumers": "(lambda a: 0.7 * a + a)(t * 0.3)",
    "mixed": "3.0 * (t * 0.3) + 0.2 * t",
}


def arithmetic_inputs() -> np.ndarray:
    """Step-like integers 0..99 and 400 float32 values over many magnitudes."""
    rs = np.random.RandomState(11)
    spread = rs.standard_normal(400) * 10.0 ** rs.uniform(-3, 3, 400)
    return np.concatenate([np.arange(100), spread]).astype(np.float32)


def _example():
    spec = importlib.util.spec_from_file_location("bert_optimization", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_ARITHMETIC = r"""
import sys, numpy as np, tensorflow.compat.v1 as tf
tf.disable_v2_behavior()
x = np.load(sys.argv[1])
exprs = dict(line.split("\t", 1) for line in sys.argv[2].splitlines())
out = {}
for name, src in exprs.items():
    with tf.Graph().as_default(), tf.Session() as sess:
        t = tf.placeholder(tf.float32, x.shape)
        # the unrelated second fetch keeps the graph over Grappler's minimum size (4 nodes,
        # below which TF skips optimizing: a lone `t / 7.0` would run as written)
        out[name] = sess.run([eval(src, {"t": t}), tf.reduce_sum(t * 2.0)], {t: x})[0]
np.savez(sys.argv[3], x=x, **out)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tf-python", default=os.environ.get("TF_PYTHON"))
    parser.add_argument("--out", default=OUT)
    args = parser.parse_args()
    tf_python = args.tf_python
    if tf_python is None:
        try:
            import tensorflow  # noqa: F401
            tf_python = sys.executable
        except ImportError:
            raise SystemExit("needs TensorFlow: pass --tf-python or set $TF_PYTHON") from None
    version = subprocess.run([tf_python, "-c", "import tensorflow; print(tensorflow.__version__)"],
                             check=True, capture_output=True, text=True).stdout.split()[-1]
    ex = _example()
    d = ex.make_data()
    rec = ex.run_tf1_original(tf_python, d)

    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        data, out = os.path.join(tmp, "d.npz"), os.path.join(tmp, "plain.npz")
        np.savez(data, **d)
        subprocess.run([tf_python, ex.ORIGINAL, "--data", data, "--out", out,
                        "--no-recording"], check=True, stderr=subprocess.DEVNULL)
        with np.load(out) as plain:
            for k in plain.files:
                assert np.array_equal(plain[k], rec[k]), f"recording changed {k}"
        x_path, ar_path = os.path.join(tmp, "x.npy"), os.path.join(tmp, "ar.npz")
        np.save(x_path, arithmetic_inputs())
        subprocess.run([tf_python, "-c", _ARITHMETIC, x_path,
                        "\n".join(f"{k}\t{v}" for k, v in EXPRESSIONS.items()), ar_path],
                       check=True, stderr=subprocess.DEVNULL)
        with np.load(ar_path) as f:
            arithmetic = dict(f)

    rec["data_sha256"] = np.array(ex.data_digest(d))
    rec["tensorflow"] = np.array(version)
    os.makedirs(args.out, exist_ok=True)
    np.savez_compressed(os.path.join(args.out, "bert.npz"), **rec)
    np.savez_compressed(os.path.join(args.out, "graph_arithmetic.npz"), **arithmetic)
    print(json.dumps({"steps": int(rec["loss"].shape[0]), "tensorflow": version,
                      "loss": [float(rec["loss"][0]), float(rec["loss"][-1])],
                      "out": os.path.normpath(args.out)}))


if __name__ == "__main__":
    main()
