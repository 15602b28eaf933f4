"""Momentum (TF1 ``MomentumOptimizer``, kernels ``ApplyMomentum`` / ``SparseApplyMomentum``)."""

from __future__ import annotations

from typing import NamedTuple

import jax

from compatopt import _numerics as N
from compatopt import _sparse as S
from compatopt._base import ArrayTree, LeafUpdate, Rule, ScalarOrSchedule
from compatopt._rule import Hyper, RuleDef, build, zeros_slot


class MomentumState(NamedTuple):
    """``count``: applies done; ``momentum``: the accumulator slot (TF1 ``w/Momentum``)."""

    count: jax.Array
    momentum: ArrayTree


def _make_dense(use_nesterov: bool):
    def dense(g, var, slots, hp: Hyper) -> LeafUpdate:
        lr = hp.cast("learning_rate", var.dtype)
        mu = hp.cast("momentum", var.dtype)
        accum = N.mul(slots["momentum"], mu) + g
        if use_nesterov:
            # opaque: XLA would fold (accum * mu) * lr into accum * (mu * lr) for constants.
            delta = N.mul(g, lr) + N.mul(N.opaque(accum * mu), lr)
        else:
            delta = N.mul(accum, lr)
        return LeafUpdate(slots={"momentum": accum}, delta=delta)

    return dense


def _make_sparse(use_nesterov: bool):
    def sparse(g, rows, var, slots, hp: Hyper) -> LeafUpdate:
        lr = hp.cast("learning_rate", g.dtype)
        mu = hp.cast("momentum", g.dtype)
        accum = N.mul(S.gather(slots["momentum"], rows), mu) + g
        if use_nesterov:
            delta = N.mul(lr, g) + N.mul(lr * mu, accum)
        else:
            delta = N.mul(lr, accum)
        new_slot = S.scatter(slots["momentum"], rows, accum)
        return LeafUpdate(slots={"momentum": new_slot}, delta=delta, rows=rows)

    return sparse


def momentum(learning_rate: ScalarOrSchedule, momentum: ScalarOrSchedule,
             use_nesterov: bool = False) -> Rule:
    r"""Momentum SGD, as TF1's ``MomentumOptimizer``.

    Math (TF1 ``ApplyMomentum``; ``accum`` starts at zero)::

        accum = (accum * mu) + g
        var = var - (accum * lr)                             # plain
        var = var - ((g * lr) + ((accum * mu) * lr))          # use_nesterov, new accum

    Sparse (TF1 ``SparseApplyMomentum``, repeated indices summed first; only the listed rows
    change, the other rows' accumulators are *not* decayed)::

        a = (a * mu) + g
        v = v - (lr * a)                                     # plain
        v = v - ((lr * g) + ((lr * mu) * a))                  # Nesterov: lr*mu formed first

    Args:
      learning_rate: float, array, or callable ``count -> lr``.
      momentum: float, array, or callable ``count -> mu`` (required, as in TF1).
      use_nesterov: TF1's Nesterov variant (Sutskever et al., 2013 formulation).

    Returns:
      A :class:`~compatopt.Rule`; its state is :class:`MomentumState`.

    Example:
      >>> import jax.numpy as jnp, compatopt as co
      >>> rule = co.momentum(0.1, 0.9)
      >>> p = jnp.ones(2); s = rule.init(p)
      >>> p, s = rule.apply(jnp.ones(2), s, p)
      >>> p
      Array([0.9, 0.9], dtype=float32)

    Differences: ``optax.sgd(lr, momentum)`` keeps ``mu * trace + g`` and subtracts
    ``lr * trace`` too, but its Nesterov form is ``g + mu * trace`` scaled by lr (different
    rounding); PyTorch's ``dampening`` has no TF1 counterpart.
    """
    rd = RuleDef(
        name="Momentum",
        state_type=MomentumState,
        slots=(("momentum", zeros_slot),),
        hyperparams={"learning_rate": learning_rate, "momentum": momentum},
        dense=_make_dense(bool(use_nesterov)),
        sparse=_make_sparse(bool(use_nesterov)),
        static={"use_nesterov": bool(use_nesterov)},
    )
    return build(rd)
