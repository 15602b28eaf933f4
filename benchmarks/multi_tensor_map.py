"""Where ``co.multi_tensor`` (and ``FlatParams``) win: leaf count x leaf size, Adam.

    python3 -m benchmarks.multi_tensor_map [--quick] [--out DIR]

For each grid point the per-leaf rule, ``co.multi_tensor`` of it and the rule on
``FlatParams`` are timed interleaved with the floor kernel (float32, donated); the table
gives ``multi_tensor / per-leaf`` and ``FlatParams / per-leaf`` time ratios (below 1: the
layout wins) and first-call (compile) times.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.dirname(HERE) not in sys.path:
    sys.path.insert(0, os.path.dirname(HERE))

from benchmarks import _cases, update_only  # noqa: E402
from benchmarks._harness import Progress, machine_stamp  # noqa: E402
from benchmarks._report import _ratio, stamp_line  # noqa: E402

LEAVES = (10, 100, 1000)
SIZES = (1_024, 16_384, 262_144)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    parser.add_argument("--rule", default="adam")
    args = parser.parse_args(argv)
    leaves = LEAVES[:2] if args.quick else LEAVES
    sizes = SIZES[:2] if args.quick else SIZES
    rounds = 3 if args.quick else 5
    grid = [(n, s) for n in leaves for s in sizes if n * s <= 64_000_000]
    progress = Progress(len(grid))
    rows = []
    for n, s in grid:
        case = update_only.Case(args.rule, _cases.Shape(n, s),
                                candidates=("compatopt", "multi_tensor", "flat"))
        row = update_only.run_case(case, rounds, progress, min_round_s=0.02)
        rows.append(row)
        progress.step(case.key)
    progress.close()
    stamp = machine_stamp()
    md = [f"# multi_tensor / FlatParams against the per-leaf rule ({args.rule}, float32, "
          "donated)", "", stamp_line(stamp), "",
          "| leaves x size | params | per leaf ms | multi_tensor / per leaf | FlatParams / per leaf"
          " | per leaf of floor | first call s: per leaf / mt / flat |",
          "| --- | ---: | --- | --- | --- | --- | --- |"]
    for row in rows:
        c = row["candidates"]
        mt = c.get("multi_tensor", {})
        fl = c.get("flat", {})
        pl = c["compatopt"]
        md.append(
            f"| {row['shape']} | {row['params']:,} | {pl['seconds']['median'] * 1e3:.3g} | "
            f"{_ratio(mt.get('vs_per_leaf'))} | {_ratio(fl.get('vs_per_leaf'))} | "
            f"{_ratio(pl['of_floor'], pct=True)} | {pl['compile_s']:.1f} / "
            f"{mt.get('compile_s', 0):.1f} / {fl.get('compile_s', 0):.1f} |")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "multi_tensor_map.json"), "w") as f:
        json.dump({"stamp": stamp, "rows": rows}, f, indent=1)
    with open(os.path.join(args.out, "multi_tensor_map.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
