"""TF1's candidate samplers (``tf.compat.v1.nn.log_uniform_candidate_sampler``,
``uniform_candidate_sampler``) and ``compute_accidental_hits``, for the sampled losses.

A sampler returns TF1's triple ``(sampled_candidates [num_sampled], true_expected_count
[batch, num_true], sampled_expected_count [num_sampled])`` with TF1's math (``RangeSampler``):

* ``unique=False``: ``num_sampled`` independent draws; expected count ``p * num_sampled``;
* ``unique=True``: draws until ``num_sampled`` distinct values were picked, in order of
  first appearance, counting the draws as ``num_tries``; expected count
  ``-expm1(num_tries * log1p(-p))`` (``p * num_sampled`` when no draw was repeated).

``p`` is TF1's ``Probability``: log-uniform ``log((v + 2) / (v + 1)) / log1p(range_max)``,
uniform ``1 / range_max``, computed in float64 and rounded to float32 as TF1's kernel (a
table for ``range_max <= 2**20``, else float32 arithmetic, off by a few ulp).

Differences from TF1: the draws come from JAX's generator, not TF's Philox stream (the same
distribution, other values), so a port that must replay TF1 exactly passes TF1's
``sampled_values`` to the loss; log-uniform draws use float32 ``exp`` where TF1 uses
double. ``seed`` may be a JAX PRNG key (used as given: the same key gives the same
candidates, so ``jax.vmap`` over keys works), or an int / ``None`` (seed 0): then each call
folds a per-graph draw counter (a non-trainable Variable outside every collection, created
by the first call) into the seed and advances it, so every call of the op, in an eager loop
or in each run of a :func:`compatopt.function` step, draws anew as TF1's stateful op does.
Candidates are int64 under ``jax_enable_x64``, else int32; the expected counts are float32.
The ``-expm1(n * log1p(-p))`` of ``unique=True`` uses XLA's ``log1p``/``expm1`` (TF1: the C
library's): measured within 3 ulp of TF1's (``tests/train/test_nn_sampled.py``).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from compatopt import _numerics as N
from compatopt.errors import InvalidArgumentError
from compatopt.train import _variable as V

__all__ = ["CandidateSamples", "log_uniform_candidate_sampler", "uniform_candidate_sampler",
           "compute_accidental_hits"]

_STATE_COLLECTION = "__compatopt_candidate_sampler_state__"
_TABLE_MAX = 2 ** 20
_FLT_MAX = float(np.finfo(np.float32).max)


class CandidateSamples(NamedTuple):
    """TF1's ``(sampled_candidates, true_expected_count, sampled_expected_count)``."""

    sampled_candidates: jax.Array
    true_expected_count: jax.Array
    sampled_expected_count: jax.Array


def id_dtype() -> jnp.dtype:
    x64 = jax.config.jax_enable_x64  # pyright: ignore[reportAttributeAccessIssue]
    return jnp.dtype(jnp.int64) if x64 else jnp.dtype(jnp.int32)


@functools.lru_cache(maxsize=16)
def _table(kind: str, range_max: int) -> np.ndarray:
    """TF1's ``Probability(v)`` for every ``v`` (double, rounded to float32)."""
    if kind == "uniform":
        return np.full(range_max, np.float32(1.0 / range_max))
    v = np.arange(range_max, dtype=np.float64)
    return (np.log((v + 2.0) / (v + 1.0)) / np.log1p(float(range_max))).astype(np.float32)


def _probability(kind: str, range_max: int, values: jax.Array) -> jax.Array:
    if range_max <= _TABLE_MAX:
        return jnp.asarray(_table(kind, range_max))[values]
    if kind == "uniform":
        return jnp.full(values.shape, np.float32(1.0 / range_max))
    v = values.astype(jnp.float32)
    return jnp.log1p(1.0 / (v + 1.0)) / jnp.float32(np.log1p(float(range_max)))


def _draw(kind: str, range_max: int) -> Callable[[jax.Array, int], jax.Array]:
    """``(key, n) -> n`` independent draws of TF1's ``Sample``."""
    if kind == "uniform":
        return lambda key, n: jax.random.randint(key, (n,), 0, range_max, id_dtype())
    log_range = np.float32(np.log1p(float(range_max)))

    def draw(key, n):
        u = jax.random.uniform(key, (n,), jnp.float32)
        value = jnp.floor(jnp.exp(u * log_range)).astype(id_dtype()) - 1
        return jnp.clip(value, 0, range_max - 1)  # TF1: value % range_ (never taken)

    return draw


