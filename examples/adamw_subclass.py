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
TF1 class with ``tf.*`` ops swapped for ``jnp``/operators and ``var.assign(...)``; the slot
variables keep BERT's checkpoint names (``w/adam_m``, ``w/adam_v``).

Run: ``python examples/adamw_subclass.py`` (trains a small regression eagerly and with a
compiled ``compatopt.function`` step and prints both loss curves).
"""

from __future__ import annotations

import re
from typing import Optional, Sequence

import jax.numpy as jnp
import numpy as np

import compatopt as co


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
        next_m = self.beta_1 * m + (1.0 - self.beta_1) * grad
        next_v = self.beta_2 * v + (1.0 - self.beta_2) * jnp.square(grad)
        update = next_m / (jnp.sqrt(next_v) + self.epsilon)
        if self._do_use_weight_decay(param.name):
            update += self.weight_decay_rate * param
        param.assign(param - self._lr_t * update)
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


def main() -> None:
    rs = np.random.RandomState(0)
    x = rs.standard_normal((64, 5)).astype(np.float32)
    y = x @ rs.standard_normal((5, 1)).astype(np.float32) + 0.3
    w = co.Variable(np.zeros((5, 1), np.float32), name="kernel")
    b = co.Variable(np.zeros(1, np.float32), name="bias")
    opt = AdamWeightDecayOptimizer(0.05, weight_decay_rate=0.01,
                                   exclude_from_weight_decay=["bias"])

    def loss():
        return jnp.mean(jnp.square(x @ w + b - y))

    eager = []
    for _ in range(50):
        eager.append(float(loss()))
        opt.minimize(loss)
    print("slots:", [v.name for v in opt.variables()])

    @co.function
    def step():
        value = loss()
        opt.minimize(loss)
        return value

    compiled = [float(step()) for _ in range(50)]
    print("eager    loss:", " ".join(f"{v:.4f}" for v in eager[::10]))
    print("compiled loss:", " ".join(f"{v:.4f}" for v in compiled[::10]),
          f"(traces: {step.trace_count})")


if __name__ == "__main__":
    main()
