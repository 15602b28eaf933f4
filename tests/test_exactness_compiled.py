"""Exactness as a property of what XLA:CPU compiles, checked on the compiled code itself.

Every rule's jitted ``apply`` step is compiled, for dense and sparse (``IndexedSlices``)
gradients, every dtype TF1 has a kernel for, and with the hyper-parameters given as Python
floats (compile-time constants) and as traced scalar arguments (only then does a division by
a broadcast scalar exist for XLA to rewrite). Then the code XLA:CPU emitted is searched for
the three rewrites that break TF1's arithmetic (README, "Exactness"):

1. **Contracted multiply-add.** XLA:CPU contracts in LLVM's *backend*, not in HLO and not in
   the LLVM IR: for a plain ``a * b + c`` the optimized IR (``*.ir-with-opt.ll``) holds an
   ordinary ``fmul`` feeding an ``fadd`` -- no ``llvm.fma``/``llvm.fmuladd`` intrinsic and no
   ``contract``/``fast`` flag (XLA sets fp-contract=fast in the target options) -- and the
   object code holds ``vfmadd213ps``/``vfnmadd213ps`` (``...pd`` for float64, ``...ph`` for
   float16 on AVX512-FP16). So two markers are checked: in the IR, an ``fmul`` whose result
   is an operand of an ``fadd``/``fsub`` (what the backend fuses), and in the object code
   (``objdump -d``), FMA instructions. With ``opaque`` between them neither appears.
2. **Division turned into a reciprocal multiply.** In the optimized HLO,
   ``x / broadcast(s)`` becomes ``multiply(x, broadcast(divide(1, s)))``, ``x / c`` for a
   constant ``c`` becomes ``multiply(x, 1/c)`` (no divide left), and nested divisions are
   re-associated, ``(a / b) / c`` into ``a / (b * c)``. Three HLO detectors, none keyed on
   fusion names: a ``divide`` whose numerator is the constant 1 reaching a ``multiply``
   (through broadcasts, converts and fusion boundaries only); a ``multiply`` carrying a
   division's ``op_name`` metadata (XLA keeps it on the multiply it puts in the division's
   place); a ``divide`` with a ``multiply``/``divide`` operand (compatopt's ``div`` hides
   both operands of every division, so only a re-association makes one). Counting the
   divisions instead (before vs after XLA's passes) is not robust: XLA also deletes the
   divisions of a ``where(l1 > 0, ...)`` branch that a Python-float ``l1`` makes dead.
3. **``a / sqrt(b)`` rewritten to ``a * rsqrt(b)``.** The HLO gets an ``rsqrt`` op (and a
   multiply from a division), which XLA:CPU lowers to the CPU's estimate (IR
   ``llvm.x86.sse.rsqrt.ss`` / ``llvm.x86.avx512.rsqrt14.*``, object code
   ``vrsqrtss``/``vrsqrt14pd``) plus a Newton step. All are checked. compatopt never uses
   ``lax.rsqrt``: its ``rsqrt`` is a correctly rounded ``1 / sqrt`` (TF1's scalar path;
   TF1's packet path uses ``rsqrtps`` + Newton, vendor dependent, which compatopt does not
   reproduce -- README, "Exactness"); that ``divide(1, sqrt)`` is hidden before the
   multiply, so the detectors above do not see it as a rewrite.

Each detector has a negative control compiled in the same run: plain ``jnp`` expressions
(``a * b + c``, ``c - a * b``, ``x / s`` with a traced scalar, ``x / 3.0``,
``(a / b) / c``, ``a / jnp.sqrt(b)``) for which it must fire; if a future JAX/XLA stops
firing one, the control test fails saying that detector is blind. (bfloat16: XLA:CPU rounds
every bfloat16 operation to bfloat16 in HLO, so a plain bfloat16 ``a * b + c`` is never
contracted and ``a / sqrt(b)`` is kept; only the division controls fire there.
compatopt's bfloat16 kernels compute on float32 values, which the float32 controls cover.)

All compilations run in worker subprocesses (``XLA_FLAGS=--xla_dump_to=...`` is read once
per process), this file being the worker script; the checks run here on what they dumped.
About two CPU-minutes in all (XLA compiling the sparse kernels' row de-duplication is most
of it; two workers share it), so ``slow``.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import time
import warnings
from typing import Any, Mapping, Optional

import pytest

pytestmark = pytest.mark.slow  # ~60-90 s on 2 cores: about 50 XLA compilations

DTYPES = ("float32", "float64", "float16", "bfloat16")
MODES = ("float", "traced")  # hyper-parameters as Python floats / as traced scalar arguments


@dataclasses.dataclass(frozen=True)
class Config:
    """One rule under test.

    ``hyper``: the hyper-parameters passed as Python floats (mode ``float``) or as traced
    scalars (mode ``traced``; float32 as TF1's tensors, or the variable's dtype where TF1's
    dense kernel takes them uncast, ``hyper_in_var_dtype``). Traced, ``l1`` keeps both of
    the ``l1 > 0`` branches and FTRL's ``learning_rate_power`` both its ``sqrt`` and ``pow``
    forms. ``static``: constructor-only arguments. ``rank1_sparse``: the rule has a separate
    rank-1 sparse kernel (TF1's scalar path), so a vector variable is compiled too; the other
    rules' sparse kernels are the same code for every rank.
    """

    id: str
    factory: str
    hyper: Mapping[str, float]
    static: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    rank1_sparse: bool = False
    hyper_in_var_dtype: bool = False

    def kinds(self) -> tuple:
        return ("dense", "sparse", "sparse_rank1") if self.rank1_sparse else ("dense", "sparse")


CONFIGS = (
    Config("gradient_descent", "gradient_descent", {"learning_rate": 0.1}),
    Config("momentum", "momentum", {"learning_rate": 0.1, "momentum": 0.9}),
    Config("momentum_nesterov", "momentum", {"learning_rate": 0.1, "momentum": 0.9},
           {"use_nesterov": True}),
    Config("adagrad", "adagrad", {"learning_rate": 0.1}, {"initial_accumulator_value": 0.1},
           rank1_sparse=True),
    Config("adagrad_da", "adagrad_da",
           {"learning_rate": 0.1, "l1_regularization_strength": 0.01,
            "l2_regularization_strength": 0.02},
           {"initial_gradient_squared_accumulator_value": 0.1}, rank1_sparse=True),
    Config("adadelta", "adadelta", {"learning_rate": 1.0, "rho": 0.95, "epsilon": 1e-6}),
    Config("adam", "adam", {"learning_rate": 0.01, "beta1": 0.9, "beta2": 0.999,
                            "epsilon": 1e-8}),
    Config("ftrl", "ftrl",
           {"learning_rate": 0.1, "learning_rate_power": -0.5,
            "l1_regularization_strength": 0.01, "l2_regularization_strength": 0.02,
            "l2_shrinkage_regularization_strength": 0.0, "beta": 0.0},
           {"initial_accumulator_value": 0.1}, rank1_sparse=True),
    Config("proximal_gradient_descent", "proximal_gradient_descent",
           {"learning_rate": 0.1, "l1_regularization_strength": 0.01,
            "l2_regularization_strength": 0.01}, rank1_sparse=True, hyper_in_var_dtype=True),
    Config("proximal_adagrad", "proximal_adagrad",
           {"learning_rate": 0.1, "l1_regularization_strength": 0.01,
            "l2_regularization_strength": 0.01}, {"initial_accumulator_value": 0.1},
           rank1_sparse=True, hyper_in_var_dtype=True),
    Config("rmsprop", "rmsprop", {"learning_rate": 0.01, "decay": 0.9, "momentum": 0.9,
                                  "epsilon": 1e-10}),
    Config("rmsprop_centered", "rmsprop", {"learning_rate": 0.01, "decay": 0.9,
                                           "momentum": 0.9, "epsilon": 1e-10},
           {"centered": True}),
)
BY_ID = {c.id: c for c in CONFIGS}

# The negative controls: plain jnp, no guard. (name, expression, the detectors that must
# fire on it, per dtype). See the module docstring for why bfloat16 is shorter.
CONTROLS = {
    "ctl_fma": "a * b + c",
    "ctl_fms": "c - a * b",
    "ctl_div_traced": "x / s  (s a traced scalar)",
    "ctl_div_const": "x / 3.0",
    "ctl_div_nested": "(a / b) / c",
    "ctl_rsqrt": "a / jnp.sqrt(b)",
}
_FMA = ("fma_ir", "fma_code")
_RSQRT = ("rsqrt_hlo", "rsqrt_ir", "rsqrt_code", "div_provenance")


def _cpu_has_fp16_fma() -> bool:
    """AVX512-FP16 (``vfmadd...ph``): without it LLVM computes a float16 ``a * b + c`` as two
    float32 operations with a rounding to float16 between them, so no FMA instruction can
    appear in the object code (the IR marker still fires) and the float16 object-code control
    has nothing to find."""
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and "avx512fp16" in line.split() for line in f)
    except OSError:
        return False


def _fma_fires(dtype: str) -> tuple:
    if dtype == "bfloat16":
        return ()
    if dtype == "float16" and not _cpu_has_fp16_fma():
        return ("fma_ir",)
    return _FMA


CONTROL_FIRES = {
    dtype: {
        "ctl_fma": _fma_fires(dtype),
        "ctl_fms": _fma_fires(dtype),
        "ctl_div_traced": ("div_reciprocal", "div_provenance"),
        "ctl_div_const": ("div_provenance",),
        "ctl_div_nested": ("div_reassoc",),
        "ctl_rsqrt": _RSQRT if dtype != "bfloat16" else (),
    } for dtype in DTYPES
}

# Rule/check pairs where the compiled code legitimately shows a pattern because TF1's own
# kernel computes it that way, each with the TF1 kernel it follows. None so far.
ALLOWED: dict = {}

DETECTORS = {
    "fma_ir": "LLVM IR: an fmul result used by an fadd/fsub (the backend fuses these)",
    "fma_code": "object code: fused multiply-add instructions",
    "div_reciprocal": "HLO: divide(1, s) feeding a multiply",
    "div_provenance": "HLO: a multiply made from a division (its op_name is a div)",
    "div_reassoc": "HLO: a division of an unhidden product or quotient (re-associated)",
    "rsqrt_hlo": "HLO: an rsqrt op",
    "rsqrt_ir": "LLVM IR: an rsqrt estimate intrinsic",
    "rsqrt_code": "object code: rsqrt estimate instructions",
}

SHAPES = {"dense": (37,), "sparse": (9, 5), "sparse_rank1": (37,)}
INDICES = {"sparse": [1, 3, 3, 0, 5, 8],  # repeated rows: the de-duplication is compiled too
           "sparse_rank1": [1, 3, 3, 0, 5, 7, 2, 8, 3, 30, 31, 32, 33, 34, 35, 20, 21, 22,
                            23, 24]}
N_WORKERS = 2  # the compilations dominate the run time; one process per core


def _modules() -> list:
    """``(module id, config id or "controls", dtype)``, the unit of one compilation."""
    mods = [(f"xm{i:02d}", cfg.id, dtype)
            for i, (cfg, dtype) in enumerate((c, d) for c in CONFIGS for d in DTYPES)]
    mods += [(f"xc{i}", "controls", dtype) for i, dtype in enumerate(DTYPES)]
    return mods


def _sub_name(kind: str, mode: str) -> str:
    return f"sub_{kind}_{mode}"


# ===================================================================== worker (subprocess)


def _named(fn, name):
    fn.__name__ = fn.__qualname__ = name
    return fn


def _rule_step(cfg: Config, kind: str, mode: str):
    import compatopt as co

    def step(p, s, values, indices, hyper):
        kwargs = {**cfg.hyper, **(hyper if mode == "traced" else {}), **cfg.static}
        rule = getattr(co, cfg.factory)(**kwargs)
        g = values if kind == "dense" else co.IndexedSlices(values, indices, p.shape)
        return rule.apply(g, s, p)

    return _named(step, _sub_name(kind, mode))


def _control_steps(dtype):
    import jax.numpy as jnp

    return {
        "ctl_fma": lambda a, b, c: a * b + c,
        "ctl_fms": lambda a, b, c: c - a * b,
        "ctl_div_traced": lambda x, s: x / s,
        "ctl_div_const": lambda x: x / jnp.asarray(3.0, dtype),
        "ctl_div_nested": lambda a, b, c: (a / b) / c,
        "ctl_rsqrt": lambda a, b: a / jnp.sqrt(b),
    }


def _compile_rule_module(mid: str, cfg: Config, dtype: str, out: str) -> dict:
    import jax

    import compatopt as co

    # Compilation needs shapes and dtypes only: abstract arguments, no eager computation.
    def arr(shape, dt=dtype):
        return jax.ShapeDtypeStruct(tuple(shape), jax.numpy.dtype(dt))

    hdt = dtype if cfg.hyper_in_var_dtype else "float32"
    hyper = {k: arr((), hdt) for k in cfg.hyper}
    rule = getattr(co, cfg.factory)(**cfg.hyper, **cfg.static)
    subs, args = {}, {}
    for kind in cfg.kinds():
        shape = SHAPES[kind]
        if kind == "dense":
            values, indices = arr(shape), None
        else:
            indices = arr((len(INDICES[kind]),), "int32")
            values = arr((len(INDICES[kind]),) + shape[1:])
        # The two modes share the gradient and the apply count (so XLA compiles the
        # de-duplication of the sparse rows once) but not the parameters or the slots (so
        # no arithmetic of one mode is merged with the other's).
        p = {m: arr(shape) for m in MODES}
        state = rule.init(p["float"])
        others = {f: v for f, v in state._asdict().items() if f != "count"}
        args[kind] = {"p": p, "state": state, "others": others, "values": values,
                      "indices": indices}

    def module(args, hyper):
        res = {}
        for kind in cfg.kinds():
            a = args[kind]
            for mode in MODES:
                s = a["state"] if mode == "float" else a["state"]._replace(**a["others"])
                try:  # TF1 has no kernel for this dtype: the rule raises while tracing
                    res[f"{kind}_{mode}"] = jax.jit(_rule_step(cfg, kind, mode))(
                        a["p"][mode], s, a["values"], a["indices"], hyper)
                except TypeError as e:
                    subs[_sub_name(kind, mode)] = f"{type(e).__name__}: {e}"
                else:
                    subs[_sub_name(kind, mode)] = None
        return res

    _compile_and_save(_named(module, f"{mid}_{cfg.id}_{dtype}"), (args, hyper), mid, out)
    return subs


def _compile_control_module(mid: str, dtype: str, out: str) -> dict:
    import jax

    steps = _control_steps(dtype)
    x, s = (jax.ShapeDtypeStruct(shape, jax.numpy.dtype(dtype)) for shape in ((37,), ()))
    inputs = {"ctl_fma": (x, x, x), "ctl_fms": (x, x, x), "ctl_div_traced": (x, s),
              "ctl_div_const": (x,), "ctl_div_nested": (x, x, x), "ctl_rsqrt": (x, x)}

    def module(inputs):
        return {name: jax.jit(_named(steps[name], _sub_name(name, "float")))(*inputs[name])
                for name in CONTROLS}

    _compile_and_save(_named(module, f"{mid}_controls_{dtype}"), (inputs,), mid, out)
    return {_sub_name(name, "float"): None for name in CONTROLS}


def _compile_and_save(fn, args, mid: str, out: str) -> None:
    import jax

    with open(os.path.join(out, f"{mid}.hlo"), "w") as f:
        f.write(jax.jit(fn).lower(*args).compile().as_text())


def _work_order() -> list:
    """Module ids, the costliest compilations first (more sparse kernels, half precision's
    per-operation rounding), so that the workers finish together."""
    cost = {"bfloat16": 0, "float16": 1, "float32": 2, "float64": 3}
    return [mid for mid, what, dtype in sorted(
        _modules(), key=lambda m: (m[1] == "controls", -len(BY_ID[m[1]].kinds())
                                   if m[1] in BY_ID else 0, cost[m[2]]))]


def _claim(out: str, mid: str) -> bool:
    """True for the one worker that creates ``mid``'s claim file first."""
    try:
        os.close(os.open(os.path.join(out, f"{mid}.claim"), os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return False
    return True


def _worker_main(out: str, worker: str) -> None:
    warnings.filterwarnings("error")  # as pyproject's filterwarnings
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"jax\..*")
    import jax

    jax.config.update("jax_enable_compilation_cache", False)  # a cache hit dumps nothing
    table = {mid: (what, dtype) for mid, what, dtype in _modules()}
    result = {}
    for mid in _work_order():
        if not _claim(out, mid):
            continue
        what, dtype = table[mid]
        start = time.perf_counter()
        ctx = jax.enable_x64(True) if dtype == "float64" else contextlib.nullcontext()
        with ctx:
            if what == "controls":
                subs = _compile_control_module(mid, dtype, out)
            else:
                subs = _compile_rule_module(mid, BY_ID[what], dtype, out)
        result[mid] = {"subs": subs, "seconds": round(time.perf_counter() - start, 2)}
    with open(os.path.join(out, f"worker{worker}.json"), "w") as f:
        json.dump({"jax": jax.__version__, "modules": result}, f)


# ================================================================= detectors (this process)

_FLOAT_TYPES = {"f16", "bf16", "f32", "f64"}
_SUB_RE = re.compile(r"jit\((sub_[A-Za-z0-9_]+)\)")


@dataclasses.dataclass
class Instr:
    name: str
    etype: str
    elems: int
    op: str
    operands: list
    args: str
    calls: Optional[str]
    sub: Optional[str]
    op_name: str


def _balanced(s: str, start: int) -> int:
    """Index just past the parenthesis group opening at ``s[start]``."""
    depth = 0
    for i in range(start, len(s)):
        if s[i] == "(":
            depth += 1
        elif s[i] == ")":
            depth -= 1
            if depth == 0:
                return i + 1
    return len(s)


def _elems(dims: str) -> int:
    n = 1
    for d in re.findall(r"\d+", dims):
        n *= int(d)
    return n


class Hlo:
    """The optimized HLO module (``compiled.as_text()``) as a graph, fusions included."""

    _COMP = re.compile(r"^(?:ENTRY\s+)?%([^\s(]+)\s*\(.*->.*\{\s*$")
    _INSTR = re.compile(r"^\s*(ROOT\s+)?%([^\s=]+)\s*=\s*(.*)$")

    def __init__(self, text: str):
        self.comps: dict = {}
        self.root: dict = {}
        self.caller: dict = {}  # fused computation -> (computation, fusion instruction)
        comp = None
        for line in text.splitlines():
            m = self._COMP.match(line)
            if m:
                comp = m.group(1)
                self.comps[comp] = {}
                continue
            if line.startswith("}"):
                comp = None
                continue
            m = self._INSTR.match(line) if comp else None
            if not m:
                continue
            rest = m.group(3)
            end = _balanced(rest, 0) if rest.startswith("(") else rest.find(" ")
            rtype, rest = rest[:end], rest[end:].lstrip()
            om = re.match(r"([a-z][a-z0-9\-]*)\(", rest)
            if not om:
                continue
            close = _balanced(rest, om.end() - 1)
            args, attrs = rest[om.end():close - 1], rest[close:]
            tm = re.match(r"(\w+)\[([\d,]*)\]", rtype)
            calls = re.search(r"calls=%([^\s,]+)", attrs)
            sub = _SUB_RE.search(attrs)
            op_name = re.search(r'op_name="([^"]*)"', attrs)
            ins = Instr(m.group(2), tm.group(1) if tm else "", _elems(tm.group(2)) if tm else 0,
                        om.group(1), re.findall(r"%([^\s,)]+)", args), args,
                        calls.group(1) if calls else None, sub.group(1) if sub else None,
                        op_name.group(1) if op_name else "")
            self.comps[comp][ins.name] = ins
            if m.group(1):
                self.root[comp] = ins.name
            if ins.op == "fusion" and ins.calls:
                self.caller[ins.calls] = (comp, ins.name)

    def instrs(self):
        for comp, table in self.comps.items():
            for ins in table.values():
                yield comp, ins

    _PASS = {"broadcast", "reshape", "bitcast", "copy", "convert", "transpose"}

    def _source(self, comp: str, name: str):
        ins = self.comps[comp][name]
        if ins.op in self._PASS and ins.operands:
            return self._source(comp, ins.operands[0])
        if ins.op == "parameter" and comp in self.caller:
            ccomp, fusion = self.caller[comp]
            return self._source(ccomp, self.comps[ccomp][fusion].operands[int(ins.args)])
        return comp, ins

    def _users(self, comp: str, name: str):
        for ins in self.comps[comp].values():
            for k, operand in enumerate(ins.operands):
                if operand != name:
                    continue
                if ins.op == "fusion" and ins.calls in self.comps:
                    for p in self.comps[ins.calls].values():
                        if p.op == "parameter" and p.args.strip() == str(k):
                            yield ins.calls, p, True
                else:
                    yield comp, ins, False
        if self.root.get(comp) == name and comp in self.caller:
            ccomp, fusion = self.caller[comp]
            yield ccomp, self.comps[ccomp][fusion], True

    def sub_of(self, comp: str, ins: Instr) -> Optional[str]:
        if ins.sub:
            return ins.sub
        if comp in self.caller:  # an instruction without metadata: its fusion's
            ccomp, fusion = self.caller[comp]
            return self.comps[ccomp][fusion].sub
        return None

    def reciprocal_multiplies(self) -> list:
        """``divide`` with the constant 1 as numerator whose result reaches a ``multiply``
        through broadcasts, converts, copies and fusion boundaries only."""
        hits = []
        for comp, ins in self.instrs():
            if ins.op != "divide" or ins.etype not in _FLOAT_TYPES:
                continue
            _, num = self._source(comp, ins.operands[0])
            literal = re.findall(r"[-+.\deEinf]+", num.args) if num.op == "constant" else []
            if not literal or any(_float(v) != 1.0 for v in literal):
                continue
            seen, frontier = set(), [(comp, ins.name)]
            while frontier:
                c, n = frontier.pop()
                for c2, user, through in self._users(c, n):
                    if (c2, user.name) in seen:
                        continue
                    seen.add((c2, user.name))
                    if user.op == "multiply" and not through:
                        hits.append((self.sub_of(comp, ins),
                                     f"{ins.name} = divide(1, ...) [{ins.etype}] -> "
                                     f"{user.name} = multiply [{user.etype}[{user.elems}]]"))
                    elif through or user.op in self._PASS:
                        frontier.append((c2, user.name))
        return hits

    def multiplies_from_divisions(self) -> list:
        """Floating-point ``multiply`` ops that XLA made out of a division: it keeps the
        division's metadata (``op_name`` ``.../div``) on the multiply it puts in its place
        (``x / c`` -> ``x * (1/c)``, ``a / sqrt(b)`` -> ``a * rsqrt(b)``)."""
        return [(self.sub_of(comp, ins), f"{ins.name} = multiply {ins.etype}[{ins.elems}] "
                 f"from {ins.op_name}")
                for comp, ins in self.instrs()
                if ins.op == "multiply" and ins.etype in _FLOAT_TYPES
                and re.search(r"/div$", ins.op_name)]

    def reassociated_divisions(self) -> list:
        """Floating-point ``divide`` ops with a ``multiply`` or ``divide`` operand (through
        broadcasts, converts and fusion boundaries): XLA's ``(a / b) / c -> a / (b * c)`` and
        ``a / (b / c) -> (a * c) / b``. compatopt hides both operands of every division
        (``N.div``), so none of its divisions has such an operand."""
        hits = []
        for comp, ins in self.instrs():
            if ins.op != "divide" or ins.etype not in _FLOAT_TYPES:
                continue
            for k, operand in enumerate(ins.operands[:2]):
                _, src = self._source(comp, operand)
                if src.op in ("multiply", "divide"):
                    hits.append((self.sub_of(comp, ins),
                                 f"{ins.name} = divide {ins.etype}[{ins.elems}], operand {k} "
                                 f"is {src.name} = {src.op}"))
        return hits

    def kernel_subs(self) -> dict:
        """Kernel (entry instruction) name -> the sub-cases whose operations it computes."""
        out = {}
        entry = [c for c in self.comps if c not in self.caller]
        for comp in entry:
            for ins in self.comps[comp].values():
                subs = {ins.sub} if ins.sub else set()
                if ins.calls in self.comps:
                    subs |= {i.sub for i in self.comps[ins.calls].values() if i.sub}
                out[ins.name] = subs
        return out


def _float(v: str) -> float:
    try:
        return float(v)
    except ValueError:
        return float("nan")


_IR_DEFINE = re.compile(r"^define [^@]*@\"?([^\"(\s]+)\"?\(", re.M)
_IR_FMUL = re.compile(r"^\s*(%[\w.\-]+) = fmul\b", re.M)
_IR_ADDSUB = re.compile(r"^\s*%[\w.\-]+ = (?:fadd|fsub)\b([^\n]*)", re.M)
_IR_RSQRT = re.compile(r"@llvm\.[\w.]*rsqrt[\w.]*|@llvm\.aarch64\.neon\.frsqrte[\w.]*")
_FMA_INSN = re.compile(
    r"^\s*[0-9a-f]+:\s+(v?f(?:n?m(?:add|sub)|maddsub|msubadd)(?:132|213|231)?"
    r"(?:ne)?(?:p[sdh]|s[sdh]|pbf16|bf16)|fmla|fmls|fmadd|fmsub|fnmadd|fnmsub|bfmla\w*)\b",
    re.M)
_RSQRT_INSN = re.compile(
    r"^\s*[0-9a-f]+:\s+(v?rsqrt(?:14|28)?(?:p[sdh]|s[sdh])|frsqrte|frsqrts)\b", re.M)


def _ir_findings(text: str) -> tuple:
    """Per function of an ``*.ir-with-opt.ll``: fmul-feeding-fadd/fsub and rsqrt intrinsic
    lines."""
    fma, rsq = [], []
    starts = [(m.start(), m.group(1)) for m in _IR_DEFINE.finditer(text)]
    for i, (pos, fn) in enumerate(starts):
        body = text[pos:starts[i + 1][0] if i + 1 < len(starts) else len(text)]
        products = set(_IR_FMUL.findall(body))
        if products:
            for m in _IR_ADDSUB.finditer(body):
                if products & set(re.findall(r"%[\w.\-]+", m.group(1))):
                    fma.append((fn, m.group(0).strip()))
        rsq += [(fn, s) for s in set(_IR_RSQRT.findall(body))]
    return fma, rsq


def _objdump_tool() -> Optional[str]:
    return shutil.which("objdump") or shutil.which("llvm-objdump")


def _code_findings(objs: list) -> tuple:
    """FMA and rsqrt-estimate instructions in the object files, per symbol."""
    tool = _objdump_tool()
    fma, rsq = [], []
    for i in range(0, len(objs), 200):
        text = subprocess.run([tool, "-d", "--no-show-raw-insn", *objs[i:i + 200]],
                              capture_output=True, text=True, check=True).stdout
        sym = None
        for line in text.splitlines():
            m = re.match(r"^[0-9a-f]+ <([^>]+)>:", line)
            if m:
                sym = m.group(1)
                continue
            for regex, hits in ((_FMA_INSN, fma), (_RSQRT_INSN, rsq)):
                m = regex.match(line)
                if m:
                    hits.append((sym, m.group(1)))
    return fma, rsq


def _kernel_key(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "_", name)


def _analyze_module(out: str, dump: str, mid: str, subs: dict) -> dict:
    """{sub: {detector: [finding, ...]}} for one compiled module."""
    live = [s for s, skip in subs.items() if skip is None]
    findings = {s: {d: [] for d in DETECTORS} for s in live}
    if not live:
        return findings
    with open(os.path.join(out, f"{mid}.hlo")) as f:
        hlo = Hlo(f.read())

    def add(sub, detector, what):
        for s in ([sub] if sub in findings else live):  # unattributed: every sub-case
            findings[s][detector].append(what if sub in findings else f"{what} (unattributed)")

    for detector, hits in (("div_reciprocal", hlo.reciprocal_multiplies()),
                           ("div_provenance", hlo.multiplies_from_divisions()),
                           ("div_reassoc", hlo.reassociated_divisions())):
        for sub, what in hits:
            add(sub, detector, what)
    attributed = collections.Counter()
    for comp, ins in hlo.instrs():
        attributed[hlo.sub_of(comp, ins)] += 1
        if ins.op == "rsqrt":
            add(hlo.sub_of(comp, ins), "rsqrt_hlo", f"{ins.name} = rsqrt {ins.etype}[{ins.elems}]")
    for s in live:  # the plumbing check: this sub-case's own operations were found
        findings[s]["hlo_instructions"] = attributed[s]

    kernels = {_kernel_key(k): v for k, v in hlo.kernel_subs().items()}

    def kernel_sub(symbol):
        subs_here = kernels.get(_kernel_key(symbol))
        if subs_here is None:  # e.g. "foo_fusion_kernel_module" wrappers; else unattributed
            base = re.sub(r"(_kernel_module|_impl.*|_parallel.*)$", "", symbol)
            subs_here = kernels.get(_kernel_key(base), set())
        return subs_here

    files = glob.glob(os.path.join(dump, f"module_*.jit_{mid}_*"))
    assert files, f"XLA dumped nothing for {mid} into {dump}"
    for path in (p for p in files if p.endswith(".ir-with-opt.ll")):
        with open(path) as f:
            fma, rsq = _ir_findings(f.read())
        for detector, hits in (("fma_ir", fma), ("rsqrt_ir", rsq)):
            for fn, line in hits:
                where = kernel_sub(fn) or {None}
                for s in where:
                    add(s, detector, f"kernel {fn}: {line}")
    objs = [p for p in files if p.endswith(".o")]
    if _objdump_tool() and objs:
        fma, rsq = _code_findings(objs)
        for detector, hits in (("fma_code", fma), ("rsqrt_code", rsq)):
            counted = collections.Counter(hits)
            for (sym, insn), k in sorted(counted.items()):
                for s in kernel_sub(sym) or {None}:
                    add(s, detector, f"kernel {sym}: {k} x {insn}")
    return findings


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """Compiles every module in ``N_WORKERS`` subprocesses and runs all detectors:
    {(module id, sub-case): findings}, the skip reasons, and the JAX version."""
    out = str(tmp_path_factory.mktemp("exactness_compiled"))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    mods = _modules()
    procs = []
    try:
        results, skips, version = _run_workers(out, root, mods, procs)
    finally:
        for *_, proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    yield {"findings": results, "skips": skips, "jax": version}
    shutil.rmtree(out, ignore_errors=True)


def _run_workers(out, root, mods, procs):
    missing = set(m[0] for m in mods)
    for w in range(N_WORKERS):
        dump = os.path.join(out, f"dump{w}")
        env = dict(os.environ)
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + f" --xla_dump_to={dump}"
                            r" --xla_dump_hlo_module_re=^jit_x[mc]\d+_").strip()
        env["JAX_PLATFORMS"] = "cpu"
        env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in [env.get("PYTHONPATH")] if p])
        log = open(os.path.join(out, f"worker{w}.log"), "w+")
        procs.append((w, dump, log, subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker", out, str(w)], cwd=root,
            env=env, stdout=log, stderr=subprocess.STDOUT)))
    results, skips, version = {}, {}, None
    for w, dump, log, proc in procs:
        proc.wait(timeout=900)
        log.seek(0)
        text = log.read()
        log.close()
        assert proc.returncode == 0, f"compile worker failed:\n{text[-6000:]}"
        with open(os.path.join(out, f"worker{w}.json")) as f:
            data = json.load(f)
        version = data["jax"]
        for mid, module in data["modules"].items():
            subs = module["subs"]
            for sub, reason in subs.items():
                skips[(mid, sub)] = reason
            for sub, found in _analyze_module(out, dump, mid, subs).items():
                results[(mid, sub)] = found
            missing.discard(mid)
    assert not missing, f"no worker compiled {sorted(missing)}"
    return results, skips, version


