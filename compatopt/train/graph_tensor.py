"""TF1 graph tensors built at graph-construction time, evaluated as Grappler rewrites them.

TF1 programs compose hyper-parameter arithmetic in Python on graph tensors: BERT's warmup,
``init_lr * (tf.cast(global_step, tf.float32) / warmup_steps)``, is built once and evaluated
at every ``Session.run``. TF1 graph mode does not evaluate it as written: Grappler's constant
folding rewrites it first (TF 2.21, ``constant_folding.cc``), so the learning rate BERT
trained with is ``step * fl(init_lr * fl(1 / warmup_steps))``, not
``init_lr * (step / warmup_steps)`` (the two differ in the last bit for 3 of BERT's first 10
steps at ``init_lr = 0.02``). A :class:`GraphTensor` is such a tensor: a
:class:`~compatopt.train.LazyTensor` (a zero-argument callable, evaluated at each read, so
the optimizers take it as a learning rate) that records its operations and, when evaluated,
applies the rewrites below, then computes every operation with TF's kernel rounding (each
result rounded on its own: no fused multiply-add, no reciprocal multiply, under ``jit`` too).

Rewrites (C, C1, C2: constants; X, Y: anything else):

* an operation whose operands are all constants is computed now (folded);
* ``X / C`` becomes ``X * fl(1 / C)`` for floating-point ``C`` (``ReduceDivToReciprocalMul``);
* constants are pushed down ``*`` chains and ``+``/``-`` chains
  (``ConstantPushDown``): ``C * (X * Y) -> X * (C * Y)``, so ``C1 * (X * C2)`` becomes
  ``X * fl(C1 * C2)``; ``C1 + (X + C2) -> X + fl(C1 + C2)``; ``C1 - (X + C2) -> fl(C1 - C2) - X``
  and TF's other sign cases. Only when the inner operation has this one consumer, is not
  itself evaluated on its own (TF: a fetched node is preserved), is not float16/bfloat16, and
  ``C`` is no larger than the operand it joins (TF's shape check); ``+``/``-`` mixes need a
  floating-point dtype.

``/`` is TF's ``RealDiv``, which ``ConstantPushDown`` leaves alone. Under
``compatopt.tf1_mode("eager")`` (a program that ran eagerly) only the folding is done: the
other operations run as written, as eager TF runs them. Constants are Python
numbers and NumPy values (what ``tf.constant`` / ``compatopt.constant`` make); a
:class:`~compatopt.Variable` is read when the tensor is evaluated, a ``LazyTensor`` is
called, a JAX array is a run-time value (never folded, even when concrete, so eager and
compiled steps rewrite alike). Python numbers take the dtype of the tensor they meet (TF's
conversion of an operator's Python operand).

Differences from TF1: Grappler decides on the whole graph of one ``Session.run``; here the
rewrites are decided when a tensor is evaluated, from the operations built so far (a
consumer added later, or an operation that was never run, can change the decision, where
TF counts only the graph that runs). Other Grappler passes (the arithmetic optimizer's
hoisting of common factors, ``pow`` rewrites, ...) are not reproduced; the decay functions
of :mod:`compatopt.train` reproduce theirs themselves.

Example (BERT's warmup, step 5 of 10, ``init_lr = 0.02``):
  >>> import numpy as np, compatopt as co
  >>> step = co.Variable(np.int32(5), trainable=False)
  >>> lr = 0.02 * (co.cast(step, co.float32) / co.cast(co.constant(10), co.float32))
  >>> float(lr()) == float(np.float32(5) * (np.float32(0.02) * (np.float32(1) / np.float32(10))))
  True
  >>> float(lr()) == float(np.float32(0.02) * (np.float32(5) / np.float32(10)))  # as written
  False
"""

from __future__ import annotations

