"""One process of the multi-process data-parallel run (started by ``test_parallel.py``).

    python _distributed_worker.py --num-processes 2 --process-id 0 --port 12345 --out r.npz

With ``--num-processes 1`` it is the single-process reference on the same global mesh.
The device count per process comes from ``XLA_FLAGS`` (``..._device_count=4`` for two
processes, ``8`` for one). Trains the MLP of ``_helpers.py`` data-parallel on a global
mesh of 8 CPU devices twice:

* ``shard_map`` + ``compatopt.parallel.cross_replica(fixed_order=True)``: the reduction
  order is fixed, so the parameters must be bit-identical to the single-process run;
* ``jit`` with ZeRO-1 state shardings: XLA's own all-reduce (gloo between processes),
  compared within a tolerance.

Process 0 writes the final parameters to ``--out``.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import jax

jax.config.update("jax_cpu_collectives_implementation", "gloo")

import numpy as np  # noqa: E402
from jax.sharding import (  # noqa: E402
    NamedSharding,  # noqa: E402
    PartitionSpec as P,
)

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _helpers import mlp_batch, mlp_loss, mlp_params  # noqa: E402

import compatopt as co  # noqa: E402
from compatopt import parallel  # noqa: E402

GLOBAL_BATCH, STEPS = 32, 4


def _global(host: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A global array from a value every process knows in full."""
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def _local_batch(host: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """Each process contributes only its own rows of the global batch."""
    n = jax.process_count()
    rows = host.shape[0] // n
    local = host[jax.process_index() * rows:(jax.process_index() + 1) * rows]
    return jax.make_array_from_process_local_data(sharding, local, host.shape)


def _fetch(tree) -> dict:
    """The value of replicated arrays, read from this process's first device."""
    return {k: np.asarray(v.addressable_data(0)) for k, v in tree.items()}


def train_shard_map(mesh) -> dict:
    rule = co.adam(0.01)
    wrapped = parallel.cross_replica(rule, "data", fixed_order=True)
    rep, data = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))

    def step(params, state, x, y):
        grads = jax.grad(mlp_loss)(jax.lax.pcast(params, "data", to="varying"), x, y)
        return wrapped.apply(grads, state, params)

    step = jax.jit(jax.shard_map(step, mesh=mesh, in_specs=(P(), P(), P("data"), P("data")),
                                 out_specs=(P(), P())))
    host = mlp_params()
    params = {k: _global(v, rep) for k, v in host.items()}
    state = parallel.init_sharded(rule, params)
    for s in range(STEPS):
        x, y = mlp_batch(s, GLOBAL_BATCH)
        params, state = step(params, state, _local_batch(x, data), _local_batch(y, data))
    return _fetch(params)


def train_zero1(mesh) -> dict:
    rule = co.adam(0.01)
    rep, data = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    host = mlp_params()
    params = {k: _global(v, rep) for k, v in host.items()}
    state_sh = parallel.state_shardings(rule, params, zero_axis="data")
    state = parallel.init_sharded(rule, params, zero_axis="data")
    param_sh = {k: rep for k in params}

    def step(params, state, x, y):
        return rule.apply(jax.grad(mlp_loss)(params, x, y), state, params)

    step = jax.jit(step, in_shardings=(param_sh, state_sh, data, data),
                   out_shardings=(param_sh, state_sh))
    for s in range(STEPS):
        x, y = mlp_batch(s, GLOBAL_BATCH)
        params, state = step(params, state, _local_batch(x, data), _local_batch(y, data))
    local_state = sum(parallel.device_nbytes(state).values())
    return dict(_fetch(params), state_bytes_this_process=np.asarray(local_state))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--num-processes", type=int, required=True)
    ap.add_argument("--process-id", type=int, default=0)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if args.num_processes > 1:
        jax.distributed.initialize(coordinator_address=f"localhost:{args.port}",
                                   num_processes=args.num_processes,
                                   process_id=args.process_id,
                                   initialization_timeout=60)
    assert jax.device_count() == 8, jax.devices()
    mesh = jax.make_mesh((8,), ("data",))
    a = train_shard_map(mesh)
    b = train_zero1(mesh)
    if jax.process_index() == 0:
        np.savez(args.out, **{f"shard_map/{k}": v for k, v in a.items()},
                 **{f"zero1/{k}": v for k, v in b.items()})
    if args.num_processes > 1:
        jax.distributed.shutdown()


if __name__ == "__main__":
    main()
