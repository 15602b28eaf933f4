"""compatopt: TensorFlow 1's optimizers rebuilt on JAX, bit for bit.

Two layers:

* functional rules (``compatopt.adam(...)`` ...): ``init`` / ``apply`` (TF1-exact) /
  ``update`` (optax protocol) over pytrees;
* ``compatopt.train``: the ``tf.compat.v1.train`` shim (Variables, slots, minimize, ...).
"""

from compatopt import errors as errors, schedules as schedules
from compatopt import loss_scaling as loss_scaling
from compatopt.tf1_mode import (
    get_tf1_mode as get_tf1_mode,
    set_tf1_mode as set_tf1_mode,
    tf1_mode as tf1_mode,
)
from compatopt._base import (
    ArrayTree as ArrayTree,
    IndexedSlices as IndexedSlices,
    Rule as Rule,
    Schedule as Schedule,
    apply_updates as apply_updates,
)
from compatopt._multi_tensor import (
    FlatParams as FlatParams,
    MultiTensorRule as MultiTensorRule,
    flatten_params as flatten_params,
    multi_tensor as multi_tensor,
)
from compatopt.rules import (
    AdadeltaState as AdadeltaState,
    AdagradDAState as AdagradDAState,
    AdagradState as AdagradState,
    AdamState as AdamState,
    FtrlState as FtrlState,
    GradientDescentState as GradientDescentState,
    MomentumState as MomentumState,
    ProximalAdagradState as ProximalAdagradState,
    ProximalGradientDescentState as ProximalGradientDescentState,
    RMSPropState as RMSPropState,
    adadelta as adadelta,
    adagrad as adagrad,
    adagrad_da as adagrad_da,
    adam as adam,
    ftrl as ftrl,
    gradient_descent as gradient_descent,
    momentum as momentum,
    proximal_adagrad as proximal_adagrad,
    proximal_gradient_descent as proximal_gradient_descent,
    rmsprop as rmsprop,
)

from compatopt._version import __version__ as __version__

# --- compat shim (tf.compat.v1.train): Variable, collections, compiled steps -----------------
from compatopt import checkpoint as checkpoint, parallel as parallel, train as train
from compatopt.train._function import function as function
from compatopt.train._variable import (
    Variable as Variable,
    global_variables as global_variables,
    reset_default_graph as reset_default_graph,
    trainable_variables as trainable_variables,
)
# --- end compat shim ------------------------------------------------------------------------
from compatopt.clip_ops import (
    clip_by_average_norm as clip_by_average_norm,
    clip_by_global_norm as clip_by_global_norm,
    clip_by_norm as clip_by_norm,
    clip_by_value as clip_by_value,
    global_norm as global_norm,
)
from compatopt.train import nn as nn
from compatopt.train.nn import gather as gather
# TF1's array ops, tf.gradients and tf.group, for ported programs (tf.X -> co.X)
from compatopt.train.control_flow import group as group
from compatopt.train.gradients_impl import gradients as gradients
from compatopt.train.math_ops import (
    bfloat16 as bfloat16,
    cast as cast,
    constant as constant,
    float16 as float16,
    float32 as float32,
    float64 as float64,
    identity as identity,
    int32 as int32,
    int64 as int64,
    multiply as multiply,
    sqrt as sqrt,
    square as square,
)
from compatopt import moving_averages as moving_averages
from compatopt import tf_math as tf_math
from compatopt.sparse_grad import lookup as lookup, value_and_sparse_grad as value_and_sparse_grad
from compatopt.train.variable_scope import (
    AUTO_REUSE as AUTO_REUSE,
    VariableScope as VariableScope,
    constant_initializer as constant_initializer,
    get_variable as get_variable,
    get_variable_scope as get_variable_scope,
    glorot_normal_initializer as glorot_normal_initializer,
    glorot_uniform_initializer as glorot_uniform_initializer,
    name_scope as name_scope,
    ones_initializer as ones_initializer,
    random_normal_initializer as random_normal_initializer,
    random_uniform_initializer as random_uniform_initializer,
    truncated_normal_initializer as truncated_normal_initializer,
    variable_scope as variable_scope,
    zeros_initializer as zeros_initializer,
)
