"""``init_from_checkpoint`` and ``warm_start``: TF1's warm starts, over compatopt Variables.

TF1 graph mode *replaces the initializers* of the variables named, so the values are
loaded when ``global_variables_initializer()`` runs. A :class:`compatopt.Variable` already
holds its value, so here the checkpoint's values are **assigned at once**, when the call
returns; run these calls where the TF1 code ran them (after building the model, before
training). Which variable receives which tensor follows TF1's rules case by case (recorded
from TF 2.21 by ``tools/make_tf1_warm_start_fixtures.py``, checked by
``tests/train/test_warm_start.py``), and so do the exception types and messages.

Differences from TF1 (deliberate):

* **All or nothing.** Every entry is resolved, checked (names, shapes, dtypes) and read
  before any variable is assigned: a failing call changes no variable. TF1 replaces the
  initializers one by one and raises at the first bad entry, leaving the earlier ones
  replaced (``warm_start`` even raises its unused-``var_name_to_prev_var_name`` error after
  replacing them all).
* **Errors come at the call.** A dtype mismatch (``InvalidArgumentError: tensor_name = x;
  expected dtype float does not equal original dtype double``) and a partitioned
  variable's shape mismatch are raised by the call; TF1 raises them from the initializer
  run. Integer tensors load into integer variables of another width when every value fits
  (TF1's ``int64`` ``global_step`` into compatopt's ``int32`` step without
  ``jax_enable_x64``), where TF1 raises.
* **Names.** Variables are looked up by ``v.op.name`` among the default graph's
  ``global_variables()`` (TF1: the variable store of ``tf.compat.v1.get_variable``).
  compatopt has no ``PartitionedVariable``: a partitioned variable is the variables named
  ``<name>/part_0``, ``<name>/part_1``, ... (TF1's names), split along the first axis in
  that order (TF1's ``fixed_size_partitioner`` default); a list of Variables in
  ``assignment_map`` or ``vars_to_warm_start`` is such a variable's parts, first to last.
* ``warm_start``: ``var_name_to_vocab_info`` (vocabulary remapping) raises
  ``NotImplementedError``; object-based (TF2 ``tf.train.Checkpoint``) checkpoints are read
  by their keys as they are (TF1 maps variable names to the object graph's keys): pass
  ``var_name_to_prev_var_name={"dense/kernel": "model/kernel/.ATTRIBUTES/VARIABLE_VALUE"}``.
"""

from __future__ import annotations

import logging
import os
import re
from collections import abc
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from compatopt import errors
from compatopt.checkpoint._state_file import latest_checkpoint
from compatopt.train._variable import Variable, global_variables, locked, trainable_variables
from compatopt.train.checkpoint_utils import NewCheckpointReader, TF1CheckpointReader
from compatopt.train.checkpoint_utils import tf_dtype_string

__all__ = ["init_from_checkpoint", "warm_start"]

_log = logging.getLogger(__name__)

AssignmentMap = Union[Mapping[str, Any], Sequence[Tuple[str, Any]]]
_PART = re.compile(r"^(.*)/part_(\d+)$")


def _is_variable(x: Any) -> bool:
    return isinstance(x, Variable)


def _is_variable_or_list(x: Any) -> bool:
    """A Variable, or a list of Variables (a partitioned variable's parts)."""
    return _is_variable(x) or (isinstance(x, list) and all(_is_variable(v) for v in x))


def _store() -> Dict[str, Variable]:
    """TF1's variable store, as far as compatopt has one: ``{op.name: variable}``."""
    out: Dict[str, Variable] = {}
    for v in global_variables():
        out.setdefault(v.op.name, v)
    return out


def _collect_partitioned_variable(name: Any, all_vars: Mapping[str, Variable]
                                  ) -> Optional[List[Variable]]:
    """The parts ``<name>/part_0``, ``<name>/part_1``, ... of a partitioned variable (TF1's
    helper, including its ``TypeError`` for a target that is not a string)."""
    if name + "/part_0" in all_vars:
        var, i = [], 0
        while name + "/part_%d" % i in all_vars:
            var.append(all_vars[name + "/part_%d" % i])
            i += 1
        return var
    return None


def _checkpoint_file(ckpt_dir_or_file: Any) -> str:
    path = os.fspath(ckpt_dir_or_file)
    if os.path.isdir(path):
        latest = latest_checkpoint(path)
        if latest is None:
            raise ValueError("Couldn't find 'checkpoint' file or checkpoints in given "
                             "directory %s" % ckpt_dir_or_file)
        return latest
    return path


