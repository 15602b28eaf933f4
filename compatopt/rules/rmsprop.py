"""RMSProp (TF1 ``RMSPropOptimizer``, kernels ``Apply[Centered]RMSProp`` and the sparse ones)."""

from __future__ import annotations

from typing import NamedTuple

import jax

from compatopt import _numerics as N
from compatopt import _sparse as S
from compatopt._base import ArrayTree, LeafUpdate, Rule, ScalarOrSchedule
from compatopt._rule import ALL_FLOATS, Hyper, RuleDef, build, constant_slot, zeros_slot


class RMSPropState(NamedTuple):
    """``count``; ``rms`` (ones, ``w/RMSProp``), ``mg`` (zeros, centered only, ``w/RMSProp_1``),
    ``momentum`` (zeros, ``w/RMSProp_1`` or ``w/RMSProp_2``). Non-centered states keep
    ``mg=None``."""

    count: jax.Array
    rms: ArrayTree
    momentum: ArrayTree
    mg: ArrayTree = None


def _hyper(hp: Hyper, T):
    return (hp.cast("learning_rate", T), hp.cast("decay", T), hp.cast("momentum", T),
            hp.cast("epsilon", T))


def _make_kernels(centered: bool):
    def dense(g, var, slots, hp: Hyper) -> LeafUpdate:
        lr, rho, mu, eps = _hyper(hp, var.dtype)
        ms = slots["rms"] + N.mul(N.mul(g, g) - slots["rms"], 1 - rho)
        new = {"rms": ms}
        if centered:
            mg = slots["mg"] + N.mul(g - slots["mg"], 1 - rho)
            den = (ms - N.mul(mg, mg)) + eps
            new["mg"] = mg
        else:
            den = ms + eps
        mom = N.mul(slots["momentum"], mu) + N.div(g * lr, N.sqrt(den))
        new["momentum"] = mom
        return LeafUpdate(slots=new, delta=mom)

    def sparse(g, rows, var, slots, hp: Hyper) -> LeafUpdate:
        lr, rho, mu, eps = _hyper(hp, g.dtype)
        ms = N.mul(S.gather(slots["rms"], rows), rho) + N.mul(g * g, 1 - rho)
        new = {"rms": S.scatter(slots["rms"], rows, ms)}
        if centered:
            mg = N.mul(S.gather(slots["mg"], rows), rho) + N.mul(g, 1 - rho)
            den = (ms + eps) - N.mul(mg, mg)
            new["mg"] = S.scatter(slots["mg"], rows, mg)
        else:
            den = ms + eps
        mom = N.mul(S.gather(slots["momentum"], rows), mu) + N.mul(N.opaque(N.rsqrt(den) * lr), g)
        new["momentum"] = S.scatter(slots["momentum"], rows, mom)
        return LeafUpdate(slots=new, delta=mom, rows=rows)

    return dense, sparse


def rmsprop(learning_rate: ScalarOrSchedule, decay: ScalarOrSchedule = 0.9,
            momentum: ScalarOrSchedule = 0.0, epsilon: ScalarOrSchedule = 1e-10,
            centered: bool = False) -> Rule:
    r"""RMSProp, as TF1's ``RMSPropOptimizer`` (Hinton's lecture 6e; centered: Graves, 2013).

    Math (TF1 ``ApplyRMSProp``; ``ms`` starts at **one**, ``mom`` and ``mg`` at zero)::

        ms = ms + (((g * g) - ms) * (1 - rho))                     # rho = decay
        mom = (mom * mu) + ((g * lr) / sqrt(ms + eps))
        var = var - mom

    centered (``ApplyCenteredRMSProp``): ``mg = mg + ((g - mg) * (1 - rho))`` and
    ``sqrt((ms - (mg * mg)) + eps)`` in the denominator.

    Sparse (``SparseApply[Centered]RMSProp``, repeated indices summed, listed rows only; a
    different operation order and ``rsqrt``)::

        ms = (ms * rho) + ((g * g) * (1 - rho))
        mg = (mg * rho) + (g * (1 - rho))                         # centered
        den = (ms + eps) - (mg * mg)    or    ms + eps
        mom = (mom * mu) + ((rsqrt(den) * lr) * g);  var = var - mom

    Args:
      learning_rate: float, array or callable ``count -> lr``.
      decay: TF1's ``decay`` (the kernel's ``rho``), default 0.9.
      momentum: default 0.0 (the momentum slot is always used, as in TF1).
      epsilon: default 1e-10 (0 in float16).
      centered: use the centered variant (adds the ``mg`` slot).

    Returns:
      A :class:`~compatopt.Rule`; its state is :class:`RMSPropState`. Sparse bfloat16 is an
      extension beyond TF1 (no such kernel there), computed on float32 carriers.

    Example:
      >>> import jax.numpy as jnp, compatopt as co
      >>> rule = co.rmsprop(0.01, momentum=0.9, centered=True)
      >>> p = jnp.zeros(2); s = rule.init(p)
      >>> s.rms
      Array([1., 1.], dtype=float32)

    Differences: ``optax.rmsprop`` starts ``ms`` at zero (``initial_scale=0``), puts ``eps``
    outside the root by default and defaults ``decay`` to 0.9 too; PyTorch's ``alpha`` is
    ``decay`` and it starts at zero. Only ``initial_scale=1.0, eps_in_sqrt=True`` optax
    matches TF1 up to rounding.
    """
    dense, sparse = _make_kernels(bool(centered))
    slots = [("rms", constant_slot(1.0))]
    if centered:
        slots.append(("mg", zeros_slot))
    slots.append(("momentum", zeros_slot))
    rd = RuleDef(
        name="RMSProp",
        state_type=RMSPropState,
        slots=tuple(slots),
        hyperparams={"learning_rate": learning_rate, "decay": decay, "momentum": momentum,
                     "epsilon": epsilon},
        dense=dense,
        sparse=sparse,
        sparse_dtypes=ALL_FLOATS,  # bfloat16: an extension (TF1 has no such kernel)
        static={"centered": bool(centered)},
    )
    return build(rd)
