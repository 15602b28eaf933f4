"""Records the TF1 loss curve that ``examples/port_tf1_mlp.py`` plots without TensorFlow.

Runs the example's own TF1 script, ``examples/tf1_mlp_original.py`` (placeholders, a graph,
``Session.run([train_op, loss])``, Adam with ``exponential_decay``), under a Python that has
TensorFlow 2.21 (``pip install compatopt[tf]``)::

    python tools/make_tf1_example_fixtures.py [--tf-python PYTHON] [--out PATH]

This interpreter (with compatopt and scikit-learn) builds the data, the initial weights and
the batch order with the example's ``make_data`` (NumPy and scikit-learn's digits only; the
port itself is not run); ``PYTHON`` (default: this interpreter, if it imports TensorFlow; or
``$TF_PYTHON``) runs the TF1 graph. Writes ``tests/fixtures/tf1/examples/port_tf1_mlp_loss.json``
(default): the loss TF1 reports at every step of the default configuration, the versions
and the SHA-256 of the inputs, so the example only uses it for the data it was recorded on.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLE = os.path.join(HERE, "..", "examples", "port_tf1_mlp.py")


def _example():
    spec = importlib.util.spec_from_file_location("port_tf1_mlp", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    ex = _example()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tf-python", default=None)
    parser.add_argument("--out", default=ex.RECORDED)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=100)
    args = parser.parse_args()
    tf_python = ex.find_tf_python(args.tf_python)
    if tf_python is None:
        raise SystemExit("needs TensorFlow: pass --tf-python or set $TF_PYTHON")
    versions = json.loads(subprocess.run(
        [tf_python, "-c", "import json, numpy, tensorflow; print(json.dumps("
         "[tensorflow.__version__, numpy.__version__]))"],
        check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
    import numpy as np
    import sklearn

    d = ex.make_data(args.epochs, args.batch_size)
    losses = ex.run_tf1_original(tf_python, d)
    assert len(losses) == len(d["batches"]), (len(losses), len(d["batches"]))
    record = {
        "what": "examples/tf1_mlp_original.py (TF1 graph mode, Session) loss before each step",
        "generator": "tools/make_tf1_example_fixtures.py",
        "tensorflow": versions[0],
        "numpy_tf": versions[1],
        "numpy_data": np.__version__,
        "scikit_learn": sklearn.__version__,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "steps": len(losses),
        "data_sha256": ex.data_digest(d),
        # float32 losses as Python floats: repr round-trips them exactly
        "loss": [float(v) for v in losses],
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(record, f, indent=1)
        f.write("\n")
    print(f"{len(losses)} TF {versions[0]} losses -> {args.out}")


if __name__ == "__main__":
    main()
