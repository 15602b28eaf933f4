"""co.nn's sampled losses and candidate samplers against TF1 graph mode
(tools/make_tf1_word2vec_fixtures.py, ``tests/fixtures/tf1/sampled_losses``).

* ``nce_loss`` / ``sampled_softmax_loss`` (1 and 2 true classes, accidental hits removed or
  not, 1 or 3 partitions "mod"/"div"), fed TF1's recorded ``sampled_values``: per-example
  losses, ``_compute_sampled_logits``' logits and labels, the gradients of
  ``sum(loss * w)``: ``IndexedSlices`` per weight partition and for the biases (indices and
  dense shapes exactly TF1's), dense for the inputs.
* ``sigmoid_cross_entropy_with_logits`` and its gradient; ``compute_accidental_hits``.
* The samplers: TF1's Philox stream is not JAX's, so only what does not depend on the draws
  is compared with TF1: the expected counts TF1 gave for *its* candidates (``p * num_sampled``
  bit for bit; ``-expm1(num_tries * log1p(-p))`` with the ``num_tries`` it implies). Our own
  draws are checked for shapes, dtypes, range, uniqueness, the same formulas, re-drawing per
  call, and (loosely) their distribution.
"""

from __future__ import annotations

import importlib.util
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import compatopt as co
from compatopt.train import _candidate_sampling as cs
from compatopt.train import nn as co_nn

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
FIX = os.path.join(ROOT, "tests", "fixtures", "tf1", "sampled_losses")
DATA = np.load(os.path.join(FIX, "cases.npz"))
with open(os.path.join(FIX, "cases.json")) as _f:
    META = json.load(_f)


