"""FTRL-Proximal (TF1 ``FtrlOptimizer``, kernels ``ApplyFtrl[V2]`` / ``SparseApplyFtrl[V2]``)."""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from compatopt import _numerics as N
from compatopt import _sparse as S
from compatopt._base import ArrayTree, LeafUpdate, Rule
from compatopt._rule import (Hyper, RuleDef, _concrete_float, build, constant_slot,
                             require, zeros_slot)
from compatopt.errors import InvalidArgumentError


class FtrlState(NamedTuple):
    """``count``; ``accum`` (``w/Ftrl`` or ``w/<accum_name>``), ``linear`` (``w/Ftrl_1``)."""

    count: jax.Array
    accum: ArrayTree
    linear: ArrayTree


def _power(x, lr_power, exact_sqrt: Optional[bool]):
    """``P(x)``: ``x.sqrt()`` when ``lr_power == -0.5``, else ``x.pow(-lr_power)``."""
    if exact_sqrt is True:
        return N.sqrt(x)
    p = jnp.power(x, -lr_power)
    if exact_sqrt is False:
        return N.opaque(p)
    return N.opaque(jnp.where(lr_power == -0.5, jnp.sqrt(x), p))


def _prepare(hp: Hyper, count) -> dict:
    """TF1's ``_prepare``: ``l2 + beta / (2 * maximum(lr, 1e-36))``, in lr's dtype."""
    lr = hp["learning_rate"]
    beta = hp["beta"].astype(lr.dtype)
    l2 = hp["l2_regularization_strength"].astype(lr.dtype)
    two = jnp.asarray(2.0, lr.dtype)
    return {"l2_adjusted": l2 + N.div(beta, two * jnp.maximum(lr, jnp.asarray(1e-36, lr.dtype)))}


