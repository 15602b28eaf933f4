"""TF1's loss scales (``tf.compat.v1.train.experimental.FixedLossScale`` /
``DynamicLossScale``) as shim objects; the math is :mod:`compatopt.loss_scaling`'s.

``DynamicLossScale`` holds two non-trainable variables, created with it as in TF1 and saved
by :class:`~compatopt.train.Saver` under TF1's names: ``current_loss_scale`` (float32) and
``good_steps`` (int64 under ``jax_enable_x64``, else int32), uniquified as TF1's graph does
(``current_loss_scale_1`` for a second one).
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp

from compatopt import loss_scaling
from compatopt.train._variable import Variable


class LossScale:
    """Base class of TF1's loss scales: ``scale()`` is the current scale (float32),
    ``update(grads)`` returns ``(None, should_apply_gradients)``."""

    def __init__(self) -> None:
        self._weights: dict = {}

    def __call__(self) -> jax.Array:
        raise NotImplementedError()

    def update(self, grads: Any) -> tuple:
        raise NotImplementedError()

    def get_config(self) -> dict:
        raise NotImplementedError()

    @classmethod
    def from_config(cls, config: dict) -> "LossScale":
        return cls(**config)


class FixedLossScale(LossScale):
    """``tf.compat.v1.train.experimental.FixedLossScale(loss_scale_value)``: never changes,
    never skips a step.

    Raises:
      ValueError: not a Python int or float, or below 1 (TF1's messages).
    """

    def __init__(self, loss_scale_value: float) -> None:
        super().__init__()
        self._loss_scale_value = loss_scaling.check_fixed(loss_scale_value)

    def __call__(self) -> jax.Array:
        return jnp.asarray(self._loss_scale_value, jnp.float32)

    def update(self, grads: Any) -> tuple:
        del grads
        return None, True

    def __repr__(self) -> str:
        return "FixedLossScale(%s)" % self._loss_scale_value

    def get_config(self) -> dict:
        return {"loss_scale_value": self._loss_scale_value}


class DynamicLossScale(LossScale):
    """``tf.compat.v1.train.experimental.DynamicLossScale``: halves (``/ multiplier``, at
    least 1) on a non-finite step, multiplies after ``increment_period`` finite steps
    (:func:`compatopt.loss_scaling.next_loss_scale`)."""

    def __init__(self, initial_loss_scale: float = 2 ** 15, increment_period: int = 2000,
                 multiplier: float = 2.) -> None:
        super().__init__()
        self._initial_loss_scale = float(initial_loss_scale)
        self._increment_period = int(increment_period)
        self._multiplier = float(multiplier)
        self._current_loss_scale = self._add_weight(
            "current_loss_scale", jnp.asarray(self._initial_loss_scale, jnp.float32))
        self._num_good_steps = self._add_weight(
            "good_steps", jnp.zeros((), loss_scaling.step_dtype()))

    def _add_weight(self, name: str, initial_value: Any) -> Variable:
        v = Variable(initial_value, trainable=False, name=name)
        self._weights[name] = v
        return v

    @property
    def initial_loss_scale(self) -> float:
        return self._initial_loss_scale

    @property
    def increment_period(self) -> int:
        return self._increment_period

    @property
    def multiplier(self) -> float:
        return self._multiplier

    def __call__(self) -> jax.Array:
        return self._current_loss_scale.value

    def update(self, grads: Any) -> tuple:
        """Updates the scale from ``grads`` (unscaled); returns ``(None, is_finite)``."""
        finite = loss_scaling.all_finite(list(grads) if isinstance(grads, (list, tuple))
                                         else grads)
        scale, steps = loss_scaling.next_loss_scale(
            self._current_loss_scale.value, self._num_good_steps.value, finite,
            self._increment_period, self._multiplier)
        self._current_loss_scale.assign(scale)
        self._num_good_steps.assign(steps)
        return None, finite

    def __repr__(self) -> str:
        return ("DynamicLossScale(current_loss_scale=%s, num_good_steps=%s, "
                "initial_loss_scale=%s, increment_period=%s, multiplier=%s)"
                % (self._current_loss_scale.numpy(), self._num_good_steps.numpy(),
                   self.initial_loss_scale, self.increment_period, self.multiplier))

    def get_config(self) -> dict:
        return {"initial_loss_scale": self.initial_loss_scale,
                "increment_period": self.increment_period,
                "multiplier": self.multiplier}


def get(identifier: Any) -> Optional[LossScale]:
    """TF1 ``loss_scale.get``: a number -> ``FixedLossScale``, ``"dynamic"`` ->
    ``DynamicLossScale()``, a ``LossScale`` as is, ``None`` -> ``None``."""
    if isinstance(identifier, (int, float)):
        return FixedLossScale(identifier)
    if isinstance(identifier, str) and identifier == "dynamic":
        return DynamicLossScale()
    if isinstance(identifier, LossScale):
        return identifier
    if identifier is None:
        return None
    raise ValueError("Could not interpret loss scale identifier: %s" % identifier)
