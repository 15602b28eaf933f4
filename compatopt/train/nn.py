"""``tf.compat.v1.nn.embedding_lookup`` and ``tf.gather`` on :class:`~compatopt.Variable`\\ s,
whose gradients are TF1's ``IndexedSlices``; the sampled losses built on them
(``nce_loss``, ``sampled_softmax_loss``, ``sigmoid_cross_entropy_with_logits``) and TF1's
candidate samplers (:mod:`compatopt.train._candidate_sampling`).

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
from compatopt.train._candidate_sampling import accidental_hit_mask, id_dtype
from compatopt.train._candidate_sampling import (
    compute_accidental_hits as compute_accidental_hits,
    log_uniform_candidate_sampler as log_uniform_candidate_sampler,
    uniform_candidate_sampler as uniform_candidate_sampler,
)
from compatopt.train._variable import Variable

__all__ = ["embedding_lookup", "gather", "nce_loss", "sampled_softmax_loss",
           "sigmoid_cross_entropy_with_logits", "log_uniform_candidate_sampler",
           "uniform_candidate_sampler", "compute_accidental_hits"]

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


# -------------------------------------------------------------------------- sampled losses

_FLT_MAX = float(np.finfo(np.float32).max)


def sigmoid_cross_entropy_with_logits(_sentinel: Any = None, labels: Any = None,
                                      logits: Any = None,
                                      name: Optional[str] = None) -> jax.Array:
    """``tf.compat.v1.nn.sigmoid_cross_entropy_with_logits``, TF1's stable form::

        max(x, 0) - x * z + log1p(exp(-|x|))      (x = logits, z = labels)

    computed as TF1 composes it (``where(x >= 0, x, 0) - x * z``, then
    ``+ log1p(exp(where(x >= 0, -x, x)))``), the product rounded on its own.

    Args:
      labels: ``[...]`` targets in ``[0, 1]``, converted to the logits' dtype.
      logits: ``[...]`` float logits.

    Returns:
      ``[...]`` the elementwise losses.

    Raises:
      ValueError: positional arguments, a missing argument, different shapes (TF1's
        messages).
    """
    if _sentinel is not None:
        raise ValueError("Only call `sigmoid_cross_entropy_with_logits` with named arguments "
                         "(labels=..., logits=..., ...). Received unnamed argument: "
                         f"{_sentinel}")
    if labels is None or logits is None:
        raise ValueError("Both labels and logits must be provided.")
    x = logits.value if isinstance(logits, Variable) else jnp.asarray(logits)
    z = jnp.asarray(labels.value if isinstance(labels, Variable) else labels, x.dtype)
    if tuple(x.shape) != tuple(z.shape):
        raise ValueError(f"logits and labels must have the same shape ({tuple(x.shape)} vs "
                         f"{tuple(z.shape)})")
    zeros = jnp.zeros_like(x)
    cond = x >= zeros
    relu_logits = jnp.where(cond, x, zeros)
    neg_abs_logits = jnp.where(cond, -x, x)
    return (relu_logits - N.mul(x, z)) + jnp.log1p(jnp.exp(neg_abs_logits))


@jax.custom_vjp
def _softmax_xent(labels: jax.Array, logits: jax.Array) -> jax.Array:
    """TF1's ``SoftmaxCrossEntropyWithLogits`` kernel (last axis)::

        s = x - max(x);  loss = sum(z * (log(sum(exp(s))) - s))

    with TF1's gradient ``g * (exp(s) / sum(exp(s)) - z)`` (and ``-g * log_softmax(x)``
    for the labels)."""
    return _softmax_xent_fwd(labels, logits)[0]


def _softmax_xent_fwd(labels, logits):
    shifted = logits - jnp.max(logits, axis=-1, keepdims=True)
    exp = jnp.exp(shifted)
    sum_exp = jnp.sum(exp, axis=-1, keepdims=True)
    loss = jnp.sum(N.mul(labels, jnp.log(sum_exp) - shifted), axis=-1)
    backprop = N.div(exp, sum_exp) - labels
    return loss, (backprop, logits)


def _softmax_xent_bwd(res, g):
    backprop, logits = res
    g = g[..., None]
    return N.mul(g, -jax.nn.log_softmax(logits, axis=-1)), N.mul(g, backprop)


_softmax_xent.defvjp(_softmax_xent_fwd, _softmax_xent_bwd)


def _sum_rows(x: jax.Array) -> jax.Array:
    """TF1's ``_sum_rows``: ``matmul(x, ones([cols, 1]))`` reshaped to ``[rows]``."""
    return (x @ jnp.ones((x.shape[1], 1), x.dtype)).reshape(-1)


