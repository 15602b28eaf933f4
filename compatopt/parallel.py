"""Many devices, many hosts: gradient reduction across replicas and optimizer-state placement.

Everything here is a thin layer on JAX's own machinery (``jax.sharding``, ``jax.jit`` with
shardings, ``jax.shard_map``, ``jax.distributed``); nothing is re-implemented.

* The rules themselves need nothing: ``init`` on sharded parameters gives slots with the
  parameters' shardings (``jax.ShapeDtypeStruct`` inputs included), and a jitted ``apply`` on
  sharded parameters and state is element-wise per shard, bit-identical to the
  single-device update, with no collective for dense gradients.
* :func:`reduce_gradients` / :func:`cross_replica`: the ``tf.compat.v1.tpu.CrossShardOptimizer``
  step for code that runs per replica (inside ``jax.shard_map`` or ``jax.pmap``): each
  gradient is summed across the replica axis (``lax.psum``), then scaled by ``1/n`` for
  ``reduction="mean"``.
* :func:`state_shardings` / :func:`init_sharded`: where the state lives. By default each slot
  takes its parameter's sharding; ``zero_axis="data"`` shards every slot across the
  data-parallel axis while the parameters stay replicated (ZeRO stage 1), so each device
  holds ``1/n`` of the slots. A step jitted with these shardings lets XLA's partitioner do
  the rest (update the local slot shard, all-gather the new parameters).
* :func:`device_nbytes`: bytes each device holds for a pytree, to measure the above.

Reduction order. ``lax.psum`` sums in an order XLA chooses (XLA:CPU: replica order;
GPUs: ring or tree). ``fixed_order=True`` all-gathers and adds the replicas' gradients one
after another in replica order, ``((g0 + g1) + g2) + ...``, on every backend, so the result
is bit-identical to accumulating the per-shard gradients sequentially on one device.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Hashable, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec

from compatopt._base import ArrayTree, IndexedSlices, Rule, is_grad_leaf

AxisName = Union[Hashable, Tuple[Hashable, ...]]
GroupAssignment = Optional[Sequence[Sequence[int]]]

REDUCTIONS = ("mean", "sum")
SPARSE_MODES = ("gather", "dense")

__all__ = [
    "reduce_gradients", "cross_replica", "check_group_assignment", "state_shardings",
    "zero1_sharding", "init_sharded", "device_nbytes",
]


# ----------------------------------------------------------------------- validation


def check_reduction(reduction: str) -> None:
    """TF1's CrossShardOptimizer accepts only SUM and MEAN."""
    if reduction not in REDUCTIONS:
        raise ValueError(
            f"Unsupported reduction: {reduction!r}; expected one of {list(REDUCTIONS)} "
            f"(tf.compat.v1.losses.Reduction.MEAN or SUM)")


def check_group_assignment(group_assignment: GroupAssignment, num_replicas: Optional[int] = None
                           ) -> Optional[Tuple[Tuple[int, ...], ...]]:
    """Validates TF1's ``group_assignment``: equal-size groups that partition the replicas.

    Args:
      group_assignment: ``None`` (one group of every replica) or a list of lists of replica
        ids, e.g. ``[[0, 1], [2, 3]]``.
      num_replicas: when known, the groups must cover exactly ``range(num_replicas)``.

    Returns:
      The groups as a tuple of tuples of ints, or ``None``.

    Raises:
      ValueError: empty or unequal groups, a repeated or missing replica id.
    """
    if group_assignment is None:
        return None
    try:
        groups = tuple(tuple(int(i) for i in group) for group in group_assignment)
    except TypeError:
        raise ValueError(
            f"group_assignment must be a list of lists of replica ids, got "
            f"{group_assignment!r}") from None
    if not groups or not groups[0]:
        raise ValueError(f"group_assignment must be non-empty lists, got {group_assignment!r}")
    size = len(groups[0])
    if any(len(g) != size for g in groups):
        raise ValueError(
            f"The size of each subgroup in group_assignment must be equal, got "
            f"{[len(g) for g in groups]}")
    flat = sorted(i for g in groups for i in g)
    n = len(flat) if num_replicas is None else num_replicas
    if flat != list(range(n)):
        raise ValueError(
            f"group_assignment {list(map(list, groups))} must partition the replica ids "
            f"range({n}): each id exactly once")
    return groups


