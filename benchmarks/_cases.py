"""What is benchmarked: the rule table (compatopt vs optax), pytree shapes, step functions.

Traffic per parameter is ``(reads + 2 * rw + writes) * itemsize``: Adam reads g and
reads/writes p, m, v, so ``(1 + 2 * 3) * 4 = 28`` bytes for float32.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

import compatopt as co

try:
    import optax
except ImportError:  # optax is only a test extra
    optax = None


@dataclasses.dataclass(frozen=True)
class RuleCase:
    """One optimizer: the compatopt rule, its optax counterpart (or None), its traffic."""

    name: str
    make: Callable[[], Any]
    make_optax: Optional[Callable[[], Any]]
    reads: int  # read-only arrays (the gradient)
    rw: int     # read and written (the parameter and the slots it reads)
    writes: int = 0  # written only (a parameter whose new value ignores the old one)

    def bytes_per_param(self, itemsize: int = 4) -> int:
        return (self.reads + 2 * self.rw + self.writes) * itemsize


def _optax(fn_name: str, *args, **kwargs):
    return lambda: getattr(optax, fn_name)(*args, **kwargs)


RULES = [
    RuleCase("sgd", lambda: co.gradient_descent(0.01), _optax("sgd", 0.01), 1, 1),
    RuleCase("momentum", lambda: co.momentum(0.01, 0.9), _optax("sgd", 0.01, momentum=0.9),
             1, 2),
    RuleCase("adagrad", lambda: co.adagrad(0.01),
             _optax("adagrad", 0.01, initial_accumulator_value=0.1), 1, 2),
    RuleCase("adadelta", lambda: co.adadelta(1.0, rho=0.95, epsilon=1e-8),
             _optax("adadelta", 1.0, rho=0.95, eps=1e-8), 1, 3),
    RuleCase("adam", lambda: co.adam(0.001), _optax("adam", 0.001), 1, 3),
    RuleCase("rmsprop", lambda: co.rmsprop(0.01, momentum=0.9),
             _optax("rmsprop", 0.01, decay=0.9, eps=1e-10, initial_scale=1.0, momentum=0.9),
             1, 3),
    # TF1-only rules: timed alone (no optax counterpart).
    RuleCase("ftrl", lambda: co.ftrl(0.01), None, 1, 3),
    RuleCase("adagrad_da", lambda: co.adagrad_da(0.01), None, 1, 2, writes=1),
    RuleCase("proximal_gd", lambda: co.proximal_gradient_descent(0.01, 0.001, 0.001), None,
             1, 1),
    RuleCase("proximal_adagrad", lambda: co.proximal_adagrad(0.01, 0.1, 0.001, 0.001), None,
             1, 2),
]
RULES_BY_NAME = {r.name: r for r in RULES}


class Shape(NamedTuple):
    """``leaves`` float arrays of ``size`` elements each (about 16.4M parameters in all)."""

    leaves: int
    size: int

    @property
    def label(self) -> str:
        def short(x):
            if x >= 1_000_000:
                return f"{x / 1e6:.1f}M".replace(".0M", "M")
            if x >= 1000:
                return f"{x / 1e3:.1f}K".replace(".0K", "K")
            return str(x)
        return f"{short(self.leaves)} x {short(self.size)}"

    @property
    def total(self) -> int:
        return self.leaves * self.size


FULL_SHAPES = [Shape(1, 16_384_000), Shape(1000, 16_384), Shape(10_000, 1_638)]
QUICK_SHAPES = [Shape(1, 4_096_000), Shape(100, 16_384), Shape(1000, 1_638)]


def make_tree(shape: Shape, dtype, value: float, seed: int = 0) -> list:
    """``shape.leaves`` arrays of ``shape.size`` elements (one transfer, then split)."""
    rng = np.random.default_rng(seed)
    flat = (value + 0.01 * rng.standard_normal(shape.total)).astype(np.float32)
    flat = flat.astype(jnp.dtype(dtype))
    if shape.leaves == 1:
        return [jax.device_put(flat)]
    return jax.device_put(np.split(flat, shape.leaves))


# ----------------------------------------------------------------------- step functions


def rule_step(rule) -> Callable:
    """``(params, state, grads) -> (params, state)``: inputs in output order, so donation
    pairs each output with its own input buffer."""

    def step(params, state, grads):
        return rule.apply(grads, state, params)

    return step


def optax_step(tx) -> Callable:
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return step


class NoGuardAdamState(NamedTuple):
    count: jax.Array
    beta1_power: jax.Array
    beta2_power: jax.Array
    m: Any
    v: Any


class NoGuardAdam:
    """BENCHMARK-ONLY: TF1's Adam formula with the exactness guards removed.

    The same operations in the same order as ``compatopt.adam``'s dense kernel, without
    ``opaque`` / ``hide``: XLA is free to contract into FMAs and to rewrite divisions, so it
    is *not* TF1-exact. It exists to measure what the guards cost ("exact mode cost").
    """

    name = "Adam (no guards)"

    def __init__(self, lr=0.001, beta1=0.9, beta2=0.999, eps=1e-8):
        self.lr, self.b1, self.b2, self.eps = (np.float32(x) for x in (lr, beta1, beta2, eps))

    def init(self, params):
        zeros = jax.tree.map(jnp.zeros_like, params)
        return NoGuardAdamState(jnp.zeros((), jnp.int32), jnp.asarray(self.b1),
                                jnp.asarray(self.b2), zeros, jax.tree.map(jnp.zeros_like, params))

    def apply(self, grads, state, params):
        alpha32 = self.lr * jnp.sqrt(1 - state.beta2_power) / (1 - state.beta1_power)

        def leaf(g, p, m, v):
            T = p.dtype
            alpha, b1, b2, eps = (jnp.asarray(x).astype(T) for x in
                                  (alpha32, self.b1, self.b2, self.eps))
            m = m + (g - m) * (1 - b1)
            v = v + (g * g - v) * (1 - b2)
            return p - (m * alpha) / (jnp.sqrt(v) + eps), m, v

        out = jax.tree.map(leaf, grads, params, state.m, state.v)
        tree = jax.tree.structure(params)
        p, m, v = (jax.tree.unflatten(tree, [o[k] for o in jax.tree.leaves(
            out, is_leaf=lambda x: isinstance(x, tuple))]) for k in range(3))
        return p, NoGuardAdamState(state.count + 1, state.beta1_power * self.b1,
                                   state.beta2_power * self.b2, m, v)
