"""Data-parallel step time and per-device optimizer-state memory on 1/2/4/8 devices.

    python benchmarks/bench_parallel.py                 # writes benchmarks/results/parallel-cpu.md
    python benchmarks/bench_parallel.py --steps 50 --hidden 2048

Each device count runs in its own process (XLA's host device count is fixed when jax
starts: ``--xla_force_host_platform_device_count=n``). One training step of an MLP with
TF1's Adam is timed for three placements:

* ``replicated``: ``jax.jit`` with shardings, parameters and Adam state replicated, batch
  sharded (XLA all-reduces the gradients);
* ``zero1``: the same with the state sharded over the data axis
  (``compatopt.parallel.init_sharded(..., zero_axis="data")``);
* ``shard_map``: a per-replica step, ``compatopt.parallel.cross_replica`` (``lax.psum``).

State memory is measured, not computed: the bytes of each device's addressable shards
(``compatopt.parallel.device_nbytes``). On a CPU the forced devices share the machine's
cores, so step times show the overhead of partitioning, not a speed-up.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import subprocess
import sys
import time

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def _worker(args) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    import compatopt as co
    from compatopt import parallel

    n = jax.device_count()
    mesh = jax.make_mesh((n,), ("data",))
    rep, data = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    rng = np.random.default_rng(0)
    sizes = (args.din, args.hidden, args.hidden, 10)
    host = {}
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        host[f"w{i}"] = (rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32)
        host[f"b{i}"] = np.zeros((b,), np.float32)
    x = jax.device_put(rng.standard_normal((args.batch, args.din)).astype(np.float32), data)
    y = jax.device_put(rng.integers(0, 10, args.batch).astype(np.int32), data)

    def loss_fn(p, x, y):
        h = x
        for i in range(len(sizes) - 1):
            h = h @ p[f"w{i}"] + p[f"b{i}"]
            if i < len(sizes) - 2:
                h = jax.nn.relu(h)
        logp = jax.nn.log_softmax(h)
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

    rule = co.adam(0.001)
    out = {"devices": n, "params": int(sum(v.size for v in host.values())), "runs": {}}

    def train_step(p, s, x, y):
        return rule.apply(jax.grad(loss_fn)(p, x, y), s, p)

    cands = {}  # name -> [step, params, state]
    for name, zero in (("replicated", None), ("zero1", "data")):
        params = jax.device_put(host, rep)
        state_sh = parallel.state_shardings(rule, params, zero_axis=zero)
        state = parallel.init_sharded(rule, params, zero_axis=zero)
        p_sh = jax.tree_util.tree_map(lambda _: rep, params)
        step = jax.jit(train_step, in_shardings=(p_sh, state_sh, data, data),
                       out_shardings=(p_sh, state_sh), donate_argnums=(0, 1))
        cands[name] = [step, params, state]

    wrapped = parallel.cross_replica(rule, "data")

    def per_replica(p, s, x, y):
        g = jax.grad(loss_fn)(jax.lax.pcast(p, "data", to="varying"), x, y)
        return wrapped.apply(g, s, p)

    step = jax.jit(jax.shard_map(per_replica, mesh=mesh,
                                 in_specs=(P(), P(), P("data"), P("data")),
                                 out_specs=(P(), P())), donate_argnums=(0, 1))
    params = jax.device_put(host, rep)
    cands["shard_map"] = [step, params, parallel.init_sharded(rule, params)]

    def run_once(c) -> float:
        t0 = time.perf_counter()
        c[1], c[2] = c[0](c[1], c[2], x, y)
        jax.block_until_ready((c[1], c[2]))
        return time.perf_counter() - t0

    for c in cands.values():
        for _ in range(args.warmup):
            run_once(c)
    times = {name: [] for name in cands}
    order = list(cands)
    for r in range(args.steps):  # interleaved rounds: machine drift hits all alike
        for name in order[r % len(order):] + order[:r % len(order)]:
            times[name].append(run_once(cands[name]))
    for name, (_, params, state) in cands.items():
        per_dev = parallel.device_nbytes(state)
        out["runs"][name] = {
            "step_ms": 1e3 * float(np.median(times[name])),
            "step_ms_min": 1e3 * float(np.min(times[name])),
            "state_bytes_per_device": max(per_dev.values()),
            "state_bytes_all_devices": sum(per_dev.values()),
            "param_bytes_per_device": max(parallel.device_nbytes(params).values())}
    return out


def _kib(b: int) -> str:
    return f"{b / 1024:,.1f}"


def _table(results: list, args) -> str:
    base = results[0]["runs"]
    lines = [
        "# Data-parallel step time and optimizer-state memory",
        "",
        f"{datetime.date.today()} · {platform.machine()} · {os.cpu_count()} CPU cores · "
        f"jax {results[0]['jax']} · Python {platform.python_version()}",
        "",
        f"MLP {args.din}-{args.hidden}-{args.hidden}-10 ({results[0]['params']:,} float32 "
        f"parameters), TF1 Adam (two slots), global batch {args.batch}; median of "
        f"{args.steps} steps after {args.warmup} warm-up steps, the three placements timed "
        f"in interleaved rounds. The devices are XLA host "
        f"devices forced on one CPU (`--xla_force_host_platform_device_count`): they share "
        f"its {os.cpu_count()} cores, so the times show partitioning overhead, not scaling.",
        "State memory is measured: the bytes of every device's addressable shards of the "
        "optimizer state (`compatopt.parallel.device_nbytes`).",
        "",
        "| devices | placement | step (ms) | Adam state per device (KiB) | vs 1 device | "
        "state, all devices (KiB) | parameters per device (KiB) |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        for name, run in r["runs"].items():
            ratio = base["replicated"]["state_bytes_per_device"] / run["state_bytes_per_device"]
            lines.append(
                f"| {r['devices']} | {name} | {run['step_ms']:.2f} | "
                f"{_kib(run['state_bytes_per_device'])} | 1/{ratio:.2f} | "
                f"{_kib(run['state_bytes_all_devices'])} | "
                f"{_kib(run['param_bytes_per_device'])} |")
    lines += [
        "",
        "`replicated` and `shard_map` keep the whole Adam state on every device; `zero1` "
        "shards each slot over the data axis, so the state per device falls by the device "
        "count (the few leaves that do not divide, and the three scalars, stay whole).",
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", default="1,2,4,8")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--din", type=int, default=784)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--out", default=str(RESULTS / "parallel-cpu.md"))
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        import jax

        result = _worker(args)
        result["jax"] = jax.__version__
        print("RESULT " + json.dumps(result))
        return
    results = []
    for n in [int(d) for d in args.devices.split(",")]:
        env = dict(os.environ, JAX_PLATFORMS="cpu",
                   XLA_FLAGS=f"--xla_force_host_platform_device_count={n}")
        cmd = [sys.executable, __file__, "--worker", "--steps", str(args.steps), "--warmup",
               str(args.warmup), "--batch", str(args.batch), "--din", str(args.din),
               "--hidden", str(args.hidden)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode or not line:
            raise SystemExit(f"{n} devices failed:\n{proc.stdout}\n{proc.stderr}")
        results.append(json.loads(line[0][len("RESULT "):]))
        r = results[-1]["runs"]
        print(f"{n} device(s): " + ", ".join(
            f"{k} {v['step_ms']:.1f} ms / {_kib(v['state_bytes_per_device'])} KiB state"
            for k, v in r.items()), flush=True)
    text = _table(results, args)
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.out).write_text(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
