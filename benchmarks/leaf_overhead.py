"""Per-leaf overhead of the functional ``co.adam`` against ``optax.adam`` (issue 17).

Three pytree shapes of float32 (1 x 16.4M, 1,000 x 16,384, 4,096 x 4,096), the update-only
step ``step(params, state, grads) -> (params, state)`` jitted with ``params, state``
donated, timed in interleaved rounds (every ratio is formed within a round; see
``benchmarks/README.md``). The single big leaf is also paired with an in-place jitted
triad (``a <- a + 3 b``, 12 B/element) in the same rounds: "of triad" is Adam's bandwidth
at its 28 B/parameter over the triad's.

Also reported:

* **first call**: trace / lower / XLA compile / first step, each implementation in a fresh
  process (``compile_memory.probe``), alternating, ``--compile-repeats`` times;
* **HLO per leaf**: the compiled step for two leaves of each size: loops (fusions) per
  leaf, the ops inside them by opcode, what XLA:CPU's parallel task assigner made of each
  loop (``outer_dimension_partitions``: a loop split over threads), XLA's cost analysis
  (flops / bytes: above 1 the assigner treats a loop as compute bound and splits it), and
  the ops compatopt has beyond optax (converts, barriers' compare/or, copies...);
* **anatomy** of the single big leaf: each pass over memory (``_anatomy.loops``).

Run::

    PYTHONPATH=. python3 -m benchmarks.leaf_overhead            # ~6 min on 2 cores
    PYTHONPATH=. python3 -m benchmarks.leaf_overhead --quick    # < 3 min
    PYTHONPATH=. python3 -m benchmarks.leaf_overhead --sections hlo   # op counts only

Writes ``--out`` (default ``benchmarks/results/leaf-overhead-cpu.json``) and prints a
Markdown report.
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import os
import re
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import _anatomy, _cases
from benchmarks._harness import Candidate, interleave, machine_stamp, ratio_stats, stats
from benchmarks._steps import StepCandidate

SHAPES = [_cases.Shape(1, 16_384_000), _cases.Shape(1000, 16_384), _cases.Shape(4096, 4096)]
IMPLS = ("compatopt", "optax")
_FUSION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(\S+)\s+fusion\((.*?)\),.*?"
                     r"calls=%?([\w.\-]+)")
_OP = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*\S+\s+([\w\-]+)\(")
_PARTS = re.compile(r'"outer_dimension_partitions":\["(\d+)"')


def _make(impl: str):
    rc = _cases.RULES_BY_NAME["adam"]
    if impl == "optax":
        return rc.make_optax(), _cases.optax_step
    return rc.make(), _cases.rule_step


# ----------------------------------------------------------------------------------- HLO


def _computations(text: str) -> dict:
    """name -> body lines of every computation in an HLO module's text."""
    comps, name, body = {}, None, []
    for line in text.splitlines():
        if name is None:
            m = re.match(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$", line)
            if m:
                name, body = ("ENTRY" if line.startswith("ENTRY") else m.group(1)), []
        elif line.startswith("}"):
            comps[name] = body
            name = None
        else:
            body.append(line)
    return comps


def _opcodes(comps: dict, name: str) -> collections.Counter:
    """Opcodes of one fused computation (nested fusions included; parameters left out)."""
    ops = collections.Counter()
    for line in comps.get(name, []):
        m = _OP.match(line)
        if not m or m.group(1) == "parameter":
            continue
        ops[m.group(1)] += 1
        inner = re.search(r"calls=%?([\w.\-]+)", line)
        if m.group(1) == "fusion" and inner:
            ops += _opcodes(comps, inner.group(1))
    return ops


def hlo_per_leaf(impl: str, size: int, leaves: int = 2) -> dict:
    """The compiled step for ``leaves`` leaves of ``size``: per-leaf loops and their ops."""
    rule, fn = _make(impl)
    p = [jnp.zeros(size, jnp.float32) for _ in range(leaves)]
    state = rule.init(p)
    compiled = jax.jit(fn(rule), donate_argnums=(0, 1)).lower(p, state, p).compile()
    text = compiled.as_text()
    comps = _computations(text)
    loops, scalar_ops = [], collections.Counter()
    big_names = set()
    for line in comps["ENTRY"]:
        m = re.match(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(\S+)", line)
        if m and f"[{size}]" in m.group(2):
            big_names.add(m.group(1))
    for line in comps["ENTRY"]:
        m = _OP.match(line)
        if not m or m.group(1) in ("parameter", "tuple", "get-tuple-element", "constant"):
            continue
        f = _FUSION.match(line)
        big = f"[{size}]" in line.split("=", 1)[1].split("(", 1)[0]
        if f and big:
            parts = _PARTS.search(line)
            ops = _opcodes(comps, f.group(4))
            arrays = sum(1 for o in f.group(3).split(",") if o.strip().lstrip("%") in big_names)
            loops.append({"name": f.group(1), "ops": dict(ops),
                          "partitions": int(parts.group(1)) if parts else 1,
                          # XLA's cost analysis: every elementwise op (bitcast-convert
                          # included) is one flop; broadcasts and constants are free
                          "flops_per_elem": sum(v for k, v in ops.items()
                                                if k not in ("broadcast", "constant")),
                          "bytes_per_elem": 4 * (arrays + 1)})
        elif big:
            loops.append({"name": m.group(1), "ops": {m.group(1): 1}, "partitions": 1,
                          "unfused": m.group(1)})
        else:
            scalar_ops[m.group(1)] += 1
    ca = compiled.cost_analysis()
    ca = ca[0] if isinstance(ca, (list, tuple)) else (ca or {})
    per_leaf_ops = collections.Counter()
    for lp in loops:
        per_leaf_ops.update(lp["ops"])
    return {"impl": impl, "size": size, "leaves": leaves,
            "loops_per_leaf": len(loops) / leaves,
            "split_loops_per_leaf": sum(lp["partitions"] > 1 for lp in loops) / leaves,
            "ops_per_leaf": {k: v / leaves for k, v in sorted(per_leaf_ops.items())},
            # every loop of the step: (flops, bytes) per element and threads
            "loops": sorted((lp.get("flops_per_elem", 0), lp.get("bytes_per_elem", 0),
                             lp["partitions"]) for lp in loops),
            "scalar_ops": dict(scalar_ops),
            "flops": float(ca.get("flops", 0.0)), "bytes": float(ca.get("bytes accessed", 0.0))}


def hlo_section(sizes) -> list:
    rows = []
    for size in sizes:
        for impl in IMPLS:
            rows.append(hlo_per_leaf(impl, size))
    return rows


def anatomy_section(n: int) -> dict:
    return _anatomy.anatomy("adam", n)


# ------------------------------------------------------------------------------- timing


class _Triad:
    """In-place jitted triad ``a <- a + 3 b`` on ``n`` float32 (12 B/element)."""

    def __init__(self, n: int) -> None:
        self.b = jnp.full(n, 2.0, jnp.float32)
        self.a = jnp.zeros(n, jnp.float32)
        self.fn = jax.jit(lambda a, x: a + 3.0 * x, donate_argnums=0)

    def step(self) -> None:
        self.a = self.fn(self.a, self.b)
        self.a.block_until_ready()


def time_shape(shape, rounds: int, min_round_s: float) -> dict:
    grads = _cases.make_tree(shape, jnp.float32, 0.01, seed=1)
    params = _cases.make_tree(shape, jnp.float32, 0.5, seed=2)
    built = {}
    for impl in IMPLS:
        rule, fn = _make(impl)
        p = [jnp.array(x, copy=True) for x in params]
        built[impl] = StepCandidate(impl, fn(rule), p, rule.init(p), grads, True, impl)
    del params
    cands = [c.candidate() for c in built.values()]
    triad = _Triad(shape.total) if shape.leaves == 1 else None
    if triad is not None:
        cands.append(Candidate("triad", triad.step, "in-place triad"))
    times = interleave(cands, rounds, min_round_s=min_round_s)
    row = {"shape": shape.label, "leaves": shape.leaves, "size": shape.size,
           "seconds": {k: stats(v) for k, v in times.items()},
           "vs_optax": ratio_stats(times, "compatopt", "optax"),
           "in_process_first_call_s": {k: c.compile_s for k, c in built.items()}}
    if triad is not None:
        # bandwidth ratio: (28 n / t_adam) / (12 n / t_triad)
        for impl in IMPLS:
            r = ratio_stats(times, "triad", impl)
            row[f"{impl}_of_triad"] = {k: (v * 28 / 12 if k != "n" else v)
                                       for k, v in r.items()}
    for c in built.values():
        c.free()
    del built, grads, triad
    gc.collect()
    return row


def compile_section(shapes, repeats: int) -> list:
    """First call of each implementation in a fresh process, alternating, ``repeats`` times."""
    from benchmarks.compile_memory import run_probe

    rows = []
    for shape in shapes:
        got = {impl: [] for impl in IMPLS}
        for r in range(repeats):
            for impl in (IMPLS if r % 2 == 0 else IMPLS[::-1]):
                got[impl].append(run_probe(impl, "adam", shape.leaves, shape.size))
        row = {"shape": shape.label}
        for impl, probes in got.items():
            ok = [p for p in probes if "error" not in p]
            if not ok:
                row[impl] = {"error": probes[0].get("error")}
                continue
            row[impl] = {k: float(np.median([p[k] for p in ok]))
                         for k in ("trace_s", "lower_s", "compile_s", "first_step_s", "total_s")}
        if all("total_s" in row[i] for i in IMPLS):
            row["ratio"] = row["compatopt"]["total_s"] / row["optax"]["total_s"]
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------- report


def _mm(s: dict, scale: float = 1.0, fmt: str = "{:.3g}") -> str:
    return (f"{fmt.format(s['median'] * scale)} ({fmt.format(s['min'] * scale)}–"
            f"{fmt.format(s['max'] * scale)})")


def render(result: dict) -> str:
    st = result["stamp"]
    out = [f"# co.adam vs optax.adam per leaf ({st['cpu']}, {st['cpu_cores']} cores)", "",
           f"{st['date']}; jax {st['jax']}, jaxlib {st['jaxlib']}, optax {st['optax']}; "
           f"load average at start {st['load_avg_at_start']:.2f}; mode {result['mode']}.", ""]
    if result.get("time"):
        out += ["## Step time (update only, float32, donated; interleaved rounds)", "",
                "| shape | co.adam ms | optax ms | co / optax (per round) | of triad: co | "
                "of triad: optax | rounds |",
                "| --- | --- | --- | --- | --- | --- | ---: |"]
        for r in result["time"]:
            s = r["seconds"]
            tri = {i: _mm(r[f"{i}_of_triad"], fmt="{:.2f}") if f"{i}_of_triad" in r else ""
                   for i in IMPLS}
            out.append(f"| {r['shape']} | {_mm(s['compatopt'], 1e3)} | {_mm(s['optax'], 1e3)} "
                       f"| {_mm(r['vs_optax'], fmt='{:.2f}')}× | {tri['compatopt']} | "
                       f"{tri['optax']} | {r['vs_optax']['n']} |")
        out.append("")
    if result.get("compile"):
        out += ["## First call (fresh process each; median of repeats; seconds)", "",
                "| shape | impl | trace | lower | compile | first step | total | co / optax |",
                "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in result["compile"]:
            for impl in IMPLS:
                c = r[impl]
                if "error" in c:
                    out.append(f"| {r['shape']} | {impl} | error: {c['error'][:80]} |||||")
                    continue
                ratio = f"{r['ratio']:.2f}×" if impl == "compatopt" and "ratio" in r else ""
                out.append(f"| {r['shape']} | {impl} | {c['trace_s']:.2f} | {c['lower_s']:.2f} "
                           f"| {c['compile_s']:.2f} | {c['first_step_s']:.3f} | "
                           f"{c['total_s']:.2f} | {ratio} |")
        out.append("")
    if result.get("hlo"):
        out += ["## HLO per leaf (compiled step over 2 leaves of each size)", "",
                "| leaf size | impl | loops/leaf | each loop: flops/elem, bytes/elem -> threads | "
                "step flops / bytes | ops per leaf |",
                "| ---: | --- | ---: | --- | --- | --- |"]
        for r in result["hlo"]:
            ops = ", ".join(f"{k} {v:g}" for k, v in r["ops_per_leaf"].items())
            ratio = r["flops"] / r["bytes"] if r["bytes"] else float("nan")
            loops = "; ".join(f"{f}, {b} -> {t}" for f, b, t in r["loops"][:6])
            out.append(f"| {r['size']} | {r['impl']} | {r['loops_per_leaf']:g} | "
                       f"{loops} | {ratio:.2f} | {ops} |")
        out.append("")
        by = {(r["size"], r["impl"]): r for r in result["hlo"]}
        for size in sorted({r["size"] for r in result["hlo"]}):
            co_ops, ox_ops = by[(size, "compatopt")]["ops_per_leaf"], by[(size, "optax")][
                "ops_per_leaf"]
            extra = {k: co_ops.get(k, 0) - ox_ops.get(k, 0) for k in set(co_ops) | set(ox_ops)}
            extra = {k: v for k, v in extra.items() if v}
            out.append(f"* leaf size {size}: co.adam beyond optax per leaf: "
                       + (", ".join(f"{k} {v:+g}" for k, v in sorted(extra.items())) or "none")
                       + f"; scalar ops co {by[(size, 'compatopt')]['scalar_ops']}, optax "
                       f"{by[(size, 'optax')]['scalar_ops']}")
        out.append("")
    if result.get("anatomy"):
        a = result["anatomy"]
        out += ["## Passes over memory for one big leaf (from the compiled HLO)", "",
                f"floor: {a['floor_bytes_per_param']} B/param", ""]
        for impl in ("compatopt", "noguard", "optax"):
            if impl in a:
                out.append(f"* {impl}: {a[impl]['loops']} loops, {a[impl]['bytes_per_param']} "
                           f"B/param ({'; '.join(a[impl]['passes'])})")
        out.append("")
    return "\n".join(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="< 3 min: fewer rounds")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--compile-repeats", type=int, default=None)
    parser.add_argument("--sections", default="time,compile,hlo,anatomy")
    parser.add_argument("--shapes", default="", help="e.g. 4096x4096,1x16384000")
    parser.add_argument("--out", default="benchmarks/results/leaf-overhead-cpu.json")
    args = parser.parse_args(argv)
    sections = set(args.sections.split(","))
    shapes = SHAPES
    if args.shapes:
        shapes = [_cases.Shape(*map(int, s.split("x"))) for s in args.shapes.split(",")]
    rounds = args.rounds or (7 if args.quick else 21)
    repeats = args.compile_repeats or (1 if args.quick else 3)
    result = {"stamp": machine_stamp(), "mode": "quick" if args.quick else "default",
              "rounds": rounds}
    t0 = time.perf_counter()
    if "hlo" in sections:
        result["hlo"] = hlo_section(sorted({s.size for s in shapes}))
    if "anatomy" in sections:
        result["anatomy"] = anatomy_section(max(s.size for s in shapes))
    if "time" in sections:
        result["time"] = []
        for shape in shapes:
            print(f"timing {shape.label} ...", file=sys.stderr)
            result["time"].append(time_shape(shape, rounds, 0.05 if args.quick else 0.1))
    if "compile" in sections:
        print("first calls (fresh processes) ...", file=sys.stderr)
        result["compile"] = compile_section(shapes, repeats)
    result["elapsed_s"] = time.perf_counter() - t0
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    print(render(result))
    print(f"\n({result['elapsed_s']:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
