"""Adam (TF1 ``AdamOptimizer``, kernel ``ApplyAdam`` and the sparse Python composite)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from compatopt import _numerics as N
from compatopt import _sparse as S
from compatopt.tf1_mode import graph_mode
from compatopt._base import ArrayTree, LeafUpdate, Rule, ScalarOrSchedule
from compatopt._rule import Hyper, RuleDef, build, zeros_slot


class AdamState(NamedTuple):
    """Adam's state with TF1's names.

    ``count``: applies done; ``beta1_power``/``beta2_power``: TF1's non-slot variables
    (float32 for Python-float betas, whatever the parameters' dtype); ``m`` (``w/Adam``) and
    ``v`` (``w/Adam_1``): first and second moment slots.
    """

    count: jax.Array
    beta1_power: jax.Array
    beta2_power: jax.Array
    m: ArrayTree
    v: ArrayTree


def _alpha(hp: Hyper, T):
    lr = hp.cast("learning_rate", T)
    b1p = N.cast(hp["beta1_power"], T)
    b2p = N.cast(hp["beta2_power"], T)
    return N.div(lr * jnp.sqrt(1 - b2p), 1 - b1p)


def _dense(g, var, slots, hp: Hyper) -> LeafUpdate:
    T = var.dtype
    beta1 = hp.cast("beta1", T)
    beta2 = hp.cast("beta2", T)
    eps = hp.cast("epsilon", T)
    alpha = _alpha(hp, T)
    m = slots["m"] + N.mul(g - slots["m"], 1 - beta1)
    v = slots["v"] + N.mul(N.mul(g, g) - slots["v"], 1 - beta2)
    delta = N.div(m * alpha, jnp.sqrt(v) + eps)
    return LeafUpdate(slots={"m": m, "v": v}, delta=delta)


def _sparse(g, rows, var, slots, hp: Hyper) -> LeafUpdate:
    # TF1 _apply_sparse_shared: decays every row, scatter-adds the listed rows.
    T = g.dtype
    beta1 = hp.cast("beta1", T)
    beta2 = hp.cast("beta2", T)
    eps = hp.cast("epsilon", T)
    lr2 = _alpha(hp, T)
    m = S.scatter_add(N.mul(slots["m"], beta1), rows, N.mul(g, 1 - beta1))
    if graph_mode() and "beta2" in hp.constant and T not in N.LOW_PRECISION:
        # Grappler pushes the folded constant ``1 - beta2`` down: ``g * (g * (1 - beta2))``
        # (recorded for float32 and float64; float16/bfloat16 keep the eager order)
        scaled_gg = N.mul(g, N.mul(g, 1 - beta2))
    else:
        scaled_gg = N.mul(g * g, 1 - beta2)  # eager, or beta2 a tensor (not folded)
    v = S.scatter_add(N.mul(slots["v"], beta2), rows, scaled_gg)
    delta = N.div(lr2 * m, jnp.sqrt(v) + eps)
    return LeafUpdate(slots={"m": m, "v": v}, delta=delta)


def _non_slots(hp: Hyper) -> dict:
    return {"beta1_power": hp["beta1"], "beta2_power": hp["beta2"]}


def _finish(non_slot: dict, hp: Hyper) -> dict:
    b1 = non_slot["beta1_power"]
    b2 = non_slot["beta2_power"]
    return {"beta1_power": b1 * N.cast(hp["beta1"], b1.dtype),
            "beta2_power": b2 * N.cast(hp["beta2"], b2.dtype)}


def adam(learning_rate: ScalarOrSchedule = 0.001, beta1: ScalarOrSchedule = 0.9,
         beta2: ScalarOrSchedule = 0.999, epsilon: ScalarOrSchedule = 1e-8) -> Rule:
    r"""Adam, as TF1's ``AdamOptimizer`` (Kingma & Ba, 2015; TF1's epsilon-hat form).

    Math (TF1 ``ApplyAdam``; ``b1p``/``b2p`` are ``beta1_power``/``beta2_power`` cast to the
    variable's dtype, starting at ``beta1``/``beta2``; ``m``, ``v`` start at zero)::

        alpha = (lr * sqrt(1 - b2p)) / (1 - b1p)
        m = m + ((g - m) * (1 - beta1))
        v = v + (((g * g) - v) * (1 - beta2))
        var = var - ((m * alpha) / (sqrt(v) + eps))

    then, once per apply (TF1 ``_finish``), ``beta1_power *= beta1``,
    ``beta2_power *= beta2`` in float32.

    Sparse (TF1's Python composite, repeated indices summed first) changes *every* row::

        m = m * beta1;  m[idx] += g * (1 - beta1)
        v = v * beta2;  v[idx] += (g * g) * (1 - beta2)
        var = var - ((lr2 * m) / (sqrt(v) + eps))          # lr2 = alpha

    in TF1 eager mode. In graph mode (compatopt's default, :func:`compatopt.set_tf1_mode`)
    Grappler folds a constant ``beta2`` and computes ``v[idx] += g * (g * (1 - beta2))``;
    a ``beta2`` schedule or traced array is not a constant there, so keeps the eager order.

    Args:
      learning_rate: float, array or callable ``count -> lr`` (default 0.001).
      beta1, beta2: decay rates, floats, arrays or callables (defaults 0.9, 0.999); their
        values at count 0 initialise the beta powers.
      epsilon: float, array or callable (default 1e-8; 0 in float16, so entries with
        ``m = v = 0`` become NaN, as in TF1).

    Returns:
      A :class:`~compatopt.Rule`; its state is :class:`AdamState`.

    Example:
      >>> import jax.numpy as jnp, compatopt as co
      >>> rule = co.adam(0.1)
      >>> p = jnp.zeros(2); s = rule.init(p)
      >>> p, s = rule.apply(jnp.ones(2), s, p)
      >>> s.beta1_power
      Array(0.80999994, dtype=float32)

    Differences: ``optax.adam`` keeps ``beta * m + (1 - beta) * g`` and bias-corrects ``m``
    and ``v`` separately with ``eps`` outside the corrected root (different results, not
    only rounding); PyTorch as optax. TF1's step count lives in the beta powers, one per
    optimizer, so a variable without a gradient still sees the step advance.
    """
    rd = RuleDef(
        name="Adam",
        state_type=AdamState,
        slots=(("m", zeros_slot), ("v", zeros_slot)),
        hyperparams={"learning_rate": learning_rate, "beta1": beta1, "beta2": beta2,
                     "epsilon": epsilon},
        dense=_dense,
        sparse=_sparse,
        non_slots=_non_slots,
        finish=_finish,
    )
    return build(rd)
