"""A porting lint: a variable the loss reads only through a gather of its *value*.

TF1's ``tf.gather(w, ids)`` / ``tf.nn.embedding_lookup(w, ids)`` give ``w`` an
``IndexedSlices`` gradient, and the optimizers' sparse kernels update only the rows looked
up (lazily for Adagrad, FTRL, Momentum ...; TF1's Adam decays every row). A port that reads
``jnp.take(w.value, ids, axis=0)`` or ``w.value[ids]`` instead gets a *dense* gradient, and
the dense kernels update every row: the numbers differ from TF1's. :func:`check` warns
(``UserWarning``, naming the variable and the fix: ``co.nn.embedding_lookup(w, ids)`` /
``w.sparse_read(ids)``) when every use of a variable's dense value that reaches the loss is
the operand of an XLA ``gather`` of whole rows (axis 0: other axes and element gathers have
dense gradients in TF1 too); a variable also used otherwise (a matmul, a norm, ...) or
not at all is left alone.

Cost: one ``jax.make_jaxpr`` of the lifted loss (no compilation, nothing run) the first time
a loss code is seen (:func:`loss_key`), nothing afterwards and nothing per step. The walk
follows ``jit`` / ``custom_jvp`` / ``custom_vjp`` / ``remat`` calls into their bodies, ignores
``stop_gradient`` uses and computations that do not reach the loss (writes, auxiliary
outputs); control flow (``scan``, ``cond``, ``while``) counts as a dense use, so the check
never warns where it is not sure. A loss that cannot be traced abstractly (Python control
flow on concrete values) is not checked.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
import types
import warnings
from typing import Any, Callable, Sequence

import jax
from jax.extend import core as jcore

from compatopt.train._variable import get_default_graph

# loss keys already inspected (process-wide; a loss code is inspected once)
_checked: set = set()
_lock = threading.Lock()

_CALLS = ("jit", "pjit", "closed_call", "core_call", "custom_jvp_call", "custom_vjp_call",
          "custom_vjp_call_jaxpr", "remat", "checkpoint")
_SUB_JAXPR_PARAMS = ("jaxpr", "call_jaxpr", "fun_jaxpr")
_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def loss_key(fn: Any, depth: int = 0) -> Any:
    """The code of ``fn`` and of the functions it closes over (``minimize``'s and loss
    scaling's wrappers close over the user's loss), or ``None`` without code."""
    if isinstance(fn, functools.partial):
        return ("partial", loss_key(fn.func, depth))
    if isinstance(fn, types.MethodType):
        fn = fn.__func__
    code = getattr(fn, "__code__", None)
    if code is None:
        return None
    inner = []
    if depth < 4:
        for cell in getattr(fn, "__closure__", None) or ():
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell
                continue
            if isinstance(value, (types.FunctionType, types.MethodType, functools.partial)):
                inner.append(loss_key(value, depth + 1))
    return (code, tuple(inner))


def first_time(loss_fn: Callable) -> bool:
    """True the first time a loss with this :func:`loss_key` is seen (then never again)."""
    key = loss_key(loss_fn)
    if key is None:
        return False
    with _lock:
        if key in _checked:
            return False
        _checked.add(key)
    return True


def _sub_jaxpr(eqn: Any) -> Any:
    """The body of a call-like equation whose inputs are the equation's, or ``None``."""
    if eqn.primitive.name not in _CALLS:
        return None
    for name in _SUB_JAXPR_PARAMS:
        sub = eqn.params.get(name)
        sub = getattr(sub, "jaxpr", sub)  # a ClosedJaxpr's Jaxpr
        if isinstance(sub, jcore.Jaxpr) and len(sub.invars) == len(eqn.invars):
            return sub
    return None


def _gathers_rows(eqn: Any) -> bool:
    """A ``gather`` of whole rows (axis 0), as ``tf.gather(w, ids)``; other axes and
    element gathers (``w[ids, 2]``) have dense gradients in TF1 too."""
    dims = eqn.params["dimension_numbers"]
    shape = tuple(eqn.invars[0].aval.shape)
    return (tuple(dims.start_index_map) == (0,) and tuple(dims.collapsed_slice_dims) == (0,)
            and tuple(eqn.params["slice_sizes"]) == (1,) + shape[1:])


