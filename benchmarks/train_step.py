"""A whole training step: an MLP (784-512-512-10, batch 128, Adam) five ways, interleaved.

* ``jit_compatopt``: the hand-written ``jax.jit`` step around ``co.adam(...).apply``;
* ``jit_multi_tensor``: the same with ``co.multi_tensor(co.adam(...))``;
* ``jit_noguard``: the same with the benchmark-only unguarded Adam (exact-mode cost);
* ``jit_optax``: the same with ``optax.adam`` (the usual JAX step);
* ``co_function``: the shim, ``@co.function`` around ``AdamOptimizer.minimize``;
* ``eager_minimize``: the shim's eager ``minimize`` called in a Python loop (counts XLA
  compiles during the timed loop: it must not recompile);
* TF1 graph mode (``Session.run(train_op)``) comes from ``tf1_bench.py`` (another process).

Also the per-call dispatch cost of tiny steps (10 floats).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

import compatopt as co
from benchmarks import _cases
from benchmarks._harness import Candidate, interleave, ratio_stats, stats

SIZES = (784, 512, 512, 10)
BATCH = 128


def init_mlp(seed: int = 0, sizes=SIZES) -> dict:
    rng = np.random.default_rng(seed)
    params = {}
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        params[f"w{i}"] = (rng.standard_normal((a, b)) * np.sqrt(2.0 / a)).astype(np.float32)
        params[f"b{i}"] = np.zeros(b, np.float32)
    return params


def batch(seed: int = 1, sizes=SIZES):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((BATCH, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], BATCH).astype(np.int32)
    return jnp.asarray(x), jnp.asarray(y)


def mlp_loss(params: dict, x, y):
    h = x
    n = len(params) // 2
    for i in range(n):
        h = h @ params[f"w{i}"] + params[f"b{i}"]
        if i < n - 1:
            h = jax.nn.relu(h)
    logp = jax.nn.log_softmax(h)
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))


class _JitStep:
    """``jax.jit`` step ``(params, state, x, y) -> (params, state, loss)``, donated."""

    def __init__(self, name: str, make_update, x, y) -> None:
        self.name = name
        self.x, self.y = x, y
        self.params = jax.tree.map(jnp.asarray, init_mlp())
        init, update = make_update()
        self.state = init(self.params)

        def step(params, state, x, y):
            loss, grads = jax.value_and_grad(mlp_loss)(params, x, y)
            params, state = update(grads, state, params)
            return params, state, loss

        self.jitted = jax.jit(step, donate_argnums=(0, 1))
        t0 = time.perf_counter()
        self.run()
        self.compile_s = time.perf_counter() - t0

    def run(self) -> None:
        self.params, self.state, loss = self.jitted(self.params, self.state, self.x, self.y)
        loss.block_until_ready()


def _compatopt_update(rule):
    return lambda: (rule.init, rule.apply)


def _optax_update():
    tx = _cases.optax.adam(0.001)

    def update(grads, state, params):
        updates, state = tx.update(grads, state, params)
        return _cases.optax.apply_updates(params, updates), state

    return tx.init, update


class _Compiles:
    """Counts XLA backend compiles (``jax.monitoring`` events) while active."""

    def __init__(self) -> None:
        self.count = 0
        self.active = False
        jax.monitoring.register_event_duration_secs_listener(self._on_event)

    def _on_event(self, event: str, duration: float, **kwargs) -> None:
        if self.active and "backend_compile" in event:
            self.count += 1


_COMPILES = None


def _shim_candidates(x, y) -> list:
    """``co.function`` and eager ``minimize`` steps, when the shim is importable."""
    if not (hasattr(co, "function") and hasattr(co, "Variable") and hasattr(co, "train")):
        return []
    out = []
    for mode in ("co_function", "eager_minimize"):
        if hasattr(co, "reset_default_graph"):
            co.reset_default_graph()
        init = init_mlp()
        variables = {k: co.Variable(jnp.asarray(v), name=k) for k, v in init.items()}
        opt = co.train.AdamOptimizer(0.001)

        def loss_fn(variables=variables):
            return mlp_loss({k: v.value for k, v in variables.items()}, x, y)

        if mode == "co_function":
            @co.function
            def train_step(opt=opt, loss_fn=loss_fn):
                loss = loss_fn()  # before the update: XLA shares it with minimize's forward
                opt.minimize(loss_fn)
                return loss

            def run(train_step=train_step):
                jax.block_until_ready(train_step())
        else:
            def run(opt=opt, loss_fn=loss_fn, variables=variables):
                opt.minimize(loss_fn)
                jax.block_until_ready([v.value for v in variables.values()])

        t0 = time.perf_counter()
        run()
        compile_s = time.perf_counter() - t0
        out.append((mode, run, compile_s, variables))
    return out


def run(rounds: int, progress=None) -> dict:
    global _COMPILES
    x, y = batch()
    steps = {
        "jit_compatopt": _JitStep("jit_compatopt", _compatopt_update(co.adam(0.001)), x, y),
        "jit_optax": _JitStep("jit_optax", _optax_update, x, y) if _cases.optax else None,
        "jit_noguard": _JitStep("jit_noguard", _compatopt_update(_cases.NoGuardAdam()), x, y),
    }
    try:
        from compatopt._multi_tensor import multi_tensor
        steps["jit_multi_tensor"] = _JitStep(
            "jit_multi_tensor", _compatopt_update(multi_tensor(co.adam(0.001))), x, y)
    except ImportError:
        pass
    steps = {k: v for k, v in steps.items() if v is not None}
    cands = [Candidate(k, s.run) for k, s in steps.items()]
    compile_s = {k: s.compile_s for k, s in steps.items()}
    shim = []
    try:
        shim = _shim_candidates(x, y)
    except Exception as e:  # the shim is still moving: report, do not fail the suite
        compile_s["shim_error"] = f"{type(e).__name__}: {e}"
    for mode, fn, cs, _ in shim:
        compile_s[mode] = cs
        cands.append(Candidate(mode, fn))
    if progress is not None:
        progress.note("MLP step: timing")
    if _COMPILES is None:
        _COMPILES = _Compiles()
    _COMPILES.count = 0
    _COMPILES.active = True
    times = interleave(cands, rounds, min_round_s=0.05)
    _COMPILES.active = False
    result = {"model": "MLP " + "-".join(map(str, SIZES)) + f", batch {BATCH}, Adam",
              "params": int(sum(np.prod(v.shape) for v in init_mlp().values())),
              "compiles_during_timing": _COMPILES.count, "candidates": {}}
    for name in times:
        entry = {"seconds": stats(times[name]), "compile_s": compile_s.get(name)}
        entry["vs_jit_compatopt"] = ratio_stats(times, name, "jit_compatopt")
        if "jit_optax" in times:
            entry["vs_optax"] = ratio_stats(times, name, "jit_optax")
        result["candidates"][name] = entry
    if "shim_error" in compile_s:
        result["shim_error"] = compile_s["shim_error"]
    result["dispatch"] = dispatch(rounds)
    return result


def dispatch(rounds: int) -> dict:
    """Per-call cost of tiny jitted steps: a trivial function, Adam on 10 floats."""
    p = {"w": jnp.ones(10, jnp.float32)}
    g = {"w": jnp.full(10, 0.1, jnp.float32)}
    trivial = jax.jit(lambda a: a + 1.0, donate_argnums=0)
    live = {"trivial": jnp.ones(10)}

    def run_trivial():
        live["trivial"] = trivial(live["trivial"])
        live["trivial"].block_until_ready()

    cands = [Candidate("trivial jit call", run_trivial)]
    makers = {"compatopt adam, 10 floats": lambda: co.adam(0.001)}
    if _cases.optax:
        makers["optax adam, 10 floats"] = lambda: _cases.optax.adam(0.001)
    for name, make in makers.items():
        rule = make()
        fn = _cases.rule_step(rule) if "compatopt" in name else _cases.optax_step(rule)
        jitted = jax.jit(fn, donate_argnums=(0, 1))
        holder = {"p": jax.tree.map(jnp.array, p), "s": rule.init(p)}

        def run_one(jitted=jitted, holder=holder):
            holder["p"], holder["s"] = jitted(holder["p"], holder["s"], g)
            jax.block_until_ready(holder["p"])

        run_one()
        cands.append(Candidate(name, run_one))
    times = interleave(cands, rounds, min_round_s=0.02)
    return {k: stats(v) for k, v in times.items()}