# ----------------------------------------------------------------------- reduction


def _axes(axis_name: AxisName) -> Tuple[Hashable, ...]:
    return tuple(axis_name) if isinstance(axis_name, (tuple, list)) else (axis_name,)


def _varying(x: Any) -> frozenset:
    """Mesh axes along which ``x`` varies, as tracked by ``shard_map(check_vma=True)``."""
    aval = jax.typeof(x)
    mat = getattr(aval, "manual_axis_type", None)  # jax >= 0.10
    if mat is not None:
        return frozenset(mat.varying)
    return frozenset(getattr(aval, "vma", ()))  # jax < 0.10


def _tracks_variance(axis: Hashable) -> bool:
    """True inside ``shard_map(check_vma=True)``: ``axis_index`` is then marked varying."""
    return axis in _varying(lax.axis_index(axis))


def _scale(x: jax.Array, factor: float) -> jax.Array:
    """``x * factor`` with ``factor`` rounded to ``x``'s dtype (TF1 scales by ``1.0/n``)."""
    if factor == 1.0:
        return x
    return x * jnp.asarray(factor, x.dtype)


def _sum_in_order(stacked: jax.Array, members) -> jax.Array:
    """``stacked[m0] + stacked[m1] + ...``: one add after another, in the listed order."""
    acc = jnp.take(stacked, members[0], axis=0)
    for m in members[1:]:
        acc = acc + jnp.take(stacked, m, axis=0)
    return acc


class _Plan:
    """What one call of :func:`reduce_gradients` does, resolved once per trace."""

    def __init__(self, axis_name, reduction, group_assignment, fixed_order, sparse):
        check_reduction(reduction)
        if sparse not in SPARSE_MODES:
            raise ValueError(f"sparse must be one of {list(SPARSE_MODES)}, got {sparse!r}")
        self.axes = _axes(axis_name)
        self.n = math.prod(lax.axis_size(a) for a in self.axes)
        self.groups = check_group_assignment(group_assignment, self.n)
        self.group_size = self.n if self.groups is None else len(self.groups[0])
        self.factor = 1.0 / self.group_size if reduction == "mean" else 1.0
        self.fixed_order = fixed_order
        self.sparse = sparse
        self.tracked = {a: _tracks_variance(a) for a in self.axes}
        if self.groups is not None:
            table = np.zeros((self.n, self.group_size), np.int32)
            for g in self.groups:
                for r in g:
                    table[r] = g
            # Row r: the replicas whose gradients replica r sums, in the group's order.
            self.my_members = jnp.asarray(table)[lax.axis_index(self.axes)]

    def summed_axes(self, leaf: jax.Array) -> Tuple[Hashable, ...]:
        """The axes ``leaf`` still has to be summed over.

        Inside ``shard_map(check_vma=True)`` the gradient of a replicated parameter comes out
        already summed over the replicas (JAX differentiates the sum of the replicas'
        losses) and is invariant along those axes; summing it again would multiply it by n.
        """
        varying = _varying(leaf)
        return tuple(a for a in self.axes if not self.tracked[a] or a in varying)

    def dense(self, g: jax.Array) -> jax.Array:
        axes = self.summed_axes(g)
        if self.groups is not None:
            if axes != self.axes:
                raise ValueError(
                    "group_assignment needs per-replica gradients, but this gradient is "
                    "invariant across the replica axis (JAX already summed it over every "
                    "replica). Differentiate with respect to "
                    "jax.lax.pcast(params, axis_name, to='varying') or use "
                    "shard_map(check_vma=False).")
            stacked = lax.all_gather(g, self.axes, to="varying")
            total = _sum_in_order(stacked, [self.my_members[i] for i in range(self.group_size)])
        elif not axes:
            total = g
        elif self.fixed_order:
            stacked = lax.all_gather(g, axes, to="invarying")
            total = _sum_in_order(stacked, list(range(stacked.shape[0])))
        else:
            total = lax.psum(g, axes)
        return _scale(total, self.factor)

    def indexed(self, g: IndexedSlices) -> Union[IndexedSlices, jax.Array]:
        if self.sparse == "dense":
            if g.dense_shape is None:
                raise ValueError(
                    "reduce_gradients(sparse='dense') needs IndexedSlices with a dense_shape")
            return self.dense(g.to_dense())
        axes = tuple(a for a in self.summed_axes(g.values) if a in self.axes)
        values = _scale(g.values, self.factor)
        if self.groups is not None:
            if axes != self.axes:
                raise ValueError("group_assignment needs per-replica IndexedSlices gradients")
            k = g.indices.shape[0]
            vals = lax.all_gather(values, self.axes, to="varying")
            idx = lax.all_gather(g.indices, self.axes, to="varying")
            pick = jnp.stack([self.my_members[i] for i in range(self.group_size)])
            values = jnp.take(vals, pick, axis=0).reshape((-1,) + vals.shape[2:])
            indices = jnp.take(idx, pick, axis=0).reshape(self.group_size * k)
        elif axes:
            values = lax.all_gather(values, axes, axis=0, tiled=True, to="invarying")
            indices = lax.all_gather(g.indices, axes, axis=0, tiled=True, to="invarying")
        else:
            indices = g.indices
        return IndexedSlices(values, indices, g.dense_shape)


