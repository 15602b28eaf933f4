"""TF1's learning-rate decay functions as schedules ``step -> learning rate``.

Each function here takes the arguments of its ``tf.compat.v1.train`` namesake minus
``global_step`` and ``name``, and returns a function of the step. That function is pure, works
under ``jit`` and ``vmap``, and can be passed as a rule's ``learning_rate`` (the rule calls it
with its apply count)::

    rule = co.adam(learning_rate=co.schedules.exponential_decay(0.001, 1000, 0.96))

Eager mode's value is the one TF1's eager code computes (spec §4), bit for bit:

* ``D`` = the dtype of ``convert_to_tensor(learning_rate)``: float32 for a Python float,
  a NumPy/JAX scalar keeps its dtype. The other arguments are ``cast`` to ``D`` (a Python
  float goes through float32 first); the step is cast to ``D`` (exact below 2**24 in float32).
* Every operation is rounded once in ``D``, in TF's bracket order. XLA would otherwise fuse
  ``a * b + c`` into an FMA and turn ``x / c`` into ``x * (1 / c)``; every operation here is
  hidden from those rewrites (an integer identity on its bits), which costs nothing on
  scalars.
* TF computes ``pow``, ``cos``, ``exp`` and ``log`` with the C library (glibc ``powf``,
  ``cosf``, ...). XLA:CPU calls the same ``pow`` and ``cos``; its own ``exp`` and ``log``
  differ from glibc's in ~5-10 % of float32 inputs, so those two are taken from the C library
  on the host for concrete arguments and otherwise computed in float64 and rounded (0.1 % of
  inputs then differ by 1 ulp from glibc; see the notes of each function).
* Low precision (float16/bfloat16) operations are computed in float32 and rounded back, as
  TF's CPU kernels do. Denormal results are flushed to zero (TF and XLA:CPU both do).

**Graph or eager.** TF1 graph mode (``Session``/``tf.function``, compatopt's default, see
:mod:`compatopt.tf1_mode`) does not run these expressions as written: Grappler rewrites the
operations whose operands are compile-time constants (spec §1.6), and the value differs
from eager mode's for 1-60 % of the steps of a non-staircase schedule (mostly by a few ulp;
by hundreds where the cosine nears -1). Each schedule reads
:func:`compatopt.tf1_mode.graph_mode` when its value is computed (at trace time under
``jit``) and then reproduces TF 2.21's Grappler-optimized graph, bit for bit, with
``r(C) = 1 / C`` folded in ``D``:

* ``x / C`` becomes ``x * r(C)``; ``pow(x, C)`` becomes ``sqrt(x)`` for ``C = 0.5``,
  ``1 / sqrt(x)`` for ``-0.5``, ``1 / x`` for ``-1``, ``x * x`` for ``2``,
  ``(x * x) * x`` for ``3`` and ``x`` for ``1``;
* constants are pushed down ``*`` chains and folded: ``C1 * (C2 * x) -> x * (C1 * C2)``
  (the learning rate joins the cosine's ``0.5`` when nothing is added after it);
* ``x * 1`` and ``x + 0`` disappear (``alpha = 0``, ``beta = 0``).

The order each function then computes is in its docstring. Only *constant* arguments are
folded: a Python or NumPy number, or a concrete array. A traced argument (the schedule built
inside ``jit`` from traced values) or a :class:`compatopt.Variable` (TF1: a ``tf.Variable``,
which Grappler cannot fold) keeps the eager operations that involve it.
``with compatopt.tf1_mode("eager"):`` gives eager mode's arithmetic (the formulas below).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from compatopt import _numerics as N
from compatopt._numerics import tf_ops as T
from compatopt.errors import InvalidArgumentError
from compatopt.tf1_mode import graph_mode

Schedule = Callable[[ArrayLike], jax.Array]

__all__ = ["exponential_decay", "natural_exp_decay", "inverse_time_decay", "polynomial_decay",
           "cosine_decay", "cosine_decay_restarts", "linear_cosine_decay",
           "noisy_linear_cosine_decay", "piecewise_constant", "piecewise_constant_decay"]

_PI = np.float32(math.pi)  # TF's ``constant_op.constant(math.pi)``: a float32 tensor.
_TF_KERNEL_NAME = {"float32": "float", "float64": "double", "float16": "half"}


# --------------------------------------------------------------------------- conversions

def _tf_name(dtype: Any) -> str:
    """The dtype's name in TF kernel error messages (``float``, ``double``, ``half`` ...)."""
    name: str = jnp.dtype(dtype).name
    return _TF_KERNEL_NAME.get(name, name)


def _convert(value: Any) -> jax.Array:
    """``convert_to_tensor(value)``, with TF's error for ``None``.

    NumPy scalars keep their dtype (``np.float64`` is a Python ``float`` subclass, but TF
    converts it to float64).
    """
    if value is None:
        raise ValueError("Attempt to convert a value (None) with an unsupported type "
                         "(<class 'NoneType'>) to a Tensor.")
    if isinstance(value, np.generic):
        return jnp.asarray(value)
    return N.to_tf_tensor(value)


def _cast(value: Any, dtype: Any) -> jax.Array:
    """``math_ops.cast(value, dtype)``: converted first (a Python float becomes float32)."""
    return N.cast(_convert(value), dtype)


def _implicit(value: Any, dtype: Any) -> jax.Array:
    """A Python number as the operand of a TF operator with a ``dtype`` tensor.

    TF converts it straight to ``dtype`` (no float32 detour); arrays are cast.
    """
    if isinstance(value, (int, float)) and not isinstance(value, (bool, np.generic)):
        return jnp.asarray(np.asarray(value, dtype=jnp.dtype(dtype)))
    return jnp.asarray(value).astype(dtype)


