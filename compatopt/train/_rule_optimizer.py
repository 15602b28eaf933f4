"""``RuleOptimizer``: the base of the ten built-in classes; every update is a rule's ``apply``.

The shim holds no math. A built-in optimizer keeps its TF1 constructor arguments and, per
``apply_gradients``, maps its variables, their slots and its non-slot variables onto the
functional rule's pytrees (``params``, ``state.<slot>``, ``state.beta1_power`` ...), runs
``rule.apply`` in one ``jax.jit``-compiled call (cached by jax per structure, shapes and
dtypes, so a training loop compiles once) and stores the results.

Hyper-parameters given as Python numbers are compiled in as constants; callables (TF1 calls
them once per apply, in ``_prepare``), arrays and Variables are read in ``_prepare`` and
passed as arguments, so a decaying learning rate does not recompile.

A subclass that overrides a TF1 hook (``_create_slots``, ``_prepare``,
``_resource_apply_dense`` ...) gets TF1's per-variable loop instead; the built-in hooks then
run the rule on one variable at a time (``_finish`` runs the rule's once-per-apply part).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, cast

import jax
import jax.numpy as jnp
from jax import lax

from compatopt import _numerics, _rule, _sparse
from compatopt._base import IndexedSlices, Rule
from compatopt.train import _packing
from compatopt.train._lazy import LazyTensor
from compatopt.train._lifting import in_discovery_run
from compatopt.train._slots import create_slot
from compatopt.train._variable import Variable
from compatopt.train.optimizer import Optimizer


def _placement(v: Variable):
    """The variable's NamedSharding (slots are created with it), or None."""
    stored = v.buffer
    if not _numerics.is_concrete(stored) or jax.sharding.get_abstract_mesh().manual_axes:
        return None
    sharding = getattr(stored, "sharding", None)
    return sharding if isinstance(sharding, jax.sharding.NamedSharding) else None

_HOOKS = ("_create_slots", "_prepare", "_apply_dense", "_resource_apply_dense",
          "_apply_sparse", "_resource_apply_sparse", "_apply_sparse_duplicate_indices",
          "_resource_apply_sparse_duplicate_indices", "_finish", "_apply_updates")
_BUILTINS: set = set()


def _placeholder(count: jax.Array) -> jax.Array:
    return jnp.zeros((), jnp.float32)


def _is_static(value: Any) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


