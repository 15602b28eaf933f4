"""Whole training step at many variables: the shim's packed default against per-variable
layouts and optax (issue 17).

Model: ``N`` float32 variables of 32 x 32 (1,024 elements each), ``loss = sum_i
sum(tanh(x @ w_i))`` with ``x`` 8 x 32, Adam. Candidates, each its own compiled step:

* ``shim packed``: ``@co.function`` around ``AdamOptimizer.minimize`` (the default:
  variables and slots packed, one update per pack);
* ``shim per-variable``: the same with ``pack_variables=False``;
* ``co.adam`` / ``optax.adam``: a hand-written ``jax.jit`` step (``value_and_grad`` +
  ``update``), donated;
* ``co.multi_tensor``: the same step with ``co.multi_tensor(co.adam(...))`` (per-leaf
  parameters, slots in flat buffers);
* ``co.FlatParams``: the same step over ``co.flatten_params(params)`` (parameters and slots
  in flat buffers; the loss reads ``flat.tree()``);
* ``grad only``: the same ``jax.jit`` step without any optimizer (the model's own floor).

Reports first call (trace + compile + one step) and the median step, each candidate in a
fresh process (so first calls share no cache), one after another; ``--plot`` also draws
first-call time against the number of variables (matplotlib). Not a CI test::

    python3 -m benchmarks.many_variables --sizes 256,1024,4096 --out benchmarks/results --plot
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _one(n: int, which: str, steps: int) -> dict:
    import jax
    import jax.numpy as jnp
    import optax

    import compatopt as co

    x = jnp.ones((8, 32), jnp.float32)

    def model_loss(ws, x):
        tot = 0.0
        for w in ws:
            tot = tot + jnp.sum(jnp.tanh(x @ w))
        return tot

    if which.startswith("shim"):
        co.reset_default_graph()
        ws = [co.Variable(jnp.full((32, 32), 0.01 * (i % 7), jnp.float32), name=f"w{i}")
              for i in range(n)]
        opt = co.train.AdamOptimizer(1e-3)

        @co.function(pack_variables=(which == "shim packed"))
        def step(x):
            return opt.minimize(lambda: model_loss([v.value for v in ws], x))

        def run():
            jax.block_until_ready(step(x).loss)
    else:
        params = [jnp.full((32, 32), 0.01 * (i % 7), jnp.float32) for i in range(n)]
        if which == "grad only":
            js = jax.jit(jax.value_and_grad(model_loss))
            box: list = []

            def run():
                box[:] = [js(params, x)]
                jax.block_until_ready(box)
        else:
            o = {"optax.adam": optax.adam, "co.adam": co.adam,
                 "co.multi_tensor": lambda lr: co.multi_tensor(co.adam(lr)),
                 "co.FlatParams": co.adam}[which](1e-3)
            if which == "co.FlatParams":
                params = co.flatten_params(params)
                loss_of = model_loss

                def model_loss(fp, x):  # noqa: F811 -- the same model over flat buffers
                    return loss_of(fp.tree(), x)
            state = o.init(params)

            def s(p, st, x):
                loss, g = jax.value_and_grad(model_loss)(p, x)
                u, st = o.update(g, st, p)
                return optax.apply_updates(p, u), st, loss

            js = jax.jit(s, donate_argnums=(0, 1))
            holder = [params, state]

            def run():
                holder[0], holder[1], loss = js(holder[0], holder[1], x)
                jax.block_until_ready(loss)
    t0 = time.perf_counter()
    run()
    first = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return {"n": n, "candidate": which, "first_call_s": first,
            "step_ms": float(np.median(times)) * 1e3}


CANDIDATES = ["grad only", "shim packed", "shim per-variable", "co.adam", "co.multi_tensor",
              "co.FlatParams", "optax.adam"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="256,1024")
    parser.add_argument("--candidates", default=",".join(CANDIDATES))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", default=None)
    parser.add_argument("--plot", action="store_true",
                        help="also write many-variables-cpu.png (first call vs variables)")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:  # child process: one candidate, fresh XLA caches
        n, which = args.one.split(":", 1)
        print(json.dumps(_one(int(n), which, args.steps)))
        return
    rows = []
    load = os.getloadavg()[0]
    for n in [int(s) for s in args.sizes.split(",")]:
        for which in args.candidates.split(","):
            out = subprocess.run([sys.executable, "-m", "benchmarks.many_variables",
                                  "--one", f"{n}:{which}", "--steps", str(args.steps)],
                                 capture_output=True, text=True, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"{n:>5} {which:<18} first call {row['first_call_s']:7.2f} s   "
                  f"step {row['step_ms']:8.2f} ms", flush=True)
    import jax
    header = (f"{time.strftime('%Y-%m-%d')} · CPU: {_cpu_name()} ({os.cpu_count()} cores) · "
              f"jax {jax.__version__} · load average at start {load:.1f}")
    lines = ["# Whole Adam step at many variables (benchmarks/many_variables.py)", "", header,
             "", "| variables x 1,024 | step | first call s | step ms | step vs optax |",
             "| ---: | --- | ---: | ---: | ---: |"]
    for n in sorted({r["n"] for r in rows}):
        ref = next((r for r in rows if r["n"] == n and r["candidate"] == "optax.adam"), None)
        for r in (r for r in rows if r["n"] == n):
            ratio = f"{r['step_ms'] / ref['step_ms']:.2f}x" if ref else ""
            lines.append(f"| {n} | {r['candidate']} | {r['first_call_s']:.2f} | "
                         f"{r['step_ms']:.2f} | {ratio} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "many-variables-cpu.md"), "w") as f:
            f.write(text)
        with open(os.path.join(args.out, "many-variables-cpu.json"), "w") as f:
            json.dump({"header": header, "rows": rows}, f, indent=1)
        if args.plot:
            _plot(rows, header, os.path.join(args.out, "many-variables-cpu.png"))


def _plot(rows: list, header: str, path: str) -> None:
    """First-call time (trace + compile + one step) against the number of variables."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for cand in dict.fromkeys(r["candidate"] for r in rows):
        pts = sorted((r["n"], r["first_call_s"]) for r in rows if r["candidate"] == cand)
        ax.plot([n for n, _ in pts], [t for _, t in pts], marker="o", label=cand)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("variables (32 x 32 float32 each)")
    ax.set_ylabel("first call: trace + compile + step (s)")
    ax.set_title("Adam step, first call against the number of variables", fontsize=10)
    fig.text(0.01, 0.01, header, fontsize=6)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
