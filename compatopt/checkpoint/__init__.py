"""Checkpoints of the functional rules under TF1's variable names.

A rule's state is a plain pytree (a NamedTuple of arrays), so any JAX checkpointer saves it
as it is; orbax-checkpoint, for example, round-trips it bit for bit and restores it into an
abstract target ``jax.eval_shape(rule.init, params)``. This module adds the bridge to
TensorFlow 1: it names every parameter, slot and non-slot value as TF1's ``Saver`` does, so
a TF1 checkpoint becomes ``(params, state)`` and back::

    "dense/kernel"          params["dense"]["kernel"]
    "dense/kernel/Adam"     state.m["dense"]["kernel"]      (first slot)
    "dense/kernel/Adam_1"   state.v["dense"]["kernel"]      (second slot)
    "beta1_power"           state.beta1_power               (non-slot)
    "global_step"           state.count (on load, by default)

A parameter's name is its dict-key path joined with ``/`` (``names=`` overrides it); slot
``k`` of a variable is ``<var>/<optimizer_name>`` suffixed ``_k`` for ``k > 0``, in the
rule's slot order (TF1's creation order; FTRL's ``accum_name``/``linear_name`` via
``slot_op_names``); ``name_map`` renames any of these.

Example (migrate a TF1 Adam checkpoint into a JAX training loop)::

    rule = compatopt.adam(1e-3)
    params, state = compatopt.checkpoint.load("tf1/model.ckpt-50", rule, params_like)
    params, state = rule.apply(grads, state, params)       # continues TF1's trajectory
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from compatopt._base import Rule
from compatopt._tf_names import NameCounters
from compatopt.checkpoint import _npz as npz
from compatopt.checkpoint._paths import NameMap, map_name, open_reader
from compatopt.checkpoint._state_file import resolve_checkpoint
from compatopt.checkpoint._tf_bundle import write_tf_bundle as write_tf_bundle
from compatopt.checkpoint._validate import read_checked

__all__ = ["tf1_names", "to_tf1", "from_tf1", "save", "load", "write_tf_bundle"]


class _Entry(NamedTuple):
    name: str       # name in the checkpoint
    kind: str       # "param" | "slot" | "non_slot"
    field: Optional[str]  # slot or non-slot field of the state
    index: int      # leaf index in the params' flattening (-1 for non-slots)
    spec: jax.ShapeDtypeStruct


def _key_str(k: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _layout(rule: Rule, params: Any, names: Any, optimizer_name: Optional[str],
            slot_op_names: Optional[Mapping[str, str]], name_map: NameMap):
    abstract = jax.eval_shape(rule.init, params)
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    if names is None:
        var_names = ["/".join(_key_str(k) for k in path) for path, _ in flat]
    else:
        var_names = treedef.flatten_up_to(names)
    slot_order = [s for s, _ in rule.definition.slots]
    op = optimizer_name or rule.name
    entries: List[_Entry] = []
    for i, ((_, leaf), vname) in enumerate(zip(flat, var_names)):
        spec = jax.ShapeDtypeStruct(np.shape(leaf), jnp.dtype(leaf.dtype))
        entries.append(_Entry(map_name(name_map, vname), "param", None, i, spec))
        scopes = NameCounters()  # TF1's variable-scope counter, per variable
        for s in slot_order:
            slot_spec = treedef.flatten_up_to(getattr(abstract, s))[i]
            scope = scopes.unique_scope(f"{vname}/{(slot_op_names or {}).get(s, op)}")
            entries.append(_Entry(map_name(name_map, scope), "slot", s, i,
                                  jax.ShapeDtypeStruct(slot_spec.shape, slot_spec.dtype)))
    for f in abstract._fields:
        value = getattr(abstract, f)
        if f != "count" and f not in slot_order and value is not None:
            entries.append(_Entry(map_name(name_map, f), "non_slot", f, -1, value))
    seen: Dict[str, _Entry] = {}
    for e in entries:
        if e.name in seen:
            raise ValueError(f"Two values map to the checkpoint name {e.name!r}; pass names= "
                             f"or name_map= to tell them apart")
        seen[e.name] = e
    return abstract, treedef, entries


def tf1_names(rule: Rule, params: Any, *, names: Any = None,
              optimizer_name: Optional[str] = None,
              slot_op_names: Optional[Mapping[str, str]] = None,
              name_map: NameMap = None) -> Dict[str, str]:
    """``{tf1_name: where}`` for every value, e.g. ``{"w/Adam": "m['w']"}`` (for
    inspection). ``params`` may hold arrays or ``jax.ShapeDtypeStruct``s."""
    _, treedef, entries = _layout(rule, params, names, optimizer_name, slot_op_names,
                                  name_map)
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    out = {}
    for e in entries:
        if e.kind == "param":
            out[e.name] = f"params{paths[e.index]}"
        elif e.kind == "slot":
            out[e.name] = f"{e.field}{paths[e.index]}"
        else:
            out[e.name] = e.field
    return out


def to_tf1(rule: Rule, params: Any, state: Any, *, global_step: Any = None, names: Any = None,
           optimizer_name: Optional[str] = None,
           slot_op_names: Optional[Mapping[str, str]] = None,
           name_map: NameMap = None) -> Dict[str, np.ndarray]:
    """``{tf1_name: array}``: params, slots and non-slot values as TF1 names them (plus
    ``"global_step"`` as int64 when ``global_step`` is given)."""
    _, treedef, entries = _layout(rule, params, names, optimizer_name, slot_op_names,
                                  name_map)
    p_leaves = treedef.flatten_up_to(params)
    out: Dict[str, np.ndarray] = {}
    for e in entries:
        if e.kind == "param":
            value = p_leaves[e.index]
        elif e.kind == "slot":
            assert e.field is not None  # _layout names the field of every slot entry
            value = treedef.flatten_up_to(getattr(state, e.field))[e.index]
        else:
            assert e.field is not None  # and of every non-slot entry
            value = getattr(state, e.field)
        out[e.name] = np.asarray(value)
    if global_step is not None:
        out["global_step"] = np.asarray(int(global_step), np.int64)
    return out


class _DictReader:
    def __init__(self, tensors: Mapping[str, Any]) -> None:
        self.path = "<tensors>"
        self._t = {k: np.asarray(v) for k, v in tensors.items()}

    def specs(self):
        return {k: (v.shape, v.dtype) for k, v in self._t.items()}

    def read(self, name):
        return self._t[name]

    def close(self):
        pass


def _assemble(reader, rule, params_like, count, expect_partial, reshape, naming
              ) -> Tuple[Any, Any]:
    abstract, treedef, entries = _layout(rule, params_like, **naming)
    wanted = {e.name: (e.spec.shape, np.dtype(e.spec.dtype)) for e in entries}
    specs = reader.specs()
    use_step = count is None and "global_step" in specs and "global_step" not in wanted
    if use_step:
        wanted["global_step"] = specs["global_step"]
    values = read_checked(reader, wanted, reshape=reshape, expect_partial=expect_partial,
                          unused_hint="Pass expect_partial=True to leave them out, or "
                                      "names=/name_map= if they are renamed parameters.")
    p_specs = treedef.flatten_up_to(params_like)

    def put(value, like):
        sharding = getattr(like, "sharding", None)
        return jax.device_put(value, sharding) if sharding is not None else jnp.asarray(value)

    p_leaves = [None] * treedef.num_leaves
    slots = {s: [None] * treedef.num_leaves for s, _ in rule.definition.slots}
    fields = {}
    for e in entries:
        like = p_specs[e.index] if e.index >= 0 else None
        if e.kind == "param":
            p_leaves[e.index] = put(values[e.name], like)
        elif e.kind == "slot":
            slots[e.field][e.index] = put(values[e.name], like)
        else:
            fields[e.field] = jnp.asarray(values[e.name])
    if count is None:
        count = int(values["global_step"]) if use_step else 0
    fields["count"] = jnp.asarray(count, abstract.count.dtype)
    for s, leaves in slots.items():
        fields[s] = jax.tree_util.tree_unflatten(treedef, leaves)
    for f in abstract._fields:
        fields.setdefault(f, None)
    return jax.tree_util.tree_unflatten(treedef, p_leaves), type(abstract)(**fields)


def from_tf1(rule: Rule, tensors: Mapping[str, Any], params_like: Any, *, count: Any = None,
             expect_partial: bool = False, reshape: bool = False, names: Any = None,
             optimizer_name: Optional[str] = None,
             slot_op_names: Optional[Mapping[str, str]] = None,
             name_map: NameMap = None) -> Tuple[Any, Any]:
    """``(params, state)`` from ``{tf1_name: array}``, shaped like ``params_like``.

    ``params_like`` holds arrays or ``jax.ShapeDtypeStruct``s (their ``sharding``, if any,
    places the restored params and slots). ``state.count`` is ``count``, else the
    checkpoint's ``global_step``, else 0. Entries nothing takes raise ``NotFoundError``
    unless ``expect_partial``; missing entries always do, mismatches raise
    ``InvalidArgumentError`` (see ``compatopt.train.Saver.restore``).
    """
    naming = dict(names=names, optimizer_name=optimizer_name, slot_op_names=slot_op_names,
                  name_map=name_map)
    return _assemble(_DictReader(tensors), rule, params_like, count, expect_partial,
                     reshape, naming)


def save(prefix: str, rule: Rule, params: Any, state: Any, *, global_step: Any = None,
         names: Any = None, optimizer_name: Optional[str] = None,
         slot_op_names: Optional[Mapping[str, str]] = None, name_map: NameMap = None,
         format: str = "npz") -> str:
    """Writes ``(params, state)`` atomically as a compatopt checkpoint ``<prefix>.npz``
    under TF1's names, or with ``format="tf"`` as a TensorFlow checkpoint (``.index`` and
    ``.data-00000-of-00001``, see :func:`write_tf_bundle`) that TF1's ``Saver`` restores;
    ``compatopt.train.Saver`` and :func:`load` read both. Returns ``prefix``."""
    if format not in ("npz", "tf"):
        raise ValueError(f"format must be 'npz' or 'tf', got {format!r}")
    tensors = to_tf1(rule, params, state, global_step=global_step, names=names,
                     optimizer_name=optimizer_name, slot_op_names=slot_op_names,
                     name_map=name_map)
    if format == "tf":
        write_tf_bundle(prefix, tensors)
    else:
        npz.write(prefix, tensors)
    return prefix


def load(path: str, rule: Rule, params_like: Any, *, count: Any = None,
         expect_partial: bool = False, reshape: bool = False, names: Any = None,
         optimizer_name: Optional[str] = None,
         slot_op_names: Optional[Mapping[str, str]] = None,
         name_map: NameMap = None) -> Tuple[Any, Any]:
    """``(params, state)`` from a checkpoint written by TF1's ``Saver`` (read natively,
    without TensorFlow), by ``compatopt.train.Saver`` or by :func:`save`; ``path`` is a
    prefix or a directory (its latest checkpoint). Arguments as :func:`from_tf1`."""
    naming = dict(names=names, optimizer_name=optimizer_name, slot_op_names=slot_op_names,
                  name_map=name_map)
    reader = open_reader(resolve_checkpoint(path))
    try:
        return _assemble(reader, rule, params_like, count, expect_partial, reshape, naming)
    finally:
        reader.close()
