"""Data-parallel training with a TF1 rule: one device, many devices, many hosts.

The model and data are those of ``train_digits.py`` (an MLP on scikit-learn's digits). The
global batch is split over a 1-D mesh axis ``"data"``; four ways to run the same training:

* ``--mode jit``: ``jax.jit`` with shardings. Parameters and state replicated, batch
  sharded; XLA inserts the gradient all-reduce.
* ``--mode zero1``: the same, with the optimizer state sharded over ``"data"`` (ZeRO
  stage 1, ``compatopt.parallel.init_sharded(..., zero_axis="data")``): each device keeps
  ``1/n`` of the slots.
* ``--mode shard_map``: a per-replica step in ``jax.shard_map``;
  ``compatopt.parallel.cross_replica(rule, "data")`` averages the gradients.
* ``--mode shim``: the ``tf.compat.v1`` way: ``compatopt.Variable``s,
  ``CrossShardOptimizer`` in a per-replica ``shard_map`` (``compatopt.train.CrossShardOptimizer``,
  ``compatopt.train.shard_map``), compiled with ``compatopt.function``.

On a CPU-only machine ``--devices 8`` fakes 8 devices (XLA's host-platform device count).
Several hosts: run the same command on each with ``--coordinator host0:1234
--num-processes N --process-id i``; each process then feeds its own part of the batch.

    python examples/data_parallel.py --devices 8 --mode zero1
    python examples/data_parallel.py --devices 4 --mode shim --epochs 5
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def _parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["jit", "zero1", "shard_map", "shim"], default="jit")
    parser.add_argument("--devices", type=int, default=None,
                        help="CPU only: number of host devices to fake (XLA flag)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64, help="global batch")
    parser.add_argument("--coordinator", default=None, help="host:port of process 0")
    parser.add_argument("--num-processes", type=int, default=1)
    parser.add_argument("--process-id", type=int, default=0)
    return parser.parse_args(argv)


def main(argv=None) -> float:
    args = _parse(argv)
    if args.devices:  # must happen before jax starts
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={args.devices}")
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    import compatopt as co

    parallel = co.parallel

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from train_digits import init_mlp, load_digits_split, logits_fn, loss_fn

    if args.coordinator:
        jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)

    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    n = mesh.size
    if args.batch_size % n:
        raise SystemExit(f"--batch-size {args.batch_size} must divide by {n} devices")
    rep, data = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))

    def to_global(host_batch):
        """This process's rows of the global batch -> one array sharded over the mesh."""
        rows = host_batch.shape[0] // jax.process_count()
        local = host_batch[jax.process_index() * rows:(jax.process_index() + 1) * rows]
        return jax.make_array_from_process_local_data(data, local, host_batch.shape)

    (x_train, y_train), (x_test, y_test) = load_digits_split()
    host_params = jax.device_get(init_mlp(jax.random.PRNGKey(0)))
    rule = co.adam(learning_rate=0.001)

    if args.mode in ("jit", "zero1"):
        params = jax.device_put(host_params, rep)
        zero_axis = "data" if args.mode == "zero1" else None
        state_sh = parallel.state_shardings(rule, params, zero_axis=zero_axis)
        state = parallel.init_sharded(rule, params, zero_axis=zero_axis)
        param_sh = jax.tree_util.tree_map(lambda _: rep, params)

        def step(params, state, x, y):
            loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
            params, state = rule.apply(grads, state, params)
            return params, state, loss

        step = jax.jit(step, in_shardings=(param_sh, state_sh, data, data),
                       out_shardings=(param_sh, state_sh, rep), donate_argnums=(0, 1))

        def train_step(x, y):
            nonlocal params, state
            params, state, loss = step(params, state, x, y)
            return loss

        def current():
            return params, state

    elif args.mode == "shard_map":
        params = jax.device_put(host_params, rep)
        state = parallel.init_sharded(rule, params)
        wrapped = parallel.cross_replica(rule, "data")

        def per_replica(params, state, x, y):
            # Per-replica gradients (pcast): cross_replica sums them over "data".
            local = jax.lax.pcast(params, "data", to="varying")
            loss, grads = jax.value_and_grad(loss_fn)(local, x, y)
            params, state = wrapped.apply(grads, state, params)
            return params, state, jax.lax.pmean(loss, "data")

        step = jax.jit(jax.shard_map(per_replica, mesh=mesh,
                                     in_specs=(P(), P(), P("data"), P("data")),
                                     out_specs=(P(), P(), P())), donate_argnums=(0, 1))

        def train_step(x, y):
            nonlocal params, state
            params, state, loss = step(params, state, x, y)
            return loss

        def current():
            return params, state

    else:  # shim
        variables = {k: co.Variable(jax.device_put(v, rep), name=k.replace("/", "_"))
                     for k, v in host_params.items()}
        opt = co.train.CrossShardOptimizer(co.train.AdamOptimizer(learning_rate=0.001))
        global_step = co.train.get_or_create_global_step()

        def loss_of_variables(x, y):
            return loss_fn({k: v.value for k, v in variables.items()}, x, y)

        @co.function
        @co.train.shard_map(mesh=mesh, in_specs=P("data"))
        def shim_step(x, y):
            loss = jax.lax.pmean(loss_of_variables(x, y), "data")  # before the update
            opt.minimize(lambda: loss_of_variables(x, y), global_step=global_step)
            return loss

        train_step = shim_step

        def current():
            slots = [opt.get_slot(v, s).value for v in variables.values()
                     for s in opt.get_slot_names()]
            return {k: v.value for k, v in variables.items()}, slots

    @jax.jit
    def accuracy(params, x, y):
        return jnp.mean(jnp.argmax(logits_fn(params, x), axis=1) == y)

    steps_per_epoch = len(x_train) // args.batch_size
    rng = np.random.default_rng(1)
    what = "CrossShardOptimizer(AdamOptimizer)" if args.mode == "shim" else repr(rule)
    print(f"{args.mode}: {what} data-parallel over {n} {jax.devices()[0].platform} "
          f"device(s), {jax.process_count()} process(es), global batch {args.batch_size}")
    start, acc = time.perf_counter(), 0.0
    for epoch in range(1, args.epochs + 1):
        order = rng.permutation(len(x_train))
        losses = []
        for i in range(steps_per_epoch):
            idx = order[i * args.batch_size:(i + 1) * args.batch_size]
            losses.append(train_step(to_global(x_train[idx]), to_global(y_train[idx])))
        params, _ = current()
        acc = float(accuracy(params, jax.device_put(x_test, rep), jax.device_put(y_test, rep)))
        loss = float(np.mean([np.asarray(v.addressable_data(0)) for v in losses]))
        print(f"epoch {epoch:3d}/{args.epochs}  loss {loss:.4f}  test acc {acc:.3f}")
    elapsed = time.perf_counter() - start
    params, state = current()
    per_device = parallel.device_nbytes(state)
    print(f"{args.epochs * steps_per_epoch} steps in {elapsed:.1f} s; optimizer state per "
          f"device: {max(per_device.values()) / 1024:.1f} KiB "
          f"(all devices: {sum(per_device.values()) / 1024:.1f} KiB)")
    return acc


if __name__ == "__main__":
    main()
