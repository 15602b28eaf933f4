"""Records TF1 reference trajectories for the ten functional rules.

Run with the TensorFlow venv (TF 2.21, CPU only)::

    /work/tfenv/bin/python tools/make_tf1_fixtures.py

For every case it builds ``tf.compat.v1.train.<X>Optimizer`` in TF2 eager mode over ordinary
(resource) ``tf.Variable`` s, creates the slots, then calls ``opt.apply_gradients`` for
``STEPS`` steps with seeded random gradients, and stores in ``tests/fixtures/tf1/rules/``:

* ``<case>.npz``, one array per quantity, stacked over steps (``k = 0``: after slot creation,
  before any step; ``k = 1..STEPS``: after step k):
  ``state/var/<var>`` ``[STEPS+1, *shape]``, ``state/slot/<slot>/<var>`` ``[STEPS+1, *shape]``,
  ``state/nonslot/<name>`` ``[STEPS+1]`` (Adam's beta powers);
  ``grad/<var>`` ``[STEPS, *shape]`` (dense; zeros on steps listed in ``none_steps``) or
  ``grad/<var>/values`` ``[STEPS, k, *shape[1:]]`` + ``grad/<var>/indices`` ``[STEPS, k]``
  (IndexedSlices); schedule cases add ``lrs`` ``[STEPS]`` (the float32 learning rate TF used
  at each step). bfloat16 arrays are stored as their uint16 bit patterns (``.npz`` cannot
  hold bfloat16 without ml_dtypes).
* ``manifest.json``: one entry per case (name, rule, kwargs, hp64, dtype, sparse, steps,
  variable shapes, steps with a ``None`` gradient, slot and non-slot names, schedule).

Variables: ``w`` (5, 13) and ``b`` (13,) in every case (a row of 13 = 8 AVX packet lanes +
5 scalar-tail lanes), plus ``c`` (3,) in the dense float32/float64 Adam cases, which gets a
``None`` gradient on some steps (Adam's beta powers still advance). Only those four cases
have it because each ``None`` pattern costs the replay test one more XLA compilation.
Sparse gradients: ``w`` 6 entries, ``b`` 5 entries, row indices drawn from 0..3 with at least
one repeat (row 4 of ``w`` and elements 4.. of ``b`` are never touched).
"""

from __future__ import annotations

import json
import os
import sys
import zlib
from pathlib import Path

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import ml_dtypes  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

tf.config.set_visible_devices([], "GPU")
v1 = tf.compat.v1.train

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "tf1" / "rules"
STEPS = 6
SHAPES = {"w": (5, 13), "b": (13,), "c": (3,)}
SPARSE_ENTRIES = {"w": 6, "b": 5}
SPARSE_ROWS = 4          # indices drawn from 0..3: row 4 of w / elements 4.. of b untouched
NONE_STEPS_C = (2, 4)    # steps (0-based) on which c gets no gradient

NP_DTYPES = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16, "float32": np.float32,
             "float64": np.float64}
TF_DTYPES = {"float16": tf.float16, "bfloat16": tf.bfloat16, "float32": tf.float32,
             "float64": tf.float64}

