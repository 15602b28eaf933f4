"""Replays TF1's recorded trajectories through the functional rules, step by step.

The fixtures (``tests/fixtures/tf1/rules``, made by ``tools/make_tf1_fixtures.py`` with
TensorFlow 2.21 on CPU) hold, for each case, the initial variables, every step's gradients
and TF1's full state after slot creation and after every step. Each case here builds the
rule with the recorded constructor arguments, checks ``init`` against TF1's initial slots
and non-slot variables, then runs the jitted ``rule.apply`` with the same gradients and
compares every state array (variables, slots, Adam's beta powers) after every step.
TensorFlow is not needed.

Comparison:

* **bit-exact** (same bits; NaN exactly where TF has NaN) for everything TF computes with
  ``+ - * /`` and ``sqrt`` only, which includes every float64 case but FTRL's ``pow``;
* **within ``ULP_BOUND[rule][dtype]`` ulp** for the elements TF computes with Eigen's
  approximate packet ``rsqrt`` (Adagrad, Adadelta, ProximalAdagrad, sparse RMSProp): only
  the packet lanes are approximate (spec §1.4), i.e. the first ``floor(n/8)*8`` elements of
  a dense tensor or the first ``floor(D/8)*8`` columns of each row of a rank >= 2 sparse
  update; the other (scalar-path) lanes must still be bit-exact, and are checked as such.
  FTRL with ``learning_rate_power`` not in {-0.5, 0} uses Eigen's ``pow`` (packet lanes) and
  glibc ``pow`` (tail lanes, rank-1 sparse), neither of which XLA's ``pow`` reproduces, so
  all its elements get the tolerance, in every dtype.

Speed: XLA compilation dominates (about 0.2 s per dense and 0.9 s per sparse case when each
case is its own program). So all cases of one rule that run in the same x64 mode (and have
the same ``None`` pattern) are compiled into one jitted step,
``jit(lambda gs, ss, ps: [rule_i.apply(g_i, s_i, p_i) for each case i])``, whose per-case
sub-computations share no inputs; that takes about 35 % less CPU time. Set
``COMPATOPT_REPLAY_PER_CASE=1`` to compile ``jax.jit(rule.apply)`` per case instead (both
modes gave identical results, mismatches included, when this file was written).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from pathlib import Path
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import compatopt as co

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "tf1" / "rules"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())["cases"]
# TF1 graph mode (tools/make_tf1_graph_fixtures.py): every case re-run in a Session from the
# same inputs; only the cases whose bits differ from eager are stored there.
GRAPH_FIXTURES = FIXTURES.parent / "rules_graph"
GRAPH_CASES = {c["name"]: c for c in
               json.loads((GRAPH_FIXTURES / "manifest.json").read_text())["cases"]}
PER_CASE = os.environ.get("COMPATOPT_REPLAY_PER_CASE", "") not in ("", "0")

# Max ulp distance on the approximate lanes, measured over all cases of a rule and dtype
# (6 steps; fixtures recorded on an AMD EPYC with AVX2/FMA). TF's packet rsqrt (rsqrtps + one
# Newton step, spec §1.4) is off by <= 3 ulp per call; that error enters the *update*, so a
# variable that has moved close to zero shows it as many ulp of its own (small) magnitude:
# adagrad float32's 128 ulp is w[3, 12] = -0.0014355145 vs ours -0.0014355294 (a 2-ulp
# error of the ~0.1 update). FTRL's pow errors are amplified the same way by the
# cancellation in ``linear + (g - ((P(new_accum) - P(accum)) / lr) * var)`` (float64:
# linear -1.32689640306849e-3 vs ours -1.32689640306932e-3). rsqrtps tables differ between
# CPU vendors: fixtures recorded on another vendor's CPU may need other bounds.
ULP_BOUND = {
    "adagrad": {"float32": 128, "float16": 16, "bfloat16": 32},
    # The float16/bfloat16 entries come from the cases added for every dtype TF1 has a
    # kernel for, recorded on an Intel Xeon (the rsqrt result is rounded to half, so the
    # error stays a few ulp of the half dtype).
    "adadelta": {"float32": 8, "bfloat16": 6},
    "proximal_adagrad": {"float32": 122},
    "rmsprop": {"float32": 24, "float16": 2},  # sparse only: dense uses sqrt and / (exact)
    "ftrl": {"float32": 1024, "float64": 3840},  # learning_rate_power not in {-0.5, 0} only
    # Variant "no-x64": the rank-1 sparse kernels of these compute in double in TF; without
    # x64 the rules compute them in float32 (documented as "within a few ulp").
    "adagrad_da": {"float32": 1},
    "proximal_gradient_descent": {"float32": 3},
}

# Known mismatches in cases that should be bit-exact: (case, variant) -> reason; marked
# xfail(strict=True) so the suite stays green until the rule is fixed. Empty: the mismatches
# this file found (XLA re-association, add-of-scatter, a / (b / c), float16 excess
# precision, NumPy float64 hyper-parameters taken as Python floats) are fixed in compatopt.
XFAIL: dict[tuple[str, str], str] = {}

_RSQRT_RULES = {"adagrad", "adadelta", "proximal_adagrad"}
_DOUBLE_RANK1 = {"adagrad_da", "proximal_gradient_descent", "proximal_adagrad"}
_UINT = {2: np.uint16, 4: np.uint32, 8: np.uint64}

# Variants: how a case is run.
#   "tf1":        as recorded in TF1 eager mode, replayed with ``co.tf1_mode("eager")``;
#                 float64 hyper-parameters passed as ``np.float64(x)``;
#   "graph":      TF1 graph mode's trajectory (the eager one where graph mode gave the same
#                 bits), replayed in compatopt's default mode, ``"graph"``;
#   "hp64-array": float64 hyper-parameters passed as 0-d float64 arrays instead;
#   "no-x64":     a sparse float32 case whose rank-1 kernel TF runs in double, replayed
#                 without x64 (the rule falls back to float32 there; ulp tolerance).
HP64_AS: dict[str, Callable[[float], Any]] = {
    "tf1": np.float64, "graph": np.float64, "hp64-array": lambda v: np.asarray(v, np.float64),
    "no-x64": np.float64}


# ------------------------------------------------------------------------------- helpers
def ulp_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elementwise distance in units in the last place between two arrays of one float dtype.

    Works for float16, bfloat16, float32 and float64 by mapping the bit patterns onto a
    monotonic integer line (``+0`` and ``-0`` both map to 0). NaN against NaN is 0, NaN
    against a number is ``iinfo(int64).max``.
    """
    a = np.asarray(a)
    b = np.asarray(b)
    assert a.dtype == b.dtype, (a.dtype, b.dtype)
    uint = _UINT[a.dtype.itemsize]
    sign = np.uint64(1 << (8 * a.dtype.itemsize - 1))

    def ordered(x):
        u = x.view(uint).astype(np.uint64)
        mag = (u & (sign - np.uint64(1))).astype(np.int64)
        return np.where(u & sign, -mag, mag)

    dist = np.abs(ordered(a) - ordered(b))
    nan_a, nan_b = _isnan(a), _isnan(b)
    dist = np.where(nan_a & nan_b, 0, dist)
    return np.where(nan_a ^ nan_b, np.iinfo(np.int64).max, dist)


