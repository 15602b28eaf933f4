"""The memory roofline: STREAM-like copy and triad, and per-rule floor kernels.

An optimizer update is bandwidth-bound: its floor is the time to move the bytes it must
move (Adam on float32: read p, g, m, v and write p, m, v = 28 bytes per parameter).

* ``stream(n)``: jitted ``copy`` (``b = a + 1``: 8 B/element) and ``triad``
  (``a = b + s * c``: 12 B/element) on arrays far larger than any cache, output donated.
* ``FloorKernel``: exactly one rule's traffic, done in place. On CPU a blocked NumPy
  kernel (every array touched once from DRAM: XLA:CPU has no multi-output fusion, so a
  jitted kernel would re-read the shared gradient); on GPU a jitted multi-output kernel
  (XLA:GPU fuses it into one pass, bounded by HBM bandwidth).
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks._floor import NumpyFloor
from benchmarks._harness import Candidate, interleave, stats


def stream(n: int, rounds: int) -> dict:
    """Jitted in-place copy and triad bandwidth in GB/s (median, min, max over rounds).

    ``copy``: ``a <- a + 1`` (8 B/element); ``triad``: ``a <- a + 3 * b`` (12 B/element);
    ``a`` donated, so the output reuses its (already touched) buffer. A fresh output buffer
    would add the kernel's page faults on first touch (several times slower on CPU).
    """
    b = jnp.full(n, 2.0, jnp.float32)
    copy = jax.jit(lambda a: a + 1.0, donate_argnums=0)
    triad = jax.jit(lambda a, x: a + 3.0 * x, donate_argnums=0)
    live = {"copy": jnp.zeros(n, jnp.float32), "triad": jnp.zeros(n, jnp.float32)}

    def run_copy():
        live["copy"] = copy(live["copy"])
        live["copy"].block_until_ready()

    def run_triad():
        live["triad"] = triad(live["triad"], b)
        live["triad"].block_until_ready()

    times = interleave([Candidate("copy", run_copy), Candidate("triad", run_triad)], rounds)
    out = {}
    for name, nbytes in (("copy", 8 * n), ("triad", 12 * n)):
        t = np.asarray(times[name])
        out[name] = {"gbps": stats(nbytes / t / 1e9), "seconds": stats(t), "bytes": nbytes}
    return out


class FloorKernel:
    """Moves ``reads`` read-only, ``rw`` read-write and ``writes`` write-only arrays once.

    Adam: ``reads=1`` (g), ``rw=3`` (p, m, v): 28 bytes per float32 parameter. NumPy
    (blocked, in place) on CPU; a jitted multi-output kernel elsewhere.
    """

    def __init__(self, n: int, reads: int, rw: int, writes: int, dtype=np.float32,
                 backend: Optional[str] = None) -> None:
        self.backend = backend or jax.default_backend()
        if self.backend == "cpu":
            self._np = NumpyFloor(n, reads, rw, writes, dtype)
            self.bytes = self._np.bytes
            return
        itemsize = np.dtype(dtype).itemsize
        self.bytes = n * itemsize * (reads + 2 * rw + writes)
        jdt = jnp.dtype(dtype)
        self.ro = tuple(jnp.full(n, 0.5, jdt) for _ in range(max(reads, 1)))
        self.state = tuple(jnp.full(n, 1.0, jdt) for _ in range(rw + writes))

        def kernel(state, ro):
            g = ro[0]
            for extra in ro[1:]:
                g = g + extra
            return tuple([a + g for a in state[:rw]] + [g * 2.0 for _ in state[rw:]])

        self._jitted = jax.jit(kernel, donate_argnums=0)

    def step(self) -> None:
        if self.backend == "cpu":
            self._np.step()
            return
        self.state = self._jitted(self.state, self.ro)
        jax.block_until_ready(self.state)

    def candidate(self, name: str = "floor") -> Candidate:
        return Candidate(name, self.step, "floor kernel")
