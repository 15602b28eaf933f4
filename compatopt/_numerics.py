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
feeding the next ``fadd``/``fdiv`` is no longer visible to the pattern matchers. It costs
one compare and one OR per element, works per computation (no global flag), under ``jit``,
``vmap``, ``grad`` and inside a user's larger jitted step, on CPU and GPU alike.
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
    for leaf in params_leaves:
        if (isinstance(leaf, jax.core.Tracer) and jnp.size(leaf) > 0
                and jnp.issubdtype(leaf.dtype, jnp.floating)):
            x = leaf[(0,) * leaf.ndim]  # no reshape: fine for explicitly sharded leaves
            return lax.convert_element_type(x * jnp.zeros((), x.dtype), jnp.int32)
    return jnp.zeros((), jnp.int32)


@jax.custom_jvp
def after(x: jax.Array, dep: jax.Array) -> jax.Array:
    """``x`` unchanged, bit for bit, with a data dependency on ``dep`` (same shape).

    ``bits(x) | ((b >> w-1) & (~b >> w-1))`` for ``b = bits(dep)``: the OR-ed term is zero
    for every ``b``, XLA does not prove it (LLVM may, and then drops the read of ``dep``).
    It orders two of XLA:CPU's loops: a loop that writes a donated buffer in place is
    scheduled after a loop that still reads the old contents, instead of XLA copying the
    buffer first (its copy insertion only trusts data dependencies). Not a barrier for
    ``x``'s own arithmetic: use it on a result, not on an operand of further products.
    """
    x, dep = jnp.asarray(x), jnp.asarray(dep)
    uint = _UINT_OF_WIDTH[x.dtype.itemsize]
    b = lax.bitcast_convert_type(dep, _UINT_OF_WIDTH[dep.dtype.itemsize])
    shift = jnp.asarray(8 * dep.dtype.itemsize - 1, b.dtype)
    zero = (lax.shift_right_logical(b, shift) & lax.shift_right_logical(~b, shift)).astype(uint)
    return lax.bitcast_convert_type(lax.bitcast_convert_type(x, uint) | zero, x.dtype)


@after.defjvp
def _after_jvp(primals, tangents):
    return after(*primals), tangents[0]


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


# --------------------------------------------------------------------------- bfloat16
#
# XLA:CPU has no bfloat16 arithmetic: each bfloat16 operation is lowered to a convert to
# float32, the float32 operation and an emulated round-to-nearest-even back, and the result
# then needs ``opaque`` so the next operation cannot skip that rounding. Carrying every
# bfloat16 value as the float32 holding the same number (a "carrier"), and rounding each
# result with the integer round-to-nearest-even below, does the same arithmetic with about
# half the instructions: the integer rounding is itself a barrier no compiler folds, and no
# conversion is needed between operations.

_BF16 = jnp.dtype(jnp.bfloat16)
_F32 = jnp.dtype(jnp.float32)
# Results that are exact on carriers (no rounding): data movement, selection, sign changes.
_EXACT_ON_CARRIERS = _STRUCTURAL | frozenset(
    {"neg", "abs", "max", "min", "sign", "select_n", "clamp", "copy", "stop_gradient",
     "reduce_max", "reduce_min"})
# Rounded after every single update (each scatter-add is a bfloat16 add in TF1), or carrying
# computations that this evaluator does not enter: run on real bfloat16 values.
_ON_REAL_BF16 = frozenset({"scatter-add", "scatter_add", "scatter-mul", "scatter_mul",
                           "scatter-min", "scatter_min", "scatter-max", "scatter_max",
                           "cond", "while", "scan", "custom_vjp_call", "custom_vjp_call_jaxpr",
                           "reduce_sum", "reduce_prod", "cumsum", "cumprod", "dot_general"})


def round_to_bfloat16(x: jax.Array) -> jax.Array:
    """float32 ``x`` rounded to the nearest bfloat16 (ties to even), still as float32.

    Eigen's ``float_to_bfloat16_rtne`` (what TF1's bfloat16 kernels do after each float32
    operation): add ``0x7fff`` plus the lowest kept bit and clear the low 16 bits; a NaN
    becomes the quiet NaN ``0x7fc0`` with its sign.
    """
    bits = lax.bitcast_convert_type(x, jnp.uint32)
    is_nan = (bits & jnp.uint32(0x7FFFFFFF)) > jnp.uint32(0x7F800000)
    nan = (bits & jnp.uint32(0x80000000)) | jnp.uint32(0x7FC00000)
    return lax.bitcast_convert_type(jnp.where(is_nan, nan, _rne_bits(bits)), jnp.float32)