def _isnan(x: np.ndarray) -> np.ndarray:
    return np.isnan(x.astype(np.float64))


def same_bits(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elementwise: identical bit patterns, or NaN in both."""
    uint = _UINT[a.dtype.itemsize]
    return (a.view(uint) == b.view(uint)) | (_isnan(a) & _isnan(b))


def _hex(x) -> str:
    x = np.asarray(x)
    return f"0x{int(x.view(_UINT[x.dtype.itemsize])):0{2 * x.dtype.itemsize}x} ({x})"


def load_case(entry: dict, variant: str = "tf1") -> dict[str, np.ndarray]:
    """The case's arrays (graph mode's where they differ), bfloat16 restored from bits."""
    graph = variant == "graph" and bool(GRAPH_CASES[entry["name"]]["differs_from_fixture"])
    with np.load((GRAPH_FIXTURES if graph else FIXTURES) / entry["file"]) as data:
        arrays = {k: data[k] for k in data.files}
    if entry["dtype"] == "bfloat16":
        bf16 = np.dtype(jnp.bfloat16)
        arrays = {k: (v.view(bf16) if v.dtype == np.uint16 else v) for k, v in arrays.items()}
    return arrays


def needs_x64(entry: dict, variant: str = "tf1") -> bool:
    """float64 variables or hyper-parameters, or a rank-1 sparse kernel TF runs in double."""
    if variant == "no-x64":
        return False
    return (entry["dtype"] == "float64" or entry["hp64"]
            or (entry["sparse"] and entry["rule"] in _DOUBLE_RANK1))


def approx_mask(entry: dict, variant: str, name: str,
                shape: tuple) -> Optional[np.ndarray]:
    """Elements allowed to differ by up to the ulp bound, or None when all must be exact."""
    rule, kw = entry["rule"], entry["kwargs"]
    rank1_sparse = entry["sparse"] and name in ("w", "b") and len(shape) == 1
    if variant == "no-x64" and rank1_sparse:
        return np.ones(shape, bool)
    if rule == "ftrl":
        exact_power = kw.get("learning_rate_power", -0.5) in (-0.5, 0.0)
        return None if exact_power else np.ones(shape, bool)
    if entry["dtype"] == "float64":
        return None
    if not (rule in _RSQRT_RULES or (rule == "rmsprop" and entry["sparse"])):
        return None
    if entry["sparse"] and name in ("w", "b"):
        if rank1_sparse:
            return np.zeros(shape, bool)  # TF's rank-1 sparse kernels: scalar code, exact
        row = int(np.prod(shape[1:]))
        cols = np.arange(row).reshape(shape[1:]) < (row // 8) * 8
        return np.broadcast_to(cols, shape)
    n = int(np.prod(shape))
    return (np.arange(n) < (n // 8) * 8).reshape(shape)


def build_rule(entry: dict, arrays: dict, variant: str = "tf1") -> co.Rule:
    """The rule with the recorded kwargs (float64 ones per the variant, lr schedule)."""
    kwargs = dict(entry["kwargs"])
    if entry["hp64"]:
        make = HP64_AS[variant]
        kwargs = {k: (make(v) if isinstance(v, float) else v) for k, v in kwargs.items()}
    if entry["schedule"]:
        lrs = jnp.asarray(arrays["lrs"])
        kwargs["learning_rate"] = lambda count: lrs[count]
    return getattr(co, entry["rule"])(**kwargs)


def _grads(entry: dict, arrays: dict, step: int) -> dict[str, Any]:
    grads = {}
    for name, shape in entry["variables"].items():
        if step in entry["none_steps"].get(name, ()):
            grads[name] = None
        elif f"grad/{name}/values" in arrays:
            grads[name] = co.IndexedSlices(arrays[f"grad/{name}/values"][step],
                                           arrays[f"grad/{name}/indices"][step],
                                           dense_shape=shape)
        else:
            grads[name] = jnp.asarray(arrays[f"grad/{name}"][step])
    return grads


def _state_arrays(entry: dict, params, state) -> dict[str, np.ndarray]:
    """Our state under the fixture's key names (``var/w``, ``slot/m/w``, ``nonslot/...``)."""
    out = {}
    for name in entry["variables"]:
        out[f"var/{name}"] = np.asarray(params[name])
        for slot in entry["slots"]:
            out[f"slot/{slot}/{name}"] = np.asarray(getattr(state, slot)[name])
    for ns in entry["nonslots"]:
        out[f"nonslot/{ns}"] = np.asarray(getattr(state, ns))
    return out


