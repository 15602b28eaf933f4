"""Helpers that steer XLA:CPU's scheduling and buffer reuse; never the arithmetic.

Nothing here changes a single bit of any value. These exist only because of two properties of
XLA:CPU that TF1's Eigen kernels do not share:

* **No multi-output fusion.** Each fused loop writes one array. A value that two loops read
  (FTRL's square root of the new accumulator, Adadelta's ``update``) is either materialised
  in a temporary buffer (allocated and page-faulted every step) or, for a cheap expression,
  duplicated into each loop. TF1 never materialises it: its ``auto new_accum = ...`` and
  ``const auto update = ...`` are Eigen *expressions*, evaluated again inside every
  assignment that reads them. :func:`recompute` gives a rule the same shape: one evaluation
  per loop.
* **Copy insertion trusts data dependencies alone.** A donated slot read by one loop and
  overwritten in place by another gets a whole-array copy per step, unless a data dependency
  puts the overwriting loop second (:func:`overwrite_after`). And ``jit`` drops an input no
  output depends on, after which donation pairs the remaining buffers with the wrong outputs
  (:func:`keep_input`).

Each helper is the identity on its first argument. Rules write TF1's kernel in its own
operation order and call these the same way everywhere:

``N.recompute(x)``
    at an input of each further evaluation of a shared expression, in the loop that needs it;
``N.overwrite_after(slot, reader)``
    at the read of a slot by the loop that writes its new value, with ``reader`` the result
    of the loop that still reads the old one;
``N.keep_input(value, var)``
    on a new variable value that TF1 computes without reading ``var``.

:func:`after` is the primitive the last two are built on.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
from jax import lax

from compatopt._numerics.barriers import opaque as _opaque
from compatopt._numerics.dtypes import UINT_OF_WIDTH as _UINT_OF_WIDTH


@jax.custom_jvp
def after(x: jax.Array, dep: jax.Array) -> jax.Array:
    """``x`` unchanged, bit for bit, with a data dependency on ``dep`` (same shape).

    ``bits(x) | ((b >> w-1) & (~b >> w-1))`` for ``b = bits(dep)``: the OR-ed term is zero
    for every ``b``, XLA does not prove it (LLVM may, and then drops the read of ``dep``).
    It orders two of XLA:CPU's loops: a loop that writes a donated buffer in place is
    scheduled after a loop that still reads the old contents, instead of XLA copying the
    buffer first (its copy insertion only trusts data dependencies). Not an exactness
    barrier for ``x``'s own arithmetic (that is :mod:`~compatopt._numerics.barriers`).
    Rules do not call it directly: they say why, through :func:`overwrite_after` or
    :func:`keep_input`.
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


def recompute(x: jax.Array) -> jax.Array:
    """``x`` unchanged, as a new expression: what is computed from it is computed again.

    For each further evaluation of an expression that two loops read (TF1 writes it once,
    as an Eigen expression that each assignment evaluates): ``P(N.recompute(accum))`` next
    to ``P(accum)``. XLA's CSE cannot merge the two (it does not see through
    :func:`~compatopt._numerics.barriers.opaque`), so each copy has one consumer and is
    fused into that consumer's loop. Without it XLA:CPU, which has no multi-output fusion,
    materialises the shared value: an expensive root (a square root, a ``pow``, a division,
    which its fusion will not duplicate) goes to a temporary buffer that both loops read,
    or the loop order that lets a donated slot be overwritten in place is lost and the slot
    is copied. The same operations on the same bits give the same result. It also hides
    ``x`` from the rewrites :func:`opaque` stops, which is harmless where a rule uses it (on
    an input of the expression, not between a product and its add).
    """
    return _opaque(x)


def overwrite_after(slot: jax.Array, reader: jax.Array) -> jax.Array:
    """``slot`` unchanged, as read by the loop that overwrites it in place, after ``reader``.

    ``slot`` is a donated slot's old contents; ``reader`` is the result of the loop that
    still reads them (e.g. the new ``linear``, or the new variable value). The loop that
    computes the slot's new value reads the old one through this, so it depends on
    ``reader``: XLA:CPU schedules it second and writes the donated buffer in place, instead
    of its copy insertion (which trusts data dependencies alone) copying the whole old
    buffer first so that the other loop can still read it. Used on the operand, not on the
    new value, so that the new value still ends in the rule's own last operation (an add
    XLA does not duplicate into the next loop). Built on :func:`after`.
    """
    return after(slot, reader)


def keep_input(value: jax.Array, var: jax.Array) -> jax.Array:
    """``value`` unchanged, with a data dependency on ``var``: ``var`` stays a step input.

    For a kernel whose new variable value TF1 computes without reading the old one
    (AdagradDA sets ``var`` from its accumulators alone). ``jit`` prunes an argument that no
    output depends on; the donated ``var`` buffer then leaves the computation, and
    input/output aliasing pairs the remaining donated buffers (the slots) with the wrong
    outputs, so XLA:CPU copies every slot every step. Built on :func:`after`.
    """
    return after(value, var)