def _make_kernels(shrinkage: bool, exact_sqrt: Optional[bool], constructor_args: dict):
    def scalars(hp: Hyper, T):
        """The kernel's scalar inputs, cast to ``T``: ``lr``, ``l1``, ``l2`` (adjusted), ``P``."""
        lr_power = hp.cast("learning_rate_power", T)
        return (hp.cast("learning_rate", T), hp.cast("l1_regularization_strength", T),
                hp.cast("l2_adjusted", T), lr_power,
                lambda x: _power(x, lr_power, exact_sqrt))

    def with_shrinkage(g, var, hp: Hyper):
        """``grad_with_shrinkage = grad + 2 * l2_shrinkage * var`` (V2 only; the old var)."""
        if not shrinkage:
            return g
        return g + N.mul(2 * hp.cast("l2_shrinkage_regularization_strength", g.dtype), var)

    def dense(g, var, slots, hp: Hyper) -> LeafUpdate:
        """TF1's ``ApplyFtrl`` (``ApplyFtrlV2`` with shrinkage), one loop per assignment.

        TF1's ``new_accum = accum + grad.square()`` is an Eigen expression that each
        assignment evaluates again; here too (``N.recompute``). The new ``accum`` is written
        in place once the ``linear`` loop has read the old one (``N.overwrite_after``), and
        the ``var`` loop reads it instead of the old one (TF1 writes ``accum`` last): the
        same bits, no slot copy, no temporary.
        """
        T = g.dtype
        accum, linear = slots["accum"], slots["linear"]
        lr, l1, l2, _, P = scalars(hp, T)
        gs = with_shrinkage(g, var, hp)
        # new_accum = accum + grad.square()  (an expression: each loop evaluates its own)
        new_accum = N.recompute(accum) + N.mul(g, g)
        # linear += grad_with_shrinkage - (P(new_accum) - P(accum)) / lr * var
        linear = linear + (gs - N.mul(N.div(P(new_accum) - P(accum), lr), var))
        # x = l1 * linear.sign() - linear
        x = N.mul(l1, N.sign(linear)) - linear
        # accum += grad.square()  (TF1's last assignment; made here, so that var reads it)
        accum = N.overwrite_after(accum, linear) + N.mul(g, g)
        # y = P(new_accum) / lr + 2 * l2
        y = N.div(P(N.recompute(accum)), lr) + N.mul(jnp.asarray(2, T), l2)
        # var = (linear.abs() > l1).select(x / y, 0)
        value = jnp.where(jnp.abs(linear) > l1, N.div(x, y), jnp.zeros((), T))
        return LeafUpdate(slots={"accum": accum, "linear": linear}, value=value)

    def sparse(g, rows, var, slots, hp: Hyper) -> LeafUpdate:
        """TF1's ``SparseApplyFtrl`` (``SparseApplyFtrlV2``), on the de-duplicated rows."""
        for name, cond, text in (("learning_rate", lambda v: v > 0, "lr is not a positive scalar"),
                                 ("l1_regularization_strength", lambda v: v >= 0,
                                  "l1 regularization strength is not a non-negative scalar"),
                                 ("l2_regularization_strength", lambda v: v >= 0,
                                  "l2 regularization strength is not a non-negative scalar")):
            # Python floats are tracers inside jit: check the constructor's value as well.
            for value in (constructor_args[name], hp[name]):
                require(cond, name, value, f"Ftrl: {text}: %s", InvalidArgumentError)
        T = g.dtype
        accum = S.gather(slots["accum"], rows)
        linear = S.gather(slots["linear"], rows)
        v = S.gather(var, rows)
        lr, l1, l2, lr_power, P = scalars(hp, T)
        gs = with_shrinkage(g, v, hp)
        # new_accum = accum + grad * grad
        new_accum = accum + N.mul(g, g)
        if var.ndim > 1:
            # linear += grad_with_shrinkage - (P(new_accum) - P(accum)) / lr * var
            linear = linear + (gs - N.mul(N.div(P(new_accum) - P(accum), lr), v))
        else:  # TF1's scalar path: C pow (also for -0.5) and another association
            # sigma = (pow(new_accum, -lr_power) - pow(accum, -lr_power)) / lr
            # linear = (linear + grad_with_shrinkage) - sigma * var
            sigma = N.div(N.opaque(jnp.power(new_accum, -lr_power))
                          - N.opaque(jnp.power(accum, -lr_power)), lr)
            linear = (linear + gs) - N.mul(sigma, v)
        # y = P(new_accum) / lr + 2 * l2
        y = N.div(P(N.recompute(new_accum)), lr) + N.mul(jnp.asarray(2, T), l2)
        # var = (linear.cwiseMin(l1).cwiseMax(-l1) - linear) / y;  accum = new_accum
        value = N.div(jnp.clip(linear, -l1, l1) - linear, y)
        new_slots = {"accum": S.scatter(slots["accum"], rows, new_accum),
                     "linear": S.scatter(slots["linear"], rows, linear)}
        return LeafUpdate(slots=new_slots, value=value, rows=rows)

    return dense, sparse