def reduce_gradients(grads: ArrayTree, axis_name: AxisName, *, reduction: str = "mean",
                     group_assignment: GroupAssignment = None, fixed_order: bool = False,
                     sparse: str = "gather") -> ArrayTree:
    """Sums (``"sum"``) or averages (``"mean"``) per-replica gradients across ``axis_name``.

    TF1's ``CrossShardOptimizer.apply_gradients`` replaces each gradient by
    ``cross_replica_sum(grad)``; with MEAN the loss was scaled by ``1/n`` first. Here, for a
    dense leaf with ``n`` replicas (or groups of ``n``)::

        sum:  g_total = psum(g)                     = g_0 + g_1 + ... + g_{n-1}
        mean: g_total = psum(g) * float(1/n)

    For a power-of-two ``n`` both the ``1/n`` and the scaling are exact, so scaling before
    the sum (TF1's loss scaling) or after it gives the same bits.

    Call it where ``axis_name`` is bound: inside ``jax.shard_map`` or ``jax.pmap``.

    Args:
      grads: pytree of per-replica gradients; leaves are arrays, ``None`` (kept) or
        ``IndexedSlices``.
      axis_name: the replica (data-parallel) mesh axis, or a tuple of axes.
      reduction: ``"mean"`` or ``"sum"`` (TF1 ``losses.Reduction.MEAN``/``SUM``).
      group_assignment: TF1's subgroups, e.g. ``[[0, 1], [2, 3]]``: each replica sums only
        over its own group (and MEAN divides by the group size). Implemented with an
        all-gather, so it moves ``n`` times the gradient; sums in the group's listed order.
      fixed_order: sum ``((g_0 + g_1) + g_2) + ...`` in replica order (all-gather then
        adds) instead of ``lax.psum``: bit-identical across backends and to a sequential
        accumulation on one device, at ``n`` times the memory of one gradient.
      sparse: for ``IndexedSlices`` leaves, ``"gather"`` concatenates every replica's rows
        (replica order, values scaled by ``1/n`` for MEAN) into one ``IndexedSlices``, which
        the rule then de-duplicates by summing in that order; ``"dense"`` densifies first
        (what TF1's ``cross_replica_sum`` does to an ``IndexedSlices``), so the rule takes
        its dense kernel.

    Returns:
      ``grads`` with every leaf reduced; identical on every replica (of a group).

    Note:
      Inside ``jax.shard_map(..., check_vma=True)`` (the default), differentiating with
      respect to replicated parameters already sums the gradient over the replicas: JAX
      differentiates the sum of the per-replica losses. Such a gradient is invariant along
      the axis and is not summed again (``"mean"`` only scales it). For ``fixed_order`` or
      ``group_assignment`` differentiate per replica instead:
      ``jax.grad(loss)(jax.lax.pcast(params, axis_name, to="varying"), batch)``.

    Example::

      mesh = jax.make_mesh((8,), ("data",))

      @jax.jit
      @functools.partial(jax.shard_map, mesh=mesh, in_specs=(P(), P(), P("data")),
                         out_specs=(P(), P()))
      def step(params, state, batch):
          grads = jax.grad(loss)(jax.lax.pcast(params, "data", to="varying"), batch)
          grads = co.parallel.reduce_gradients(grads, "data")
          return rule.apply(grads, state, params)
    """
    plan = _Plan(axis_name, reduction, group_assignment, fixed_order, sparse)

    def one(g):
        if g is None:
            return None
        if isinstance(g, IndexedSlices):
            return plan.indexed(g)
        return plan.dense(g)

    return jax.tree_util.tree_map(one, grads, is_leaf=is_grad_leaf)