def _require_float(dtype: Any, op: str, expected_first: bool) -> None:
    """TF's kernel type error when an integer learning rate meets ``s / ds`` (float64)."""
    if T.is_float(dtype):
        return
    tf_int = _tf_name(dtype)
    expected, got = (tf_int, "double") if expected_first else ("double", tf_int)
    raise InvalidArgumentError(
        f"cannot compute {op} as input #1(zero-based) was expected to be a {expected} tensor "
        f"but is a {got} tensor [Op:{op}]")


def _require_float32(dtype: Any) -> None:
    """The cosine family multiplies by a float32 ``pi``: any other ``D`` fails as in TF."""
    dtype = jnp.dtype(dtype)
    if dtype != jnp.float32:
        got = _tf_name(dtype) if T.is_float(dtype) else "double"
        raise InvalidArgumentError(
            "cannot compute Mul as input #1(zero-based) was expected to be a float tensor but "
            f"is a {got} tensor [Op:Mul]")


def _step(step: Any, dtype: Any) -> jax.Array:
    """``math_ops.cast(global_step, D)``."""
    return _cast(step, dtype)


# --------------------------------------------------------------------------- graph mode

def _foldable(raw: Any) -> bool:
    """Whether Grappler folds the argument: a Python/NumPy number or a concrete array.

    A tracer, a :class:`compatopt.Variable` (TF1's ``tf.Variable``, read at run time) or any
    other object is not a graph constant.
    """
    if isinstance(raw, (bool, int, float, np.generic, np.ndarray)):
        return True
    return isinstance(raw, jax.Array) and N.is_concrete(raw)


def _folded(fn: Callable[..., jax.Array], *args: Any) -> jax.Array:
    """A Grappler-folded constant: ``fn`` on constants, computed now (even inside a trace)."""
    with jax.ensure_compile_time_eval():
        return fn(*args)


def _recip(raw: Any, dtype: Any, implicit: bool = False) -> jax.Array:
    """``r(C) = 1 / C`` folded in ``dtype`` (``C = cast(raw)``, or implicitly converted)."""
    def fold() -> jax.Array:
        c = _implicit(raw, dtype) if implicit else _cast(raw, dtype)
        return T.tf_div(jnp.ones((), dtype), c)
    return _folded(fold)


def _value(raw: Any, dtype: Any) -> float:
    """The float value of a foldable argument cast to ``dtype``."""
    return float(np.asarray(_folded(_cast, raw, dtype)))


def _sqrt(x: jax.Array) -> jax.Array:
    """TF's ``Sqrt`` (exact; float16/bfloat16 through float32)."""
    return N.opaque(jnp.sqrt(T.tf_wide(x)).astype(x.dtype))


def _graph_pow(x: jax.Array, y: jax.Array, y_value: Optional[float]) -> jax.Array:
    """``pow(x, y)`` after Grappler's ``ConvertPow`` (``y_value``: a constant exponent)."""
    if y_value == 1.0:
        return x
    if y_value == 0.5:
        return _sqrt(x)
    if y_value == -0.5:
        return T.tf_div(jnp.ones((), x.dtype), _sqrt(x))
    if y_value == -1.0:
        return T.tf_div(jnp.ones((), x.dtype), x)
    if y_value == 2.0:
        return T.tf_mul(x, x)
    if y_value == 3.0:
        return T.tf_mul(T.tf_mul(x, x), x)
    return T.tf_pow(x, y)


# --------------------------------------------------------------------------- schedules

def exponential_decay(learning_rate: ArrayLike, decay_steps: ArrayLike, decay_rate: ArrayLike,
                      staircase: bool = False) -> Schedule:
    """Exponential decay, as ``tf.compat.v1.train.exponential_decay``.

    Math (in ``D``, one rounding per operation; ``s`` = the step cast to ``D``)::

        p = s / decay_steps            # floor(p) if staircase
        lr(s) = learning_rate * pow(decay_rate, p)

    Graph mode (default): ``p = s * r(decay_steps)`` with ``r(C) = 1 / C`` folded in ``D``
    (a constant ``decay_steps``), then as above.

    Args:
      learning_rate: Python float (float32), or a scalar array whose dtype ``D`` is used.
      decay_steps: cast to ``D`` (a Python float via float32). ``0`` gives ``p = inf``
        (``nan`` at step 0), without error, as in TF.
      decay_rate: cast to ``D``.
      staircase: decay in discrete intervals (``floor(p)``).

    Returns:
      A function ``step -> learning rate`` (scalar of dtype ``D``); ``step`` is an integer
      (or float) scalar array or Python int.

    Raises:
      InvalidArgumentError: integer ``learning_rate`` (TF's ``Pow`` type error).

    Example:
      >>> import compatopt as co
      >>> sched = co.schedules.exponential_decay(0.1, decay_steps=10, decay_rate=0.5)
      >>> print(sched(20))  # TF1: 0.025
      0.025
    """
    lr = _convert(learning_rate)
    dtype = lr.dtype
    _require_float(dtype, "Pow", expected_first=True)
    ds = _cast(decay_steps, dtype)
    rate = _cast(decay_rate, dtype)
    r_ds = _recip(decay_steps, dtype) if _foldable(decay_steps) else None

    def schedule(step: ArrayLike) -> jax.Array:
        s = _step(step, dtype)
        p = T.tf_mul(s, r_ds) if graph_mode() and r_ds is not None else T.tf_div(s, ds)
        if staircase:
            p = jnp.floor(p)
        return T.tf_mul(lr, T.tf_pow(rate, p))

    return schedule