def _unique(draw: Callable, key: jax.Array, num_sampled: int) -> Tuple[jax.Array, jax.Array]:
    """TF1's ``unique=True`` loop, a chunk of draws at a time: the first ``num_sampled``
    distinct values in draw order, and the number of draws it took (``num_tries``)."""
    chunk = max(int(num_sampled), 16)
    ids = id_dtype()

    def body(state):
        key, picked, n, tries = state
        key, sub = jax.random.split(key)
        c = draw(sub, chunk)
        earlier = jnp.tril(c[:, None] == c[None, :], -1).any(axis=1)
        seen = (c[:, None] == picked[None, :]).any(axis=1)
        new = ~earlier & ~seen
        rank = n + jnp.cumsum(new, dtype=jnp.int32) - 1
        take = new & (rank < num_sampled)
        picked = picked.at[jnp.where(take, rank, num_sampled)].set(c, mode="drop")
        n_new = n + jnp.sum(take, dtype=jnp.int32)
        last = jnp.argmax(take & (rank == num_sampled - 1)).astype(jnp.int32)
        tries = tries + jnp.where(n_new >= num_sampled, last + 1, chunk)
        return key, picked, n_new, tries

    init = (key, jnp.full((num_sampled,), -1, ids), jnp.int32(0), jnp.int32(0))
    _, picked, _, tries = jax.lax.while_loop(lambda s: s[2] < num_sampled, body, init)
    return picked, tries


def _expected_count(p: jax.Array, num_sampled: int, num_tries: jax.Array) -> jax.Array:
    """TF1's ``ExpectedCountHelper`` (float32)."""
    n = num_tries.astype(jnp.float32)
    repeated = -jnp.expm1(N.mul(n, jnp.log1p(-p)))
    return jnp.where(num_tries == num_sampled, N.mul(p, jnp.float32(num_sampled)), repeated)


def _state() -> V.Variable:
    """This graph's draw counter (created on first use, in no collection but its own)."""
    graph = V.get_default_graph()
    found = graph.get_collection(_STATE_COLLECTION)
    if found:
        return found[0]
    return V.Variable(np.zeros((), np.uint32), trainable=False,
                      name="candidate_sampler_draws", collections=[_STATE_COLLECTION])


def _key(seed: Any) -> jax.Array:
    if isinstance(seed, jax.Array) and (jnp.issubdtype(seed.dtype, jax.dtypes.prng_key)
                                        or seed.dtype == jnp.uint32):
        return seed
    counter = _state()
    key = jax.random.fold_in(jax.random.key(0 if seed is None else int(seed)), counter.value)
    counter.assign_add(1)
    return key


def _true_classes(true_classes: Any, num_true: int, range_max: int) -> jax.Array:
    arr = true_classes.value if isinstance(true_classes, V.Variable) else true_classes
    arr = jnp.asarray(arr)
    if arr.ndim != 2:
        raise InvalidArgumentError("true_classes must be a matrix")
    if arr.shape[1] != num_true:
        raise InvalidArgumentError(f"true_classes must have num_true columns, expected: "
                                   f"{arr.shape[1]} was: {num_true}")
    if not jnp.issubdtype(arr.dtype, jnp.integer):
        raise TypeError(f"Value passed to parameter 'true_classes' has DataType "
                        f"{arr.dtype.name} not in list of allowed values: int64")
    if N.is_concrete(arr):
        bad = np.flatnonzero((np.asarray(arr) < 0) | (np.asarray(arr) >= range_max))
        if bad.size:
            raise InvalidArgumentError(f"`true_candidate` out of range [0, {range_max}), "
                                       f"received {int(np.asarray(arr).reshape(-1)[bad[0]])}")
    return arr


def _candidate_sampler(kind: str, true_classes: Any, num_true: int, num_sampled: int,
                       unique: bool, range_max: int, seed: Any) -> CandidateSamples:
    num_true, num_sampled, range_max = int(num_true), int(num_sampled), int(range_max)
    if range_max <= 0:
        raise InvalidArgumentError("range_max must be positive")
    if unique and num_sampled > range_max:
        raise InvalidArgumentError("Sampler's range is too small.")
    classes = _true_classes(true_classes, num_true, range_max)
    draw, key = _draw(kind, range_max), _key(seed)
    if unique:
        sampled, tries = _unique(draw, key, num_sampled)
    else:
        sampled, tries = draw(key, num_sampled), jnp.int32(num_sampled)
    true_p = _probability(kind, range_max, classes)
    sampled_p = _probability(kind, range_max, sampled)
    return CandidateSamples(sampled, _expected_count(true_p, num_sampled, tries),
                            _expected_count(sampled_p, num_sampled, tries))


