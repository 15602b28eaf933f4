"""Entry point of the multi-device suites, plus what one device can check.

XLA's host device count is fixed when jax starts, and the rest of the suite must keep one
device, so the 8-device cases (``_multidevice_cases.py``, ``_shim_cases.py``) run in a
child pytest with ``XLA_FLAGS=--xla_force_host_platform_device_count=8``, and the
multi-process case starts two ``jax.distributed`` workers on localhost. Each child has a
hard timeout, so a hang fails the test instead of stalling CI.
"""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import compatopt as co
from compatopt import parallel

# subprocesses with 8 forced devices and 2 processes: minutes
pytestmark = pytest.mark.slow

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
CHILD_TIMEOUT_S = 240


def _env(devices: int) -> dict:
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={devices}"])
    env["JAX_PLATFORMS"] = "cpu"
    env.pop("PYTEST_ADDOPTS", None)
    return env


def _run_child_pytest(module: str) -> None:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
           str(HERE / module)]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=_env(8), capture_output=True, text=True,
                              timeout=CHILD_TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{module} did not finish in {CHILD_TIMEOUT_S}s:\n{e.stdout}\n{e.stderr}")
    if proc.returncode != 0:
        pytest.fail(f"{module} failed (exit {proc.returncode}):\n{proc.stdout[-20000:]}\n"
                    f"{proc.stderr[-5000:]}")


def test_multidevice_functional_cases():
    """Sharded init/apply, cross-replica reduction, ZeRO-1 placement on 8 CPU devices."""
    _run_child_pytest("_multidevice_cases.py")


def test_multidevice_shim_cases():
    """Sharded Variables under compatopt.function; CrossShardOptimizer on 1-8 devices."""
    _run_child_pytest("_shim_cases.py")


def test_data_parallel_example_runs():
    """examples/data_parallel.py, shim mode, one epoch on 8 CPU devices."""
    pytest.importorskip("sklearn")
    cmd = [sys.executable, str(ROOT / "examples" / "data_parallel.py"), "--mode", "shim",
           "--epochs", "1"]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(8), capture_output=True, text=True,
                          timeout=CHILD_TIMEOUT_S)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "over 8 cpu device(s)" in proc.stdout and "test acc" in proc.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _worker(tmp_path, num_processes: int, process_id: int, port: int, out) -> subprocess.Popen:
    cmd = [sys.executable, str(HERE / "_distributed_worker.py"), "--num-processes",
           str(num_processes), "--process-id", str(process_id), "--port", str(port),
           "--out", str(out)]
    with open(tmp_path / f"worker{num_processes}-{process_id}.log", "w") as log:
        return subprocess.Popen(cmd, cwd=ROOT, env=_env(8 // num_processes), stdout=log,
                                stderr=subprocess.STDOUT)


def _wait(procs, tmp_path, timeout: float) -> None:
    try:
        for p in procs:
            p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()
        logs = "\n".join(f.read_text()[-3000:] for f in sorted(tmp_path.glob("*.log")))
        pytest.fail(f"jax.distributed workers did not finish in {timeout}s:\n{logs}")
    bad = [p.returncode for p in procs if p.returncode != 0]
    if bad:
        logs = "\n".join(f.read_text()[-3000:] for f in sorted(tmp_path.glob("*.log")))
        pytest.fail(f"worker exit codes {bad}:\n{logs}")


def test_two_processes_match_one_process(tmp_path):
    """2 processes x 4 CPU devices (jax.distributed, gloo) train like 1 process x 8."""
    single, multi = tmp_path / "single.npz", tmp_path / "multi.npz"
    _wait([_worker(tmp_path, 1, 0, 0, single)], tmp_path, CHILD_TIMEOUT_S / 2)
    port = _free_port()
    _wait([_worker(tmp_path, 2, i, port, multi) for i in range(2)], tmp_path,
          CHILD_TIMEOUT_S / 2)
    a, b = np.load(single), np.load(multi)
    for name in ("w1", "b1", "w2", "b2"):
        # Fixed reduction order: the same bits whether the replicas share a process or not.
        np.testing.assert_array_equal(a[f"shard_map/{name}"], b[f"shard_map/{name}"])
        # XLA's all-reduce (gloo across processes) may add in another order.
        np.testing.assert_allclose(a[f"zero1/{name}"], b[f"zero1/{name}"], rtol=1e-6,
                                   atol=1e-7)
    # ZeRO-1: process 0 holds half of the 8 devices' state shards.
    assert int(b["zero1/state_bytes_this_process"]) * 2 == int(a["zero1/state_bytes_this_process"])


# --------------------------------------------------------------- one-device checks


def test_reduction_must_be_mean_or_sum():
    with pytest.raises(ValueError, match="reduction"):
        parallel.cross_replica(co.adam(0.1), "data", reduction="max")


@pytest.mark.parametrize("groups, match", [
    ([[0, 1], [2]], "equal"),
    ([[0, 1], [1, 2]], "partition"),
    ([[]], "non-empty"),
    ([0, 1], "lists"),
])
def test_group_assignment_is_validated(groups, match):
    with pytest.raises(ValueError, match=match):
        parallel.cross_replica(co.adam(0.1), "data", group_assignment=groups)


def test_group_assignment_against_replica_count():
    assert parallel.check_group_assignment([[1, 0], [3, 2]], 4) == ((1, 0), (3, 2))
    with pytest.raises(ValueError, match="partition"):
        parallel.check_group_assignment([[0, 1], [2, 3]], 8)


def test_cross_replica_on_one_device_is_the_rule():
    """With a replica axis of size 1 (``vmap`` binds the name), the wrapped rule is the rule."""
    rule = co.adam(0.1)
    wrapped = parallel.cross_replica(rule, "r")
    assert wrapped.name == "Adam" and wrapped.definition is None
    p = {"w": jnp.arange(4.0)}
    g = {"w": jnp.linspace(-1.0, 1.0, 4)}
    s = rule.init(p)
    want = rule.apply(g, s, p)
    got = jax.vmap(wrapped.apply, axis_name="r")(
        *jax.tree_util.tree_map(lambda x: x[None], (g, s, p)))
    got = jax.tree_util.tree_map(lambda x: x[0], got)
    for a, b in zip(jax.tree_util.tree_leaves(want), jax.tree_util.tree_leaves(got)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_zero1_sharding_rules():
    mesh = jax.sharding.AbstractMesh((4, 2), ("data", "model"))
    P = jax.sharding.PartitionSpec
    ns = lambda spec: jax.sharding.NamedSharding(mesh, spec)  # noqa: E731
    z = parallel.zero1_sharding
    assert z(ns(P()), (16, 3), "data").spec == P("data", None)
    assert z(ns(P()), (3, 16), "data").spec == P(None, "data")
    assert z(ns(P()), (3, 5), "data").spec == P()  # nothing divides: stays replicated
    assert z(ns(P()), (), "data").spec == P()
    assert z(ns(P(None, "model")), (8, 6), "data").spec == P("data", "model")
    assert z(ns(P("model")), (8, 6), "data").spec == P(("model", "data"), None)
    assert z(ns(P("data")), (8,), "data").spec == P("data")