def natural_exp_decay(learning_rate: ArrayLike, decay_steps: ArrayLike, decay_rate: ArrayLike,
                      staircase: bool = False) -> Schedule:
    """Natural exponential decay, as ``tf.compat.v1.train.natural_exp_decay``.

    TF 2.x computes ``e = exp(-decay_rate)`` once, in ``decay_rate``'s own dtype (float32 for
    a Python float), then runs :func:`exponential_decay` with rate ``e``::

        p = s / decay_steps            # floor(p) if staircase
        lr(s) = learning_rate * pow(cast(exp(-decay_rate), D), p)

    This is not ``learning_rate * exp(-decay_rate * p)`` (TF 1.x's formula; the last bits
    differ). ``exp`` is the C library's ``expf`` (exact) when ``decay_rate`` is concrete.
    Graph mode: as :func:`exponential_decay` (``p = s * r(decay_steps)``).

    Args:
      learning_rate: Python float (float32) or scalar array (dtype ``D``).
      decay_steps: cast to ``D``.
      decay_rate: the rate ``k`` of ``exp(-k * p)``.
      staircase: decay in discrete intervals.

    Returns:
      A function ``step -> learning rate`` (dtype ``D``).

    Example:
      >>> import compatopt as co
      >>> sched = co.schedules.natural_exp_decay(0.1, decay_steps=1, decay_rate=0.5)
      >>> print(sched(2))  # TF1: 0.036787946
      0.036787946
    """
    return exponential_decay(learning_rate, decay_steps, natural_exp_rate(decay_rate),
                             staircase)


def natural_exp_rate(decay_rate: ArrayLike) -> jax.Array:
    """``exp(-decay_rate)`` as TF's ``natural_exp_decay`` computes it, once, at construction.

    In ``decay_rate``'s converted dtype (float32 for a Python float), with the C library's
    ``expf``/``exp`` when ``decay_rate`` is concrete.
    """
    return T.tf_transcendental("exp", -_convert(decay_rate))


def inverse_time_decay(learning_rate: ArrayLike, decay_steps: ArrayLike, decay_rate: ArrayLike,
                       staircase: bool = False) -> Schedule:
    """Inverse-time decay, as ``tf.compat.v1.train.inverse_time_decay``.

    Math (in ``D``)::

        p = s / decay_steps            # floor(p) if staircase
        lr(s) = learning_rate / (1 + (decay_rate * p))

    Graph mode (default; ``r(C) = 1 / C`` folded in ``D``, constant ``decay_steps``)::

        staircase:  lr(s) = learning_rate / (1 + (decay_rate * floor(s * r(decay_steps))))
        otherwise:  lr(s) = learning_rate / (1 + (s * k)),  k = decay_rate * r(decay_steps)

    with ``k`` folded for a constant ``decay_rate`` in float32/float64 (float16/bfloat16 and a
    variable rate: ``decay_rate * (s * r(decay_steps))``).

    Args:
      learning_rate: Python float (float32) or scalar array (dtype ``D``).
      decay_steps: cast to ``D``.
      decay_rate: cast to ``D``.
      staircase: decay in discrete intervals.

    Returns:
      A function ``step -> learning rate`` (dtype ``D``).

    Example:
      >>> import compatopt as co
      >>> print(co.schedules.inverse_time_decay(0.1, decay_steps=10, decay_rate=0.5)(20))
      0.05
    """
    lr = _convert(learning_rate)
    dtype = lr.dtype
    _require_float(dtype, "Mul", expected_first=True)
    ds = _cast(decay_steps, dtype)
    rate = _cast(decay_rate, dtype)
    one = jnp.ones((), dtype)
    r_ds = _recip(decay_steps, dtype) if _foldable(decay_steps) else None
    k = None
    if (r_ds is not None and not staircase and _foldable(decay_rate)
            and jnp.dtype(dtype) not in N.LOW_PRECISION):
        k = _folded(T.tf_mul, _folded(_cast, decay_rate, dtype), r_ds)

    def schedule(step: ArrayLike) -> jax.Array:
        s = _step(step, dtype)
        if graph_mode() and k is not None:
            return T.tf_div(lr, T.tf_add(one, T.tf_mul(s, k)))
        p = T.tf_mul(s, r_ds) if graph_mode() and r_ds is not None else T.tf_div(s, ds)
        if staircase:
            p = jnp.floor(p)
        return T.tf_div(lr, T.tf_add(one, T.tf_mul(rate, p)))

    return schedule