# ------------------------------------------------------------------ rules and their settings
# rule -> (TF class, {hyper-parameter set name: functional kwargs}). The proximal pair states
# l1/l2 explicitly so that float64 runs can pass every hyper-parameter as a float64 tensor.
RULES = {
    "gradient_descent": (v1.GradientDescentOptimizer, {
        "lr01": dict(learning_rate=0.01),
        "lr03": dict(learning_rate=0.3)}),
    "momentum": (v1.MomentumOptimizer, {
        "plain": dict(learning_rate=0.01, momentum=0.9),
        "nesterov": dict(learning_rate=0.05, momentum=0.7, use_nesterov=True)}),
    "adagrad": (v1.AdagradOptimizer, {
        "default": dict(learning_rate=0.1),
        "acc05": dict(learning_rate=0.3, initial_accumulator_value=0.5)}),
    "adagrad_da": (v1.AdagradDAOptimizer, {
        "default": dict(learning_rate=0.1),
        "l1l2": dict(learning_rate=0.2, initial_gradient_squared_accumulator_value=0.3,
                     l1_regularization_strength=0.05, l2_regularization_strength=0.1),
        "l2": dict(learning_rate=0.15, l2_regularization_strength=0.3)}),
    "adadelta": (v1.AdadeltaOptimizer, {
        "default": dict(),
        "custom": dict(learning_rate=0.5, rho=0.8, epsilon=1e-4)}),
    "adam": (v1.AdamOptimizer, {
        "default": dict(),
        "custom": dict(learning_rate=0.01, beta1=0.8, beta2=0.99, epsilon=1e-3)}),
    "ftrl": (v1.FtrlOptimizer, {
        "plain": dict(learning_rate=0.1),
        "reg_sqrt": dict(learning_rate=0.2, initial_accumulator_value=0.2,
                         l1_regularization_strength=0.05, l2_regularization_strength=0.1,
                         l2_shrinkage_regularization_strength=0.02, beta=0.3),
        "reg_pow03": dict(learning_rate=0.2, learning_rate_power=-0.3,
                          initial_accumulator_value=0.2, l1_regularization_strength=0.05,
                          l2_regularization_strength=0.1,
                          l2_shrinkage_regularization_strength=0.02, beta=0.3),
        "pow0": dict(learning_rate=0.15, learning_rate_power=0.0,
                     l1_regularization_strength=0.01, l2_regularization_strength=0.02)}),
    "proximal_gradient_descent": (v1.ProximalGradientDescentOptimizer, {
        "plain": dict(learning_rate=0.1, l1_regularization_strength=0.0,
                      l2_regularization_strength=0.0),
        "l1l2": dict(learning_rate=0.2, l1_regularization_strength=0.05,
                     l2_regularization_strength=0.1),
        "l2": dict(learning_rate=0.3, l1_regularization_strength=0.0,
                   l2_regularization_strength=0.2)}),
    "proximal_adagrad": (v1.ProximalAdagradOptimizer, {
        "plain": dict(learning_rate=0.1, l1_regularization_strength=0.0,
                      l2_regularization_strength=0.0),
        "l1l2": dict(learning_rate=0.2, initial_accumulator_value=0.3,
                     l1_regularization_strength=0.05, l2_regularization_strength=0.1),
        "l2": dict(learning_rate=0.3, l1_regularization_strength=0.0,
                   l2_regularization_strength=0.2)}),
    "rmsprop": (v1.RMSPropOptimizer, {
        "default": dict(learning_rate=0.01),
        "momentum": dict(learning_rate=0.02, decay=0.85, momentum=0.5, epsilon=1e-6),
        "centered": dict(learning_rate=0.02, decay=0.8, momentum=0.9, epsilon=1e-6,
                         centered=True)}),
}

# (rule, hyper-parameter set) pairs that get dense float16 and bfloat16 cases.
LOW_PRECISION = [("adam", "default"), ("adam", "custom"), ("momentum", "nesterov"),
                 ("rmsprop", "centered"), ("adagrad", "default"), ("adagrad", "acc05"),
                 ("gradient_descent", "lr01"), ("gradient_descent", "lr03")]

# Extra cases with float64 NumPy hyper-parameters (TF keeps them float64: no float32 detour).
HP64_EXTRA = [("adam", "custom", "float64", False), ("adam", "custom", "float32", False),
              ("gradient_descent", "lr03", "float64", False),
              ("momentum", "nesterov", "float64", False),
              ("rmsprop", "centered", "float64", False)]