class _Plan:
    """What one ``init_from_checkpoint`` will assign: ``(variable, tensor_name, rows)``
    triples (``rows``: the slice of the tensor's first axis, for a partition)."""

    def __init__(self, reader: TF1CheckpointReader, label: Any) -> None:
        self.reader = reader
        self.label = label
        self.specs = reader.specs()
        self.items: List[Tuple[Variable, str, Optional[slice]]] = []

    def check_dtype(self, var: Variable, tensor_name: str) -> None:
        have = np.dtype(self.specs[tensor_name][1])
        want = np.dtype(var.dtype)
        if have != want and not (have.kind in "iu" and want.kind in "iu"):
            raise errors.InvalidArgumentError(
                f"tensor_name = {tensor_name}; expected dtype {tf_dtype_string(want)} does "
                f"not equal original dtype {tf_dtype_string(have)}")

    def add(self, var_or_list: Any, tensor_name: str) -> None:
        """TF1's ``_set_variable_or_list_initializer``, checked now instead of at run time."""
        if not isinstance(var_or_list, (list, tuple)):
            self.check_dtype(var_or_list, tensor_name)
            self.items.append((var_or_list, tensor_name, None))
            return
        parts = list(var_or_list)
        full = tuple(int(d) for d in self.specs[tensor_name][0])
        if parts:
            rest = parts[0].shape[1:]
            if any(len(p.shape) == 0 or p.shape[1:] != rest for p in parts):
                raise ValueError("Slices must all be from the same tensor: %s" %
                                 ", ".join(f"{p.name} {p.shape}" for p in parts))
            spec = (sum(p.shape[0] for p in parts),) + tuple(rest)
            if spec != full:
                raise errors.InvalidArgumentError(
                    f"tensor_name = {tensor_name}; shape in shape_and_slice spec "
                    f"[{','.join(map(str, spec))}] does not match the shape stored in "
                    f"checkpoint: [{','.join(map(str, full))}]")
        start = 0
        for p in parts:
            self.check_dtype(p, tensor_name)
            self.items.append((p, tensor_name, slice(start, start + p.shape[0])))
            start += p.shape[0]

    def read(self) -> List[Tuple[Variable, np.ndarray]]:
        """Every value, read and converted, before anything is assigned."""
        cache: Dict[str, np.ndarray] = {}
        out = []
        for var, name, rows in self.items:
            if name not in cache:
                cache[name] = self.reader.get_tensor(name)
            value = cache[name] if rows is None else cache[name][rows]
            want = np.dtype(var.dtype)
            if value.dtype != want:  # integers of another width (check_dtype allowed them)
                info = np.iinfo(want)
                if value.size and (value.min() < info.min or value.max() > info.max):
                    raise errors.InvalidArgumentError(
                        f"tensor_name = {name}; expected dtype {tf_dtype_string(want)} does "
                        f"not equal original dtype {tf_dtype_string(value.dtype)} (and its "
                        f"values do not fit)")
                value = value.astype(want)
            out.append((var, np.asarray(value).reshape(var.shape)))
        return out


def _plan(ckpt_dir_or_file: Any, assignment_map: Any) -> _Plan:
    """TF1's ``_init_from_checkpoint`` with the initializer replacement left out."""
    ckpt_file = _checkpoint_file(ckpt_dir_or_file)
    plan = _Plan(NewCheckpointReader(ckpt_file), ckpt_dir_or_file)
    variable_map = plan.reader.get_variable_to_shape_map()
    if isinstance(assignment_map, abc.Mapping):
        assignment_map = assignment_map.items()
    store_vars = _store()
    for tensor_name_in_ckpt, target in sorted(assignment_map, key=lambda pair: pair[0]):
        current_var_or_name: Any = target
        var: Any = None
        if _is_variable_or_list(current_var_or_name):
            var = current_var_or_name
        else:
            var = store_vars.get(current_var_or_name, None)
            if var is None:
                var = _collect_partitioned_variable(current_var_or_name, store_vars)
        if var is not None:
            if tensor_name_in_ckpt not in variable_map:
                raise ValueError("Tensor %s is not found in %s checkpoint %s" % (
                    tensor_name_in_ckpt, ckpt_dir_or_file, variable_map))
            if _is_variable(var):
                want = list(variable_map[tensor_name_in_ckpt])
                if list(var.shape) != want:
                    raise ValueError(
                        "Shape of variable %s (%s) doesn't match with shape of tensor %s (%s) "
                        "from checkpoint reader." % (var.name, str(tuple(var.shape)),
                                                     tensor_name_in_ckpt, str(want)))
            plan.add(var, tensor_name_in_ckpt)
            continue
        # Scope to scope, exactly as TF1 (including its corner cases: a target that is not a
        # variable is taken as a scope; names are cut at their first "/part_").
        scopes = ""
        if "/" in current_var_or_name:
            scopes = current_var_or_name[:current_var_or_name.rindex("/")]
        if not tensor_name_in_ckpt.endswith("/"):
            raise ValueError(
                "Assignment map with scope only name {} should map to scope only {}. Should "
                "be 'scope/': 'other_scope/'.".format(scopes, tensor_name_in_ckpt))
        scope_variables = set()
        for var_name in store_vars:
            if not scopes or var_name.startswith(scopes + "/"):
                if "/part_" in var_name:
                    var_name = var_name[:var_name.index("/part_")]
                scope_variables.add(var_name)
        for var_name in sorted(scope_variables):
            full_tensor_name = var_name[len(scopes):]
            if current_var_or_name != "/":
                full_tensor_name = full_tensor_name[1:]
            if tensor_name_in_ckpt != "/":
                full_tensor_name = tensor_name_in_ckpt + full_tensor_name
            if full_tensor_name.endswith("/"):
                full_tensor_name = full_tensor_name[:-1]
            if full_tensor_name not in variable_map:
                raise ValueError("Tensor %s (%s in %s) is not found in %s checkpoint" % (
                    full_tensor_name, var_name[len(scopes) + 1:], tensor_name_in_ckpt,
                    ckpt_dir_or_file))
            var = store_vars.get(var_name, None)
            if var is None:
                var = _collect_partitioned_variable(var_name, store_vars)
            plan.add(var, full_tensor_name)
    return plan


