"""``tf.compat.v1.train.ExponentialMovingAverage`` over compatopt Variables.

The arithmetic is :mod:`compatopt.moving_averages`' (TF1 graph mode's, bit for bit)::

    shadow -= (shadow - var) * cast(1 - min(decay, (1 + n) / (10 + n)), T)

``apply`` creates one non-trainable shadow per variable, named as TF1's ``slot_creator``
names it: ``<var op name>/<name>`` (``w/ExponentialMovingAverage``; ``..._1`` for a second
average of the same variable; ``w/avg`` for ``name="avg"``), and adds the variable to the
``moving_average_variables`` collection. The shadow starts at the variable's value when
``apply`` first sees it: its stored value, before the writes of the compiled step being
traced, i.e. TF1 graph mode's initial value when ``apply`` is built before training starts.

Differences from TF1 (deliberate):

* ``apply`` takes ``compatopt.Variable``\\ s only (as TF1 eagerly): a value that is not a
  Variable raises :class:`~compatopt.errors.NotAVariableError` (TF1 graph mode would
  average a tensor, zero-initialised; :func:`compatopt.moving_averages.ema` with
  ``zero_debias=True`` is that arithmetic). So, as in TF1 for Variables, ``zero_debias``
  changes nothing here.
* A failed ``apply`` creates no shadow (TF1 keeps those made before the failing entry).
* The returned :class:`~compatopt.train.Operation` is named ``name`` (not uniquified).
"""

from __future__ import annotations

import threading
from typing import Any, Dict, List, Optional

import jax.numpy as jnp

from compatopt import moving_averages as _ma
from compatopt.errors import NotAVariableError
from compatopt.train._lazy import LazyTensor
from compatopt.train._lifting import call_lifted, lift_out
from compatopt.train._operation import Operation
from compatopt.train._slots import create_slot
from compatopt.train._variable import (Variable, get_default_graph, global_variables,
                                       trainable_variables)

__all__ = ["ExponentialMovingAverage", "MOVING_AVERAGE_VARIABLES", "moving_average_variables"]

MOVING_AVERAGE_VARIABLES = "moving_average_variables"


def moving_average_variables() -> List[Variable]:
    """``tf.compat.v1.moving_average_variables()``: variables an average was applied to."""
    return get_default_graph().get_collection(MOVING_AVERAGE_VARIABLES)


def _peek_unique_name(name: str) -> str:
    """TF1 ``Graph.unique_name(name, mark_as_used=False)``: the name the next op would get."""
    counters = get_default_graph()
    with counters.lock:
        used = counters.names_in_use
        key = name.lower()
        i = used.get(key, 0)
        if i == 0:
            return name
        base = key
        while key in used:
            key = f"{base}_{i}"
            i += 1
        return f"{name}_{i - 1}"


def _read(x: Any) -> Any:
    """A hyper-parameter's current value: a Variable is read, a lazy tensor evaluated."""
    if isinstance(x, Variable):
        return x.value
    if isinstance(x, LazyTensor):
        return x()
    return x


