"""TF ops as TF computes them: tensor conversion, casts, ``sign``, and the scalar
arithmetic of the decay functions (one rounding per op, in the operands' dtype)."""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from compatopt._numerics.barriers import opaque
from compatopt._numerics.dtypes import LOW_PRECISION, UINT_OF_WIDTH, is_concrete


def to_tf_tensor(value: Any) -> jax.Array:
    """What ``tf.convert_to_tensor`` makes of a hyper-parameter.

    A Python float becomes float32, a Python int int32, a bool bool; NumPy scalars, NumPy
    arrays and JAX arrays (including tracers) keep their dtype.
    """
    if isinstance(value, (np.generic, np.ndarray)):  # np.float64 is a float subclass
        return jnp.asarray(value)
    if isinstance(value, bool):
        return jnp.asarray(value)
    if isinstance(value, int):
        return jnp.asarray(np.int32(value))
    if isinstance(value, float):
        return jnp.asarray(np.float32(value))
    return jnp.asarray(value)


def cast(value: jax.Array, dtype: Any) -> jax.Array:
    """TF's ``math_ops.cast`` of an already converted hyper-parameter to ``dtype``."""
    return jnp.asarray(value).astype(dtype)


def sign(x: jax.Array) -> jax.Array:
    """Eigen's ``sign``: ``(x > 0) - (x < 0)``, so ``sign(-0.0) == +0.0``."""
    return (x > 0).astype(x.dtype) - (x < 0).astype(x.dtype)


def is_float(dtype: Any) -> bool:
    """A floating-point dtype (bfloat16 included)."""
    return jnp.issubdtype(jnp.dtype(dtype), jnp.floating)


# ------------------------------------------------------------------- scalar arithmetic
# One rounding per operation, in the operands' dtype, hidden from XLA's rewrites. float16 and
# bfloat16 compute in float32 and round back, as TF's kernels do (exact for + - * /).
#
# Every result passes through ``opaque`` (barriers.py); divisors and exponents are also made
# data-dependent on the other operand, so a constant or broadcast one is not rewritten.

def _bits(x: jax.Array) -> jax.Array:
    return lax.bitcast_convert_type(x, UINT_OF_WIDTH[x.dtype.itemsize])


def _all_ones(x: jax.Array) -> jax.Array:
    """``bits(x) == ~0`` (one NaN pattern), as 0/1 of ``x``'s unsigned type."""
    uint = UINT_OF_WIDTH[x.dtype.itemsize]
    return (_bits(x) == jnp.asarray(np.iinfo(uint).max, uint)).astype(uint)


def tf_wide(x: jax.Array | np.floating) -> jax.Array | np.floating:
    return x.astype(jnp.float32) if x.dtype in LOW_PRECISION else x


def tf_add(a: jax.Array, b: jax.Array) -> jax.Array:
    return opaque((tf_wide(a) + tf_wide(b)).astype(a.dtype))


def tf_sub(a: jax.Array, b: jax.Array) -> jax.Array:
    return opaque((tf_wide(a) - tf_wide(b)).astype(a.dtype))


def tf_mul(a: jax.Array | np.floating, b: jax.Array) -> jax.Array:
    # ``a`` may be a NumPy float scalar (the schedules' float32 ``pi``).
    return opaque((tf_wide(a) * tf_wide(b)).astype(a.dtype))


def tf_div(x: jax.Array, y: jax.Array) -> jax.Array:
    """Correctly rounded ``x / y``, even for a constant or broadcast ``y`` under jit/vmap.

    XLA rewrites a division by a constant or by a broadcast scalar into a multiplication by
    the reciprocal. Making the divisor depend on ``x`` (``bits(y) | (bits(x) == ~0)``, an
    identity unless ``x`` is that NaN, when the quotient is NaN anyway) keeps it a division.
    """
    dtype = x.dtype
    x, y = jnp.broadcast_arrays(tf_wide(x), tf_wide(y))
    y = lax.bitcast_convert_type(_bits(y) | _all_ones(x), y.dtype)
    return opaque((x / y).astype(dtype))


def tf_pow(x: jax.Array, y: jax.Array) -> jax.Array:
    """C ``pow``: XLA:CPU calls the same glibc ``powf``/``pow`` as TF's scalar kernel.

    XLA rewrites ``pow(x, C)`` for some constants (``C = 3`` becomes ``x * x * x``), so the
    exponent is made to depend on ``x`` as in :func:`_div` (not when ``y == 0``, to keep
    ``pow(NaN, 0) = 1``).
    """
    dtype = x.dtype
    x, y = jnp.broadcast_arrays(tf_wide(x), tf_wide(y))
    tie = _all_ones(x) & (y != 0).astype(UINT_OF_WIDTH[y.dtype.itemsize])
    y = lax.bitcast_convert_type(_bits(y) | tie, y.dtype)
    return opaque(jnp.power(x, y).astype(dtype))


def tf_cos(x: jax.Array) -> jax.Array:
    """C ``cosf`` (XLA:CPU calls glibc's, as TF's scalar kernel does)."""
    return opaque(jnp.cos(opaque(x)))


def _libm() -> Optional[ctypes.CDLL]:
    path = ctypes.util.find_library("m")
    try:
        return ctypes.CDLL(path) if path else None
    except OSError:
        return None


_LIBM = _libm()


def _host_libm(name: str, x: np.ndarray) -> np.ndarray | np.floating:
    """``name``/``name + 'f'`` of the C library on a concrete scalar, with TF's DAZ/FTZ.

    Falls back to NumPy in float64, rounded to ``x``'s dtype, when the C library cannot be
    loaded.
    """
    x = np.asarray(x)
    tiny = np.finfo(x.dtype).tiny
    if x != 0 and abs(x) < tiny:
        x = np.zeros_like(x)
    c_type = ctypes.c_double if x.dtype == np.float64 else ctypes.c_float
    fn = getattr(_LIBM, name if x.dtype == np.float64 else name + "f", None)
    if fn is None:
        with np.errstate(all="ignore"):
            # A ufunc of a 0-d array gives a NumPy scalar.
            out: np.ndarray | np.floating = getattr(np, name)(
                x.astype(np.float64)).astype(x.dtype)
    else:
        fn.restype, fn.argtypes = c_type, [c_type]
        out = np.asarray(fn(c_type(x.item())), dtype=x.dtype)
    if out != 0 and abs(out) < tiny:
        out = np.zeros_like(out)
    return out


def tf_transcendental(name: str, x: jax.Array) -> jax.Array:
    """``exp``/``log`` of a scalar as glibc computes it, ``x`` in float16/32/64.

    Concrete ``x``: the C library itself (exact). Traced ``x``: float32 (and the float32 step
    of float16/bfloat16) is computed in float64 and rounded, which differs from glibc's
    ``expf``/``logf`` by 1 ulp for ~0.1 % of inputs; XLA's float32 versions miss for ~5-10 %.
    float64 ``log`` is glibc's; float64 ``exp`` is XLA's (1 ulp from glibc for ~14 % of inputs).
    """
    dtype = x.dtype
    if is_concrete(x) and x.ndim == 0 and is_float(dtype):
        return jnp.asarray(_host_libm(name, np.asarray(tf_wide(x)))).astype(dtype)
    fn = getattr(jnp, name)
    if dtype == jnp.float64:
        return opaque(fn(opaque(x)))
    with jax.enable_x64(True):
        wide = fn(opaque(tf_wide(x).astype(jnp.float64)))
        return opaque(wide.astype(jnp.float32).astype(dtype))