def _apply(values: List[Tuple[Variable, np.ndarray]], label: Any) -> None:
    with locked(v for v, _ in values):  # all at once: no compiled step sees half of it
        for var, value in values:
            var.assign(value)
            _log.debug("Initialize variable %s from checkpoint %s", var.name, label)


def init_from_checkpoint(ckpt_dir_or_file: Any, assignment_map: AssignmentMap) -> None:
    """``tf.compat.v1.train.init_from_checkpoint``: loads variables from a checkpoint, now.

    ``ckpt_dir_or_file`` is a checkpoint prefix or a directory (its latest checkpoint),
    compatopt's or TensorFlow's. ``assignment_map`` is a dict or a list of pairs
    ``(name_in_checkpoint, target)`` (a list lets one tensor initialize several
    variables), in TF1's forms:

    * ``{'old_scope/': 'new_scope/'}``: every variable under ``new_scope/`` from the tensor
      of the same name under ``old_scope/``;
    * ``{'old_scope/var': 'new_scope/var'}``: one variable, by name (``v.op.name``);
    * ``{'old_scope/var': variable}``: one :class:`~compatopt.Variable`;
    * ``{'old_scope/var': [part_0, part_1]}``, or the name of a partitioned variable: its
      parts (``<name>/part_<i>``) from consecutive rows of the tensor;
    * ``{'/': 'scope/'}``: every variable under ``scope/`` from the checkpoint's root;
      ``{'/': '/'}``: every variable from the tensor of its own name.

    Entries are processed in order of their checkpoint names; a variable named twice gets
    the last one. Raises, as TF1, ``ValueError`` for a directory without a checkpoint, a
    tensor the checkpoint lacks ("Tensor x is not found in <path> checkpoint {...}"), a
    target that is neither a variable nor a scope ("Assignment map with scope only name
    ..."), a scope variable without its tensor, and a shape mismatch ("Shape of variable
    ... doesn't match ..."); ``NotFoundError`` for a path that is not a checkpoint;
    ``InvalidArgumentError`` for a dtype mismatch or partitions that do not tile the
    tensor; ``TypeError`` for a target of another type. On any error no variable changes.

    Difference from TF1: the values are assigned when the call returns (TF1 replaces the
    initializers, run later by ``global_variables_initializer``), and everything is checked
    first; see the module docstring.
    """
    plan = _plan(ckpt_dir_or_file, assignment_map)
    _apply(plan.read(), ckpt_dir_or_file)


# ------------------------------------------------------------------------------ warm start


def _var_name(parts: List[Variable]) -> str:
    """The name of a variable or of a partitioned variable's parts (``op_list_to_dict``)."""
    names: Dict[str, Any] = {}
    for v in sorted(parts, key=lambda x: x.name):
        m = _PART.match(v.op.name)
        if m:
            names.setdefault(m.group(1), []).append(v)
        else:
            if v.op.name in names:
                raise ValueError(f"At least two variables have the same name: {v.op.name}")
            names[v.op.name] = v
    if len(names) > 1:
        raise TypeError("`var` = %s passed as arg violates the constraints.  name_to_var_dict "
                        "= %s" % (parts, names))
    return next(iter(names))


