"""``compatopt.train.experimental``: TF1's ``tf.compat.v1.train.experimental`` (loss scaling)."""

from compatopt.train.experimental.loss_scale import (
    DynamicLossScale as DynamicLossScale,
    FixedLossScale as FixedLossScale,
    LossScale as LossScale,
    get as get,
)
from compatopt.train.experimental.loss_scale_optimizer import (
    MixedPrecisionLossScaleOptimizer as MixedPrecisionLossScaleOptimizer,
)
