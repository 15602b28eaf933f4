"""``jnp.*`` / ``jax.lax.*`` / ``jax.jit`` arguments accept a :class:`~compatopt.Variable`.

JAX 0.10 no longer converts ``__jax_array__`` objects inside ``jnp`` calls, so
``jnp.tanh(w)`` on a TF1-style variable failed with JAX's generic "not a valid JAX type",
and JAX rewraps any ``TypeError`` raised while abstracting an argument (a hint cannot get
through). Instead a Variable is registered as a value JAX understands: its abstract value
is its current value's (``ShapedArray(shape, dtype)``) and it canonicalizes to
``v.value``. That is the read a port writes by hand: tracked (``compute_gradients`` without
``var_list`` finds it, autodiff differentiates it), the traced value inside
``compatopt.function`` and autodiff, the current buffer outside. ``jax.jit(f)(w)`` passes
the value at the call, as ``jax.jit(f)(w.value)``.

The two registries are JAX internals (``jax._src.core.pytype_aval_mappings``,
``jax._src.dtypes.register_canonicalize_value_handler``); where a JAX release lacks them
:func:`register` does nothing and ``jnp.tanh(w)`` is JAX's ``TypeError`` again (README:
read ``w.value``).
"""

from __future__ import annotations

from typing import Any


def register(variable_type: type) -> bool:
    """Makes ``variable_type`` (with a ``.value`` property) a JAX value; True if it could."""
    try:
        from jax._src import core as jax_core
        from jax._src import dtypes as jax_dtypes

        mappings: Any = jax_core.pytype_aval_mappings
        abstractify: Any = jax_core.shaped_abstractify
        register_value: Any = jax_dtypes.register_canonicalize_value_handler
    except (ImportError, AttributeError):
        return False
    mappings[variable_type] = lambda v: abstractify(v.value)
    register_value(variable_type, lambda v: v.value)
    return True