def _read(x: Any) -> jax.Array:
    return x.value if isinstance(x, Variable) else jnp.asarray(x)


def _compute_sampled_logits(weights: Any, biases: Any, labels: Any, inputs: Any,
                            num_sampled: int, num_classes: int, num_true: int,
                            sampled_values: Any, subtract_log_q: bool,
                            remove_accidental_hits: bool, partition_strategy: str,
                            seed: Any = None):
    """TF1's ``_compute_sampled_logits``: ``(logits [batch, num_true + num_sampled],
    labels)``, the true classes' logits first.

    ``all_ids = concat(labels_flat, sampled)`` are looked up once in ``weights`` and once in
    ``biases`` (so their gradients are ``IndexedSlices`` over ``all_ids``);
    ``sampled_logits = inputs @ sampled_w^T + sampled_b``, ``true_logits`` the row-wise dots
    (``_sum_rows``) plus ``true_b``; accidental hits get ``-FLT_MAX`` added; then
    ``log(expected_count)`` is subtracted (``subtract_log_q``). Labels: ``1 / num_true`` for
    the true classes, 0 for the sampled ones.
    """
    ids_dtype = id_dtype()  # TF1: int64
    labels_arr = _ids_array(labels, "labels").astype(ids_dtype)
    x = _read(inputs)
    if sampled_values is None:
        sampled_values = log_uniform_candidate_sampler(
            true_classes=labels_arr.reshape(-1, num_true), num_true=num_true,
            num_sampled=num_sampled, unique=True, range_max=num_classes, seed=seed)
    sampled, true_expected_count, sampled_expected_count = (
        jax.lax.stop_gradient(_read(s)) for s in sampled_values)
    labels_flat = labels_arr.reshape(-1)
    sampled = sampled.astype(ids_dtype)
    all_ids = jnp.concatenate([labels_flat, sampled], axis=0)
    n_true = labels_flat.shape[0]

    all_w = embedding_lookup(weights, all_ids, partition_strategy=partition_strategy)
    all_w = all_w.astype(x.dtype)
    true_w, sampled_w = all_w[:n_true], all_w[n_true:]
    sampled_logits = x @ sampled_w.T

    all_b = embedding_lookup(biases, all_ids, partition_strategy=partition_strategy)
    all_b = all_b.astype(x.dtype)
    true_b, sampled_b = all_b[:n_true], all_b[n_true:]

    dim = true_w.shape[1]
    row_wise_dots = N.mul(x[:, None, :], true_w.reshape(-1, num_true, dim))
    true_logits = _sum_rows(row_wise_dots.reshape(-1, dim)).reshape(-1, num_true)
    true_logits = true_logits + true_b.reshape(-1, num_true)
    sampled_logits = sampled_logits + sampled_b

    if remove_accidental_hits:
        hits = accidental_hit_mask(labels_arr.reshape(-1, num_true), sampled)
        sampled_logits = sampled_logits + jnp.where(hits, jnp.asarray(-_FLT_MAX, x.dtype),
                                                    jnp.zeros((), x.dtype))
    if subtract_log_q:
        true_logits = true_logits - jnp.log(true_expected_count.astype(x.dtype))
        sampled_logits = sampled_logits - jnp.log(sampled_expected_count.astype(x.dtype))

    out_logits = jnp.concatenate([true_logits, sampled_logits], axis=1)
    out_labels = jnp.concatenate([jnp.ones_like(true_logits) / num_true,
                                  jnp.zeros_like(sampled_logits)], axis=1)
    return out_logits, out_labels


