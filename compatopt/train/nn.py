"""``tf.compat.v1.nn.embedding_lookup`` and ``tf.gather`` on :class:`~compatopt.Variable`\\ s,
whose gradients are TF1's ``IndexedSlices``.

A lookup in a Variable is a :meth:`~compatopt.Variable.sparse_read`, so under
``compute_gradients`` / ``minimize`` the variable's gradient is an
:class:`~compatopt.IndexedSlices` with TF1 graph mode's rows: one row per looked-up id, in the
order of the flattened ids (repeats kept), and the sparse optimizer kernels run. Partitioned
params (a list of Variables) split the ids as TF1 does (``"mod"``: id ``i`` goes to partition
``i % P`` as row ``i // P``; ``"div"``: contiguous ranges, the first ``total % P`` partitions
one row longer), each partition's gradient holding its own ids in their original order.

Differences from TF1: under ``jax.jit`` / :func:`compatopt.function` the ids are not known
while tracing, so a partitioned lookup cannot give each partition an exactly sized
``IndexedSlices``: every partition's gradient then has one row per id, the ids of other
partitions marked with the out-of-range row ``num_rows`` and zero values, which the sparse
kernels drop (the update is TF1's); out-of-range ids cannot raise there (their rows read as
NaN). Eagerly (concrete ids) the gradients are TF1's exactly and bad ids raise TF1's errors.
A tuple of params is taken as a list of partitions (TF1 would stack it into one tensor).
"""

from __future__ import annotations

from functools import partial
from typing import Any, List, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from compatopt import _numerics as N
from compatopt.clip_ops import clip_by_norm
from compatopt.errors import InvalidArgumentError
from compatopt.train._variable import Variable

__all__ = ["embedding_lookup", "gather"]

_INT_DTYPES = (jnp.dtype(jnp.int32), jnp.dtype(jnp.int64))


def _ids_array(ids: Any, what: str = "indices") -> jax.Array:
    """``convert_to_tensor(ids)``: Python ints become int32; int32/int64 only (TF's
    ``ResourceGather`` ``Tindices``)."""
    if isinstance(ids, Variable):
        ids = ids.value
    arr = jnp.asarray(np.asarray(ids, dtype=np.int32)) if isinstance(ids, (int, list, tuple)) \
        and not isinstance(ids, bool) and np.asarray(ids).dtype.kind in "iu" else jnp.asarray(ids)
    if arr.dtype not in _INT_DTYPES:
        raise TypeError(f"Value passed to parameter '{what}' has DataType {arr.dtype.name} not "
                        f"in list of allowed values: int32, int64")
    return arr


def _slice_str(shape: tuple, flat_index: int) -> str:
    """TF's ``SliceDebugString``: ``[3]`` or ``[1,2]`` for the offending index."""
    if len(shape) == 0:
        return "[]"
    return "[" + ",".join(str(int(i)) for i in np.unravel_index(flat_index, shape)) + "]"


def _check_range(ids: jax.Array, num_rows: int, what: str) -> None:
    """TF's CPU gather check: ``indices[i] = v is not in [0, n)`` (concrete ids only)."""
    if not N.is_concrete(ids):
        return
    idx = np.asarray(ids)
    bad = np.flatnonzero((idx.reshape(-1) < 0) | (idx.reshape(-1) >= num_rows))
    if bad.size:
        k = int(bad[0])
        raise InvalidArgumentError(
            f"indices{_slice_str(idx.shape, k)} = {int(idx.reshape(-1)[k])} is not in "
            f"[0, {num_rows}) ({what})")


def _describe(param: Any) -> str:
    if isinstance(param, Variable):
        return f"gather from variable '{param.op.name}'"
    return "gather from params"


def _gather_rows(param: Any, ids: jax.Array) -> jax.Array:
    """Rows ``ids`` of one partition: a sparse read of a Variable, a take of an array."""
    shape = param.shape if isinstance(param, Variable) else jnp.shape(param)
    if len(shape) == 0:
        raise ValueError("params must be at least 1 dimensional (TF1: Shape must be at least "
                         "rank 1 but is rank 0)")
    _check_range(ids, int(shape[0]), _describe(param))
    if isinstance(param, Variable):
        return param.sparse_read(ids)
    return jnp.take(jnp.asarray(param), ids, axis=0)


