"""TF1's array ops as ported programs call them: ``tf.constant``, ``tf.cast``, ``tf.identity``,
``tf.multiply``, ``tf.square``, ``tf.sqrt``, and the dtypes (``tf.float32`` ...).

They follow TF1's graph semantics in the shim's terms:

* a result that depends on a :class:`~compatopt.Variable` or a
  :class:`~compatopt.train.LazyTensor` (a decayed learning rate, another graph tensor) is a
  :class:`~compatopt.train.GraphTensor`: evaluated when read, with Grappler's rewrites and
  TF's rounding, so hyper-parameter arithmetic built once (``tf.cast(global_step, ...)``)
  follows the step, and a custom optimizer's ``beta_1 * m + (1 - beta_1) * g`` written with
  them keeps TF's bits under ``jit`` (no fused multiply-add); ``variable.assign(t)``
  evaluates it;
* otherwise the op runs now: on constants (Python numbers, NumPy values) it folds to a NumPy
  constant, on arrays it returns an array, each rounded as TF's kernel rounds it;
* an :class:`~compatopt.IndexedSlices` operand is densified as TF converts one to a tensor
  (``unsorted_segment_sum`` of its rows), as BERT's AdamW relies on for embedding gradients.

Example:
  >>> import numpy as np, compatopt as co
  >>> co.constant(0.1, shape=[2])
  array([0.1, 0.1], dtype=float32)
  >>> m = co.Variable(np.ones(2, np.float32), name="m")
  >>> next_m = co.multiply(0.9, m) + co.multiply(0.1, np.float32([1.0, 3.0]))
  >>> _ = m.assign(next_m)
  >>> m.numpy()
  array([1. , 1.2], dtype=float32)
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from compatopt import _numerics as N
from compatopt._base import IndexedSlices
from compatopt.train._lazy import LazyTensor
from compatopt.train._variable import Variable
from compatopt.train.graph_tensor import GraphTensor, graph_op, is_constant, to_dense

__all__ = ["constant", "cast", "identity", "multiply", "square", "sqrt", "float16", "bfloat16",
           "float32", "float64", "int32", "int64"]

float16 = jnp.float16
bfloat16 = jnp.bfloat16
float32 = jnp.float32
float64 = jnp.float64
int32 = jnp.int32
int64 = jnp.int64


def _graph(x: Any) -> bool:
    return isinstance(x, (Variable, LazyTensor))


def _op(op: str, *args: Any, attr: Any = None) -> Any:
    """``op`` as a graph tensor when it reads a Variable or a lazy value; else run now."""
    if any(_graph(a) for a in args):
        return graph_op(op, *args, attr=attr)
    dense = tuple(a if is_constant(a) else to_dense(a) for a in args)
    t = GraphTensor(op, dense, attr)
    if all(is_constant(a) for a in dense):
        with jax.ensure_compile_time_eval():
            return np.asarray(t())
    return t()


def constant(value: Any, dtype: Any = None, shape: Any = None, name: Optional[str] = None,
             verify_shape: bool = False) -> np.ndarray:
    """``tf.constant``: a NumPy array (a graph constant, which Grappler folds).

    Without ``dtype`` a Python float is float32 and an int int32; with it, the value is
    converted straight to ``dtype`` (``constant(0.1, dtype=float64)`` is the double 0.1).
    ``shape``: a scalar fills it; a value with as many elements is reshaped to it; else
    ``TypeError`` (TF's message).
    """
    del name
    if dtype is None:
        arr = np.asarray(value)
        if arr.dtype == np.float64 and not isinstance(value, np.ndarray | np.generic):
            arr = arr.astype(np.float32)
        elif arr.dtype == np.int64 and not isinstance(value, np.ndarray | np.generic):
            arr = arr.astype(np.int32)
    else:
        with jax.ensure_compile_time_eval():
            arr = np.asarray(jnp.asarray(value, dtype=jnp.dtype(dtype)))
    if shape is None:
        return arr
    shape = tuple(int(d) for d in shape)
    if arr.shape == shape:
        return arr
    if verify_shape:
        raise TypeError(f"Expected Tensor's shape: {shape}, got {arr.shape}.")
    if arr.size == 1:
        return np.full(shape, arr.reshape(()), arr.dtype)
    if arr.size == int(np.prod(shape)):
        return arr.reshape(shape)
    raise TypeError(f"Eager execution of tf.constant with unsupported shape. Tensor "
                    f"{value!r} (converted from {value!r}) has {arr.size} elements, but got "
                    f"`shape` {shape} with {int(np.prod(shape))} elements).")


def cast(x: Any, dtype: Any, name: Optional[str] = None) -> Any:
    """``tf.cast``: a Python number is converted first (a float to float32), then cast; an
    ``IndexedSlices`` keeps its indices and casts its values."""
    del name
    if isinstance(x, IndexedSlices):
        return IndexedSlices(N.cast(x.values, dtype), x.indices, x.dense_shape)
    if isinstance(x, (bool, int, float)):
        x = np.asarray(N.to_tf_tensor(x))
    return _op("cast", x, attr=jnp.dtype(dtype))


def identity(x: Any, name: Optional[str] = None) -> Any:
    """``tf.identity``: a Variable's (lazy) read, a lazy value's graph tensor, else ``x``."""
    del name
    if _graph(x):
        return graph_op("identity", x)
    return x


def multiply(x: Any, y: Any, name: Optional[str] = None) -> Any:
    """``tf.multiply`` (TF's ``Mul``, also ``x * y`` on TF tensors): rounded on its own."""
    del name
    return _op("mul", x, y)


def square(x: Any, name: Optional[str] = None) -> Any:
    """``tf.square``: ``x * x`` rounded once."""
    del name
    return _op("square", x)


def sqrt(x: Any, name: Optional[str] = None) -> Any:
    """``tf.sqrt``: correctly rounded, never turned into ``rsqrt`` by a following ``/``."""
    del name
    return _op("sqrt", x)
