"""Values computed when they are read, as a TF1 graph tensor is at every ``Session.run``.

TF1 code does arithmetic on a decayed learning rate and on the global step at graph-build
time (BERT's warmup: ``(1 - is_warmup) * lr + is_warmup * warmup_lr``); the result is a
tensor that the optimizer evaluates at each step. :class:`LazyTensor` is that tensor: a
zero-argument callable whose operators build new lazy values, so such code ports unchanged
and the optimizer reads the current value at every apply (the decay functions of
:mod:`compatopt.train` return one).

Example:
  >>> import jax.numpy as jnp, compatopt as co
  >>> step = co.Variable(0, trainable=False)
  >>> gs = co.train.lazy(step).astype(jnp.float32)
  >>> is_warmup = (gs < 10.0).astype(jnp.float32)
  >>> lr = (1.0 - is_warmup) * 0.1 + is_warmup * (0.1 * gs / 10.0)
  >>> float(lr())
  0.0
  >>> _ = step.assign(20)
  >>> float(lr())
  0.10000000149011612
"""

from __future__ import annotations

import operator
from typing import Any, Callable

import jax
import jax.numpy as jnp

__all__ = ["LazyTensor", "lazy"]


def _read(x: Any) -> Any:
    """The current value of an operand: a lazy value is called, a Variable is read."""
    if isinstance(x, LazyTensor):
        return x()
    value = getattr(x, "value", None)
    if value is not None and hasattr(x, "assign"):  # a compatopt.Variable
        return value
    return x


class LazyTensor:
    """A zero-argument callable standing for a TF1 graph tensor (evaluated at each read).

    Arithmetic (``+ - * / // % **``, unary ``-``/``abs``), comparisons (``< <= > >=``) and
    :meth:`astype` return new lazy values; operands may be other lazy values,
    ``compatopt.Variable``s (read at each evaluation), arrays or Python numbers. Calling the
    value computes it (``lr()``), with JAX's arithmetic on the operands' current values.
    ``==`` stays object identity, so a lazy value can key a dict (as a TF1 tensor does).
    """

    __slots__ = ("_fn", "_label")
    __array_ufunc__ = None  # numpy defers `ndarray op lazy` to the reflected operator

    def __init__(self, fn: Callable[[], Any], label: str = "lazy") -> None:
        if not callable(fn):
            raise TypeError(f"LazyTensor needs a zero-argument callable, got {fn!r}")
        self._fn = fn
        self._label = label

    def __call__(self) -> jax.Array:
        return jnp.asarray(self._fn())

    def __repr__(self) -> str:
        return f"<LazyTensor {self._label}>"

    @property
    def name(self) -> str:
        """What the value stands for (``decayed_learning_rate``, ``w/Regularizer``...)."""
        return self._label

    def astype(self, dtype: Any) -> "LazyTensor":
        """``tf.cast``: the value converted to ``dtype`` when read."""
        return LazyTensor(lambda: jnp.asarray(self()).astype(dtype),
                          f"{self._label}.astype({jnp.dtype(dtype).name})")

    def map(self, fn: Callable[[jax.Array], Any]) -> "LazyTensor":
        """``fn`` applied to the value when read (``lr.map(jnp.sqrt)``)."""
        return LazyTensor(lambda: fn(self()), f"{getattr(fn, '__name__', 'fn')}({self._label})")

    def _binary(self, other: Any, op: Callable, symbol: str, reflected: bool = False):
        if reflected:
            return LazyTensor(lambda: op(_read(other), self()), f"(x {symbol} {self._label})")
        return LazyTensor(lambda: op(self(), _read(other)), f"({self._label} {symbol} x)")

    def __add__(self, o): return self._binary(o, operator.add, "+")  # noqa: E704
    def __radd__(self, o): return self._binary(o, operator.add, "+", True)  # noqa: E704
    def __sub__(self, o): return self._binary(o, operator.sub, "-")  # noqa: E704
    def __rsub__(self, o): return self._binary(o, operator.sub, "-", True)  # noqa: E704
    def __mul__(self, o): return self._binary(o, operator.mul, "*")  # noqa: E704
    def __rmul__(self, o): return self._binary(o, operator.mul, "*", True)  # noqa: E704
    def __truediv__(self, o): return self._binary(o, operator.truediv, "/")  # noqa: E704
    def __rtruediv__(self, o): return self._binary(o, operator.truediv, "/", True)  # noqa: E704
    def __floordiv__(self, o): return self._binary(o, operator.floordiv, "//")  # noqa: E704
    def __rfloordiv__(self, o): return self._binary(o, operator.floordiv, "//", True)  # noqa: E704,E501
    def __mod__(self, o): return self._binary(o, operator.mod, "%")  # noqa: E704
    def __rmod__(self, o): return self._binary(o, operator.mod, "%", True)  # noqa: E704
    def __pow__(self, o): return self._binary(o, operator.pow, "**")  # noqa: E704
    def __rpow__(self, o): return self._binary(o, operator.pow, "**", True)  # noqa: E704
    def __lt__(self, o): return self._binary(o, operator.lt, "<")  # noqa: E704
    def __le__(self, o): return self._binary(o, operator.le, "<=")  # noqa: E704
    def __gt__(self, o): return self._binary(o, operator.gt, ">")  # noqa: E704
    def __ge__(self, o): return self._binary(o, operator.ge, ">=")  # noqa: E704
    def __neg__(self): return LazyTensor(lambda: -self(), f"-{self._label}")  # noqa: E704
    def __abs__(self): return LazyTensor(lambda: abs(self()), f"abs({self._label})")  # noqa: E704,E501

    def __float__(self) -> float:
        return float(self())

    def __bool__(self) -> bool:
        raise TypeError(
            f"{self!r}: the truth value of a lazy tensor is not defined when it is built (TF1 "
            f"raises for a graph tensor too); compare its value: `bool(x())`, or build the "
            f"choice lazily with `jnp.where` inside `.map`")


def lazy(value: Any) -> LazyTensor:
    """``value`` as a :class:`LazyTensor`: a Variable is read, a zero-argument callable is
    called, at each evaluation; anything else is a constant."""
    if isinstance(value, LazyTensor):
        return value
    if hasattr(value, "assign") and hasattr(value, "value"):
        return LazyTensor(lambda: value.value, getattr(value, "name", "variable"))
    if callable(value):
        return LazyTensor(value, getattr(value, "__name__", "callable"))
    return LazyTensor(lambda: value, "constant")
