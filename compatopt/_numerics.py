"""How TF1's kernel arithmetic survives XLA compilation.

TF1's CPU kernels (Eigen) round every operation once, in the variable's dtype, in the
written bracket order, and never fuse a multiply into an add. XLA breaks this in three ways
(spec §7):

1. LLVM contracts ``a * b + c`` (and ``c - a * b``) into a fused multiply-add on every CPU
   with FMA, and on GPUs.
2. XLA's algebraic simplifier rewrites ``x / broadcast(s)`` into ``x * (1 / s)``.
3. It rewrites ``a / sqrt(b)`` into ``a * rsqrt(b)``.

All three rewrites need to *see* the producing operation. :func:`opaque` hides a value
behind an integer identity that no compiler can prove is the identity:
``bitcast(bits(x) | (x != x))``. For every non-NaN ``x`` the OR adds nothing; a NaN stays a
NaN (its mantissa is already non-zero). Neither XLA nor LLVM folds a float self-comparison,
so the ``fmul``/``fsqrt`` feeding the next ``fadd``/``fdiv`` is no longer visible to the
pattern matchers. It costs one compare and one OR per element, works per computation (no
global flag), under ``jit``, ``vmap``, ``grad`` and inside a user's larger jitted step, on CPU
and GPU alike.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_UINT_OF_WIDTH = {2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint64}

FLOAT_DTYPES = (jnp.dtype(jnp.float16), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float32),
                jnp.dtype(jnp.float64))
LOW_PRECISION = (jnp.dtype(jnp.float16), jnp.dtype(jnp.bfloat16))


def opaque(x: jax.Array) -> jax.Array:
    """Returns ``x`` unchanged (bit for bit, NaN payloads aside), hidden from rewrites."""
    x = jnp.asarray(x)
    uint = _UINT_OF_WIDTH[x.dtype.itemsize]
    bits = lax.bitcast_convert_type(x, uint)
    return lax.bitcast_convert_type(bits | (x != x).astype(uint), x.dtype)


def mul(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a * b`` rounded once and never fused into a following add (TF1: Eigen ``*``)."""
    return opaque(a * b)


def div(x: jax.Array, y: jax.Array) -> jax.Array:
    """``x / y`` correctly rounded, also when ``y`` is a scalar broadcast over ``x``.

    An elementwise division by a full array is left alone by XLA; a division by a broadcast
    scalar is not, so the broadcast divisor is made data-dependent on ``x`` (the same
    non-NaN identity as :func:`opaque`) before dividing.
    """
    x = jnp.asarray(x)
    y = jnp.asarray(y)
    if y.shape == x.shape or x.ndim == 0:
        return x / opaque(y)
    y_full = jnp.broadcast_to(y, x.shape)
    uint = _UINT_OF_WIDTH[y_full.dtype.itemsize]
    bits = lax.bitcast_convert_type(y_full, uint) | (x != x).astype(uint)
    return x / lax.bitcast_convert_type(bits, y_full.dtype)


def sqrt(x: jax.Array) -> jax.Array:
    """Correctly rounded ``sqrt`` whose result is not folded into a following division."""
    return opaque(jnp.sqrt(x))


def rsqrt(x: jax.Array) -> jax.Array:
    """``1 / sqrt(x)``, correctly rounded twice (TF1's scalar path of Eigen ``rsqrt``).

    TF1's packet path uses the CPU's ``rsqrtps`` estimate refined by one Newton step
    (spec §1.4), which differs by up to 3 ulp from this value and differs between CPU
    vendors; ``lax.rsqrt`` is neither, so it is not used.
    """
    one = jnp.ones((), x.dtype)
    return div(one, sqrt(x)) if x.ndim == 0 else opaque(one / opaque(jnp.sqrt(x)))


def to_tf_tensor(value: Any) -> jax.Array:
    """What ``tf.convert_to_tensor`` makes of a hyper-parameter.

    A Python float becomes float32, a Python int int32, a bool bool; NumPy scalars, NumPy
    arrays and JAX arrays (including tracers) keep their dtype.
    """
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


def compute_dtype(dtype: Any) -> jnp.dtype:
    """The dtype TF1's CPU kernels compute in: float32 for float16/bfloat16 (spec §1.2)."""
    dtype = jnp.dtype(dtype)
    return jnp.dtype(jnp.float32) if dtype in LOW_PRECISION else dtype


def is_concrete(x: Any) -> bool:
    """True when ``x`` has a value now (not a tracer inside jit/vmap/grad)."""
    return not isinstance(x, jax.core.Tracer)


def wide_dtype() -> jnp.dtype:
    """float64 when ``jax_enable_x64`` is on, else float32.

    TF1's rank-1 sparse kernels of AdagradDA and the proximal family compute in double;
    JAX can compute in double only with x64 enabled.
    """
    return jnp.dtype(jnp.float64) if jax.config.jax_enable_x64 else jnp.dtype(jnp.float32)


def sign(x: jax.Array) -> jax.Array:
    """Eigen's ``sign``: ``(x > 0) - (x < 0)``, so ``sign(-0.0) == +0.0``."""
    return (x > 0).astype(x.dtype) - (x < 0).astype(x.dtype)
