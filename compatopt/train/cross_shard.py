"""``CrossShardOptimizer`` (``tf.compat.v1.tpu.CrossShardOptimizer``) and a ``shard_map``
that carries :class:`~compatopt.Variable` reads and writes across its boundary.

TF1 ran a training step once per TPU shard (``tpu.shard`` / ``tpu.rewrite``) and wrapped the
optimizer so that ``apply_gradients`` summed each gradient over the shards
(``cross_replica_sum``) before the real optimizer applied it. The JAX equivalent of a
per-shard program is ``jax.shard_map``; :func:`shard_map` here is ``jax.shard_map`` for
shim code: the variables a step reads enter the per-replica program as replicated values,
and the variables it writes (parameters, slots, the global step) come back out, replicated,
and are stored (or handed to an enclosing :func:`compatopt.function`)::

    mesh = jax.make_mesh((8,), ("data",))
    opt = co.train.CrossShardOptimizer(co.train.AdamOptimizer(1e-3))

    @co.function
    @co.train.shard_map(mesh=mesh, in_specs=P("data"))
    def train_step(x, y):                       # x, y: this replica's rows
        return opt.minimize(lambda: loss(x, y), global_step=gs)

    train_step(x_global, y_global)              # batch sharded over "data"

Numerics. With ``reduction="mean"`` and ``n`` shards the loss is scaled by ``1.0 / n``
(``compute_gradients``, as TF1; done through the loss's output gradient, which gives the
same bits as multiplying the loss) and ``apply_gradients`` sums the shards' gradients with
``lax.psum``; the wrapped optimizer then sees ``sum_i grad(loss_i / n)``. For a power-of-two
``n`` this is bitwise ``(1/n) * sum_i grad(loss_i)``. ``fixed_order=True`` sums in replica
order on every backend (see :func:`compatopt.parallel.reduce_gradients`).
"""

from __future__ import annotations

import functools
import logging
import math
from typing import Any, Callable, Optional, Sequence, cast

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec

from compatopt import parallel
from compatopt._numerics import is_concrete
from compatopt.train._lifting import (call_lifted, flatten_output, lift_in, lift_out,
                                      locked_at_top_level, rebuild_output)
from compatopt.train._operation import Operation
from compatopt.train._variable import Variable, global_variables, trainable_variables
from compatopt.train.optimizer import Optimizer, check_grads_and_vars

_log = logging.getLogger("compatopt")

MEAN = "weighted_mean"  # tf.compat.v1.losses.Reduction.MEAN
SUM = "weighted_sum"    # tf.compat.v1.losses.Reduction.SUM
_REDUCTIONS = {"mean": "mean", MEAN: "mean", "sum": "sum", SUM: "sum"}


def replica_axes(axis_name: Any) -> Optional[tuple]:
    """The replica mesh axes a wrapper reduces over: ``axis_name`` as a tuple, or (``None``)
    every axis the enclosing ``shard_map`` made manual; ``None`` outside one."""
    if axis_name is not None:
        return tuple(axis_name) if isinstance(axis_name, (tuple, list)) else (axis_name,)
    return tuple(jax.sharding.get_abstract_mesh().manual_axes) or None


def replica_count(axes: Optional[tuple]) -> Optional[int]:
    """The number of replicas along ``axes``; ``None`` when they are not bound here."""
    if axes is None:
        return None
    try:
        return math.prod(lax.axis_size(a) for a in axes)
    except NameError:
        return None