def polynomial_decay(learning_rate: ArrayLike, decay_steps: ArrayLike,
                     end_learning_rate: ArrayLike = 0.0001, power: ArrayLike = 1.0,
                     cycle: bool = False) -> Schedule:
    """Polynomial decay, as ``tf.compat.v1.train.polynomial_decay``.

    Math (in ``D``; ``ds = cast(decay_steps, D)``)::

        no cycle:  s' = min(s, ds);  ds' = ds
        cycle:     mult = 1 if s == 0 else ceil(s / decay_steps);  ds' = ds * mult;  s' = s
        p = s' / ds'
        lr(s) = ((learning_rate - end_learning_rate) * pow(1 - p, power)) + end_learning_rate

    In ``ceil(s / decay_steps)`` a Python ``decay_steps`` is converted straight to ``D`` (no
    float32 detour), unlike ``ds``: TF divides by the raw argument there.

    Graph mode (default; constant arguments, ``r(C) = 1 / C`` folded in ``D``)::

        no cycle:  p = min(s, ds) * r(ds)
        cycle:     mult = 1 if s == 0 else ceil(s * r(decay_steps));  p = s / (ds * mult)
        x = 1 - p;  d = learning_rate - end_learning_rate
        lr(s) = (P(x) * d) + end_learning_rate

    where ``P(x) = pow(x, power)`` except ``power = 1: x``, ``0.5: sqrt(x)``,
    ``-0.5: 1 / sqrt(x)``, ``-1: 1 / x``, ``2: x * x``, ``3: (x * x) * x``; for ``power = 3``
    and a constant ``d`` (float32/float64) the constant is pushed down:
    ``lr(s) = ((x * x) * (d * x)) + end_learning_rate``. ``cycle=True`` with ``D`` other than
    float32 fails in TF1 graph mode (``TypeError`` from ``where``: the ``1.0`` is float32),
    and so here.

    Args:
      learning_rate: Python float (float32) or scalar array (dtype ``D``).
      decay_steps: steps to reach ``end_learning_rate`` (cast to ``D``).
      end_learning_rate: final learning rate (cast to ``D``).
      power: exponent (cast to ``D``).
      cycle: restart the decay every multiple of ``decay_steps``.

    Returns:
      A function ``step -> learning rate`` (dtype ``D``).

    Raises:
      TypeError: graph mode, ``cycle=True`` and ``D`` is not float32 (when called).

    Example:
      >>> import compatopt as co
      >>> sched = co.schedules.polynomial_decay(0.1, 100, end_learning_rate=0.0, power=2.0)
      >>> print(sched(50), sched(500))  # TF1: 0.025 0.0
      0.025 0.0
    """
    lr = _convert(learning_rate)
    dtype = lr.dtype
    _require_float(dtype, "Pow", expected_first=False)
    end = _cast(end_learning_rate, dtype)
    pw = _cast(power, dtype)
    ds = _cast(decay_steps, dtype)
    ds_raw = _implicit(decay_steps, dtype)
    one = jnp.ones((), dtype)
    r_ds = None
    if _foldable(decay_steps):
        r_ds = _recip(decay_steps, dtype, implicit=cycle)
    pw_value = _value(power, dtype) if _foldable(power) else None
    push_down = (pw_value == 3.0 and _foldable(learning_rate) and _foldable(end_learning_rate)
                 and jnp.dtype(dtype) not in N.LOW_PRECISION)

    def schedule(step: ArrayLike) -> jax.Array:
        graph = graph_mode()
        if graph and cycle and jnp.dtype(dtype) != jnp.float32:
            raise TypeError(f"Input 'e' of 'SelectV2' Op has type {jnp.dtype(dtype).name} that "
                            "does not match type float32 of argument 't'.")
        s = _step(step, dtype)
        r = r_ds if graph else None
        if cycle:
            q = T.tf_mul(s, r) if r is not None else T.tf_div(s, ds_raw)
            mult = jnp.where(s == 0, one, jnp.ceil(q))
            p = T.tf_div(s, T.tf_mul(ds, mult))
        else:
            s = jnp.minimum(s, ds)
            p = T.tf_mul(s, r) if r is not None else T.tf_div(s, ds)
        x = T.tf_sub(one, p)
        d = T.tf_sub(lr, end)
        if not graph:
            return T.tf_add(T.tf_mul(d, T.tf_pow(x, pw)), end)
        if push_down:
            return T.tf_add(T.tf_mul(T.tf_mul(x, x), T.tf_mul(d, x)), end)
        return T.tf_add(T.tf_mul(_graph_pow(x, pw, pw_value), d), end)

    return schedule


def _one_minus_alpha(alpha: Any, dtype: Any) -> jax.Array:
    """CosineDecay's ``(1 - alpha)``: Python arithmetic on the raw argument, then ``D``.

    A Python float is subtracted in double and rounded once to ``D``; a NumPy/JAX scalar is
    subtracted in its own dtype.
    """
    if alpha is None:
        _convert(alpha)  # raises TF's ValueError
    assert alpha is not None  # never fires: ``_convert(None)`` raised
    return _implicit(1 - alpha, dtype)


def _cosine_tail(learning_rate: Any, lr: jax.Array, alpha: Any, one_minus_alpha: jax.Array,
                 alpha_d: jax.Array
                 ) -> Optional[Callable[[jax.Array, Optional[jax.Array]], jax.Array]]:
    """Graph mode's ``learning_rate * (((1 - alpha) * ((0.5 * m) * h)) + alpha)``.

    For the cosines, ``h = cos(...) + 1`` and ``m = pow(m_mul, i)`` (restarts) or None (no
    factor). Grappler pushes the constants down and folds them (``k``)::

        alpha != 0:                h * (m * k) + alpha, * lr    k = 0.5 * (1 - alpha)
        alpha == 0, constant lr:   h * (m * k)                  k = 0.5 * lr
        alpha == 0, variable lr:   lr * (h * (0.5 * m))

    Returns ``tail(h, m)``, or None when ``alpha`` is not a constant (eager order then).
    """
    if not _foldable(alpha):
        return None
    half = jnp.float32(0.5)

    def times(m: Optional[jax.Array], k: jax.Array) -> jax.Array:
        return k if m is None else T.tf_mul(m, k)

    if _value(alpha, lr.dtype) != 0.0:
        k = _folded(T.tf_mul, half, one_minus_alpha)
        return lambda h, m: T.tf_mul(lr, T.tf_add(T.tf_mul(h, times(m, k)), alpha_d))
    if _foldable(learning_rate):
        k = _folded(T.tf_mul, half, lr)
        return lambda h, m: T.tf_mul(h, times(m, k))
    return lambda h, m: T.tf_mul(lr, T.tf_mul(h, half if m is None else T.tf_mul(half, m)))