class _Checker:
    """Accumulates, for one case, the first exact-lane mismatch and the max ulp seen."""

    def __init__(self, entry: dict, variant: str, arrays: dict):
        self.entry, self.variant, self.arrays = entry, variant, arrays
        self.mismatch: Optional[str] = None
        self.max_ulp = 0

    def check(self, k: int, params, state) -> None:
        assert int(state.count) == k
        for key, got in _state_arrays(self.entry, params, state).items():
            want = self.arrays[f"state/{key}"][k]
            if got.dtype != want.dtype or got.shape != want.shape:
                self._first(f"after step {k}, {key}: ours {got.dtype}{list(got.shape)}, "
                            f"TF {want.dtype}{list(want.shape)}")
                continue
            mask = None
            if key.startswith(("var/", "slot/")):
                mask = approx_mask(self.entry, self.variant, key.rsplit("/", 1)[-1],
                                   got.shape)
            exact = np.ones(got.shape, bool) if mask is None else ~mask
            bad = exact & ~same_bits(got, want)
            if bad.any():
                idx = tuple(int(i) for i in np.argwhere(bad)[0])
                self._first(f"{'init' if k == 0 else f'after step {k}'}, {key}{list(idx)}: "
                            f"TF {_hex(want[idx])} vs ours {_hex(got[idx])}; "
                            f"{int(bad.sum())} of {bad.size} exact elements differ")
            if mask is not None and mask.any():
                self.max_ulp = max(self.max_ulp, int(ulp_distance(got, want)[mask].max()))

    def _first(self, text: str) -> None:
        if self.mismatch is None:
            self.mismatch = text


