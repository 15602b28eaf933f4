"""``compatopt._numerics``: TF1's per-operation rounding must survive ``jax.jit``.

Reference values are NumPy float32 operations computed one at a time (NumPy never fuses a
multiply into an add), e.g. ``np.float32(a) * np.float32(b)`` and then ``+ c``. Each guard is
paired with the unguarded expression to show that XLA really does rewrite it on this CPU,
so the guard is what makes the difference. Random data are normal numbers well away from
the subnormal range (XLA:CPU and TF1 flush subnormals, NumPy does not).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from compatopt import _numerics as N

N_SAMPLES = 20_000


def _cpu_has_fma() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return any(" fma" in line for line in f if line.startswith("flags"))
    except OSError:
        return False


def _rand(seed, n=N_SAMPLES, low=-4.0, high=4.0):
    """float32 values ``+-m * 2**e``: a wide but normal range, both signs."""
    rng = np.random.RandomState(seed)
    mant = rng.uniform(1.0, 2.0, n)
    exp = rng.uniform(low, high, n).round()
    sign = rng.choice([-1.0, 1.0], n)
    return (sign * mant * 2.0 ** exp).astype(np.float32)


def _positive(seed, n=N_SAMPLES):
    return np.abs(_rand(seed, n))


def _bits(x):
    x = np.asarray(x)
    return x.view(np.dtype(f"uint{8 * x.dtype.itemsize}"))


def _mismatches(actual, expected) -> int:
    return int(np.count_nonzero(_bits(actual) != _bits(expected)))


# ------------------------------------------------------------------------------- mul / FMA


@pytest.fixture(scope="module")
def abc():
    return _rand(1), _rand(2), _rand(3)


def test_mul_then_add_rounds_twice_under_jit(abc):
    a, b, c = abc
    expected = (a * b) + c  # NumPy float32: two roundings
    got = jax.jit(lambda a, b, c: N.mul(a, b) + c)(a, b, c)
    assert _mismatches(got, expected) == 0


def test_mul_in_subtraction_and_sums_of_products(abc):
    a, b, c = abc
    assert _mismatches(jax.jit(lambda a, b, c: c - N.mul(a, b))(a, b, c), c - (a * b)) == 0
    got = jax.jit(lambda a, b, c: N.mul(a, b) + N.mul(c, a))(a, b, c)
    assert _mismatches(got, (a * b) + (c * a)) == 0


@pytest.mark.skipif(not _cpu_has_fma(), reason="this CPU has no FMA: nothing to contract")
def test_plain_mul_add_is_contracted_under_jit(abc):
    """Without the guard XLA:CPU emits a fused multiply-add: one rounding instead of two."""
    a, b, c = abc
    got = np.asarray(jax.jit(lambda a, b, c: a * b + c)(a, b, c))
    two_roundings = (a * b) + c
    one_rounding = (a.astype(np.float64) * b + c).astype(np.float32)  # a*b exact in float64
    assert _mismatches(got, two_roundings) > N_SAMPLES // 100
    # (rounding a float64 sum to float32 is a double rounding, so allow a handful of ties)
    assert _mismatches(got, one_rounding) < N_SAMPLES // 1000


def test_eager_mul_add_is_not_contracted(abc):
    """Op-by-op (eager) JAX already rounds each operation: the reference for ``jit``."""
    a, b, c = abc
    assert _mismatches(jnp.asarray(a) * b + c, (a * b) + c) == 0


# ------------------------------------------------------------------------------------ div


def test_div_by_broadcast_scalar_is_exact_under_jit():
    x = _rand(4)
    for s in (np.float32(0.1), np.float32(3.0), np.float32(-7.3e-3)):
        expected = x / s
        assert _mismatches(jax.jit(lambda x, s: N.div(x, s))(x, s), expected) == 0  # traced
        assert _mismatches(jax.jit(lambda x: N.div(x, jnp.asarray(s)))(x), expected) == 0


def test_plain_div_by_broadcast_scalar_is_rewritten_under_jit():
    """XLA turns ``x / s`` into ``x * (1 / s)``: the guard above is needed."""
    x = _rand(4)
    s = np.float32(0.1)
    got = jax.jit(lambda x, s: x / s)(x, s)
    assert _mismatches(got, x / s) > 0


def test_div_elementwise_and_nested_divisions_are_exact_under_jit():
    a, b, c = _rand(5), _positive(6), _positive(7)
    assert _mismatches(jax.jit(N.div)(a, b), a / b) == 0
    # a / (b / c) and (a / b) / c: XLA re-associates both unless each quotient is hidden.
    assert _mismatches(jax.jit(lambda a, b, c: N.div(a, N.div(b, c)))(a, b, c), a / (b / c)) == 0
    assert _mismatches(jax.jit(lambda a, b, c: N.div(N.div(a, b), c))(a, b, c), (a / b) / c) == 0
    s = np.float32(0.3)
    got = jax.jit(lambda a, b: N.div(a, N.div(b, s)))(a, b)
    assert _mismatches(got, a / (b / s)) == 0


def test_plain_nested_division_is_rewritten_under_jit():
    a, b, c = _rand(5), _positive(6), _positive(7)
    got = jax.jit(lambda a, b, c: a / (b / c))(a, b, c)
    assert _mismatches(got, a / (b / c)) > 0


def test_div_keeps_x_ndim0():
    assert _mismatches(jax.jit(N.div)(np.float32(1.0), np.float32(3.0)),
                       np.float32(1.0) / np.float32(3.0)) == 0


# ---------------------------------------------------------------------------- sqrt / rsqrt


def test_division_by_sqrt_is_exact_under_jit():
    a, b = _rand(8), _positive(9)
    expected = a / np.sqrt(b)
    assert _mismatches(jax.jit(lambda a, b: a / N.sqrt(b))(a, b), expected) == 0


def test_plain_division_by_sqrt_is_rewritten_under_jit():
    """XLA turns ``a / sqrt(b)`` into ``a * rsqrt(b)``."""
    a, b = _rand(8), _positive(9)
    got = jax.jit(lambda a, b: a / jnp.sqrt(b))(a, b)
    assert _mismatches(got, a / np.sqrt(b)) > 0


def test_rsqrt_is_one_over_correctly_rounded_sqrt():
    x, g = _positive(10), _rand(11)
    one = np.float32(1.0)
    expected = one / np.sqrt(x)
    assert _mismatches(jax.jit(N.rsqrt)(x), expected) == 0
    assert _mismatches(jax.jit(lambda g, x: g * N.rsqrt(x))(g, x), g * expected) == 0
    for v in x[:50]:  # the scalar (ndim 0) path
        assert _mismatches(jax.jit(N.rsqrt)(v), one / np.sqrt(v)) == 0


def test_lax_rsqrt_is_not_one_over_sqrt():
    """Why ``rsqrt`` does not use ``lax.rsqrt``."""
    x = _positive(10)
    assert _mismatches(jax.jit(jax.lax.rsqrt)(x), np.float32(1.0) / np.sqrt(x)) > 0


def test_rsqrt_low_precision_rounds_twice():
    """float16: ``T(1) / T(sqrt(x))`` (TF1's scalar path, spec §1.4)."""
    x = _positive(12, 2000).astype(np.float16)
    expected = np.float16(1.0) / np.sqrt(x)  # NumPy float16 ops round each result
    assert _mismatches(N.rsqrt(jnp.asarray(x)), expected) == 0


# ---------------------------------------------------------------------------------- opaque


def _special(dtype) -> np.ndarray:
    info = ml_dtypes.finfo(dtype) if dtype == ml_dtypes.bfloat16 else np.finfo(dtype)
    vals = [0.0, -0.0, np.inf, -np.inf, 1.0, -1.0, float(info.max), -float(info.max),
            float(info.tiny), -float(info.tiny), float(info.tiny) / 2, -float(info.tiny) / 4,
            float(info.smallest_subnormal), -float(info.smallest_subnormal), np.nan]
    return np.asarray(vals, dtype)


def _all_patterns(dtype) -> np.ndarray:
    width = np.dtype(dtype).itemsize * 8
    uint = np.dtype(f"uint{width}")
    if width == 16:
        pats = np.arange(2 ** 16, dtype=np.uint32).astype(uint)
    else:
        rng = np.random.RandomState(13)
        pats = rng.randint(0, 2 ** 32, size=50_000, dtype=np.uint64)
        if width == 64:
            pats = (pats << np.uint64(32)) | rng.randint(0, 2 ** 32, 50_000, dtype=np.uint64)
        pats = pats.astype(uint)
    # every class of value: NaNs with payloads (quiet, signalling, negative), all ones
    extra = np.asarray([np.iinfo(uint).max, np.iinfo(uint).max - 1,
                        (np.iinfo(uint).max >> 1), 1, 0], uint)
    return np.concatenate([pats, extra, _special(dtype).view(uint)])


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16, np.float32, np.float64],
                         ids=["float16", "bfloat16", "float32", "float64"])