def cosine_decay(learning_rate: ArrayLike, decay_steps: ArrayLike,
                 alpha: ArrayLike = 0.0) -> Schedule:
    """Cosine decay (SGDR without restarts), as ``tf.compat.v1.train.cosine_decay``.

    Math (``D`` must be float32; ``PI = float32(pi)``)::

        s' = min(s, ds);  f = s' / ds
        c = 0.5 * (1 + cos(PI * f))
        lr(s) = learning_rate * (((1 - alpha) * c) + alpha)

    where ``1 - alpha`` is computed by Python on the raw ``alpha`` (double for a Python float)
    and only then converted to float32, while the ``+ alpha`` converts ``alpha`` itself.

    Graph mode (default; constant arguments folded, ``r(C) = 1 / C``)::

        h = cos(min(s, ds) * (PI * r(ds))) + 1
        alpha != 0:  lr(s) = learning_rate * ((h * (0.5 * (1 - alpha))) + alpha)
        alpha == 0:  lr(s) = h * (0.5 * learning_rate)

    (``0.5 * learning_rate`` folded only for a constant ``learning_rate``; a variable one:
    ``learning_rate * (h * 0.5)``.)

    Args:
      learning_rate: Python float or float32 scalar (other dtypes fail, as in TF).
      decay_steps: steps to decay over (cast to float32).
      alpha: minimum learning rate as a fraction of ``learning_rate``.

    Returns:
      A function ``step -> learning rate`` (float32).

    Raises:
      InvalidArgumentError: ``learning_rate`` is not float32 (TF: ``Mul`` type error).

    Example:
      >>> import compatopt as co
      >>> print(co.schedules.cosine_decay(0.1, 100)(50))  # TF1 too (cos(float32(pi)/2) != 0)
      0.049999997

    References: Loshchilov & Hutter, "SGDR: Stochastic Gradient Descent with Warm Restarts",
    ICLR 2017.
    """
    lr = _convert(learning_rate)
    dtype = lr.dtype
    _require_float32(dtype)
    ds = _cast(decay_steps, dtype)
    one_minus_alpha = _one_minus_alpha(alpha, dtype)
    alpha_d = _implicit(alpha, dtype)
    half = jnp.float32(0.5)
    k = _folded(T.tf_mul, _PI, _recip(decay_steps, dtype)) if _foldable(decay_steps) else None
    tail = _cosine_tail(learning_rate, lr, alpha, one_minus_alpha, alpha_d)

    def schedule(step: ArrayLike) -> jax.Array:
        s = jnp.minimum(_step(step, dtype), ds)
        if graph_mode() and k is not None:
            h = T.tf_add(T.tf_cos(T.tf_mul(s, k)), jnp.float32(1.0))
        else:
            h = T.tf_add(jnp.float32(1.0), T.tf_cos(T.tf_mul(_PI, T.tf_div(s, ds))))
        if graph_mode() and tail is not None:
            return tail(h, None)
        return T.tf_mul(lr, T.tf_add(T.tf_mul(one_minus_alpha, T.tf_mul(half, h)), alpha_d))

    return schedule


def cosine_decay_restarts(learning_rate: ArrayLike, first_decay_steps: ArrayLike,
                          t_mul: ArrayLike = 2.0, m_mul: ArrayLike = 1.0,
                          alpha: ArrayLike = 0.0) -> Schedule:
    """Cosine decay with warm restarts, as ``tf.compat.v1.train.cosine_decay_restarts``.

    Math (float32; ``t``, ``m``, ``alpha``, ``fds`` cast to float32; ``PI = float32(pi)``)::

        f = s / fds
        if t == 1:  i = floor(f);  f = f - i
        else:       i = floor(log(1 - f * (1 - t)) / log(t))
                    sum_r = (1 - pow(t, i)) / (1 - t)
                    f = (f - sum_r) / pow(t, i)
        c = (0.5 * pow(m, i)) * (1 + cos(PI * f))
        lr(s) = learning_rate * (((1 - alpha) * c) + alpha)

    ``log`` is glibc's ``logf`` for a concrete ``t``; for the step-dependent one it is computed
    in float64 and rounded (1 ulp from glibc for ~0.1 % of inputs). It matters only through
    ``floor``, i.e. at a step where ``log(...) / log(t)`` lands within an ulp of an integer.

    Graph mode (default; constant arguments folded, ``r(C) = 1 / C``)::

        f = s * r(fds)
        t != 1:  i = floor(log(1 - f * (1 - t)) * r(log(t)))
                 sum_r = (1 - pow(t, i)) * r(1 - t);  f = (f - sum_r) / pow(t, i)
        h = cos(PI * f) + 1
        alpha != 0:  lr(s) = learning_rate * ((h * (pow(m, i) * (0.5 * (1 - alpha)))) + alpha)
        alpha == 0:  lr(s) = h * (pow(m, i) * (0.5 * learning_rate))

    (a variable ``learning_rate`` with ``alpha == 0``: ``learning_rate * (h * (0.5 *
    pow(m, i)))``).

    Args:
      learning_rate: Python float or float32 scalar (other dtypes fail, as in TF).
      first_decay_steps: length of the first period.
      t_mul: factor by which each period is longer than the previous one.
      m_mul: factor applied to the peak learning rate at each restart.
      alpha: minimum learning rate as a fraction of ``learning_rate``.

    Returns:
      A function ``step -> learning rate`` (float32).

    Example:
      >>> import compatopt as co
      >>> sched = co.schedules.cosine_decay_restarts(0.1, 10, t_mul=1.0, m_mul=0.5)
      >>> print(sched(10), sched(20))  # TF1: 0.05 0.025
      0.05 0.025
    """
    lr = _convert(learning_rate)
    dtype = lr.dtype
    _require_float32(dtype)
    fds = _cast(first_decay_steps, dtype)
    alpha_d = _cast(alpha, dtype)
    t = _cast(t_mul, dtype)
    m = _cast(m_mul, dtype)
    one = jnp.float32(1.0)
    geometric_only = N.is_concrete(t) and bool(t != 1.0)
    constant_only = N.is_concrete(t) and bool(t == 1.0)
    if not constant_only:
        log_t = T.tf_transcendental("log", t)
        one_minus_t = T.tf_sub(one, t)
    r_fds = _recip(first_decay_steps, dtype) if _foldable(first_decay_steps) else None
    r_log_t = r_one_minus_t = None
    if _foldable(t_mul) and _value(t_mul, dtype) != 1.0:
        t_c = _folded(_cast, t_mul, dtype)
        r_log_t = _folded(lambda: T.tf_div(one, T.tf_transcendental("log", t_c)))
        r_one_minus_t = _folded(lambda: T.tf_div(one, T.tf_sub(one, t_c)))
    tail = _cosine_tail(learning_rate, lr, alpha, T.tf_sub(one, alpha_d), alpha_d)

    def schedule(step: ArrayLike) -> jax.Array:
        graph = graph_mode()
        s = _step(step, dtype)
        f = T.tf_mul(s, r_fds) if graph and r_fds is not None else T.tf_div(s, fds)
        if not geometric_only:
            i_c = jnp.floor(f)
            f_c = T.tf_sub(f, i_c)
        if not constant_only:
            log_arg = T.tf_sub(one, T.tf_mul(f, one_minus_t))
            log_f = T.tf_transcendental("log", log_arg)
            if graph and r_log_t is not None and r_one_minus_t is not None:
                i_g = jnp.floor(T.tf_mul(log_f, r_log_t))
                t_pow = T.tf_pow(t, i_g)
                sum_r = T.tf_mul(T.tf_sub(one, t_pow), r_one_minus_t)
            else:
                i_g = jnp.floor(T.tf_div(log_f, log_t))
                t_pow = T.tf_pow(t, i_g)
                sum_r = T.tf_div(T.tf_sub(one, t_pow), one_minus_t)
            f_g = T.tf_div(T.tf_sub(f, sum_r), t_pow)
        if geometric_only:
            i, f = i_g, f_g
        elif constant_only:
            i, f = i_c, f_c
        else:
            i, f = jnp.where(t == 1.0, i_c, i_g), jnp.where(t == 1.0, f_c, f_g)
        if graph and tail is not None:
            return tail(T.tf_add(T.tf_cos(T.tf_mul(_PI, f)), one), T.tf_pow(m, i))
        c = T.tf_mul(T.tf_mul(jnp.float32(0.5), T.tf_pow(m, i)),
                     T.tf_add(one, T.tf_cos(T.tf_mul(_PI, f))))
        return T.tf_mul(lr, T.tf_add(T.tf_mul(T.tf_sub(one, alpha_d), c), alpha_d))

    return schedule


