"""Half-precision training with TF1's dynamic loss scaling, functional and in the shim.

Mixed-precision TF1 programs wrapped their optimizer in
``tf.compat.v1.train.experimental.MixedPrecisionLossScaleOptimizer(opt, "dynamic")``: the
loss is multiplied by the scale, the gradients divided by it, a step with a non-finite
gradient is skipped and halves the scale, and every ``increment_period`` finite steps double
it. This trains a float16 MLP on scikit-learn's digits two ways with the same arithmetic:

* functional: ``co.loss_scaling.dynamic_loss_scale(co.adam(...))`` in a ``jax.jit`` step;
* shim: ``co.train.experimental.MixedPrecisionLossScaleOptimizer`` in a ``@co.function``.

Scaled float16 gradients overflow now and then at TF1's default scale (``2**15``): those
steps are skipped and the scale halves, then grows back, as in TF1 (the plot shows it).
The optimizer is Momentum: TF1's Adam is a poor fit for half precision with its defaults,
in TF1 as here (``epsilon=1e-8`` is 0 in float16, giving NaN where ``m``, ``v`` are zero;
``beta2=0.999`` rounds to 1.0 in bfloat16, so ``v`` never moves). Run:
``python examples/bf16_loss_scaling.py [--steps N] [--dtype bfloat16|float16] [--plot PATH]``.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

import compatopt as co
from compatopt import loss_scaling as ls


def load(dtype):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = np.eye(10, dtype=np.float32)[d.target]
    return jnp.asarray(x, dtype), jnp.asarray(y, dtype)


def init_params(dtype, seed: int = 0) -> dict:
    rs = np.random.RandomState(seed)
    return {"w1": jnp.asarray(rs.standard_normal((64, 32)) * 0.1, dtype),
            "b1": jnp.zeros(32, dtype),
            "w2": jnp.asarray(rs.standard_normal((32, 10)) * 0.1, dtype),
            "b2": jnp.zeros(10, dtype)}


def mse(p, x, y):
    h = jnp.tanh(x @ p["w1"] + p["b1"])
    return jnp.mean((h @ p["w2"] + p["b2"] - y) ** 2)


def functional(x, y, steps: int, dtype, increment_period: int):
    rule = ls.dynamic_loss_scale(co.momentum(0.5, 0.9), increment_period=increment_period)
    params = init_params(dtype)
    state = rule.init(params)

    @jax.jit
    def step(params, state):
        loss, grads = jax.value_and_grad(lambda p: ls.scale_loss(mse(p, x, y), state))(params)
        params, state = rule.apply(grads, state, params)
        return params, state, loss / state.current_loss_scale.astype(loss.dtype)

    losses, scales = [], []
    for _ in range(steps):
        scales.append(float(state.current_loss_scale))
        params, state, _ = step(params, state)
        losses.append(float(mse(params, x, y)))
    return losses, scales


def shim(x, y, steps: int, dtype, increment_period: int):
    co.reset_default_graph()
    v = {k: co.Variable(a, name=k) for k, a in init_params(dtype).items()}
    scale = co.train.experimental.DynamicLossScale(increment_period=increment_period)
    opt = co.train.experimental.MixedPrecisionLossScaleOptimizer(
        co.train.MomentumOptimizer(0.5, 0.9), scale)

    @co.function
    def step():
        return opt.minimize(lambda: mse(v, x, y))

    losses = []
    for _ in range(steps):
        step()
        losses.append(float(mse({k: a.value for k, a in v.items()}, x, y)))
    return losses, float(scale())


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--dtype", choices=["float16", "bfloat16"], default="bfloat16")
    parser.add_argument("--increment-period", type=int, default=50)
    parser.add_argument("--plot", default=None)
    args = parser.parse_args(argv)
    dtype = jnp.dtype(args.dtype)
    x, y = load(dtype)
    f_losses, scales = functional(x, y, args.steps, dtype, args.increment_period)
    s_losses, final_scale = shim(x, y, args.steps, dtype, args.increment_period)
    skipped = sum(1 for a, b in zip(scales, scales[1:]) if b < a)
    same = f_losses == s_losses
    print(f"{args.dtype}: loss {f_losses[0]:.4f} -> {f_losses[-1]:.4f} in {args.steps} steps; "
          f"{skipped} steps skipped (scale halved), final scale {final_scale:g}")
    print(f"functional vs shim: {'identical losses' if same else 'losses differ'}")
    if args.plot:
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(f_losses, label=f"loss ({args.dtype})")
        ax.set_xlabel("step")
        ax.set_ylabel("mse")
        ax2 = ax.twinx()
        ax2.semilogy(scales, color="tab:orange", label="loss scale")
        ax2.set_ylabel("loss scale")
        fig.legend(loc="upper right")
        fig.tight_layout()
        fig.savefig(args.plot, dpi=100)
        print(f"plot: {args.plot}")
    return {"losses": f_losses, "shim": s_losses, "scales": scales}


if __name__ == "__main__":
    main()