@pytest.mark.parametrize("jitted", [False, True], ids=["eager", "jit"])
def test_opaque_returns_every_bit_pattern(dtype, jitted):
    """Every pattern, subnormals, -0.0, inf and NaN payloads included, comes back unchanged
    (opaque does no float arithmetic on its input, so flush-to-zero never applies)."""
    x64 = np.dtype(dtype) == np.float64
    with jax.enable_x64(x64):
        pats = _all_patterns(dtype)
        x = pats.view(dtype)
        fn = jax.jit(N.opaque) if jitted else N.opaque
        out = np.asarray(fn(jnp.asarray(x)))
        assert out.dtype == np.dtype(dtype)
        bad = np.flatnonzero(_bits(out) != pats)
        assert bad.size == 0, (f"{bad.size} patterns changed, e.g. {hex(int(pats[bad[0]]))} -> "
                               f"{hex(int(_bits(out)[bad[0]]))}")


def test_xla_flushes_subnormal_arithmetic_but_opaque_does_not():
    """The note behind the previous test: arithmetic on a subnormal reads it as 0 under XLA
    (as TF1, spec §1.2), while opaque (bit operations only) returns it as it is."""
    sub = np.float32(np.finfo(np.float32).tiny / 4)
    assert float(jax.jit(lambda x: x * np.float32(1.0) + np.float32(0.0))(sub)) in (0.0, sub)
    assert _bits(jax.jit(N.opaque)(sub)) == _bits(sub)