import operator
from typing import Any, Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from compatopt import _numerics as N
from compatopt._base import IndexedSlices
from compatopt._numerics import tf_ops as T
from compatopt.tf1_mode import graph_mode
from compatopt.train._lazy import LazyTensor
from compatopt.train._variable import Variable

__all__ = ["GraphTensor", "graph_op", "is_constant", "to_dense"]

_ARITH = {"add": "+", "sub": "-", "mul": "*", "div": "/", "floordiv": "//", "mod": "%",
          "pow": "**"}
_COMPARE = {"less": operator.lt, "less_equal": operator.le, "greater": operator.gt,
            "greater_equal": operator.ge}
_LOW_PRECISION = (jnp.dtype(jnp.float16), jnp.dtype(jnp.bfloat16))


def is_constant(x: Any) -> bool:
    """A graph constant: a Python number or a NumPy value (Grappler folds it)."""
    return isinstance(x, (bool, int, float, np.ndarray, np.generic))


def to_dense(x: Any) -> Any:
    """TF's conversion of an ``IndexedSlices`` to a tensor, ``unsorted_segment_sum(values,
    indices, dense_shape[0])``: zeros, then each row added in order; anything else as is."""
    if not isinstance(x, IndexedSlices):
        return x
    if x.dense_shape is None:
        raise ValueError(f"Tensor conversion requested for IndexedSlices without dense_shape: "
                         f"{x!r}")
    values = jnp.asarray(x.values)
    shape = (int(x.dense_shape[0]),) + tuple(values.shape[1:])
    return jnp.zeros(shape, values.dtype).at[jnp.asarray(x.indices)].add(values, mode="drop")


# ------------------------------------------------------------------ the expression, rewritten
class _E:
    """One operation of the expression being evaluated (or a leaf: ``const`` / ``value``)."""

    __slots__ = ("op", "args", "attr", "value", "dtype", "shape", "movable")

    def __init__(self, op: str, args: Tuple["_E", ...] = (), attr: Any = None,
                 value: Any = None, movable: bool = True) -> None:
        self.op, self.args, self.attr, self.value = op, args, attr, value
        self.movable = movable  # one consumer, not evaluated on its own
        if op in ("const", "value"):
            self.dtype, self.shape = jnp.dtype(value.dtype), tuple(np.shape(value))
            return
        shapes = [a.shape for a in args]
        self.shape = tuple(np.broadcast_shapes(*shapes)) if shapes else ()
        if op == "cast":
            self.dtype = jnp.dtype(attr)
        elif op in _COMPARE:
            self.dtype = jnp.dtype(jnp.bool_)
        else:
            self.dtype = args[0].dtype

    @property
    def const(self) -> bool:
        return self.op == "const"


def _hide(x: jax.Array) -> jax.Array:
    """``x`` hidden from XLA's float rewrites (integers and bools need no guard)."""
    return N.opaque(x) if jnp.issubdtype(x.dtype, jnp.inexact) else x


def _apply(op: str, attr: Any, vals: list) -> jax.Array:
    """One TF kernel, rounded on its own (operands and result hidden from XLA's rewrites)."""
    if op == "cast":
        return _hide(N.cast(vals[0], attr))
    if op == "identity":
        return vals[0]
    if op in _COMPARE:
        return _COMPARE[op](vals[0], vals[1])
    x = vals[0]

    def wide(v: Any) -> jax.Array:  # float16/bfloat16 compute in float32, as TF's kernels
        return jnp.asarray(T.tf_wide(v))

    if op == "neg":
        out = -x
    elif op == "abs":
        out = jnp.abs(x)
    elif op == "square":
        out = N.mul(wide(x), wide(x))
    elif op == "sqrt":
        out = N.sqrt(wide(x))
    elif op == "mul":
        out = N.mul(wide(x), wide(vals[1]))
    elif op == "div":
        out = N.div(wide(x), wide(vals[1]))
    elif op == "add":
        out = wide(x) + wide(vals[1])
    elif op == "sub":
        out = wide(x) - wide(vals[1])
    elif op == "floordiv":
        out = jnp.floor_divide(x, vals[1])
    elif op == "mod":
        out = jnp.mod(x, vals[1])
    elif op == "pow":
        return T.tf_pow(x, jnp.asarray(vals[1], x.dtype))
    else:  # pragma: no cover - every op built is listed above
        raise ValueError(op)
    return _hide(jnp.asarray(out).astype(x.dtype))


