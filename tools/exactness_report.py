"""Per-rule exactness against the committed TF1 fixtures, on whatever device JAX uses.

For every recorded case (tests/fixtures/tf1/rules), runs ``jax.jit(rule.apply)`` step by step
on the recorded gradients and measures, over every state array after every step, the share
of bit-identical elements and the largest ULP distance from TF1. Prints a markdown table per
rule, dtype and path (dense/sparse); ``--out FILE`` also writes it.

    python3 tools/exactness_report.py                  # CPU (or the default JAX device)
    python3 tools/exactness_report.py --out benchmarks/results/exactness-gpu.md
"""

from __future__ import annotations

import argparse
import collections
import datetime
import platform
import sys
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "rules"))
import test_tf1_replay as replay  # noqa: E402  (the fixture readers, shared with the tests)


def run_case(entry: dict) -> tuple[int, int, int]:
    """(identical elements, all elements, max ulp) over the whole trajectory of one case."""
    arrays = replay.load_case(entry)
    with jax.enable_x64(replay.needs_x64(entry)):
        rule = replay.build_rule(entry, arrays)
        params = {n: jax.numpy.asarray(arrays[f"state/var/{n}"][0]) for n in entry["variables"]}
        state = rule.init(params)
        step = jax.jit(rule.apply)
        same = total = worst = 0
        for k in range(entry["steps"]):
            params, state = step(replay._grads(entry, arrays, k), state, params)
            for key, got in replay._state_arrays(entry, params, state).items():
                want = arrays[f"state/{key}"][k + 1]
                if got.dtype != want.dtype:
                    return 0, 1, -1
                eq = replay.same_bits(got, want)
                same += int(eq.sum())
                total += eq.size
                if not eq.all():
                    worst = max(worst, int(replay.ulp_distance(got, want)[~eq].max()))
    return same, total, worst


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    rows = collections.defaultdict(lambda: [0, 0, 0, 0])
    for entry in replay.MANIFEST:
        key = (entry["rule"], entry["dtype"], "sparse" if entry["sparse"] else "dense")
        same, total, worst = run_case(entry)
        row = rows[key]
        row[0] += same
        row[1] += total
        row[2] = max(row[2], worst) if worst >= 0 else -1
        row[3] += 1
    device = jax.devices()[0]
    lines = [f"Exactness against TF 2.21 (CPU) fixtures on {device.device_kind} "
             f"({device.platform}), jax {jax.__version__}, {platform.machine()}, "
             f"{datetime.date.today()}", "",
             "| rule | dtype | path | cases | bit-identical elements | max ulp |",
             "| --- | --- | --- | --- | --- | --- |"]
    for (rule, dtype, path), (same, total, worst, n) in sorted(rows.items()):
        share = f"{100.0 * same / total:.2f} %" if total else "-"
        lines.append(f"| {rule} | {dtype} | {path} | {n} | {share} | "
                     f"{'dtype mismatch' if worst < 0 else worst} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return text


if __name__ == "__main__":
    main()