# ========================================================================== the tests

_MID = {(what, dtype): mid for mid, what, dtype in _modules()}
RULE_CASES = [pytest.param(cfg.id, dtype, kind, mode, id=f"{cfg.id}-{dtype}-{kind}-{mode}")
              for cfg in CONFIGS for dtype in DTYPES for kind in cfg.kinds() for mode in MODES]
CONTROL_CASES = [pytest.param(name, dtype, det, id=f"{name}-{dtype}-{det}")
                 for dtype in DTYPES for name in CONTROLS
                 for det in CONTROL_FIRES[dtype][name]]


def _rule_findings(compiled, cfg_id, dtype, kind, mode, detectors) -> str:
    key = (_MID[(cfg_id, dtype)], _sub_name(kind, mode))
    reason = compiled["skips"][key]
    if reason is not None:
        pytest.skip(f"no TF1 kernel: {reason}")
    lines = []
    for det in detectors:
        if det in ALLOWED.get(cfg_id, {}):
            continue
        for what in compiled["findings"][key][det][:8]:
            lines.append(f"  {DETECTORS[det]}: {what}")
    return "\n".join(lines)


def _fail_text(cfg_id, dtype, kind, mode, text):
    return (f"{cfg_id} ({dtype}, {kind} gradient, hyper-parameters {mode}): XLA:CPU emitted "
            f"code that breaks TF1's arithmetic:\n{text}")


