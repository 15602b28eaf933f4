"""float16 / bfloat16: TF1's one rounding per operation, which XLA:CPU would skip.

TF1's half-precision kernels compute each operation in float32 and round the result back
(spec §1.2). XLA:CPU keeps excess precision between fused operations, so
:func:`round_every_op` re-evaluates a kernel's jaxpr with a rounding after every
operation.
"""

from __future__ import annotations

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
from jax import lax

from compatopt._numerics.barriers import opaque
from compatopt._numerics.dtypes import LOW_PRECISION

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
                assert stored is not None  # ``outputs`` is empty without ``stored``
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