def _rne_bits(bits: jax.Array) -> jax.Array:
    """float32 bits rounded to the nearest bfloat16 (ties to even); NaNs not special-cased."""
    lsb = (bits >> 16) & jnp.uint32(1)
    return (bits + (jnp.uint32(0x7FFF) + lsb)) & jnp.uint32(0xFFFF0000)


def _round_cpu_result(x: jax.Array) -> jax.Array:
    bits = _rne_bits(lax.bitcast_convert_type(x, jnp.uint32))
    return lax.bitcast_convert_type(bits, jnp.float32)


def _round_result(x: jax.Array) -> jax.Array:
    """:func:`round_to_bfloat16` of an arithmetic result computed from carriers.

    On CPUs the NaN test is left out: a NaN result there is an operand's NaN (a carrier,
    whose low 16 bits are zero) or the hardware's default NaN (``0xffc00000`` on x86,
    ``0x7fc00000`` on Arm), and adding the rounding bias to low bits of zero cannot carry,
    so it stays that NaN. A non-canonical payload of a NaN *input* survives (as it does in
    TF1's float32 arithmetic) where TF1's rounding writes ``0x7fc0``/``0xffc0``: outputs
    that later operations read are stored through :func:`_store`, which canonicalises as
    TF1 does, the others (e.g. the update ``delta``) may keep the payload. GPUs' default NaN
    ``0x7fffffff`` would round to ``-0.0``, so other platforms keep the full rounding.
    """
    return lax.platform_dependent(x, cpu=_round_cpu_result, default=round_to_bfloat16)


def _carrier_from_bits(bits16: jax.Array) -> jax.Array:
    return lax.bitcast_convert_type(bits16.astype(jnp.uint32) << 16, jnp.float32)


def _carrier(x: jax.Array) -> jax.Array:
    """A real bfloat16 array as its carrier (exact, and opaque to XLA's simplifier)."""
    return _carrier_from_bits(lax.bitcast_convert_type(x, jnp.uint16))


def _bits_of_carrier(c: jax.Array) -> jax.Array:
    return (lax.bitcast_convert_type(c, jnp.uint32) >> 16).astype(jnp.uint16)


def _real_bf16(c: jax.Array) -> jax.Array:
    return lax.bitcast_convert_type(_bits_of_carrier(c), _BF16)


def _is_bf16(v) -> bool:
    return jnp.dtype(v.aval.dtype) == _BF16


def _is_opaque(eqn) -> bool:
    info = getattr(eqn.params["call_jaxpr"].jaxpr, "debug_info", None)
    return (getattr(info, "func_name", None) == "opaque"
            and __file__ in str(getattr(info, "func_src_info", "")))


def _convert_to_bf16(x: jax.Array) -> jax.Array:
    if jnp.dtype(x.dtype) == _F32:
        return round_to_bfloat16(x)
    # One rounding straight from the source type, as TF's cast (float64 -> float32 ->
    # bfloat16 could round twice); read back through the bits so XLA keeps the rounding.
    return _carrier(x.astype(_BF16))


def _store_on_cpu(c: jax.Array) -> jax.Array:
    # XLA:CPU's float32 -> bfloat16 convert rounds to nearest even and writes a NaN as
    # sign | 0x7fc0, as Eigen does; exact here since ``c`` is already rounded.
    return lax.convert_element_type(c, _BF16)


def _store(c: jax.Array) -> jax.Array:
    """A rounded carrier as the bfloat16 array it stands for."""
    return lax.platform_dependent(c, cpu=_store_on_cpu, default=_real_bf16)