# Learning-rate schedules (eager: a callable re-read by the optimizer at every apply).
SCHEDULES = {
    "expdecay": lambda gs: v1.exponential_decay(0.1, gs, decay_steps=2, decay_rate=0.7),
    "expdecay_stair": lambda gs: v1.exponential_decay(0.1, gs, decay_steps=2, decay_rate=0.7,
                                                      staircase=True),
    "piecewise": lambda gs: v1.piecewise_constant(gs, [1, 3], [0.1, 0.05, 0.01]),
    "polynomial": lambda gs: v1.polynomial_decay(0.1, gs, decay_steps=4,
                                                 end_learning_rate=0.01, power=2.0),
    "cosine": lambda gs: v1.cosine_decay(0.1, gs, decay_steps=5, alpha=0.1),
}
SCHEDULE_RULES = [("adam", "custom"), ("momentum", "nesterov"), ("gradient_descent", "lr03")]


def case_list() -> list[dict]:
    """Every case: name, rule, hyper-parameter set, dtype, sparse, hp64, schedule."""
    cases = []

    def add(rule, hset, dtype, sparse, hp64=False, schedule=None):
        name = f"{rule}-{hset}-{'sparse' if sparse else 'dense'}-{dtype}"
        if hp64:
            name += "-hp64"
        if schedule:
            name += f"-{schedule}"
        cases.append(dict(name=name, rule=rule, hset=hset, dtype=dtype, sparse=sparse,
                          hp64=hp64, schedule=schedule))

    proximal = ("proximal_gradient_descent", "proximal_adagrad")
    for rule, (_, hsets) in RULES.items():
        for hset in hsets:
            add(rule, hset, "float32", False)
            # TF1's proximal dense kernels take the hyper-parameters uncast (spec §3.11).
            add(rule, hset, "float64", False, hp64=rule in proximal)
            add(rule, hset, "float32", True)
            if (rule in proximal or rule == "adagrad_da") and hset != "l2":
                add(rule, hset, "float64", True)  # their rank-1 sparse kernels run in double
    for rule, hset in LOW_PRECISION:
        for dtype in ("float16", "bfloat16"):
            add(rule, hset, dtype, False)
    # Every rule's first hyper-parameter set in every dtype TF1 has a kernel for (main()
    # drops the cases TF refuses: AdagradDA and the proximal pair have no half kernels).
    have = {(c["rule"], c["hset"], c["dtype"], c["sparse"]) for c in cases}
    for rule, (_, hsets) in RULES.items():
        hset = next(iter(hsets))
        for dtype, sparse in (("float16", False), ("bfloat16", False), ("float16", True),
                              ("bfloat16", True), ("float64", True)):
            if (rule, hset, dtype, sparse) not in have:
                add(rule, hset, dtype, sparse, hp64=rule in proximal and dtype == "float64")
    for rule, hset, dtype, sparse in HP64_EXTRA:
        add(rule, hset, dtype, sparse, hp64=True)
    for rule, hset in SCHEDULE_RULES:
        for sched in SCHEDULES:
            add(rule, hset, "float32", False, schedule=sched)
    return cases


# ------------------------------------------------------------------------------ recording
def _store(arr: np.ndarray) -> np.ndarray:
    """bfloat16 arrays as uint16 bits (npz cannot hold them without ml_dtypes)."""
    arr = np.asarray(arr)
    if arr.dtype == ml_dtypes.bfloat16:
        return arr.view(np.uint16)
    return arr


def _random(rng: np.random.Generator, shape, dtype: str, scale: float) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(NP_DTYPES[dtype])


def _tf_kwargs(rule: str, kwargs: dict, hp64: bool, global_step) -> dict:
    kw = {k: (np.float64(v) if hp64 and isinstance(v, float) else v) for k, v in kwargs.items()}
    if rule == "adagrad_da":
        kw["global_step"] = global_step
    return kw