class CrossShardOptimizer(Optimizer):
    """An optimizer that averages (or sums) gradients across replicas, as TF1's TPU one.

    Use it inside a per-replica program (:func:`shard_map`, or ``jax.shard_map`` /
    ``jax.pmap`` with your own variable plumbing).

    Args:
      opt: the :class:`~compatopt.train.Optimizer` that applies the reduced gradients.
      reduction: ``"mean"`` (default) or ``"sum"``; TF1's ``losses.Reduction.MEAN`` /
        ``SUM`` strings (``"weighted_mean"`` / ``"weighted_sum"``) are accepted too.
      name: TF1's name argument.
      group_assignment: TF1's subgroups (``[[0, 1], [2, 3]]``): each replica reduces only
        over its group; MEAN scales by ``1 / group size``.
      axis_name: the replica mesh axis (or tuple of axes). ``None``: every axis the
        enclosing ``shard_map`` made manual; outside one, one shard (as TF1 outside a TPU
        shard context, with the same warning).
      fixed_order: sum the replicas' gradients in replica order (all-gather then adds)
        instead of ``lax.psum``: the same bits on every backend.
      sparse: ``"dense"`` (TF1: ``cross_replica_sum`` densifies an ``IndexedSlices``) or
        ``"gather"`` (keep it sparse: every replica's rows, concatenated in replica order).

    Raises:
      ValueError: ``reduction`` is not MEAN or SUM.
      TypeError: ``opt`` is not a ``compatopt.train.Optimizer``.
    """

    def __init__(self, opt: Optimizer, reduction: str = "mean",
                 name: str = "CrossShardOptimizer",
                 group_assignment: Optional[Sequence[Sequence[int]]] = None, *,
                 axis_name: Any = None, fixed_order: bool = False,
                 sparse: str = "dense") -> None:
        accepted = ("mean", "sum", MEAN, SUM)
        if not isinstance(reduction, str) or reduction not in _REDUCTIONS:
            raise ValueError(f"Argument `reduction` should be one of {accepted}. "
                             f"Received: {reduction}")
        if not isinstance(opt, Optimizer):
            raise TypeError(
                "CrossShardOptimizer only works with compatopt.train.Optimizer (a "
                f"tf.compat.v1.train optimizer). Received: {opt}. For a functional rule use "
                "compatopt.parallel.cross_replica(rule, axis_name).")
        if sparse not in parallel.SPARSE_MODES:
            raise ValueError(f"sparse must be one of {list(parallel.SPARSE_MODES)}, got "
                             f"{sparse!r}")
        super().__init__(False, name)
        self._opt = opt
        self._reduction = _REDUCTIONS[reduction]
        self._group_assignment = group_assignment
        self._axis_name = axis_name
        self._fixed_order = fixed_order
        self._sparse = sparse

    # ------------------------------------------------------------------ shards
    def _axes(self) -> Optional[tuple]:
        return replica_axes(self._axis_name)

    def _num_shards(self) -> Optional[int]:
        return replica_count(self._axes())

    def _verify_and_get_subgroup_size(self, group_assignment, num_shards: int) -> Optional[int]:
        """TF1's checks, messages included."""
        if not group_assignment:
            return None
        if not (isinstance(group_assignment, list)
                and all(isinstance(i, list) for i in group_assignment)):
            raise ValueError(f"Argument `group_assignment` must be a list of lists. "
                             f"Received: {group_assignment}")
        replica_ids = {i for g in group_assignment for i in g}
        if set(range(num_shards)) != replica_ids:
            raise ValueError(f"Argument `group_assignment` must be a permutation of "
                             f"range({num_shards}). Received: {group_assignment}")
        sizes = [len(group) for group in group_assignment]
        if all(sizes[0] == size for size in sizes):
            return sizes[0]
        raise ValueError("The size of each subgroup in `group_assignment` must be equal. "
                         f"Received: {group_assignment}")

    # --------------------------------------------------------------- gradients
    def compute_gradients(self, loss: Callable, var_list: Optional[list] = None,
                          **kwargs: Any) -> list:
        """The wrapped optimizer's ``compute_gradients`` of ``loss / num_shards`` (MEAN).

        Gradients stay per replica here; ``apply_gradients`` reduces them, so they can be
        processed (clipped...) per replica first, as in TF1.
        """
        num_shards = self._num_shards()
        if num_shards is None:
            _log.warning("CrossShardOptimizer should be used within a tpu_shard_context, but "
                         "got unset number_of_shards. Assuming 1.")
            num_shards = 1
        subgroup_size = self._verify_and_get_subgroup_size(self._group_assignment, num_shards)
        if num_shards > 1 and self._reduction == "mean":
            # A non-empty group_assignment has an int subgroup size (or raised above).
            scale = 1.0 / (cast(int, subgroup_size) if self._group_assignment else num_shards)
            # d(loss * s)/dv is the backward pass seeded with s instead of 1: the same bits
            # as TF1's `loss *= scale`, without wrapping the user's loss callable.
            grad_loss = kwargs.pop("grad_loss", None)
            if grad_loss is None:
                kwargs["grad_loss"] = scale
            else:
                grad_loss = jnp.asarray(grad_loss)
                kwargs["grad_loss"] = grad_loss * jnp.asarray(scale, grad_loss.dtype)
        return self._opt.compute_gradients(loss, var_list=var_list, **kwargs)

    def apply_gradients(self, grads_and_vars, global_step: Optional[Variable] = None,
                        name: Optional[str] = None) -> Operation:
        """Sums every gradient over the replicas, then the wrapped optimizer applies them."""
        grads_and_vars = check_grads_and_vars(grads_and_vars)
        axes = self._axes()
        if axes is not None and self._num_shards() is not None:
            grads = parallel.reduce_gradients(
                [g for g, _ in grads_and_vars],
                # axis_name=() leaves ``axes`` empty: IndexError here, as it always has.
                axes if len(axes) > 1 else axes[0],  # pyright: ignore[reportGeneralTypeIssues]
                reduction="sum", group_assignment=self._group_assignment,
                fixed_order=self._fixed_order, sparse=self._sparse)
            grads_and_vars = tuple(zip(grads, [v for _, v in grads_and_vars]))
        return self._opt.apply_gradients(grads_and_vars, global_step, name)

    def _apply_for_minimize(self, grads_and_vars, global_step, name) -> None:
        """``minimize`` = ``compute_gradients`` (scaled) then ``apply_gradients`` (reduced),
        as TF1."""
        self.apply_gradients(grads_and_vars, global_step=global_step, name=name)

    # -------------------------------------------------------------- delegation
    def get_slot(self, *args: Any, **kwargs: Any):
        return self._opt.get_slot(*args, **kwargs)

    def get_slot_names(self, *args: Any, **kwargs: Any) -> list:
        return self._opt.get_slot_names(*args, **kwargs)

    def variables(self) -> list:
        return self._opt.variables()