def _fold(op: str, args: Tuple[_E, ...], attr: Any) -> _E:
    with jax.ensure_compile_time_eval():
        value = np.asarray(_apply(op, attr, [jnp.asarray(a.value) for a in args]))
    return _E("const", value=value)


def _make(op: str, args: Tuple[_E, ...], attr: Any = None) -> _E:
    """A new operation (Grappler's rewritten node), folded if its operands are constants."""
    if args and all(a.const for a in args):
        return _fold(op, args, attr)
    return _simplify(_E(op, args, attr))


def _push_down(p: _E) -> Optional[_E]:
    """TF's ``ConstantPushDown`` on a ``+ - *`` node with one constant operand, or None."""
    family = ("add", "sub") if p.op in ("add", "sub") else ("mul",)
    a, b = p.args
    if a.const == b.const:
        return None
    left_child_const = a.const
    c, child = (a, b) if left_child_const else (b, a)
    if child.op not in family or not child.movable or p.dtype in _LOW_PRECISION:
        return None
    left_leaf, right_leaf = child.args
    if left_leaf.const and right_leaf.const:
        return None
    symmetric, child_symmetric = p.op in ("add", "mul"), child.op in ("add", "mul")
    if not (symmetric and child_symmetric) and not jnp.issubdtype(p.dtype, jnp.inexact):
        return None
    left_leaf_const = left_leaf.const
    y_shape = (left_leaf if left_leaf_const else right_leaf).shape
    if not (left_leaf if left_leaf_const else right_leaf).const:
        # don't push down a larger constant (more work after broadcasting)
        if int(np.prod(c.shape)) > int(np.prod(y_shape)):
            return None
        if len(c.shape) > 0 and any(cd > yd for cd, yd in zip(c.shape, y_shape)):
            return None
    x, y = (right_leaf, left_leaf) if left_leaf_const else (left_leaf, right_leaf)
    if symmetric and child_symmetric:
        return _make(p.op, (x, _make(child.op, (c, y))))
    sym, non = ("add", "sub")

    def negated(is_right_leaf: bool) -> bool:
        return (not child_symmetric and is_right_leaf) != (not symmetric and left_child_const)

    neg_c = not symmetric and not left_child_const
    neg_x = negated(left_leaf_const)
    neg_y = negated(not left_leaf_const)
    inner = _make(non if neg_c != neg_y else sym, (y, c) if neg_c else (c, y))
    outer_op = non if (neg_x or (neg_c and neg_y)) else sym
    return _make(outer_op, (inner, x) if neg_x else (x, inner))


def _simplify(e: _E) -> _E:
    """Grappler's rewrites of one node whose operands are already rewritten (none in
    eager mode, where TF runs the operations as written)."""
    if not graph_mode():
        return e
    if e.op == "div" and e.args[1].const and jnp.issubdtype(e.dtype, jnp.inexact):
        one = _E("const", value=np.ones((), e.args[1].value.dtype))
        return _make("mul", (e.args[0], _fold("div", (one, e.args[1]), None)))
    if e.op in ("add", "sub", "mul"):
        pushed = _push_down(e)
        if pushed is not None:
            return pushed
    return e


def _evaluate(e: _E, memo: Dict[int, Any]) -> jax.Array:
    key = id(e)
    if key not in memo:
        if e.op == "const":
            memo[key] = jnp.asarray(e.value)
        elif e.op == "value":
            memo[key] = _hide(e.value)
        else:
            memo[key] = _apply(e.op, e.attr, [_evaluate(a, memo) for a in e.args])
    return memo[key]