def _needed(jaxpr: Any, live_out: Sequence[bool]) -> tuple:
    """``(equations reaching the live outputs, variables they need)``."""
    need = {v for v, live in zip(jaxpr.outvars, live_out)
            if live and isinstance(v, jcore.Var)}
    eqns = []
    for eqn in reversed(jaxpr.eqns):
        if any(o in need for o in eqn.outvars):
            eqns.append(eqn)
            need.update(x for x in eqn.invars if isinstance(x, jcore.Var))
    return eqns[::-1], need


def _uses(jaxpr: Any, live_out: Sequence[bool]) -> dict:
    """How each variable of ``jaxpr`` is used on the way to the live outputs:
    ``{var: {"gather", "other"}}`` (one walk for all of them: linear in the equations)."""
    kinds: dict = {}
    for o, live in zip(jaxpr.outvars, live_out):
        if live and isinstance(o, jcore.Var):
            kinds.setdefault(o, set()).add("other")  # returned as it is
    eqns, need = _needed(jaxpr, live_out)
    for eqn in eqns:
        if eqn.primitive.name == "stop_gradient":
            continue
        positions: dict = {}
        for k, x in enumerate(eqn.invars):
            if isinstance(x, jcore.Var):
                positions.setdefault(x, []).append(k)
        if not positions:
            continue
        if eqn.primitive.name == "gather" and _gathers_rows(eqn):
            for x, ks in positions.items():
                kinds.setdefault(x, set()).add("gather" if ks == [0] else "other")
            continue
        sub = _sub_jaxpr(eqn)
        if sub is None:
            for x in positions:
                kinds.setdefault(x, set()).add("other")
            continue
        sub_kinds = _uses(sub, [o in need for o in eqn.outvars])
        for x, ks in positions.items():
            for k in ks:
                kinds.setdefault(x, set()).update(sub_kinds.get(sub.invars[k], ()))
    return kinds


def gathered_only(closed_jaxpr: Any, n_inputs: int) -> list:
    """For each of the first ``n_inputs`` inputs of ``closed_jaxpr``: whether every use of
    it that reaches the first output is a gather's operand (and there is one)."""
    jaxpr = closed_jaxpr.jaxpr
    live_out = [True] + [False] * (len(jaxpr.outvars) - 1)
    kinds = _uses(jaxpr, live_out)
    return [kinds.get(v) == {"gather"} for v in jaxpr.invars[:n_inputs]]


def check(lifted_loss: Callable, dense: Sequence[Any], plan: Sequence[Any],
          with_grads: Sequence[Any]) -> None:
    """Warns for the variables of ``with_grads`` (those getting a dense gradient) that the
    loss reads only through a gather of their value.

    ``lifted_loss(dense_vals, sparse_vals)`` is ``compute_gradients``' lifted loss (the loss
    with ``dense`` reading as ``dense_vals``, the planned sparse reads ``plan`` offset by
    ``sparse_vals``; its first output is the loss). It is traced once, abstractly; the
    variables and names the trace creates are undone.
    """
    if not any(len(v.shape) for v in with_grads):
        return
    args = ([jax.ShapeDtypeStruct(v.shape, v.dtype) for v in dense],
            [jax.ShapeDtypeStruct(tuple(s), v.dtype) for v, s in plan])
    graph = get_default_graph()
    with graph.journal() as journal:
        try:
            closed = jax.make_jaxpr(lifted_loss)(*args)
        except Exception:  # noqa: BLE001 - a lint: a loss it cannot trace is not checked
            return
        finally:
            graph.undo(journal)
    only = gathered_only(closed, len(dense))
    warn([v for v, o in zip(dense, only) if o and v in with_grads])


def _stacklevel() -> int:
    """The warning's stack level: the first caller outside compatopt."""
    level, frame = 1, sys._getframe(1)
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE):
        level, frame = level + 1, frame.f_back
    return level


def warn(variables: Sequence[Any]) -> None:
    """One ``UserWarning`` per variable read only through a gather of its value."""
    for v in variables:
        warnings.warn(
            f"compatopt: the loss reads variable '{v.op.name}' only through a gather of its "
            f"value (jnp.take(w.value, ids) or w.value[ids]), so its gradient is dense and "
            f"the optimizer's dense update runs on every row; TF1's tf.gather / "
            f"tf.nn.embedding_lookup would give IndexedSlices and sparse updates of the rows "
            f"looked up. Read it with co.nn.embedding_lookup(w, ids) or w.sparse_read(ids).",
            UserWarning, stacklevel=_stacklevel())
