"""``create_slots``: make an optimizer's slots now, so a checkpoint can be restored into them.

TF1 creates slots (``w/Adam``, ``w/Adam_1``) and non-slot variables (``beta1_power``) in the
first ``apply_gradients``. In TF1 graph code ``minimize`` builds them before
``saver.restore``; in compatopt's eager code ``minimize`` already takes a step, so a
program that restores before its first step calls :func:`create_slots` first. The names,
initial values and creation order are exactly those of the first ``apply_gradients``
(it runs the optimizer's own ``_create_slots`` hook, so subclasses are covered too).
"""

from __future__ import annotations

from typing import Any, List, Optional

from compatopt.train._variable import Variable, get_default_graph, trainable_variables


def _flatten(x: Any) -> list:
    if isinstance(x, (list, tuple)):
        return [leaf for item in x for leaf in _flatten(item)]
    if isinstance(x, dict):
        return [leaf for k in sorted(x) for leaf in _flatten(x[k])]
    return [x]


def create_slots(optimizer: Any, var_list: Optional[Any] = None) -> List[Variable]:
    """Creates ``optimizer``'s slots for ``var_list`` and its non-slot variables.

    Args:
      optimizer: a ``compatopt.train.Optimizer`` (built-in or subclass).
      var_list: the variables it will update, in the order ``minimize`` would pass them
        (default: ``trainable_variables()``); nested lists and dicts are flattened.

    Returns:
      ``optimizer.variables()``: its slots and non-slot variables, sorted by name.

    Calling it again, or training afterwards, creates nothing twice (the hooks are
    get-or-create). If the hook raises, the slots it made are removed again.

    Example::

      opt = compatopt.train.AdamOptimizer(1e-3)
      compatopt.train.create_slots(opt, [w, b])    # w/Adam, w/Adam_1, ..., beta1_power
      compatopt.train.Saver().restore(None, "model.ckpt-50")
    """
    if var_list is None:
        var_list = trainable_variables()
    var_list = _flatten(var_list)
    if not var_list:
        raise ValueError("No variables provided.")
    for v in var_list:
        if not isinstance(v, Variable):
            raise TypeError(f"create_slots: expected compatopt.Variable, got {v!r}")
    graph = get_default_graph()
    with optimizer._lock, graph.journal() as journal:
        try:
            optimizer._create_slots(list(var_list))
        except BaseException:
            optimizer._forget(graph.created_in(journal))
            graph.undo(journal)
            raise
    return optimizer.variables()