# ---------------------------------------------------------------------------- GraphTensor
def _convert(raw: Any, dtype: Any) -> np.ndarray:
    """A constant as the operand of a ``dtype`` tensor (TF converts Python numbers to it);
    with no tensor operand, ``convert_to_tensor``'s dtype (a Python float is float32)."""
    with jax.ensure_compile_time_eval():
        if dtype is None:
            return np.asarray(N.to_tf_tensor(raw))
        return np.asarray(jnp.asarray(raw, dtype=jnp.dtype(dtype)))


class GraphTensor(LazyTensor):
    """A TF1 graph tensor: operations on Variables, lazy values and constants, evaluated
    (Grappler-rewritten, TF-rounded) at each read. See the module docstring.

    Calling it (``t()``), ``jnp.asarray(t)`` and ``variable.assign(t)`` evaluate it; its
    operators (``+ - * / // % **``, unary ``-``/``abs``, ``< <= > >=``) and :meth:`astype`
    build new graph tensors, also with a ``LazyTensor`` or a number on the left. ``jnp``
    functions do not take it (evaluate it first). A JAX array or a ``compatopt.Variable`` on
    the left of an operator evaluates it and computes with JAX's arithmetic instead, which
    XLA may fuse (``v - lr * x`` into one multiply-add): where the bits matter keep a graph
    tensor, a ``co.*`` op or a number on the left (``co.multiply(variable, t)``, not
    ``variable * t``).
    """

    __slots__ = ("_op", "_args", "_attr", "_uses", "_fetched")

    def __init__(self, op: str, args: Tuple[Any, ...], attr: Any = None) -> None:
        self._op, self._args, self._attr = op, tuple(args), attr
        self._uses = 0
        self._fetched = False
        for a in self._args:
            if isinstance(a, GraphTensor):
                a._uses += 1
        super().__init__(self._run, _label(op, self._args, attr))

    # -- evaluation
    def _run(self) -> jax.Array:
        self._fetched = True  # TF: a fetched node is preserved, never moved by a rewrite
        return _evaluate(self._expr({}), {})

    def _expr(self, memo: Dict[int, _E]) -> _E:
        key = id(self)
        if key in memo:
            return memo[key]
        if self._op == "leaf":
            (source,) = self._args
            e = _E("value", value=jnp.asarray(_read_leaf(source)))
        else:
            dtype = None
            built: list = []
            for a in self._args:
                built.append(None if is_constant(a) else _operand(a, memo))
            known = [b for b in built if b is not None]
            if known:
                dtype = known[0].dtype
            args = tuple(b if b is not None else _E("const", value=_convert(a, dtype))
                         for a, b in zip(self._args, built))
            if len(known) > 1 and len({b.dtype for b in known}) > 1:
                raise TypeError(f"Input 'y' of '{self._op}' Op has type {known[1].dtype.name} "
                                f"that does not match type {known[0].dtype.name} of argument "
                                f"'x'.")
            if self._op == "div" and not jnp.issubdtype(args[0].dtype, jnp.inexact):
                raise NotImplementedError("compatopt: `/` on integer graph tensors (TF casts "
                                          "both to float64); cast to a float dtype first")
            movable = self._uses <= 1 and not self._fetched
            e = _simplify(_E(self._op, args, self._attr, movable=movable))
        memo[key] = e
        return e

    def __jax_array__(self) -> jax.Array:
        return self()

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return np.asarray(self(), dtype=dtype)

    # -- building. Every operator is defined here, not inherited: Python then tries a
    # subclass's reflected operator first, so `lazy_tensor * graph_tensor` is a graph tensor.
    def _binary(self, other: Any, op: Callable, symbol: str, reflected: bool = False):
        name = _OPERATOR_NAMES[symbol]
        return graph_op(name, other, self) if reflected else graph_op(name, self, other)

    def __add__(self, o): return graph_op("add", self, o)  # noqa: E704
    def __radd__(self, o): return graph_op("add", o, self)  # noqa: E704
    def __sub__(self, o): return graph_op("sub", self, o)  # noqa: E704
    def __rsub__(self, o): return graph_op("sub", o, self)  # noqa: E704
    def __mul__(self, o): return graph_op("mul", self, o)  # noqa: E704
    def __rmul__(self, o): return graph_op("mul", o, self)  # noqa: E704
    def __truediv__(self, o): return graph_op("div", self, o)  # noqa: E704
    def __rtruediv__(self, o): return graph_op("div", o, self)  # noqa: E704
    def __floordiv__(self, o): return graph_op("floordiv", self, o)  # noqa: E704
    def __rfloordiv__(self, o): return graph_op("floordiv", o, self)  # noqa: E704
    def __mod__(self, o): return graph_op("mod", self, o)  # noqa: E704
    def __rmod__(self, o): return graph_op("mod", o, self)  # noqa: E704
    def __pow__(self, o): return graph_op("pow", self, o)  # noqa: E704
    def __rpow__(self, o): return graph_op("pow", o, self)  # noqa: E704
    def __lt__(self, o): return graph_op("less", self, o)  # noqa: E704
    def __le__(self, o): return graph_op("less_equal", self, o)  # noqa: E704
    def __gt__(self, o): return graph_op("greater", self, o)  # noqa: E704
    def __ge__(self, o): return graph_op("greater_equal", self, o)  # noqa: E704
    def __neg__(self): return GraphTensor("neg", (self,))  # noqa: E704
    def __abs__(self): return GraphTensor("abs", (self,))  # noqa: E704

    def astype(self, dtype: Any) -> "GraphTensor":
        """``tf.cast(self, dtype)``."""
        return GraphTensor("cast", (self,), jnp.dtype(dtype))

    def __repr__(self) -> str:
        return f"<GraphTensor {self._label}>"


