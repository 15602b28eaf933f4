"""The proximal family: TF1 ``ProximalGradientDescentOptimizer`` and
``ProximalAdagradOptimizer`` (kernels ``Apply/SparseApplyProximal{GradientDescent,Adagrad}``).

Both set the variable from a proximal step (``apply`` is the exact path) and share the
shrink-and-scale ending. Their dense kernels take the hyper-parameters *uncast*, so with
Python-float hyper-parameters only float32 variables have a dense kernel (pass float64
arrays for float64 variables, as in TF1).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from compatopt import _numerics as N
from compatopt import _sparse as S
from compatopt._base import ArrayTree, LeafUpdate, Rule
from compatopt._rule import Hyper, RuleDef, build, constant_slot, no_callable, require
from compatopt.errors import InvalidArgumentError

_DENSE = frozenset({jnp.dtype(jnp.float32), jnp.dtype(jnp.float64)})
_SPARSE = frozenset({jnp.dtype(jnp.float32), jnp.dtype(jnp.float64)})
_HYPER = ("learning_rate", "l1_regularization_strength", "l2_regularization_strength")


class ProximalGradientDescentState(NamedTuple):
    """``count``: applies done. No slots."""

    count: jax.Array


class ProximalAdagradState(NamedTuple):
    """``count``; ``accumulator`` (``w/ProximalAdagrad``)."""

    count: jax.Array
    accumulator: ArrayTree


def _shrink(prox, step, l1, l2):
    """``(sign(prox) * max(abs(prox) - (step * l1), 0)) / (1 + (l2 * step))`` (or
    ``prox / (1 + ...)`` when ``l1 == 0``), in the dtype of ``prox``."""
    d = 1 + N.mul(l2, step)
    shrunk = N.sign(prox) * jnp.maximum(jnp.abs(prox) - N.mul(step, l1), 0)
    return N.div(jnp.where(l1 > 0, shrunk, prox), d)


def _shrink_rank1_double(prox, step, l1, l2):
    """TF1's scalar path: the final division in double (float64 needs x64)."""
    T = prox.dtype
    W = N.wide_dtype()
    shrunk = N.sign(prox) * jnp.maximum(jnp.abs(prox) - N.mul(step, l1), 0)
    numerator = jnp.where(l1 > 0, shrunk, prox).astype(W)
    d = 1 + N.mul(l2, step).astype(W)
    return N.div(numerator, d).astype(T)


def _hyper(hp: Hyper, T):
    return tuple(hp.cast(n, T) for n in _HYPER)


def _pgd_dense(g, var, slots, hp: Hyper) -> LeafUpdate:
    lr, l1, l2 = _hyper(hp, var.dtype)  # same dtype already (checked): the cast is a no-op
    prox = var - N.mul(g, lr)
    return LeafUpdate(slots={}, value=_shrink(prox, lr, l1, l2))


def _pgd_sparse(g, rows, var, slots, hp: Hyper) -> LeafUpdate:
    lr, l1, l2 = _hyper(hp, g.dtype)
    prox = S.gather(var, rows) - N.mul(lr, g)
    if var.ndim > 1:
        value = _shrink(prox, lr, l1, l2)
    else:
        value = _shrink_rank1_double(prox, lr, l1, l2)
    return LeafUpdate(slots={}, value=value, rows=rows)


def _pa_dense(g, var, slots, hp: Hyper) -> LeafUpdate:
    lr, l1, l2 = _hyper(hp, var.dtype)
    accum = slots["accumulator"] + N.mul(g, g)
    eta = N.opaque(lr * N.rsqrt(accum))  # opaque: no re-association with l2, l1, g
    prox = var - N.mul(g, eta)
    return LeafUpdate(slots={"accumulator": accum}, value=_shrink(prox, eta, l1, l2))


def _pa_sparse(g, rows, var, slots, hp: Hyper) -> LeafUpdate:
    lr, l1, l2 = _hyper(hp, g.dtype)
    accum = S.gather(slots["accumulator"], rows) + N.mul(g, g)
    v = S.gather(var, rows)
    if var.ndim > 1:
        eta = N.opaque(lr * N.rsqrt(accum))
        value = _shrink(v - N.mul(g, eta), eta, l1, l2)
    else:
        eta = N.div(lr, N.sqrt(accum))
        value = _shrink_rank1_double(v - N.mul(eta, g), eta, l1, l2)
    new_slot = S.scatter(slots["accumulator"], rows, accum)
    return LeafUpdate(slots={"accumulator": new_slot}, value=value, rows=rows)


def _validate_kernel_args(learning_rate, l1, l2):
    require(lambda x: x > 0, "learning_rate", learning_rate, "lr is not a positive scalar: %s",
            InvalidArgumentError)
    require(lambda x: x >= 0, "l1_regularization_strength", l1,
            "l1 regularization strength is not a non-negative scalar: %s", InvalidArgumentError)
    require(lambda x: x >= 0, "l2_regularization_strength", l2,
            "l2 regularization strength is not a non-negative scalar: %s", InvalidArgumentError)


