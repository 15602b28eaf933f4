"""``compatopt.train``: the ``tf.compat.v1.train`` shim over the functional rules.

Change ``tf.compat.v1.train.X`` to ``compatopt.train.X``; see ``compatopt.Variable`` for
the variables and ``compatopt.function`` for compiled steps.
"""

from compatopt.train._global_step import (assert_global_step as assert_global_step,
                                          create_global_step as create_global_step,
                                          get_global_step as get_global_step,
                                          get_or_create_global_step as get_or_create_global_step,
                                          global_step as global_step)
from compatopt.train._operation import Operation as Operation
from compatopt.train.optimizer import (AggregationMethod as AggregationMethod,
                                       Optimizer as Optimizer)
from compatopt.train.optimizers import (
    AdadeltaOptimizer as AdadeltaOptimizer, AdagradDAOptimizer as AdagradDAOptimizer,
    AdagradOptimizer as AdagradOptimizer, AdamOptimizer as AdamOptimizer,
    FtrlOptimizer as FtrlOptimizer, GradientDescentOptimizer as GradientDescentOptimizer,
    MomentumOptimizer as MomentumOptimizer,
    ProximalAdagradOptimizer as ProximalAdagradOptimizer,
    ProximalGradientDescentOptimizer as ProximalGradientDescentOptimizer,
    RMSPropOptimizer as RMSPropOptimizer)

try:  # written by another helper; re-exported once it exists
    from compatopt.train.learning_rate_decay import (  # noqa: F401
        cosine_decay, cosine_decay_restarts, exponential_decay, inverse_time_decay,
        linear_cosine_decay, natural_exp_decay, noisy_linear_cosine_decay, piecewise_constant,
        polynomial_decay)
except ImportError:  # pragma: no cover
    pass
