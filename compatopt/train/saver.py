"""``compatopt.train.Saver``: ``tf.compat.v1.train.Saver`` over compatopt Variables.

Checkpoints are keyed by TF1's names: variables by ``op.name`` (``"w"``), slots
(``"w/Adam"``, ``"w/Adam_1"``), non-slot variables (``"beta1_power"``) and the global step
(``"global_step"``), so a TF1 training resumes with its optimizer state. ``save`` writes
compatopt's own file (``<prefix>.npz``, see ``compatopt.checkpoint._npz``) atomically, or with
``format="tf"`` TensorFlow's tensor bundle (``<prefix>.index``, ``.data-00000-of-00001``,
which TF1's ``Saver.restore`` reads), and updates the ``checkpoint`` state file;
``restore`` reads both formats, TensorFlow's with compatopt's native reader (no TensorFlow
needed, ``compatopt.checkpoint._bundle_format``).

Differences from TF1 (all deliberate):

* ``var_list=None`` means the default graph's ``global_variables()`` *when ``save`` or
  ``restore`` runs* (TF1 fixes them when the ``Saver`` is built, and refuses ``None`` in
  eager mode), so the order of ``Saver()`` and slot creation does not matter.
* ``restore`` validates every entry before assigning any: a missing key, a shape or dtype
  mismatch or a damaged file raises and leaves every variable unchanged. With
  ``var_list=None`` it also refuses checkpoint entries that no variable takes (typically
  slots that do not exist yet: see :func:`create_slots`), unless ``expect_partial=True``.
* No ``.meta`` graph is written; graph-only arguments are accepted and ignored.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from compatopt.checkpoint import _npz as npz
from compatopt.checkpoint import _state_file as state_file
from compatopt.checkpoint._paths import NameMap, map_name, open_reader, remove_checkpoint
from compatopt.checkpoint._paths import checkpoint_exists as checkpoint_exists
from compatopt.checkpoint._reader import CheckpointReader as CheckpointReader
from compatopt.checkpoint._reader import convert_tf1_checkpoint as convert_tf1_checkpoint
from compatopt.checkpoint._reader import list_variables as list_variables
from compatopt.checkpoint._reader import load_checkpoint as load_checkpoint
from compatopt.checkpoint._reader import load_variable as load_variable
from compatopt.checkpoint._state_file import get_checkpoint_state as get_checkpoint_state
from compatopt.checkpoint._state_file import latest_checkpoint as latest_checkpoint
from compatopt.checkpoint._tf_bundle import write_tf_bundle
from compatopt.checkpoint._validate import read_checked
from compatopt.train._create_slots import create_slots as create_slots
from compatopt.train._global_step import get_global_step
from compatopt.train._variable import Variable, global_variables, locked, read_together

__all__ = ["CheckpointReader", "Saver", "checkpoint_exists", "convert_tf1_checkpoint",
           "create_slots", "get_checkpoint_state", "latest_checkpoint", "list_variables",
           "load_checkpoint", "load_variable"]

_log = logging.getLogger(__name__)
_now = time.time  # the clock keep_checkpoint_every_n_hours reads (tests replace it)

_UNUSED_HINT = (
    "If they are optimizer slots or non-slot variables ('w/Adam', 'beta1_power'), create "
    "them before restoring: compatopt.train.create_slots(optimizer, var_list) (TF1 creates "
    "them in the first minimize/apply_gradients). Map renamed variables with "
    "var_list={name_in_checkpoint: variable} or name_map; pass expect_partial=True to "
    "leave entries out on purpose.")


def _flatten(x: Any) -> list:
    if isinstance(x, (list, tuple)):
        return [leaf for item in x for leaf in _flatten(item)]
    return [x]


class Saver:
    """Saves and restores variables, slots, non-slot variables and the global step.

    Args:
      var_list: ``None`` (all ``global_variables()`` at save/restore time), a list of
        :class:`~compatopt.Variable` (keyed by ``v.op.name``), or a dict
        ``{name_in_checkpoint: Variable}`` to restore renamed variables.
      reshape: allow restoring a tensor with a different shape but the same number of
        elements (TF1's ``reshape``).
      max_to_keep: how many recent checkpoints ``save`` keeps (older files are deleted);
        ``None`` or ``0`` keeps all.
      keep_checkpoint_every_n_hours: additionally keep one checkpoint per this many hours.
      name_map: ``{variable_name: name_in_checkpoint}`` or a function of the variable name,
        applied to list/``None`` ``var_list`` names in both ``save`` and ``restore`` (e.g.
        ``lambda n: "model/" + n`` for a checkpoint written under a ``model`` scope).
      allow_empty: save/restore nothing instead of raising when there are no variables.
      pad_step_number: ``model.ckpt-00000100`` instead of ``model.ckpt-100``.
      format: what ``save`` writes: ``"npz"`` (compatopt's one file ``<prefix>.npz``) or
        ``"tf"`` (TensorFlow's V2 bundle, ``<prefix>.index`` + ``.data-00000-of-00001``, byte
        for byte what TF1's ``Saver`` writes, so TensorFlow restores it). ``restore``
        reads either, whatever this is.
      sharded, name, restore_sequentially, saver_def, builder, defer_build, write_version,
        save_relative_paths, filename: accepted for TF1 compatibility, ignored (the state
        file always holds paths relative to its directory).

    Example::

      saver = compatopt.train.Saver(max_to_keep=3)
      path = saver.save(None, "ckpt/model.ckpt", global_step=step)   # "ckpt/model.ckpt-100"
      saver.restore(None, compatopt.train.latest_checkpoint("ckpt"))
    """

    def __init__(self, var_list: Any = None, reshape: bool = False, sharded: bool = False,
                 max_to_keep: Optional[int] = 5, keep_checkpoint_every_n_hours: float = 10000.0,
                 name: Optional[str] = None, restore_sequentially: bool = False,
                 saver_def: Any = None, builder: Any = None, defer_build: bool = False,
                 allow_empty: bool = False, write_version: Any = None,
                 pad_step_number: bool = False, save_relative_paths: bool = False,
                 filename: Optional[str] = None, name_map: NameMap = None,
                 format: str = "npz") -> None:
        if format not in ("npz", "tf"):
            raise ValueError(f"format must be 'npz' or 'tf', got {format!r}")
        self._format = format
        if isinstance(var_list, dict):
            for k, v in var_list.items():
                if not isinstance(k, str):
                    raise TypeError(f"var_list keys must be checkpoint names (str), got {k!r}")
                if not isinstance(v, Variable):
                    raise TypeError(f"var_list[{k!r}] must be a compatopt.Variable, got {v!r}")
            var_list = dict(var_list)
        elif var_list is not None:
            var_list = _flatten(var_list)
            for v in var_list:
                if not isinstance(v, Variable):
                    raise TypeError(f"Variable to save is not a compatopt.Variable: {v!r}")
        if var_list is not None and not var_list and not allow_empty:
            raise ValueError("No variables to save")
        self._var_list = var_list
        self._name_map = name_map
        self._reshape = reshape
        self._max_to_keep = max_to_keep
        self._keep_every_s = keep_checkpoint_every_n_hours * 3600.0
        self._next_keep_time = _now() + self._keep_every_s
        self._allow_empty = allow_empty
        self._pad_step_number = pad_step_number
        self._last_checkpoints: List[Tuple[str, float]] = []
        self._to_delete: List[Tuple[str, float]] = []
        self._lock = threading.RLock()
        if var_list is not None:
            self._targets()  # duplicate names fail now, as in TF1

    # ------------------------------------------------------------------ variables
    def _targets(self) -> Dict[str, Variable]:
        """``{name_in_checkpoint: variable}`` for this call."""
        if isinstance(self._var_list, dict):
            return dict(self._var_list)
        variables = global_variables() if self._var_list is None else self._var_list
        out: Dict[str, Variable] = {}
        for v in variables:
            key = map_name(self._name_map, v.op.name)
            if key in out and out[key] is not v:
                raise ValueError(f"At least two variables have the same name: {key}")
            out[key] = v
        if not out and not self._allow_empty:
            raise ValueError("No variables to save")
        return out

    # ----------------------------------------------------------------------- save
    def save(self, sess: Any = None, save_path: Any = None, global_step: Any = None,
             latest_filename: Optional[str] = None, meta_graph_suffix: str = "meta",
             write_meta_graph: bool = True, write_state: bool = True,
             strip_default_attrs: bool = False, save_debug_info: bool = False) -> str:
        """Writes a checkpoint; returns its prefix (``save_path`` or ``save_path-<step>``).

        ``sess`` is TF1's session argument, ignored (pass ``None``); ``saver.save(path)``
        also works. ``global_step`` (an int or the step Variable) is appended to the path.
        The state file ``latest_filename`` (default ``checkpoint``) in the same directory
        is updated unless ``write_state=False``, and checkpoints beyond ``max_to_keep`` are
        deleted. The write is atomic: a crash leaves the previous checkpoint intact
        (``format="tf"``: each file is replaced atomically, the data file first; the
        graph's int32 global step is written as TF1's int64).
        """
        if save_path is None and isinstance(sess, (str, os.PathLike)):
            sess, save_path = None, sess
        if not isinstance(save_path, (str, os.PathLike)):
            raise TypeError(f"save_path must be a path, got {save_path!r}")
        save_path = os.fspath(save_path)
        if latest_filename is None:
            latest_filename = state_file.DEFAULT_FILENAME
        if os.path.split(latest_filename)[0]:
            raise ValueError("'latest_filename' must not contain path components")
        save_dir = os.path.dirname(save_path) or "."
        if not os.path.isdir(save_dir):
            raise ValueError(f"Parent directory of {save_path} doesn't exist, can't save.")
        targets = self._targets()
        # One consistent step: every value (and the step number in the name) is read while
        # no compiled step holding these variables' locks runs.
        step_var = [global_step] if isinstance(global_step, Variable) else []
        values = read_together([*targets.values(), *step_var])
        tensors = {k: np.asarray(value) for k, value in zip(targets, values)}
        if self._format == "tf":  # TF1's global step is int64 (compatopt's: int32 w/o x64)
            step_of_graph = get_global_step()
            for k, v in targets.items():
                if v is step_of_graph and tensors[k].dtype == np.int32:
                    tensors[k] = tensors[k].astype(np.int64)
        if global_step is not None:
            step = _step_value(values[-1] if step_var else global_step)
            fmt_step = "%s-%08d" if self._pad_step_number else "%s-%d"
            checkpoint_file = fmt_step % (save_path, step)
        else:
            checkpoint_file = save_path
        with self._lock:  # concurrent saves: the state file never lists a deleted checkpoint
            if self._format == "tf":
                write_tf_bundle(checkpoint_file, tensors)
                if npz.exists(checkpoint_file):  # restore would read it first
                    os.remove(npz.data_file(checkpoint_file))
            else:
                npz.write(checkpoint_file, tensors)
            if write_state:
                self._record(checkpoint_file)
                state_file.write_state(save_dir, checkpoint_file, self.last_checkpoints,
                                       latest_filename)
                self._maybe_delete_old()
        return checkpoint_file

    def _record(self, path: str) -> None:
        if not self._max_to_keep:
            return
        self._last_checkpoints = [p for p in self._last_checkpoints if p[0] != path]
        self._last_checkpoints.append((path, _now()))
        if len(self._last_checkpoints) > self._max_to_keep:
            self._to_delete.append(self._last_checkpoints.pop(0))

    def _maybe_delete_old(self) -> None:
        while self._to_delete:
            path, stamp = self._to_delete.pop(0)
            if stamp > self._next_keep_time:  # keep_checkpoint_every_n_hours keeps this one
                self._next_keep_time += self._keep_every_s
                continue
            try:
                remove_checkpoint(path)
            except OSError as e:
                _log.warning("Ignoring: %s", e)

    @property
    def last_checkpoints(self) -> List[str]:
        """Checkpoints this saver still keeps, oldest first."""
        return [p for p, _ in self._last_checkpoints]

    def set_last_checkpoints_with_time(self, last_checkpoints_with_time: list) -> None:
        self._last_checkpoints = list(last_checkpoints_with_time)

    def recover_last_checkpoints(self, checkpoint_paths: List[str]) -> None:
        """Adopts existing checkpoints (e.g. ``get_checkpoint_state(d)
        .all_model_checkpoint_paths``) so ``max_to_keep`` counts them after a restart."""
        kept = []
        for p in checkpoint_paths:
            if checkpoint_exists(p):
                data = npz.data_file(p) if npz.exists(p) else p + ".index"
                kept.append((p, os.path.getmtime(data)))
        self._last_checkpoints = sorted(kept, key=lambda t: t[1])

    # -------------------------------------------------------------------- restore
    def restore(self, sess: Any = None, save_path: Any = None,
                expect_partial: Optional[bool] = None) -> None:
        """Restores every variable from checkpoint ``save_path`` (compatopt's or TF's).

        Every entry is read and checked before any variable is assigned: on any error no
        variable changes. Raises ``ValueError`` if ``save_path`` is None;
        :class:`~compatopt.errors.NotFoundError` (also a ``ValueError``) if it is not a
        checkpoint; ``NotFoundError`` naming each variable the checkpoint lacks, and, when
        ``expect_partial`` is false, each checkpoint entry no variable takes;
        ``InvalidArgumentError`` naming each shape or dtype mismatch; ``DataLossError`` for
        a truncated or corrupt file (compatopt's or TensorFlow's, both read without
        TensorFlow). ``expect_partial=None`` means True for a saver with an
        explicit ``var_list`` and False for ``var_list=None``.
        """
        if save_path is None and isinstance(sess, (str, os.PathLike)):
            sess, save_path = None, sess
        if save_path is None:
            raise ValueError("Can't load save_path when it is None.")
        prefix = os.fspath(save_path)
        if expect_partial is None:
            expect_partial = self._var_list is not None
        targets = self._targets()
        _log.info("Restoring parameters from %s", prefix)
        reader = open_reader(prefix)
        try:
            wanted = {k: (v.shape, np.dtype(v.dtype)) for k, v in targets.items()}
            labels = {k: f"variable {v.name}" for k, v in targets.items() if v.op.name != k}
            values = read_checked(reader, wanted, labels, reshape=self._reshape,
                                  expect_partial=expect_partial, unused_hint=_UNUSED_HINT)
        finally:
            reader.close()
        with locked(targets.values()):  # all at once: no step sees half a restore
            for k, v in targets.items():
                v.assign(values[k])


def _step_value(global_step: Any) -> int:
    if isinstance(global_step, Variable):
        return int(global_step.numpy())
    a = np.asarray(global_step)
    if a.shape != () or a.dtype.kind not in "iu":
        raise TypeError(f"global_step must be an integer or a scalar integer Variable, got "
                        f"{global_step!r}")
    return int(a)
