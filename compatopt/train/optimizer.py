"""``compatopt.train.Optimizer``: TF1's optimizer base class, driving the functional rules.

The public methods follow ``tf.compat.v1.train.Optimizer`` (signatures, order of checks,
exception types and messages: spec §2). ``apply_gradients`` runs TF1's algorithm —
``_create_slots``, ``_prepare``, one ``_resource_apply_dense`` / ``_resource_apply_sparse``
per variable in the given order, ``_finish``, then ``global_step += 1`` — inside a capturing
frame, so the writes are stored only when every update succeeded: a failed call changes no
variable, slot or step (slots it created are removed again). The ten built-in classes
replace the per-variable loop by one compiled call of their rule (see ``_rule_optimizer``).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable, List, Optional

import jax
import jax.numpy as jnp
import numpy as np

from compatopt import _sparse
from compatopt._base import IndexedSlices
from compatopt.errors import MalformedGradientsError, NotAVariableError
from compatopt.train._gradients import last_observed, observed, value_and_grads
from compatopt.train._lifting import call_lifted, commit, nested
from compatopt.train._operation import Operation
from compatopt.train._slots import SlotsMixin
from compatopt.train._variable import Variable, get_default_graph, locked, to_array


class AggregationMethod:
    """``tf.AggregationMethod``: accepted and validated; XLA decides how sums are formed."""

    ADD_N = 0
    DEFAULT = ADD_N
    EXPERIMENTAL_TREE = 1
    EXPERIMENTAL_ACCUMULATE_N = 2


def _convert_grad(g: Any, v: Any) -> Any:
    if g is None or isinstance(g, IndexedSlices):
        return g
    try:
        return to_array(g)
    except (TypeError, ValueError):
        raise MalformedGradientsError(
            f"Gradient must be convertible to a Tensor or IndexedSlices, or None: {g!r} "
            f"(the gradient for {_describe(v)})") from None


def _describe(v: Any) -> str:
    """``variable 'w'`` for a Variable, else the object's type and a short repr."""
    if isinstance(v, Variable):
        return f"variable '{v.op.name}'"
    text = repr(v)
    kind = ("jax.Array" if isinstance(v, jax.Array) else
            "numpy.ndarray" if isinstance(v, np.ndarray) else type(v).__name__)
    return f"{text[:60] + '...' if len(text) > 60 else text} (type {kind})"


def _not_a_variable(where: str, v: Any) -> NotAVariableError:
    return NotAVariableError(
        f"Trying to optimize unsupported type: {where} is {_describe(v)}, not a "
        f"compatopt.Variable; pass the Variable itself (not its .value)")


def check_grads_and_vars(grads_and_vars: Any) -> tuple:
    """``grads_and_vars`` as a tuple of ``(gradient, Variable)`` pairs, gradients converted.

    Raises (before anything is changed): ``ValueError`` if it is empty,
    :class:`~compatopt.errors.MalformedGradientsError` for an entry that is not a pair or an
    unconvertible gradient, :class:`~compatopt.errors.NotAVariableError` for a target that
    is not a Variable, ``TypeError`` if it is not iterable.
    """
    grads_and_vars = tuple(grads_and_vars)
    if not grads_and_vars:
        raise ValueError("No variables provided.")
    pairs = []
    for i, entry in enumerate(grads_and_vars):
        if not isinstance(entry, (tuple, list)):
            # TF1 eager unpacks an array entry and then finds no variable in it
            # (NotImplementedError); graph mode refuses to iterate it (TypeError).
            raise NotAVariableError(
                f"grads_and_vars[{i}] is {_describe(entry)}, not a (gradient, variable) pair")
        if len(entry) != 2:
            raise MalformedGradientsError(
                f"grads_and_vars[{i}] is a {type(entry).__name__} of {len(entry)} elements, "
                f"not a (gradient, variable) pair")
        g, v = entry
        if not isinstance(v, Variable):
            raise _not_a_variable(f"the target of grads_and_vars[{i}]", v)
        pairs.append((_convert_grad(g, v), v))
    return tuple(pairs)


