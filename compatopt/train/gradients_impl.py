"""``tf.gradients(ys, xs)`` for the shim: the loss is a callable, as in eager TF.

TF1's ``tf.gradients(loss, tvars)`` differentiates a graph tensor built earlier. In JAX the
loss must be recomputed under differentiation, so ``ys`` is a zero-argument callable (a
``lambda`` around the model's forward pass, or a :class:`~compatopt.train.GraphTensor`,
which is one); it runs once under ``jax.vjp`` (:mod:`compatopt.train._gradients`), which
records the variables it reads. A variable read through ``tf.gather`` /
``compatopt.nn.embedding_lookup`` gets TF1's ``IndexedSlices`` gradient.

Example:
  >>> import jax.numpy as jnp, compatopt as co
  >>> w = co.Variable(jnp.asarray([1.0, 2.0]), name="w")
  >>> b = co.Variable(jnp.asarray(0.5), name="b")
  >>> gw, gb = co.gradients(lambda: jnp.sum(w.value ** 2), [w, b])
  >>> gw.tolist(), gb
  ([2.0, 4.0], None)
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional

import jax.numpy as jnp

from compatopt.errors import NotAVariableError
from compatopt.train._gradients import value_and_grads
from compatopt.train._variable import Variable

__all__ = ["gradients"]


def gradients(ys: Callable[[], Any], xs: Any, grad_ys: Any = None, name: str = "gradients",
              colocate_gradients_with_ops: bool = False, gate_gradients: bool = False,
              aggregation_method: Any = None, stop_gradients: Any = None,
              unconnected_gradients: Any = "none") -> List[Optional[Any]]:
    """``tf.compat.v1.gradients``: ``[d sum(ys()) / d x for x in xs]``.

    Args:
      ys: zero-argument callable returning the (scalar or not) value to differentiate; a
        non-scalar one is summed, as TF does (``grad_ys`` weights it instead).
      xs: a Variable or a list of Variables.
      grad_ys: the output cotangent (default ones).
      name, colocate_gradients_with_ops, gate_gradients, aggregation_method: accepted for
        TF1 compatibility (no effect).
      stop_gradients: not supported (``NotImplementedError``): use ``jax.lax.stop_gradient``
        in the loss.
      unconnected_gradients: ``"none"`` (TF's default: ``None`` for a variable the loss does
        not read) or ``"zero"`` (zeros of the variable's shape).

    Returns:
      A list as long as ``xs``: arrays, ``IndexedSlices`` (sparse reads) or ``None``.
    """
    del name, colocate_gradients_with_ops, gate_gradients, aggregation_method
    if stop_gradients is not None:
        raise NotImplementedError("compatopt.gradients: stop_gradients is not supported; "
                                  "wrap the values in jax.lax.stop_gradient inside the loss")
    mode = getattr(unconnected_gradients, "value", unconnected_gradients)
    if mode not in ("none", "zero"):
        raise ValueError(f"Unknown value for unconnected_gradients: {unconnected_gradients!r}")
    if not callable(ys):
        raise TypeError("compatopt.gradients: `ys` must be a zero-argument callable computing "
                        "the loss (JAX differentiates a function, not a computed value): "
                        "write gradients(lambda: loss_fn(x, y), var_list)")
    var_list = [xs] if isinstance(xs, Variable) else list(xs)
    for i, v in enumerate(var_list):
        if not isinstance(v, Variable):
            raise NotAVariableError(f"compatopt.gradients: xs[{i}] is {type(v).__name__}, "
                                    f"not a compatopt.Variable")
    _, pairs = value_and_grads(ys, var_list, grad_ys)
    grads = [g for g, _ in pairs]
    if mode == "zero":
        grads = [jnp.zeros(v.shape, v.dtype) if g is None else g
                 for g, v in zip(grads, var_list)]
    return grads
