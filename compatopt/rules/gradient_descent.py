"""GradientDescent (TF1 ``GradientDescentOptimizer``, kernel ``ApplyGradientDescent``)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from compatopt import _numerics as N
from compatopt import _sparse as S
from compatopt._base import LeafUpdate, Rule, ScalarOrSchedule
from compatopt._rule import Hyper, RuleDef, build


class GradientDescentState(NamedTuple):
    """``count``: applies done. GradientDescent has no slots."""

    count: jax.Array


def _dense(g, var, slots, hp: Hyper) -> LeafUpdate:
    return LeafUpdate(slots={}, delta=N.mul(g, hp.cast("learning_rate", var.dtype)))


def _sparse(values, indices, var, slots, hp: Hyper) -> LeafUpdate:
    # No de-duplication: each occurrence is scatter-added in input order (spec §3.1).
    step = N.mul(-values, hp.cast("learning_rate", values.dtype))
    value = S.scatter_add(jnp.asarray(var), indices, step)
    update = S.scatter_add(jnp.zeros_like(var), indices, step)
    return LeafUpdate(slots={}, value=value, update=update)


def gradient_descent(learning_rate: ScalarOrSchedule) -> Rule:
    r"""Plain gradient descent, as TF1's ``GradientDescentOptimizer``.

    Math (TF1 ``ApplyGradientDescent``, one rounding per operation in the variable's dtype)::

        var = var - (g * lr)

    Sparse (``IndexedSlices``): no de-duplication; each ``(index, row)`` pair in input order
    does ``var[i] = var[i] + ((-row) * lr)`` (TF1 ``ResourceScatterAdd``), so repeated
    indices are applied one after another, not summed first.

    Args:
      learning_rate: float, array, or a callable ``count -> lr`` (TF1 accepts a callable).

    Returns:
      A :class:`~compatopt.Rule`; its state is :class:`GradientDescentState`.

    Example:
      >>> import jax.numpy as jnp, compatopt as co
      >>> rule = co.gradient_descent(0.1)
      >>> params = {"w": jnp.ones(3)}
      >>> state = rule.init(params)
      >>> params, state = rule.apply({"w": jnp.ones(3)}, state, params)
      >>> params["w"]
      Array([0.9, 0.9, 0.9], dtype=float32)

    Differences: same as ``optax.sgd`` (without momentum) up to the float32 conversion of
    ``learning_rate``; with duplicate sparse indices optax/PyTorch sum rows first.
    The optax-style ``update`` is ``-(g * lr)``, so ``apply_updates`` lands on ``apply``'s
    bits, except for sparse gradients with repeated indices (use ``apply`` there).
    """
    rd = RuleDef(
        name="GradientDescent",
        state_type=GradientDescentState,
        slots=(),
        hyperparams={"learning_rate": learning_rate},
        dense=_dense,
        sparse=_sparse,
        deduplicate=False,
    )
    return build(rd)
