"""``compatopt.tf1_mode``: graph mode by default, eager behind one switch."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import compatopt as co


def test_default_is_graph_and_the_switch_scopes():
    assert co.get_tf1_mode() == "graph"
    with co.tf1_mode("eager"):
        assert co.get_tf1_mode() == "eager"
        with co.tf1_mode("graph"):
            assert co.get_tf1_mode() == "graph"
        assert co.get_tf1_mode() == "eager"
    assert co.get_tf1_mode() == "graph"
    with pytest.raises(ValueError, match="tf1 mode must be one of"):
        co.set_tf1_mode("session")  # type: ignore[arg-type]
    assert co.get_tf1_mode() == "graph"


def _sparse_adam(beta2):
    rule = co.adam(0.01, beta2=beta2)
    params = {"e": jnp.zeros((4, 3), jnp.float32)}
    vals = jnp.asarray(np.random.default_rng(0).standard_normal((3, 3)), jnp.float32)
    grads = {"e": co.IndexedSlices(vals, jnp.asarray([0, 2, 0]), (4, 3))}
    _, state = rule.apply(grads, rule.init(params), params)
    return np.asarray(state.v["e"])


def test_sparse_adam_second_moment_follows_the_mode():
    """Grappler pushes the folded ``1 - beta2`` down in graph mode (spec §1.6); a schedule
    for beta2 is a tensor there, not a constant, so it keeps eager order in both modes."""
    graph = _sparse_adam(0.999)
    with co.tf1_mode("eager"):
        eager = _sparse_adam(0.999)
    assert not np.array_equal(graph.view(np.uint32), eager.view(np.uint32))
    scheduled = _sparse_adam(lambda count: jnp.float32(0.999))
    with co.tf1_mode("eager"):
        scheduled_eager = _sparse_adam(lambda count: jnp.float32(0.999))
    np.testing.assert_array_equal(scheduled.view(np.uint32), eager.view(np.uint32))
    np.testing.assert_array_equal(scheduled_eager.view(np.uint32), eager.view(np.uint32))
