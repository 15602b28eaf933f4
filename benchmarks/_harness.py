"""Timing harness: interleaved rounds, ratios taken within a round, a progress bar.

On a small shared machine memory bandwidth drifts by tens of percent within a minute, so a
candidate is never timed in a block of its own: every round times each candidate once (in a
shuffled order), and the ratio ``candidate / baseline`` is formed inside the round. The
report gives the median over rounds with the min and max, for times and for ratios.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import random
import sys
import time
from typing import Callable, Optional

import numpy as np


@dataclasses.dataclass
class Candidate:
    """One timed thing. ``step()`` runs one step (and blocks until it is done)."""

    name: str
    step: Callable[[], None]
    label: str = ""


def interleave(candidates: list, rounds: int, min_round_s: float = 0.0,
               warmup: int = 1, seed: int = 0, budget_s: Optional[float] = None) -> dict:
    """Times every candidate once per round, in a shuffled order; returns name -> [seconds].

    ``min_round_s``: a candidate whose single step is shorter than this is repeated within
    the round (``k`` back-to-back steps, time divided by ``k``) so short steps are not
    swamped by timer and scheduling noise. ``budget_s`` stops early (at least 3 rounds).
    """
    rng = random.Random(seed)
    for c in candidates:
        for _ in range(warmup):
            c.step()
    reps = {}
    for c in candidates:
        t0 = time.perf_counter()
        c.step()
        dt = time.perf_counter() - t0
        reps[c.name] = max(1, int(min_round_s / max(dt, 1e-7))) if min_round_s else 1
    times = {c.name: [] for c in candidates}
    start = time.perf_counter()
    for r in range(rounds):
        order = list(candidates)
        rng.shuffle(order)
        for c in order:
            k = reps[c.name]
            t0 = time.perf_counter()
            for _ in range(k):
                c.step()
            times[c.name].append((time.perf_counter() - t0) / k)
        if budget_s is not None and r >= 2 and time.perf_counter() - start > budget_s:
            break
    return times


def stats(xs) -> dict:
    xs = np.asarray(xs, dtype=np.float64)
    return {"median": float(np.median(xs)), "min": float(xs.min()), "max": float(xs.max()),
            "n": int(xs.size)}


def ratio_stats(times: dict, num: str, den: str) -> dict:
    """Per-round ratios ``times[num][r] / times[den][r]``, summarised."""
    a = np.asarray(times[num])
    b = np.asarray(times[den])
    n = min(a.size, b.size)
    return stats(a[:n] / b[:n])


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_stamp() -> dict:
    """Where and when: device kind, CPU model, core count, versions, date."""
    import jax
    import jaxlib

    try:
        import optax
        optax_version = optax.__version__
    except ImportError:
        optax_version = None
    dev = jax.devices()[0]
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "backend": dev.platform,
        "device_kind": dev.device_kind,
        "device_count": jax.device_count(),
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "optax": optax_version,
        "python": platform.python_version(),
        "load_avg_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


class Progress:
    """A one-line progress bar on stderr: ``[#####.....] 12/40 1m05s left  what``."""

    def __init__(self, total: int, enabled: bool = True) -> None:
        self.total = max(total, 1)
        self.done = 0
        self.start = time.perf_counter()
        self.enabled = enabled and sys.stderr is not None
        self.what = ""

    def set_total(self, total: int) -> None:
        self.total = max(total, self.done, 1)
        self._draw()

    def step(self, what: str = "", n: int = 1) -> None:
        self.done += n
        self.what = what
        self._draw()

    def note(self, what: str) -> None:
        self.what = what
        self._draw()

    def _draw(self) -> None:
        if not self.enabled:
            return
        frac = min(self.done / self.total, 1.0)
        width = 28
        bar = "#" * int(frac * width) + "." * (width - int(frac * width))
        elapsed = time.perf_counter() - self.start
        left = elapsed / frac - elapsed if frac > 0 else 0.0
        line = (f"\r[{bar}] {self.done}/{self.total} {int(elapsed // 60)}m{int(elapsed % 60):02d}s"
                f" (~{int(left // 60)}m{int(left % 60):02d}s left)  {self.what}")
        sys.stderr.write(line[:150].ljust(150))
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()


def block(tree) -> None:
    import jax
    jax.block_until_ready(tree)