def cross_replica(rule: Rule, axis_name: AxisName, *, reduction: str = "mean",
                  group_assignment: GroupAssignment = None, fixed_order: bool = False,
                  sparse: str = "gather") -> Rule:
    """``rule`` whose ``apply``/``update`` first :func:`reduce_gradients` across replicas.

    The functional ``CrossShardOptimizer``: the wrapped rule sees the mean (or sum) of the
    replicas' gradients, so every replica computes the same new parameters and state.
    ``init`` is the rule's own. Arguments as in :func:`reduce_gradients`.

    Example::

      rule = co.parallel.cross_replica(co.adam(1e-3), "data")
      # inside shard_map over "data":
      params, state = rule.apply(per_replica_grads, state, params)
    """
    check_reduction(reduction)
    check_group_assignment(group_assignment)
    if sparse not in SPARSE_MODES:
        raise ValueError(f"sparse must be one of {list(SPARSE_MODES)}, got {sparse!r}")
    kwargs: Dict[str, Any] = dict(reduction=reduction, group_assignment=group_assignment,
                                  fixed_order=fixed_order, sparse=sparse)

    def apply(grads, state, params):
        return rule.apply(reduce_gradients(grads, axis_name, **kwargs), state, params)

    def update(grads, state, params=None):
        return rule.update(reduce_gradients(grads, axis_name, **kwargs), state, params)

    hyper = dict(rule.hyperparams, axis_name=axis_name, reduction=reduction)
    if group_assignment is not None:
        hyper["group_assignment"] = group_assignment
    # ``definition`` is left out on purpose: code that re-lays a rule out from its kernels
    # would otherwise skip the reduction.
    return Rule(init=rule.init, apply=apply, update=update, name=rule.name,
                hyperparams=hyper, definition=None)


# ----------------------------------------------------------------------- state placement


def _spec_entries(spec: PartitionSpec, ndim: int) -> list:
    entries = list(spec) + [None] * (ndim - len(spec))
    return entries[:ndim]


def _entry_axes(entry) -> Tuple[Hashable, ...]:
    if entry is None or entry is PartitionSpec.UNCONSTRAINED:
        return ()
    return tuple(entry) if isinstance(entry, tuple) else (entry,)


def zero1_sharding(sharding: NamedSharding, shape: Sequence[int],
                   axis_name: AxisName) -> NamedSharding:
    """``sharding`` with ``axis_name`` added on one dimension: a ZeRO-1 slot placement.

    The first dimension not yet sharded whose size divides evenly by the axis size gets the
    axis; failing that, the first already-sharded dimension that still divides evenly gets
    it appended. A leaf that divides nowhere (a scalar, a bias of odd length) stays as it
    is (replicated along the axis). A sharding already using the axis is returned as is.
    """
    mesh = sharding.mesh
    axes = _axes(axis_name)
    size = math.prod(mesh.shape[a] for a in axes)
    entries = _spec_entries(sharding.spec, len(shape))
    used = {a for e in entries for a in _entry_axes(e)}
    if used & set(axes) or size == 1:
        return sharding

    def factor(entry) -> int:
        return math.prod(mesh.shape[a] for a in _entry_axes(entry))

    candidates = [d for d, e in enumerate(entries) if not _entry_axes(e)]
    candidates += [d for d, e in enumerate(entries) if _entry_axes(e)]
    for d in candidates:
        if shape[d] % (factor(entries[d]) * size) == 0:
            new = _entry_axes(entries[d]) + axes
            entries[d] = new[0] if len(new) == 1 else new
            return NamedSharding(mesh, PartitionSpec(*entries), memory_kind=sharding.memory_kind)
    return sharding


