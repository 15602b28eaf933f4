"""Records TF1's learning-rate decay functions in **graph mode** as fixtures for compatopt.

TF1 programs ran in graph mode (``tf.compat.v1`` with eager execution disabled, a
``Session``, the default Grappler configuration). Grappler rewrites the Python-composed
arithmetic of the decay functions when its operands are constants (spec §1.6), so the values
differ in the last bit from the eager ones of ``make_tf1_schedule_fixtures.py``.

Run with the TensorFlow venv (TF 2.21, CPU)::

    /tmp/tfenv/bin/python tools/make_tf1_graph_schedule_fixtures.py

For every case of the eager generator (same names, same arguments, same steps) plus the
graph-only cases below, the decay tensor is built once from
``tf.compat.v1.train.<fn>(..., global_step=<int64 resource Variable>)``; one ``Session``
assigns each step and runs the tensor. Arguments encoded ``{"var": <arg>}`` become a
``tf.Variable`` (resource) holding that value, so Grappler cannot fold them.

Writes ``tests/fixtures/tf1/schedules_graph/``:

* ``values.npz``: ``<case>__steps`` (int64) and ``<case>__values``;
* ``manifest.json``: each case's function and arguments (or ``error``: the exception TF
  raised building the graph), per case ``same_as_eager`` (for
  the eager generator's cases: whether every recorded bit equals the eager fixture) and
  ``graph``, the Grappler-optimized graph as run (``node = Op(inputs)``, constants with
  their value), the TF version and host.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402  # pyright: ignore[reportMissingModuleSource]

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_tf1_schedule_fixtures as eager_gen  # noqa: E402

tf.config.set_visible_devices([], "GPU")
tf1 = tf.compat.v1
train = tf1.train
EAGER = eager_gen.OUT
OUT = EAGER.parent / "schedules_graph"
STEPS = eager_gen.STEPS
py, npv = eager_gen.py, eager_gen.npv


def var(arg: dict) -> dict:
    return {"var": arg}


# Graph-only cases: other exponents of polynomial_decay (Grappler rewrites pow(x, C) for some
# constants), other constants, and Variable-backed arguments (not folded).
EXTRA_CASES = {
    "polynomial_pow2": ("polynomial_decay", py(0.1), [py(100)], {"power": py(2.0)}),
    "polynomial_pow3": ("polynomial_decay", py(0.1), [py(100)],
                        {"end_learning_rate": py(0.003), "power": py(3.0)}),
    "polynomial_pow1_5": ("polynomial_decay", py(0.1), [py(90)], {"power": py(1.5)}),
    "polynomial_pow0": ("polynomial_decay", py(0.1), [py(90)], {"power": py(0.0)}),
    "polynomial_pow_m0_5": ("polynomial_decay", py(0.1), [py(70)],
                            {"end_learning_rate": py(0.2), "power": py(-0.5)}),
    "polynomial_pow_m1": ("polynomial_decay", py(0.1), [py(70)],
                          {"end_learning_rate": py(0.2), "power": py(-1.0)}),
    "polynomial_cycle_pow1": ("polynomial_decay", py(0.07), [py(29)],
                              {"end_learning_rate": py(0.001), "cycle": py(True)}),
    "exponential_rate_gt1": ("exponential_decay", py(0.3), [py(11), py(1.03)], {}),
    "inverse_time_odd": ("inverse_time_decay", py(0.3), [py(7), py(0.3)], {}),
    "cosine_lr_odd": ("cosine_decay", py(0.7), [py(77)], {}),
    "cosine_lr_odd_alpha": ("cosine_decay", py(0.7), [py(77)], {"alpha": py(0.25)}),
    "cosine_ds5_alpha": ("cosine_decay", py(0.1), [py(5)], {"alpha": py(0.1)}),
    "linear_cosine_alpha": ("linear_cosine_decay", py(0.3), [py(130)],
                            {"num_periods": py(1.5), "alpha": py(0.2), "beta": py(0.003)}),
    "linear_cosine_nobeta": ("linear_cosine_decay", py(0.3), [py(130)],
                             {"num_periods": py(0.7), "beta": py(0.0)}),
    "restarts_alpha_tmul1": ("cosine_decay_restarts", py(0.2), [py(30)],
                             {"t_mul": py(1.0), "alpha": py(0.1)}),
    "linear_cosine_alpha_nobeta": ("linear_cosine_decay", py(0.3), [py(130)],
                                   {"num_periods": py(0.7), "alpha": py(0.2), "beta": py(0.0)}),
    "inverse_time_f16": ("inverse_time_decay", npv("float16", 0.1), [py(10), py(0.3)], {}),
    "polynomial_f16_cycle": ("polynomial_decay", npv("float16", 0.1), [py(30)],
                             {"cycle": py(True)}),
    "polynomial_f16_sqrt": ("polynomial_decay", npv("float16", 0.1), [py(300)],
                            {"power": py(0.5)}),
    # Variable-backed arguments: Grappler cannot fold them.
    "exponential_var_lr": ("exponential_decay", var(py(0.1)), [py(7), py(0.96)], {}),
    "exponential_var_rate": ("exponential_decay", py(0.1), [py(7), var(py(0.96))], {}),
    "exponential_var_steps": ("exponential_decay", py(0.1), [var(py(7.0)), py(0.96)], {}),
    "natural_exp_var_rate": ("natural_exp_decay", py(0.1), [py(5), var(py(0.5))], {}),
    "inverse_time_var_lr": ("inverse_time_decay", var(py(0.1)), [py(10), py(0.5)], {}),
    "inverse_time_var_rate": ("inverse_time_decay", py(0.1), [py(10), var(py(0.5))], {}),
    "polynomial_var_lr": ("polynomial_decay", var(py(0.1)), [py(100)], {}),
    "polynomial_sqrt_var_lr": ("polynomial_decay", var(py(0.1)), [py(300)],
                               {"power": py(0.5)}),
    "polynomial_var_power": ("polynomial_decay", py(0.1), [py(300)],
                             {"power": var(py(0.5))}),
    "polynomial_cycle_var_lr": ("polynomial_decay", var(py(0.1)), [py(37)],
                                {"end_learning_rate": py(0.01), "power": py(2.0),
                                 "cycle": py(True)}),
    "polynomial_pow3_var_lr": ("polynomial_decay", var(py(0.1)), [py(100)],
                               {"end_learning_rate": py(0.003), "power": py(3.0)}),
    "linear_cosine_nobeta_var_lr": ("linear_cosine_decay", var(py(0.3)), [py(130)],
                                    {"num_periods": py(0.7), "beta": py(0.0)}),
    "cosine_var_lr": ("cosine_decay", var(py(0.1)), [py(100)], {}),
    "cosine_alpha_var_lr": ("cosine_decay", var(py(0.1)), [py(333)], {"alpha": py(0.1)}),
    "restarts_var_lr": ("cosine_decay_restarts", var(py(0.1)), [py(10)], {}),
    "restarts_geometric_var_lr": ("cosine_decay_restarts", var(py(0.1)), [py(20)],
                                  {"t_mul": py(1.5), "m_mul": py(0.8), "alpha": py(0.05)}),
    "linear_cosine_var_lr": ("linear_cosine_decay", var(py(0.1)), [py(250)],
                             {"num_periods": py(2.0), "alpha": py(0.1), "beta": py(0.01)}),
}


def decode(arg, holder: list):
    """A fixture argument as TF gets it; ``{"var": ...}`` creates a resource Variable."""
    if "var" in arg:
        v = tf1.Variable(eager_gen.decode(arg["var"]), use_resource=True, trainable=False,
                         name=f"arg{len(holder)}")
        holder.append(v)
        return v
    return eager_gen.decode(arg)


def _describe(node, consts: dict) -> str:
    if node.op == "Const":
        value = tf.make_ndarray(node.attr["value"].tensor)
        consts[node.name] = value
        return f"{node.name} = Const({value.dtype}:{value.tolist()!r})"
    return f"{node.name} = {node.op}({', '.join(node.input)})"


def run_graph(build) -> tuple[np.ndarray, list[str]]:
    """Builds ``build(global_step)`` in a fresh graph; its value at every step, the graph."""
    graph = tf.Graph()
    with graph.as_default():
        gs = tf1.Variable(0, dtype=tf.int64, use_resource=True, trainable=False,
                          name="global_step")
        holder: list = []
        tensor = build(gs, holder)
        new = tf1.placeholder(tf.int64, ())
        assign = gs.assign(new)
        init = tf1.global_variables_initializer()
        with tf1.Session(graph=graph) as sess:
            sess.run(init)
            sess.run(assign, {new: 3})
            meta = tf1.RunMetadata()
            sess.run(tensor, options=tf1.RunOptions(output_partition_graphs=True),
                     run_metadata=meta)
            lines, consts = [], {}
            for part in meta.partition_graphs:
                for node in part.node:
                    if node.op not in ("_Send", "_Recv", "NoOp", "_Retval", "VarHandleOp"):
                        lines.append(_describe(node, consts))
            vals = []
            for s in STEPS:
                sess.run(assign, {new: int(s)})
                vals.append(sess.run(tensor))
    return np.array(vals), lines


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    uint = {2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize]
    return bool(((a.view(uint) == b.view(uint)) | (np.isnan(a) & np.isnan(b))).all())


def record():
    eager = np.load(EAGER / "values.npz")
    arrays, manifest = {}, {}
    cases = {**eager_gen.CASES, **EXTRA_CASES}
    for name, (fn, lr, args, kwargs) in cases.items():
        def build(gs, holder, fn=fn, lr=lr, args=args, kwargs=kwargs):
            f = getattr(train, fn)
            return f(decode(lr, holder), gs, *[decode(a, holder) for a in args],
                     **{k: decode(v, holder) for k, v in kwargs.items()})

        entry = {"function": fn, "learning_rate": lr, "args": args, "kwargs": kwargs}
        try:
            vals, lines = run_graph(build)
        except Exception as e:  # noqa: BLE001 - recording whatever TF raises
            # Graph construction fails where eager mode works (float64 polynomial cycle).
            entry["error"] = {"type": type(e).__name__, "message": str(e)}
            manifest[name] = entry
            print(f"{name:36s} {type(e).__name__}")
            continue
        arrays[f"{name}__steps"] = STEPS
        arrays[f"{name}__values"] = vals
        entry.update({"dtype": str(vals.dtype), "graph": lines})
        if name in eager_gen.CASES:
            entry["same_as_eager"] = same_bits(vals, eager[f"{name}__values"])
        manifest[name] = entry
        print(f"{name:36s} {entry.get('same_as_eager', '-')}")
    for name, (bounds, values, vdtype, xdtype) in eager_gen.PIECEWISE.items():
        steps = STEPS[STEPS < 2**31] if xdtype == "int32" else STEPS
        vals_in = values if vdtype is None else [np.dtype(vdtype).type(v) for v in values]
        graph = tf.Graph()
        with graph.as_default():
            x = tf1.Variable(0, dtype=getattr(tf, xdtype), use_resource=True, trainable=False)
            tensor = train.piecewise_constant(x, bounds, vals_in)
            new = tf1.placeholder(getattr(tf, xdtype), ())
            assign = x.assign(new)
            with tf1.Session(graph=graph) as sess:
                sess.run(x.initializer)
                out = []
                for s in steps:
                    sess.run(assign, {new: int(s)})
                    out.append(sess.run(tensor))
        out = np.array(out)
        arrays[f"{name}__steps"] = steps
        arrays[f"{name}__values"] = out
        manifest[name] = {"function": "piecewise_constant", "x_dtype": xdtype,
                          "boundaries": bounds, "values": values, "values_np_dtype": vdtype,
                          "dtype": str(out.dtype),
                          "same_as_eager": same_bits(out, eager[f"{name}__values"])}
    return arrays, manifest


def main() -> None:
    tf1.disable_eager_execution()
    OUT.mkdir(parents=True, exist_ok=True)
    arrays, cases = record()
    np.savez_compressed(OUT / "values.npz", **arrays)
    manifest = {
        "generator": "tools/make_tf1_graph_schedule_fixtures.py",
        "tensorflow": tf.__version__,
        "python": sys.version.split()[0],
        "host": {"machine": platform.machine(), "libc": " ".join(platform.libc_ver())},
        "mode": ("graph: tf.compat.v1.disable_eager_execution(), one Session per case with "
                 "the default Grappler configuration; global step = int64 resource Variable "
                 "assigned before each run"),
        "cases": cases,
    }
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(cases)} cases to {OUT}")


if __name__ == "__main__":
    main()
