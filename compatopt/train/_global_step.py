"""TF1's global-step helpers (``tf.compat.v1.train.create_global_step`` and friends).

The step is a non-trainable scalar integer :class:`~compatopt.Variable` named
``global_step``, in the ``GLOBAL_VARIABLES`` and ``GLOBAL_STEP`` collections. TF1 makes it
int64; JAX has int64 only with ``jax_enable_x64``, so it is int64 there and int32 otherwise.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from compatopt.train import _scopes, _variable as V

_log = logging.getLogger(__name__)


def _step_dtype() -> jnp.dtype:
    # The flag's attribute is added by setattr, so the stubs lack it; jax.config.read() is
    # meant for non-context-manager flags only (it accepts this one by a legacy exemption).
    x64 = jax.config.jax_enable_x64  # pyright: ignore[reportAttributeAccessIssue]
    return jnp.dtype(jnp.int64) if x64 else jnp.dtype(jnp.int32)


def assert_global_step(global_step_tensor: Any) -> None:
    """TF1 ``assert_global_step``: a scalar integer Variable or array, else ``TypeError``."""
    if not isinstance(global_step_tensor, (V.Variable, jax.Array, np.ndarray)):
        raise TypeError('Existing "global_step" must be a Variable or Tensor: %s.'
                        % (global_step_tensor,))
    if not jnp.issubdtype(global_step_tensor.dtype, jnp.integer):
        raise TypeError('Existing "global_step" does not have integer type: %s'
                        % V.tf_dtype_repr(global_step_tensor.dtype))
    if len(global_step_tensor.shape) != 0:
        raise TypeError('Existing "global_step" is not scalar: %s'
                        % (tuple(global_step_tensor.shape),))


def get_global_step(graph: Optional[V.Graph] = None) -> Optional[V.Variable]:
    """The graph's global step: the one variable in collection ``GLOBAL_STEP``, else a
    variable named ``global_step:0``, else ``None`` (validated by
    :func:`assert_global_step`)."""
    graph = graph or V.get_default_graph()
    found = graph.get_collection(V.GLOBAL_STEP)
    if len(found) > 1:
        _log.error("Multiple tensors in global_step collection.")
        return None
    if found:
        step = found[0]
    else:
        named = [v for v in graph.get_collection(V.GLOBAL_VARIABLES)
                 if v.name == "global_step:0"]
        if not named:
            return None
        step = named[0]
    assert_global_step(step)
    return step


def create_global_step(graph: Optional[V.Graph] = None) -> V.Variable:
    """Creates the global step (0); ``ValueError('"global_step" already exists.')`` if
    the graph has one."""
    graph = graph or V.get_default_graph()
    if get_global_step(graph) is not None:
        raise ValueError('"global_step" already exists.')
    prev = V._default_graph
    V._default_graph = graph
    try:
        # TF1: get_variable("global_step") in the current variable scope, no name scope
        scope = _scopes.current().name
        with _scopes.absolute_names():
            return V.Variable(np.zeros((), _step_dtype()), trainable=False,
                              name=f"{scope}/global_step" if scope else "global_step",
                              collections=[V.GLOBAL_VARIABLES, V.GLOBAL_STEP])
    finally:
        V._default_graph = prev


def get_or_create_global_step(graph: Optional[V.Graph] = None) -> V.Variable:
    """The existing global step, or a new one; later calls return the same object."""
    step = get_global_step(graph)
    return step if step is not None else create_global_step(graph)


def global_step(sess: Any, global_step_tensor: Any) -> int:
    """``tf.compat.v1.train.global_step(sess, tensor)``: the step as a Python int
    (``sess`` is ignored; pass ``None``)."""
    if isinstance(global_step_tensor, V.Variable):
        return int(global_step_tensor.numpy())
    return int(np.asarray(global_step_tensor))
