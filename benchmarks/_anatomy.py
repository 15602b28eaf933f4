"""Why a step moves more bytes than the floor: the loops XLA emits, read from the HLO.

For one big leaf of ``n`` elements, every fusion in the compiled step's entry computation
that touches ``n``-element buffers is one pass over memory; its ``n``-element operands are
reads and its result a write. Summing them gives the bytes per parameter XLA actually moves
(Adam on XLA:CPU: three loops, 40 B instead of 28, since XLA:CPU has no multi-output
fusion; on GPU one loop).
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp

from benchmarks import _cases

_SHAPE = re.compile(r"([a-z]+[0-9]*)\[(\d+)\]")


_LINE = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*?)\s([\w\-]+)\((.*)$")


def loops(compiled_text: str, n: int) -> list:
    """``[(name, reads, writes)]`` of the entry computation's passes over ``n`` elements."""
    entry = compiled_text[compiled_text.index("ENTRY"):]
    parsed, size = [], {}
    for line in entry.splitlines()[1:]:
        m = _LINE.match(line)
        if not m:
            continue
        name, shape, op, rest = m.groups()
        dims = _SHAPE.findall(shape)
        size[name] = int(dims[0][1]) if len(dims) == 1 else None
        operands = [o.strip().lstrip("%") for o in rest.split(")", 1)[0].split(",")]
        parsed.append((name, op, operands, sum(1 for _, d in dims if int(d) == n)))
    out = []
    for name, op, operands, writes in parsed:
        if op in ("parameter", "get-tuple-element", "tuple", "bitcast", "constant") or not writes:
            continue
        out.append((name, sum(1 for o in operands if size.get(o) == n), writes))
    return out


def anatomy(rule_name: str = "adam", n: int = 1 << 20) -> dict:
    """Loops and bytes/parameter of compatopt's, the unguarded and optax's step."""
    rc = _cases.RULES_BY_NAME[rule_name]
    p = [jnp.zeros(n, jnp.float32)]
    result = {"rule": rule_name, "floor_bytes_per_param": rc.bytes_per_param(4)}
    impls = {"compatopt": (rc.make(), _cases.rule_step)}
    if rule_name == "adam":
        impls["noguard"] = (_cases.NoGuardAdam(), _cases.rule_step)
    if rc.make_optax is not None and _cases.optax is not None:
        impls["optax"] = (rc.make_optax(), _cases.optax_step)
    for name, (rule, fn) in impls.items():
        state = rule.init(p)
        text = jax.jit(fn(rule), donate_argnums=(0, 1)).lower(p, state, p).compile().as_text()
        ls = loops(text, n)
        result[name] = {"loops": len(ls), "bytes_per_param": 4 * sum(r + w for _, r, w in ls),
                        "passes": [f"{name}: {r} reads, {w} writes" for name, r, w in ls]}
    return result