# ------------------------------------------------------------------------- shard_map


def _is_array(x: Any) -> bool:
    return isinstance(x, jax.Array) or hasattr(x, "aval")


def shard_map(fn: Optional[Callable] = None, *, mesh, in_specs, out_specs=PartitionSpec(),
              axis_names=frozenset(), check_vma: bool = False) -> Callable:
    """``jax.shard_map`` for shim code: runs ``fn`` once per replica, variables included.

    Inside ``fn`` every :class:`~compatopt.Variable` reads as its full (replicated) value;
    whatever ``fn`` assigns (parameters, slots, the global step, ...) leaves the per-replica
    program replicated (``out_specs=P()``) and is stored, or passed on to an enclosing
    :func:`compatopt.function`. Written values must therefore agree across replicas, which
    :class:`CrossShardOptimizer` guarantees for what it updates (every replica applies the
    same reduced gradients). The variables the step touches are kept replicated on ``mesh``.

    Called eagerly, the per-replica program is compiled once per argument signature (the
    variables are passed in as arguments, as :func:`compatopt.function` does); under
    :func:`compatopt.function` it becomes part of that compiled step.

    Args:
      fn: the per-replica step; its array arguments are split by ``in_specs``.
      mesh, in_specs, axis_names: as ``jax.shard_map``.
      out_specs: one ``PartitionSpec`` for every array ``fn`` returns (non-array results,
        such as the ``Operation`` of ``minimize``, are passed through).
      check_vma: ``jax.shard_map``'s check; off by default so that gradients with respect
        to variables stay per replica until :class:`CrossShardOptimizer` reduces them.

    Returns:
      A function of the global arrays.
    """
    if fn is None:
        return functools.partial(shard_map, mesh=mesh, in_specs=in_specs, out_specs=out_specs,
                                 axis_names=axis_names, check_vma=check_vma)
    specs = in_specs if isinstance(in_specs, tuple) else None
    entries: dict = {}

    def build(variables: list, nargs: int) -> tuple:
        info: dict = {}

        def body(values, *local_args):
            lifted = call_lifted(fn, variables, values, *local_args)
            leaves, tree, op_positions = flatten_output(lifted.out)
            info.update(tree=tree, leaves=leaves, op_positions=op_positions,
                        written=lifted.written,
                        unknown=[v for v in lifted.all_reads if v not in set(variables)])
            return [x for x in leaves if _is_array(x)], lifted.written_values

        arg_specs = specs if specs is not None else (in_specs,) * nargs
        # out_specs is a pytree prefix: one spec for all results, P() for all writes.
        run = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(PartitionSpec(), *arg_specs),
                                    out_specs=(out_specs, PartitionSpec()),
                                    axis_names=axis_names, check_vma=check_vma))
        return run, info

    @functools.wraps(fn)
    def wrapped(*args):
        key = _signature(args)
        entry = entries.get(key)
        if entry is None:
            variables = _create_and_place(fn, args, in_specs, mesh, axis_names)
            entry = entries[key] = (variables, *build(variables, len(args)))
        for _ in range(3):
            variables, run, info = entry
            with locked_at_top_level(variables):  # the step driver's locks, as in function
                arrays, written = run(lift_in(variables, donate=False), *args)
                if not info["unknown"]:
                    lift_out(info["written"], written, owned=False)
                    break
            # The step read a variable the probe did not see (a data-dependent branch).
            variables = list(dict.fromkeys([*variables, *info["unknown"]]))
            entry = entries[key] = (variables, *build(variables, len(args)))
        else:  # pragma: no cover
            raise RuntimeError("compatopt.train.shard_map: the variables the step reads keep "
                               "changing; create them outside data-dependent branches")
        leaves = list(info["leaves"])
        positions = [i for i, x in enumerate(leaves) if _is_array(x)]
        for i, value in zip(positions, arrays):
            leaves[i] = value
        name = getattr(fn, "__name__", "shard_map")
        return rebuild_output(info["tree"], leaves, info["op_positions"],
                              lambda _: Operation(name, lambda: wrapped(*args)))

    return wrapped