@pytest.mark.parametrize("control,dtype,detector", CONTROL_CASES)
def test_detector_fires_on_unguarded_control(compiled, control, dtype, detector):
    """The negative controls: without the guards the rewrite is there, and seen."""
    if detector.endswith("_code") and not _objdump_tool():
        pytest.skip("neither objdump nor llvm-objdump is installed: object code not checked")
    found = compiled["findings"][(_MID[("controls", dtype)], _sub_name(control, "float"))]
    assert found[detector], (
        f"detector '{detector}' ({DETECTORS[detector]}) is blind: the unguarded "
        f"{dtype} control `{CONTROLS[control]}` compiled without it firing under jax "
        f"{compiled['jax']}. XLA:CPU changed how it emits this rewrite; fix the detector "
        f"before trusting the rule tests in this file.")


@pytest.mark.parametrize("cfg_id,dtype,kind,mode", RULE_CASES)
def test_no_contracted_multiply_add(compiled, cfg_id, dtype, kind, mode):
    dets = ("fma_ir", "fma_code") if _objdump_tool() else ("fma_ir",)
    text = _rule_findings(compiled, cfg_id, dtype, kind, mode, dets)
    assert not text, _fail_text(cfg_id, dtype, kind, mode, text)


@pytest.mark.parametrize("cfg_id,dtype,kind,mode", RULE_CASES)
def test_no_division_turned_into_reciprocal_multiply(compiled, cfg_id, dtype, kind, mode):
    dets = ("div_reciprocal", "div_provenance", "div_reassoc")
    text = _rule_findings(compiled, cfg_id, dtype, kind, mode, dets)
    assert not text, _fail_text(cfg_id, dtype, kind, mode, text)


