"""Adadelta (TF1 ``AdadeltaOptimizer``, kernels ``ApplyAdadelta`` / ``SparseApplyAdadelta``)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from compatopt import _numerics as N
from compatopt import _sparse as S
from compatopt._base import ArrayTree, LeafUpdate, Rule, ScalarOrSchedule
from compatopt._rule import Hyper, RuleDef, build, zeros_slot


class AdadeltaState(NamedTuple):
    """``count``; ``accum`` (``w/Adadelta``) and ``accum_update`` (``w/Adadelta_1``)."""

    count: jax.Array
    accum: ArrayTree
    accum_update: ArrayTree


def _steps(g, accum, hp: Hyper):
    """TF1's ``ApplyAdadelta`` in pieces: ``lr``, the new ``accum``, ``upd(accum_update,
    accum)`` and ``next_update(accum_update, upd)``."""
    T = g.dtype
    lr = hp.cast("learning_rate", T)
    rho = hp.cast("rho", T)
    eps = hp.cast("epsilon", T)
    one_minus_rho = 1 - rho
    accum = N.mul(accum, rho) + N.mul(g * g, one_minus_rho)

    def upd(accum_update, accum):
        return N.opaque(N.sqrt(accum_update + eps) * N.rsqrt(accum + eps)) * g

    def next_update(accum_update, u):
        return N.mul(accum_update, rho) + N.mul(u * u, one_minus_rho)

    return lr, accum, upd, next_update


def _rows(g, accum, accum_update, hp: Hyper):
    lr, accum, upd, next_update = _steps(g, accum, hp)
    u = upd(accum_update, accum)
    return N.mul(u, lr), accum, next_update(accum_update, u)


def _dense_kernel(g, var, accum, accum_update, hp: Hyper):
    """``_rows`` arranged for XLA:CPU, which has no multi-output fusion (same bits).

    ``upd`` is computed twice, once in the loop that writes ``var`` and once in the loop
    that writes ``accum_update``, instead of going through two memory temporaries (its
    square roots), and the second loop reads the old ``accum_update`` through ``after`` the
    new ``var``, so that it is scheduled second and the donated buffer needs no copy.
    """
    lr, accum, upd, next_update = _steps(g, accum, hp)
    delta = N.mul(upd(accum_update, accum), lr)
    value = var - delta
    old_update = N.after(accum_update, value)
    accum_update = next_update(old_update, upd(old_update, N.opaque(accum)))
    return delta, value, accum, accum_update


def _dense(g, var, slots, hp: Hyper) -> LeafUpdate:
    if var.dtype == jnp.float16:  # float16's per-op evaluation keeps the plain order better
        delta, accum, accum_update = _rows(g, slots["accum"], slots["accum_update"], hp)
        return LeafUpdate(slots={"accum": accum, "accum_update": accum_update}, delta=delta)
    delta, value, accum, accum_update = _dense_kernel(
        g, var, slots["accum"], slots["accum_update"], hp)
    return LeafUpdate(slots={"accum": accum, "accum_update": accum_update}, value=value,
                      update=-delta)


def _sparse(g, rows, var, slots, hp: Hyper) -> LeafUpdate:
    delta, accum, accum_update = _rows(
        g, S.gather(slots["accum"], rows), S.gather(slots["accum_update"], rows), hp)
    new_slots = {"accum": S.scatter(slots["accum"], rows, accum),
                 "accum_update": S.scatter(slots["accum_update"], rows, accum_update)}
    return LeafUpdate(slots=new_slots, delta=delta, rows=rows)


def adadelta(learning_rate: ScalarOrSchedule = 0.001, rho: ScalarOrSchedule = 0.95,
             epsilon: ScalarOrSchedule = 1e-8) -> Rule:
    r"""Adadelta, as TF1's ``AdadeltaOptimizer`` (Zeiler, 2012).

    Math (TF1 ``ApplyAdadelta``, the same per row for sparse gradients after summing
    repeated indices; both slots start at zero)::

        accum = (accum * rho) + ((g * g) * (1 - rho))
        upd = (sqrt(accum_update + eps) * rsqrt(accum + eps)) * g      # new accum
        var = var - (upd * lr)
        accum_update = (accum_update * rho) + ((upd * upd) * (1 - rho))

    ``rsqrt`` is computed as a correctly rounded ``1/sqrt`` (TF1's packet path is an
    estimate within 3 ulp of it; see :func:`compatopt.adagrad`).

    Args:
      learning_rate: float, array, or callable ``count -> lr`` (TF1 default 0.001).
      rho: decay rate, float, array or callable (default 0.95).
      epsilon: float, array or callable (default 1e-8; rounds to 0 in float16, where a
        fresh variable then never moves, as in TF1).

    Returns:
      A :class:`~compatopt.Rule`; its state is :class:`AdadeltaState`.

    Example:
      >>> import jax.numpy as jnp, compatopt as co
      >>> rule = co.adadelta(1.0)
      >>> p = jnp.zeros(2); s = rule.init(p)
      >>> p, s = rule.apply(jnp.ones(2), s, p)

    Differences: ``optax.adadelta`` defaults to ``learning_rate=None`` (1.0) and uses the
    textbook ``rho * a + (1 - rho) * g**2`` form (different rounding).
    """
    rd = RuleDef(
        name="Adadelta",
        state_type=AdadeltaState,
        slots=(("accum", zeros_slot), ("accum_update", zeros_slot)),
        hyperparams={"learning_rate": learning_rate, "rho": rho, "epsilon": epsilon},
        dense=_dense,
        sparse=_sparse,
    )
    return build(rd)
