"""Compile time and peak memory of one step, per pytree shape, each in a fresh process.

A fresh process per (implementation, shape) so that the peak resident memory
(``VmHWM``) is that compile's and nothing else's. Reported: the first-call time (trace,
lower, compile, one step), host peak RSS and RSS growth over the arrays themselves, and
XLA's buffer sizes for the step (with donation the step must hold no second copy of the
parameters or slots: ``peak - arguments`` is what it adds).

Run as a module for one probe::

    python3 -m benchmarks.compile_memory --impl multi_tensor --leaves 10000 --size 1638
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

IMPLS = ("compatopt", "multi_tensor", "flat", "optax")


def _status_mb(field: str) -> float:
    """``VmRSS`` / ``VmHWM`` (peak) of this process in MiB. Not ``ru_maxrss``: Linux carries
    that over ``fork`` + ``exec``, so a child would report its parent's peak."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _rss_mb() -> float:
    return _status_mb("VmRSS")


def probe(impl: str, rule_name: str, leaves: int, size: int, dtype: str) -> dict:
    import jax
    import jax.numpy as jnp

    from benchmarks import _cases
    from benchmarks._steps import memory_of

    rc = _cases.RULES_BY_NAME[rule_name]
    shape = _cases.Shape(leaves, size)
    params = _cases.make_tree(shape, jnp.dtype(dtype), 0.5, seed=2)
    grads = _cases.make_tree(shape, jnp.dtype(dtype), 0.01, seed=1)
    if impl == "optax":
        rule = rc.make_optax()
        fn = _cases.optax_step(rule)
    else:
        rule = rc.make()
        if impl == "multi_tensor":
            from compatopt._multi_tensor import multi_tensor
            rule = multi_tensor(rule)
        fn = _cases.rule_step(rule)
    if impl == "flat":
        from compatopt._multi_tensor import flatten_params
        params, grads = flatten_params(params), flatten_params(grads)
    state = rule.init(params)
    jax.block_until_ready((params, state, grads))
    rss0 = _rss_mb()
    jitted = jax.jit(fn, donate_argnums=(0, 1))
    t0 = time.perf_counter()
    traced = jitted.trace(params, state, grads)
    t1 = time.perf_counter()
    lowered = traced.lower()
    t2 = time.perf_counter()
    compiled = lowered.compile()
    t3 = time.perf_counter()
    params, state = compiled(params, state, grads)
    jax.block_until_ready((params, state))
    t4 = time.perf_counter()
    peak = _status_mb("VmHWM")
    return {"impl": impl, "rule": rule_name, "leaves": leaves, "size": size, "dtype": dtype,
            "trace_s": t1 - t0, "lower_s": t2 - t1, "compile_s": t3 - t2,
            "first_step_s": t4 - t3, "total_s": t4 - t0, "peak_rss_mb": peak,
            "rss_before_compile_mb": rss0, "rss_growth_mb": peak - rss0,
            "xla": memory_of(compiled)}


def run_probe(impl: str, rule: str, leaves: int, size: int, dtype: str = "float32",
              timeout: float = 900) -> dict:
    """``probe`` in a child process; ``{"error": ...}`` on failure or timeout."""
    cmd = [sys.executable, "-m", "benchmarks.compile_memory", "--impl", impl, "--rule", rule,
           "--leaves", str(leaves), "--size", str(size), "--dtype", dtype]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        done = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"impl": impl, "rule": rule, "leaves": leaves, "size": size,
                "error": f"timeout after {timeout:.0f} s"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {"impl": impl, "rule": rule, "leaves": leaves, "size": size,
            "error": (done.stderr or done.stdout)[-500:]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--impl", choices=IMPLS, required=True)
    parser.add_argument("--rule", default="adam")
    parser.add_argument("--leaves", type=int, required=True)
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args(argv)
    print(json.dumps(probe(args.impl, args.rule, args.leaves, args.size, args.dtype)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