def record(case: dict) -> tuple[dict, dict]:
    """Runs one case through TF1; returns (manifest entry, npz arrays)."""
    rule, dtype = case["rule"], case["dtype"]
    tf_cls, hsets = RULES[rule]
    kwargs = dict(hsets[case["hset"]])
    rng = np.random.default_rng(zlib.crc32(case["name"].encode()))
    with_c = (rule == "adam" and not case["hp64"] and not case["schedule"]
              and not case["sparse"] and dtype in ("float32", "float64"))
    names = ["w", "b"] + (["c"] if with_c else [])
    hist: dict[str, list] = {}

    def put(key: str, value) -> None:
        hist.setdefault(key, []).append(np.asarray(value))

    init = {n: _random(rng, SHAPES[n], dtype, 1.0) for n in names}
    variables = {n: tf.Variable(init[n], name=n) for n in names}

    global_step = tf.Variable(0, dtype=tf.int64, name="global_step")
    tf_kw = _tf_kwargs(rule, kwargs, case["hp64"], global_step)
    if case["schedule"]:
        tf_kw["learning_rate"] = SCHEDULES[case["schedule"]](global_step)
    opt = tf_cls(**tf_kw)
    var_list = [variables[n] for n in names]
    opt._create_slots(var_list)  # what apply_gradients does first; lets us record k = 0
    slot_names = list(opt.get_slot_names())
    nonslot_names = ["beta1_power", "beta2_power"] if rule == "adam" else []

    def snapshot():
        for n in names:
            put(f"state/var/{n}", variables[n].numpy())
            for s in slot_names:
                put(f"state/slot/{s}/{n}", opt.get_slot(variables[n], s).numpy())
        for s, acc in zip(nonslot_names, opt._get_beta_accumulators() if nonslot_names else ()):
            put(f"state/nonslot/{s}", acc.numpy())

    snapshot()
    none_steps = {"c": list(NONE_STEPS_C)} if "c" in names else {}
    for step in range(STEPS):
        if case["schedule"]:
            put("lrs", np.float32(tf_kw["learning_rate"]().numpy()))
        grads_and_vars = []
        for n in names:
            if case["sparse"] and n in SPARSE_ENTRIES:
                k = SPARSE_ENTRIES[n]
                idx = rng.integers(0, SPARSE_ROWS, size=k).astype(np.int32)
                idx[-1] = idx[0]  # always at least one repeated index
                vals = _random(rng, (k,) + SHAPES[n][1:], dtype, 0.5)
                put(f"grad/{n}/values", vals)
                put(f"grad/{n}/indices", idx)
                grad = tf.IndexedSlices(tf.constant(vals), tf.constant(idx),
                                        tf.constant(SHAPES[n], tf.int64))
            elif step in none_steps.get(n, ()):
                put(f"grad/{n}", np.zeros(SHAPES[n], NP_DTYPES[dtype]))
                grad = None
            else:
                g = _random(rng, SHAPES[n], dtype, 0.5)
                put(f"grad/{n}", g)
                grad = tf.constant(g)
            grads_and_vars.append((grad, variables[n]))
        opt.apply_gradients(grads_and_vars, global_step=global_step)
        snapshot()
    arrays = {key: _store(np.stack(values)) for key, values in hist.items()}

    entry = dict(name=case["name"], rule=rule, kwargs=kwargs, hp64=case["hp64"], dtype=dtype,
                 sparse=case["sparse"], steps=STEPS,
                 variables={n: list(SHAPES[n]) for n in names}, none_steps=none_steps,
                 slots=slot_names, nonslots=nonslot_names, schedule=case["schedule"],
                 file=case["name"] + ".npz")
    return entry, arrays


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.glob("*.npz"):
        old.unlink()
    manifest = []
    for case in case_list():
        try:
            entry, arrays = record(case)
        except (tf.errors.NotFoundError, tf.errors.InvalidArgumentError, TypeError) as e:
            print(f"skipped {case['name']}: TF1 has no kernel ({type(e).__name__})")
            continue
        np.savez_compressed(OUT / entry["file"], **arrays)
        manifest.append(entry)
    meta = dict(tensorflow=tf.__version__, steps=STEPS,
                note="Recorded by tools/make_tf1_fixtures.py (TF1 optimizers, eager, CPU).")
    with open(OUT / "manifest.json", "w") as f:
        json.dump(dict(meta=meta, cases=manifest), f, indent=1)
    size = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"{len(manifest)} cases, {size / 1024:.0f} KiB in {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
