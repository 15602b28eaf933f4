"""TF1's sparse embedding gradients for JAX autodiff: ``lookup`` + ``value_and_sparse_grad``.

In TF1, ``tf.gather`` / ``embedding_lookup`` on a variable give an ``IndexedSlices``
gradient (the looked-up rows' gradients and their ids, repeats kept), and the optimizers'
sparse kernels update only those rows (lazily, for Momentum, Adagrad, FTRL, sparse Adam).
``jax.grad`` of ``jnp.take(table, ids)`` builds the dense ``[vocab, dim]`` gradient instead,
and a dense update touches every row. Here a model reads its tables with :func:`lookup`,
and :func:`value_and_sparse_grad` returns ``IndexedSlices`` for them, without ever
building the dense gradient::

    def loss(params, ids, y):
        rows = co.lookup(params["emb"], ids)            # [batch, dim]
        return jnp.mean((rows @ params["w"] - y) ** 2)

    value, grads = co.value_and_sparse_grad(loss)(params, ids, y)
    # grads["emb"]: IndexedSlices(values [batch, dim], indices ids, dense_shape emb.shape)
    params, state = rule.apply(grads, state, params)    # TF1's sparse kernel

How: the function runs once abstractly to find which parameter leaves are looked up (and
the shapes); then under ``jax.vjp`` each lookup returns ``take(stop_gradient(table), ids) +
r_k`` with ``r_k`` an extra zero input, whose cotangent is exactly the rows' gradient. A
table used only through :func:`lookup` gets an ``IndexedSlices`` (several lookups are
concatenated in call order, as TF1 aggregates them); a table also used densely gets the
dense sum, as TF1 densifies mixed contributions. Works under ``jit`` (ids may be traced).
Outside :func:`value_and_sparse_grad`, :func:`lookup` is ``jnp.take(table, ids, axis=0)``.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
from jax.extend import core as jex_core

from compatopt._base import IndexedSlices

__all__ = ["lookup", "value_and_sparse_grad"]

_state = threading.local()


def lookup(table: jax.Array, ids: Any) -> jax.Array:
    """``table[ids]`` (``tf.gather(table, ids)``): ``ids.shape + table.shape[1:]``; under
    :func:`value_and_sparse_grad` its gradient w.r.t. ``table`` is an ``IndexedSlices``."""
    hook = getattr(_state, "hook", None)
    if hook is not None:
        out = hook(table, ids)
        if out is not None:
            return out
    return jnp.take(table, jnp.asarray(ids), axis=0)


class _Hooked:
    """Installs ``hook`` for :func:`lookup` on this thread inside the block."""

    def __init__(self, hook: Callable) -> None:
        self.hook = hook

    def __enter__(self) -> None:
        self.previous = getattr(_state, "hook", None)
        _state.hook = self.hook

    def __exit__(self, *exc: Any) -> None:
        _state.hook = self.previous


def _leaf_index(table: Any, leaves: Sequence[Any]) -> Optional[int]:
    for i, leaf in enumerate(leaves):
        if table is leaf:
            return i
    return None


def value_and_sparse_grad(fun: Callable, argnums: int = 0, has_aux: bool = False
                          ) -> Callable[..., Tuple[Any, Any]]:
    """``jax.value_and_grad(fun, argnums)`` whose gradient has an ``IndexedSlices`` for each
    parameter leaf read only through :func:`lookup` (see the module docstring).

    Args:
      fun: ``fun(*args) -> scalar loss`` (or ``(loss, aux)`` with ``has_aux``).
      argnums: the position of the parameter pytree (one int).
      has_aux: as in ``jax.value_and_grad``.

    Returns:
      ``f(*args) -> (value, grads)`` (``((value, aux), grads)`` with ``has_aux``); ``grads``
      has the structure of ``args[argnums]``.
    """

    def run(leaves: List[Any], treedef: Any, args: tuple, hook: Callable) -> Any:
        params = jax.tree_util.tree_unflatten(treedef, leaves)
        call_args = args[:argnums] + (params,) + args[argnums + 1:]
        with _Hooked(hook):
            return fun(*call_args)

    def wrapped(*args: Any) -> Tuple[Any, Any]:
        leaves, treedef = jax.tree_util.tree_flatten(args[argnums])
        # 1. discovery (abstract): which leaves are looked up, the rows' shapes, and which
        #    of those leaves are also used densely (their input is unused otherwise).
        plan: List[Tuple[int, tuple, Any]] = []

        def probe(leaf_vals, copies):
            def hook(table, ids):
                i = _leaf_index(table, leaf_vals)
                if i is None:
                    return None
                ids = jnp.asarray(ids)
                plan.append((i, tuple(ids.shape) + tuple(table.shape[1:]), table.dtype))
                return jnp.take(copies[i], ids, axis=0)
            out = run(list(leaf_vals), treedef, args, hook)
            return out[0] if has_aux else out

        closed = jax.make_jaxpr(probe)(leaves, leaves)
        n = len(leaves)
        used = {v for eqn in closed.jaxpr.eqns for v in eqn.invars
                if isinstance(v, jex_core.Var)}
        used |= {v for v in closed.jaxpr.outvars if isinstance(v, jex_core.Var)}
        dense_use = [closed.jaxpr.invars[i] in used for i in range(n)]
        # 2. the gradient: each lookup's rows get their own zero input.
        ids_seen: List[Any] = []

        def f(leaf_vals, row_inputs):
            k = [0]

            def hook(table, ids):
                i = _leaf_index(table, leaf_vals)
                if i is None or k[0] >= len(plan) or plan[k[0]][0] != i:
                    return None
                ids = jnp.asarray(ids)
                rows = jnp.take(jax.lax.stop_gradient(table), ids, axis=0) + row_inputs[k[0]]
                ids_seen.append(ids)
                k[0] += 1
                return rows
            out = run(list(leaf_vals), treedef, args, hook)
            loss, aux = (out if has_aux else (out, None))
            return loss, (aux, list(ids_seen))

        zeros = [jnp.zeros(shape, dtype) for _, shape, dtype in plan]
        loss, vjp_fn, (aux, ids_list) = jax.vjp(f, leaves, zeros, has_aux=True)
        d_leaves, d_rows = vjp_fn(jnp.ones_like(loss))
        grads: List[Union[jax.Array, IndexedSlices]] = list(d_leaves)
        for i in sorted({i for i, _, _ in plan}):
            parts = [(d_rows[k], ids_list[k]) for k, (j, _, _) in enumerate(plan) if j == i]
            table_shape = tuple(leaves[i].shape)
            values = jnp.concatenate([r.reshape((-1,) + table_shape[1:]) for r, _ in parts])
            indices = jnp.concatenate([ids.reshape(-1) for _, ids in parts])
            sl = IndexedSlices(values, indices, table_shape)
            grads[i] = d_leaves[i] + sl.to_dense() if dense_use[i] else sl
        tree = jax.tree_util.tree_unflatten(treedef, grads)
        return ((loss, aux), tree) if has_aux else (loss, tree)

    return wrapped
