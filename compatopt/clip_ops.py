"""TF1's gradient clipping (``tf.clip_by_global_norm``, ``tf.global_norm``, ``tf.clip_by_norm``,
``tf.clip_by_value``, ``tf.clip_by_average_norm``) with TF1's arithmetic.

The norms are sums, and a float sum's bits depend on the order of its additions. TF's CPU
kernels (``L2Loss``, ``Sum``) reduce with Eigen's ``InnerMostDimReducer`` (TF 2.21's Eigen,
AVX packets: 8 float32 or 4 float64 lanes), which this module re-enacts with explicit adds
(:func:`eigen_sum`), so the norms are TF1's bits, not ``jnp.sum``'s:

* above ``P * 1024`` values (P the packet size) the range is split in two at the packet
  boundary after its middle, each half reduced recursively, the halves added;
* a leaf of ``n`` values keeps four packet accumulators over blocks of ``4P`` values (added
  lane-wise, in order), folds them ``((a0 + a1) + a2) + a3``, adds the remaining whole
  packets to ``a0`` one by one, sums the last ``n mod P`` values into a scalar from ``0``,
  and returns ``scalar + hsum(a0)``, ``hsum`` halving the packet (``lo + hi``) down to a lane.

The order differs from TF's when TF's cost model splits a full reduction over several
threads, which happens only for large tensors (measured thresholds: ``Sum`` above about
157,000 float32 / 55,000 float64 values, ``L2Loss`` above about 1.7 million float32 /
2 million float64 values); the result is then a re-association of the same partial sums, a
few ulp away. Partial reductions over the trailing axes (``clip_by_norm(t, c, axes=...)``
as ``embedding_lookup``'s ``max_norm`` uses it) reduce each row the same way and are never
split across threads.

Every function takes ``Tensor``-likes (arrays, :class:`~compatopt.Variable`) and
:class:`~compatopt.IndexedSlices`, whose ``values`` are clipped (rows of repeated indices are
counted once each, as TF counts them) and which stay ``IndexedSlices``. They work under
``jax.jit``; the lists are plain Python sequences (``[g for g, _ in grads_and_vars]``).
"""

from __future__ import annotations

import collections.abc
from typing import Any, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

from compatopt import _numerics as N
from compatopt._base import IndexedSlices

__all__ = ["clip_by_average_norm", "clip_by_global_norm", "clip_by_norm", "clip_by_value",
           "eigen_sum", "global_norm", "l2_loss"]

_LEAF_SIZE = 1024  # Eigen's LeafSize<float/double>() for the tree reduction


