"""``tf.compat.v1.train.SyncReplicasOptimizer``, mapped onto synchronous data parallelism.

TF1's version ran on parameter servers: each of ``total_num_replicas`` workers pushed its
gradients into a ``ConditionalAccumulator``, the chief took the average of the first
``replicas_to_aggregate`` of them (stale ones dropped), applied it once with the wrapped
optimizer and advanced ``global_step`` by one; workers waited on a token queue.

Here the replicas are the devices of a mesh axis inside :func:`compatopt.train.shard_map`
(or ``jax.shard_map`` / ``pmap``): ``apply_gradients`` averages each gradient over the axis
(``psum(g) * (1/n)``; TF1's accumulator divides the sum by ``n``: the same bits for a
power-of-two ``n``), the wrapped optimizer applies the average once, identically on every
replica, and ``global_step`` advances by one. What differs from TF1, because there is no
asynchrony to manage: no stale-gradient queue and no backup workers (``replicas_to_aggregate``
must equal the number of replicas, and ``total_num_replicas`` may not exceed it), no token
queue (``make_session_run_hook`` / ``get_init_tokens_op`` / ``get_chief_queue_runner`` return
objects that do nothing, so TF1 code calling them runs). Outside a replica context there is
one replica and the wrapped optimizer runs as is. The loss is not rescaled (unlike
``CrossShardOptimizer``'s MEAN).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from compatopt import parallel
from compatopt.train._operation import Operation
from compatopt.train._variable import Variable
from compatopt.train.cross_shard import replica_axes, replica_count
from compatopt.train.optimizer import Optimizer, check_grads_and_vars

__all__ = ["SyncReplicasOptimizer"]


class _NoOpHook:
    """``SessionRunHook`` stand-in: the token queue has nothing to do synchronously."""

    def begin(self) -> None: ...
    def after_create_session(self, session: Any = None, coord: Any = None) -> None: ...
    def before_run(self, run_context: Any = None) -> None: ...
    def after_run(self, run_context: Any = None, run_values: Any = None) -> None: ...
    def end(self, session: Any = None) -> None: ...


class SyncReplicasOptimizer(Optimizer):
    """Averages gradients over the replicas, then applies them once (see module docstring).

    Args:
      opt: the :class:`~compatopt.train.Optimizer` that applies the average.
      replicas_to_aggregate: gradients averaged per update; must equal the number of
        replicas of the axis it runs over (checked at ``apply_gradients``).
      total_num_replicas: ``None`` (= ``replicas_to_aggregate``) or at most it.
      variable_averages, variables_to_average: TF1's optional moving averages, updated by the
        chief after each step: pass an ``ExponentialMovingAverage``; its ``apply`` runs
        after the update.
      use_locking, name: TF1's.
      axis_name: the replica mesh axis (or axes); ``None``: every manual axis of the
        enclosing ``shard_map``.
      fixed_order: sum the replicas' gradients in replica order (the same bits on every
        backend) instead of ``lax.psum``.

    Raises:
      ValueError: ``total_num_replicas`` greater than ``replicas_to_aggregate`` (backup
        workers need asynchrony); at ``apply_gradients``: ``global_step`` missing (TF1's
        "Global step is required to check staleness"), or the replica count differs.
      TypeError: ``opt`` is not a ``compatopt.train.Optimizer``.
    """

    def __init__(self, opt: Optimizer, replicas_to_aggregate: int,
                 total_num_replicas: Optional[int] = None, variable_averages: Any = None,
                 variables_to_average: Any = None, use_locking: bool = False,
                 name: str = "sync_replicas", *, axis_name: Any = None,
                 fixed_order: bool = False) -> None:
        if not isinstance(opt, Optimizer):
            raise TypeError(f"SyncReplicasOptimizer wraps a compatopt.train.Optimizer, got "
                            f"{opt!r}")
        if total_num_replicas is None:
            total_num_replicas = replicas_to_aggregate
        if int(total_num_replicas) > int(replicas_to_aggregate):
            raise ValueError(
                f"SyncReplicasOptimizer: total_num_replicas ({total_num_replicas}) > "
                f"replicas_to_aggregate ({replicas_to_aggregate}) means backup workers, "
                f"whose late gradients TF1 drops asynchronously; compatopt's replicas are "
                f"synchronous devices of a mesh axis, so every replica aggregates")
        super().__init__(use_locking, name)
        self._opt = opt
        self._replicas_to_aggregate = int(replicas_to_aggregate)
        self._total_num_replicas = int(total_num_replicas)
        self._variable_averages = variable_averages
        self._variables_to_average = variables_to_average
        self._axis_name = axis_name
        self._fixed_order = fixed_order

    # ------------------------------------------------------------------ gradients
    def compute_gradients(self, loss: Callable, var_list: Optional[list] = None,
                          **kwargs: Any) -> list:
        """The wrapped optimizer's, per replica (TF1: unchanged)."""
        return self._opt.compute_gradients(loss, var_list=var_list, **kwargs)

    def apply_gradients(self, grads_and_vars, global_step: Optional[Variable] = None,
                        name: Optional[str] = None) -> Operation:
        """Averages each gradient over the replicas, applies it once, ``global_step += 1``."""
        if global_step is None:
            raise ValueError("Global step is required to check staleness")
        pairs = check_grads_and_vars(grads_and_vars)
        axes = replica_axes(self._axis_name)
        n = replica_count(axes) or 1  # outside a replica context: one replica
        if n != self._replicas_to_aggregate:
            raise ValueError(
                f"SyncReplicasOptimizer: replicas_to_aggregate={self._replicas_to_aggregate} "
                f"but the step runs on {n} replica(s) (axis {axes}); they must be equal")
        if n > 1:
            assert axes is not None
            grads = parallel.reduce_gradients(
                [g for g, _ in pairs], axes,
                reduction="mean", sparse="dense", fixed_order=self._fixed_order)
            pairs = tuple(zip(grads, [v for _, v in pairs]))
        op = self._opt.apply_gradients(pairs, global_step, name)
        if self._variable_averages is not None:
            self._variable_averages.apply(self._variables_to_average)
        return op

    def _apply_for_minimize(self, grads_and_vars, global_step, name) -> None:
        self.apply_gradients(grads_and_vars, global_step=global_step, name=name)

    # ------------------------------------------------------- TF1's queue machinery
    def make_session_run_hook(self, is_chief: bool, num_tokens: int = -1) -> _NoOpHook:
        """TF1's hook that starts the token queue; nothing to do synchronously."""
        return _NoOpHook()

    def get_init_tokens_op(self, num_tokens: int = -1) -> Operation:
        return Operation(f"{self._name}/init_tokens", lambda: None)

    def get_chief_queue_runner(self) -> None:
        return None

    # -------------------------------------------------------------- delegation
    def get_slot(self, *args: Any, **kwargs: Any):
        return self._opt.get_slot(*args, **kwargs)

    def get_slot_names(self, *args: Any, **kwargs: Any) -> list:
        return self._opt.get_slot_names(*args, **kwargs)

    def variables(self) -> list:
        """The wrapped optimizer's variables (TF1's ``variables()``)."""
        return self._opt.variables()
