"""``compatopt.train``: the ``tf.compat.v1.train`` shim over the functional rules.

Change ``tf.compat.v1.train.X`` to ``compatopt.train.X``; see ``compatopt.Variable`` for
the variables and ``compatopt.function`` for compiled steps.
"""

from compatopt.train._global_step import (
    assert_global_step as assert_global_step,
    create_global_step as create_global_step,
    get_global_step as get_global_step,
    get_or_create_global_step as get_or_create_global_step,
    global_step as global_step,
)
from compatopt.train._lazy import LazyTensor as LazyTensor, lazy as lazy
from compatopt.train.graph_tensor import GraphTensor as GraphTensor
from compatopt.train._operation import Operation as Operation
from compatopt.train import experimental as experimental
from compatopt.train.cross_shard import (
    CrossShardOptimizer as CrossShardOptimizer,
    shard_map as shard_map,
)
from compatopt.train.learning_rate_decay import (
    cosine_decay as cosine_decay,
    cosine_decay_restarts as cosine_decay_restarts,
    exponential_decay as exponential_decay,
    inverse_time_decay as inverse_time_decay,
    linear_cosine_decay as linear_cosine_decay,
    natural_exp_decay as natural_exp_decay,
    noisy_linear_cosine_decay as noisy_linear_cosine_decay,
    piecewise_constant as piecewise_constant,
    piecewise_constant_decay as piecewise_constant_decay,
    polynomial_decay as polynomial_decay,
)
from compatopt.train.moving_averages import ExponentialMovingAverage as ExponentialMovingAverage
from compatopt.train.optimizer import AggregationMethod as AggregationMethod, Optimizer as Optimizer
from compatopt.train.optimizers import (
    AdadeltaOptimizer as AdadeltaOptimizer,
    AdagradDAOptimizer as AdagradDAOptimizer,
    AdagradOptimizer as AdagradOptimizer,
    AdamOptimizer as AdamOptimizer,
    FtrlOptimizer as FtrlOptimizer,
    GradientDescentOptimizer as GradientDescentOptimizer,
    MomentumOptimizer as MomentumOptimizer,
    ProximalAdagradOptimizer as ProximalAdagradOptimizer,
    ProximalGradientDescentOptimizer as ProximalGradientDescentOptimizer,
    RMSPropOptimizer as RMSPropOptimizer,
)
from compatopt.train.saver import (
    CheckpointReader as CheckpointReader,
    Saver as Saver,
    checkpoint_exists as checkpoint_exists,
    convert_tf1_checkpoint as convert_tf1_checkpoint,
    create_slots as create_slots,
    get_checkpoint_state as get_checkpoint_state,
    latest_checkpoint as latest_checkpoint,
    list_variables as list_variables,
    load_checkpoint as load_checkpoint,
    load_variable as load_variable,
)
from compatopt.train.checkpoint_utils import (
    NewCheckpointReader as NewCheckpointReader,
    checkpoints_iterator as checkpoints_iterator,
    get_checkpoint_mtimes as get_checkpoint_mtimes,
    remove_checkpoint as remove_checkpoint,
    update_checkpoint_state as update_checkpoint_state,
)
from compatopt.train.warm_starting import (
    init_from_checkpoint as init_from_checkpoint,
    warm_start as warm_start,
)
from compatopt.train.sync_replicas import SyncReplicasOptimizer as SyncReplicasOptimizer