def _packet_size(dtype: Any) -> int:
    """Lanes of Eigen's AVX packet for ``dtype`` (TF 2.21's x86 build)."""
    return max(1, 32 // jnp.dtype(dtype).itemsize)


def _hsum(p: jax.Array) -> jax.Array:
    """Eigen's ``predux`` of ``[..., P]`` packets: halves added (``lo + hi``) to one lane."""
    while p.shape[-1] > 1:
        h = p.shape[-1] // 2
        p = p[..., :h] + p[..., h:]
    return p[..., 0]


def _leaf_sums(x: jax.Array) -> jax.Array:
    """Eigen's vectorized ``InnerMostDimReducer`` leaf over each row of ``x`` ``[B, n]``."""
    rows, n = x.shape
    size = _packet_size(x.dtype)
    zero = jnp.zeros((), x.dtype)
    acc0 = jnp.zeros((rows, size), x.dtype)
    start = 0
    if n >= 4 * size:
        n4 = n // (4 * size) * (4 * size)
        blocks = jnp.moveaxis(x[:, :n4].reshape(rows, n4 // (4 * size), 4, size), 1, 0)
        accs, _ = lax.scan(lambda c, b: (c + b, None), jnp.zeros((rows, 4, size), x.dtype),
                           blocks)
        acc0 = ((accs[:, 0] + accs[:, 1]) + accs[:, 2]) + accs[:, 3]
        start = n4
    while start + size <= n:  # at most three whole packets are left
        acc0 = acc0 + x[:, start:start + size]
        start += size
    scalar = jnp.broadcast_to(zero, (rows,))
    for j in range(start, n):
        scalar = scalar + x[:, j]
    return scalar + _hsum(acc0)


def _leaves(first: int, n: int, size: int) -> Any:
    """The static tree of Eigen's recursive split: ``(first, n)`` or ``(left, right)``."""
    if n <= size * _LEAF_SIZE:
        return (first, n)
    half = -(-n // 2)
    split = size * (-(-(first + half) // size))
    num_left = min(split - first, n)
    left = _leaves(first, num_left, size)
    if num_left < n:
        return (left, _leaves(split, n - num_left, size))
    return (left, None)


def eigen_sum(x: ArrayLike) -> jax.Array:
    """``reduce_sum`` of all of ``x`` in the order of TF's CPU kernel (Eigen full reduction).

    Args:
      x: any shape, float32 or float64 (other float dtypes are summed in their own dtype
        with the same order, unverified against TF).

    Returns:
      A 0-d array of ``x``'s dtype; ``0`` for an empty ``x``.
    """
    return _eigen_sum(jnp.asarray(x))


@jax.jit
def _eigen_sum(x: jax.Array) -> jax.Array:
    flat = jnp.ravel(x)
    n = flat.shape[0]
    if n == 0:
        return jnp.zeros((), flat.dtype)
    size = _packet_size(flat.dtype)
    tree = _leaves(0, n, size)
    found: list = []

    def collect(node):
        if isinstance(node[0], int):
            found.append(node)
        else:
            collect(node[0])
            if node[1] is not None:
                collect(node[1])

    collect(tree)
    sums: dict = {}
    for length in sorted({m for _, m in found}):
        starts = [f for f, m in found if m == length]
        idx = np.asarray(starts)[:, None] + np.arange(length)[None, :]
        for f, s in zip(starts, _leaf_sums(flat[idx])):
            sums[f] = s

    def combine(node):
        if isinstance(node[0], int):
            return sums[node[0]]
        total = combine(node[0])
        return total if node[1] is None else total + combine(node[1])

    return N.opaque(combine(tree))


@jax.jit
def _row_sums(x: jax.Array) -> jax.Array:
    """Eigen's inner-most-dimension reduction of each row of ``x`` ``[B, n]`` (one thread
    per row, the leaf's order; rows longer than the tree's leaf are split as in the full
    reduction)."""
    rows, n = x.shape
    if n <= _packet_size(x.dtype) * _LEAF_SIZE:
        return N.opaque(_leaf_sums(x))
    return jnp.stack([_eigen_sum(x[i]) for i in range(rows)]) if rows else jnp.zeros(
        (0,), x.dtype)


def _values(t: Any) -> Optional[jax.Array]:
    if t is None:
        return None
    if isinstance(t, IndexedSlices):
        return t.values
    if hasattr(t, "assign") and hasattr(t, "value"):  # a compatopt.Variable, read as a tensor
        return t.value
    return N.to_tf_tensor(t) if isinstance(t, (bool, int, float)) else jnp.asarray(t)


def _rewrap(t: Any, values: jax.Array) -> Any:
    if isinstance(t, IndexedSlices):
        return IndexedSlices(values, t.indices, t.dense_shape)
    return values


def _as_dtype(value: Any, dtype: Any, what: str) -> jax.Array:
    """A clip bound converted as TF's binary ops convert it: Python numbers take the
    tensor's dtype; a tensor of another dtype is refused (TF: ``TypeError``/``ValueError``)."""
    if isinstance(value, (bool, int, float, np.number)) and not isinstance(value, np.ndarray):
        if (isinstance(value, float) or isinstance(value, np.floating)) and not jnp.issubdtype(
                dtype, jnp.inexact) and float(value) != int(float(value)):
            raise TypeError(f"Cannot convert {value} to EagerTensor of dtype "
                            f"{jnp.dtype(dtype).name}")
        return jnp.asarray(value, dtype)
    arr = _values(value)
    assert arr is not None
    if arr.dtype != jnp.dtype(dtype):
        raise TypeError(f"{what}: expected a tensor of dtype {jnp.dtype(dtype).name}, got "
                        f"{arr.dtype.name} (TF1 does not convert it)")
    return arr


def l2_loss(t: ArrayLike) -> jax.Array:
    """``tf.nn.l2_loss(t)``: ``sum(t ** 2) / 2`` as TF's ``L2Loss`` kernel computes it.

    Each value is squared and halved (``(t * t) * 0.5``, one rounding each), then summed in
    Eigen's order (:func:`eigen_sum`).

    Args:
      t: a tensor of any shape (``[...]``), floating point.

    Returns:
      A 0-d array of ``t``'s dtype.
    """
    return _l2_loss(jnp.asarray(t))


@jax.jit
def _l2_loss(t: jax.Array) -> jax.Array:
    half = N.opaque(N.mul(t, t) * jnp.asarray(0.5, t.dtype))
    return _eigen_sum(half)


def _check_sequence(t_list: Any) -> list:
    if not isinstance(t_list, collections.abc.Sequence) or isinstance(t_list, str):
        raise TypeError(f"`t_list` should be a sequence of tensors. Received {type(t_list)}.")
    return list(t_list)


def global_norm(t_list: Sequence[Any], name: Optional[str] = None) -> jax.Array:
    """``tf.compat.v1.global_norm``: ``sqrt(sum_i ||t_i||^2)`` over the non-``None`` entries.

    TF1 computes ``sqrt(reduce_sum(stack([l2_loss(t_i) ...])) * 2.0)``: each tensor's
    :func:`l2_loss` (its squares halved, summed in Eigen's order), those halves summed in
    Eigen's order, doubled, square-rooted; an ``IndexedSlices`` contributes its ``values``
    (a repeated index is counted each time).

    Args:
      t_list: a list or tuple of tensors ``[...]``, ``IndexedSlices`` or ``None``, all of one
        floating-point dtype.
      name: accepted for TF1 compatibility (no effect).

    Returns:
      A 0-d array of the tensors' dtype (``0`` for an empty or all-``None`` list, float32).

    Raises:
      TypeError: ``t_list`` is not a sequence (a dict, a string), or the dtypes differ.
    """
    values = [_values(t) for t in _check_sequence(t_list)]
    halves = [l2_loss(v) for v in values if v is not None]
    if not halves:
        return jnp.zeros((), jnp.float32)
    dtypes = {h.dtype for h in halves}
    if len(dtypes) > 1:
        names = [jnp.dtype(d).name for d in sorted(dtypes, key=str)]
        raise TypeError(f"global_norm: the tensors' dtypes differ ({', '.join(names)}); TF1's "
                        f"stack of their l2_loss refuses them")
    half_squared_norm = eigen_sum(jnp.stack(halves))
    two = jnp.asarray(2.0, half_squared_norm.dtype)
    return N.sqrt(N.opaque(half_squared_norm * two))


def clip_by_global_norm(t_list: Sequence[Any], clip_norm: Any, use_norm: Any = None,
                        name: Optional[str] = None) -> Tuple[List[Any], jax.Array]:
    """``tf.clip_by_global_norm``: every tensor times ``clip_norm / max(global_norm, clip_norm)``.

    TF1's arithmetic, in the norm's dtype ``T``::

        use_norm = global_norm(t_list)                         # unless given
        scale = clip_norm * minimum(1.0 / use_norm, 1.0 / clip_norm) + (use_norm - use_norm)
        t_i  -> t_i * cast(scale, t_i.dtype)

    So an unclipped list is still multiplied by ``clip_norm * (1 / clip_norm)`` (which may
    differ from 1 in the last bit), and an infinite or NaN norm makes every value NaN (the
    ``use_norm - use_norm`` term), as TF1 signals it.

    Args:
      t_list: a list or tuple of tensors, ``IndexedSlices`` (their ``values`` are scaled, the
        indices kept) or ``None`` (kept).
      clip_norm: a 0-d tensor or Python number > 0 (converted to ``T``).
      use_norm: the global norm to use instead of computing it (0-d).
      name: accepted for TF1 compatibility (no effect).

    Returns:
      ``(list_clipped, global_norm)``: a list like ``t_list`` and the norm used.

    Raises:
      TypeError: ``t_list`` is not a sequence.
    """
    t_list = _check_sequence(t_list)
    if use_norm is None:
        use_norm = global_norm(t_list, name)
    norm = _values(use_norm)
    assert norm is not None
    c = _as_dtype(clip_norm, norm.dtype, "clip_by_global_norm: clip_norm")
    one = jnp.ones((), norm.dtype)
    scale_for_finite = N.mul(c, jnp.minimum(N.div(one, norm), N.div(one, c)))
    scale = N.opaque(scale_for_finite + N.opaque(N.opaque(norm) - N.opaque(norm)))
    clipped: List[Any] = []
    for t in t_list:
        v = _values(t)
        if v is None:
            clipped.append(None)
            continue
        clipped.append(_rewrap(t, N.mul(v, scale.astype(v.dtype))))
    return clipped, norm


def clip_by_norm(t: Any, clip_norm: Any, axes: Any = None,
                 name: Optional[str] = None) -> Any:
    """``tf.clip_by_norm``: ``t * clip_norm / max(||t||_axes, clip_norm)``.

    TF1's arithmetic, in ``t``'s dtype::

        l2sum = reduce_sum(t * t, axes, keepdims=True)      # Eigen's order
        l2norm = where(l2sum > 0, sqrt(l2sum), l2sum)
        t -> (t * clip_norm) / maximum(l2norm, clip_norm)

    An unclipped ``t`` is still ``(t * clip_norm) / clip_norm`` (may differ from ``t`` in the
    last bit). A negative Python ``clip_norm`` is taken as 0; a tensor one through
    ``maximum(clip_norm, 0)``.

    Args:
      t: a tensor ``[...]`` or ``IndexedSlices`` (its ``values`` clipped as a whole, or along
        ``axes`` of the values).
      clip_norm: a 0-d tensor or Python number.
      axes: the axes the norm is taken over (ints or a sequence); ``None``: all.
      name: accepted for TF1 compatibility (no effect).

    Returns:
      A tensor like ``t`` (an ``IndexedSlices`` for one).
    """
    values = _values(t)
    assert values is not None
    if np.isscalar(clip_norm):
        c = jnp.asarray(0 if clip_norm < 0 else clip_norm, values.dtype)  # type: ignore
    else:
        cn = _values(clip_norm)
        assert cn is not None
        c = jnp.maximum(cn, jnp.zeros((), cn.dtype)).astype(values.dtype)
    if c.ndim != 0:
        raise ValueError(f"clip_norm must be a 0-D (scalar) tensor, got shape {list(c.shape)}")
    l2sum = _reduce_sum_keepdims(N.mul(values, values), axes)
    pred = l2sum > 0
    l2sum_safe = jnp.where(pred, l2sum, jnp.ones_like(l2sum))
    l2norm = jnp.where(pred, N.sqrt(l2sum_safe), l2sum)
    intermediate = N.mul(values, c)
    return _rewrap(t, _div(intermediate, jnp.maximum(l2norm, c)))


@jax.custom_jvp
def _div(x: jax.Array, y: jax.Array) -> jax.Array:
    """``x / y`` correctly rounded (``N.div``: a broadcast ``y`` stays a division), with the
    quotient rule as its derivative (``N.div`` hides a broadcast divisor behind bitcasts,
    which have none)."""
    return N.div(x, y)


@_div.defjvp
def _div_jvp(primals, tangents):
    x, y = primals
    tx, ty = tangents
    out = _div(x, y)
    return out, (tx - out * ty) / y


def _reduce_sum_keepdims(x: jax.Array, axes: Any) -> jax.Array:
    """``reduce_sum(x, axes, keepdims=True)`` in TF's CPU order for a full reduction or one
    over trailing axes (the rows are contiguous); other axes are summed with ``jnp.sum``
    (TF's order there is not re-enacted: a difference of a few ulp is possible)."""
    if x.ndim == 0:
        return x
    if axes is None:
        red = tuple(range(x.ndim))
    else:
        arr = np.asarray(axes).reshape(-1)
        red = tuple(sorted({int(a) % x.ndim for a in arr}))
    if not red:
        return x
    keep_shape = tuple(1 if i in red else d for i, d in enumerate(x.shape))
    kept = [i for i in range(x.ndim) if i not in red]
    # TF merges adjacent axes of the same kind; size-1 axes do not change the order.
    if all(i < min(red) or x.shape[i] == 1 for i in kept) or not kept:
        lead = int(np.prod([x.shape[i] for i in range(x.ndim) if i not in red]))
        inner = int(np.prod([x.shape[i] for i in red]))
        if lead == 1:
            return eigen_sum(x).reshape(keep_shape)
        moved = x.reshape(lead, inner) if kept == list(range(len(kept))) else jnp.moveaxis(
            x, kept, list(range(len(kept)))).reshape(lead, inner)
        return _row_sums(moved).reshape(keep_shape)
    return jnp.sum(x, axis=red, keepdims=True)


def clip_by_value(t: Any, clip_value_min: Any, clip_value_max: Any,
                  name: Optional[str] = None) -> Any:
    """``tf.clip_by_value``: ``maximum(minimum(t, clip_value_max), clip_value_min)``.

    Args:
      t: a tensor ``[...]`` or ``IndexedSlices`` (its ``values`` clipped).
      clip_value_min / clip_value_max: scalars or tensors broadcastable to ``t`` (not
        enlarging it); Python numbers take ``t``'s dtype.
      name: accepted for TF1 compatibility (no effect).

    Returns:
      A tensor like ``t``. NaN values stay NaN (TF's ``Minimum``/``Maximum`` propagate NaN).

    Raises:
      TypeError: a float bound for an integer ``t``.
      InvalidArgumentError: a bound that would broadcast ``t`` to a larger shape.
    """
    from compatopt.errors import InvalidArgumentError

    values = _values(t)
    assert values is not None
    hi = _as_dtype(clip_value_max, values.dtype, "clip_by_value: clip_value_max")
    lo = _as_dtype(clip_value_min, values.dtype, "clip_by_value: clip_value_min")
    t_min = jnp.minimum(values, hi)
    t_max = jnp.maximum(t_min, lo)
    if t_max.shape != values.shape:
        raise InvalidArgumentError(
            f"Incompatible shapes: {list(values.shape)} vs. "
            f"{list(jnp.shape(hi) if t_min.shape != values.shape else jnp.shape(lo))}")
    return _rewrap(t, t_max)


def clip_by_average_norm(t: Any, clip_norm: Any, name: Optional[str] = None) -> jax.Array:
    """``tf.compat.v1.clip_by_average_norm``: ``t * clip_norm * min(n / ||t||, 1 / clip_norm)``.

    TF1's arithmetic (``n = float32(size(t))``, so ``t`` must be float32)::

        l2norm_inv = rsqrt(reduce_sum(t * t))               # 1 / sqrt, two roundings
        t -> (t * clip_norm) * minimum(l2norm_inv * n, 1.0 / clip_norm)

    Args:
      t: a float32 tensor ``[...]``.
      clip_norm: a 0-d tensor or Python number > 0.
      name: accepted for TF1 compatibility (no effect).

    Returns:
      A float32 tensor like ``t``.
    """
    values = _values(t)
    assert values is not None
    if values.dtype != jnp.float32:
        raise TypeError(f"clip_by_average_norm: TF1 multiplies by the float32 element count, "
                        f"so t must be float32, got {values.dtype.name}")
    c = _as_dtype(clip_norm, values.dtype, "clip_by_average_norm: clip_norm")
    n_element = jnp.asarray(float(values.size), jnp.float32)
    l2norm_inv = N.rsqrt(eigen_sum(N.mul(values, values)))
    one = jnp.ones((), jnp.float32)
    factor = jnp.minimum(N.mul(l2norm_inv, n_element), N.div(one, c))
    return N.mul(N.mul(values, c), factor)
