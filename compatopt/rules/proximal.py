"""The proximal family: TF1 ``ProximalGradientDescentOptimizer`` and
``ProximalAdagradOptimizer`` (kernels ``Apply/SparseApplyProximal{GradientDescent,Adagrad}``).

Both set the variable from a proximal step (``apply`` is the exact path) and share the
shrink-and-scale ending. Their dense kernels take the hyper-parameters *uncast*: an
explicitly typed array of another dtype than the variable's is refused (``TypeError``, as
TF1 refuses it), while a Python scalar is weakly typed and takes the variable's dtype (as a
JAX user expects). Every hyper-parameter may be a schedule ``count -> value``; TF1's
run-time checks (ProximalAdagrad: ``lr`` positive, ``l1``/``l2`` non-negative scalars) are
applied to the value each apply uses (``InvalidArgumentError``, nothing changed).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from compatopt import _numerics as N
from compatopt import _sparse as S
from compatopt._base import ArrayTree, LeafUpdate, Rule
from compatopt._rule import ALL_FLOATS, Hyper, RuleDef, build, constant_slot, require
from compatopt.errors import InvalidArgumentError

# TF1 registers these kernels for float32 and float64 only; float16 and bfloat16 are an
# extension, computed as the other rules' half kernels are (float32, rounded every op).
_DENSE = _SPARSE = ALL_FLOATS
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


# ProximalAdagrad's kernels' OP_REQUIRES on lr, l1 and l2 (training_ops.cc), at every
# apply (ProximalGradientDescent's kernels check nothing).
_KERNEL_CHECKS = (
    ("learning_rate", lambda x: x > 0, "lr is not a positive scalar: %s"),
    ("l1_regularization_strength", lambda x: x >= 0,
     "l1 regularization strength is not a non-negative scalar: %s"),
    ("l2_regularization_strength", lambda x: x >= 0,
     "l2 regularization strength is not a non-negative scalar: %s"),
)


def _validate_kernel_args(learning_rate, l1, l2):
    """The kernels' checks on constructor values already concrete, raised at once."""
    for (name, condition, message), value in zip(_KERNEL_CHECKS, (learning_rate, l1, l2)):
        require(condition, name, value, message, InvalidArgumentError)


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
      learning_rate, l1_regularization_strength, l2_regularization_strength: floats,
        arrays or schedules ``count -> value`` (TF1's decayed tensors). TF1's kernel
        checks none of them.

    Returns:
      A :class:`~compatopt.Rule` (state :class:`ProximalGradientDescentState`); every
      float dtype, dense and sparse (float16/bfloat16 are an extension beyond TF1,
      computed on float32 and rounded after every op). ``apply`` is the exact path.

    Example:
      >>> import jax.numpy as jnp, compatopt as co
      >>> rule = co.proximal_gradient_descent(0.1, l1_regularization_strength=0.01)
      >>> p = jnp.ones(2); s = rule.init(p)
      >>> p, s = rule.apply(jnp.ones(2), s, p)

    Differences: optax has no proximal optimizers.
    """
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
      learning_rate: > 0 (``InvalidArgumentError``, TF1's kernel check); a float, an
        array or a schedule ``count -> lr``, checked on the value of every apply.
      initial_accumulator_value: > 0 (``ValueError``).
      l1_regularization_strength, l2_regularization_strength: >= 0
        (``InvalidArgumentError``); floats, arrays or schedules, checked likewise.

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
        kernel_checks=_KERNEL_CHECKS,
        static={"initial_accumulator_value": initial_accumulator_value},
    )
    return build(rd)
