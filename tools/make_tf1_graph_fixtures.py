"""Records the functional rules' reference trajectories in TF1 **graph mode**.

TF1 programs ran in graph mode (``tf.compat.v1.Session``, Grappler on), so that is the
reference. This generator replays every case of ``make_tf1_fixtures.py`` (same names, same
initial values and gradients, read from the eager fixtures) with the optimizer built into a
graph: gradients are fed through placeholders, ``apply_gradients`` is one ``train_op`` run
once per step by a ``Session`` with the default Grappler configuration, and a decayed
learning rate is the graph tensor ``tf.compat.v1.train.<decay>(..., global_step)``.

Run with TensorFlow 2.21 (CPU)::

    python tools/make_tf1_graph_fixtures.py [out_dir] [--cases SUBSTRING]

Writes ``<case>.npz`` with the layout of the eager fixtures (``state/...`` after every step,
``lrs`` for schedule cases, the gradients) plus ``manifest.json`` into
``tests/fixtures/tf1/rules_graph/`` (default), storing only the cases whose graph trajectory
differs in any bit from the committed eager fixture. Each case is also re-run eagerly on
this machine, so the manifest can say *why* it differs: ``same_as_eager`` is graph == eager
on the same CPU (the mode changes nothing), ``differs_from_fixture`` names the arrays that
differ from the committed fixture, and ``cause`` is ``"mode"`` (Grappler's rewrites) or
``"cpu"`` (graph == eager here, but the fixture was recorded on another CPU: Eigen's packet
``rsqrt`` comes from ``rsqrtps``, whose tables differ between CPU vendors).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_tf1_fixtures as eager_gen  # noqa: E402

tf1 = tf.compat.v1
EAGER = eager_gen.OUT
OUT = EAGER.parent / "rules_graph"


def _load(value: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "bfloat16" and value.dtype == np.uint16:
        return value.view(eager_gen.ml_dtypes.bfloat16)
    return value


def record_graph(entry: dict, eager: dict) -> dict:
    """Replays one eager case's inputs through a TF1 graph; returns its arrays."""
    rule, dtype = entry["rule"], entry["dtype"]
    tf_cls, _ = eager_gen.RULES[rule]
    tf_dtype = eager_gen.TF_DTYPES[dtype]
    names = list(entry["variables"])
    hist: dict[str, list] = {}
    graph = tf.Graph()
    with graph.as_default():
        variables = {n: tf1.Variable(_load(eager[f"state/var/{n}"][0], dtype), name=n,
                                     use_resource=True) for n in names}
        global_step = tf1.Variable(0, dtype=tf.int64, name="global_step", use_resource=True)
        kw = eager_gen._tf_kwargs(rule, entry["kwargs"], entry["hp64"], global_step)
        lr_tensor = None
        if entry["schedule"]:
            lr_tensor = eager_gen.SCHEDULES[entry["schedule"]](global_step)
            kw["learning_rate"] = lr_tensor
        opt = tf_cls(**kw)
        feeds, gvs = {}, []
        for n in names:
            shape = tuple(entry["variables"][n])
            if entry["sparse"] and n in eager_gen.SPARSE_ENTRIES:
                k = eager_gen.SPARSE_ENTRIES[n]
                vals = tf1.placeholder(tf_dtype, (k,) + shape[1:], name=f"{n}_values")
                idx = tf1.placeholder(tf.int32, (k,), name=f"{n}_indices")
                feeds[n] = (vals, idx)
                gvs.append((tf.IndexedSlices(vals, idx, tf.constant(shape, tf.int64)),
                            variables[n]))
            else:
                g = tf1.placeholder(tf_dtype, shape, name=f"{n}_grad")
                feeds[n] = g
                gvs.append((g, variables[n]))
        none_steps = {n: set(s) for n, s in entry["none_steps"].items()}
        # A None gradient is a different graph (TF1 builds no update op for it).
        patterns = {}
        for step in range(entry["steps"]):
            key = tuple(n for n in names if step in none_steps.get(n, ()))
            if key not in patterns:
                patterns[key] = opt.apply_gradients(
                    [(None if v.op.name in key else g, v) for g, v in gvs],
                    global_step=global_step)
        slot_names = list(opt.get_slot_names())
        nonslots = ([*opt._get_beta_accumulators()] if entry["nonslots"] else [])
        with tf1.Session(graph=graph) as sess:
            sess.run(tf1.global_variables_initializer())

            def snapshot():
                for n in names:
                    hist.setdefault(f"state/var/{n}", []).append(sess.run(variables[n]))
                    for s in slot_names:
                        hist.setdefault(f"state/slot/{s}/{n}", []).append(
                            sess.run(opt.get_slot(variables[n], s)))
                for s, acc in zip(entry["nonslots"], nonslots):
                    hist.setdefault(f"state/nonslot/{s}", []).append(sess.run(acc))

            snapshot()
            for step in range(entry["steps"]):
                if lr_tensor is not None:
                    hist.setdefault("lrs", []).append(np.float32(sess.run(lr_tensor)))
                feed = {}
                for n in names:
                    if entry["sparse"] and n in eager_gen.SPARSE_ENTRIES:
                        vals, idx = feeds[n]
                        feed[vals] = _load(eager[f"grad/{n}/values"][step], dtype)
                        feed[idx] = eager[f"grad/{n}/indices"][step]
                    elif step not in none_steps.get(n, ()):
                        feed[feeds[n]] = _load(eager[f"grad/{n}"][step], dtype)
                key = tuple(n for n in names if step in none_steps.get(n, ()))
                sess.run(patterns[key], feed)
                snapshot()
    return {k: eager_gen._store(np.stack(v)) for k, v in hist.items()}


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.tobytes() == b.tobytes()


def main(argv: list) -> int:
    out = Path(argv[0]) if argv and not argv[0].startswith("--") else OUT
    only = argv[argv.index("--cases") + 1] if "--cases" in argv else ""
    manifest = json.loads((EAGER / "manifest.json").read_text())
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for entry in manifest["cases"]:
        if only not in entry["name"]:
            continue
        with np.load(EAGER / entry["file"]) as f:
            eager = dict(f)
        arrays = record_graph(entry, eager)
        case = next(c for c in eager_gen.case_list() if c["name"] == entry["name"])
        _, here = eager_gen.record(case)  # eager, on this CPU, same inputs (same seed)
        differ = sorted(k for k, v in arrays.items() if not _same(v, eager[k]))
        mode_differ = sorted(k for k, v in arrays.items() if not _same(v, here[k]))
        cause = None if not differ else ("mode" if mode_differ else "cpu")
        entries.append(dict(name=entry["name"], same_as_eager=not mode_differ,
                            differs_from_fixture=differ, cause=cause))
        if differ:
            grads = {k: v for k, v in eager.items() if k.startswith("grad/")}
            np.savez_compressed(out / entry["file"], **arrays, **grads)
        print(entry["name"], cause or "same", differ[:4], flush=True)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), "unknown")
    meta = dict(tensorflow=tf.__version__, mode="graph (Session, default Grappler)", cpu=cpu,
                note="Recorded by tools/make_tf1_graph_fixtures.py from the eager cases' "
                     "inputs; only differing cases are stored.")
    (out / "manifest.json").write_text(json.dumps(dict(meta=meta, cases=entries), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