def _get_grouped_variables(vars_to_warm_start: Any) -> Dict[str, List[Variable]]:
    """TF1's ``_get_grouped_variables``: ``{name: [variable or parts]}``."""
    if isinstance(vars_to_warm_start, str) or vars_to_warm_start is None:
        _log.info("Warm-starting variables only in TRAINABLE_VARIABLES.")
        list_of_vars = _collection(trainable_variables(), vars_to_warm_start)
    elif isinstance(vars_to_warm_start, list):
        if all(isinstance(v, str) for v in vars_to_warm_start):
            list_of_vars = []
            for v in vars_to_warm_start:
                list_of_vars += _collection(global_variables(), v)
        elif all(_is_variable(v) for v in vars_to_warm_start):
            list_of_vars = vars_to_warm_start
        else:
            raise ValueError("If `vars_to_warm_start` is a list, it must be all `Variable` or "
                             "all `str`.  Given types are {}".format(
                                 [type(v) for v in vars_to_warm_start]))
    else:
        raise ValueError("`vars_to_warm_start must be a `list` or `str`.  Given type is {}"
                         .format(type(vars_to_warm_start)))
    grouped: Dict[str, List[Variable]] = {}
    for v in list_of_vars:
        grouped.setdefault(_var_name([v]), []).append(v)
    return grouped


def _collection(variables: List[Variable], scope: Optional[str]) -> List[Variable]:
    """``get_collection(key, scope)``: ``re.match(scope, v.name)`` (``"w:0"``)."""
    if scope is None:
        return list(variables)
    regex = re.compile(scope)
    return [v for v in variables if regex.match(v.name)]


def warm_start(ckpt_to_initialize_from: Any, vars_to_warm_start: Any = ".*",
               var_name_to_vocab_info: Optional[Mapping[str, Any]] = None,
               var_name_to_prev_var_name: Optional[Mapping[str, str]] = None) -> None:
    """``tf.compat.v1.train.warm_start``: loads the selected variables from a checkpoint, now.

    ``vars_to_warm_start``, as TF1:

    * a regex string (default ``'.*'``): the ``trainable_variables()`` whose ``v.name``
      (``"dense/kernel:0"``) it matches from the start (``re.match``);
    * a list of regex strings (e.g. full names): ``global_variables()`` matching any, so
      non-trainable ones (optimizer slots, ``global_step``) too;
    * a list of Variables;
    * ``None``, ``''`` or ``[]``: nothing (TF1 then warm-starts only variables with a
      vocabulary, which compatopt does not support).

    Each variable loads the tensor of its own name (a partitioned one, ``<name>/part_<i>``,
    the tensor ``<name>``), or ``var_name_to_prev_var_name[name]``; two variables may load
    the same tensor. Raises as :func:`init_from_checkpoint`, plus ``ValueError`` for a
    ``vars_to_warm_start`` of another type or a mixed list, a variable selected twice
    ("At least two variables have the same name"), and names in
    ``var_name_to_prev_var_name`` that no selected variable has ("You provided the
    following variables in var_name_to_prev_var_name that were not used: ..."). On any
    error no variable changes.

    Differences from TF1: values are assigned now and all or nothing (see the module
    docstring); ``var_name_to_vocab_info`` raises ``NotImplementedError``; object-based
    checkpoints need their keys in ``var_name_to_prev_var_name``.
    """
    if var_name_to_vocab_info:
        raise NotImplementedError(
            "warm_start(var_name_to_vocab_info=...) is not supported by compatopt: "
            "vocabulary remapping (tf.estimator.VocabInfo, load_and_remap_matrix) is not "
            "implemented. Remap the rows yourself: read the old tensor with "
            "compatopt.train.load_variable(ckpt, name), build the new matrix and assign it "
            "(variable.assign(new)); warm-start the other variables with warm_start or "
            "init_from_checkpoint.")
    _log.info("Warm-starting from: %s", ckpt_to_initialize_from)
    grouped = _get_grouped_variables(vars_to_warm_start)
    prev_names = dict(var_name_to_prev_var_name or {})
    prev_var_name_used = set()
    pairs: List[Tuple[str, Any]] = []
    for var_name, variable in grouped.items():
        prev_var_name = prev_names.get(var_name)
        if prev_var_name:
            prev_var_name_used.add(var_name)
        if vars_to_warm_start:
            target: Any = variable[0] if len(variable) == 1 else list(variable)
            if isinstance(target, list):
                _var_name(target)  # parts of one variable, or TF1's TypeError/ValueError
            pairs.append((prev_var_name or var_name, target))
    # Checked and read before the unused-name check, as TF1 raises in that order too.
    values = _plan(ckpt_to_initialize_from, pairs).read() if pairs else []
    not_used = set(prev_names) - prev_var_name_used
    if not_used:
        raise ValueError(
            "You provided the following variables in var_name_to_prev_var_name that were not "
            "used: {0}.  Perhaps you misspelled them?  Here is the list of viable variable "
            "names: {1}".format(not_used, grouped.keys()))
    _apply(values, ckpt_to_initialize_from)
    _log.info("Warm-started %d variables.", len(pairs))