class ExponentialMovingAverage:
    """Maintains moving averages of variables (TF1's class, same arguments).

    Args:
      decay: float, array, ``compatopt.Variable`` or ``LazyTensor`` (read at each
        ``apply``), converted to float32 as TF1 does.
      num_updates: optional; typically the global step Variable. The decay used is then
        ``min(decay, (1 + num_updates) / (10 + num_updates))``, in float32.
      zero_debias: accepted; TF1 only debiases non-Variable tensors, which ``apply``
        does not take, so it has no effect (as in TF1 for Variables).
      name: the shadows' suffix (``w/<name>``) and the returned op's name.

    Example::

      ema = compatopt.train.ExponentialMovingAverage(0.999, num_updates=global_step)

      @compatopt.function
      def train_step(x, y):
          opt.minimize(lambda: loss(x, y), global_step=global_step)
          return ema.apply([w, b])          # shadows created on the first call

      # evaluation: restore the averages into the model variables
      compatopt.train.Saver(ema.variables_to_restore()).restore(None, path)
    """

    def __init__(self, decay: Any, num_updates: Any = None, zero_debias: bool = False,
                 name: str = "ExponentialMovingAverage") -> None:
        self._decay = decay
        self._num_updates = num_updates
        self._zero_debias = zero_debias
        self._name = name
        self._averages: Dict[Variable, Variable] = {}
        self._lock = threading.RLock()

    @property
    def name(self) -> str:
        """The name of this average (the shadows' suffix)."""
        return self._name

    # ---------------------------------------------------------------------- apply
    def apply(self, var_list: Optional[Any] = None) -> Operation:
        """Creates the missing shadows, then updates every shadow of ``var_list`` now.

        Args:
          var_list: a list of float16/bfloat16/float32/float64 Variables (default:
            ``trainable_variables()``).

        Returns:
          An :class:`~compatopt.train.Operation` whose ``run()`` updates them again.

        Raises:
          TypeError: a non-float variable (TF1's message), ``var_list`` a single Variable,
            a string ``decay``. :class:`~compatopt.errors.NotAVariableError` (a
            ``TypeError`` and ``AttributeError``): an entry that is not a Variable.
            Nothing is created or changed then.
        """
        var_list = self._check(var_list)
        self._one_minus(jnp.float32)  # bad decay / num_updates fail before anything changes
        graph = get_default_graph()
        with self._lock, graph.journal() as journal:
            created: list = []
            try:
                for var in var_list:
                    if var not in self._averages:
                        value = var.buffer  # the stored value: not this step's writes
                        self._averages[var] = create_slot(var, lambda v=value: v, self._name)
                        created.append(var)
                applied = call_lifted(self._update, [], [], var_list)
            except BaseException:
                for var in created:
                    self._averages.pop(var, None)
                graph.undo(journal)
                raise
        for var in created:  # after the journal: undo would drop var from every collection
            graph.add_to_collection(MOVING_AVERAGE_VARIABLES, var)
        lift_out(applied.written, applied.written_values, owned=False)
        return Operation(self._name, lambda: self._run(var_list))

    def _run(self, var_list: list) -> None:
        applied = call_lifted(self._update, [], [], var_list)
        lift_out(applied.written, applied.written_values, owned=False)

    def _check(self, var_list: Any) -> list:
        if var_list is None:
            var_list = trainable_variables()
        if isinstance(var_list, Variable):
            raise TypeError(f"var_list must be a list of Variables, got the Variable "
                            f"'{var_list.name}' (write [{var_list.op.name}])")
        var_list = list(var_list)
        for i, v in enumerate(var_list):
            if not isinstance(v, Variable):
                raise NotAVariableError(
                    f"'{type(v).__name__}' object has no attribute 'dtype': var_list[{i}] "
                    f"is not a compatopt.Variable ({v!r}); "
                    f"tf.train.ExponentialMovingAverage does not support non-Variable "
                    f"tensors when eager execution is enabled")
            _ma.check_dtype(v.dtype, v.name)
        return var_list

    def _one_minus(self, dtype: Any) -> Any:
        num_updates = None if self._num_updates is None else _read(self._num_updates)
        return _ma.one_minus_decay(_read(self._decay), num_updates, dtype)

    def _update(self, var_list: list) -> None:
        decay = _ma.decay_value(_read(self._decay), None if self._num_updates is None
                                else _read(self._num_updates))
        for var in var_list:
            avg = self._averages[var]
            one_minus = _ma.one_minus_decay(decay, None, avg.dtype)
            avg.assign(_ma.assign_moving_average(avg.value, var.value, one_minus))

    # -------------------------------------------------------------------- lookups
    def average(self, var: Variable) -> Optional[Variable]:
        """The shadow Variable of ``var``, or ``None`` if ``apply`` never saw it."""
        return self._averages.get(var)

    def average_name(self, var: Variable) -> str:
        """The shadow's op name (``"w/ExponentialMovingAverage"``): the existing one, or
        the one ``apply`` would give it now (TF1: ``unique_name(..., mark_as_used=False)``)."""
        avg = self._averages.get(var)
        if avg is not None:
            return avg.op.name
        return _peek_unique_name(f"{var.op.name}/{self._name}")

    def variables_to_restore(self, moving_avg_variables: Optional[list] = None
                             ) -> Dict[str, Variable]:
        """``{name_in_checkpoint: Variable}`` restoring averages into the model (TF1's keys).

        Each of ``moving_avg_variables`` (default: ``trainable_variables()`` and
        ``moving_average_variables()``) is keyed by :meth:`average_name`; every other
        global variable by its own op name unless that key is taken (a shadow's name is).
        ``compatopt.train.Saver(ema.variables_to_restore()).restore(None, path)`` then loads
        ``w/ExponentialMovingAverage`` into ``w``.
        """
        if moving_avg_variables is None:
            moving_avg_variables = trainable_variables() + moving_average_variables()
        unique = list({id(v): v for v in moving_avg_variables}.values())
        name_map: Dict[str, Variable] = {}
        for v in unique:
            name_map[self.average_name(v)] = v
        names = {v.name for v in unique}
        for v in global_variables():
            if v.name not in names and v.op.name not in name_map:
                name_map[v.op.name] = v
        return name_map
