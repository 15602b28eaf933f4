"""AdagradDA (TF1 ``AdagradDAOptimizer``, kernels ``ApplyAdagradDA`` / ``SparseApplyAdagradDA``)."""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from compatopt import _numerics as N
from compatopt import _sparse as S
from compatopt._base import ArrayTree, LeafUpdate, Rule
from compatopt._rule import ALL_FLOATS, Hyper, RuleDef, build, constant_slot, require, zeros_slot

# TF1 registers AdagradDA for float32 and float64 only; float16 and bfloat16 are an
# extension, computed as the other rules' half kernels are (float32, rounded every op).
_DTYPES = ALL_FLOATS


class AdagradDAState(NamedTuple):
    """``count``; ``gradient_accumulator`` (``w/AdagradDA``), ``gradient_squared_accumulator``
    (``w/AdagradDA_1``)."""

    count: jax.Array
    gradient_accumulator: ArrayTree
    gradient_squared_accumulator: ArrayTree


def _prepare(hp: Hyper, count: jax.Array, global_step) -> dict:
    step = count if global_step is None else jnp.asarray(global_step(count))
    if not jnp.issubdtype(step.dtype, jnp.integer):
        raise TypeError(f"AdagradDA: global_step must be an integer, got {step.dtype.name}")
    return {"t": step + 1}


def _dense(g, var, slots, hp: Hyper) -> LeafUpdate:
    """TF1's ``ApplyAdagradDA`` functor, one assignment after another."""
    T = var.dtype
    lr = hp.cast("learning_rate", T)
    l1 = hp.cast("l1_regularization_strength", T)
    l2 = hp.cast("l2_regularization_strength", T)
    t = hp["t"].astype(jnp.float32).astype(T)  # TF1: float32 step even for float64
    # gradient_accum += grad;  gradient_squared_accum += grad.square()
    ga = slots["gradient_accumulator"] + g
    gg = slots["gradient_squared_accumulator"] + N.mul(g, g)
    # l1 > 0: var = -lr * ga.sign() * (ga.abs() - t * l1).cwiseMax(0) / den
    # else:   var = lr * ga * -1 / den;    den = l2 * (t * lr) + gg.sqrt()
    den = N.mul(l2, N.opaque(t * lr)) + N.sqrt(gg)
    with_l1 = N.opaque((-lr) * N.sign(ga)) * jnp.maximum(jnp.abs(ga) - N.mul(t, l1), 0)
    without_l1 = (lr * ga) * jnp.asarray(-1, T)
    value = N.div(jnp.where(l1 > 0, with_l1, without_l1), den)
    # TF1's new var does not read the old one: keep ``var`` an input of the step.
    value = N.keep_input(value, var)
    return LeafUpdate(slots={"gradient_accumulator": ga, "gradient_squared_accumulator": gg},
                      value=value)


def _sparse(g, rows, var, slots, hp: Hyper) -> LeafUpdate:
    """TF1's ``SparseApplyAdagradDA``, on the de-duplicated rows."""
    T = g.dtype
    ga = S.gather(slots["gradient_accumulator"], rows)
    gg = S.gather(slots["gradient_squared_accumulator"], rows)
    if var.ndim > 1:  # Eigen expressions per row, in T
        lr = hp.cast("learning_rate", T)
        l1 = hp.cast("l1_regularization_strength", T)
        l2 = hp.cast("l2_regularization_strength", T)
        ts = hp["t"].astype(T)
        gslr = N.opaque(ts * lr)  # global_step_lr = global_step * lr
        # ga += grad;  gg += grad.square()
        ga = ga + g
        gg = gg + N.mul(g, g)
        # l1 > 0: var = -1 * ga.sign() * (ga.abs() / t - l1).cwiseMax(0) / den
        # else:   var = -1 * (ga / t) / den;    den = l2 + gg.sqrt() / global_step_lr
        den = l2 + N.div(N.sqrt(gg), gslr)
        with_l1 = (jnp.asarray(-1, T) * N.sign(ga)) * jnp.maximum(N.div(jnp.abs(ga), ts) - l1, 0)
        without_l1 = jnp.asarray(-1, T) * N.div(ga, ts)
        value = N.div(jnp.where(l1 > 0, with_l1, without_l1), den)
    else:  # TF1's scalar path, computed in double (float64 needs jax_enable_x64)
        W = N.wide_dtype()
        t = hp["t"].astype(W)
        lr = hp.cast("learning_rate", T).astype(W)
        l1 = hp.cast("l1_regularization_strength", T).astype(W)
        l2 = hp.cast("l2_regularization_strength", T).astype(W)
        gd = g.astype(W)
        # ga += g;  gg += g * g  (in double, stored in T)
        ga = (ga.astype(W) + gd).astype(T)
        gg = (gg.astype(W) + N.mul(gd, gd)).astype(T)
        # gs_l1 = t * l1;  gs_l2_lr = t * l2 * lr;  den = gs_l2_lr + sqrt(gg)  (sqrt in T)
        gs_l1 = N.mul(t, l1)
        gs_l2_lr = N.mul(N.opaque(t * l2), lr)
        s = jnp.sqrt(gg).astype(W)
        den = gs_l2_lr + s
        # l1 > 0: var = sign(-ga) * lr * max(abs(ga) - gs_l1, 0) / den;  else -ga * lr / den
        with_l1 = N.opaque(N.sign(-ga.astype(W)) * lr) * jnp.maximum(
            jnp.abs(ga).astype(W) - gs_l1, 0)
        without_l1 = (-ga).astype(W) * lr
        value = N.div(jnp.where(l1 > 0, with_l1, without_l1), den).astype(T)
    new_slots = {"gradient_accumulator": S.scatter(slots["gradient_accumulator"], rows, ga),
                 "gradient_squared_accumulator":
                     S.scatter(slots["gradient_squared_accumulator"], rows, gg)}
    return LeafUpdate(slots=new_slots, value=value, rows=rows)