def proximal_gradient_descent(learning_rate: float, l1_regularization_strength: float = 0.0,
                              l2_regularization_strength: float = 0.0) -> Rule:
    r"""Proximal gradient descent, as TF1's ``ProximalGradientDescentOptimizer``.

    Math (TF1 ``ApplyProximalGradientDescent``, hyper-parameters uncast)::

        prox = var - (g * lr)
        var = (sign(prox) * max(abs(prox) - (lr * l1), 0)) / (1 + (l2 * lr))   # l1 > 0
        var = prox / (1 + (l2 * lr))                                          # l1 == 0

    Sparse: the same per row (repeated indices summed first); for 1-D variables
    ``prox = var - (lr * g)`` and the final division is done in double (float64 with
    ``jax_enable_x64``).

    Args:
      learning_rate, l1_regularization_strength, l2_regularization_strength: floats or
        arrays (TF1 does not call callables here).

    Returns:
      A :class:`~compatopt.Rule` (state :class:`ProximalGradientDescentState`); dense:
      float32 parameters (float64 with float64-array hyper-parameters), sparse: float32
      and float64. ``apply`` is the exact path.

    Example:
      >>> import jax.numpy as jnp, compatopt as co
      >>> rule = co.proximal_gradient_descent(0.1, l1_regularization_strength=0.01)
      >>> p = jnp.ones(2); s = rule.init(p)
      >>> p, s = rule.apply(jnp.ones(2), s, p)

    Differences: optax has no proximal optimizers.
    """
    no_callable("ProximalGradientDescent", learning_rate=learning_rate,
                l1_regularization_strength=l1_regularization_strength,
                l2_regularization_strength=l2_regularization_strength)
    rd = RuleDef(
        name="ProximalGradientDescent",
        state_type=ProximalGradientDescentState,
        slots=(),
        hyperparams=dict(zip(_HYPER, (learning_rate, l1_regularization_strength,
                                      l2_regularization_strength))),
        dense=_pgd_dense,
        sparse=_pgd_sparse,
        dense_dtypes=_DENSE,
        sparse_dtypes=_SPARSE,
        check_dense_hyper_dtype=_HYPER,
    )
    return build(rd)


def proximal_adagrad(learning_rate: float, initial_accumulator_value: float = 0.1,
                     l1_regularization_strength: float = 0.0,
                     l2_regularization_strength: float = 0.0) -> Rule:
    r"""Proximal Adagrad, as TF1's ``ProximalAdagradOptimizer`` (Duchi et al., FOBOS).

    Math (TF1 ``ApplyProximalAdagrad``, hyper-parameters uncast)::

        accum = accum + (g * g)
        eta = lr * rsqrt(accum)
        prox = var - (g * eta)
        var = (sign(prox) * max(abs(prox) - (eta * l1), 0)) / (1 + (l2 * eta))  # l1 > 0
        var = prox / (1 + (l2 * eta))                                          # l1 == 0

    Sparse: the same per row; for 1-D variables ``eta = lr / sqrt(accum)``,
    ``prox = var - (eta * g)`` and the final division in double. ``rsqrt`` is a
    correctly rounded ``1/sqrt`` (see :func:`compatopt.adagrad`).

    Args:
      learning_rate: > 0 (``InvalidArgumentError``, TF1's kernel check).
      initial_accumulator_value: > 0 (``ValueError``).
      l1_regularization_strength, l2_regularization_strength: >= 0
        (``InvalidArgumentError``).

    Returns:
      A :class:`~compatopt.Rule` (state :class:`ProximalAdagradState`); dtypes as
      :func:`proximal_gradient_descent`. ``apply`` is the exact path.

    Example:
      >>> import jax.numpy as jnp, compatopt as co
      >>> rule = co.proximal_adagrad(0.1)
      >>> p = jnp.ones(2); s = rule.init(p)
      >>> p, s = rule.apply(jnp.ones(2), s, p)

    Differences: optax has no proximal optimizers.
    """
    no_callable("ProximalAdagrad", learning_rate=learning_rate,
                l1_regularization_strength=l1_regularization_strength,
                l2_regularization_strength=l2_regularization_strength)
    require(lambda x: x > 0, "initial_accumulator_value", initial_accumulator_value,
            "initial_accumulator_value must be positive: %s", nan_passes=True)
    _validate_kernel_args(learning_rate, l1_regularization_strength, l2_regularization_strength)
    rd = RuleDef(
        name="ProximalAdagrad",
        state_type=ProximalAdagradState,
        slots=(("accumulator", constant_slot(initial_accumulator_value)),),
        hyperparams=dict(zip(_HYPER, (learning_rate, l1_regularization_strength,
                                      l2_regularization_strength))),
        dense=_pa_dense,
        sparse=_pa_sparse,
        dense_dtypes=_DENSE,
        sparse_dtypes=_SPARSE,
        check_dense_hyper_dtype=_HYPER,
        static={"initial_accumulator_value": initial_accumulator_value},
    )
    return build(rd)