def gather(params: Any, indices: Any, validate_indices: Any = None, name: Optional[str] = None,
           axis: Any = None, batch_dims: int = 0) -> jax.Array:
    """``tf.compat.v1.gather(params, indices)``: ``out[i...] = params[indices[i...], ...]``.

    For a :class:`~compatopt.Variable` and ``axis`` 0 (the default) this is its
    :meth:`~compatopt.Variable.sparse_read`, whose gradient is an ``IndexedSlices``
    (``values [size(indices), *params.shape[1:]]``, ``indices`` flattened), as TF1's
    ``ResourceGather`` gradient. Other axes read the whole value (a dense gradient, as TF1).

    Args:
      params: a Variable or an array ``[N, ...]``.
      indices: int32/int64 ids of any shape ``[...]``, in ``[0, N)``.
      validate_indices: deprecated in TF1, ignored (CPU always validates).
      name: accepted for TF1 compatibility (no effect).
      axis: the axis gathered from (default 0).
      batch_dims: only 0 is supported.

    Returns:
      ``[*indices.shape, *params.shape[1:]]`` (for axis 0).

    Raises:
      InvalidArgumentError: a concrete index out of range (``indices[1] = 7 is not in
        [0, 5)``, naming the variable).
      TypeError: non-integer indices.
    """
    if batch_dims != 0:
        raise NotImplementedError("compatopt.gather: batch_dims other than 0")
    ids = _ids_array(indices)
    ax = 0 if axis is None else int(np.asarray(axis))
    if isinstance(params, Variable) and ax in (0, -len(params.shape)):
        return _gather_rows(params, ids)
    value = params.value if isinstance(params, Variable) else jnp.asarray(params)
    ax = ax % value.ndim
    _check_range(ids, int(value.shape[ax]), _describe(params))
    return jnp.take(value, ids, axis=ax)


@partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _permute(x: jax.Array, perm: tuple, inverse: tuple) -> jax.Array:
    """``x[perm]`` whose gradient is the gather ``ct[inverse]`` (TF's ``DynamicStitch``
    gradient), not a scatter-add into zeros (which would turn ``-0.0`` into ``+0.0``)."""
    return x[np.asarray(perm, np.int64)]


def _permute_fwd(x, perm, inverse):
    return _permute(x, perm, inverse), None


def _permute_bwd(perm, inverse, _, ct):
    return (ct[np.asarray(inverse, np.int64)],)


_permute.defvjp(_permute_fwd, _permute_bwd)