def _create_and_place(fn: Callable, args: tuple, in_specs, mesh, axis_names) -> list:
    """Traces the per-replica step abstractly (``jax.eval_shape``) before it first runs.

    That creates the variables the step creates (slots, Adam's beta powers) from concrete
    values, which neither an eager per-replica run nor the compiled one can give, and finds
    every variable the step reads or writes; its writes are discarded. Those variables are
    then placed replicated on ``mesh``, as the step's results will be, so that a compiled
    step sees the same placement on every call.
    """
    specs = in_specs if isinstance(in_specs, tuple) else (in_specs,) * len(args)
    # The graph's variables go in as arguments: shard_map cannot close over arrays on a mesh
    # with Explicit axes. (Others are closed over, which Auto axes allow.)
    known = list(dict.fromkeys([*global_variables(), *trainable_variables()]))

    inner: list = []

    def probe_body(values, *local_args):
        inner.append(call_lifted(fn, known, values, *local_args))
        return []

    per_replica = jax.shard_map(probe_body, mesh=mesh, in_specs=(PartitionSpec(), *specs),
                                out_specs=PartitionSpec(), axis_names=axis_names,
                                check_vma=False)
    probe = call_lifted(jax.eval_shape, [], [], per_replica,
                        [jax.ShapeDtypeStruct(v.shape, v.dtype) for v in known], *args)
    variables = list(dict.fromkeys([*probe.all_reads, *inner[0].written]))
    for v in variables:
        _place_replicated(v, mesh)
    return variables


def _signature(args) -> tuple:
    leaves, tree = jax.tree_util.tree_flatten(args)
    return tree, tuple((tuple(x.shape), str(x.dtype)) if hasattr(x, "shape")
                       else ("static", repr(x)) for x in leaves)


def _place_replicated(v: Variable, mesh) -> None:
    """Moves a concrete variable that is not yet on ``mesh`` there, replicated."""
    stored = v.buffer
    if not is_concrete(stored):
        return
    sharding = getattr(stored, "sharding", None)
    if isinstance(sharding, jax.sharding.NamedSharding) and sharding.mesh == mesh:
        return
    v.place(jax.sharding.NamedSharding(mesh, PartitionSpec()))
