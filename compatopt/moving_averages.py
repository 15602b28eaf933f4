"""Exponential moving averages with TF1's arithmetic (TF1 ``ExponentialMovingAverage``).

TF1 graph mode (``moving_averages.py``, TF 2.21), for a shadow ``s`` of a value ``x`` of
dtype ``T``::

    d  = float32(decay)                                    # convert_to_tensor(decay, float32)
    d  = min(d, (1 + n) / (10 + n))                        # num_updates given: n = float32(n)
    d1 = cast(1 - d, T)                                    # "1 - decay", once, in float32
    s  = s - ((s - x) * d1)                                # assign_moving_average

Every operation is rounded once in ``T`` (float16/bfloat16: computed in float32 and rounded
back), never fused into a multiply-add. With ``zero_debias`` (TF1 ``_zero_debias``, used for
non-Variable tensors: the shadow starts at zero)::

    biased     = biased - ((biased - x) * d1)
    local_step = local_step + 1                            # in T
    s          = biased / (1 - pow(1 - d1, local_step))    # pow: C pow, as TF's scalar kernel

:func:`ema` is the transformation over pytrees; the shim's
:class:`compatopt.train.ExponentialMovingAverage` uses the functions below on its variables.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from compatopt._base import ArrayTree
from compatopt._numerics import FLOAT_DTYPES
from compatopt._numerics.tf_ops import tf_add, tf_div, tf_mul, tf_pow, tf_sub

__all__ = ["EmaState", "MovingAverage", "assign_moving_average", "decay_value", "ema",
           "one_minus_decay", "zero_debias_update"]

Hyper = Union[float, ArrayLike, Callable[[jax.Array], ArrayLike]]


class EmaState(NamedTuple):
    """State of :func:`ema`; the fields carry TF1's variable names.

    Attributes:
      count: int32 scalar, updates done (what a callable ``decay``/``num_updates`` reads).
      average: the shadows, one per leaf (TF1 ``<var>/ExponentialMovingAverage``).
      biased: ``zero_debias`` only (else ``None``): TF1 ``<...>/ExponentialMovingAverage/biased``.
      local_step: ``zero_debias`` only (else ``None``): one scalar per leaf, in the leaf's
        dtype (TF1 ``<...>/ExponentialMovingAverage/local_step``).
    """

    count: jax.Array
    average: ArrayTree
    biased: Optional[ArrayTree]
    local_step: Optional[ArrayTree]


class MovingAverage(NamedTuple):
    """What :func:`ema` returns: ``init(params)``, ``update(params, state)``, ``average``."""

    init: Callable[[ArrayTree], EmaState]
    update: Callable[..., EmaState]
    average: Callable[[EmaState], ArrayTree]


def _float32(value: Any, what: str) -> jax.Array:
    """``convert_to_tensor(value, dtype=float32)``: numbers and NumPy values are converted,
    a JAX array must already be float32 (TF1's messages)."""
    if isinstance(value, (bool, str, bytes)) or value is None:
        raise TypeError(f"Expected float32, but got {value} of type '{type(value).__name__}'.")
    if isinstance(value, (int, float, np.generic, np.ndarray)):
        return jnp.asarray(np.asarray(value, np.float32))
    value = jnp.asarray(value)
    if jnp.dtype(value.dtype) != jnp.float32:
        raise ValueError(f"Tensor conversion requested dtype float32 for Tensor with dtype "
                         f"{jnp.dtype(value.dtype).name}: {what}")
    return value


def decay_value(decay: ArrayLike, num_updates: Optional[ArrayLike] = None) -> jax.Array:
    """The decay TF1 uses, float32: ``min(decay, (1 + n) / (10 + n))`` with ``n =
    cast(num_updates, float32)`` when ``num_updates`` is given, else ``decay``."""
    d = _float32(decay, "decay")
    if num_updates is None:
        return d
    if isinstance(num_updates, (str, bytes)):
        raise TypeError(f"Expected float32, but got {num_updates} of type "
                        f"'{type(num_updates).__name__}'.")
    n = jnp.asarray(np.asarray(num_updates) if isinstance(num_updates, (int, float))
                    else num_updates).astype(jnp.float32)
    one, ten = jnp.float32(1), jnp.float32(10)
    return jnp.minimum(d, tf_div(tf_add(one, n), tf_add(ten, n)))


def one_minus_decay(decay: ArrayLike, num_updates: Optional[ArrayLike], dtype: Any) -> jax.Array:
    """TF1 ``assign_moving_average``'s ``decay`` tensor: ``cast(1 - decay, dtype)``, the
    subtraction in float32."""
    return tf_sub(jnp.float32(1), decay_value(decay, num_updates)).astype(dtype)


def assign_moving_average(average: jax.Array, value: jax.Array,
                          one_minus: jax.Array) -> jax.Array:
    """TF1 ``assign_moving_average`` (no debiasing): ``average - ((average - value) * d1)``,
    ``d1 = one_minus`` (:func:`one_minus_decay`), in ``average``'s dtype."""
    value = jnp.asarray(value).astype(average.dtype)
    return tf_sub(average, tf_mul(tf_sub(average, value), one_minus))


def zero_debias_update(biased: jax.Array, local_step: jax.Array, value: jax.Array,
                       one_minus: jax.Array) -> tuple:
    """TF1 ``_zero_debias``: returns ``(average, biased, local_step)`` after one update.

    ``biased -= (biased - value) * d1``; ``local_step += 1``;
    ``average = biased / (1 - pow(1 - d1, local_step))``, all in ``biased``'s dtype.
    """
    biased = assign_moving_average(biased, value, one_minus)
    one = jnp.ones((), biased.dtype)
    local_step = tf_add(local_step, one)
    bias_factor = tf_sub(one, tf_pow(tf_sub(one, one_minus), local_step))
    return tf_div(biased, bias_factor), biased, local_step


def check_dtype(dtype: Any, name: str) -> None:
    """TF1's check: only half, bfloat16, float and double values are averaged."""
    if jnp.dtype(dtype) not in FLOAT_DTYPES:
        raise TypeError("The variables must be half, float, or double: %s" % name)


def _hyper(h: Any, count: jax.Array) -> Any:
    return h(count) if callable(h) else h


def ema(decay: Hyper, num_updates: Optional[Hyper] = None,
        zero_debias: bool = False) -> MovingAverage:
    r"""TF1's ``ExponentialMovingAverage`` as a pure transformation over pytrees.

    Math (TF1 ``assign_moving_average``, per leaf ``x`` of dtype ``T``; module docstring)::

        d  = min(float32(decay), (1 + n) / (10 + n))     # n = float32(num_updates), if given
        s  = s - ((s - x) * cast(1 - d, T))

    ``zero_debias=True`` is TF1's path for a non-Variable tensor (a loss): the shadow
    starts at 0 and is ``biased / (1 - pow(1 - d1, local_step))``. (TF1 ignores
    ``zero_debias`` for Variables, whose shadows start at their initial value; so does the
    shim.) Without it ``init`` copies ``params``: TF1's shadow of a Variable.

    Args:
      decay: float, array, or callable ``count -> decay`` (``count``: updates done).
      num_updates: ``None``, a number/array, or callable ``count -> num_updates``; TF1
        passes the global step. ``update(..., num_updates=step)`` overrides it per call.
      zero_debias: TF1's zero-debiasing (shadows, ``biased`` and ``local_step`` start at 0).

    Returns:
      A :class:`MovingAverage`: ``init(params) -> EmaState``, ``update(params, state,
      num_updates=None) -> EmaState``, ``average(state)`` (the shadows).

    Example:
      >>> import jax.numpy as jnp
      >>> from compatopt import moving_averages
      >>> avg = moving_averages.ema(0.5)
      >>> state = avg.init({"w": jnp.zeros(2)})
      >>> state = avg.update({"w": jnp.ones(2)}, state)
      >>> avg.average(state)["w"]
      Array([0.5, 0.5], dtype=float32)

    Differences: ``optax.ema(decay, debias=True)`` starts at zero and divides by
    ``1 - decay ** count`` (and computes ``decay * s + (1 - decay) * x``), and it averages
    *updates*; TF1 (here) averages values with ``s - (s - x) * (1 - decay)``, starts at the
    value unless ``zero_debias``, and debiases with ``pow(1 - (1 - decay), local_step)``
    computed in the value's dtype. The results differ in the last bits and, without
    ``zero_debias``, at the start.
    """
    zero_debias = bool(zero_debias)

    def init(params: ArrayTree) -> EmaState:
        leaves = jax.tree_util.tree_leaves_with_path(params)
        for path, leaf in leaves:
            check_dtype(jnp.asarray(leaf).dtype, jax.tree_util.keystr(path) or "<root>")
        count = jnp.zeros((), jnp.int32)
        if not zero_debias:
            return EmaState(count, jax.tree_util.tree_map(lambda x: jnp.array(x, copy=True),
                                                          params), None, None)
        zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
        steps = jax.tree_util.tree_map(lambda x: jnp.zeros((), jnp.asarray(x).dtype), params)
        return EmaState(count, zeros, jax.tree_util.tree_map(jnp.zeros_like, params), steps)

    def update(params: ArrayTree, state: EmaState,
               num_updates: Optional[ArrayLike] = None) -> EmaState:
        n = _hyper(num_updates_default, state.count) if num_updates is None else num_updates
        d = decay_value(_hyper(decay, state.count), n)
        count = state.count + jnp.ones((), state.count.dtype)

        def one_minus(avg):
            return tf_sub(jnp.float32(1), d).astype(avg.dtype)

        if not zero_debias:
            average = jax.tree_util.tree_map(
                lambda s, x: assign_moving_average(s, x, one_minus(s)), state.average, params)
            return EmaState(count, average, None, None)
        out = jax.tree_util.tree_map(
            lambda b, t, x: zero_debias_update(b, t, x, one_minus(b)),
            state.biased, state.local_step, params)
        treedef = jax.tree_util.tree_structure(state.average)
        triples = treedef.flatten_up_to(out)
        average, biased, steps = (treedef.unflatten([t[i] for t in triples]) for i in range(3))
        return EmaState(count, average, biased, steps)

    num_updates_default = num_updates

    def average(state: EmaState) -> ArrayTree:
        return state.average

    return MovingAverage(init=init, update=update, average=average)