def _linear_cosine(lr: jax.Array, ds: jax.Array, s: jax.Array, num_periods: jax.Array,
                   alpha: jax.Array, beta: jax.Array, noise: Optional[jax.Array]) -> jax.Array:
    """Eager mode's linear cosine (``noise`` added to the linear part)."""
    lin = T.tf_div(T.tf_sub(ds, s), ds)
    if noise is not None:
        lin = T.tf_add(lin, noise)
    f = T.tf_div(s, ds)
    fr = T.tf_mul(T.tf_mul(jnp.float32(2.0), num_periods), f)
    c = T.tf_mul(jnp.float32(0.5), T.tf_add(jnp.float32(1.0), T.tf_cos(T.tf_mul(_PI, fr))))
    return T.tf_mul(lr, T.tf_add(T.tf_mul(T.tf_add(alpha, lin), c), beta))


def _graph_linear_cosine(raw: dict, lr: jax.Array, ds: jax.Array, num_periods: jax.Array,
                         alpha: jax.Array, beta: jax.Array
                         ) -> Optional[Callable[[jax.Array, Optional[jax.Array]], jax.Array]]:
    """Graph mode's linear cosine, ``(s', noise) -> lr``; None unless ``decay_steps``,
    ``num_periods``, ``alpha`` and ``beta`` are constants (then eager order).

    ``raw`` holds the arguments as given (``learning_rate``, ``decay_steps``, ...).
    """
    if not all(_foldable(raw[k]) for k in ("decay_steps", "num_periods", "alpha", "beta")):
        return None
    dtype = lr.dtype
    one, half = jnp.float32(1.0), jnp.float32(0.5)
    r_ds = _recip(raw["decay_steps"], dtype)
    k_cos = _folded(lambda: T.tf_mul(_PI, T.tf_mul(T.tf_mul(jnp.float32(2.0), num_periods),
                                                   r_ds)))
    alpha0 = _value(raw["alpha"], dtype) == 0.0
    beta0 = _value(raw["beta"], dtype) == 0.0
    lr_const = _foldable(raw["learning_rate"])
    k_lin = _folded(T.tf_mul, lr, r_ds) if lr_const else None
    k_half = _folded(T.tf_mul, half, lr) if lr_const else None

    def value(s: jax.Array, noise: Optional[jax.Array]) -> jax.Array:
        h = T.tf_add(T.tf_cos(T.tf_mul(s, k_cos)), one)
        sub = T.tf_sub(ds, s)
        if alpha0 and beta0 and noise is None and k_lin is not None:
            return T.tf_mul(T.tf_mul(h, half), T.tf_mul(sub, k_lin))
        lin = T.tf_mul(sub, r_ds)
        if noise is not None:
            lin = T.tf_add(noise, lin)
        if not alpha0:
            lin = T.tf_add(alpha, lin)
        if beta0 and k_half is not None and (not alpha0 or noise is not None):
            return T.tf_mul(lin, T.tf_mul(h, k_half))
        m = T.tf_mul(lin, T.tf_mul(h, half))
        return T.tf_mul(lr, m if beta0 else T.tf_add(beta, m))

    return value