def replay_group(items: list[tuple[dict, str]]) -> dict[tuple[str, str], dict]:
    """Replays several (case, variant) items of one x64 mode with one jitted step.

    Returns ``{(name, variant): {"mismatch": str or None, "max_ulp": int}}``.
    """
    rules, params, states, checkers, arrays = [], [], [], [], []
    for entry, variant in items:
        a = load_case(entry, variant)
        rule = build_rule(entry, a, variant)
        p = {n: jnp.asarray(a[f"state/var/{n}"][0]) for n in entry["variables"]}
        s = rule.init(p)
        chk = _Checker(entry, variant, a)
        chk.check(0, p, s)
        rules.append(rule), params.append(p), states.append(s), checkers.append(chk)
        arrays.append(a)

    @jax.jit
    def step(grads, states, params):
        return [r.apply(g, s, p) for r, g, s, p in zip(rules, grads, states, params)]

    for k in range(1, items[0][0]["steps"] + 1):
        grads = [_grads(e, a, k - 1) for (e, _), a in zip(items, arrays)]
        out = step(grads, states, params)
        params = [p for p, _ in out]
        states = [s for _, s in out]
        for chk, p, s in zip(checkers, params, states):
            chk.check(k, p, s)
    return {(e["name"], v): {"mismatch": c.mismatch, "max_ulp": c.max_ulp}
            for (e, v), c in zip(items, checkers)}


def _items() -> list[tuple[dict, str]]:
    items = []
    for entry in MANIFEST:
        items.append((entry, "tf1"))
        if entry["name"] in GRAPH_CASES:
            items.append((entry, "graph"))
        if entry["hp64"] and entry["rule"].startswith("proximal"):
            items.append((entry, "hp64-array"))
        if (entry["sparse"] and entry["dtype"] == "float32" and entry["rule"] in _DOUBLE_RANK1
                and "l1_regularization_strength" in entry["kwargs"]
                and entry["kwargs"]["l1_regularization_strength"] > 0):
            items.append((entry, "no-x64"))
    return items


ITEMS = _items()


def _group_key(entry: dict, variant: str) -> tuple:
    if PER_CASE:
        return (entry["name"], variant)
    return (entry["rule"], needs_x64(entry, variant), json.dumps(entry["none_steps"]),
            _mode(variant))


def _mode(variant: str) -> str:
    return "graph" if variant == "graph" else "eager"


