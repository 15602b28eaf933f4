"""The ten TF1 optimizer classes, with TF1's constructor signatures (spec §3).

Each class only records its arguments and names its functional rule; the math is the rule's.
Argument checks happen where TF1 does them: Adagrad, AdagradDA and ProximalAdagrad check
their arguments before the optimizer name, FTRL after it.
"""

from __future__ import annotations

from typing import Any, Optional

from compatopt import rules
from compatopt.train._rule_optimizer import RuleOptimizer


class GradientDescentOptimizer(RuleOptimizer, builtin=True):
    """``var = var - (g * lr)``; sparse gradients are scatter-added without de-duplication."""

    _rule_fn = staticmethod(rules.gradient_descent)
    _kernel_hypers = ("learning_rate",)
    _callables_ok = True

    def __init__(self, learning_rate: Any, use_locking: bool = False,
                 name: str = "GradientDescent") -> None:
        super().__init__(use_locking, name)
        self._init_rule({"learning_rate": learning_rate})

    def _resource_apply_sparse_duplicate_indices(self, grad, handle, indices):
        from compatopt._base import IndexedSlices
        self._run([(IndexedSlices(grad, indices, handle.shape), handle)],
                  store_non_slots=False)


class MomentumOptimizer(RuleOptimizer, builtin=True):
    """Momentum (slot ``momentum`` → ``w/Momentum``), optionally Nesterov."""

    _rule_fn = staticmethod(rules.momentum)
    _kernel_hypers = ("learning_rate", "momentum")
    _callables_ok = True

    def __init__(self, learning_rate: Any, momentum: Any, use_locking: bool = False,
                 name: str = "Momentum", use_nesterov: bool = False) -> None:
        super().__init__(use_locking, name)
        self._init_rule({"learning_rate": learning_rate, "momentum": momentum,
                         "use_nesterov": use_nesterov})


class AdagradOptimizer(RuleOptimizer, builtin=True):
    """Adagrad (slot ``accumulator`` → ``w/Adagrad``)."""

    _rule_fn = staticmethod(rules.adagrad)
    _kernel_hypers = ("learning_rate",)
    _callables_ok = True

    def __init__(self, learning_rate: Any, initial_accumulator_value: float = 0.1,
                 use_locking: bool = False, name: str = "Adagrad") -> None:
        self._init_rule({"learning_rate": learning_rate,
                         "initial_accumulator_value": initial_accumulator_value})
        super().__init__(use_locking, name)


class AdagradDAOptimizer(RuleOptimizer, builtin=True):
    """Adagrad dual averaging (slots ``gradient_accumulator``, ``gradient_squared_accumulator``).

    ``global_step`` (a Variable) is read in every apply (``t = global_step + 1``); the
    optimizer never increments it: pass it to ``minimize``/``apply_gradients`` as well. TF1
    requires int64; here any integer dtype is accepted (int32 without ``jax_enable_x64``).
    """

    _rule_fn = staticmethod(rules.adagrad_da)
    _kernel_hypers = ("learning_rate", "l1_regularization_strength",
                      "l2_regularization_strength")

    def __init__(self, learning_rate: Any, global_step: Any,
                 initial_gradient_squared_accumulator_value: float = 0.1,
                 l1_regularization_strength: float = 0.0,
                 l2_regularization_strength: float = 0.0, use_locking: bool = False,
                 name: str = "AdagradDA") -> None:
        self._global_step = global_step
        self._init_rule({"learning_rate": learning_rate,
                         "initial_gradient_squared_accumulator_value":
                             initial_gradient_squared_accumulator_value,
                         "l1_regularization_strength": l1_regularization_strength,
                         "l2_regularization_strength": l2_regularization_strength})
        super().__init__(use_locking, name)

    def _extra_args(self, dyn: dict) -> dict:
        step = dyn.get("_step")
        return {} if step is None else {"global_step": lambda count: step}

    def _prepare(self) -> None:
        super()._prepare()
        step = self._global_step
        if step is None:
            raise ValueError("Attempt to convert a value (None) with an unsupported type "
                             "(<class 'NoneType'>) to a Tensor.")
        self._dyn["_step"] = self._resolve("global_step", step)


class AdadeltaOptimizer(RuleOptimizer, builtin=True):
    """Adadelta (slots ``accum`` → ``w/Adadelta``, ``accum_update`` → ``w/Adadelta_1``)."""

    _rule_fn = staticmethod(rules.adadelta)
    _kernel_hypers = ("learning_rate", "rho", "epsilon")
    _callables_ok = True

    def __init__(self, learning_rate: Any = 0.001, rho: Any = 0.95, epsilon: Any = 1e-8,
                 use_locking: bool = False, name: str = "Adadelta") -> None:
        super().__init__(use_locking, name)
        self._init_rule({"learning_rate": learning_rate, "rho": rho, "epsilon": epsilon})


