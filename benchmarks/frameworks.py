"""flax nnx and equinox models on compatopt's flat layouts (issue 17, point 3).

The models and training loops are the examples' own (``examples/nnx_flat.py``,
``examples/equinox_flat.py``): a deep tanh MLP of ``L`` layers of 32 x 32 (2 leaves per
layer), Adam 1e-3, batch 16. Candidates per framework:

* ``optax.adam`` and ``co.adam``: the per-leaf transformation in the framework's usual loop
  (nnx: ``nnx.Optimizer`` + ``nnx.jit``; equinox: ``eqx.partition`` + ``jax.jit``, donated);
* ``co.multi_tensor``: the same loop with ``co.multi_tensor(co.adam(1e-3))`` -- the one-line
  change;
* ``co.flatten_params``: parameters in one flat buffer across steps (nnx: ``nnx.split`` /
  ``nnx.merge`` around a ``jax.jit`` step; equinox: ``co.flatten_params`` of the partitioned
  parameters).

Each candidate runs in a fresh process (first call = trace + compile + one step; no shared
caches), one after another; the step time is the median over ``--steps`` steps, each ended
by reading the loss (what a training loop that logs does). Not a CI test::

    python3 -m benchmarks.frameworks --layers 64,256 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CANDIDATES = ("optax.adam", "co.adam", "co.multi_tensor", "co.flatten_params")
FRAMEWORKS = ("nnx", "equinox")


def _example(framework: str):
    name = {"nnx": "nnx_flat.py", "equinox": "equinox_flat.py"}[framework]
    spec = importlib.util.spec_from_file_location(f"example_{name[:-3]}", ROOT / "examples" / name)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _one(framework: str, layers: int, candidate: str, steps: int) -> dict:
    import optax

    import compatopt as co

    ex = _example(framework)
    tx = {"optax.adam": lambda: optax.adam(1e-3), "co.adam": lambda: co.adam(1e-3),
          "co.multi_tensor": lambda: co.multi_tensor(co.adam(1e-3)),
          "co.flatten_params": lambda: None}[candidate]()
    if framework == "nnx":
        if candidate == "co.flatten_params":
            result, _ = ex.train_flat_params(layers, 32, steps)
        else:
            result, _ = ex.train_with_optimizer(tx, layers, 32, steps)
    elif candidate == "co.flatten_params":
        result, _ = ex.train(co.adam(1e-3), layers, 32, steps, flat_params=True)
    else:
        result, _ = ex.train(tx, layers, 32, steps)
    return {"framework": framework, "layers": layers, "leaves": 2 * layers + (
        2 if framework == "equinox" else 0), "candidate": candidate, **result}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", default="64,256")
    parser.add_argument("--frameworks", default=",".join(FRAMEWORKS))
    parser.add_argument("--candidates", default=",".join(CANDIDATES))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--out", default=None)
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:  # child process: one candidate, fresh caches
        fw, layers, cand = args.one.split(":", 2)
        print(json.dumps(_one(fw, int(layers), cand, args.steps)))
        return
    import jax

    from benchmarks.many_variables import _cpu_name

    load = os.getloadavg()[0]
    rows = []
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    for fw in args.frameworks.split(","):
        for layers in [int(s) for s in args.layers.split(",")]:
            for cand in args.candidates.split(","):
                out = subprocess.run([sys.executable, "-m", "benchmarks.frameworks", "--one",
                                      f"{fw}:{layers}:{cand}", "--steps", str(args.steps)],
                                     capture_output=True, text=True, check=True, env=env,
                                     cwd=ROOT)
                row = json.loads(out.stdout.strip().splitlines()[-1])
                rows.append(row)
                print(f"{fw:<8} {layers:>5} {cand:<18} first call {row['first_call_s']:7.2f} s"
                      f"   step {row['step_ms']:8.2f} ms", flush=True)
    header = (f"{time.strftime('%Y-%m-%d')} · CPU: {_cpu_name()} ({os.cpu_count()} cores) · "
              f"jax {jax.__version__} · load average at start {load:.1f}")
    lines = ["# flax nnx and equinox on the flat layouts (benchmarks/frameworks.py)", "",
             header, "",
             "| framework | layers (leaves) | optimizer | first call s | step ms | "
             "step vs optax | first call vs optax |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: |"]
    for fw in dict.fromkeys(r["framework"] for r in rows):
        for layers in sorted({r["layers"] for r in rows if r["framework"] == fw}):
            group = [r for r in rows if r["framework"] == fw and r["layers"] == layers]
            ref = next((r for r in group if r["candidate"] == "optax.adam"), None)
            for r in group:
                step = f"{r['step_ms'] / ref['step_ms']:.2f}x" if ref else ""
                first = f"{r['first_call_s'] / ref['first_call_s']:.2f}x" if ref else ""
                lines.append(f"| {fw} | {layers} ({r['leaves']}) | {r['candidate']} | "
                             f"{r['first_call_s']:.2f} | {r['step_ms']:.2f} | {step} | {first} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "frameworks-cpu.md"), "w") as f:
            f.write(text)
        with open(os.path.join(args.out, "frameworks-cpu.json"), "w") as f:
            json.dump({"header": header, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