def _assign(flat_ids: jax.Array, sizes: List[int], strategy: str):
    """TF1's ``p_assignments`` and ``new_ids`` for ``len(sizes)`` partitions."""
    n_part = len(sizes)
    if strategy == "mod":
        return flat_ids % n_part, flat_ids // n_part
    total = sum(sizes)
    per = total // n_part
    extras = total % n_part
    if per == 0:
        raise InvalidArgumentError(
            f"embedding_lookup: {total} rows in {n_part} partitions: 'div' divides the ids by "
            f"{total} // {n_part} = 0 (TF1: Integer division by zero)")
    one = jnp.ones((), flat_ids.dtype)
    p = jnp.maximum(flat_ids // (per + one), (flat_ids - extras) // per)
    new = jnp.where(p < extras, flat_ids % (per + one), (flat_ids - extras) % per)
    return p, new


def embedding_lookup(params: Union[Any, Sequence[Any]], ids: Any,
                     partition_strategy: str = "mod", name: Optional[str] = None,
                     validate_indices: bool = True, max_norm: Any = None) -> jax.Array:
    """``tf.compat.v1.nn.embedding_lookup``: the rows of ``params`` for ``ids``.

    With one partition, ``gather(params, ids)``. With ``P`` partitions (a list), TF1's
    ``_embedding_lookup_and_transform``: the ids are flattened, assigned to partitions
    (``"mod"``: ``p = id % P``, row ``id // P``; ``"div"``: with ``T`` rows in all,
    ``q = T // P``, ``r = T % P``: ``p = max(id // (q + 1), (id - r) // q)``, row
    ``id % (q + 1)`` if ``p < r`` else ``(id - r) % q``), each partition gathered
    (``dynamic_partition`` keeps the ids' order), the rows stitched back into the ids' order
    and reshaped to ``ids.shape + params[0].shape[1:]``. ``max_norm`` then clips each looked-up
    embedding: ``clip_by_norm(result, max_norm, axes=range(ids.ndim, result.ndim))``.

    Gradients: each Variable partition gets an ``IndexedSlices`` of the rows it served, in
    the flattened ids' order (repeats kept), ``dense_shape`` its own shape.

    Args:
      params: a Variable or array ``[N, ...]``, or a list of them (partitions, equal in
        ``shape[1:]``).
      ids: int32/int64 ids of any shape ``[...]``.
      partition_strategy: ``"mod"`` or ``"div"`` (checked only for several partitions, as
        TF1).
      name: accepted for TF1 compatibility (no effect).
      validate_indices: deprecated in TF1, ignored (ids are validated on CPU).
      max_norm: clip each embedding to this l2 norm (``None``: no clipping).

    Returns:
      ``[*ids.shape, *params[0].shape[1:]]`` of the params' dtype.

    Raises:
      ValueError: no params (TF1's messages), an unknown strategy, partitions whose row
        shapes differ.
      InvalidArgumentError: an id out of range (concrete ids), naming the variable.
      TypeError: non-integer ids.
    """
    if params is None:
        raise ValueError("params must be specified")
    if isinstance(params, (list, tuple)) and not params:
        raise ValueError("Length of params is currently 0. Need at least one param.")
    parts: List[Any] = list(params) if isinstance(params, (list, tuple)) else [params]
    ids_arr = _ids_array(ids, "indices")
    if len(parts) == 1:
        result = _gather_rows(parts[0], ids_arr)
        return _clip(result, ids_arr, max_norm)
    if partition_strategy not in ("mod", "div"):
        raise ValueError(f"Unrecognized partition strategy: {partition_strategy}.Must be one "
                         f"of either `mod` or `div`.")
    shapes = [tuple(p.shape) if isinstance(p, Variable) else tuple(jnp.shape(p)) for p in parts]
    dtypes = {jnp.dtype(p.dtype if isinstance(p, Variable) else jnp.asarray(p).dtype)
              for p in parts}
    for s in shapes:
        if len(s) == 0:
            raise ValueError("params must be at least 1 dimensional")
        if s[1:] != shapes[0][1:]:
            raise ValueError(f"Shapes must be equal rank, or the dimensions after the first "
                             f"must be equal: partitions of shapes {list(shapes[0])} and "
                             f"{list(s)} (TF1: merge_with fails)")
    if len(dtypes) > 1:
        raise TypeError(f"embedding_lookup: partitions of different dtypes "
                        f"{sorted(d.name for d in dtypes)}")
    flat = ids_arr.reshape(-1)
    assignment, new_ids = _assign(flat, [s[0] for s in shapes], partition_strategy)
    if N.is_concrete(assignment) and N.is_concrete(new_ids):
        result = _lookup_concrete(parts, np.asarray(assignment), np.asarray(new_ids))
    else:
        result = _lookup_traced(parts, shapes, assignment, new_ids)
    result = result.reshape(tuple(ids_arr.shape) + shapes[0][1:])
    return _clip(result, ids_arr, max_norm)


def _lookup_concrete(parts: list, assignment: np.ndarray, new_ids: np.ndarray) -> jax.Array:
    n_part = len(parts)
    bad = np.flatnonzero((assignment < 0) | (assignment >= n_part))
    if bad.size:  # TF1's DynamicPartition check
        k = int(bad[0])
        raise InvalidArgumentError(
            f"partitions[{k}] = {int(assignment[k])} is not in [0, {n_part})")
    rows, positions = [], []
    for p, param in enumerate(parts):
        pos = np.flatnonzero(assignment == p)
        rows.append(_gather_rows(param, jnp.asarray(new_ids[pos])))
        positions.append(pos)
    order = np.concatenate(positions)
    inverse = np.argsort(order, kind="stable")
    return _permute(jnp.concatenate(rows, axis=0), tuple(inverse.tolist()),
                    tuple(order.tolist()))


def _lookup_traced(parts: list, shapes: list, assignment: jax.Array,
                   new_ids: jax.Array) -> jax.Array:
    result: Optional[jax.Array] = None
    for p, (param, shape) in enumerate(zip(parts, shapes)):
        mine = assignment == p
        pids = jnp.where(mine, new_ids, jnp.asarray(shape[0], new_ids.dtype))
        rows = _gather_rows(param, pids)
        mask = mine.reshape(mine.shape + (1,) * (rows.ndim - 1))
        result = jnp.where(mask, rows, jnp.zeros_like(rows) if result is None else result)
    assert result is not None
    return result


def _clip(result: jax.Array, ids: jax.Array, max_norm: Any) -> jax.Array:
    """TF1's ``_clip``: ``clip_by_norm`` of each embedding (the axes after the ids')."""
    if max_norm is None:
        return result
    return clip_by_norm(result, max_norm, axes=list(range(ids.ndim, result.ndim)))