def test_opaque_is_transparent_to_differentiation():
    """The module docstring promises that the guards work under ``grad``: the derivative
    of ``mul(x, 3)`` must be 3, not silently 0."""
    assert float(jax.grad(lambda x: N.mul(x, 3.0))(2.0)) == 3.0
    assert float(jax.grad(lambda x: N.opaque(x * x))(2.0)) == 4.0


def test_guards_work_under_vmap():
    a, b, c = (_rand(s, 600).reshape(20, 30) for s in (14, 15, 16))
    got = jax.jit(jax.vmap(lambda a, b, c: N.mul(a, b) + c))(a, b, c)
    assert _mismatches(got, (a * b) + c) == 0
    s = _positive(17, 20)
    got = jax.jit(jax.vmap(N.div))(a, s)
    assert _mismatches(got, a / s[:, None]) == 0


# ------------------------------------------------------------------------ conversions etc.


def test_to_tf_tensor_follows_convert_to_tensor():
    assert N.to_tf_tensor(0.1).dtype == jnp.float32
    assert float(N.to_tf_tensor(0.1)) == float(np.float32(0.1))
    assert N.to_tf_tensor(3).dtype == jnp.int32
    assert N.to_tf_tensor(True).dtype == jnp.bool_
    assert N.to_tf_tensor(np.float16(0.5)).dtype == jnp.float16
    assert N.to_tf_tensor(jnp.asarray(0.5, jnp.bfloat16)).dtype == jnp.bfloat16
    with jax.enable_x64(True):
        t = N.to_tf_tensor(np.float64(0.1))
        assert t.dtype == jnp.float64 and float(t) == 0.1
        # a Python float is float32 first (spec §1.1): float64(float32(0.1))
        assert float(N.cast(N.to_tf_tensor(0.1), jnp.float64)) == float(np.float32(0.1))


def test_sign_of_negative_zero_is_positive_zero():
    out = np.asarray(N.sign(jnp.asarray([-0.0, 0.0, -2.0, 3.0, np.nan], jnp.float32)))
    assert _bits(out[:2]).tolist() == [0, 0]
    assert out[2:4].tolist() == [-1.0, 1.0]
    assert out[4] == 0.0  # Eigen: (nan > 0) - (nan < 0)


def test_compute_dtype():
    assert N.compute_dtype(jnp.float16) == jnp.float32
    assert N.compute_dtype(jnp.bfloat16) == jnp.float32
    assert N.compute_dtype(jnp.float32) == jnp.float32
    assert N.compute_dtype(jnp.float64) == jnp.float64


def test_is_concrete():
    assert N.is_concrete(jnp.ones(2))
    seen = []
    jax.jit(lambda x: seen.append(N.is_concrete(x)) or x)(jnp.ones(2))
    assert seen == [False]


# ------------------------------------------------------------------ bfloat16 on carriers

BF16 = ml_dtypes.bfloat16