def adagrad_da(learning_rate: float,
               global_step: Optional[Callable[[jax.Array], jax.Array]] = None,
               initial_gradient_squared_accumulator_value: float = 0.1,
               l1_regularization_strength: float = 0.0,
               l2_regularization_strength: float = 0.0) -> Rule:
    r"""Adagrad dual averaging, as TF1's ``AdagradDAOptimizer`` (Duchi et al., 2011).

    The new value is computed from the accumulators alone (``apply`` is the exact path).
    With ``t = global_step + 1`` (``tf`` = ``float32(t)`` cast to the dtype ``T``), TF1
    ``ApplyAdagradDA``::

        ga = ga + g
        gg = gg + (g * g)
        den = (l2 * (tf * lr)) + sqrt(gg)
        var = (((-lr) * sign(ga)) * max(abs(ga) - (tf * l1), 0)) / den    # l1 > 0
        var = ((lr * ga) * (-1)) / den                                    # l1 == 0

    Sparse rank >= 2 (``ts = T(t)``, ``gslr = ts * lr``): ``den = l2 + (sqrt(gg) / gslr)``,
    ``var = (((-1) * sign(ga)) * max((abs(ga) / ts) - l1, 0)) / den`` (or
    ``((-1) * (ga / ts)) / den``); sparse rank 1 is computed in double (needs
    ``jax_enable_x64``; otherwise float32, within a few ulp).

    Args:
      learning_rate: float, array or schedule ``count -> lr`` (a decayed tensor in TF1).
      global_step: ``None`` (default): the rule's own apply count stands in for TF1's
        global step, so the first apply sees ``t = 1``; or a callable ``count -> step``
        returning an integer (the shim passes its global-step variable).
      initial_gradient_squared_accumulator_value: must be positive (``ValueError``).
      l1_regularization_strength, l2_regularization_strength: floats.

    Returns:
      A :class:`~compatopt.Rule`; its state is :class:`AdagradDAState`. Every float
      dtype: float16/bfloat16 are an extension beyond TF1 (which has no such kernel),
      computed on float32 and rounded after every op.

    Example:
      >>> import jax.numpy as jnp, compatopt as co
      >>> rule = co.adagrad_da(0.1)
      >>> p = jnp.zeros(2); s = rule.init(p)
      >>> p, s = rule.apply(jnp.ones(2), s, p)

    Differences: optax has no dual-averaging Adagrad.
    """
    require(lambda x: x > 0, "initial_gradient_squared_accumulator_value",
            initial_gradient_squared_accumulator_value,
            "initial_gradient_squared_accumulator_value must be positive: %s", nan_passes=True)
    rd = RuleDef(
        name="AdagradDA",
        state_type=AdagradDAState,
        slots=(("gradient_accumulator", zeros_slot),
               ("gradient_squared_accumulator",
                constant_slot(initial_gradient_squared_accumulator_value))),
        hyperparams={"learning_rate": learning_rate,
                     "l1_regularization_strength": l1_regularization_strength,
                     "l2_regularization_strength": l2_regularization_strength},
        dense=_dense,
        sparse=_sparse,
        prepare=lambda hp, count: _prepare(hp, count, global_step),
        dense_dtypes=_DTYPES,
        sparse_dtypes=_DTYPES,
        static={"initial_gradient_squared_accumulator_value":
                initial_gradient_squared_accumulator_value},
    )
    return build(rd)
