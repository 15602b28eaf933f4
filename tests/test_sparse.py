"""``compatopt._sparse``: TF1's de-duplication, and the padded gather/scatter around it.

TF1's ``_deduplicate_indexed_slices`` sums a repeated index's rows sequentially in input
order, starting from ``+0.0`` (spec §2.7, §8.7). The reference below is a NumPy float32 loop
in that order.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from compatopt import _sparse as S
from compatopt.errors import InvalidArgumentError


def _bits(x):
    x = np.asarray(x)
    return x.view(np.dtype(f"uint{8 * x.dtype.itemsize}"))


def _reference(values, indices):
    """Unique sorted indices and each one's rows summed in input order from +0.0."""
    values = np.asarray(values, np.float32)
    rows = sorted(set(int(i) for i in indices))
    out = {r: np.zeros(values.shape[1:], np.float32) for r in rows}
    for v, i in zip(values, indices):
        out[int(i)] = (out[int(i)] + v).astype(np.float32)
    return np.asarray(rows, np.int32), np.stack([out[r] for r in rows])


@pytest.fixture(params=["eager", "jit"])
def dedup(request):
    if request.param == "eager":
        return S.deduplicate
    return jax.jit(S.deduplicate, static_argnums=2)


def test_sum_is_in_input_order(dedup):
    # Row 2: ((0 + 1) + 1e8) + -1e8 = 0 in float32; in reverse order it would be 1.
    values = np.asarray([[1.0], [5.0], [1e8], [-1e8]], np.float32)
    indices = np.asarray([2, 0, 2, 2])
    out = dedup(jnp.asarray(values), jnp.asarray(indices), 4)
    assert np.asarray(out.rows).tolist() == [0, 2, 4, 4]
    np.testing.assert_array_equal(np.asarray(out.values)[:, 0], [5.0, 0.0, 0.0, 0.0])
    assert np.float32(np.float32(np.float32(-1e8) + np.float32(1e8)) + np.float32(1.0)) == 1.0


def test_sum_starts_from_positive_zero(dedup):
    """``0.0 + (-0.0) == +0.0``: a lone ``-0.0`` row comes out as ``+0.0``."""
    values = jnp.asarray([[-0.0, 1.0], [-0.0, -0.0]], jnp.float32)
    out = dedup(values, jnp.asarray([3, 1]), 5)
    assert np.asarray(out.rows).tolist() == [1, 3]
    assert np.asarray(out.values).tolist() == [[0.0, 0.0], [0.0, 1.0]]
    assert not np.any(np.signbit(np.asarray(out.values)))


def test_random_duplicates_match_sequential_float32_sums(dedup):
    rng = np.random.RandomState(0)
    k = 64
    indices = rng.randint(0, 5, size=k)
    values = (rng.standard_normal((k, 3)) * 10.0 ** rng.uniform(-3, 6, (k, 1))).astype(np.float32)
    rows, summed = _reference(values, indices)
    out = dedup(jnp.asarray(values), jnp.asarray(indices), 7)
    u = len(rows)
    np.testing.assert_array_equal(np.asarray(out.rows)[:u], rows)
    assert _bits(np.asarray(out.values)[:u]).tolist() == _bits(summed).tolist()


def test_padding_rows_are_out_of_range_and_zero(dedup):
    values = jnp.ones((5, 2), jnp.float32)
    out = dedup(values, jnp.asarray([1, 1, 1, 0, 1]), 9)
    assert out.rows.dtype == jnp.int32
    assert out.rows.shape == (5,) and out.values.shape == (5, 2)
    assert np.asarray(out.rows).tolist() == [0, 1, 9, 9, 9]
    np.testing.assert_array_equal(np.asarray(out.values), [[1, 1], [4, 4], [0, 0], [0, 0], [0, 0]])


def test_low_precision_and_int64_indices(dedup):
    values = jnp.asarray([[1.0], [2.0], [3.0]], jnp.float16)
    out = dedup(values, jnp.asarray(np.asarray([2, 0, 2], np.int64)), 3)
    assert out.values.dtype == jnp.float16 and out.rows.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(out.values, np.float32)[:2, 0], [2.0, 4.0])


def test_empty_gradient():
    out = S.deduplicate(jnp.zeros((0, 3), jnp.float32), jnp.zeros((0,), jnp.int32), 4)
    assert out.rows.shape == (0,) and out.values.shape == (0, 3)


def test_gather_reads_padding_as_zeros_and_scatter_drops_it():
    x = jnp.arange(12.0, dtype=jnp.float32).reshape(4, 3)
    rows = jnp.asarray([2, 4, 4])  # 4 == num_rows: padding
    got = jax.jit(S.gather)(x, rows)
    np.testing.assert_array_equal(np.asarray(got), [[6, 7, 8], [0, 0, 0], [0, 0, 0]])
    new = jnp.full((3, 3), -1.0, jnp.float32)
    out = jax.jit(S.scatter)(x, rows, new)
    expected = np.arange(12.0).reshape(4, 3)
    expected[2] = -1
    np.testing.assert_array_equal(np.asarray(out), expected)


def test_negative_rows_are_out_of_range_too():
    x = jnp.arange(12.0, dtype=jnp.float32).reshape(4, 3)
    rows = jnp.asarray([-1])
    np.testing.assert_array_equal(np.asarray(jax.jit(S.gather)(x, rows)), [[0, 0, 0]])
    out = jax.jit(S.scatter)(x, rows, jnp.full((1, 3), -1.0, jnp.float32))
    np.testing.assert_array_equal(np.asarray(out), np.asarray(x))


def test_check_indices_message_and_tracers():
    with pytest.raises(InvalidArgumentError, match=r"^Adam \['w'\]: indices\[1\] = 7 is not in \[0, 4\)$"):
        S.check_indices(np.asarray([0, 7, 9]), 4, "Adam ['w']")
    with pytest.raises(InvalidArgumentError, match=r"indices\[0\] = -1"):
        S.check_indices(jnp.asarray([-1]), 4, "x")
    S.check_indices(jnp.asarray([0, 3]), 4, "x")
    jax.jit(lambda i: S.check_indices(i, 4, "x") or i)(jnp.asarray([9]))  # skipped when traced
