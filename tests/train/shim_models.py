"""JAX versions of the fixture models and the shim optimizers built from a config."""

from __future__ import annotations

import jax.numpy as jnp

import compatopt as co


def make_optimizer(kind: str, kwargs: dict, global_step=None):
    kwargs = dict(kwargs)
    if kind == "AdagradDA":
        kwargs["global_step"] = global_step
    if kwargs.pop("callable_lr", False):
        lr = kwargs.pop("learning_rate")
        kwargs["learning_rate"] = lambda: lr
    return getattr(co.train, kind + "Optimizer")(**kwargs)


def mlp_loss(p, x, y):
    h = jnp.tanh(x @ p["w1"] + p["b1"])
    return jnp.mean(jnp.square(h @ p["w2"] + p["b2"] - y))


def sparse_loss(p, ids, c):
    rows = p["emb"].sparse_read(ids)
    return jnp.sum(jnp.tanh(rows) * c)
