"""What both schedule replays use (eager fixtures in ``test_schedules.py``, graph-mode ones
in ``test_schedules_graph.py``): fixture arguments, the schedule they build, bit checks."""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np

import compatopt as co
from compatopt import schedules


def decode(arg):
    """A fixture argument; ``{"var": ...}`` (a TF Variable) becomes a compatopt.Variable."""
    if "var" in arg:
        return co.Variable(decode(arg["var"]), trainable=False)
    if "py" in arg:
        return arg["py"]
    return np.dtype(arg["np"]).type(arg["value"])


def x64_for(dtype_name: str):
    return jax.enable_x64(True) if "64" in dtype_name else contextlib.nullcontext()


def arguments(case: dict):
    lr = decode(case["learning_rate"])
    args = [decode(a) for a in case["args"]]
    kwargs = {k: decode(v) for k, v in case["kwargs"].items()}
    return lr, args, kwargs


def make(case: dict):
    lr, args, kwargs = arguments(case)
    if case["function"] == "noisy_linear_cosine_decay":
        kwargs["key"] = jax.random.key(0)
    return getattr(schedules, case["function"])(lr, *args, **kwargs)


def assert_bits_equal(got, want, where: str):
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype, (where, got.dtype, want.dtype)
    uint = {2: np.uint16, 4: np.uint32, 8: np.uint64}[want.dtype.itemsize]
    same = (got.view(uint) == want.view(uint)) | (np.isnan(got) & np.isnan(want))
    if not same.all():
        bad = np.flatnonzero(~same)[:5]
        raise AssertionError(f"{where}: {(~same).sum()} of {same.size} differ, first at "
                             f"{bad}: got {got[bad]} want {want[bad]}")


def assert_replays(name: str, case: dict, steps: np.ndarray, want: np.ndarray) -> None:
    """The case's schedule gives ``want`` at ``steps``, bit for bit: all steps under
    ``jit(vmap)``, a sample as jitted scalars and a few eagerly."""
    with x64_for(case["dtype"]):
        sched = make(case)
        got = jax.jit(jax.vmap(sched))(jnp.asarray(steps, jnp.int32))
        assert_bits_equal(got, want, f"{name} (jit+vmap)")
        sample = np.r_[0:len(steps):37, len(steps) - 10:len(steps)]
        scalar = jax.jit(sched)
        assert_bits_equal([scalar(np.int32(s)) for s in steps[sample]], want[sample],
                          f"{name} (scalar jit)")
        eager = np.r_[0:len(steps):131, len(steps) - 1]
        assert_bits_equal([sched(int(s)) for s in steps[eager]], want[eager], f"{name} (eager)")