def _generator() -> Any:
    """The fixture generator (its ``loss_inputs`` / ``partition`` rebuild the inputs)."""
    path = os.path.join(ROOT, "tools", "make_tf1_word2vec_fixtures.py")
    spec = importlib.util.spec_from_file_location("make_tf1_word2vec_fixtures", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GEN = _generator()
X = GEN.loss_inputs()
NUM_CLASSES, NUM_SAMPLED = GEN.NUM_CLASSES, GEN.NUM_SAMPLED
FLT_MAX = np.finfo(np.float32).max


def assert_bits(actual, expected) -> None:
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    np.testing.assert_array_equal(actual.view(f"u{actual.itemsize}"),
                                  expected.view(f"u{expected.itemsize}"))


def assert_close(actual, expected, rtol: float, atol: float = 0.0) -> None:
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


def tf_probability(kind: str, range_max: int, values) -> np.ndarray:
    """TF1's ``RangeSampler::Probability`` (double, rounded to float32), written out here."""
    v = np.asarray(values, np.float64)
    if kind == "uniform":
        return np.full(v.shape, np.float32(1.0 / range_max))
    return (np.log((v + 2.0) / (v + 1.0)) / np.log(range_max + 1.0)).astype(np.float32)


# ------------------------------------------------------------------------- sampled losses

# Not bit for bit, and why (float32 throughout; tolerances the tightest that pass, with
# margin of about 2x):
# * logits: ``inputs @ sampled_w^T`` is XLA's dot where TF1 runs Eigen's matmul (another
#   summation order over the 8 dims), and ``log(expected_count)`` is XLA's log, not Eigen's.
#   The ``-FLT_MAX`` of a removed accidental hit absorbs both, so those entries are exact.
# * losses: on top of the logits, XLA's ``exp``/``log1p`` (sigmoid) or ``exp``/``log``
#   (softmax) against Eigen's vectorised ones, and ``_sum_rows``' matmul.
# * gradients: the same kernels' differences, then accumulated in another order; the
#   weight rows' values are sums of terms of both signs, so small entries lose relative
#   precision: an absolute tolerance relative to the array's magnitude bounds them.
LOGITS_RTOL, LOGITS_ATOL = 1e-6, 1e-6
LOSS_RTOL = 3e-7
GRAD_RTOL, GRAD_ATOL = 2e-6, 1e-6


def _loss_args(case: dict) -> tuple:
    nt, parts = case["num_true"], case["partitions"]
    labels = X["labels1"] if nt == 1 else X["labels2"]
    ws = [co.Variable(p, name=f"w{i}")
          for i, p in enumerate(GEN.partition(X["weights"], parts, case["strategy"]))]
    b = co.Variable(X["biases"], name="b")
    inp = co.Variable(X["inputs"], name="inputs")
    sv = (X["sampled"], X["true_expected_count2"][:, :nt], X["sampled_expected_count"])
    args = dict(weights=ws if parts > 1 else ws[0], biases=b, labels=labels, inputs=inp,
                num_sampled=NUM_SAMPLED, num_classes=NUM_CLASSES, num_true=nt,
                sampled_values=sv, remove_accidental_hits=case["remove_accidental_hits"],
                partition_strategy=case["strategy"])
    fn = co.nn.nce_loss if case["loss"] == "nce" else co.nn.sampled_softmax_loss
    return fn, args, ws, b, inp


@pytest.mark.parametrize("case", META["loss_cases"], ids=lambda c: c["key"])
def test_sampled_loss_matches_tf1(case):
    key = case["key"]
    fn, args, ws, b, inp = _loss_args(case)

    assert_close(fn(**args), DATA[f"{key}/loss"], rtol=LOSS_RTOL)

    logits, labels = co_nn._compute_sampled_logits(subtract_log_q=True, **args)
    want = DATA[f"{key}/logits"]
    hit = want <= -FLT_MAX
    assert bool(hit.any()) == (case["remove_accidental_hits"]
                               and bool(np.isin(X["sampled"], args["labels"]).any()))
    assert_bits(np.asarray(logits)[hit], want[hit])
    assert_close(np.where(hit, 0, logits), np.where(hit, 0, want).astype(np.float32),
                 rtol=LOGITS_RTOL, atol=LOGITS_ATOL)
    assert_bits(labels, DATA[f"{key}/labels"])

    opt = co.train.GradientDescentOptimizer(0.1)
    grads = opt.compute_gradients(lambda: jnp.sum(fn(**args) * X["loss_weights"]),
                                  var_list=ws + [b, inp])
    assert [v for _, v in grads] == ws + [b, inp]
    for name, (g, v) in zip([f"w{i}" for i in range(len(ws))] + ["b"], grads):
        assert isinstance(g, co.IndexedSlices), name
        np.testing.assert_array_equal(g.indices, DATA[f"{key}/grad/{name}/indices"])
        assert g.dense_shape == tuple(v.shape)
        want = DATA[f"{key}/grad/{name}/values"]
        assert_close(g.values, want, rtol=GRAD_RTOL, atol=GRAD_ATOL * np.abs(want).max())
    g_inp = grads[-1][0]
    assert not isinstance(g_inp, co.IndexedSlices)
    want = DATA[f"{key}/grad/inputs"]
    assert_close(g_inp, want, rtol=GRAD_RTOL, atol=GRAD_ATOL * np.abs(want).max())


# Not bit for bit: XLA's exp/log1p against Eigen's (a few ulp; tiny losses of |x| ~ 30 carry
# the largest relative error, hence the small absolute floor). The gradient is
# ``w * (where(x >= 0, 1, 0) - z + d log1p(exp(-|x|)))``: terms of order 1 that cancel, so its
# error is an ulp of 1 (1.2e-7) rather than of the result.
SIGMOID_RTOL, SIGMOID_ATOL = 3e-7, 1e-12
SIGMOID_GRAD_ATOL = 1.2e-7


def test_sigmoid_cross_entropy_matches_tf1():
    labels, logits, w = X["sigmoid_labels"], X["sigmoid_logits"], X["sigmoid_weights"]
    loss = co.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits)
    assert_close(loss, DATA["sigmoid/loss"], rtol=SIGMOID_RTOL, atol=SIGMOID_ATOL)
    v = co.Variable(logits, name="logits")
    (g, _), = co.train.GradientDescentOptimizer(0.1).compute_gradients(
        lambda: jnp.sum(co.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=v) * w),
        var_list=[v])
    assert_close(g, DATA["sigmoid/grad"], rtol=SIGMOID_RTOL, atol=SIGMOID_GRAD_ATOL)