def _find_mesh(params: ArrayTree):
    for leaf in jax.tree_util.tree_leaves(params):
        s = getattr(leaf, "sharding", None)
        if isinstance(s, NamedSharding):
            return s.mesh
    return None


def _leaf_sharding(leaf, mesh) -> NamedSharding:
    s = getattr(leaf, "sharding", None)
    if isinstance(s, NamedSharding):
        return s
    if s is not None and s.is_fully_replicated and mesh is not None:
        return NamedSharding(mesh, PartitionSpec())
    if s is None and mesh is not None:
        return NamedSharding(mesh, PartitionSpec())
    raise ValueError(
        f"state_shardings: a parameter has sharding {s!r}; place the parameters with "
        f"NamedShardings on one mesh (jax.device_put(x, NamedSharding(mesh, spec))) or pass "
        f"mesh=")


def _is_slot_field(field: Any, params: ArrayTree) -> bool:
    """A state field shaped like the parameter tree (a slot), as opposed to a scalar."""
    if jax.tree_util.tree_structure(field) != jax.tree_util.tree_structure(params):
        return False
    return all(tuple(f.shape) == tuple(p.shape) for f, p in
               zip(jax.tree_util.tree_leaves(field), jax.tree_util.tree_leaves(params)))


def state_shardings(rule: Rule, params: ArrayTree, *, zero_axis: Optional[AxisName] = None,
                    mesh=None) -> Any:
    """The sharding of every leaf of ``rule.init(params)``, as a state-shaped pytree.

    Slots take their parameter's sharding, or with ``zero_axis`` the ZeRO-1 placement
    (:func:`zero1_sharding`: sharded across the data-parallel axis, each device holding
    ``1/n`` of every slot that divides evenly). Non-slot values (the apply count, Adam's
    beta powers) are replicated on the mesh. Use them as ``jax.jit`` ``in_shardings`` /
    ``out_shardings`` for the step, or with :func:`init_sharded`.

    Args:
      rule: a compatopt rule (or any ``init`` whose state fields are either shaped like
        ``params`` or scalars).
      params: arrays or ``jax.ShapeDtypeStruct`` with ``NamedSharding`` shardings.
      zero_axis: the data-parallel mesh axis (or tuple of axes) to shard the slots over.
      mesh: the mesh, when no parameter carries a ``NamedSharding``.
    """
    mesh = mesh if mesh is not None else _find_mesh(params)
    param_shardings = jax.tree_util.tree_map(lambda p: _leaf_sharding(p, mesh), params)
    abstract = rule.init(jax.tree_util.tree_map(
        lambda p, s: jax.ShapeDtypeStruct(p.shape, p.dtype, sharding=s), params,
        param_shardings))
    if mesh is None:
        raise ValueError("state_shardings needs a mesh: shard the parameters or pass mesh=")
    replicated = NamedSharding(mesh, PartitionSpec())

    def slot_sharding(p, s):
        return zero1_sharding(s, p.shape, zero_axis) if zero_axis is not None else s

    fields = {}
    for name, field in abstract._asdict().items():
        if field is not None and _is_slot_field(field, params):
            fields[name] = jax.tree_util.tree_map(slot_sharding, params, param_shardings)
        else:
            fields[name] = jax.tree_util.tree_map(lambda _: replicated, field)
    return type(abstract)(**fields)


def init_sharded(rule: Rule, params: ArrayTree, *, zero_axis: Optional[AxisName] = None,
                 mesh=None) -> Any:
    """``rule.init(params)`` created directly in :func:`state_shardings`' placement.

    With ``zero_axis`` each device allocates only its slice of each slot: no full-size slot
    is ever materialised on a device.
    """
    shardings = state_shardings(rule, params, zero_axis=zero_axis, mesh=mesh)
    return jax.jit(rule.init, out_shardings=shardings)(params)


def device_nbytes(tree: ArrayTree) -> Dict[Any, int]:
    """Bytes held on each device by the arrays of ``tree`` (its addressable shards).

    A replicated array counts in full on every device; a sharded one counts its shard.
    """
    out: Dict[Any, int] = {}
    for leaf in jax.tree_util.tree_leaves(tree):
        for shard in getattr(leaf, "addressable_shards", ()):
            out[shard.device] = out.get(shard.device, 0) + shard.data.nbytes
    return out