def log_uniform_candidate_sampler(true_classes: Any, num_true: int, num_sampled: int,
                                  unique: bool, range_max: int, seed: Any = None,
                                  name: Optional[str] = None) -> CandidateSamples:
    """``tf.compat.v1.nn.log_uniform_candidate_sampler``: candidates from the Zipfian
    ``P(v) = log((v + 2) / (v + 1)) / log(range_max + 1)`` over ``[0, range_max)``.

    Args:
      true_classes: ``[batch, num_true]`` integer classes in ``[0, range_max)``.
      num_true: the number of true classes per example.
      num_sampled: the number of candidates drawn.
      unique: draw without repetition (``num_sampled <= range_max``).
      range_max: the number of classes.
      seed: a JAX PRNG key (used as given), or an int / ``None`` (a seed whose stream
        advances with every call, as TF1's op).
      name: accepted for TF1 compatibility.

    Returns:
      ``CandidateSamples(sampled_candidates [num_sampled], true_expected_count
      [batch, num_true], sampled_expected_count [num_sampled])``.

    Raises:
      InvalidArgumentError: TF1's checks (``true_classes must be a matrix``, a column count
        other than ``num_true``, a concrete class out of range, ``Sampler's range is too
        small.``).
    """
    return _candidate_sampler("log_uniform", true_classes, num_true, num_sampled, unique,
                              range_max, seed)


def uniform_candidate_sampler(true_classes: Any, num_true: int, num_sampled: int,
                              unique: bool, range_max: int, seed: Any = None,
                              name: Optional[str] = None) -> CandidateSamples:
    """``tf.compat.v1.nn.uniform_candidate_sampler``: candidates uniform over
    ``[0, range_max)`` (``p = 1 / range_max``); arguments as
    :func:`log_uniform_candidate_sampler`."""
    return _candidate_sampler("uniform", true_classes, num_true, num_sampled, unique,
                              range_max, seed)


def accidental_hit_mask(true_classes: jax.Array, sampled: jax.Array) -> jax.Array:
    """``[batch, num_sampled]``: where ``compute_accidental_hits`` reports a hit. A sampled
    value repeated in ``sampled`` is reported at its last position only (TF1's map from
    candidate to position keeps the last)."""
    last = ~jnp.triu(sampled[:, None] == sampled[None, :], 1).any(axis=1)
    hit = (true_classes[:, :, None] == sampled[None, None, :].astype(true_classes.dtype))
    return hit.any(axis=1) & last[None, :]


def compute_accidental_hits(true_classes: Any, sampled_candidates: Any, num_true: int,
                            seed: Any = None, name: Optional[str] = None
                            ) -> Tuple[jax.Array, jax.Array, jax.Array]:
    """``tf.compat.v1.nn.compute_accidental_hits``: ``(indices, ids, weights)``, one entry
    per true class ``true_classes[i, k]`` found among the sampled candidates, in row-major
    order of ``(i, k)``: ``indices`` the row ``i`` (int32), ``ids`` the candidate's position
    (its last one if repeated), ``weights`` ``-FLT_MAX`` (float32).

    The outputs' length depends on the values, so the inputs must be concrete (not under
    ``jax.jit``); inside a compiled loss use ``remove_accidental_hits=True`` of the sampled
    losses, which applies the same hits densely.

    Raises:
      InvalidArgumentError: ``true_classes`` not ``[batch, num_true]``, sampled candidates
        not a vector (TF1's messages).
      ValueError: traced inputs.
    """
    classes = jnp.asarray(true_classes)
    sampled = jnp.asarray(sampled_candidates)
    if classes.ndim != 2 or classes.shape[1] != int(num_true):
        raise InvalidArgumentError("true_candidates must be a batch_size * num_true matrix")
    if sampled.ndim != 1:
        raise InvalidArgumentError("sampled_candidates must be a vector, which is typically "
                                   "an output from CandidateSampler")
    if not (N.is_concrete(classes) and N.is_concrete(sampled)):
        raise ValueError("compute_accidental_hits: the number of hits depends on the values; "
                         "call it on concrete arrays (or use remove_accidental_hits=True)")
    pos = {int(c): j for j, c in enumerate(np.asarray(sampled).tolist())}
    indices, ids = [], []
    for i, row in enumerate(np.asarray(classes).tolist()):
        for c in row:
            if int(c) in pos:
                indices.append(i)
                ids.append(pos[int(c)])
    return (jnp.asarray(np.asarray(indices, np.int32)),
            jnp.asarray(np.asarray(ids, id_dtype())),
            jnp.full((len(ids),), -_FLT_MAX, jnp.float32))
