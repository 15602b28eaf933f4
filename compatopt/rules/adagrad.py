"""Adagrad (TF1 ``AdagradOptimizer``, kernels ``ApplyAdagrad`` / ``SparseApplyAdagrad``)."""

from __future__ import annotations

from typing import NamedTuple

import jax

from compatopt import _numerics as N
from compatopt import _sparse as S
from compatopt._base import ArrayTree, LeafUpdate, Rule, ScalarOrSchedule
from compatopt._rule import Hyper, RuleDef, build, constant_slot, require


class AdagradState(NamedTuple):
    """``count``: applies done; ``accumulator``: sum of squared gradients (``w/Adagrad``)."""

    count: jax.Array
    accumulator: ArrayTree


def _dense(g, var, slots, hp: Hyper) -> LeafUpdate:
    lr = hp.cast("learning_rate", var.dtype)
    accum = slots["accumulator"] + N.mul(g, g)
    delta = N.mul(N.opaque(g * lr), N.rsqrt(accum))
    return LeafUpdate(slots={"accumulator": accum}, delta=delta)


def _sparse(g, rows, var, slots, hp: Hyper) -> LeafUpdate:
    lr = hp.cast("learning_rate", g.dtype)
    accum = S.gather(slots["accumulator"], rows) + N.mul(g, g)
    if var.ndim == 1:  # TF1's scalar path: an exact division by sqrt
        delta = N.div(lr * g, N.sqrt(accum))
    else:
        delta = N.mul(N.opaque(lr * g), N.rsqrt(accum))
    new_slot = S.scatter(slots["accumulator"], rows, accum)
    return LeafUpdate(slots={"accumulator": new_slot}, delta=delta, rows=rows)


def adagrad(learning_rate: ScalarOrSchedule, initial_accumulator_value: float = 0.1) -> Rule:
    r"""Adagrad, as TF1's ``AdagradOptimizer`` (Duchi et al., 2011).

    Math (TF1 ``ApplyAdagrad``; ``accum`` starts at ``initial_accumulator_value``)::

        accum = accum + (g * g)
        var = var - ((g * lr) * rsqrt(accum))

    Sparse (``SparseApplyAdagrad``, repeated indices summed first, listed rows only):
    rank >= 2 as above with ``(lr * g)``; rank 1 ``var = var - ((lr * g) / sqrt(accum))``.

    ``rsqrt``: TF1's Eigen packet path uses the CPU's ``rsqrtps`` estimate plus one Newton
    step (within 3 ulp of ``1/sqrt``, CPU-vendor dependent); compatopt computes ``1/sqrt``
    correctly rounded, which TF1 itself does for the last ``n % 8`` elements.

    Args:
      learning_rate: float, array, or callable ``count -> lr``.
      initial_accumulator_value: starting value of the accumulator; must be positive
        (``ValueError``, as TF1).

    Returns:
      A :class:`~compatopt.Rule`; its state is :class:`AdagradState`.

    Example:
      >>> import jax.numpy as jnp, compatopt as co
      >>> rule = co.adagrad(0.1)
      >>> p = jnp.zeros(2); s = rule.init(p)
      >>> s.accumulator
      Array([0.1, 0.1], dtype=float32)

    Differences: ``optax.adagrad`` adds ``eps`` inside the root and starts the accumulator
    at 0.1 too; PyTorch starts at 0 and adds ``eps`` outside. TF1 has no epsilon.
    """
    require(lambda x: x > 0, "initial_accumulator_value", initial_accumulator_value,
            "initial_accumulator_value must be positive: %s", nan_passes=True)
    rd = RuleDef(
        name="Adagrad",
        state_type=AdagradState,
        slots=(("accumulator", constant_slot(initial_accumulator_value)),),
        hyperparams={"learning_rate": learning_rate},
        dense=_dense,
        sparse=_sparse,
        static={"initial_accumulator_value": initial_accumulator_value},
    )
    return build(rd)
