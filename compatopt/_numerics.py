"""How TF1's kernel arithmetic survives XLA compilation.

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
feeding the next ``fadd``/``fdiv`` is no longer visible to the pattern matchers. It costs one compare and one OR per element, works per computation (no
global flag), under ``jit``, ``vmap``, ``grad`` and inside a user's larger jitted step, on CPU
and GPU alike.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
from jax import lax

_UINT_OF_WIDTH = {2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint64}

FLOAT_DTYPES = (jnp.dtype(jnp.float16), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float32),
                jnp.dtype(jnp.float64))
LOW_PRECISION = (jnp.dtype(jnp.float16), jnp.dtype(jnp.bfloat16))


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
    y_full = jnp.broadcast_to(y, x.shape)
    uint = _UINT_OF_WIDTH[y_full.dtype.itemsize]
    x_bits = lax.bitcast_convert_type(x, _UINT_OF_WIDTH[x.dtype.itemsize])
    tie = (x_bits == jnp.asarray(np.iinfo(x_bits.dtype).max, x_bits.dtype)).astype(uint)
    return x / lax.bitcast_convert_type(lax.bitcast_convert_type(y_full, uint) | tie,
                                        y_full.dtype)


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


_STRUCTURAL = frozenset({"broadcast_in_dim", "reshape", "squeeze", "expand_dims", "transpose",
                         "slice", "concatenate", "gather", "scatter", "scatter-add",
                         "scatter_add", "dynamic_slice", "dynamic_update_slice", "select_n",
                         "bitcast_convert_type", "copy", "copy_p", "pad", "iota"})


def _eval_rounding(jaxpr, consts, args):
    env = {}

    def read(v):
        return v.val if isinstance(v, jax.extend.core.Literal) else env[v]

    for v, c in zip(jaxpr.constvars, consts):
        env[v] = c
    for v, a in zip(jaxpr.invars, args):
        env[v] = a
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        inner = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr"))  # jit, custom_jvp
        if inner is not None and hasattr(inner, "jaxpr") and hasattr(inner, "consts"):
            outs = _eval_rounding(inner.jaxpr, inner.consts, invals)
        else:
            outs = eqn.primitive.bind(*invals, **eqn.params)
            if not eqn.primitive.multiple_results:
                outs = [outs]
            if eqn.primitive.name not in _STRUCTURAL:
                outs = [opaque(o) if jnp.dtype(o.dtype) in LOW_PRECISION else o for o in outs]
        for v, o in zip(eqn.outvars, outs):
            env[v] = o
    return [read(v) for v in jaxpr.outvars]


def round_every_op(fn):
    """``fn`` with every float16/bfloat16 arithmetic result rounded and hidden from XLA.

    TF1 computes each float16/bfloat16 operation in float32 and rounds it back (spec §1.2).
    XLA:CPU keeps float16 chains in float32 between operations ("excess precision"), which
    skips those roundings; re-evaluating ``fn``'s jaxpr with :func:`opaque` after every
    low-precision operation forces each one.
    """

    def wrapped(*args):
        flat, tree = jax.tree_util.tree_flatten(args)
        closed = jax.make_jaxpr(lambda *leaves: fn(*jax.tree_util.tree_unflatten(tree, leaves)),
                                return_shape=True)
        closed_jaxpr, out_shape = closed(*flat)
        outs = _eval_rounding(closed_jaxpr.jaxpr, closed_jaxpr.consts, flat)
        return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(out_shape), outs)

    return wrapped