class RuleOptimizer(Optimizer):
    """A TF1 optimizer class backed by a functional rule.

    Subclasses set ``_rule_fn`` (the core constructor), ``_kernel_hypers`` (the arguments TF1
    converts in ``_prepare``), ``_callables_ok`` (whether TF1 calls a callable there) and
    call :meth:`_init_rule` with every constructor argument of the rule.
    """

    _rule_fn: Callable[..., Rule]
    _kernel_hypers: tuple = ()
    _callables_ok: bool = False

    def __init_subclass__(cls, builtin: bool = False, **kw) -> None:
        super().__init_subclass__(**kw)
        if builtin:
            _BUILTINS.add(cls)

    def _init_rule(self, args: Dict[str, Any]) -> None:
        self._args = dict(args)
        self._dyn: Dict[str, jax.Array] = {}
        self._jit_apply = jax.jit(self._pure_apply)
        self._jit_finish = jax.jit(self._pure_finish)
        # Schedule placeholders for the dynamic values: the rule validates a concrete value,
        # and a zero would fail ProximalAdagrad's ``lr > 0`` (only structure is read here).
        self._meta = self._build({k: _placeholder for k in self._dynamic_keys()})
        slot_names = [name for name, _ in self._meta.definition.slots]
        state = jax.eval_shape(self._meta.init, [])
        self._names = (slot_names, [f for f in state._fields if f != "count"
                                    and f not in slot_names and getattr(state, f) is not None])

    # ------------------------------------------------------------------ rule plumbing
    def _dynamic_keys(self) -> list:
        return [k for k in self._kernel_hypers if not _is_static(self._args[k])]

    def _extra_args(self, dyn: dict) -> dict:
        """Arguments the rule needs beyond the hyper-parameters (AdagradDA's step)."""
        return {}

    def _build(self, dyn: dict) -> Rule:
        args = {k: v for k, v in self._args.items() if k not in dyn}
        args.update({k: v for k, v in dyn.items() if not k.startswith("_")})
        args.update(self._extra_args(dyn))
        return type(self)._rule_fn(**args)

    def _slot_op_name(self, slot_name: str) -> str:
        return self._name

    def _slot_names(self) -> list:
        return self._names[0]

    def _non_slot_names(self) -> list:
        return self._names[1]

    def _pure_apply(self, dyn, grads, params, slots, non_slots):
        rule = self._build(dyn)
        state = rule.definition.state_type(count=jnp.zeros((), jnp.int32), **non_slots, **slots)
        new_params, new_state = rule.apply(grads, state, params)
        return (new_params, {s: getattr(new_state, s) for s in slots},
                {n: getattr(new_state, n) for n in non_slots})

    def _pure_finish(self, dyn, non_slots):
        _, slots, non_slots = self._pure_apply(dyn, {}, {}, {s: {} for s in self._slot_names()},
                                               non_slots)
        return non_slots

    def _uses_fast_path(self) -> bool:
        cls = type(self)
        base = next((c for c in cls.__mro__ if c in _BUILTINS), None)
        return base is not None and all(getattr(cls, h) is getattr(base, h) for h in _HOOKS)

    # ---------------------------------------------------------------------- TF1 hooks
    def _resolve(self, name: str, value: Any) -> jax.Array:
        if isinstance(value, LazyTensor):  # a decayed rate: a tensor in TF1 graph mode
            value = value()
        elif callable(value) and not isinstance(value, Variable):
            if not self._callables_ok:
                raise ValueError(f"Attempt to convert a value ({value!r}) with an unsupported "
                                 f"type ({type(value)}) to a Tensor.")
            value = value()
        if isinstance(value, Variable):
            value = value.value
        return _numerics.to_tf_tensor(value)

    def _prepare(self) -> None:
        dyn = {k: self._resolve(k, self._args[k]) for k in self._dynamic_keys()}
        # TF1's kernels check their scalar inputs when they run (graph mode): here, on the
        # values this step reads, before anything is computed or written.
        _rule.check_kernel_inputs(self._meta.definition, dyn)
        self._dyn = dyn

    def _create_slots(self, var_list) -> None:
        names = [n for n in self._non_slot_names() if self._get_non_slot_variable(n) is None]
        if names:
            dyn = {k: self._resolve(k, self._args[k]) for k in self._dynamic_keys()}
            first = min(var_list, key=lambda v: v.name)
            place = _placement(first)
            with jax.ensure_compile_time_eval():
                init = self._build(dyn).init([])
                if place is not None:  # replicated on the first variable's mesh
                    rep = jax.sharding.NamedSharding(place.mesh, jax.sharding.PartitionSpec())
                    init = jax.tree_util.tree_map(lambda x: jax.device_put(x, rep), init)
            for n in names:
                self._create_non_slot_variable(getattr(init, n), n, first)
        for v in var_list:
            for slot_name, init_fn in self._meta.definition.slots:
                named = self._slot_dict(slot_name)
                if v not in named:
                    spec = jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=_placement(v))
                    named[v] = create_slot(v, lambda f=init_fn, s=spec: f(s),
                                           self._slot_op_name(slot_name), id(named))

    # ``_create_slots`` made every slot and non-slot variable these read; ``cast`` is only for
    # the checker (a missing one still fails as before, on ``None``).
    def _state_of(self, var_list, keys: Optional[list] = None) -> tuple:
        keys = keys if keys is not None else list(range(len(var_list)))
        slots = {s: {k: cast(Variable, self.get_slot(v, s)).value for k, v in zip(keys, var_list)}
                 for s in self._slot_names()}
        non_slots = {n: cast(Variable, self._get_non_slot_variable(n)).value
                     for n in self._non_slot_names()}
        return slots, non_slots

    def _packed_groups(self, pairs) -> tuple:
        """The packs this apply may update whole, and the pairs left for the per-variable
        path: ``([(pack, slot packs, gradients in pack order)], rest)``.

        A pack qualifies inside a compiled step that lifts it whole, when every member has
        a dense gradient of its shape and dtype here and each slot of this optimizer fills
        a pack of the same layout (``_packing``); the rule then runs once over the flat
        buffers, elementwise, so each element gets the per-variable path's bits.
        """
        by_pack: dict = {}
        for g, v in pairs:
            pack = v._pack
            if (pack is not None and isinstance(g, jax.Array) and g.dtype == v.dtype
                    and tuple(g.shape) == v.shape):
                by_pack.setdefault(pack, {})[v] = g
        groups, covered = [], set()
        for pack, grads in by_pack.items():
            if len(grads) != len(pack.members) or _packing.pack_value(pack) is None:
                continue
            slot_packs = []
            for s in self._slot_names():
                slots = tuple(self.get_slot(v, s) for v in pack.members)
                first = slots[0]
                sp = first._pack if first is not None else None
                if sp is None or sp.members != slots or _packing.pack_value(sp) is None:
                    break
                slot_packs.append(sp)
            else:
                groups.append((pack, slot_packs, [grads[v] for v in pack.members]))
                covered.update(pack.members)
        return groups, [(g, v) for g, v in pairs if v not in covered]

    def _run(self, pairs, store_non_slots: bool) -> None:
        for g, v in pairs:
            if isinstance(g, IndexedSlices) and len(v.shape) >= 1:
                _sparse.check_indices(g.indices, v.shape[0], f"{self._name} ({v.op.name})")
        packed, pairs = self._packed_groups(pairs)
        var_list = [v for _, v in pairs]
        # The rule sees a dict keyed by the variables' names, so its errors name the variable
        # (``parameter ['hidden/kernel']``), not a list position.
        keys = [v.op.name for v in var_list]
        if len(set(keys)) != len(keys):  # same names from different graphs
            keys = [f"{k} ({i})" for i, k in enumerate(keys)]
        slots, non_slots = self._state_of(var_list, keys)
        grads = {k: g for k, (g, _) in zip(keys, pairs)}
        params = {k: v.value for k, v in zip(keys, var_list)}
        pack_keys = []
        for pack, slot_packs, pack_grads in packed:
            key = f"{pack.members[0].op.name} (packed with {len(pack.members) - 1} more)"
            pack_keys.append(key)
            grads[key] = lax.concatenate([lax.reshape(g, (g.size,)) for g in pack_grads], 0)
            params[key] = cast(_packing.PackValue, _packing.pack_value(pack)).buffer
            for s, sp in zip(self._slot_names(), slot_packs):
                slots[s][key] = cast(_packing.PackValue, _packing.pack_value(sp)).buffer
        # A discovery run's results are thrown away: compiling the whole apply (seconds at
        # thousands of variables) would be wasted; op by op, each leaf's kernel is cached.
        apply = self._pure_apply if in_discovery_run() else self._jit_apply
        new_p, new_s, new_n = apply(self._dyn, grads, params, slots, non_slots)
        for key, (pack, slot_packs, _) in zip(pack_keys, packed):
            _packing.write_pack(pack, new_p[key])
            for s, sp in zip(self._slot_names(), slot_packs):
                _packing.write_pack(sp, new_s[s][key])
        for k, v in zip(keys, var_list):
            v.assign(new_p[k])
            for s in new_s:
                cast(Variable, self.get_slot(v, s)).assign(new_s[s][k])
        if store_non_slots:
            for n, value in new_n.items():
                cast(Variable, self._get_non_slot_variable(n)).assign(value)

    def _resource_apply_dense(self, grad, handle):
        self._run([(grad, handle)], store_non_slots=False)

    def _resource_apply_sparse(self, grad, handle, indices):
        self._run([(IndexedSlices(grad, indices, handle.shape), handle)], store_non_slots=False)

    def _finish(self, update_ops, name_scope):
        names = self._non_slot_names()
        if names:
            _, non_slots = self._state_of([])
            finish = self._pure_finish if in_discovery_run() else self._jit_finish
            for n, value in finish(self._dyn, non_slots).items():
                cast(Variable, self._get_non_slot_variable(n)).assign(value)

    def _apply_updates(self, pairs: list, name: str) -> None:
        vars_ = [v for _, v in pairs]
        if not self._uses_fast_path() or len(set(vars_)) != len(vars_):
            return super()._apply_updates(pairs, name)
        self._prepare()
        self._run(pairs, store_non_slots=True)
        for _, v in pairs:
            if v.constraint is not None:
                v.assign(v.constraint(v))