def linear_cosine_decay(learning_rate: ArrayLike, decay_steps: ArrayLike,
                        num_periods: ArrayLike = 0.5, alpha: ArrayLike = 0.0,
                        beta: ArrayLike = 0.001) -> Schedule:
    """Linear cosine decay, as ``tf.compat.v1.train.linear_cosine_decay``.

    Math (float32; every argument cast to float32; ``PI = float32(pi)``)::

        s' = min(s, ds)
        lin = (ds - s') / ds
        f = s' / ds;  fr = (2 * num_periods) * f
        c = 0.5 * (1 + cos(PI * fr))
        lr(s) = learning_rate * (((alpha + lin) * c) + beta)

    Args:
      learning_rate: Python float or float32 scalar (other dtypes fail, as in TF).
      decay_steps: steps to decay over.
      num_periods: number of cosine periods in the decay.
      alpha, beta: see the formula.

    Graph mode (default; constant arguments folded, ``r(C) = 1 / C``)::

        h = cos(s' * (PI * ((2 * num_periods) * r(ds)))) + 1;  c = h * 0.5
        lin = (ds - s') * r(ds)
        lr(s) = learning_rate * (((alpha + lin) * c) + beta)

    where ``alpha + `` and `` + beta`` drop out when they are 0, and with ``beta == 0`` and a
    constant ``learning_rate`` the learning rate is folded: ``(alpha + lin) * (h * (0.5 *
    learning_rate))``, or for ``alpha == 0`` too ``c * ((ds - s') * (learning_rate *
    r(ds)))``. A variable ``decay_steps``, ``num_periods``, ``alpha`` or ``beta``: eager
    order.

    Returns:
      A function ``step -> learning rate`` (float32).

    Example:
      >>> import compatopt as co
      >>> print(co.schedules.linear_cosine_decay(0.1, 100, beta=0.0)(0))
      0.1

    References: Bello et al., "Neural Optimizer Search with Reinforcement Learning", ICML 2017.
    """
    lr = _convert(learning_rate)
    dtype = lr.dtype
    _require_float32(dtype)
    ds = _cast(decay_steps, dtype)
    args = (_cast(num_periods, dtype), _cast(alpha, dtype), _cast(beta, dtype))
    graph_value = _graph_linear_cosine(
        {"learning_rate": learning_rate, "decay_steps": decay_steps,
         "num_periods": num_periods, "alpha": alpha, "beta": beta}, lr, ds, *args)

    def schedule(step: ArrayLike) -> jax.Array:
        s = jnp.minimum(_step(step, dtype), ds)
        if graph_mode() and graph_value is not None:
            return graph_value(s, None)
        return _linear_cosine(lr, ds, s, *args, noise=None)

    return schedule


def noisy_linear_cosine_decay(learning_rate: ArrayLike, decay_steps: ArrayLike,
                              initial_variance: ArrayLike = 1.0,
                              variance_decay: ArrayLike = 0.55, num_periods: ArrayLike = 0.5,
                              alpha: ArrayLike = 0.0, beta: ArrayLike = 0.001, *,
                              key: jax.Array) -> Schedule:
    """Noisy linear cosine decay, as ``tf.compat.v1.train.noisy_linear_cosine_decay``.

    Math (float32): :func:`linear_cosine_decay` with ``lin`` replaced by ``lin + noise``::

        std = sqrt(initial_variance / pow(1 + s', variance_decay))
        noise = (z * std) + 0,   z ~ N(0, 1)

    TF draws ``z`` from an unseeded generator, so its values cannot be reproduced; here ``z``
    is ``jax.random.normal(jax.random.fold_in(key, step))``: the same key and step always give
    the same learning rate. Everything but ``z`` is TF's arithmetic, bit for bit.

    Graph mode (default): ``std`` as above (``pow`` rewritten as in
    :func:`polynomial_decay` for a constant ``variance_decay`` of 0.5, 2 ...), ``noise =
    std * z``, and the rest as :func:`linear_cosine_decay`'s graph mode with ``lin`` replaced
    by ``noise + lin``.

    Args:
      learning_rate: Python float or float32 scalar (other dtypes fail, as in TF).
      decay_steps: steps to decay over.
      initial_variance, variance_decay: the noise's variance schedule.
      num_periods, alpha, beta: as :func:`linear_cosine_decay`.
      key: a JAX PRNG key (required, keyword only).

    Returns:
      A function ``step -> learning rate`` (float32).

    Raises:
      ValueError: ``learning_rate`` is not float32 (TF fails converting ``std``).

    Example:
      >>> import jax, compatopt as co
      >>> sched = co.schedules.noisy_linear_cosine_decay(0.1, 100, key=jax.random.key(0))
      >>> bool(sched(3) == sched(3))
      True
    """
    lr = _convert(learning_rate)
    dtype = lr.dtype
    if dtype != jnp.float32:
        got = jnp.dtype(dtype).name if T.is_float(dtype) else "float64"
        raise ValueError(
            f"stddev: Tensor conversion requested dtype float32 for Tensor with dtype {got}")
    ds = _cast(decay_steps, dtype)
    var0 = _cast(initial_variance, dtype)
    var_decay = _cast(variance_decay, dtype)
    args = (_cast(num_periods, dtype), _cast(alpha, dtype), _cast(beta, dtype))
    one = jnp.float32(1.0)
    graph_value = _graph_linear_cosine(
        {"learning_rate": learning_rate, "decay_steps": decay_steps,
         "num_periods": num_periods, "alpha": alpha, "beta": beta}, lr, ds, *args)
    vd_value = _value(variance_decay, dtype) if _foldable(variance_decay) else None

    def schedule(step: ArrayLike) -> jax.Array:
        graph = graph_mode()
        step_i = _convert(step)
        s = jnp.minimum(_step(step_i, dtype), ds)
        base = T.tf_add(one, s)
        denom = _graph_pow(base, var_decay, vd_value) if graph else T.tf_pow(base, var_decay)
        std = _sqrt(T.tf_div(var0, denom))
        z = jax.random.normal(jax.random.fold_in(key, step_i.astype(jnp.uint32)), (),
                              jnp.float32)
        if graph and graph_value is not None:
            return graph_value(s, T.tf_mul(std, z))
        noise = T.tf_add(T.tf_mul(z, std), jnp.float32(0.0))
        return _linear_cosine(lr, ds, s, *args, noise=noise)

    return schedule


