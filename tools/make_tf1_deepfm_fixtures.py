"""Records the TF1 DeepFM runs that ``tests/test_port_deepfm.py`` replays through
``examples/deepfm.py``.

Runs the example's own TF1 script, ``examples/deepfm_tf1_original.py`` (placeholders, a
graph, ``Session.run((loss, train_op))``, reference variables, ``tf.nn.embedding_lookup``),
under a Python that has TensorFlow 2.21 (``pip install compatopt[tf]``), once per optimizer
of the issue (Adam, Adagrad, FTRL), for the example's default data and 40 steps::

    python tools/make_tf1_deepfm_fixtures.py [--tf-python PYTHON] [--out DIR]

This interpreter builds the data, the initial weights and the batch order with the
example's ``make_data`` (NumPy only; the port itself is not run); ``PYTHON`` (default: this
interpreter if it imports TensorFlow, or ``$TF_PYTHON``) runs the TF1 graph. Writes, per
optimizer, into ``tests/fixtures/tf1/programs/deepfm/`` (default):

* ``<optimizer>.json``: the loss of every step (fetched with the train op, so before that
  step's update), the versions, the learning rate and the SHA-256 of the inputs;
* ``<optimizer>.npz``: every global variable after the last step, by TF1 op name: the
  weights (``feature_embeddings``, ``Variable_4`` ...), their slots
  (``feature_embeddings/Adam_1``, ``Variable/Ftrl``, ...) and Adam's ``beta1_power`` /
  ``beta2_power``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLE = os.path.join(HERE, "..", "examples", "deepfm.py")
LEARNING_RATE = 0.001  # the original's default


def _example():
    spec = importlib.util.spec_from_file_location("deepfm", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    ex = _example()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tf-python", default=None)
    parser.add_argument("--out", default=ex.FIXTURES)
    args = parser.parse_args()
    tf_python = ex.find_tf_python(args.tf_python)
    if tf_python is None:
        raise SystemExit("needs TensorFlow: pass --tf-python or set $TF_PYTHON")
    versions = json.loads(subprocess.run(
        [tf_python, "-c", "import json, numpy, tensorflow; print(json.dumps("
         "[tensorflow.__version__, numpy.__version__]))"],
        check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
    import numpy as np

    d = ex.make_data()
    os.makedirs(args.out, exist_ok=True)
    for optimizer in ex.OPTIMIZERS:
        losses, final = ex.run_tf1_original(tf_python, d, optimizer, LEARNING_RATE)
        assert len(losses) == len(d["batches"]), (len(losses), len(d["batches"]))
        record = {
            "what": f"examples/deepfm_tf1_original.py --optimizer {optimizer} (TF1 graph mode, "
                    f"Session): the loss of each step, fetched with the train op",
            "generator": "tools/make_tf1_deepfm_fixtures.py",
            "tensorflow": versions[0],
            "numpy_tf": versions[1],
            "numpy_data": np.__version__,
            "optimizer": optimizer,
            "learning_rate": LEARNING_RATE,
            "steps": len(losses),
            "batch_size": int(d["batches"].shape[1]),
            "data_sha256": ex.data_digest(d),
            # float32 losses as Python floats: repr round-trips them exactly
            "loss": [float(v) for v in losses],
        }
        with open(os.path.join(args.out, f"{optimizer}.json"), "w") as f:
            json.dump(record, f, indent=1)
            f.write("\n")
        np.savez_compressed(os.path.join(args.out, f"{optimizer}.npz"), **final)
        print(f"{optimizer}: {len(losses)} TF {versions[0]} losses, {len(final)} variables "
              f"-> {args.out}")


if __name__ == "__main__":
    main()
