"""Update-only steps: every rule against its optax counterpart and the floor kernel.

One case = (rule, pytree shape, dtype, donation). Its candidates — compatopt's per-leaf
rule, ``co.multi_tensor`` of it, optax, the benchmark-only unguarded Adam, and the floor
kernel doing exactly the rule's memory traffic — are timed in the same process, interleaved
round by round; ratios are formed within each round.
"""

from __future__ import annotations

import dataclasses
import gc
from typing import Optional

import jax.numpy as jnp
import numpy as np

from benchmarks import _cases
from benchmarks._harness import interleave, ratio_stats, stats
from benchmarks._roofline import FloorKernel
from benchmarks._steps import StepCandidate

try:
    from compatopt._multi_tensor import flatten_params, multi_tensor
except ImportError:  # pragma: no cover - before the multi-tensor layout existed
    flatten_params = multi_tensor = None

LABELS = {"compatopt": "compatopt (per leaf)", "multi_tensor": "compatopt multi_tensor",
          "flat": "compatopt on FlatParams", "optax": "optax",
          "optax_flat": "optax on FlatParams", "noguard": "Adam, guards removed (bench only)"}


@dataclasses.dataclass(frozen=True)
class Case:
    rule: str
    shape: _cases.Shape
    dtype: str = "float32"
    donate: bool = True
    candidates: tuple = ("compatopt", "multi_tensor", "optax")
    section: str = "update"

    @property
    def key(self) -> str:
        d = "donated" if self.donate else "not donated"
        return f"{self.rule} | {self.shape.label} | {self.dtype} | {d}"


def _build(case: Case, which: str, params, grads) -> Optional[StepCandidate]:
    rc = _cases.RULES_BY_NAME[case.rule]
    flat = which in ("flat", "optax_flat")
    if which in ("multi_tensor", "flat", "optax_flat") and (
            multi_tensor is None or case.shape.leaves == 1):
        return None
    if which in ("optax", "optax_flat") and (rc.make_optax is None or _cases.optax is None):
        return None
    if which in ("compatopt", "flat"):
        rule, fn = rc.make(), _cases.rule_step
    elif which == "multi_tensor":
        rule, fn = multi_tensor(rc.make()), _cases.rule_step
    elif which in ("optax", "optax_flat"):
        rule, fn = rc.make_optax(), _cases.optax_step
    elif which == "noguard":
        rule, fn = _cases.NoGuardAdam(), _cases.rule_step
    else:
        raise ValueError(which)
    if flat:
        params, grads = flatten_params(params), flatten_params(grads)
    else:
        params = [jnp.array(p, copy=True) for p in params]
    state = rule.init(params)
    return StepCandidate(which, fn(rule), params, state, grads, case.donate, LABELS[which])


def run_case(case: Case, rounds: int, progress=None, min_round_s: float = 0.0) -> dict:
    """Compiles and times one case; returns its row (times, ratios, compile, memory)."""
    rc = _cases.RULES_BY_NAME[case.rule]
    dtype = jnp.dtype(case.dtype)
    grads = _cases.make_tree(case.shape, dtype, 0.01, seed=1)
    params = _cases.make_tree(case.shape, dtype, 0.5, seed=2)
    built, errors = {}, {}
    for which in case.candidates:
        if progress is not None:
            progress.note(f"{case.key}: compiling {which}")
        try:
            cand = _build(case, which, params, grads)
        except Exception as e:  # a broken candidate is reported, not fatal to the suite
            errors[which] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
            continue
        if cand is not None:
            built[which] = cand
    del params
    floor = FloorKernel(case.shape.total, rc.reads, rc.rw, rc.writes,
                        dtype=np.float32 if dtype == jnp.float32 else dtype)
    if progress is not None:
        progress.note(f"{case.key}: timing")
    cands = [c.candidate() for c in built.values()] + [floor.candidate()]
    times = interleave(cands, rounds, min_round_s=min_round_s)
    row = {"case": case.key, "section": case.section, "rule": case.rule,
           "shape": case.shape.label, "leaves": case.shape.leaves, "size": case.shape.size,
           "params": case.shape.total, "dtype": case.dtype, "donate": case.donate,
           "bytes_per_param": rc.bytes_per_param(dtype.itemsize),
           "floor": {"seconds": stats(times["floor"]),
                     "gbps": stats(floor.bytes / np.asarray(times["floor"]) / 1e9)},
           "candidates": {}, "errors": errors}
    for which, c in built.items():
        entry = {"label": c.label, "seconds": stats(times[which]),
                 "compile_s": c.compile_s, "memory": c.memory,
                 "of_floor": ratio_stats(times, "floor", which)}
        if "optax" in built and which != "optax":
            entry["vs_optax"] = ratio_stats(times, which, "optax")
        if "compatopt" in built and which != "compatopt":
            entry["vs_per_leaf"] = ratio_stats(times, which, "compatopt")
        if "noguard" in built and which != "noguard":
            entry["vs_noguard"] = ratio_stats(times, which, "noguard")
        row["candidates"][which] = entry
    for c in built.values():
        c.free()
    del built, floor, grads
    gc.collect()
    return row


