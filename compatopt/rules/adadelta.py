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


def _apply_adadelta(g, var, accum, accum_update, hp: Hyper, in_place: bool):
    """TF1's ``ApplyAdadelta`` functor, one assignment after another (``SparseApplyAdadelta``:
    the same per row). Returns ``delta`` (``var -= delta``), ``var - delta`` (``None``
    without ``var``) and the new ``accum`` and ``accum_update``.

    TF1's ``update`` is an Eigen expression that each of the two assignments reading it
    evaluates again. With ``in_place`` (the dense kernel on donated buffers) so does this:
    the ``accum_update`` loop evaluates its own ``update`` (``N.recompute``) and reads the
    old ``accum_update`` after the ``var`` loop (``N.overwrite_after``), so that it can
    overwrite it: the same bits, no temporary, no slot copy.
    """
    T = g.dtype
    lr = hp.cast("learning_rate", T)
    rho = hp.cast("rho", T)
    eps = hp.cast("epsilon", T)
    one_minus_rho = 1 - rho

    def update(accum_update, accum):
        return N.opaque(N.sqrt(accum_update + eps) * N.rsqrt(accum + eps)) * g

    # accum = accum * rho + grad.square() * (1 - rho)
    accum = N.mul(accum, rho) + N.mul(g * g, one_minus_rho)
    # update = (accum_update + epsilon).sqrt() * (accum + epsilon).rsqrt() * grad
    u = update(accum_update, accum)
    # var -= update * lr
    delta = N.mul(u, lr)
    value = None if var is None else var - delta
    # accum_update = accum_update * rho + update.square() * (1 - rho)
    if in_place:
        assert value is not None  # in_place is only asked for with the variable
        accum_update = N.overwrite_after(accum_update, value)
        u = update(accum_update, N.recompute(accum))
    accum_update = N.mul(accum_update, rho) + N.mul(u * u, one_minus_rho)
    return delta, value, accum, accum_update


def _dense(g, var, slots, hp: Hyper) -> LeafUpdate:
    # float16's per-op evaluation keeps the plain order better: one ``update``, shared.
    in_place = var.dtype != jnp.float16
    delta, value, accum, accum_update = _apply_adadelta(
        g, var if in_place else None, slots["accum"], slots["accum_update"], hp, in_place)
    new_slots = {"accum": accum, "accum_update": accum_update}
    if not in_place:
        return LeafUpdate(slots=new_slots, delta=delta)
    return LeafUpdate(slots=new_slots, value=value, update=-delta)


def _sparse(g, rows, var, slots, hp: Hyper) -> LeafUpdate:
    delta, _, accum, accum_update = _apply_adadelta(
        g, None, S.gather(slots["accum"], rows), S.gather(slots["accum_update"], rows), hp,
        in_place=False)
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
