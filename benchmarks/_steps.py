"""A jitted optimizer step as a timed candidate: compile time, XLA memory, live buffers."""

from __future__ import annotations

import time
from typing import Callable

import jax

from benchmarks._harness import Candidate


def memory_of(compiled) -> dict:
    """XLA's buffer sizes for one compiled step (bytes)."""
    try:
        ma = compiled.memory_analysis()
    except Exception:  # some backends do not report
        return {}
    if ma is None:
        return {}
    arg = int(ma.argument_size_in_bytes)
    out = int(ma.output_size_in_bytes)
    alias = int(ma.alias_size_in_bytes)
    temp = int(ma.temp_size_in_bytes)
    return {"argument": arg, "output": out, "alias": alias, "temp": temp,
            "peak": arg + out - alias + temp}


class StepCandidate:
    """``fn(params, state, grads) -> (params, state)`` under ``jax.jit``, stepping live buffers.

    The first call's wall time (trace + lower + compile + one step) is the compile time a
    user waits for; ``memory`` is XLA's view of the compiled step.
    """

    def __init__(self, name: str, fn: Callable, params, state, grads, donate: bool,
                 label: str = "") -> None:
        self.name = name
        self.label = label
        self.params, self.state, self.grads = params, state, grads
        self.jitted = jax.jit(fn, donate_argnums=(0, 1) if donate else ())
        t0 = time.perf_counter()
        self.params, self.state = self.jitted(self.params, self.state, self.grads)
        jax.block_until_ready((self.params, self.state))
        self.compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        self.memory = memory_of(self.jitted.lower(self.params, self.state, self.grads).compile())
        self.relower_s = time.perf_counter() - t0

    def step(self) -> None:
        self.params, self.state = self.jitted(self.params, self.state, self.grads)
        jax.block_until_ready(self.params)

    def candidate(self) -> Candidate:
        return Candidate(self.name, self.step, self.label)

    def free(self) -> None:
        self.params = self.state = self.grads = None
        self.jitted = None
