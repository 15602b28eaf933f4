"""``tf.compat.v1.train``'s learning-rate decay functions (eager calling convention).

TF1 in eager mode returns ``functools.partial(schedule, global_step)``: a zero-argument
callable that reads the step each time it is called, so the decayed value follows the step
variable as the optimizer increments it. Here that callable is a
:class:`~compatopt.train.LazyTensor`, so arithmetic on it (a warmup blend, ``lr * 0.5``)
stays lazy as on a TF1 graph tensor, and every optimizer accepts it as a learning rate
(FTRL, the proximal pair and AdagradDA included, whose TF1 kernels take a decayed tensor).
These wrappers do the same over :mod:`compatopt.schedules` (all the arithmetic lives there,
bit-exact with TF):

* ``global_step`` is anything with a ``.value`` (a :class:`compatopt.Variable`, read at each
  call) or an integer array / Python int (a constant step);
* ``global_step=None`` raises TF's ``ValueError("Attempt to convert a value (None) ...")``
  when the callable is called, as TF does;
* other argument errors also surface at call time (TF builds the schedule's tensors in
  ``__call__``), except ``natural_exp_decay``'s ``exp(-decay_rate)`` and
  ``piecewise_constant``'s dtype/length checks, which TF runs at construction;
* ``name`` is accepted and ignored (TF uses it for name scopes).

The value follows :mod:`compatopt.tf1_mode`, read at each call: TF1 graph mode's arithmetic
(Grappler's rewrites of constant arguments, the default) or eager mode's (``with
compatopt.tf1_mode("eager"):``); see :mod:`compatopt.schedules`. A
:class:`compatopt.Variable` passed as ``learning_rate``, ``decay_rate`` ... is not folded,
as Grappler cannot fold a ``tf.Variable``. The calling convention stays eager TF1's (a
callable, not a Tensor computed once).

Example:
  >>> import compatopt as co
  >>> step = co.Variable(0, trainable=False)
  >>> lr = co.train.exponential_decay(0.1, step, decay_steps=10, decay_rate=0.5)
  >>> float(lr())
  0.10000000149011612
  >>> _ = step.assign(20)
  >>> float(lr())
  0.02500000037252903
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import jax

from compatopt import schedules
from compatopt.train._lazy import LazyTensor

__all__ = ["exponential_decay", "natural_exp_decay", "inverse_time_decay", "polynomial_decay",
           "cosine_decay", "cosine_decay_restarts", "linear_cosine_decay",
           "noisy_linear_cosine_decay", "piecewise_constant", "piecewise_constant_decay"]

DecayedLearningRate = LazyTensor


def _read(global_step: Any) -> Any:
    """The step's current value: ``global_step.value`` when it has one, else itself."""
    value = getattr(global_step, "value", global_step)
    return value() if callable(value) else value


def _partial(make: Callable[[], schedules.Schedule], global_step: Any) -> DecayedLearningRate:
    """TF1 eager's ``functools.partial(schedule, global_step)``.

    The schedule is built at each call, as TF converts its arguments in ``__call__``, so
    argument errors surface when the learning rate is read, not when it is defined.
    """

    def decayed_learning_rate() -> jax.Array:
        return make()(_read(global_step))

    return LazyTensor(decayed_learning_rate, "decayed_learning_rate")


def exponential_decay(learning_rate: Any, global_step: Any, decay_steps: Any, decay_rate: Any,
                      staircase: bool = False, name: Optional[str] = None
                      ) -> DecayedLearningRate:
    """``learning_rate * decay_rate ** (global_step / decay_steps)``; see
    :func:`compatopt.schedules.exponential_decay`. Returns a zero-argument callable."""
    del name
    return _partial(lambda: schedules.exponential_decay(learning_rate, decay_steps,
                                                        decay_rate, staircase), global_step)


def natural_exp_decay(learning_rate: Any, global_step: Any, decay_steps: Any, decay_rate: Any,
                      staircase: bool = False, name: Optional[str] = None
                      ) -> DecayedLearningRate:
    """``learning_rate * exp(-decay_rate) ** (global_step / decay_steps)``; see
    :func:`compatopt.schedules.natural_exp_decay`. ``exp(-decay_rate)`` is computed here, at
    construction, as TF does. Returns a zero-argument callable."""
    del name
    rate = schedules.natural_exp_rate(decay_rate)
    return _partial(lambda: schedules.exponential_decay(learning_rate, decay_steps, rate,
                                                        staircase), global_step)