_OPERATOR_NAMES = {"+": "add", "-": "sub", "*": "mul", "/": "div", "//": "floordiv",
                   "%": "mod", "**": "pow", "<": "less", "<=": "less_equal", ">": "greater",
                   ">=": "greater_equal"}


def _read_leaf(source: Any) -> Any:
    if isinstance(source, Variable):
        return source.value
    if isinstance(source, LazyTensor):
        return source()
    return source


def _operand(a: Any, memo: Dict[int, _E]) -> _E:
    if isinstance(a, GraphTensor):
        return a._expr(memo)
    return _E("value", value=jnp.asarray(to_dense(_read_leaf(a))))


def _label(op: str, args: tuple, attr: Any) -> str:
    def name(a: Any) -> str:
        if isinstance(a, LazyTensor):
            return a._label
        if isinstance(a, Variable):
            return a.op.name
        return repr(a) if is_constant(a) else "x"

    if op == "leaf":
        return name(args[0])
    if op in _ARITH and len(args) == 2:
        return f"({name(args[0])} {_ARITH[op]} {name(args[1])})"
    if op == "cast":
        return f"cast({name(args[0])}, {jnp.dtype(attr).name})"
    return f"{op}({', '.join(name(a) for a in args)})"


def graph_op(op: str, *args: Any, attr: Any = None) -> GraphTensor:
    """The graph tensor ``op(*args)`` (``"add"``, ``"mul"``, ``"cast"``, ``"sqrt"`` ...):
    Variables and non-graph ``LazyTensor``\\ s become leaves read at evaluation."""
    wrapped = tuple(a if isinstance(a, GraphTensor) or is_constant(a)
                    else GraphTensor("leaf", (a,)) if isinstance(a, (Variable, LazyTensor))
                    else to_dense(a) for a in args)
    return GraphTensor(op, wrapped, attr)
