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

from typing import NamedTuple

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


def gather(x: jax.Array, rows: jax.Array) -> jax.Array:
    """``x[rows]``; padded (out-of-range) rows read as zeros."""
    return x.at[rows].get(mode="fill", fill_value=0)


def scatter(x: jax.Array, rows: jax.Array, new_rows: jax.Array) -> jax.Array:
    """``x`` with ``x[rows] = new_rows``; padded (out-of-range) rows are dropped."""
    return x.at[rows].set(new_rows, mode="drop")


def check_indices(indices, num_rows: int, where: str) -> None:
    """Raises TF1's error for an out-of-range index, when the indices are concrete.

    Under ``jit`` the indices are not known while tracing; out-of-range rows are then
    dropped by :func:`scatter` (XLA cannot raise from a running computation).
    """
    from compatopt.errors import InvalidArgumentError
    from compatopt._numerics import is_concrete

    if not is_concrete(indices):
        return
    import numpy as np

    idx = np.asarray(indices)
    bad = np.flatnonzero((idx < 0) | (idx >= num_rows))
    if bad.size:
        k = int(bad[0])
        raise InvalidArgumentError(
            f"{where}: indices[{k}] = {int(idx[k])} is not in [0, {num_rows})")
