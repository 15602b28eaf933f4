"""Slots and non-slot variables of an optimizer, named as TF1 names them (spec §2.6).

A slot of variable ``w`` made by an optimizer whose op name is ``Adam`` is a non-trainable
:class:`~compatopt.Variable` named by TF1's variable-scope counter: ``w/Adam``, then
``w/Adam_1`` for the next slot, ``w/Adam_2``... for a second optimizer. Non-slot variables
(Adam's ``beta1_power``) are keyed by ``(name, graph)``.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional

import jax
import jax.numpy as jnp

from compatopt.train import _scopes
from compatopt.train._variable import GLOBAL_VARIABLES, Variable, get_default_graph


def create_slot(primary: Variable, value_fn: Callable[[], Any], op_name: str,
                family: Any = None) -> Variable:
    """A slot for ``primary`` named ``<primary>/<op_name>`` (uniquified by scope).

    ``family`` identifies the slot kind (one optimizer's ``m``): the slots of one family
    may share a packed layout with their primaries in a compiled step (``_packing``).
    """
    # TF1 slot_creator: ``variable_scope(None, default_name=<primary>/<op_name>)`` inside the
    # current variable scope, so under ``variable_scope("s")`` the slot of ``s/w`` is
    # ``s/s/w/Adam`` (recorded with TF 2.21); the name scope does not apply.
    scope = _scopes.current().name
    prefix = f"{scope}/" if scope else ""
    name = get_default_graph().unique_scope(f"{prefix}{primary.op.name}/{op_name}")
    with jax.ensure_compile_time_eval():
        value = jnp.asarray(value_fn())
    if tuple(value.shape) != primary.shape:
        value = jnp.broadcast_to(value, primary.shape)
    with _scopes.absolute_names():
        slot = Variable(value, trainable=False, name=name, collections=[GLOBAL_VARIABLES])
    slot._slot_of = (primary, op_name if family is None else family)
    return slot


class SlotsMixin:
    """TF1's slot bookkeeping: ``get_slot``, ``get_slot_names``, ``variables`` and hooks."""

    _slots: dict
    _non_slot_dict: dict
    _non_slot_scope: Optional[str]

    def get_slot(self, var: Variable, name: str) -> Optional[Variable]:
        """The slot ``name`` of ``var``, or ``None``."""
        return self._slots.get(name, {}).get(var)

    def get_slot_names(self) -> List[str]:
        """Slot names, sorted (``['m', 'v']``)."""
        return sorted(self._slots.keys())

    def variables(self) -> List[Variable]:
        """Non-slot variables and slots of the current graph, sorted by name."""
        graph = get_default_graph()
        found = [v for v in self._non_slot_variables() if v.graph is graph]
        for slot_dict in self._slots.values():
            found.extend(v for v in slot_dict.values() if v.graph is graph)
        return sorted(found, key=lambda v: v.name)

    def _slot_dict(self, slot_name: str) -> dict:
        return self._slots.setdefault(slot_name, {})

    def _get_or_make_slot(self, var: Variable, val: Any, slot_name: str,
                          op_name: str) -> Variable:
        """The slot, created with initial value ``val`` if missing."""
        named = self._slot_dict(slot_name)
        if var not in named:
            named[var] = create_slot(var, lambda: val.value if isinstance(val, Variable)
                                     else val, op_name, id(named))
        return named[var]

    def _get_or_make_slot_with_initializer(self, var: Variable, initializer: Callable,
                                           shape: Any, dtype: Any, slot_name: str,
                                           op_name: str) -> Variable:
        """The slot, created as ``initializer(shape, dtype)`` if missing."""
        named = self._slot_dict(slot_name)
        if var not in named:
            named[var] = create_slot(var, lambda: initializer(tuple(shape), dtype), op_name,
                                     id(named))
        return named[var]

    def _zeros_slot(self, var: Variable, slot_name: str, op_name: str) -> Variable:
        """The slot, created as zeros of ``var``'s shape and dtype if missing."""
        named = self._slot_dict(slot_name)
        if var not in named:
            named[var] = create_slot(var, lambda: jnp.zeros(var.shape, var.dtype), op_name,
                                     id(named))
        return named[var]

    def _create_non_slot_variable(self, initial_value: Any, name: str,
                                  colocate_with: Any = None) -> Variable:
        """Get-or-create a non-slot variable keyed by ``(name, graph)``."""
        graph = get_default_graph()
        key = (name, graph)
        v = self._non_slot_dict.get(key)
        if v is None:
            full = f"{self._non_slot_scope}/{name}" if self._non_slot_scope else name
            with jax.ensure_compile_time_eval():
                value = initial_value() if callable(initial_value) else initial_value
            v = Variable(value, trainable=False, name=full)
            self._non_slot_dict[key] = v
        return v

    def _get_non_slot_variable(self, name: str, graph: Any = None) -> Optional[Variable]:
        return self._non_slot_dict.get((name, graph or get_default_graph()))

    def _non_slot_variables(self) -> list:
        return list(self._non_slot_dict.values())
