"""Exactness barriers: how TF1's kernel arithmetic survives XLA compilation.

TF1's CPU kernels (Eigen) round every operation once, in the variable's dtype, in the
written bracket order, and never fuse a multiply into an add. XLA breaks this in three ways
(spec §7):

1. LLVM contracts ``a * b + c`` (and ``c - a * b``) into a fused multiply-add on every CPU
   with FMA, and on GPUs.
2. XLA's algebraic simplifier rewrites ``x / broadcast(s)`` into ``x * (1 / s)``.
3. It rewrites ``a / sqrt(b)`` into ``a * rsqrt(b)``.

All of these rewrites (and constant re-association, ``(a * c1) * c2 -> a * (c1 * c2)``)
need to *see* the producing operation. :func:`opaque` hides a value behind an integer
identity that no compiler proves is the identity: ``bitcast(bits | (bits == ~0))``. The
comparison is 1 only for the all-ones pattern, whose lowest bit is already set, so every
bit pattern (NaN payloads included) is returned unchanged, and the ``fmul``/``fsqrt``
feeding the next ``fadd``/``fdiv`` is no longer visible to the pattern matchers. It costs
one compare and one OR per element, works per computation (no global flag), under ``jit``,
``vmap``, ``grad`` and inside a user's larger jitted step, on CPU and GPU alike.
"""

from __future__ import annotations

import jax
import jax.core  # imported by ``jax`` itself; named so the checker sees it
import jax.numpy as jnp
import numpy as np
from jax import lax

from compatopt._numerics.dtypes import UINT_OF_WIDTH as _UINT_OF_WIDTH


@jax.custom_jvp
def opaque(x: jax.Array) -> jax.Array:
    """Returns ``x`` unchanged, bit for bit, hidden from XLA's and LLVM's rewrites.

    Differentiable as the identity (the integer bitcasts have no derivative of their own).
    """
    x = jnp.asarray(x)
    uint = _UINT_OF_WIDTH[x.dtype.itemsize]
    bits = lax.bitcast_convert_type(x, uint)
    all_ones = jnp.asarray(np.iinfo(uint).max, uint)
    return lax.bitcast_convert_type(bits | (bits == all_ones).astype(uint), x.dtype)


@opaque.defjvp
def _opaque_jvp(primals, tangents):
    return opaque(primals[0]), tangents[0]


def runtime_zero(count: jax.Array) -> jax.Array:
    """A uint32 zero that XLA cannot fold: ``count >> 31`` for a non-negative ``count``.

    ``opaque`` of a compile-time constant is itself folded, so a kernel whose inputs are
    constants (a gradient closed over by a jitted function) would again be open to XLA's
    rewrites; OR-ing this zero, derived from the rule's apply count, into the inputs keeps
    them runtime values whenever the state is.
    """
    return lax.shift_right_logical(count.astype(jnp.uint32), jnp.uint32(31))


def initial_count(params_leaves: list) -> jax.Array:
    """The apply count's first value, int32 0, as a value XLA cannot fold when it is traced.

    Built eagerly (the usual ``state = rule.init(params)`` outside the step) it is a plain
    ``0``. Built inside a ``jit`` trace (``jit(lambda p: rule.apply(g, rule.init(p), p))``)
    a literal ``0`` would be folded, and with it :func:`runtime_zero` and every input
    :func:`hide` derives from it; so it is computed from the first floating-point
    parameter's first element ``x``: ``int32(x * 0.0)`` is 0 for every ``x`` (±0, or NaN
    for ±inf/NaN, which the conversion maps to 0), but a float multiply by zero is not an
    identity either XLA or LLVM may fold (NaN and the sign of zero).
    """
    candidates = [leaf for leaf in params_leaves
                  if isinstance(leaf, jax.core.Tracer) and jnp.size(leaf) > 0
                  and jnp.issubdtype(leaf.dtype, jnp.floating)]
    for leaf in candidates:
        if not _explicitly_sharded(leaf):
            x = leaf[(0,) * leaf.ndim]
            return lax.convert_element_type(x * jnp.zeros((), x.dtype), jnp.int32)
    if candidates:
        # Every leaf is sharded over an Explicit mesh axis, where taking one element is a
        # sharding type error: the max of the smallest leaf times zero (a reduction, which
        # Explicit sharding allows) is 0 or NaN, as the element would be.
        leaf = min(candidates, key=jnp.size)
        x = jnp.max(leaf * jnp.zeros((), leaf.dtype))
        return lax.convert_element_type(x, jnp.int32)
    return jnp.zeros((), jnp.int32)


def _explicitly_sharded(x: jax.Array) -> bool:
    """``x``'s type names a mesh axis (``jax.sharding.AxisType.Explicit`` sharding)."""
    spec = getattr(getattr(jax.typeof(x), "sharding", None), "spec", None)
    return spec is not None and any(entry is not None for entry in spec)


@jax.custom_jvp
def hide(x: jax.Array, zero: jax.Array) -> jax.Array:
    """``x`` with ``zero`` (from :func:`runtime_zero`) OR-ed into its bits: unchanged.

    Differentiable as the identity in ``x``.
    """
    x = jnp.asarray(x)
    uint = _UINT_OF_WIDTH[x.dtype.itemsize]
    bits = lax.bitcast_convert_type(x, uint) | zero.astype(uint)
    return lax.bitcast_convert_type(bits, x.dtype)


@hide.defjvp
def _hide_jvp(primals, tangents):
    x, zero = primals
    return hide(x, zero), tangents[0]


def mul(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a * b`` rounded once and never fused into a following add (TF1: Eigen ``*``)."""
    return opaque(a * b)


def div(x: jax.Array, y: jax.Array) -> jax.Array:
    """``x / y`` correctly rounded, also when ``y`` is a scalar broadcast over ``x``.

    Both operands are hidden: XLA rewrites ``(a / b) / c`` into ``a / (b * c)`` and
    ``a / (b / c)`` into ``(a * c) / b``, and a division by a broadcast scalar into a
    multiply, so the broadcast divisor is also made data-dependent on ``x`` (the same non-NaN
    identity as :func:`opaque`).
    """
    x = opaque(x)
    y = jnp.asarray(y)
    if y.shape == x.shape or x.ndim == 0:
        return x / opaque(y)
    return x / _tied_to(jnp.broadcast_to(y, x.shape), x)


@jax.custom_jvp
def _tied_to(y_full: jax.Array, x: jax.Array) -> jax.Array:
    """``y_full``, made data-dependent on ``x`` (OR-ed with a bit that is set only where
    ``x`` is the all-ones NaN pattern, which no float operation produces); its derivative
    is the identity in ``y_full`` (raw bit casts have none)."""
    uint = _UINT_OF_WIDTH[y_full.dtype.itemsize]
    x_bits = lax.bitcast_convert_type(x, _UINT_OF_WIDTH[x.dtype.itemsize])
    tie = (x_bits == jnp.asarray(np.iinfo(x_bits.dtype).max, x_bits.dtype)).astype(uint)
    return lax.bitcast_convert_type(lax.bitcast_convert_type(y_full, uint) | tie,
                                    y_full.dtype)


@_tied_to.defjvp
def _tied_to_jvp(primals, tangents):
    y_full, x = primals
    dy, _ = tangents
    return _tied_to(y_full, x), dy


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