def _f32_patterns() -> np.ndarray:
    """Random float32 bit patterns plus ties, NaNs with low-bit payloads, near-overflow."""
    rng = np.random.RandomState(21)
    pats = rng.randint(0, 2 ** 32, size=100_000, dtype=np.uint64).astype(np.uint32)
    ties = (rng.randint(0, 2 ** 16, size=2_000).astype(np.uint32) << 16) | np.uint32(0x8000)
    extra = np.asarray([0x7F800001, 0xFF800001, 0x7FBFFFFF, 0x7FC12345, 0xFFFFFFFF, 0x7FFFFFFF,
                        0x7F7FFFFF, 0x7F7F8000, 0xFF7F8000, 0x00008000, 0x00018000, 0x80000000,
                        0x3F808000, 0x3F818000], np.uint32)
    return np.concatenate([pats, ties, extra])


@pytest.mark.parametrize("jitted", [False, True], ids=["eager", "jit"])
def test_round_to_bfloat16_is_eigens_conversion(jitted):
    """Against ml_dtypes' float32 -> bfloat16 cast (Eigen's ``float_to_bfloat16_rtne``, what
    TF1 uses): ties to even, overflow to inf, subnormals kept, NaN -> 0x7fc0/0xffc0."""
    pats = _f32_patterns()
    fn = jax.jit(N.round_to_bfloat16) if jitted else N.round_to_bfloat16
    with np.errstate(invalid="ignore"):
        want = pats.view(np.float32).astype(BF16).view(np.uint16)
    got = _bits(fn(jnp.asarray(pats.view(np.float32))))
    assert (got & np.uint32(0xFFFF)).max() == 0  # a bfloat16 value held in float32
    bad = np.flatnonzero((got >> np.uint32(16)).astype(np.uint16) != want)
    assert bad.size == 0, f"{hex(int(pats[bad[0]]))} -> {hex(int(got[bad[0]]))}"


def _bf16_chain(a, b, c, s, mul=N.mul, div=N.div):
    """A kernel-like chain: products into sums, a division by a broadcast scalar, a root,
    a select, a cast of a float32 hyper-parameter."""
    lr = jnp.asarray(np.float32(0.1)).astype(a.dtype)
    m = a + mul(b - a, lr)
    v = div(mul(b, b) + c, s)
    out = jnp.where(m > 0, m - div(m, jnp.sqrt(jnp.abs(v)) + lr), -m)
    return jnp.maximum(out, c), v


def _bf16_chain_numpy(a, b, c, s):
    """The same chain in NumPy bfloat16: ml_dtypes computes each ufunc in float32 and
    rounds its result, one operation at a time (TF1's per-op rounding, spec §1.2)."""
    lr = np.float32(0.1).astype(BF16)
    m = a + (b - a) * lr
    v = (b * b + c) / s
    out = np.where(m > 0, m - m / (np.sqrt(np.abs(v)) + lr), -m)
    return np.maximum(out, c), v


@pytest.mark.parametrize("jitted", [False, True], ids=["eager", "jit"])
def test_round_every_op_bfloat16_matches_per_op_rounding(jitted):
    a, b, c = (_rand(s, 5_000).astype(BF16) for s in (22, 23, 24))
    s = np.float32(3.0).astype(BF16)
    fn = N.round_every_op(_bf16_chain)
    fn = jax.jit(fn) if jitted else fn
    got = fn(*(jnp.asarray(x) for x in (a, b, c, s)))
    want = _bf16_chain_numpy(a, b, c, s)
    for g, w in zip(got, want):
        assert np.asarray(g).dtype == BF16
        assert _mismatches(np.asarray(g), w) == 0
    # (XLA:CPU 0.10 happens to keep every bfloat16 conversion of a plain chain too; its
    # float16 chains and other backends may drop them as excess precision, which the
    # carriers do not depend on.)


def test_round_every_op_bfloat16_keeps_nan_and_inf():
    """NaN and inf inputs: TF1's NaN results are NaN (the canonical 0x7fc0/0xffc0 for
    canonical inputs), infinities stay infinite."""
    vals = np.asarray([np.nan, -np.nan, np.inf, -np.inf, 1.0, 0.0], BF16)
    a = jnp.asarray(vals)
    b = jnp.asarray(np.asarray([1.0, 2.0, -1.0, 1.0, np.inf, 0.0], BF16))
    fn = jax.jit(N.round_every_op(lambda x, y: (x * y + y, jnp.sqrt(x) - y, x / y)))
    with np.errstate(invalid="ignore", divide="ignore"):
        want = (vals * np.asarray(b) + np.asarray(b), np.sqrt(vals) - np.asarray(b),
                vals / np.asarray(b))
    for g, w in zip(fn(a, b), want):
        g = np.asarray(g)
        assert np.array_equal(np.isnan(g), np.isnan(w))
        assert np.array_equal(g[~np.isnan(w)], w[~np.isnan(w)])
        assert np.array_equal(_bits(g)[np.isnan(w)] & np.uint16(0x7FFF),
                              np.full(int(np.isnan(w).sum()), 0x7FC0, np.uint16))


