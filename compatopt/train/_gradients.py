"""Gradients of a loss callable with respect to :class:`~compatopt.Variable`\\ s.

This is eager TF's ``GradientTape`` for the shim: the loss runs once under ``jax.vjp`` with
the chosen variables' values passed in through a :class:`~compatopt.train._variable.Frame`, which
also records every variable the loss reads (first-read order) and every write it makes.

Default ``var_list`` (TF's ``tape.watched_variables()``): the trainable variables the loss
reads. They are only known after the loss has run, so the variables found for the same loss
code last time are used as a guess; if the loss reads a trainable variable outside the
guess, it runs again with the right set (so a new loss runs twice, later calls once).

Reads through ``v.sparse_read(indices)`` (``tf.gather``) give ``IndexedSlices`` gradients:
the gathered rows enter the function as their own input, whose cotangent is the values.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any, Callable, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp

from compatopt._base import IndexedSlices
from compatopt.train import _dense_gather_check
from compatopt.train._lifting import call_lifted
from compatopt.train._variable import Variable, get_default_graph, peek

# loss code -> ([weakref to a variable read densely], [(weakref to a variable, spec)])
_guesses: "dict[Any, tuple[list, list]]" = {}

# ``minimize`` marks the user's loss with :func:`observed`; its value inside the ``vjp``
# comes out as a primal (an auxiliary output), so the step can return it.
_observing = threading.local()


def observed(loss_fn: Callable) -> Callable:
    """``loss_fn`` whose value, computed inside :func:`value_and_grads`, is kept for
    :func:`last_observed` (wrappers such as loss scaling may transform it afterwards)."""

    def loss() -> Any:
        out = loss_fn()
        frames = getattr(_observing, "frames", None)
        if frames:
            frames[-1].append(out.value if isinstance(out, Variable) else out)
        return out

    return loss


def last_observed() -> Any:
    """The first observed loss value of the last :func:`value_and_grads` on this thread
    (``None`` if none was observed), and forgets it."""
    value = getattr(_observing, "last", None)
    _observing.last = None
    return value


def _differentiable(v: Variable) -> bool:
    return jnp.issubdtype(v.dtype, jnp.inexact)


def _lifted_loss(loss_fn: Callable, dense: Sequence[Variable], plan: list, box: dict):
    """``f(dense_vals, sparse_vals) -> (loss, (writes, observed))``: the loss with the dense
    variables reading as ``dense_vals`` and the planned sparse reads' rows offset by
    ``sparse_vals``; what it did lands in ``box``."""

    def f(dense_vals, sparse_vals):
        calls: list = []

        def hook(var, indices):
            idx = jnp.asarray(indices)
            k = len(calls)
            rows = jnp.take(jax.lax.stop_gradient(peek(var)), idx, axis=0)
            calls.append((var, idx, rows.shape))
            if k < len(plan) and plan[k][0] is var and plan[k][1] == rows.shape:
                return rows + sparse_vals[k]
            return rows

        def loss_value():
            out = loss_fn()
            return jnp.asarray(out.value if isinstance(out, Variable) else out)

        frames = getattr(_observing, "frames", None)
        if frames is None:
            frames = _observing.frames = []
        frames.append([])
        try:
            lifted = call_lifted(loss_value, dense, dense_vals, sparse_read_hook=hook)
        finally:
            seen = frames.pop()
        box["lifted"], box["calls"] = lifted, calls
        return lifted.out, (lifted.written_values, seen[:1])

    return f


def _run(loss_fn: Callable, dense: Sequence[Variable], plan: list, grad_loss: Any):
    """One loss evaluation under ``jax.vjp``: loss, grads, what it did, its sparse reads."""
    box: dict = {}
    f = _lifted_loss(loss_fn, dense, plan, box)
    zeros = [jnp.zeros(shape, v.dtype) for v, shape in plan]
    loss, vjp_fn, (writes, seen) = jax.vjp(f, [peek(v) for v in dense], zeros, has_aux=True)
    _observing.last = jnp.asarray(seen[0]) if seen else None
    lifted, calls = box["lifted"], box["calls"]
    grads: dict = {}
    reads = set(lifted.reads)
    if jnp.issubdtype(loss.dtype, jnp.inexact):
        ct = jnp.ones_like(loss) if grad_loss is None else jnp.asarray(grad_loss, loss.dtype)
        d_dense, d_sparse = vjp_fn(ct)
        for v, g in zip(dense, d_dense):
            if v in reads:
                grads[v] = g
        if [(v, s) for v, _, s in calls] == list(plan):
            for (v, idx, _), g in zip(calls, d_sparse):
                grads.setdefault(("sparse", v), []).append((g, idx))
    return loss, grads, lifted, calls, list(zip(lifted.written, writes))


def _combine(v: Variable, grads: dict) -> Any:
    dense = grads.get(v)
    parts = grads.get(("sparse", v))
    if not parts:
        return dense
    indices = jnp.concatenate([i.reshape(-1) for _, i in parts], axis=0)
    values = jnp.concatenate([g.reshape((-1,) + tuple(v.shape[1:])) for g, _ in parts])
    sl = IndexedSlices(values, indices, v.shape)
    if dense is None:
        return sl
    return dense + sl.to_dense()  # mixed contributions are densified and summed (TF)


def value_and_grads(loss_fn: Callable, var_list: Optional[List[Variable]] = None,
                    grad_loss: Any = None) -> Tuple[Any, List[Tuple[Any, Variable]]]:
    """Runs ``loss_fn()`` and returns ``(loss, [(grad or None, var), ...])``.

    With ``var_list=None`` the variables are the trainable floating-point ones the loss
    reads, in first-read order. A listed variable the loss does not read gets ``None``, as
    does an integer one. Writes the loss makes (``assign``) are stored afterwards.
    """
    key = getattr(loss_fn, "__code__", None)
    explicit = var_list is not None
    if explicit:
        dense = [v for v in var_list if _differentiable(v)]
        plan: list = []
    else:
        dense, plan = _guesses.get(key, ([], []))
        graph = get_default_graph()  # a plan from an earlier graph names stale variables
        dense = [v for v in (r() for r in dense) if v is not None and v.graph is graph]
        plan = [(r(), s) for r, s in plan if r() is not None and r().graph is graph]
    for _ in range(3):
        loss, grads, lifted, calls, writes = _run(loss_fn, dense, plan, grad_loss)
        if explicit:
            wanted = list(var_list)
        else:
            wanted = [v for v in lifted.all_reads if v.trainable and _differentiable(v)]
        cand = {v for v in wanted if _differentiable(v)}
        need_dense = [v for v in wanted if v in cand and v in lifted.reads]
        need_plan = [(v, s) for v, _, s in calls if v in cand]
        if set(need_dense) <= set(dense) and need_plan == plan:
            break
        if not explicit:
            dense = need_dense
        plan = need_plan
    if not explicit:
        _guesses[key] = ([weakref.ref(v) for v in dense], [(weakref.ref(v), s) for v, s in plan])
    if _dense_gather_check.first_time(loss_fn):  # once per loss code: a porting lint
        _dense_gather_check.check(_lifted_loss(loss_fn, dense, plan, {}), dense, plan,
                                  [v for v in dense if v in grads])
    for v, value in writes:  # writes made by the loss (e.g. moving averages)
        v.assign(value)
    return loss, [(_combine(v, grads) if _differentiable(v) else None, v) for v in wanted]
