"""The CPU floor kernel in NumPy alone (no JAX), so the TF1 script can time it too.

It moves exactly one rule's bytes: each array is read (and the read-write ones written)
once from DRAM, block by block; within a block everything stays in cache.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

CHUNK = 1 << 17  # elements per block: all arrays of one block fit in L2/L3


class NumpyFloor:
    """``reads`` read-only, ``rw`` read-write and ``writes`` write-only arrays of ``n``.

    The blocks are shared out over one thread per core (NumPy releases the GIL), as XLA
    shares a big loop over the cores: one core alone does not saturate DRAM on every CPU.
    """

    _pool = None

    def __init__(self, n: int, reads: int, rw: int, writes: int, dtype=np.float32,
                 threads: int = 0) -> None:
        dtype = np.dtype(dtype) if np.dtype(dtype).kind == "f" else np.dtype(np.float32)
        self.n = n
        self.bytes = n * dtype.itemsize * (reads + 2 * rw + writes)
        self.ro = [np.full(n, 0.5, dtype) for _ in range(max(reads, 1))]
        self.rw = [np.full(n, 1.0, dtype) for _ in range(rw)]
        self.wo = [np.zeros(n, dtype) for _ in range(writes)]
        self.threads = threads or os.cpu_count() or 1
        starts = list(range(0, n, CHUNK))
        per = -(-len(starts) // self.threads)
        self.parts = [(starts[i * per], min(starts[min((i + 1) * per, len(starts)) - 1] + CHUNK, n))
                      for i in range(self.threads) if i * per < len(starts)]
        if NumpyFloor._pool is None and self.threads > 1:
            NumpyFloor._pool = ThreadPoolExecutor(self.threads)

    def step(self) -> None:
        if len(self.parts) <= 1:
            self._range(0, self.n)
            return
        list(NumpyFloor._pool.map(lambda se: self._range(*se), self.parts))

    def _range(self, start: int, stop: int) -> None:
        g = self.ro[0]
        for s in range(start, stop, CHUNK):
            e = min(s + CHUNK, stop)
            gc = g[s:e]
            for extra in self.ro[1:]:
                gc = gc + extra[s:e]  # a block-sized temporary, in cache
            for a in self.rw:
                np.add(a[s:e], gc, out=a[s:e])
            for w in self.wo:
                np.copyto(w[s:e], gc)