def test_round_every_op_bfloat16_stores_nan_payloads_canonically():
    """A NaN input with a payload: every stored bfloat16 result is sign | 0x7fc0 (Eigen's
    float_to_bfloat16_rtne), also one that later operations read again."""
    bits = np.asarray([0x7F81, 0xFF81, 0x7FFF, 0xFFC1], np.uint16)
    a = jnp.asarray(bits.view(BF16))
    b = jnp.asarray(np.ones(4, BF16))

    def fn(x, y):
        s = x * y
        return s, s + y

    for out in jax.jit(N.round_every_op(fn))(a, b):
        got = _bits(np.asarray(out))
        assert np.array_equal(got & np.uint16(0x7FFF), np.full(4, 0x7FC0, np.uint16))
        assert np.array_equal(got >> 15, bits >> 15)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("make", ["adam", "momentum", "rmsprop", "rmsprop_centered",
                                  "adagrad", "adadelta", "ftrl", "gradient_descent",
                                  "adagrad_da", "proximal_gradient_descent",
                                  "proximal_adagrad"])
def test_jitted_donated_step_copies_no_slot_and_keeps_no_temporary(make, dtype):
    """XLA:CPU has no multi-output fusion. Without care it fuses a copy of e.g. Adam's new
    ``m`` computation into the parameter loop, which then reads the old slots after their
    donated buffers were overwritten (a whole-array copy per slot, per step), or writes
    shared square roots to fresh temporaries (page-faulted each step): bfloat16 outputs are
    read back from their stored values, and Adadelta and FTRL recompute and order their
    loops (``after``); AdagradDA keeps ``var`` an input (``after``) so that donation pairs
    the right buffers."""
    import compatopt as co

    special = {"rmsprop_centered": lambda: co.rmsprop(0.01, centered=True),
               "momentum": lambda: co.momentum(0.01, 0.9)}
    rule = special.get(make, lambda: getattr(co, make)(0.01))()
    n = 4096
    p = [jnp.zeros(n, dtype)]
    state = rule.init(p)
    step = jax.jit(lambda p, s, g: rule.apply(g, s, p), donate_argnums=(0, 1))
    try:
        compiled = step.lower(p, state, p).compile()
    except TypeError as e:  # TF1 has no kernel for this dtype
        pytest.skip(str(e))
    entry = compiled.as_text()[compiled.as_text().index("ENTRY"):]
    assert " copy(" not in "\n".join(line for line in entry.splitlines() if f"[{n}]" in line)
    if dtype == "float32":
        assert compiled.memory_analysis().temp_size_in_bytes < n


def test_after_is_the_identity_with_a_dependency():
    bits = np.asarray([0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0x7FC00000, 0x3F800000],
                      np.uint32)
    x = jnp.asarray(bits.view(np.float32))
    for dep in (x[::-1], -x, jnp.zeros_like(x)):
        out = jax.jit(N.after)(x, dep)
        assert np.array_equal(np.asarray(out).view(np.uint32), bits)
    assert float(jax.grad(lambda v: N.after(v, 2.0 * v) * 3.0)(1.5)) == 3.0


@pytest.mark.parametrize("first", [0.0, -0.0, 1.5, -3e38, np.inf, -np.inf, np.nan])
def test_initial_count_is_zero_and_not_a_compile_time_constant_under_jit(first):
    """``rule.init`` inside a ``jit``: the count is 0 for every first parameter value, and it
    is computed from the parameter (a folded literal would let XLA fold every guard)."""
    p = jnp.array([first, 2.0], jnp.float32)
    eager = N.initial_count([p])
    assert eager.dtype == jnp.int32 and int(eager) == 0
    jitted = jax.jit(lambda p: N.initial_count([p]))
    assert int(jitted(p)) == 0
    hlo = jitted.lower(p).compile().as_text()
    assert "multiply" in hlo and "parameter(0)" in hlo
    assert jax.vmap(lambda p: N.initial_count([p]))(jnp.stack([p, p])).tolist() == [0, 0]


def test_initial_count_without_float_parameters_is_a_plain_zero():
    count = jax.jit(lambda p: N.initial_count([p]))(jnp.arange(3))
    assert count.dtype == jnp.int32 and int(count) == 0
