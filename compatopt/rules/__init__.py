"""The ten TF1 update rules; the math lives here and only here."""

from compatopt.rules.adadelta import AdadeltaState as AdadeltaState, adadelta as adadelta
from compatopt.rules.adagrad import AdagradState as AdagradState, adagrad as adagrad
from compatopt.rules.adagrad_da import AdagradDAState as AdagradDAState, adagrad_da as adagrad_da
from compatopt.rules.adam import AdamState as AdamState, adam as adam
from compatopt.rules.ftrl import FtrlState as FtrlState, ftrl as ftrl
from compatopt.rules.gradient_descent import (
    GradientDescentState as GradientDescentState,
    gradient_descent as gradient_descent,
)
from compatopt.rules.momentum import MomentumState as MomentumState, momentum as momentum
from compatopt.rules.proximal import (
    ProximalAdagradState as ProximalAdagradState,
    ProximalGradientDescentState as ProximalGradientDescentState,
    proximal_adagrad as proximal_adagrad,
    proximal_gradient_descent as proximal_gradient_descent,
)
from compatopt.rules.rmsprop import RMSPropState as RMSPropState, rmsprop as rmsprop

ALL_RULES = ("gradient_descent", "momentum", "adagrad", "adagrad_da", "adadelta", "adam",
             "ftrl", "proximal_gradient_descent", "proximal_adagrad", "rmsprop")
