"""Carry a TF1 training run, optimizer state included, over to compatopt mid-training.

    python3 examples/migrate_tf1_checkpoint.py [--checkpoint PREFIX | --fixture DIR]
        [--out DIR] [--steps N]

The default checkpoint is the one committed under ``tests/fixtures/tf1/checkpoints/adam``
(found relative to this file, so the example runs from any folder against an installed
compatopt; ``--fixture`` points elsewhere):
``tf.compat.v1.train.Saver`` wrote it after 50 Adam steps of a small MLP (variables
``hidden/kernel`` ... with slots ``hidden/kernel/Adam``, ``hidden/kernel/Adam_1``,
``beta1_power``, ``beta2_power``, ``global_step``). With TensorFlow installed
(``pip install compatopt[tf]``) it is read directly through TensorFlow's reader; without
it, the copy converted once by ``compatopt.train.convert_tf1_checkpoint`` is used.

It then:

1. lists the checkpoint (``list_variables``);
2. rebuilds the model with TF1's names, creates Adam's slots (TF1 makes them in the first
   step; here the restore comes first) and restores everything (``Saver.restore``);
3. trains 50 more steps with ``minimize``: the run continues where TF1 stopped;
4. saves compatopt checkpoints (atomic, ``max_to_keep=2``) and finds the latest again (in
   ``--out``, or in a temporary folder that is removed at the end);
5. does the same restore for a functional JAX loop (``compatopt.checkpoint.load``).
"""

from __future__ import annotations

import argparse
import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

import compatopt as co

HERE = os.path.dirname(os.path.abspath(__file__))
# The committed TF1 fixture, found relative to this file (a source checkout: the installed
# package does not ship it). Elsewhere pass --checkpoint or --fixture.
FIXTURE = os.path.normpath(os.path.join(HERE, "..", "tests", "fixtures", "tf1", "checkpoints",
                                        "adam"))
VARS = ("hidden/kernel", "hidden/bias", "out/kernel", "out/bias")


def problem():
    """``(x, y, init)``: the data the TF1 run trained on, and the shapes of its variables.

    The same NumPy draws as ``tests/checkpoint/ckpt_problem.py``, from which
    ``tools/make_tf1_checkpoint_fixtures.py`` recorded the checkpoint (the tests check that
    the two stay equal).
    """
    rs = np.random.RandomState(2024)
    f = lambda *s: rs.standard_normal(s).astype(np.float32)  # noqa: E731
    x, y = f(32, 8), f(32, 1)
    init = {"hidden/kernel": f(8, 16) * np.float32(0.5), "hidden/bias": f(16) * np.float32(0.1),
            "out/kernel": f(16, 1) * np.float32(0.5), "out/bias": f(1) * np.float32(0.1)}
    return x, y, init


def default_checkpoint(fixture: str = FIXTURE) -> str:
    """The TF1 checkpoint itself with TensorFlow installed, else its converted copy."""
    if not os.path.isdir(fixture):
        raise SystemExit(
            f"error: the TF1 checkpoint fixture is not at {fixture}. It is part of compatopt's "
            "source tree (tests/fixtures/tf1/checkpoints/adam), not of the installed package: "
            "run this example from a checkout, or pass --fixture DIR (a folder holding tf1/ "
            "and converted/) or --checkpoint PREFIX.")
    try:
        import tensorflow  # noqa: F401
        path = co.train.latest_checkpoint(os.path.join(fixture, "tf1"))
    except ImportError:
        print("TensorFlow is not installed: using the converted copy of the TF1 checkpoint")
        path = os.path.join(fixture, "converted", "model.ckpt-50")
    if not path or not co.train.checkpoint_exists(path):
        raise SystemExit(f"error: no checkpoint under {fixture} (looked for {path})")
    return path


def mlp_loss(p, x, y):
    h = jnp.tanh(x @ p["hidden/kernel"] + p["hidden/bias"])
    return jnp.mean(jnp.square(h @ p["out/kernel"] + p["out/bias"] - y))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", help="TF1 or compatopt checkpoint prefix")
    ap.add_argument("--fixture", default=FIXTURE,
                    help="folder of the committed TF1 fixture (default: %(default)s)")
    ap.add_argument("--out", help="where to write compatopt checkpoints (default: a temporary "
                    "folder, removed at the end)")
    ap.add_argument("--steps", type=int, default=50)
    args = ap.parse_args(argv)
    if args.checkpoint:
        path = args.checkpoint
        if not co.train.checkpoint_exists(path):
            raise SystemExit(f"error: no checkpoint at {path} (give the prefix, e.g. "
                             "dir/model.ckpt-50)")
    else:
        path = default_checkpoint(args.fixture)
    if args.out:
        run(args, path, args.out)
    else:
        with tempfile.TemporaryDirectory(prefix="compatopt-ckpt-") as out:
            run(args, path, out)


def run(args, path: str, out: str) -> None:
    x, y, init = problem()

    print(f"\n1. {path}")
    for name, shape in co.train.list_variables(path):
        print(f"   {name:24s} {shape}")

    print("\n2. Rebuild with TF1's names, create the slots, restore")
    params = {n: co.Variable(np.zeros_like(init[n]), name=n) for n in VARS}
    step = co.train.get_or_create_global_step()
    opt = co.train.AdamOptimizer(learning_rate=0.01)
    created = co.train.create_slots(opt, list(params.values()))
    print(f"   created {[v.op.name for v in created]}")
    co.train.Saver().restore(None, path)
    print(f"   restored {len(co.global_variables())} variables at global_step "
          f"{int(step.numpy())}")

    print(f"\n3. Train {args.steps} more steps with minimize")

    def loss():
        return mlp_loss({n: v.value for n, v in params.items()}, x, y)

    print(f"   step {int(step.numpy()):4d}  loss {float(loss()):.6f}")
    for i in range(args.steps):
        opt.minimize(loss, global_step=step)
        if (i + 1) % 10 == 0:
            print(f"   step {int(step.numpy()):4d}  loss {float(loss()):.6f}")

    print(f"\n4. Save compatopt checkpoints in {out}")
    s = co.train.Saver(max_to_keep=2)
    for _ in range(3):
        s.save(None, os.path.join(out, "model.ckpt"), global_step=step)
        opt.minimize(loss, global_step=step)
    print(f"   files: {sorted(os.listdir(out))}")
    print(f"   latest_checkpoint: {co.train.latest_checkpoint(out)}")

    print("\n5. The same checkpoint into a functional JAX loop")
    rule = co.adam(learning_rate=0.01)
    like = {n: jax.ShapeDtypeStruct(init[n].shape, jnp.float32) for n in VARS}
    p, state = co.checkpoint.load(path, rule, like)  # dict keys are the TF1 names
    print(f"   state: {type(state).__name__}(count={int(state.count)}, "
          f"beta1_power={float(state.beta1_power):.6f}, ...)")

    @jax.jit
    def train_step(p, state):
        grads = jax.grad(mlp_loss)(p, x, y)
        return rule.apply(grads, state, p)

    for _ in range(args.steps):
        p, state = train_step(p, state)
    print(f"   after {args.steps} steps: loss {float(mlp_loss(p, x, y)):.6f} (count "
          f"{int(state.count)})")


if __name__ == "__main__":
    main()
