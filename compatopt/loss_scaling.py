"""Loss scaling: TF1's ``FixedLossScale`` / ``DynamicLossScale`` math, and wrapper rules.

TF1 (``tf.compat.v1.train.experimental.MixedPrecisionLossScaleOptimizer``) multiplies the
loss by the loss scale ``s`` (``loss * cast(s, loss.dtype)``), multiplies every gradient by
``1 / s`` (the reciprocal is one float32 division, then one multiply per element), and with
a dynamic scale:

* all gradients finite: ``good_steps + 1 >= increment_period`` ? (``s = s * multiplier`` if
  that is finite; ``good_steps = 0``) : ``good_steps += 1``; the step is applied;
* otherwise: ``s = max(s / multiplier, 1)``, ``good_steps = 0``, and the step is skipped
  (no variable, slot or step count changes).

A fixed scale never skips a step (TF1 applies non-finite gradients then). The functions
below are that arithmetic; :func:`dynamic_loss_scale` / :func:`fixed_loss_scale` wrap a rule
(or any optax transformation) so that its ``apply`` / ``update`` take the gradients of the
*scaled* loss::

    rule = co.loss_scaling.dynamic_loss_scale(co.adam(1e-3))
    state = rule.init(params)
    grads = jax.grad(lambda p: co.loss_scaling.scale_loss(loss(p), state))(params)
    params, state = rule.apply(grads, state, params)   # unscaled, skipped if non-finite

The shim's ``MixedPrecisionLossScaleOptimizer`` uses the same functions.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp

from compatopt._base import ArrayTree, IndexedSlices, Rule, apply_updates, is_grad_leaf
from compatopt._numerics import div, mul, opaque


class LossScaleState(NamedTuple):
    """State of a loss-scaled rule; the first two fields carry TF1's variable names.

    Attributes:
      current_loss_scale: float32 scalar, the scale the next loss is multiplied by.
      good_steps: integer scalar (int64 under ``jax_enable_x64``, else int32), consecutive
        finite steps since the last change.
      inner_state: the wrapped rule's state.
    """

    current_loss_scale: jax.Array
    good_steps: jax.Array
    inner_state: Any


def step_dtype() -> jnp.dtype:
    """int64 (TF1's ``good_steps`` dtype) when x64 is enabled, else int32."""
    x64 = jax.config.jax_enable_x64  # pyright: ignore[reportAttributeAccessIssue]
    return jnp.dtype(jnp.int64) if x64 else jnp.dtype(jnp.int32)


def check_fixed(loss_scale_value: Any) -> float:
    """TF1 ``FixedLossScale``'s checks: a Python int or float, at least 1."""
    if not isinstance(loss_scale_value, (int, float)):
        raise ValueError("loss_scale_value must be a Python int or float.")
    if loss_scale_value < 1:
        raise ValueError("loss_scale_value must be at least 1.")
    return float(loss_scale_value)


def scale_loss(loss: jax.Array, scale: Any) -> jax.Array:
    """TF1 ``_scale_loss``: ``loss * cast(scale, loss.dtype)``; ``scale`` may be a state."""
    if isinstance(scale, LossScaleState):
        scale = scale.current_loss_scale
    loss = jnp.asarray(loss)
    return mul(opaque(loss), jnp.asarray(scale).astype(loss.dtype))


def unscale(grads: ArrayTree, scale: Any) -> ArrayTree:
    """TF1 ``_unscale_grads``: ``g * (1 / scale)``, the reciprocal in float32; ``None``
    stays ``None``, an ``IndexedSlices`` has its values scaled."""
    if isinstance(scale, LossScaleState):
        scale = scale.current_loss_scale
    recip = div(jnp.float32(1), jnp.asarray(scale, jnp.float32))

    def one(g):
        if g is None:
            return None
        if isinstance(g, IndexedSlices):
            return IndexedSlices(_mul(g.values, recip), g.indices, g.dense_shape)
        return _mul(jnp.asarray(g), recip)

    return jax.tree_util.tree_map(one, grads, is_leaf=is_grad_leaf)


def _mul(g: jax.Array, recip: jax.Array) -> jax.Array:
    # TF1 multiplies by the float32 reciprocal; a float16/bfloat16 gradient is multiplied
    # in its own dtype (TF1 would reject the mixed-dtype multiply).
    # Hidden on both sides: XLA would otherwise re-associate the multiply with the
    # backward pass's own multiplies (``(x * s) * (1 / s)``).
    return mul(opaque(g), recip.astype(g.dtype))


def all_finite(grads: ArrayTree) -> jax.Array:
    """TF1 ``_is_all_finite``: every element of every non-``None`` gradient is finite
    (an ``IndexedSlices``: its values); ``True`` when there are none."""
    leaves = [g.values if isinstance(g, IndexedSlices) else g
              for g in jax.tree_util.tree_leaves(grads, is_leaf=is_grad_leaf)
              if g is not None]
    ok = jnp.asarray(True)
    for g in leaves:
        ok = jnp.logical_and(ok, jnp.all(jnp.isfinite(jnp.asarray(g))))
    return ok


def next_loss_scale(scale: jax.Array, good_steps: jax.Array, finite: jax.Array,
                    increment_period: int, multiplier: float) -> tuple:
    """TF1 ``DynamicLossScale.update``: the new ``(current_loss_scale, good_steps)``."""
    scale = jnp.asarray(scale, jnp.float32)
    good_steps = jnp.asarray(good_steps)
    mult = jnp.float32(multiplier)
    raised = scale * mult
    increment = good_steps + 1 >= increment_period
    up = jnp.where(increment, jnp.where(jnp.isfinite(raised), raised, scale), scale)
    up_steps = jnp.where(increment, jnp.zeros_like(good_steps), good_steps + 1)
    down = jnp.maximum(div(scale, mult), jnp.float32(1))
    new_scale = jnp.where(finite, up, down)
    new_steps = jnp.where(finite, up_steps, jnp.zeros_like(good_steps))
    return new_scale, new_steps


def select(finite: jax.Array, new: ArrayTree, old: ArrayTree) -> ArrayTree:
    """``new`` where ``finite`` else ``old``, leaf by leaf (the skipped step)."""
    return jax.tree_util.tree_map(lambda n, o: jnp.where(finite, n, o), new, old)


def _check_dynamic(initial_loss_scale: Any, increment_period: Any,
                   multiplier: Any) -> tuple:
    return float(initial_loss_scale), int(increment_period), float(multiplier)


def _wrap(inner: Any, initial: float, dynamic: bool, increment_period: int,
          multiplier: float, hyper: dict) -> Rule:
    def init(params):
        return LossScaleState(jnp.asarray(initial, jnp.float32),
                              jnp.zeros((), step_dtype()), inner.init(params))

    def prepare(grads, state):
        grads = unscale(grads, state.current_loss_scale)
        if not dynamic:
            return grads, jnp.asarray(True), state.current_loss_scale, state.good_steps
        finite = all_finite(grads)
        scale, steps = next_loss_scale(state.current_loss_scale, state.good_steps, finite,
                                       increment_period, multiplier)
        return grads, finite, scale, steps

    def apply(grads, state, params):
        grads, finite, scale, steps = prepare(grads, state)
        inner_apply = getattr(inner, "apply", None)
        if inner_apply is not None:
            new_params, inner_state = inner_apply(grads, state.inner_state, params)
        else:
            updates, inner_state = inner.update(grads, state.inner_state, params)
            new_params = apply_updates(params, updates)
        if dynamic:
            new_params = select(finite, new_params, params)
            inner_state = select(finite, inner_state, state.inner_state)
        return new_params, LossScaleState(scale, steps, inner_state)

    def update(grads, state, params=None):
        grads, finite, scale, steps = prepare(grads, state)
        updates, inner_state = inner.update(grads, state.inner_state, params)
        if dynamic:
            updates = jax.tree_util.tree_map(
                lambda u: None if u is None else jnp.where(finite, u, jnp.zeros_like(u)),
                updates, is_leaf=lambda x: x is None)
            inner_state = select(finite, inner_state, state.inner_state)
        return updates, LossScaleState(scale, steps, inner_state)

    name = getattr(inner, "name", "LossScale")
    return Rule(init=init, apply=apply, update=update, name=name,
                hyperparams=dict(getattr(inner, "hyperparams", {}), **hyper),
                definition=None)


def dynamic_loss_scale(inner: Any, initial_loss_scale: float = 2 ** 15,
                       increment_period: int = 2000, multiplier: float = 2.) -> Rule:
    """``inner`` with TF1's ``DynamicLossScale``: takes gradients of the scaled loss.

    ``apply`` / ``update`` unscale the gradients, update the scale (module docstring) and,
    when any gradient is non-finite, return the parameters and ``inner``'s state unchanged
    (``update``: zero updates). ``inner`` is a rule or any optax transformation (one
    without ``apply`` is applied through ``update`` + ``apply_updates``).
    """
    initial, period, mult = _check_dynamic(initial_loss_scale, increment_period, multiplier)
    return _wrap(inner, initial, True, period, mult,
                 dict(loss_scale="dynamic", initial_loss_scale=initial,
                      increment_period=period, multiplier=mult))


def fixed_loss_scale(inner: Any, loss_scale_value: float) -> Rule:
    """``inner`` with TF1's ``FixedLossScale``: gradients are unscaled, never skipped."""
    value = check_fixed(loss_scale_value)
    return _wrap(inner, value, False, 0, 1.0, dict(loss_scale=value))


def current_loss_scale(state: Any) -> Optional[jax.Array]:
    """The ``current_loss_scale`` of the first :class:`LossScaleState` in ``state`` (for a
    loss-scaled rule inside an optax chain), or ``None``."""
    found = [s for s in jax.tree_util.tree_leaves(
        state, is_leaf=lambda x: isinstance(x, LossScaleState))
        if isinstance(s, LossScaleState)]
    return found[0].current_loss_scale if found else None