def nce_loss(weights: Any, biases: Any, labels: Any, inputs: Any, num_sampled: int,
             num_classes: int, num_true: int = 1, sampled_values: Any = None,
             remove_accidental_hits: bool = False, partition_strategy: str = "mod",
             name: str = "nce_loss") -> jax.Array:
    """``tf.compat.v1.nn.nce_loss``: noise-contrastive estimation, per example::

        loss[b] = sum_j sigmoid_cross_entropy(labels=l[b, j], logits=o[b, j])

    over ``o, l = _compute_sampled_logits(..., subtract_log_q=True)`` (the true classes'
    logits with label ``1 / num_true``, the sampled ones with 0), summed by TF1's
    ``_sum_rows`` (a matmul with ones).

    Gradients: ``weights`` and ``biases`` (Variables, or lists of them: partitions) get
    ``IndexedSlices`` over ``concat(labels.flatten(), sampled)`` (repeats kept), as TF1's
    gather gradients, so the optimizers' sparse kernels run.

    Args:
      weights: ``[num_classes, dim]`` Variable/array, or a list of partitions.
      biases: ``[num_classes]``.
      labels: ``[batch, num_true]`` integer classes.
      inputs: ``[batch, dim]`` the activations.
      num_sampled: negatives drawn per batch (shared by all examples).
      num_classes: the number of classes.
      num_true: true classes per example.
      sampled_values: TF1's ``(sampled_candidates, true_expected_count,
        sampled_expected_count)``; ``None`` draws them with
        :func:`log_uniform_candidate_sampler` (``unique=True``; JAX's generator, a fresh
        draw per call).
      remove_accidental_hits: add ``-FLT_MAX`` to the logit of a sampled class that is one
        of the example's true classes.
      partition_strategy: ``"mod"`` or ``"div"`` for partitioned weights (see
        :func:`embedding_lookup`).
      name: accepted for TF1 compatibility.

    Returns:
      ``[batch]`` the per-example NCE losses.
    """
    logits, labels_out = _compute_sampled_logits(
        weights, biases, labels, inputs, num_sampled, num_classes, num_true, sampled_values,
        subtract_log_q=True, remove_accidental_hits=remove_accidental_hits,
        partition_strategy=partition_strategy)
    sampled_losses = sigmoid_cross_entropy_with_logits(labels=labels_out, logits=logits)
    return _sum_rows(sampled_losses)


def sampled_softmax_loss(weights: Any, biases: Any, labels: Any, inputs: Any,
                         num_sampled: int, num_classes: int, num_true: int = 1,
                         sampled_values: Any = None, remove_accidental_hits: bool = True,
                         partition_strategy: str = "mod", name: str = "sampled_softmax_loss",
                         seed: Any = None) -> jax.Array:
    """``tf.compat.v1.nn.sampled_softmax_loss``: the softmax cross-entropy over the true and
    the sampled classes' logits (``_compute_sampled_logits(..., subtract_log_q=True)``,
    labels ``1 / num_true`` on the true classes, held constant), with TF1's kernel
    (``SoftmaxCrossEntropyWithLogits``) and its gradient ``softmax - labels``.

    Arguments as :func:`nce_loss`; ``remove_accidental_hits`` defaults to True (TF1), and
    ``seed`` seeds the default sampler (an int, or a JAX key used as given).

    Returns:
      ``[batch]`` the per-example losses.
    """
    logits, labels_out = _compute_sampled_logits(
        weights, biases, labels, inputs, num_sampled, num_classes, num_true, sampled_values,
        subtract_log_q=True, remove_accidental_hits=remove_accidental_hits,
        partition_strategy=partition_strategy, seed=seed)
    return _softmax_xent(jax.lax.stop_gradient(labels_out), logits)