@functools.lru_cache(maxsize=None)
def _group_results(key: tuple) -> dict[tuple[str, str], dict]:
    """Results of every item of a group; if the group raises, each item is run alone so
    that only the items that raise report the exception (as ``"error"``)."""
    members = [(e, v) for e, v in ITEMS if _group_key(e, v) == key]
    ctx = jax.enable_x64(True) if needs_x64(*members[0]) else contextlib.nullcontext()
    with ctx, co.tf1_mode(_mode(members[0][1])):
        if len(members) > 1:
            try:
                return replay_group(members)
            except Exception:  # noqa: BLE001 - isolated below
                pass
        results = {}
        for entry, variant in members:
            try:
                results.update(replay_group([(entry, variant)]))
            except Exception as exc:  # noqa: BLE001 - re-raised by the item's test
                results[(entry["name"], variant)] = {"error": exc}
        return results


def result_of(entry: dict, variant: str) -> dict:
    """Replay result of one item (its whole group is replayed once, on first use)."""
    return _group_results(_group_key(entry, variant))[(entry["name"], variant)]


def ulp_bound(entry: dict) -> int:
    return ULP_BOUND.get(entry["rule"], {}).get(entry["dtype"], 0)


def _params():
    for entry, variant in ITEMS:
        marks = []
        reason = XFAIL.get((entry["name"], variant))
        if reason:
            marks.append(pytest.mark.xfail(strict=True, reason=reason))
        yield pytest.param(entry, variant, id=f"{entry['name']}[{variant}]", marks=marks)


# --------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("entry, variant", list(_params()))
def test_replay_matches_tf1(entry, variant):
    result = result_of(entry, variant)
    if "error" in result:
        raise result["error"]
    assert result["mismatch"] is None, f"{entry['name']} [{variant}]: {result['mismatch']}"
    bound = ulp_bound(entry)
    assert result["max_ulp"] <= bound, (
        f"{entry['name']} [{variant}]: {result['max_ulp']} ulp on the approximate lanes, "
        f"bound {bound}")


def test_fixture_coverage():
    """Every rule has dense f32/f64 and sparse f32 cases; the fixtures stay small."""
    seen = {(e["rule"], e["dtype"], e["sparse"]) for e in MANIFEST}
    for rule in ("gradient_descent", "momentum", "adagrad", "adagrad_da", "adadelta", "adam",
                 "ftrl", "proximal_gradient_descent", "proximal_adagrad", "rmsprop"):
        for dtype, sparse in (("float32", False), ("float64", False), ("float32", True)):
            assert (rule, dtype, sparse) in seen, (rule, dtype, sparse)
    assert sum(p.stat().st_size for p in FIXTURES.iterdir()) < 3 * 2**20
    assert set(GRAPH_CASES) == {e["name"] for e in MANIFEST}  # every case also in graph mode


def test_graph_mode_differs_from_eager_where_spec_says():
    """What TF1 graph mode changes, as recorded (eager re-run on the recording CPU): only
    Grappler's rewrites of Python-composed arithmetic, sparse Adam's second moment and the
    cosine schedule (spec §1.6). The other stored graph cases differ from the committed
    eager fixtures only through the CPU (packet ``rsqrt`` lanes; those fixtures came from
    an AMD EPYC), so the ulp bounds above are checked on two CPU vendors' recordings."""
    rule_of = {e["name"]: e["rule"] for e in MANIFEST}
    by_mode = {n for n, c in GRAPH_CASES.items() if c["cause"] == "mode"}
    by_cpu = {n for n, c in GRAPH_CASES.items() if c["cause"] == "cpu"}
    assert {rule_of[n] for n in by_mode if "cosine" not in n} == {"adam"}
    assert all(next(e for e in MANIFEST if e["name"] == n)["sparse"]
               for n in by_mode if "cosine" not in n)
    assert {n for n in by_mode if "cosine" in n} == {
        e["name"] for e in MANIFEST if e["schedule"] == "cosine"}
    assert {rule_of[n] for n in by_cpu} <= _RSQRT_RULES | {"rmsprop"}