def test_compute_accidental_hits_matches_tf1():
    indices, ids, weights = co.nn.compute_accidental_hits(X["labels2"], X["sampled"],
                                                          num_true=2)
    assert_bits(indices, DATA["hits/indices"])  # int32, as TF1
    np.testing.assert_array_equal(ids, DATA["hits/ids"])  # int32 without jax_enable_x64
    assert_bits(weights, DATA["hits/weights"])


# ------------------------------------------------------------------------------ samplers

SAMPLERS = {"log_uniform": co.nn.log_uniform_candidate_sampler,
            "uniform": co.nn.uniform_candidate_sampler}


def _implied_tries(p: np.ndarray, count: np.ndarray) -> int:
    """The ``num_tries`` that ``count = -expm1(num_tries * log1p(-p))`` implies (float64)."""
    est = np.log1p(-count.astype(np.float64)) / np.log1p(-p.astype(np.float64))
    tries = int(np.rint(np.median(est)))
    assert tries > NUM_SAMPLED
    return tries


def _check_counts(kind: str, rng: int, unique: bool, true, sampled, true_ec, sampled_ec,
                  maxulp: int) -> None:
    """The expected counts of ``sampled`` (and ``true``) follow TF1's formulas: bit for bit
    for ``p * num_sampled``; within ``maxulp`` for ``-expm1(n * log1p(-p))`` (0: our own
    draws, from the same helper; against TF1, XLA's log1p/expm1 vs glibc's log1pf/expm1f)."""
    p_true, p_sampled = tf_probability(kind, rng, true), tf_probability(kind, rng, sampled)
    true_ec, sampled_ec = np.asarray(true_ec), np.asarray(sampled_ec)
    tries = NUM_SAMPLED
    if unique and not (np.array_equal(sampled_ec, p_sampled * np.float32(NUM_SAMPLED))
                       and np.array_equal(true_ec, p_true * np.float32(NUM_SAMPLED))):
        tries = _implied_tries(np.concatenate([p_true.ravel(), p_sampled]),
                               np.concatenate([true_ec.ravel(), sampled_ec]))
    if tries == NUM_SAMPLED:  # TF1: p * num_sampled, in float32
        assert_bits(sampled_ec, p_sampled * np.float32(NUM_SAMPLED))
        assert_bits(true_ec, p_true * np.float32(NUM_SAMPLED))
        return
    for p, ec in ((p_true, true_ec), (p_sampled, sampled_ec)):
        ours = np.asarray(cs._expected_count(jnp.asarray(p), NUM_SAMPLED, jnp.int32(tries)))
        if maxulp == 0:
            assert_bits(ours, ec)
        else:
            np.testing.assert_array_max_ulp(ours, ec, maxulp=maxulp)


# ``-expm1(n * log1p(-p))``: compatopt's helper is up to 3 ulp from TF1's (measured on the
# fixtures: XLA's float32 log1p/expm1 vs glibc's log1pf/expm1f; ``p * num_sampled`` and the
# probabilities are exact).
COUNT_MAXULP = 3


@pytest.mark.parametrize("case", META["sampler_cases"], ids=lambda c: c["key"])
def test_expected_counts_of_tf1_candidates(case, maxulp: int = COUNT_MAXULP):
    """RNG-independent: the counts TF1 gave its own candidates, from TF1's formulas and from
    compatopt's probability table / expected-count helper."""
    key, kind, rng, unique = case["key"], case["kind"], case["range_max"], case["unique"]
    true = DATA[f"{key}/true_classes"]
    np.testing.assert_array_equal(true, X["sampler_true"] % rng)
    draws = DATA[f"{key}/sampled"]
    for j in range(len(draws)):
        sampled = draws[j]
        if unique:
            assert len(set(sampled.tolist())) == NUM_SAMPLED
        _check_counts(kind, rng, unique, true, sampled, DATA[f"{key}/true_expected_count"][j],
                      DATA[f"{key}/sampled_expected_count"][j], maxulp=maxulp)
        assert_bits(np.asarray(cs._probability(kind, rng, jnp.asarray(sampled))),
                    tf_probability(kind, rng, sampled))