class Optimizer(SlotsMixin):
    """Base class of the TF1 optimizers (``tf.compat.v1.train.Optimizer``).

    Subclasses override TF1's hooks (``_create_slots``, ``_prepare``,
    ``_resource_apply_dense``, ``_resource_apply_sparse``, ``_finish``, ...) written with
    ``jnp`` and ``var.assign(...)``; ``_apply_dense`` / ``_apply_sparse`` (TF1's
    ref-variable hooks) are used when the resource ones are not overridden.
    """

    GATE_NONE = 0
    GATE_OP = 1
    GATE_GRAPH = 2

    def __init__(self, use_locking: bool, name: str,
                 use_own_namescope_for_non_slot_vars: bool = False) -> None:
        if not name:
            raise ValueError("Must specify the optimizer name")
        self._use_locking = use_locking
        self._name = name
        self._slots: dict = {}
        self._non_slot_dict: dict = {}
        self._lock = threading.RLock()
        self._non_slot_scope = (get_default_graph().unique_scope(name)
                                if use_own_namescope_for_non_slot_vars else None)

    def get_name(self) -> str:
        return self._name

    # ------------------------------------------------------------------ gradients
    def compute_gradients(self, loss: Callable, var_list: Optional[list] = None,
                          gate_gradients: int = GATE_OP, aggregation_method: Any = None,
                          colocate_gradients_with_ops: bool = False,
                          grad_loss: Any = None) -> list:
        """``[(gradient or None, variable), ...]`` for the callable ``loss``.

        ``var_list=None`` means the trainable variables the loss reads, in first-read order
        (eager TF's ``tape.watched_variables()``); an explicit list may hold non-trainable
        variables and nested lists. ``grad_loss`` is the loss's output gradient.
        """
        if gate_gradients not in (Optimizer.GATE_GRAPH, Optimizer.GATE_OP,
                                  Optimizer.GATE_NONE):
            raise ValueError("gate_gradients must be one of: Optimizer.GATE_NONE, "
                             "Optimizer.GATE_OP, Optimizer.GATE_GRAPH.  Not %s"
                             % gate_gradients)
        if aggregation_method not in (None, 0, 1, 2):
            raise ValueError(f"Invalid `aggregation_method` specified {aggregation_method}. "
                             f"Accepted values are [0, 1, 2].")
        if not callable(loss):
            raise RuntimeError("`loss` passed to Optimizer.compute_gradients should be a "
                               "function when eager execution is enabled.")
        if var_list is not None:
            var_list = _flatten(var_list)
            if not var_list:
                raise ValueError("No variables to optimize.")  # TF1 graph mode
            for i, v in enumerate(var_list):
                if not isinstance(v, Variable):
                    raise _not_a_variable(f"var_list[{i}]", v)
        _, grads_and_vars = value_and_grads(loss, var_list, grad_loss)
        return grads_and_vars

    def minimize(self, loss: Callable, global_step: Optional[Variable] = None,
                 var_list: Optional[list] = None, gate_gradients: int = GATE_OP,
                 aggregation_method: Any = None, colocate_gradients_with_ops: bool = False,
                 name: Optional[str] = None, grad_loss: Any = None) -> Operation:
        """``compute_gradients`` then ``apply_gradients``; runs now and returns an
        :class:`Operation` whose ``run()`` does the whole step again. Its ``loss`` is the
        value ``loss()`` had in that step (before the update), from the same forward pass
        as the gradients: TF1's ``sess.run([loss, train_op])``."""
        def step():
            last_observed()  # a value left by an earlier failed step is not this one's
            gvs = self.compute_gradients(
                observed(loss) if callable(loss) else loss, var_list=var_list,
                gate_gradients=gate_gradients,
                aggregation_method=aggregation_method,
                colocate_gradients_with_ops=colocate_gradients_with_ops, grad_loss=grad_loss)
            if not [v for g, v in gvs if g is not None]:
                raise ValueError(
                    "No gradients provided for any variable, check your graph for ops that "
                    "do not support gradients, between variables %s and loss %s."
                    % ([str(v) for _, v in gvs], loss))
            value = last_observed()
            self._apply_for_minimize(gvs, global_step, name)
            return value

        return Operation(name or self._name, step, loss=step())

    def _apply_for_minimize(self, grads_and_vars, global_step, name) -> None:
        """How ``minimize`` applies its gradients (a wrapper reduces them first)."""
        self._apply(grads_and_vars, global_step, name)

    # ---------------------------------------------------------------------- apply
    def apply_gradients(self, grads_and_vars, global_step: Optional[Variable] = None,
                        name: Optional[str] = None,
                        skip_gradients_aggregation: bool = False) -> Operation:
        """Applies the gradients now (in the given order), then ``global_step += 1``.

        Returns an :class:`Operation` whose ``run()`` applies the same gradients again.
        """
        grads_and_vars = tuple(grads_and_vars)
        self._apply(grads_and_vars, global_step, name)
        return Operation(name or self._name,
                         lambda: self._apply(grads_and_vars, global_step, name))

    def _apply(self, grads_and_vars, global_step, name) -> None:
        pairs = check_grads_and_vars(grads_and_vars)
        var_list = [v for g, v in pairs if g is not None]
        if not var_list:
            raise ValueError("No gradients provided for any variable: %s."
                             % ([str(v) for _, v in grads_and_vars],))
        for g, v in pairs:
            if isinstance(g, IndexedSlices) and v.constraint is not None:
                raise RuntimeError("Cannot use a constraint function on a sparse variable.")
        if global_step is not None and not isinstance(global_step, Variable):
            raise TypeError(f"global_step must be a compatopt.Variable, got {global_step!r}")
        def apply_all() -> None:
            self._create_slots(var_list)
            self._apply_updates([(g, v) for g, v in pairs if g is not None],
                                name or self._name)
            if global_step is not None:
                global_step.assign_add(jnp.ones((), global_step.dtype))

        # use_locking (TF1: each kernel holds its variable's and slots' mutex): at top level,
        # this optimizer's lock and the locks of everything the apply reads and writes, so
        # concurrent applies to one variable, from any optimizers, serialise. Inside a
        # compiled step the step driver holds the variables' locks instead.
        locking = self._use_locking and not nested()
        touched = [*var_list, *([global_step] if global_step is not None else []),
                   *self.variables()] if locking else []
        with (self._lock if locking else contextlib.nullcontext()), locked(touched):
            graph = get_default_graph()
            with graph.journal() as journal:
                try:
                    applied = call_lifted(apply_all, [], [])
                except BaseException:
                    # roll back what this call created, and only that (other threads' new
                    # variables stay)
                    self._forget(graph.created_in(journal))
                    graph.undo(journal)
                    raise
            commit(applied)  # to the enclosing frame, if any

    def _forget(self, created: list) -> None:
        """Drops slots and non-slot variables that a failed call created."""
        gone = {id(v) for v in created}
        for named in self._slots.values():
            for var in [k for k, slot in named.items() if id(slot) in gone]:
                del named[var]
        for key in [k for k, v in self._non_slot_dict.items() if id(v) in gone]:
            del self._non_slot_dict[key]

    def _apply_updates(self, pairs: list, name: str) -> None:
        """TF1's loop: ``_prepare``, one hook per variable, ``_finish``."""
        self._prepare()
        update_ops = []
        for g, v in pairs:
            if isinstance(g, IndexedSlices):
                update_ops.append(self._resource_apply_sparse_duplicate_indices(
                    g.values, v, g.indices))
            else:
                update_ops.append(self._resource_apply_dense(g, v))
                if v.constraint is not None:
                    v.assign(v.constraint(v))
        self._finish(update_ops, name)

    # ---------------------------------------------------------------------- hooks
    def _valid_dtypes(self) -> set:
        return {jnp.dtype(jnp.float16), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float32),
                jnp.dtype(jnp.float64)}

    def _create_slots(self, var_list: List[Variable]) -> None:
        pass

    def _prepare(self) -> None:
        pass

    def _apply_dense(self, grad, var):
        raise NotImplementedError()

    def _resource_apply_dense(self, grad, handle):
        if type(self)._apply_dense is not Optimizer._apply_dense:
            return self._apply_dense(grad, handle)  # a TF1 ref-variable subclass
        raise NotImplementedError()

    def _apply_sparse_duplicate_indices(self, grad: IndexedSlices, var):
        values, indices = _deduplicate(grad.values, grad.indices, var.shape[0])
        return self._apply_sparse(IndexedSlices(values, indices, grad.dense_shape), var)

    def _apply_sparse(self, grad, var):
        raise NotImplementedError()

    def _resource_apply_sparse_duplicate_indices(self, grad, handle, indices):
        if (type(self)._resource_apply_sparse is Optimizer._resource_apply_sparse
                and (type(self)._apply_sparse is not Optimizer._apply_sparse
                     or type(self)._apply_sparse_duplicate_indices
                     is not Optimizer._apply_sparse_duplicate_indices)):
            return self._apply_sparse_duplicate_indices(
                IndexedSlices(grad, indices, handle.shape), handle)
        values, unique = _deduplicate(grad, indices, handle.shape[0])
        return self._resource_apply_sparse(values, handle, unique)

    def _resource_apply_sparse(self, grad, handle, indices):
        raise NotImplementedError()

    def _finish(self, update_ops, name_scope):
        return None

    def _call_if_callable(self, param):
        return param() if callable(param) else param


def _deduplicate(values, indices, num_rows: int):
    """TF1 ``_deduplicate_indexed_slices`` (the core's); padding trimmed when concrete.

    Under ``compatopt.function`` the unique rows keep a static length, padded with the
    out-of-range row ``num_rows`` (use ``.at[rows].add(..., mode="drop")``).
    """
    uniq = _sparse.deduplicate(jnp.asarray(values), jnp.asarray(indices), num_rows)
    try:
        n = int((uniq.rows < num_rows).sum())
    except Exception:  # traced: keep the padded, static shape
        return uniq.values, uniq.rows
    return uniq.values[:n], uniq.rows[:n]


def _flatten(x) -> list:
    if isinstance(x, (list, tuple)):
        return [leaf for item in x for leaf in _flatten(item)]
    if isinstance(x, dict):
        return [leaf for k in sorted(x) for leaf in _flatten(x[k])]
    return [x]
