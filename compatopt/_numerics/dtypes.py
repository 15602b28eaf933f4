"""The dtypes TF1's kernels compute in, and what counts as a concrete value."""

from __future__ import annotations

from typing import Any

import jax
import jax.core  # imported by ``jax`` itself; named so the checker sees it
import jax.numpy as jnp

UINT_OF_WIDTH = {2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint64}

FLOAT_DTYPES = (jnp.dtype(jnp.float16), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float32),
                jnp.dtype(jnp.float64))
LOW_PRECISION = (jnp.dtype(jnp.float16), jnp.dtype(jnp.bfloat16))


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
    # The flag's attribute is added by setattr, so the stubs lack it; jax.config.read() is
    # meant for non-context-manager flags only (it accepts this one by a legacy exemption).
    x64 = jax.config.jax_enable_x64  # pyright: ignore[reportAttributeAccessIssue]
    return jnp.dtype(jnp.float64) if x64 else jnp.dtype(jnp.float32)
