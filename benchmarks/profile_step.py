"""Where a step's time goes: a ``jax.profiler`` trace of compatopt's and optax's steps.

For each case (rule, pytree shape, implementation) the jitted, donated step runs ``steps``
times under ``jax.profiler.trace``; the XLA:CPU runtime records one event per executed
thunk (a fused loop, a copy) on each thread that worked on it. Per thunk name, the union of
its intervals over all threads, divided by ``steps``, is its wall time per step. Reported:

* wall time per step (host ``perf_counter`` around the loop, blocking at the end only);
* the kernels' time per step and what is left (``host gap``: dispatch, the thunk
  executor's scheduling, buffer bookkeeping, idle threads);
* for one big leaf, each loop with its bytes (from the compiled HLO, see ``_anatomy``) and
  the bandwidth it reached; for many leaves, the number of kernels per step and the gap per
  leaf.

Run::

    python3 -m benchmarks.profile_step            # ~1 minute, writes results/profile-<backend>.md
    python3 -m benchmarks.profile_step --quick

Not a timing benchmark (tracing adds overhead to every thunk; compare with
``benchmarks.run``'s numbers for speed); it says which loop or which per-leaf cost dominates.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import tempfile
import time

import jax
import jax.numpy as jnp

from benchmarks import _anatomy, _cases, _harness, _report

# Runtime bookkeeping on the XLA threads, not kernels ("end: <thunk>" marks a thunk's end).
_HOST_EVENTS = re.compile(r"ThunkExecutor|Threadpool|PjRt|Execute|^end: |^\$|^Pjit|"
                          r"block_until_ready")


def _union_ns(intervals: list) -> int:
    total, end = 0, -1
    for s, e in sorted(intervals):
        if e <= end:
            continue
        total += e - max(s, end)
        end = e
    return total


def _thunk_times(xplane_path: str) -> dict:
    """``{thunk name: (wall ns summed over its instances, instances)}`` from the host plane."""
    from jax._src.profiler import ProfileData

    data = ProfileData.from_file(xplane_path)
    spans = collections.defaultdict(list)
    for plane in data.planes:
        if not plane.name.startswith("/host:CPU"):
            continue
        for line in plane.lines:
            if not line.name.startswith("tf_XLA"):
                continue
            for ev in line.events:
                if not _HOST_EVENTS.search(ev.name):
                    spans[ev.name].append((ev.start_ns, ev.end_ns))
    return {name: (_union_ns(iv), iv) for name, iv in spans.items()}


def _build(impl: str, rule_name: str, shape, dtype):
    rc = _cases.RULES_BY_NAME[rule_name]
    params = _cases.make_tree(shape, dtype, 0.5, seed=2)
    grads = _cases.make_tree(shape, dtype, 0.01, seed=1)
    if impl == "optax":
        rule, fn = rc.make_optax(), _cases.optax_step
    elif impl == "noguard":
        rule, fn = _cases.NoGuardAdam(), _cases.rule_step
    else:
        rule, fn = rc.make(), _cases.rule_step
    if impl == "flat":
        from compatopt._multi_tensor import flatten_params, multi_tensor
        rule = multi_tensor(rule)
        params, grads = flatten_params(params), flatten_params(grads)
    state = rule.init(params)
    step = jax.jit(fn(rule), donate_argnums=(0, 1))
    return step, params, state, grads


def profile_case(impl: str, rule_name: str, shape, dtype=jnp.float32, steps: int = 10) -> dict:
    step, params, state, grads = _build(impl, rule_name, shape, dtype)
    compiled_text = step.lower(params, state, grads).compile().as_text()
    for _ in range(3):
        params, state = step(params, state, grads)
    jax.block_until_ready((params, state))
    t0 = time.perf_counter()
    for _ in range(steps):
        params, state = step(params, state, grads)
    jax.block_until_ready((params, state))
    untraced_ms = (time.perf_counter() - t0) / steps * 1e3
    with tempfile.TemporaryDirectory() as tmp:
        jax.profiler.start_trace(tmp)
        t0 = time.perf_counter()
        for _ in range(steps):
            params, state = step(params, state, grads)
        jax.block_until_ready((params, state))
        wall_ms = (time.perf_counter() - t0) / steps * 1e3
        jax.profiler.stop_trace()
        path = sorted(glob.glob(os.path.join(tmp, "**", "*.xplane.pb"), recursive=True))[-1]
        thunks = _thunk_times(path)
    # Independent small thunks run concurrently on different threads: "busy" is the time
    # any kernel runs, "kernel time" the sum of each thunk's own wall time.
    busy_ms = _union_ns([i for _, iv in thunks.values() for i in iv]) / steps / 1e6
    kernel_ms = sum(ns for ns, _ in thunks.values()) / steps / 1e6
    per_kernel = []
    if shape.leaves == 1:
        n, itemsize = shape.size, jnp.dtype(dtype).itemsize
        big = {name: (r, w) for name, r, w in _anatomy.loops(compiled_text, n)}
        for name, (ns, _iv) in sorted(thunks.items(), key=lambda kv: -kv[1][0]):
            ms = ns / steps / 1e6
            if name in big:
                r, w = big[name]
                gb = (r + w) * n * itemsize / 1e9
                per_kernel.append({"kernel": name, "ms": ms, "reads": r, "writes": w,
                                   "gb_per_s": gb / (ms / 1e3) if ms else float("nan")})
            elif ms >= 0.01:
                per_kernel.append({"kernel": name, "ms": ms})
    return {"impl": impl, "rule": rule_name, "shape": shape.label, "leaves": shape.leaves,
            "steps": steps, "untraced_ms": untraced_ms, "wall_ms": wall_ms,
            "busy_ms": busy_ms, "kernel_ms": kernel_ms, "gap_ms": wall_ms - busy_ms,
            "gap_us_per_leaf": (wall_ms - busy_ms) * 1e3 / shape.leaves,
            "kernels_per_step": len(thunks), "per_kernel": per_kernel}


def render(results: list, stamp: dict) -> str:
    out = ["# Step profiles (jax.profiler, XLA:CPU thunks)", "",
           _report.stamp_line(stamp), "",
           "A thunk's time is the union over threads of its intervals; `kernel ms` sums them,",
           "`busy ms` is the time any kernel runs (small independent thunks overlap on the two",
           "threads), the host gap is wall minus busy (dispatch, thunk scheduling, idle).",
           "Tracing adds a little to every thunk: `untraced ms` is the same loop without it.", "",
           "| rule | shape | implementation | untraced ms | traced wall ms | busy ms | "
           "kernel ms | host gap ms | gap µs/leaf | kernels/step |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        out.append(f"| {r['rule']} | {r['shape']} | {r['impl']} | {r['untraced_ms']:.2f} | "
                   f"{r['wall_ms']:.2f} | {r['busy_ms']:.2f} | {r['kernel_ms']:.2f} | "
                   f"{r['gap_ms']:.2f} | "
                   f"{r['gap_us_per_leaf']:.2f} | {r['kernels_per_step']:.0f} |")
    out += ["", "## One big leaf: the loops", "",
            "| rule | implementation | kernel | ms/step | reads | writes | GB/s |",
            "|---|---|---|---|---|---|---|"]
    for r in results:
        for k in r["per_kernel"]:
            if "reads" in k:
                out.append(f"| {r['rule']} | {r['impl']} | `{k['kernel']}` | {k['ms']:.2f} | "
                           f"{k['reads']} | {k['writes']} | {k['gb_per_s']:.1f} |")
            else:
                out.append(f"| {r['rule']} | {r['impl']} | `{k['kernel']}` (small) | "
                           f"{k['ms']:.3f} | | | |")
    return "\n".join(out) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller shapes, fewer steps")
    ap.add_argument("--rules", default="adam,momentum")
    ap.add_argument("--out", default=None,
                    help="markdown path (default results/profile-<backend>.md)")
    args = ap.parse_args(argv)
    big = _cases.Shape(1, 4_096_000 if args.quick else 16_384_000)
    many = _cases.Shape(100 if args.quick else 1000, 16_384)
    steps = 5 if args.quick else 10
    cases = []
    for rule_name in args.rules.split(","):
        big_impls = ["compatopt", "optax"] + (["noguard"] if rule_name == "adam" else [])
        cases += [(impl, rule_name, big) for impl in big_impls]
        cases += [(impl, rule_name, many) for impl in ("compatopt", "flat", "optax")]
    progress = _harness.Progress(len(cases))
    results = []
    for impl, rule_name, shape in cases:
        progress.step(f"{rule_name} {shape.label} {impl}")
        results.append(profile_case(impl, rule_name, shape, steps=steps))
    progress.close()
    stamp = _harness.machine_stamp()
    text = render(results, stamp)
    here = os.path.dirname(os.path.abspath(__file__))
    path = args.out or os.path.join(here, "results", f"profile-{stamp['backend']}.md")
    with open(path, "w") as f:
        f.write(text)
    print(text)
    print(f"written {path}")


if __name__ == "__main__":
    main()
