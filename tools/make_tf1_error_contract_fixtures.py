"""Records how TF1 (graph mode, then eager) reacts to malformed optimizer calls.

The seed's contract: ``compute_gradients``/``minimize`` raise ``TypeError`` when ``var_list``
holds anything but Variables, ``apply_gradients`` raises ``TypeError`` for a malformed
``grads_and_vars`` and ``ValueError`` when no variable has a gradient. TF1 itself is less
regular (an ``AttributeError`` for a numpy array in ``var_list``, ``NotImplementedError``
for a Tensor target, ``ValueError`` from tuple unpacking, nothing at all for a Tensor in a
graph-mode ``var_list``); ``tests/train/test_error_contract.py`` checks that compatopt's
error is catchable as both the seed's type and TF1's, case by case.

Run with TensorFlow 2.21::

    python tools/make_tf1_error_contract_fixtures.py [out_dir]

Writes ``errors.json`` (default ``tests/fixtures/tf1/error_contract/``): per mode and case,
``null`` (TF1 raised nothing) or the exception's type, its builtin bases and its message.
"""

from __future__ import annotations

import builtins
import json
import os
import sys

import numpy as np

# case -> what is called; ``w``, ``u``: float32 Variables of shape (2,), ``loss``: sum(w * w),
# ``t``: a constant tensor, ``g``: a gradient of ones. Shared with the test (no TF needed).
CASES = {
    "cg_var_list_tensor": "compute_gradients(loss, var_list=[w, t])",
    "cg_var_list_numpy": "compute_gradients(loss, var_list=[np.ones(2, np.float32)])",
    "cg_var_list_str": "compute_gradients(loss, var_list=['w'])",
    "cg_var_list_empty": "compute_gradients(loss, var_list=[])",
    "min_var_list_tensor": "minimize(loss, var_list=[t])",
    "min_var_list_numpy": "minimize(loss, var_list=[np.ones(2, np.float32)])",
    "ag_var_tensor": "apply_gradients([(g, t)])",
    "ag_var_numpy": "apply_gradients([(g, np.ones(2, np.float32))])",
    "ag_grad_object": "apply_gradients([(object(), w)])",
    "ag_not_pair_tensor": "apply_gradients([g])",
    "ag_not_pair_triple": "apply_gradients([(g, w, 1)])",
    "ag_not_pair_single": "apply_gradients([(g,)])",
    "ag_none": "apply_gradients(None)",
    "ag_all_none": "apply_gradients([(None, w), (None, u)])",
    "ag_empty": "apply_gradients([])",
}


def _builtin_bases(exc_type: type) -> list:
    return [c.__name__ for c in exc_type.__mro__
            if getattr(builtins, c.__name__, None) is c and c not in (object, BaseException,
                                                                       Exception)]


def _capture(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001
        return {"type": type(e).__name__, "builtin_bases": _builtin_bases(type(e)),
                "message": str(e)}
    return None


def _record(tf, graph: bool) -> dict:
    v1 = tf.compat.v1
    w = v1.Variable(np.ones(2, np.float32), name="w")
    u = v1.Variable(np.ones(2, np.float32), name="u")
    if graph:
        loss = tf.reduce_sum(w * w)
    else:
        def loss():
            return tf.reduce_sum(w * w)
    opt = v1.train.GradientDescentOptimizer(0.1)  # noqa: F841 (used by eval)
    t = tf.constant([1.0, 2.0])  # noqa: F841
    g = tf.ones(2)  # noqa: F841
    env = dict(np=np, w=w, u=u, loss=loss, t=t, g=g, opt=opt)
    return {case: _capture(lambda c=call: eval("opt." + c, env))  # noqa: S307
            for case, call in CASES.items()}


def main(out_dir: str) -> None:
    import tensorflow as tf

    with tf.Graph().as_default():
        graph = _record(tf, graph=True)
    eager = _record(tf, graph=False)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "errors.json"), "w") as f:
        json.dump({"_tensorflow": tf.__version__, "graph": graph, "eager": eager}, f,
                  indent=1, sort_keys=True)


if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    main(sys.argv[1] if len(sys.argv) > 1 else
         os.path.join(here, "..", "tests", "fixtures", "tf1", "error_contract"))