def ftrl(learning_rate: float, learning_rate_power: float = -0.5,
         initial_accumulator_value: float = 0.1, l1_regularization_strength: float = 0.0,
         l2_regularization_strength: float = 0.0,
         l2_shrinkage_regularization_strength: float = 0.0,
         beta: Optional[float] = None) -> Rule:
    r"""FTRL-Proximal, as TF1's ``FtrlOptimizer`` (McMahan et al., 2013).

    The new value is set from ``linear`` (``apply`` is the exact path; the optax-style
    ``update`` is ``new - old``). With ``P(x) = sqrt(x)`` when ``learning_rate_power ==
    -0.5``, else ``x ** -learning_rate_power``; ``l2_adj = l2 + beta / (2 * max(lr,
    1e-36))`` in lr's dtype; ``gs = g`` or, with shrinkage (``ApplyFtrlV2``),
    ``g + ((2 * l2_shrinkage) * var)``::

        na = accum + (g * g)
        linear = linear + (gs - (((P(na) - P(accum)) / lr) * var))
        x = (l1 * sign(linear)) - linear
        y = (P(na) / lr) + (2 * l2_adj)
        var = abs(linear) > l1 ? x / y : 0
        accum = na                                  # the raw g, never gs

    Sparse rank >= 2: the same per row, then ``var = (clip(linear, -l1, l1) - linear) / y``;
    rank 1 (TF1's scalar path): ``sigma = (pow(na, -p) - pow(accum, -p)) / lr``,
    ``linear = (linear + gs) - (sigma * var)``.

    ``pow`` is XLA's, not Eigen's ``generic_pow``: for a ``learning_rate_power`` other
    than -0.5 or 0 results are within a few ulp of TF1 (exact for -0.5 and 0).

    Args:
      learning_rate: float, array or schedule ``count -> lr`` (a decayed tensor in TF1;
        checked positive at every apply, as TF1's kernel checks it at run time).
      learning_rate_power: <= 0 (default -0.5).
      initial_accumulator_value: >= 0 (default 0.1).
      l1_regularization_strength, l2_regularization_strength,
      l2_shrinkage_regularization_strength: >= 0.
      beta: ``None`` means 0.0 (TF1's ``beta``, added to the L2 term as ``beta / (2 lr)``).

    Returns:
      A :class:`~compatopt.Rule`; its state is :class:`FtrlState`.

    Example:
      >>> import jax.numpy as jnp, compatopt as co
      >>> rule = co.ftrl(0.1, l1_regularization_strength=0.01)
      >>> p = jnp.zeros(2); s = rule.init(p)
      >>> p, s = rule.apply(jnp.ones(2), s, p)

    Differences: optax has no FTRL; Keras' ``Ftrl`` is the same kernel.
    """
    for name, value in (("initial_accumulator_value", initial_accumulator_value),  # TF1 order
                        ("learning_rate_power", learning_rate_power),
                        ("l1_regularization_strength", l1_regularization_strength),
                        ("l2_regularization_strength", l2_regularization_strength),
                        ("l2_shrinkage_regularization_strength",
                         l2_shrinkage_regularization_strength)):
        # TF1 writes these as rejections (``if learning_rate_power > 0.0: raise``), which
        # NaN passes (TF 2.21 constructs FtrlOptimizer with any of them NaN).
        x = _concrete_float(value)
        if name == "learning_rate_power":
            if x is not None and x > 0:
                raise ValueError(f"learning_rate_power {x:f} needs to be negative or zero")
        elif x is not None and x < 0:
            raise ValueError(f"{name} {x:f} needs to be positive or zero")
    x = _concrete_float(learning_rate_power)
    beta = 0.0 if beta is None else beta
    exact_sqrt = None if x is None else bool(np.float32(x) == np.float32(-0.5))
    shrink = _concrete_float(l2_shrinkage_regularization_strength)
    shrinkage = shrink is None or shrink > 0
    dense, sparse = _make_kernels(shrinkage, exact_sqrt, {
        "learning_rate": learning_rate, "l1_regularization_strength": l1_regularization_strength,
        "l2_regularization_strength": l2_regularization_strength})
    rd = RuleDef(
        name="Ftrl",
        state_type=FtrlState,
        slots=(("accum", constant_slot(initial_accumulator_value)), ("linear", zeros_slot)),
        hyperparams={"learning_rate": learning_rate,
                     "learning_rate_power": learning_rate_power,
                     "l1_regularization_strength": l1_regularization_strength,
                     "l2_regularization_strength": l2_regularization_strength,
                     "l2_shrinkage_regularization_strength": l2_shrinkage_regularization_strength,
                     "beta": beta},
        dense=dense,
        sparse=sparse,
        prepare=_prepare,
        static={"initial_accumulator_value": initial_accumulator_value},
    )
    return build(rd)