@pytest.mark.parametrize("cfg_id,dtype,kind,mode", RULE_CASES)
def test_no_division_by_sqrt_turned_into_rsqrt(compiled, cfg_id, dtype, kind, mode):
    dets = ("rsqrt_hlo", "rsqrt_ir")
    dets += ("rsqrt_code",) if _objdump_tool() else ()
    text = _rule_findings(compiled, cfg_id, dtype, kind, mode, dets)
    assert not text, _fail_text(cfg_id, dtype, kind, mode, text)


def test_every_case_was_compiled_and_its_code_found(compiled):
    """Each rule compiles in float32 (TF1 has every kernel there), dense and sparse, and
    every compiled case (controls too) owns HLO instructions: the detectors' attribution of
    code to cases works, so a case cannot pass by having no code of its own."""
    for cfg in CONFIGS:
        for kind in cfg.kinds():
            for mode in MODES:
                key = (_MID[(cfg.id, "float32")], _sub_name(kind, mode))
                assert compiled["skips"][key] is None, (cfg.id, kind, mode,
                                                        compiled["skips"][key])
    empty = [key for key, found in compiled["findings"].items()
             if not found["hlo_instructions"]]
    assert not empty, f"compiled cases with no HLO instruction attributed to them: {empty}"


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "--worker":
    _worker_main(sys.argv[2], sys.argv[3])