@pytest.mark.parametrize("case", META["sampler_cases"], ids=lambda c: c["key"])
def test_sampler_draws(case):
    """Four draws in one ``vmap`` over keys (an eager ``unique=True`` call compiles its
    loop anew each time, ~2 s: one call per case keeps the file fast); the last key repeats
    the first, which must give the same draw (a key is used as given)."""
    key, kind, rng, unique = case["key"], case["kind"], case["range_max"], case["unique"]
    true = DATA[f"{key}/true_classes"]
    fn = SAMPLERS[kind]
    keys = jnp.stack([jax.random.key(i) for i in (3, 4, 5, 3)])
    sampled, true_ec, sampled_ec = jax.vmap(
        lambda k: tuple(fn(true_classes=true, num_true=2, num_sampled=NUM_SAMPLED,
                           unique=unique, range_max=rng, seed=k)))(keys)
    assert sampled.shape == (4, NUM_SAMPLED) and sampled.dtype == jnp.int32  # no x64
    assert true_ec.shape == (4, 6, 2) and true_ec.dtype == jnp.float32
    assert sampled_ec.shape == (4, NUM_SAMPLED) and sampled_ec.dtype == jnp.float32
    s = np.asarray(sampled)
    assert s.min() >= 0 and s.max() < rng
    for j in range(4):
        if unique:
            assert len(set(s[j].tolist())) == NUM_SAMPLED
        _check_counts(kind, rng, unique, true, s[j], true_ec[j], sampled_ec[j], maxulp=0)
    assert len({tuple(row) for row in s[:3].tolist()}) == 3
    for out in (sampled, true_ec, sampled_ec):
        assert_bits(out[3], out[0])


def test_sampler_draws_anew_per_call():
    """An int seed: TF1's stateful op, every eager call draws anew (``unique=False``, whose
    eager call is cheap; the draw counter is the same for both)."""
    true = X["sampler_true"]
    outs = [co.nn.log_uniform_candidate_sampler(
        true_classes=true, num_true=2, num_sampled=NUM_SAMPLED, unique=False,
        range_max=NUM_CLASSES, seed=7) for _ in range(2)]
    for sampled, true_ec, sampled_ec in outs:
        assert sampled.shape == (NUM_SAMPLED,) and sampled.dtype == jnp.int32
        _check_counts("log_uniform", NUM_CLASSES, False, true, np.asarray(sampled), true_ec,
                      sampled_ec, maxulp=0)
    assert not np.array_equal(outs[0][0], outs[1][0])


def test_sampler_int64_under_x64():
    with jax.enable_x64(True):
        sampled, true_ec, sampled_ec = co.nn.log_uniform_candidate_sampler(
            true_classes=X["sampler_true"], num_true=2, num_sampled=NUM_SAMPLED, unique=False,
            range_max=NUM_CLASSES, seed=jax.random.key(0))
        assert sampled.dtype == jnp.int64
        assert true_ec.dtype == sampled_ec.dtype == jnp.float32


def test_sampler_distribution(kind: str = "log_uniform"):
    """``unique=False`` draws follow ``p`` (10000 draws, 5 sigma per class)."""
    fn = SAMPLERS[kind]
    keys = jax.random.split(jax.random.key(11), 1000)
    draw = jax.vmap(lambda k: fn(true_classes=X["sampler_true"], num_true=2,
                                 num_sampled=NUM_SAMPLED, unique=False,
                                 range_max=NUM_CLASSES, seed=k)[0])
    samples = np.asarray(draw(keys)).ravel()
    counts = np.bincount(samples, minlength=NUM_CLASSES)
    assert counts.shape == (NUM_CLASSES,)
    p = tf_probability(kind, NUM_CLASSES, np.arange(NUM_CLASSES)).astype(np.float64)
    n = samples.size
    sigma = np.sqrt(n * p * (1 - p))
    assert np.all(np.abs(counts - n * p) <= 5 * sigma + 1)
