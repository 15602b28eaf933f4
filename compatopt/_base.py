"""The whole functional interface: ``Rule``, ``IndexedSlices``, ``apply_updates``, types.

A :class:`Rule` is duck-type compatible with ``optax.GradientTransformation``: it has
``init(params) -> state`` and ``update(grads, state, params) -> (updates, state)``, so it can
sit inside ``optax.chain``. It adds ``apply(grads, state, params) -> (new_params, state)``,
which computes the new parameter values exactly as TF1's kernel does.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

ArrayTree = Any
"""A pytree whose leaves are arrays (the parameters, gradients or a state field)."""

Schedule = Callable[[jax.Array], ArrayLike]
"""A hyper-parameter given as a function of the number of applies done before this one."""

ScalarOrSchedule = Union[float, ArrayLike, Schedule]


@jax.tree_util.register_pytree_node_class
class IndexedSlices:
    """A sparse gradient: ``values[k]`` is the gradient of row ``indices[k]`` (TF1's type).

    Attributes:
      values: ``[k, *dense_shape[1:]]`` gradient rows.
      indices: ``[k]`` integer row indices; repeats are allowed (they are summed, or applied
        one after another by GradientDescent, as in TF1).
      dense_shape: the full shape of the variable (static; a tuple of ints), or ``None``.

    It is a pytree node whose children are ``values`` and ``indices``, so it passes through
    ``jit`` and ``vmap``; the rules treat each one as a single gradient leaf.
    """

    __slots__ = ("values", "indices", "dense_shape")

    def __init__(self, values: ArrayLike, indices: ArrayLike,
                 dense_shape: Optional[Sequence[int]] = None):
        self.values = values if isinstance(values, jax.Array) else jnp.asarray(values)
        self.indices = indices if isinstance(indices, jax.Array) else jnp.asarray(indices)
        self.dense_shape = None if dense_shape is None else tuple(int(d) for d in dense_shape)

    def tree_flatten(self):
        return (self.values, self.indices), self.dense_shape

    @classmethod
    def tree_unflatten(cls, dense_shape, children):
        obj = object.__new__(cls)
        obj.values, obj.indices = children
        obj.dense_shape = dense_shape
        return obj

    @property
    def dtype(self):
        return self.values.dtype

    def to_dense(self) -> jax.Array:
        """The dense gradient: rows summed into zeros of ``dense_shape``."""
        if self.dense_shape is None:
            raise ValueError("IndexedSlices.to_dense() needs a dense_shape")
        zeros = jnp.zeros(self.dense_shape, self.values.dtype)
        return zeros.at[self.indices].add(self.values)

    @property
    def shape(self) -> Optional[tuple]:
        """The dense shape (TF1's ``IndexedSlices.shape``)."""
        return self.dense_shape

    # -- arithmetic that keeps the gradient sparse. TF1 defines only ``-g``; its dense ops
    # (``tf.multiply(g, s)``) densify an IndexedSlices first, with a warning. Scaling the
    # rows instead is what TF1's own clip_by_global_norm and loss scaling do; for repeated
    # indices it rounds as ``a*s + b*s``, where densify-then-scale rounds ``(a+b)*s``.
    def __neg__(self) -> "IndexedSlices":
        return IndexedSlices(-self.values, self.indices, self.dense_shape)

    def _scaled(self, other: Any, op: str) -> "IndexedSlices":
        if not _is_scalar(other):
            raise TypeError(self._densify_hint(f"'{op}' with {type(other).__name__} "
                                               f"{getattr(other, 'shape', '')}"))
        s = jnp.asarray(other)
        values = {"*": lambda: self.values * s, "r*": lambda: s * self.values,
                  "/": lambda: self.values / s}[op]()
        return IndexedSlices(values.astype(self.values.dtype), self.indices, self.dense_shape)

    def __mul__(self, other: Any) -> "IndexedSlices":
        return self._scaled(other, "*")

    def __rmul__(self, other: Any) -> "IndexedSlices":
        return self._scaled(other, "r*")

    def __truediv__(self, other: Any) -> "IndexedSlices":
        return self._scaled(other, "/")

    def __add__(self, other: Any) -> "IndexedSlices":
        """Two sparse gradients of one variable: concatenated, as TF1 aggregates them."""
        if not isinstance(other, IndexedSlices):
            raise TypeError(self._densify_hint(f"'+' with {type(other).__name__}"))
        if other.dense_shape != self.dense_shape:
            raise ValueError(f"cannot add IndexedSlices of dense_shape {self.dense_shape} and "
                             f"{other.dense_shape}")
        return IndexedSlices(jnp.concatenate([self.values, other.values]),
                             jnp.concatenate([self.indices, other.indices]), self.dense_shape)

    def __array__(self, dtype: Any = None, copy: Any = None):
        raise TypeError(self._densify_hint("conversion to an array"))

    def _densify_hint(self, what: str) -> str:
        return (f"IndexedSlices (a sparse gradient, dense_shape {self.dense_shape}) does not "
                f"support {what}: densify it first with `g.to_dense()` (TF1 densifies "
                f"implicitly here, with a warning), or scale it by a scalar (`g * s` keeps it "
                f"sparse)")

    def __repr__(self) -> str:
        return (f"IndexedSlices(values={self.values!r}, indices={self.indices!r}, "
                f"dense_shape={self.dense_shape})")


def _is_scalar(x: Any) -> bool:
    if isinstance(x, bool):
        return False
    if isinstance(x, (int, float)):
        return True
    return getattr(x, "shape", None) == () and hasattr(x, "dtype")


def is_grad_leaf(x: Any) -> bool:
    """The leaves of a gradient tree: arrays, ``None`` (no gradient) and ``IndexedSlices``."""
    return x is None or isinstance(x, IndexedSlices)


class LeafUpdate(NamedTuple):
    """What a rule's kernel returns for one parameter leaf.

    Exactly one of ``delta`` (TF1 computes ``var = var - delta``) and ``value`` (TF1 sets
    ``var = value``) is given. When ``rows`` is given, ``delta``/``value`` hold only those rows
    of the variable (``rows[k] == num_rows`` marks padding, dropped). ``update`` optionally
    overrides the optax-style update derived from them.
    """

    slots: dict
    delta: Optional[jax.Array] = None
    value: Optional[jax.Array] = None
    rows: Optional[jax.Array] = None
    update: Optional[jax.Array] = None


@dataclasses.dataclass(frozen=True)
class Rule:
    """A TF1 update rule: ``init``, ``apply`` (TF1-exact) and the optax ``update``.

    Attributes:
      init: ``params -> state``; the state is a NamedTuple of arrays and pytrees of arrays
        shaped like ``params``, its fields named like TF1's slots.
      apply: ``(grads, state, params) -> (new_params, new_state)``; the new values are
        computed exactly as TF1's kernel computes them.
      update: ``(grads, state, params=None, **extra_args) -> (updates, new_state)``, the
        optax protocol (``GradientTransformationExtraArgs``: extra arguments such as
        ``value=loss`` are accepted and unused; ``params`` is required);
        ``apply_updates(params, updates)`` lands on the same bits as ``apply`` for every
        rule whose TF1 kernel ends in ``var - delta`` (the updates are ``-delta``).
      name: TF1's default optimizer name (``"Adam"``), also the slot-variable suffix.
      hyperparams: the constructor arguments, for ``repr`` and introspection.
      definition: the rule's TF1 parts (``compatopt._rule.RuleDef``: kernels, slots), for
        code that re-lays the computation out (multi-tensor layouts, the shim).
    """

    init: Callable[[ArrayTree], Any]
    apply: Callable[..., tuple]
    update: Callable[..., tuple]
    name: str
    hyperparams: dict = dataclasses.field(default_factory=dict, compare=False)
    definition: Any = dataclasses.field(default=None, compare=False, repr=False)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyperparams.items())
        return f"{self.name}Rule({args})"


def apply_updates(params: ArrayTree, updates: ArrayTree) -> ArrayTree:
    """``params + updates`` leaf by leaf, keeping each parameter's dtype (as optax).

    A ``None`` update leaves its parameter unchanged.
    """

    def add(p, u):
        if u is None:
            return p
        return jnp.asarray(p + u).astype(jnp.asarray(p).dtype)

    return jax.tree_util.tree_map(add, params, updates, is_leaf=lambda x: x is None)
