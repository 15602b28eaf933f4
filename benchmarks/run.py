"""compatopt's benchmark suite: one command, a markdown table and a PNG.

    python3 -m benchmarks.run            # default run, < 10 min on a 2-core CPU
    python3 -m benchmarks.run --quick    # about a minute: smaller arrays, fewer cases
    python3 -m benchmarks.run --full     # everything, incl. 10,000-leaf per-leaf compiles
    python3 -m benchmarks.run --out DIR  # results elsewhere (e.g. one directory per GPU)

Sections: the memory roofline (jitted copy/triad and per-rule floor kernels), update-only
steps against optax (every rule it has) and alone (the TF1-only rules), the exact-mode
cost, compile time and peak memory per pytree shape, a whole MLP training step (functional,
``co.function``, eager ``minimize``, optax, TF1 graph mode) and dispatch cost. Every
candidate is timed interleaved with its baseline and the floor kernel in the same process;
tables give medians with min/max and ratios formed within each round.

Writes ``results.json``, ``results.md`` and ``results.png`` under ``--out`` (default
``benchmarks/results``). TF1 numbers come from ``benchmarks/tf1_bench.py`` run by an
interpreter that can import TensorFlow (this one, ``--tf-python``, or ``$TF_PYTHON``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks import _report  # noqa: E402
from benchmarks._harness import Progress, machine_stamp  # noqa: E402

CACHE = os.path.join(HERE, "results", "cache.json")
SECTIONS = ("roofline", "anatomy", "update", "compile", "mlp", "tf1")


def _tf_python(arg):
    if arg:
        return arg
    if os.environ.get("TF_PYTHON"):
        return os.environ["TF_PYTHON"]
    try:
        import tensorflow  # noqa: F401
        return sys.executable
    except ImportError:
        pass
    for cand in ("/work/tfenv/bin/python",):
        if os.path.exists(cand):
            return cand
    return None


def _machine_key(stamp: dict) -> list:
    return [stamp["backend"], stamp["device_kind"], stamp["cpu"], stamp["jax"]]


def _load_cache(stamp: dict) -> dict:
    try:
        with open(CACHE) as f:
            cache = json.load(f)
    except (OSError, ValueError):
        return {}
    return cache if cache.get("machine") == _machine_key(stamp) else {}


def _save_cache(stamp: dict, result: dict, big_leaves: int) -> None:
    """Keeps this run's 10,000-leaf per-leaf / optax / multi_tensor numbers for default runs
    (merged into the existing cache: a ``--full --cases`` subset refreshes only its cases)."""
    cache = _load_cache(stamp) or {"machine": _machine_key(stamp), "update": {}, "compile": []}
    cache["date"] = stamp["date"]
    keep = ("compatopt", "optax", "multi_tensor")
    for row in result.get("update", []):
        if row["leaves"] == big_leaves:
            entries = {k: dict(v, date=stamp["date"][:10]) for k, v in row["candidates"].items()
                       if k in keep and not v.get("cached")}
            cache["update"].setdefault(row["case"], {}).update(entries)
    new = [dict(p, date=stamp["date"][:10]) for p in result.get("compile", [])
           if p.get("leaves") == big_leaves and p["impl"] in keep and not p.get("cached")]
    done = {(p["impl"], p["leaves"]) for p in new}
    cache["compile"] = [p for p in cache.get("compile", [])
                        if (p["impl"], p["leaves"]) not in done] + new
    os.makedirs(os.path.dirname(CACHE), exist_ok=True)
    with open(CACHE, "w") as f:
        json.dump(cache, f, indent=1)


def _merge_cache(result: dict, cache: dict) -> None:
    """Adds cached 10,000-leaf entries (marked ``cached``) where this run skipped them."""
    if not cache:
        return
    date = cache.get("date", "?")[:10]
    for row in result.get("update", []):
        cached = cache.get("update", {}).get(row["case"], {})
        for impl, entry in cached.items():
            if impl not in row["candidates"]:
                row["candidates"][impl] = dict(entry, cached=entry.get("date", date))
        opt = row["candidates"].get("optax")
        if opt and opt.get("cached"):
            for impl, c in row["candidates"].items():
                if impl != "optax" and not c.get("cached"):
                    r = opt["of_floor"]["median"] / c["of_floor"]["median"]
                    c["vs_optax"] = {"median": r, "min": r, "max": r, "n": 0, "via_floor": True}
    have = {(p["impl"], p["leaves"]) for p in result.get("compile", [])}
    for p in cache.get("compile", []):
        if (p["impl"], p["leaves"]) not in have:
            result.setdefault("compile", []).append(dict(p, cached=p.get("date", date)))


def _compile_plan(quick: bool, full: bool) -> list:
    from benchmarks import _cases
    one, mid, many = _cases.QUICK_SHAPES if quick else _cases.FULL_SHAPES
    plan = [("compatopt", one), ("optax", one)] if (quick or full) else []
    plan += [(impl, mid) for impl in ("compatopt", "flat", "optax")]
    plan += [(impl, many) for impl in (("flat", "multi_tensor", "compatopt", "optax")
                                       if full else ("flat", "multi_tensor") if quick
                                       else ("flat",))]
    return plan


def _rerender(out: str) -> int:
    with open(os.path.join(out, "results.json")) as f:
        result = json.load(f)
    if result.get("mode") == "default":
        _merge_cache(result, _load_cache(result["stamp"]))
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(_report.markdown(result))
    _report.plot(result, os.path.join(out, "results.png"))
    print(f"re-rendered {out}/results.md, results.png", file=sys.stderr)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="about one minute")
    parser.add_argument("--full", action="store_true",
                        help="every case, incl. minutes-long 10,000-leaf compiles (refreshes "
                             "the cache the default run reads)")
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds per case")
    parser.add_argument("--cases", default=None,
                        help="regex: only update cases / compile probes whose key matches, "
                             "e.g. 'adam .* 10K'")
    parser.add_argument("--tf-python", default=None,
                        help="interpreter with TensorFlow for the TF1 columns")
    parser.add_argument("--impls", default=None,
                        help="comma-separated subset of implementations to time, e.g. "
                             "flat,multi_tensor (10,000-leaf per-leaf compiles need > 13 GB)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--report-only", action="store_true",
                        help="re-render results.md/png from --out's results.json (and the cache)")
    args = parser.parse_args(argv)
    if args.report_only:
        return _rerender(args.out)
    sections = set(args.sections.split(","))
    rounds = args.rounds or (3 if args.quick else 7)

    import jax

    from benchmarks import _cases, _roofline, compile_memory, train_step, update_only

    t_start = time.perf_counter()
    stamp = machine_stamp()
    result = {"stamp": stamp, "mode": "quick" if args.quick else "full" if args.full else
              "default", "rounds": rounds}
    cases = update_only.plan(args.quick, args.full) if "update" in sections else []
    probes = _compile_plan(args.quick, args.full) if "compile" in sections else []
    if args.cases:
        import re
        pattern = re.compile(args.cases)
        cases = [c for c in cases if pattern.search(c.key)]
        probes = [(i, s) for i, s in probes if pattern.search(f"adam {i} {s.label}")]
    if args.impls:
        import dataclasses
        keep = set(args.impls.split(","))
        cases = [dataclasses.replace(c, candidates=tuple(x for x in c.candidates if x in keep))
                 for c in cases]
        probes = [(i, s) for i, s in probes if i in keep]
    tf_python = _tf_python(args.tf_python) if "tf1" in sections else None
    total = (len(cases) + len(probes) + ("roofline" in sections) + ("mlp" in sections)
             + (tf_python is not None))
    progress = Progress(total, enabled=not args.no_progress)

    if "roofline" in sections:
        progress.note("roofline: jitted copy / triad")
        n = (1 << 24) if args.quick else (1 << 26)
        result["roofline"] = dict(_roofline.stream(n, rounds), n=n)
        progress.step("roofline")

    if "anatomy" in sections:
        from benchmarks._anatomy import anatomy
        progress.note("anatomy: the loops XLA emits")
        result["anatomy"] = [anatomy(r, 1 << 20) for r in ("adam", "momentum", "sgd", "rmsprop")]

    if cases:
        result["update"] = []
        for case in cases:
            row = update_only.run_case(case, rounds, progress, min_round_s=0.02)
            result["update"].append(row)
            progress.step(case.key)

    if probes:
        result["compile"] = []
        for impl, shape in probes:
            progress.note(f"compile + memory: {impl} {shape.label} (fresh process)")
            result["compile"].append(compile_memory.run_probe(impl, "adam", shape.leaves,
                                                              shape.size))
            progress.step(f"compile {impl} {shape.label}")

    if "mlp" in sections:
        progress.note("MLP training step")
        result["mlp"] = train_step.run(rounds, progress)
        progress.step("MLP step")

    if tf_python is not None:
        progress.note(f"TF1 graph mode ({tf_python})")
        cmd = [tf_python, "-m", "benchmarks.tf1_bench", "--out", args.out]
        if args.quick:
            cmd.append("--quick")
        if args.full:
            cmd.append("--full")
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        try:
            with open(os.path.join(args.out, "tf1.json")) as f:
                result["tf1"] = json.load(f)
        except (OSError, ValueError):
            result["tf1_note"] = f"tf1_bench failed: {done.stderr[-400:]}"
        progress.step("TF1")
    elif "tf1" in sections:
        result["tf1_note"] = "TensorFlow not importable here (pass --tf-python); skipped."
    progress.close()

    big = (_cases.QUICK_SHAPES if args.quick else _cases.FULL_SHAPES)[2].leaves
    if args.full and not args.quick:
        _save_cache(stamp, result, big)
    elif not args.quick:
        _merge_cache(result, _load_cache(stamp))
    result["elapsed_s"] = time.perf_counter() - t_start
    result["notes"] = (f"Mode: {result['mode']}, {rounds} interleaved rounds per case, "
                       f"{result['elapsed_s'] / 60:.1f} min. Device: {jax.devices()[0]}.")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(result, f, indent=1)
    md = _report.markdown(result)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(md)
    png = _report.plot(result, os.path.join(args.out, "results.png"))
    print(md)
    print(f"wrote {args.out}/results.md, results.json" + (", results.png" if png else ""),
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
