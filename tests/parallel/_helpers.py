"""Shared by the multi-device cases: the rule table, meshes, HLO inspection, comparisons.

Imported only by modules that run with 8 forced CPU devices (``XLA_FLAGS`` set before jax
starts), never by the main pytest process.
"""

from __future__ import annotations

import re
from typing import Dict, List

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import compatopt as co

NUM_DEVICES = 8

# One hyper-parameter set per kernel family; every non-default branch a kernel has.
RULES = {
    "gradient_descent": lambda: co.gradient_descent(0.1),
    "momentum": lambda: co.momentum(0.1, 0.9),
    "nesterov": lambda: co.momentum(0.1, 0.9, use_nesterov=True),
    "adagrad": lambda: co.adagrad(0.1),
    "adagrad_da": lambda: co.adagrad_da(0.1, l1_regularization_strength=0.01,
                                        l2_regularization_strength=0.01),
    "adadelta": lambda: co.adadelta(1.0),
    "adam": lambda: co.adam(0.1),
    "ftrl": lambda: co.ftrl(0.1, l1_regularization_strength=0.01,
                            l2_shrinkage_regularization_strength=0.01),
    "proximal_gd": lambda: co.proximal_gradient_descent(0.1, 0.01, 0.01),
    "proximal_adagrad": lambda: co.proximal_adagrad(0.1, l1_regularization_strength=0.01),
    "rmsprop_centered": lambda: co.rmsprop(0.1, momentum=0.9, centered=True),
}

_COLLECTIVE = re.compile(
    r"=\s*(?P<shape>\(.*?\)|\S+)\s+(?P<op>all-gather|all-reduce|collective-permute|"
    r"all-to-all|reduce-scatter)(?:-start)?\(")
_ARRAY_SHAPE = re.compile(r"[a-z]+\d*\[([\d,]*)\]")


def mesh_2d(axis_type: str = "auto") -> jax.sharding.Mesh:
    """A ``4 x 2`` mesh ("d", "m") of the 8 CPU devices."""
    kind = AxisType.Explicit if axis_type == "explicit" else AxisType.Auto
    return jax.make_mesh((4, 2), ("d", "m"), axis_types=(kind, kind))


def mesh_1d(n: int, name: str = "data", axis_type: str = "auto") -> jax.sharding.Mesh:
    """A 1-D mesh of the first ``n`` devices."""
    kind = AxisType.Explicit if axis_type == "explicit" else AxisType.Auto
    return jax.make_mesh((n,), (name,), axis_types=(kind,), devices=jax.devices()[:n])


def collectives(compiled_text: str) -> List[tuple]:
    """``(op, [shapes])`` for every collective in a compiled HLO module's text."""
    found = []
    for m in _COLLECTIVE.finditer(compiled_text):
        shapes = [tuple(int(d) for d in s.split(",") if d)
                  for s in _ARRAY_SHAPE.findall(m.group("shape"))]
        found.append((m.group("op"), shapes))
    return found


def to_host(tree):
    """Every array of ``tree`` as a NumPy array (IndexedSlices kept as pytrees)."""
    return jax.tree_util.tree_map(np.asarray, jax.device_get(tree))


def assert_bitwise(a, b, what: str = "") -> None:
    """Same tree structure, same dtypes, same bits (NaNs included)."""
    la, ta = jax.tree_util.tree_flatten(to_host(a))
    lb, tb = jax.tree_util.tree_flatten(to_host(b))
    assert ta == tb, f"{what}: tree structures differ: {ta} vs {tb}"
    for i, (x, y) in enumerate(zip(la, lb)):
        assert x.dtype == y.dtype and x.shape == y.shape, f"{what}[{i}]: {x.dtype}{x.shape} vs {y.dtype}{y.shape}"
        bx = x.view(np.uint8) if x.ndim else np.asarray(x).reshape(1).view(np.uint8)
        by = y.view(np.uint8) if y.ndim else np.asarray(y).reshape(1).view(np.uint8)
        assert np.array_equal(bx, by), f"{what}[{i}]: not bit-identical, max diff " \
            f"{np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)))}"


def shardings_of(tree) -> list:
    return [x.sharding for x in jax.tree_util.tree_leaves(tree)]


def slot_leaves(rule: co.Rule, state) -> Dict[str, list]:
    """``{slot name: leaves}`` for the state fields that are slots (per the rule definition)."""
    names = [name for name, _ in rule.definition.slots]
    return {n: jax.tree_util.tree_leaves(getattr(state, n)) for n in names}


def place(tree, shardings):
    return jax.tree_util.tree_map(jax.device_put, tree, shardings)


def named(mesh, spec_tree):
    return jax.tree_util.tree_map(lambda s: NamedSharding(mesh, s), spec_tree,
                                  is_leaf=lambda x: isinstance(x, P))


def mlp_params(seed: int = 0, din: int = 8, hidden: int = 16) -> dict:
    """A two-layer perceptron's parameters (float32), host arrays."""
    rng = np.random.default_rng(seed)
    return {
        "w1": (rng.standard_normal((din, hidden)) * 0.5).astype(np.float32),
        "b1": np.zeros((hidden,), np.float32),
        "w2": (rng.standard_normal((hidden, 1)) * 0.5).astype(np.float32),
        "b2": np.zeros((1,), np.float32),
    }


def mlp_batch(seed: int, batch: int, din: int = 8):
    rng = np.random.default_rng(1000 + seed)
    x = rng.standard_normal((batch, din)).astype(np.float32)
    y = (np.sin(x.sum(axis=1, keepdims=True))).astype(np.float32)
    return x, y


def mlp_loss(params, x, y):
    """Mean squared error of a tanh MLP over the batch (the per-replica loss)."""
    h = jnp.tanh(x @ params["w1"] + params["b1"])
    pred = h @ params["w2"] + params["b2"]
    return jnp.mean((pred - y) ** 2)