def inverse_time_decay(learning_rate: Any, global_step: Any, decay_steps: Any, decay_rate: Any,
                       staircase: bool = False, name: Optional[str] = None
                       ) -> DecayedLearningRate:
    """``learning_rate / (1 + decay_rate * global_step / decay_steps)``; see
    :func:`compatopt.schedules.inverse_time_decay`. Returns a zero-argument callable."""
    del name
    return _partial(lambda: schedules.inverse_time_decay(learning_rate, decay_steps,
                                                         decay_rate, staircase), global_step)


def polynomial_decay(learning_rate: Any, global_step: Any, decay_steps: Any,
                     end_learning_rate: Any = 0.0001, power: Any = 1.0, cycle: bool = False,
                     name: Optional[str] = None) -> DecayedLearningRate:
    """Polynomial decay to ``end_learning_rate``; see
    :func:`compatopt.schedules.polynomial_decay`. Returns a zero-argument callable."""
    del name
    return _partial(lambda: schedules.polynomial_decay(learning_rate, decay_steps,
                                                       end_learning_rate, power, cycle),
                    global_step)


def cosine_decay(learning_rate: Any, global_step: Any, decay_steps: Any, alpha: Any = 0.0,
                 name: Optional[str] = None) -> DecayedLearningRate:
    """Cosine decay; see :func:`compatopt.schedules.cosine_decay` (float32 only, as TF).
    Returns a zero-argument callable."""
    del name
    return _partial(lambda: schedules.cosine_decay(learning_rate, decay_steps, alpha),
                    global_step)


def cosine_decay_restarts(learning_rate: Any, global_step: Any, first_decay_steps: Any,
                          t_mul: Any = 2.0, m_mul: Any = 1.0, alpha: Any = 0.0,
                          name: Optional[str] = None) -> DecayedLearningRate:
    """Cosine decay with warm restarts; see :func:`compatopt.schedules.cosine_decay_restarts`.
    Returns a zero-argument callable."""
    del name
    return _partial(lambda: schedules.cosine_decay_restarts(learning_rate, first_decay_steps,
                                                            t_mul, m_mul, alpha), global_step)


def linear_cosine_decay(learning_rate: Any, global_step: Any, decay_steps: Any,
                        num_periods: Any = 0.5, alpha: Any = 0.0, beta: Any = 0.001,
                        name: Optional[str] = None) -> DecayedLearningRate:
    """Linear cosine decay; see :func:`compatopt.schedules.linear_cosine_decay`.
    Returns a zero-argument callable."""
    del name
    return _partial(lambda: schedules.linear_cosine_decay(learning_rate, decay_steps,
                                                          num_periods, alpha, beta),
                    global_step)


def noisy_linear_cosine_decay(learning_rate: Any, global_step: Any, decay_steps: Any,
                              initial_variance: Any = 1.0, variance_decay: Any = 0.55,
                              num_periods: Any = 0.5, alpha: Any = 0.0, beta: Any = 0.001,
                              name: Optional[str] = None, *, key: Optional[jax.Array] = None
                              ) -> DecayedLearningRate:
    """Noisy linear cosine decay; see :func:`compatopt.schedules.noisy_linear_cosine_decay`.

    TF draws the noise from an unseeded generator; here it is drawn from ``key`` folded with
    the step (``key=None`` uses ``jax.random.key(0)``), so a given step always gets the same
    noise. Returns a zero-argument callable.
    """
    del name
    key = jax.random.key(0) if key is None else key
    return _partial(lambda: schedules.noisy_linear_cosine_decay(
        learning_rate, decay_steps, initial_variance, variance_decay, num_periods, alpha,
        beta, key=key), global_step)


def piecewise_constant(x: Any, boundaries: Sequence[Any], values: Sequence[Any],
                       name: Optional[str] = None) -> DecayedLearningRate:
    """Piecewise constant on ``x``; see :func:`compatopt.schedules.piecewise_constant`.

    As TF1, ``x`` is converted and the dtypes and lengths are checked here, at construction:
    ``ValueError`` for ``x=None``, boundaries of another dtype than ``x`` (int32 boundaries
    are cast for an int64 ``x``), values of mixed dtypes, or
    ``len(boundaries) != len(values) - 1``. Returns a zero-argument callable.
    """
    del name
    schedule = schedules.piecewise_constant_for(_read(x), boundaries, values)
    return LazyTensor(lambda: schedule(_read(x)), "piecewise_constant")


piecewise_constant_decay = piecewise_constant
