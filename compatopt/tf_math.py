"""Ops with TF1's rounding under XLA, for custom optimizers (``_apply_dense`` ...).

Under ``jax.jit`` XLA:CPU contracts ``a * b + c`` into one fused multiply-add, turns a
division by a broadcast scalar into a multiply by its reciprocal and may re-associate
divisions; TF1's Eigen kernels do none of that, so a custom TF1 optimizer ported with plain
``jnp`` arithmetic drifts from TF1 by an ulp here and there. These are the guards
compatopt's own rules use:

* ``mul(a, b)``: ``a * b`` rounded on its own (never fused into a following ``+``/``-``);
* ``div(x, y)``: ``x / y`` correctly rounded, also when ``y`` is a broadcast scalar;
* ``sqrt(x)``: correctly rounded, not folded into a following division (no ``rsqrt``);
* ``square(x)``: ``tf.square``, ``mul(x, x)``;
* ``rsqrt(x)``: ``1 / sqrt(x)``, both correctly rounded (TF1's scalar lanes; its packet
  lanes use the CPU's approximate ``rsqrtps``, see docs/exactness.md);
* ``opaque(x)``: ``x`` unchanged, hidden from XLA's algebraic rewrites;
* ``cast(x, dtype)``: TF1's ``math_ops.cast``.

``+`` and ``-`` need no guard once every product is a :func:`mul`. Example, BERT's AdamW
update (``examples/adamw_subclass.py``, checked bit for bit against TF1 graph mode in
``tests/test_tf_math.py``)::

    from compatopt import tf_math as tm
    next_m = tm.mul(beta_1, m) + tm.mul(1.0 - beta_1, grad)
    next_v = tm.mul(beta_2, v) + tm.mul(1.0 - beta_2, tm.square(grad))
    update = tm.div(next_m, tm.sqrt(next_v) + epsilon)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from compatopt._numerics import cast as cast, div as _div, mul as _mul, opaque as opaque
from compatopt._numerics import rsqrt as rsqrt, sqrt as sqrt

__all__ = ["mul", "div", "sqrt", "rsqrt", "square", "opaque", "cast"]


def _arrays(a: Any, b: Any) -> tuple:
    """Python scalars take the other operand's dtype (JAX's weak typing), as TF1's
    ``convert_to_tensor`` of a Python float against a float32 tensor."""
    return jnp.asarray(a), jnp.asarray(b)


def mul(a: Any, b: Any) -> jax.Array:
    """``a * b``, rounded on its own (TF1's ``Mul``), never fused with an add."""
    return _mul(*_arrays(a, b))


def div(x: Any, y: Any) -> jax.Array:
    """``x / y`` correctly rounded (TF1's ``RealDiv``), broadcast divisors included."""
    x, y = _arrays(x, y)
    if y.ndim == 0 and x.ndim > 0:
        y = y.astype(jnp.result_type(x, y))
    return _div(x, y)


def square(x: Any) -> jax.Array:
    """``tf.square(x)``: ``x * x`` rounded once."""
    x = jnp.asarray(x)
    return _mul(x, x)
