"""Helpers that steer XLA:CPU's scheduling and buffer reuse; never the arithmetic.

Nothing here changes a single bit of any value. These exist only because XLA:CPU has no
multi-output fusion and its copy insertion trusts data dependencies alone: a rule that
reads a donated slot in one loop and writes it in place in another would otherwise get a
whole-array copy per step. Rules call them the same way everywhere, after the TF1 math.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
from jax import lax

from compatopt._numerics.dtypes import UINT_OF_WIDTH as _UINT_OF_WIDTH


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
