"""An equinox model with many small layers, trained with compatopt's flat layouts.

The one line that gives equinox's usual optax loop the flat path::

    tx = co.multi_tensor(co.adam(1e-3))      # instead of co.adam(1e-3) or optax.adam(1e-3)

``co.multi_tensor`` keeps the model as it is and stores Adam's slots as one flat buffer per
dtype (``eqx.partition``'s ``None`` leaves stay ``None``), so the update is one kernel per
buffer instead of a few per parameter. Going further, ``co.flatten_params`` keeps the
parameters themselves in one buffer across steps::

    params, static = eqx.partition(model, eqx.is_inexact_array)
    flat = co.flatten_params(params)        # the loss rebuilds eqx.combine(flat.tree(), static)

All three give the same bits as the per-leaf ``co.adam``; this script trains the same model
each way, checks that, and prints each way's step time.

Run::

    python3 examples/equinox_flat.py                 # depth 64 (130 parameter leaves)
    python3 examples/equinox_flat.py --depth 256 --steps 50
"""

from __future__ import annotations

import argparse
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import compatopt as co


def make_model(depth: int, width: int):
    """``eqx.nn.MLP`` with ``depth`` hidden layers of ``width``, tanh."""
    return eqx.nn.MLP(width, width, width, depth=depth, activation=jnp.tanh,
                      key=jax.random.PRNGKey(0))


def data(width: int, batch: int = 16):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, width)).astype(np.float32)
    return jnp.asarray(x), jnp.asarray(np.tanh(x[:, ::-1]))


def loss_fn(model, x, y):
    return jnp.mean((jax.vmap(model)(x) - y) ** 2)


def train(tx, depth: int, width: int, steps: int, flat_params: bool = False):
    """equinox's usual loop (``eqx.partition`` / ``eqx.combine``, ``jax.jit``, donated);
    with ``flat_params`` the parameters live in ``co.flatten_params`` buffers."""
    params, static = eqx.partition(make_model(depth, width), eqx.is_inexact_array)
    if flat_params:
        params = co.flatten_params(params)
    state = tx.init(params)

    def loss_of(params, x, y):
        tree = params.tree() if flat_params else params
        return loss_fn(eqx.combine(tree, static), x, y)

    def train_step(params, state, x, y):
        loss, grads = jax.value_and_grad(loss_of)(params, x, y)
        updates, state = tx.update(grads, state, params)
        return eqx.apply_updates(params, updates), state, loss

    train_step = jax.jit(train_step, donate_argnums=(0, 1))
    x, y = data(width)
    box = [params, state]

    def step():
        box[0], box[1], loss = train_step(box[0], box[1], x, y)
        return loss

    t0 = time.perf_counter()
    first_loss = loss = float(step())
    first = time.perf_counter() - t0
    times = []
    for _ in range(steps - 1):
        t0 = time.perf_counter()
        loss = float(step())
        times.append(time.perf_counter() - t0)
    trained = box[0].tree() if flat_params else box[0]
    return ({"first_call_s": first, "step_ms": 1e3 * float(np.median(times)) if times else 0.0,
             "first_loss": first_loss, "last_loss": loss}, jax.tree.leaves(trained))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--depth", type=int, default=64)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args(argv)
    leaves = len(jax.tree.leaves(eqx.filter(make_model(args.depth, args.width),
                                            eqx.is_inexact_array)))
    print(f"eqx.nn.MLP: depth {args.depth}, width {args.width} ({leaves} parameter leaves), "
          f"Adam 1e-3, {args.steps} steps")
    a = (args.depth, args.width, args.steps)
    runs = {
        "co.adam (per leaf)": train(co.adam(1e-3), *a),
        "co.multi_tensor(co.adam)": train(co.multi_tensor(co.adam(1e-3)), *a),
        "co.flatten_params + co.adam": train(co.adam(1e-3), *a, flat_params=True),
    }
    reference = runs["co.adam (per leaf)"][1]
    for name, (r, trained) in runs.items():
        same = all(np.array_equal(p, q) for p, q in zip(reference, trained))
        print(f"{name:<28} loss {r['first_loss']:.6f} -> {r['last_loss']:.6f}   "
              f"first call {r['first_call_s']:6.2f} s   step {r['step_ms']:7.2f} ms   "
              f"{'bit-identical to per leaf' if same else 'DIFFERS from per leaf'}")
        if not same:
            raise SystemExit(f"{name}: parameters differ from the per-leaf co.adam")


if __name__ == "__main__":
    main()