def plan(quick: bool, full: bool) -> list:
    """The cases of one run. The default run leaves to ``--full`` what takes minutes to
    compile on a 2-core CPU: 10,000-leaf steps other than FlatParams (optax's and the
    per-leaf rule's compile take minutes; their numbers come from the cache of the last
    ``--full`` run), the TF1-only rules at 1,000 leaves, and most bfloat16 / undonated
    cases."""
    shapes = _cases.QUICK_SHAPES if quick else _cases.FULL_SHAPES
    one, mid, many = shapes
    optax_rules = [r.name for r in _cases.RULES if r.make_optax is not None]
    tf1_only = [r.name for r in _cases.RULES if r.make_optax is None]
    # 1,000 x 16K leaves are above multi_tensor's max_leaf_size (8,192): it would equal the
    # per-leaf rule there, so the default run times FlatParams instead (--full: both).
    std = ("compatopt", "flat", "optax") + (("multi_tensor",) if full else ())
    adam = ("compatopt", "flat", "noguard", "optax") + (("multi_tensor",) if full else ())
    if quick:
        cases = [Case("adam", one, candidates=adam), Case("adam", mid, candidates=adam)]
        for rule in ("momentum", "sgd"):
            cases += [Case(rule, one), Case(rule, mid, candidates=std)]
        cases += [Case("adam", many, candidates=("multi_tensor", "flat", "optax")),
                  Case("ftrl", one, candidates=("compatopt",)),
                  Case("adam", one, dtype="bfloat16"), Case("adam", one, donate=False)]
        return cases
    cases = []
    for rule in optax_rules:
        cands = adam if rule == "adam" else std
        cases += [Case(rule, one, candidates=("compatopt", "noguard", "optax")
                       if rule == "adam" else ("compatopt", "optax")),
                  Case(rule, mid, candidates=cands)]
    for rule in tf1_only:
        cases.append(Case(rule, one, candidates=("compatopt",)))
        if full:
            cases.append(Case(rule, mid, candidates=("compatopt", "flat")))
    # Per leaf at 10,000 leaves: minutes of compile each (optax's too): Adam only, --full.
    for rule in (optax_rules if full else ["adam", "momentum"]):
        slow = ("multi_tensor", "compatopt", "optax") if full and rule == "adam" else ()
        cases.append(Case(rule, many, candidates=("flat", "optax_flat") + slow))
    for rule in (optax_rules if full else ["adam", "sgd"]):
        cases.append(Case(rule, one, dtype="bfloat16"))
        if full or rule == "adam":
            cases.append(Case(rule, mid, dtype="bfloat16",
                              candidates=std if full else ("flat", "optax")))
    for rule in (optax_rules if full else ["adam"]):
        cases.append(Case(rule, one, donate=False))
        if full:
            cases.append(Case(rule, mid, donate=False))
    return cases


def run(cases: list, rounds: int, progress=None, min_round_s: float = 0.0) -> list:
    rows = []
    for case in cases:
        rows.append(run_case(case, rounds, progress, min_round_s))
        if progress is not None:
            progress.step(case.key)
    return rows