# --------------------------------------------------------------------------- piecewise

def _dtype_repr(dtype: Any) -> str:
    return f"<dtype: '{jnp.dtype(dtype).name}'>"


def check_boundaries(x_dtype: Any, boundaries: Sequence[jax.Array]) -> list[jax.Array]:
    """TF1's dtype rule for ``piecewise_constant`` boundaries against the step ``x``.

    A boundary of another dtype than ``x`` is cast only when it is int32 and ``x`` int64.

    Returns:
      The boundaries, cast where allowed.

    Raises:
      ValueError: ``Boundaries (<dtype>) must have the same dtype as x (<dtype>).``
    """
    x_dtype = jnp.dtype(x_dtype)
    out = []
    for b in boundaries:
        if b.dtype != x_dtype:
            if b.dtype == jnp.int32 and x_dtype == jnp.int64:
                b = b.astype(x_dtype)
            else:
                raise ValueError(f"Boundaries ({_dtype_repr(b.dtype)}) must have the same "
                                 f"dtype as x ({_dtype_repr(x_dtype)}).")
        out.append(b)
    return out


def _flatten(seq: Any) -> list[Any]:
    return list(jax.tree_util.tree_leaves(seq, is_leaf=lambda v: v is None))


def piecewise_constant(boundaries: Sequence[ArrayLike], values: Sequence[ArrayLike]) -> Schedule:
    """Piecewise constant, as ``tf.compat.v1.train.piecewise_constant`` (both modes).

    With ``b = boundaries`` and ``v = values`` (``len(v) == len(b) + 1``)::

        lr(x) = v[0]    if x <= b[0]
                v[i]    if b[i-1] < x <= b[i]     (a boundary belongs to the lower interval)
                v[-1]   if x > b[-1]

    No arithmetic: the result is one of ``values``, unchanged. ``x`` (the step) is converted as
    TF converts it (a Python int is int32); each boundary must have ``x``'s dtype, except that
    int32 boundaries are cast for an int64 ``x`` (TF1's rule; checked when the schedule is
    called). TF evaluates the cases with ``exclusive=True``: for unsorted boundaries it raises
    when two cases hold; here that is raised for a concrete step, and under ``jit`` the first
    matching case (in TF's order: first, last, middle ones) is returned.

    Args:
      boundaries: increasing scalars (Python ints become int32).
      values: scalars or arrays of one dtype (Python floats become float32).

    Returns:
      A function ``x -> value`` (``values``'s dtype).

    Raises:
      ValueError: values of different dtypes, or ``len(boundaries) != len(values) - 1``
        (TF's messages).

    Example:
      >>> import compatopt as co
      >>> sched = co.schedules.piecewise_constant([100, 200], [1.0, 0.5, 0.1])
      >>> print(sched(100), sched(101), sched(201))
      1.0 0.5 0.1
    """
    bounds = [_convert(b) for b in _flatten(boundaries)]
    vals = [_convert(v) for v in _flatten(values)]
    for v in vals[1:]:
        if v.dtype != vals[0].dtype:
            raise ValueError("Values must have elements all with the same dtype "
                             f"({_dtype_repr(vals[0].dtype)} vs {_dtype_repr(v.dtype)}).")
    if len(bounds) != len(vals) - 1:
        raise ValueError("The length of boundaries should be 1 less than the length of values")
    stacked = jnp.stack(vals)

    def schedule(x: ArrayLike) -> jax.Array:
        x = _convert(x)
        b = check_boundaries(x.dtype, bounds)
        preds = [x <= b[0], x > b[-1]]
        preds += [(x > lo) & (x <= hi) for lo, hi in zip(b[:-1], b[1:])]
        order = [0, len(vals) - 1] + list(range(1, len(vals) - 1))
        if N.is_concrete(x) and all(N.is_concrete(p) for p in preds):
            hits = [bool(p) for p in preds]
            if sum(hits) > 1:
                raise InvalidArgumentError(
                    "Input error: exclusive=True: more than 1 conditions evaluated as True: "
                    f"{hits}")
        index = jnp.select(preds, [jnp.int32(k) for k in order], jnp.int32(0))
        return stacked[index]

    return schedule


piecewise_constant_decay = piecewise_constant


def piecewise_constant_for(x: ArrayLike, boundaries: Sequence[ArrayLike],
                           values: Sequence[ArrayLike]) -> Schedule:
    """:func:`piecewise_constant` with TF1's construction-time checks against ``x``.

    ``tf.compat.v1.train.piecewise_constant(x, ...)`` converts ``x`` (``None`` fails) and
    checks the boundaries' dtypes against it before anything else; the returned schedule
    takes a step of ``x``'s dtype.
    """
    bounds = check_boundaries(_convert(x).dtype, [_convert(b) for b in _flatten(boundaries)])
    return piecewise_constant(bounds, values)
