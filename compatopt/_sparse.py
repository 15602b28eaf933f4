"""Row de-duplication, gather and scatter shared by the sparse (``IndexedSlices``) paths.

TF1's ``_deduplicate_indexed_slices`` keeps the unique indices and sums each index's rows
sequentially in input order, starting from ``+0.0``: ``((0 + v_a) + v_b) + ...`` (spec §2.7).
Here the unique indices come out sorted rather than in first-occurrence order; rows are
updated independently, so the order in which they are visited changes no bit. The summation
is an XLA scatter-add into zeros, which XLA:CPU performs serially in input order.

Shapes are static under ``jit``: ``k`` gradient rows give ``k`` unique slots, the unused
ones padded with the out-of-range row ``num_rows``; padded rows are read as zeros and their
writes are dropped (``mode="drop"``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from compatopt import _numerics


class UniqueRows(NamedTuple):
    """De-duplicated sparse gradient rows.

    Attributes:
      rows: ``[k]`` int32 unique row indices, padded with ``num_rows``.
      values: ``[k, *row_shape]`` summed gradient for each of ``rows`` (zeros for padding).
    """

    rows: jax.Array
    values: jax.Array


def deduplicate(values: jax.Array, indices: jax.Array, num_rows: int) -> UniqueRows:
    """Sums the rows of repeated indices (TF1 ``_deduplicate_indexed_slices``)."""
    k = indices.shape[0]
    indices = indices.astype(jnp.int32)
    if k == 0:
        return UniqueRows(indices, values)
    rows, position = jnp.unique(indices, size=k, fill_value=num_rows, return_inverse=True)
    position = position.reshape(k)
    summed = jnp.zeros((k,) + values.shape[1:], values.dtype).at[position].add(values)
    # XLA rewrites ``x + scatter_add(zeros, ...)`` into ``scatter_add(x, ...)``, which would
    # add each duplicate to x in turn instead of adding their sum once; opaque stops it.
    return UniqueRows(rows.astype(jnp.int32), _numerics.opaque(summed))


def _explicit_sharding(x: jax.Array):
    """``x``'s sharding when it lives on a mesh with Explicit axes (which needs the output
    sharding of gathers and scatters spelled out), else None."""
    # Any: not every abstract value has a sharding; one whose ``mesh`` is set has one.
    sharding: Any = getattr(jax.typeof(x), "sharding", None)
    mesh = getattr(sharding, "mesh", None)
    if mesh is None or mesh.empty or not mesh.are_all_axes_explicit:
        return None
    spec = tuple(sharding.spec) + (None,) * (x.ndim - len(sharding.spec))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*spec))


def _dropped_if_negative(rows: jax.Array, num_rows: int) -> jax.Array:
    # jnp's .at[] wraps negative indices (-1 is the last row); here they are out of range.
    return jnp.where(rows < 0, num_rows, rows)


def gather(x: jax.Array, rows: jax.Array) -> jax.Array:
    """``x[rows]``; padded (out-of-range) rows read as zeros."""
    rows = _dropped_if_negative(rows, x.shape[0])
    sharding = _explicit_sharding(x)
    out = None if sharding is None else sharding.update(spec=(None, *sharding.spec[1:]))
    return x.at[rows].get(mode="fill", fill_value=0, out_sharding=out)


def scatter(x: jax.Array, rows: jax.Array, new_rows: jax.Array) -> jax.Array:
    """``x`` with ``x[rows] = new_rows``; padded (out-of-range) rows are dropped."""
    rows = _dropped_if_negative(rows, x.shape[0])
    return x.at[rows].set(new_rows, mode="drop", out_sharding=_explicit_sharding(x))


def scatter_add(x: jax.Array, rows: jax.Array, rows_delta: jax.Array) -> jax.Array:
    """``x`` with ``x[rows] += rows_delta``, repeated rows added in input order."""
    rows = _dropped_if_negative(rows, x.shape[0])
    return x.at[rows].add(rows_delta, mode="drop", out_sharding=_explicit_sharding(x))


def check_indices(indices, num_rows: int, where: str) -> None:
    """Raises TF1's error for an out-of-range index, when the indices are concrete.

    Under ``jit`` the indices are not known while tracing; out-of-range rows are then
    dropped by :func:`scatter` (XLA cannot raise from a running computation).
    """
    from compatopt._numerics import is_concrete
    from compatopt.errors import InvalidArgumentError

    if not is_concrete(indices):
        return
    import numpy as np

    idx = np.asarray(indices)
    bad = np.flatnonzero((idx < 0) | (idx >= num_rows))
    if bad.size:
        k = int(bad[0])
        raise InvalidArgumentError(
            f"{where}: indices[{k}] = {int(idx[k])} is not in [0, {num_rows})")
