"""A flax nnx model with many small layers, trained with compatopt's flat layouts.

The one line that gives an ``nnx.Optimizer`` the flat path::

    optimizer = nnx.Optimizer(model, co.multi_tensor(co.adam(1e-3)), wrt=nnx.Param)

``co.multi_tensor`` keeps the model as it is (per-leaf ``nnx.Param``s) and stores Adam's slots
as one flat buffer per dtype, so the update is one kernel per buffer instead of a few per
parameter. Going further, ``co.flatten_params`` keeps the parameters themselves in one buffer
across steps (``nnx.split`` / ``nnx.merge`` around a ``jax.jit`` step; the loss rebuilds the
model from ``flat.tree()``). Both give the same bits as the per-leaf ``co.adam``; this script
trains the same model all three ways, checks that, and prints each way's step time.

Run::

    python3 examples/nnx_flat.py                 # 64 layers (128 parameter leaves)
    python3 examples/nnx_flat.py --layers 256 --steps 50
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import compatopt as co


class DeepMLP(nnx.Module):
    """``layers`` tanh layers of ``width`` x ``width`` (two leaves each: kernel and bias)."""

    def __init__(self, layers: int, width: int, rngs: nnx.Rngs):
        self.layers = nnx.List([nnx.Linear(width, width, rngs=rngs) for _ in range(layers)])

    def __call__(self, x):
        for layer in self.layers:
            x = jnp.tanh(layer(x))
        return x


def data(width: int, batch: int = 16):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, width)).astype(np.float32)
    return jnp.asarray(x), jnp.asarray(np.tanh(x[:, ::-1]))


def loss_fn(model, x, y):
    return jnp.mean((model(x) - y) ** 2)


def train_with_optimizer(tx, layers: int, width: int, steps: int):
    """The usual nnx loop: ``nnx.Optimizer`` + ``nnx.jit``."""
    model = DeepMLP(layers, width, nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer, x, y):
        loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
        optimizer.update(model, grads)
        return loss

    x, y = data(width)
    return _timed(lambda: train_step(model, optimizer, x, y), steps), \
        jax.tree.leaves(nnx.state(model, nnx.Param))


def train_flat_params(layers: int, width: int, steps: int):
    """Parameters in one flat buffer across steps: ``nnx.split`` once, ``nnx.merge`` in
    the loss."""
    model = DeepMLP(layers, width, nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    flat = co.flatten_params(params)
    rule = co.adam(1e-3)
    state = rule.init(flat)

    @jax.jit
    def train_step(flat, state, x, y):
        def loss_of(flat):
            return loss_fn(nnx.merge(graphdef, flat.tree(), rest), x, y)

        loss, grads = jax.value_and_grad(loss_of)(flat)
        flat, state = rule.apply(grads, state, flat)
        return flat, state, loss

    x, y = data(width)
    box = [flat, state]

    def step():
        box[0], box[1], loss = train_step(box[0], box[1], x, y)
        return loss

    result = _timed(step, steps)
    nnx.update(model, box[0].tree())  # the trained values back into the module
    return result, jax.tree.leaves(nnx.state(model, nnx.Param))


def _timed(step, steps: int):
    t0 = time.perf_counter()
    first_loss = float(step())
    first = time.perf_counter() - t0
    times = []
    loss = first_loss
    for _ in range(steps - 1):
        t0 = time.perf_counter()
        loss = float(step())
        times.append(time.perf_counter() - t0)
    return {"first_call_s": first, "step_ms": 1e3 * float(np.median(times)) if times else 0.0,
            "first_loss": first_loss, "last_loss": loss}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=64)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args(argv)
    print(f"nnx DeepMLP: {args.layers} layers of {args.width} x {args.width} "
          f"({2 * args.layers} parameter leaves), Adam 1e-3, {args.steps} steps")
    runs = {
        "co.adam (per leaf)": train_with_optimizer(co.adam(1e-3), args.layers, args.width,
                                                   args.steps),
        "co.multi_tensor(co.adam)": train_with_optimizer(co.multi_tensor(co.adam(1e-3)),
                                                         args.layers, args.width, args.steps),
        "co.flatten_params + co.adam": train_flat_params(args.layers, args.width, args.steps),
    }
    reference = runs["co.adam (per leaf)"][1]
    for name, (r, leaves) in runs.items():
        same = all(np.array_equal(a, b) for a, b in zip(reference, leaves))
        print(f"{name:<28} loss {r['first_loss']:.6f} -> {r['last_loss']:.6f}   "
              f"first call {r['first_call_s']:6.2f} s   step {r['step_ms']:7.2f} ms   "
              f"{'bit-identical to per leaf' if same else 'DIFFERS from per leaf'}")
        if not same:
            raise SystemExit(f"{name}: parameters differ from the per-leaf co.adam")


if __name__ == "__main__":
    main()