def _eval_bf16(jaxpr, consts, args, stored=None):
    """Evaluates ``jaxpr`` with bfloat16 values held as float32 carriers, rounding each.

    ``stored`` (top level only): ``{var: real bfloat16}`` filled for the bfloat16 results
    that are outputs *and* read again (by later operations, or output twice), which read
    them back from the stored value (converted to float32, exact). Otherwise XLA:CPU,
    which has no multi-output fusion, fuses a copy of the whole computation of e.g. Adam's
    new ``m`` into the loop that updates ``p`` (the carrier chain looks cheap to
    duplicate), reading the old slots after their donated buffers were overwritten, and so
    adds a full copy of each slot per step.
    """
    env = {}
    outputs = frozenset()
    if stored is not None:
        out_vars = [v for v in jaxpr.outvars if not isinstance(v, jax.extend.core.Literal)]
        # Read again: by a later operation, or by two consumers outside (RMSProp's ``mom``
        # is both a slot and the update).
        read_later = {v for e in jaxpr.eqns for v in e.invars
                      if not isinstance(v, jax.extend.core.Literal)}
        read_later |= {v for v in out_vars if out_vars.count(v) > 1}
        outputs = frozenset(v for v in jaxpr.outvars if v in read_later and _is_bf16(v))

    def read(v):
        if isinstance(v, jax.extend.core.Literal):
            val = v.val
            return jnp.asarray(val, jnp.float32) if _is_bf16(v) else val
        return env[v]

    for v, c in zip(jaxpr.constvars, consts):
        env[v] = _carrier(jnp.asarray(c)) if _is_bf16(v) else c
    for v, a in zip(jaxpr.invars, args):
        env[v] = a
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        name = eqn.primitive.name
        bf16_in = [_is_bf16(v) for v in eqn.invars]
        bf16_out = [_is_bf16(v) for v in eqn.outvars]
        inner = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr"))  # jit, custom_jvp
        if name == "custom_jvp_call" and _is_opaque(eqn) and any(bf16_in):
            outs = invals  # the rounding of each result is already a barrier
        elif (inner is not None and hasattr(inner, "jaxpr") and hasattr(inner, "consts")
              and name not in _ON_REAL_BF16):
            outs = _eval_bf16(inner.jaxpr, inner.consts, invals)
        elif name == "convert_element_type" and (bf16_in[0] or bf16_out[0]):
            x, new = invals[0], jnp.dtype(eqn.params["new_dtype"])
            if bf16_out[0]:
                outs = [x if bf16_in[0] else _convert_to_bf16(x)]
            else:  # from a carrier: the same number converted, exact up to one rounding
                outs = [x if new == _F32 else x.astype(new)]
        elif name == "bitcast_convert_type" and (bf16_in[0] or bf16_out[0]):
            x = invals[0]
            if bf16_in[0] and jnp.dtype(eqn.params["new_dtype"]) == jnp.dtype(jnp.uint16):
                outs = [_bits_of_carrier(x)]
            elif bf16_out[0] and jnp.dtype(x.dtype) == jnp.dtype(jnp.uint16):
                outs = [_carrier_from_bits(x)]
            else:
                real = [_real_bf16(a) if b else a for a, b in zip(invals, bf16_in)]
                outs = [eqn.primitive.bind(*real, **eqn.params)]
        elif not any(bf16_in) and not any(bf16_out):
            outs = eqn.primitive.bind(*invals, **eqn.params)
        elif name in _ON_REAL_BF16 or inner is not None or any(
                isinstance(p, np.dtype) and p == _BF16 for p in eqn.params.values()):
            real = [_real_bf16(a) if b else a for a, b in zip(invals, bf16_in)]
            outs = eqn.primitive.bind(*real, **eqn.params)
            outs = outs if eqn.primitive.multiple_results else [outs]
            outs = [_carrier(o) if b else o for o, b in zip(outs, bf16_out)]
        else:
            outs = eqn.primitive.bind(*invals, **eqn.params)
            outs = outs if eqn.primitive.multiple_results else [outs]
            if name not in _EXACT_ON_CARRIERS:
                outs = [_round_result(o) if b else o for o, b in zip(outs, bf16_out)]
        if not isinstance(outs, (list, tuple)):
            outs = [outs]
        for v, o in zip(eqn.outvars, outs):
            if v in outputs:
                stored[v] = _store(o)
                o = lax.convert_element_type(stored[v], _F32)
            env[v] = o
    return [read(v) for v in jaxpr.outvars]


def round_every_op(fn):
    """``fn`` with every float16/bfloat16 arithmetic result rounded and hidden from XLA.

    TF1 computes each float16/bfloat16 operation in float32 and rounds it back (spec §1.2).
    XLA:CPU keeps float16 chains in float32 between operations ("excess precision"), which
    skips those roundings. float16: ``fn``'s jaxpr is re-evaluated with :func:`opaque` after
    every float16 operation (the F16C conversions are single instructions). bfloat16: the
    jaxpr is re-evaluated on float32 carriers with :func:`round_to_bfloat16` after every
    operation (same bits, about half the instructions of converting each operation).
    """

    def wrapped(*args):
        flat, tree = jax.tree_util.tree_flatten(args)
        closed = jax.make_jaxpr(lambda *leaves: fn(*jax.tree_util.tree_unflatten(tree, leaves)),
                                return_shape=True)
        closed_jaxpr, out_shape = closed(*flat)
        jaxpr = closed_jaxpr.jaxpr
        if any(_is_bf16(v) for v in jaxpr.invars):
            carriers = [_carrier(a) if _is_bf16(v) else a for v, a in zip(jaxpr.invars, flat)]
            stored = {}
            outs = _eval_bf16(jaxpr, closed_jaxpr.consts, carriers, stored)
            outs = [stored[v] if v in stored else _real_bf16(o) if _is_bf16(v) else o
                    for v, o in zip(jaxpr.outvars, outs)]
        else:
            outs = _eval_rounding(jaxpr, closed_jaxpr.consts, flat)
        return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(out_shape), outs)

    return wrapped
