"""Porting a custom TF1 optimizer: BERT's ``AdamWeightDecayOptimizer`` on compatopt.train.

BERT's ``optimization.py`` (google-research/bert, Apache-2.0) trains with Adam plus
decoupled weight decay ("AdamW", Loshchilov & Hutter), written as a TF1 ``Optimizer``
subclass. Its math, per variable (no bias correction)::

    m = beta_1 * m + (1 - beta_1) * g
    v = beta_2 * v + (1 - beta_2) * g^2
    update = m / (sqrt(v) + epsilon) + weight_decay_rate * param   # decay skipped for
    param = param - learning_rate * update                          # excluded names

The original overrides ``apply_gradients`` wholesale; here it is written with TF1's
extension hooks instead (``_create_slots``, ``_prepare``, ``_resource_apply_dense``,
``_resource_apply_sparse``), which is how most TF1 custom optimizers look. The port is the
TF1 class with ``tf.*`` ops swapped for :mod:`compatopt.tf_math` (TF1's rounding under XLA)
and ``var.assign(...)``; the slot variables keep BERT's checkpoint names (``w/adam_m``,
``w/adam_v``). ``tests/test_tf_math.py`` replays TF1 graph mode running the same subclass
bit for bit.

Run: ``python examples/adamw_subclass.py [--steps N]``: trains a small regression twice
from the same initial values and data, on a fresh graph each time, once eagerly and once
with a compiled ``compatopt.function`` step, prints both loss curves and checks that the two
runs agree (it says whether they are bit-identical, or by how much they differ).
"""

from __future__ import annotations

import argparse
import re
from typing import Optional, Sequence

import jax.numpy as jnp
import numpy as np

import compatopt as co
from compatopt import tf_math as tm


class AdamWeightDecayOptimizer(co.train.Optimizer):
    """A basic Adam optimizer that includes "correct" L2 weight decay (BERT)."""

    def __init__(self, learning_rate, weight_decay_rate: float = 0.0, beta_1: float = 0.9,
                 beta_2: float = 0.999, epsilon: float = 1e-6,
                 exclude_from_weight_decay: Optional[Sequence[str]] = None,
                 name: str = "AdamWeightDecayOptimizer") -> None:
        super().__init__(False, name)
        self.learning_rate = learning_rate
        self.weight_decay_rate = weight_decay_rate
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.exclude_from_weight_decay = exclude_from_weight_decay

    def _create_slots(self, var_list):
        for v in var_list:
            self._zeros_slot(v, "m", "adam_m")
            self._zeros_slot(v, "v", "adam_v")

    def _prepare(self):
        # TF1: tf.convert_to_tensor(self._call_if_callable(self.learning_rate)): float32
        self._lr_t = jnp.float32(self._call_if_callable(self.learning_rate))

    def _update(self, grad, param):
        m, v = self.get_slot(param, "m"), self.get_slot(param, "v")
        # tf_math keeps TF1's rounding under XLA (no FMA, no reciprocal): bit-exact with TF1
        next_m = tm.mul(self.beta_1, m.value) + tm.mul(1.0 - self.beta_1, grad)
        next_v = tm.mul(self.beta_2, v.value) + tm.mul(1.0 - self.beta_2, tm.square(grad))
        update = tm.div(next_m, tm.sqrt(next_v) + self.epsilon)
        if self._do_use_weight_decay(param.name):
            update += tm.mul(self.weight_decay_rate, param.value)
        param.assign(param - tm.mul(self._lr_t, update))
        m.assign(next_m)
        v.assign(next_v)

    def _resource_apply_dense(self, grad, var):
        self._update(grad, var)

    def _resource_apply_sparse(self, grad, var, indices):
        # BERT densifies sparse gradients; rows are unique here (padded under a compiled
        # step, hence mode="drop").
        dense = jnp.zeros(var.shape, grad.dtype).at[indices].add(grad, mode="drop")
        self._update(dense, var)

    def _do_use_weight_decay(self, param_name: str) -> bool:
        if not self.weight_decay_rate:
            return False
        for r in self.exclude_from_weight_decay or ():
            if re.search(r, param_name) is not None:
                return False
        return True


def make_problem(seed: int = 0) -> dict:
    """Fixed data and initial values (NumPy), shared by both runs so they start alike."""
    rs = np.random.RandomState(seed)
    x = rs.standard_normal((64, 5)).astype(np.float32)
    y = x @ rs.standard_normal((5, 1)).astype(np.float32) + np.float32(0.3)
    return {"x": x, "y": y,
            "kernel": (rs.standard_normal((5, 1)) * 0.1).astype(np.float32),
            "bias": np.zeros(1, np.float32)}


def train(d: dict, steps: int, compiled: bool):
    """``steps`` minimize steps from ``d``'s initial values on a fresh graph.

    Returns ``(losses, final values, slot variable names)``; each loss is the one before its
    step. ``compiled`` runs the step through ``co.function`` (one XLA computation), else
    eagerly (op by op).
    """
    co.reset_default_graph()  # fresh name counters and collections: same names both times
    w = co.Variable(d["kernel"], name="kernel")
    b = co.Variable(d["bias"], name="bias")
    opt = AdamWeightDecayOptimizer(0.05, weight_decay_rate=0.01,
                                   exclude_from_weight_decay=["bias"])
    x, y = jnp.asarray(d["x"]), jnp.asarray(d["y"])

    def loss():
        return jnp.mean(jnp.square(x @ w + b - y))

    def step():
        value = loss()
        opt.minimize(loss)
        return value

    run = co.function(step) if compiled else step
    losses = np.asarray([float(run()) for _ in range(steps)], np.float32)
    if compiled:
        assert run.trace_count == 1, run.trace_count
    final = {v.name: v.numpy() for v in [w, b] + opt.variables()}
    return losses, final, [v.name for v in opt.variables()]


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args(argv)
    d = make_problem()
    eager, eager_final, slots = train(d, args.steps, compiled=False)
    compiled, compiled_final, compiled_slots = train(d, args.steps, compiled=True)
    assert slots == compiled_slots, (slots, compiled_slots)
    print("slots:", slots)
    every = max(1, args.steps // 5)
    print("eager    loss:", " ".join(f"{v:.4f}" for v in eager[::every]))
    print("compiled loss:", " ".join(f"{v:.4f}" for v in compiled[::every]))

    # Same start, same data: the two runs differ only in how XLA evaluates the step (op by
    # op, or fused into one computation), so they agree to float32 rounding.
    diffs = {"loss": float(np.max(np.abs(eager - compiled)))}
    diffs.update({k: float(np.max(np.abs(eager_final[k] - compiled_final[k])))
                  for k in eager_final})
    worst = max(diffs.values())
    if worst == 0.0:
        print(f"eager vs compiled: bit-identical over {args.steps} steps (losses, variables, "
              "slots)")
    else:
        same = np.nonzero(eager != compiled)[0]
        first = f"first loss to differ: step {same[0]}; " if len(same) else ""
        print(f"eager vs compiled: {first}max abs difference {worst:.3e} over {args.steps} "
              "steps (" + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()) + ")")
    np.testing.assert_allclose(compiled, eager, rtol=1e-5, atol=1e-7)
    for k in eager_final:
        np.testing.assert_allclose(compiled_final[k], eager_final[k], rtol=1e-5, atol=1e-6)
    return worst


if __name__ == "__main__":
    main()
