"""``tf.compat.v1.train.experimental.MixedPrecisionLossScaleOptimizer`` over
:mod:`compatopt.loss_scaling`.

``compute_gradients`` differentiates ``loss() * scale`` and returns ``g * (1 / scale)``;
``apply_gradients`` with a dynamic scale runs the wrapped optimizer's apply in a capturing
frame and stores each value it wrote as ``where(all_finite, new, old)``, then updates
``current_loss_scale`` / ``good_steps``. So a non-finite step changes no variable, slot,
beta power or global step (TF1: the apply sits in a ``cond``), eagerly and inside
``compatopt.function`` alike (no Python branch on the traced flag). A fixed scale applies
every step unconditionally, as TF1.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from compatopt import loss_scaling
from compatopt.train._lifting import call_lifted, lift_out
from compatopt.train._operation import Operation
from compatopt.train._variable import Variable
from compatopt.train.experimental.loss_scale import DynamicLossScale, LossScale, get
from compatopt.train.optimizer import Optimizer, check_grads_and_vars


class MixedPrecisionLossScaleOptimizer(Optimizer):
    """An optimizer that applies loss scaling (TF1's, same name and arguments).

    Args:
      opt: the ``compatopt.train.Optimizer`` that applies the unscaled gradients.
      loss_scale: a number (``FixedLossScale``), ``"dynamic"`` (``DynamicLossScale()``) or
        a ``LossScale``.

    Raises:
      ValueError: ``opt`` is not an Optimizer, ``loss_scale`` is ``None`` or not one of the
        above (TF1's messages).
    """

    def __init__(self, opt: Optimizer, loss_scale: Any) -> None:
        if not isinstance(opt, Optimizer):
            raise ValueError('"opt" must be an instance of Optimizer, but got: %s'
                             % type(opt))
        self._optimizer = opt
        super().__init__(opt._use_locking, opt.get_name())
        loss_scale = get(loss_scale)
        if loss_scale is None:
            raise ValueError("loss_scale cannot be None")
        self._loss_scale: LossScale = loss_scale

    def _doing_dynamic_loss_scaling(self) -> bool:
        return isinstance(self._loss_scale, DynamicLossScale)

    def _scale(self) -> Any:
        return self._loss_scale()

    # ------------------------------------------------------------------ gradients
    def compute_gradients(self, loss: Callable, var_list: Optional[list] = None,
                          gate_gradients: int = Optimizer.GATE_OP,
                          aggregation_method: Any = None,
                          colocate_gradients_with_ops: bool = False,
                          grad_loss: Any = None) -> list:
        """The wrapped optimizer's gradients of ``loss() * scale``, times ``1 / scale``."""
        scale = self._scale()
        scaled = (lambda: loss_scaling.scale_loss(loss(), scale)) if callable(loss) else loss
        gvs = self._optimizer.compute_gradients(
            scaled, var_list=var_list, gate_gradients=gate_gradients,
            aggregation_method=aggregation_method,
            colocate_gradients_with_ops=colocate_gradients_with_ops, grad_loss=grad_loss)
        grads = loss_scaling.unscale([g for g, _ in gvs], scale)
        return list(zip(grads, [v for _, v in gvs]))

    # ---------------------------------------------------------------------- apply
    def apply_gradients(self, grads_and_vars, global_step: Optional[Variable] = None,
                        name: Optional[str] = None) -> Operation:
        """Applies the gradients unless one is non-finite (dynamic scale); then updates the
        scale. Returns an :class:`Operation` that does the same again."""
        grads_and_vars = check_grads_and_vars(grads_and_vars)
        if not self._doing_dynamic_loss_scaling():
            return self._optimizer.apply_gradients(grads_and_vars, global_step, name)
        self._apply_scaled(grads_and_vars, global_step, name)
        return Operation(name or self._name,
                         lambda: self._apply_scaled(grads_and_vars, global_step, name))

    def _apply_scaled(self, grads_and_vars: tuple, global_step: Optional[Variable],
                      name: Optional[str]) -> None:
        name = name if name is not None else self.get_name()
        loss_scale = self._loss_scale
        assert isinstance(loss_scale, DynamicLossScale)
        grads = [g for g, _ in grads_and_vars]
        applied = call_lifted(self._optimizer.apply_gradients, [], [], grads_and_vars,
                              global_step, name + "-wrapped")
        _, finite = loss_scale.update(grads)
        # Outside the frame every variable reads its value before the apply again.
        kept = loss_scaling.select(finite, applied.written_values,
                                   [v.value for v in applied.written])
        lift_out(applied.written, kept, owned=False)

    def _apply_for_minimize(self, grads_and_vars, global_step, name) -> None:
        self.apply_gradients(grads_and_vars, global_step=global_step, name=name)

    # -------------------------------------------------------------- delegation
    def _create_slots(self, var_list) -> None:
        self._optimizer._create_slots(var_list)

    def get_slot(self, *args: Any, **kwargs: Any):
        return self._optimizer.get_slot(*args, **kwargs)

    def get_slot_names(self, *args: Any, **kwargs: Any) -> list:
        return self._optimizer.get_slot_names(*args, **kwargs)

    def variables(self) -> list:
        """The wrapped optimizer's variables, then the loss scale's (TF1's order)."""
        return self._optimizer.variables() + list(self._loss_scale._weights.values())

    def _apply_dense(self, grad, var):
        raise RuntimeError("This function should never be called")

    def _resource_apply_dense(self, grad, handle):
        raise RuntimeError("This function should never be called")

    def _apply_sparse(self, grad, var):
        raise RuntimeError("This function should never be called")

    def _resource_apply_sparse(self, grad, handle, indices):
        raise RuntimeError("This function should never be called")