class AdamOptimizer(RuleOptimizer, builtin=True):
    """Adam (slots ``m`` → ``w/Adam``, ``v`` → ``w/Adam_1``; non-slot float32 variables
    ``beta1_power``, ``beta2_power``, created first and advanced once per apply)."""

    _rule_fn = staticmethod(rules.adam)
    _kernel_hypers = ("learning_rate", "beta1", "beta2", "epsilon")
    _callables_ok = True

    def __init__(self, learning_rate: Any = 0.001, beta1: Any = 0.9, beta2: Any = 0.999,
                 epsilon: Any = 1e-8, use_locking: bool = False, name: str = "Adam",
                 use_own_namescope_for_non_slot_vars: bool = False) -> None:
        super().__init__(use_locking, name, use_own_namescope_for_non_slot_vars)
        self._init_rule({"learning_rate": learning_rate, "beta1": beta1, "beta2": beta2,
                         "epsilon": epsilon})

    def _get_beta_accumulators(self):
        return (self._get_non_slot_variable("beta1_power"),
                self._get_non_slot_variable("beta2_power"))


class FtrlOptimizer(RuleOptimizer, builtin=True):
    """FTRL-Proximal (slots ``accum`` → ``w/<accum_name or name>``, ``linear`` →
    ``w/<linear_name or name>``)."""

    _rule_fn = staticmethod(rules.ftrl)
    _kernel_hypers = ("learning_rate", "learning_rate_power", "l1_regularization_strength",
                      "l2_regularization_strength", "l2_shrinkage_regularization_strength",
                      "beta")

    def __init__(self, learning_rate: Any, learning_rate_power: float = -0.5,
                 initial_accumulator_value: float = 0.1,
                 l1_regularization_strength: float = 0.0,
                 l2_regularization_strength: float = 0.0, use_locking: bool = False,
                 name: str = "Ftrl", accum_name: Optional[str] = None,
                 linear_name: Optional[str] = None,
                 l2_shrinkage_regularization_strength: float = 0.0,
                 beta: Optional[float] = None) -> None:
        super().__init__(use_locking, name)
        self._accum_name = accum_name
        self._linear_name = linear_name
        self._init_rule({"learning_rate": learning_rate,
                         "learning_rate_power": learning_rate_power,
                         "initial_accumulator_value": initial_accumulator_value,
                         "l1_regularization_strength": l1_regularization_strength,
                         "l2_regularization_strength": l2_regularization_strength,
                         "l2_shrinkage_regularization_strength":
                             l2_shrinkage_regularization_strength,
                         "beta": beta})

    def _slot_op_name(self, slot_name: str) -> str:
        named = {"accum": self._accum_name, "linear": self._linear_name}[slot_name]
        return named or self._name


class ProximalGradientDescentOptimizer(RuleOptimizer, builtin=True):
    """Proximal gradient descent with L1/L2 (no slots)."""

    _rule_fn = staticmethod(rules.proximal_gradient_descent)
    _kernel_hypers = ("learning_rate", "l1_regularization_strength",
                      "l2_regularization_strength")

    def __init__(self, learning_rate: Any, l1_regularization_strength: float = 0.0,
                 l2_regularization_strength: float = 0.0, use_locking: bool = False,
                 name: str = "ProximalGradientDescent") -> None:
        super().__init__(use_locking, name)
        self._init_rule({"learning_rate": learning_rate,
                         "l1_regularization_strength": l1_regularization_strength,
                         "l2_regularization_strength": l2_regularization_strength})


class ProximalAdagradOptimizer(RuleOptimizer, builtin=True):
    """Proximal Adagrad (slot ``accumulator`` → ``w/ProximalAdagrad``)."""

    _rule_fn = staticmethod(rules.proximal_adagrad)
    _kernel_hypers = ("learning_rate", "l1_regularization_strength",
                      "l2_regularization_strength")

    def __init__(self, learning_rate: Any, initial_accumulator_value: float = 0.1,
                 l1_regularization_strength: float = 0.0,
                 l2_regularization_strength: float = 0.0, use_locking: bool = False,
                 name: str = "ProximalAdagrad") -> None:
        self._init_rule({"learning_rate": learning_rate,
                         "initial_accumulator_value": initial_accumulator_value,
                         "l1_regularization_strength": l1_regularization_strength,
                         "l2_regularization_strength": l2_regularization_strength})
        super().__init__(use_locking, name)


class RMSPropOptimizer(RuleOptimizer, builtin=True):
    """RMSProp (slots ``rms`` (ones), ``mg`` if centered, ``momentum``)."""

    _rule_fn = staticmethod(rules.rmsprop)
    _kernel_hypers = ("learning_rate", "decay", "momentum", "epsilon")
    _callables_ok = True

    def __init__(self, learning_rate: Any, decay: Any = 0.9, momentum: Any = 0.0,
                 epsilon: Any = 1e-10, use_locking: bool = False, centered: bool = False,
                 name: str = "RMSProp") -> None:
        super().__init__(use_locking, name)
        self._init_rule({"learning_rate": learning_rate, "decay": decay, "momentum": momentum,
                         "epsilon": epsilon, "centered": centered})
