"""TF1's checkpoint utilities: ``NewCheckpointReader``, ``remove_checkpoint``,
``update_checkpoint_state``, ``get_checkpoint_mtimes``, ``checkpoints_iterator``.

Each works on compatopt's checkpoints (``<prefix>.npz``) and on TensorFlow's
(``<prefix>.index`` + ``.data-*``); TensorFlow's are read through
:func:`compatopt.checkpoint._reader.load_checkpoint` (TensorFlow's own reader today), so
another reader plugs in there without a change here. The behaviour, argument names and
exception types and messages are TF1's (recorded by ``tools/make_tf1_warm_start_fixtures.py``
and checked in ``tests/checkpoint/test_checkpoint_utils.py``); differences are listed in each
docstring.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np

from compatopt import errors
from compatopt.checkpoint import _npz as npz
from compatopt.checkpoint._paths import CheckpointNotFoundError
from compatopt.checkpoint._reader import CheckpointReader, load_checkpoint
from compatopt.checkpoint._state_file import DEFAULT_FILENAME, _escape, latest_checkpoint

__all__ = ["DType", "NewCheckpointReader", "TF1CheckpointReader", "checkpoints_iterator",
           "get_checkpoint_mtimes", "meta_graph_filename", "remove_checkpoint",
           "update_checkpoint_state", "wait_for_new_checkpoint"]

_log = logging.getLogger(__name__)

# numpy dtype name -> TensorFlow's DataTypeString (used in TF's messages) and enum name.
_TF_NAMES = {
    "float32": "float", "float64": "double", "float16": "half", "bfloat16": "bfloat16",
    "int8": "int8", "int16": "int16", "int32": "int32", "int64": "int64", "uint8": "uint8",
    "uint16": "uint16", "uint32": "uint32", "uint64": "uint64", "bool": "bool",
    "complex64": "complex64", "complex128": "complex128",
}


def tf_dtype_string(dtype: Any) -> str:
    """TensorFlow's ``DataTypeString`` of ``dtype``: ``float32`` → ``float``, ``float64`` →
    ``double``, ``float16`` → ``half``; other dtypes keep their numpy name."""
    name = str(np.dtype(dtype).name)
    return _TF_NAMES.get(name, name)


class DType:
    """The dtype of a checkpoint entry, a small stand-in for ``tf.DType``.

    ``name`` (``"float32"``), ``as_numpy_dtype`` (the numpy type, e.g. ``numpy.float32`` or
    ``ml_dtypes.bfloat16``), ``base_dtype`` (itself), ``is_floating``/``is_integer``/
    ``is_bool``, ``size``; ``repr`` is TF's (``tf.float32``). It compares equal to another
    ``DType``, a numpy/jnp dtype or type, or a dtype name, and numpy and jnp accept it as a
    dtype (``np.zeros(shape, d)``) through its ``dtype`` attribute (the ``numpy.dtype``).
    """

    __slots__ = ("dtype",)

    def __init__(self, dtype: Any) -> None:
        self.dtype = np.dtype(dtype)

    @property
    def name(self) -> str:
        return self.dtype.name

    @property
    def as_numpy_dtype(self) -> type:
        return self.dtype.type

    @property
    def base_dtype(self) -> "DType":
        return self

    @property
    def is_floating(self) -> bool:
        return self.dtype.kind == "f" or self.name == "bfloat16"

    @property
    def is_integer(self) -> bool:
        return self.dtype.kind in "iu"

    @property
    def is_bool(self) -> bool:
        return self.dtype.kind == "b"

    @property
    def size(self) -> int:
        return self.dtype.itemsize

    def __eq__(self, other: object) -> bool:
        if isinstance(other, DType):
            return self.dtype == other.dtype
        try:
            return self.dtype == np.dtype(other)  # type: ignore[arg-type]
        except TypeError:
            return NotImplemented

    def __hash__(self) -> int:
        return hash(self.dtype)

    def __repr__(self) -> str:
        return f"tf.{self.name}"


class TF1CheckpointReader:
    """What ``tf.compat.v1.train.NewCheckpointReader`` returns, over compatopt's and TF's
    checkpoints.

    As TF1: ``get_tensor(name)`` (a numpy array; ``NotFoundError: Key <name> not found in
    checkpoint`` for a missing key), ``has_tensor(name)``, ``get_variable_to_shape_map()``
    (``{name: [dims]}``), ``get_variable_to_dtype_map()`` (``{name: DType}``, see
    :class:`DType`: ``.name`` and equality with numpy dtypes, not a ``tf.DType``), and
    ``debug_string()`` (``bytes``, one ``name (DT_FLOAT) [2,3]`` line per entry, sorted).
    Differences: TensorFlow's internal entries (``_CHECKPOINTABLE_OBJECT_GRAPH``) and string
    tensors are not listed; ``specs()`` and ``path`` are compatopt additions.
    """

    def __init__(self, reader: CheckpointReader) -> None:
        self._reader = reader
        self.path = reader.path

    def specs(self) -> Dict[str, tuple]:
        """``{name: (shape tuple, numpy dtype)}`` (compatopt's reader interface)."""
        return self._reader.specs()

    def get_variable_to_shape_map(self) -> Dict[str, List[int]]:
        return self._reader.get_variable_to_shape_map()

    def get_variable_to_dtype_map(self) -> Dict[str, DType]:
        return {k: DType(d) for k, d in self._reader.get_variable_to_dtype_map().items()}

    def has_tensor(self, tensor_str: str) -> bool:
        return self._reader.has_tensor(tensor_str)

    def get_tensor(self, tensor_str: str) -> np.ndarray:
        if not self._reader.has_tensor(tensor_str):
            raise errors.NotFoundError(f"Key {tensor_str} not found in checkpoint")
        return np.asarray(self._reader.get_tensor(tensor_str))

    def debug_string(self) -> bytes:
        lines = []
        for name, (shape, dtype) in sorted(self._reader.specs().items()):
            enum = "DT_" + tf_dtype_string(dtype).upper()
            lines.append(f"{name} ({enum}) [{','.join(str(int(d)) for d in shape)}]\n")
        return "".join(lines).encode("utf-8")


def NewCheckpointReader(filepattern: Any) -> TF1CheckpointReader:  # noqa: N802 (TF's name)
    """``tf.compat.v1.train.NewCheckpointReader``: a reader of checkpoint ``filepattern``.

    As TF1, ``filepattern`` is a checkpoint prefix (``model.ckpt-100``), not a directory:
    a directory raises ``DataLossError`` ("Unable to open table file ..."), a prefix with no
    checkpoint ``NotFoundError`` ("Unsuccessful TensorSliceReader constructor: Failed to find
    any matching files for ..."). A damaged checkpoint raises ``DataLossError``; a
    TensorFlow checkpoint without a reader for it (TensorFlow not installed) ``ImportError``.
    Difference: no glob patterns (TF1 expands sharded ``-?????-of-NNNNN`` names).
    """
    path = os.fspath(filepattern)
    if os.path.isdir(path):
        raise errors.DataLossError(
            f"Unable to open table file {path}: FAILED_PRECONDITION: {path}; Is a directory: "
            f"perhaps your file is in a different file format and you need to use a different "
            f"restore operator?")
    try:
        reader = load_checkpoint(path)
    except CheckpointNotFoundError as e:  # no checkpoint there (not: a damaged one)
        raise errors.NotFoundError(
            f"Unsuccessful TensorSliceReader constructor: Failed to find any matching files "
            f"for {path}") from e
    return TF1CheckpointReader(reader)


# ----------------------------------------------------------------------- file utilities


def meta_graph_filename(checkpoint_filename: str, meta_graph_suffix: str = "meta") -> str:
    """TF1's ``.meta`` file name of a checkpoint (a shard suffix ``-00001-of-00002`` cut)."""
    basename = re.sub(r"-[\d\?]+-of-\d+$", "", checkpoint_filename)
    return ".".join([basename, meta_graph_suffix])


def _delete_file_if_exists(filespec: str) -> None:
    for pathname in glob.glob(filespec):
        try:
            os.remove(pathname)
        except FileNotFoundError:
            _log.warning("Hit NotFoundError when deleting '%s', possibly because another "
                         "process/thread is also deleting/moving the same file", pathname)


def remove_checkpoint(checkpoint_prefix: Any, checkpoint_format_version: int = 2,
                      meta_graph_suffix: str = "meta") -> None:
    """``tf.compat.v1.train.remove_checkpoint``: deletes a checkpoint's files.

    As TF1: always ``<prefix>.<meta_graph_suffix>``; for ``checkpoint_format_version=2``
    (``SaverDef.V2``, the default) ``<prefix>.index`` and every
    ``<prefix>.data-?????-of-?????``; otherwise (V1, legacy) the file ``<prefix>`` itself.
    Missing files are no error; the state file is not touched. Names are glob patterns, as
    TF1's. Difference: with V2 compatopt's own data file ``<prefix>.npz`` is deleted too.
    """
    prefix = os.fspath(checkpoint_prefix)
    _delete_file_if_exists(meta_graph_filename(prefix, meta_graph_suffix))
    if checkpoint_format_version == 2:
        _delete_file_if_exists(prefix + ".index")
        _delete_file_if_exists(prefix + ".data-?????-of-?????")
        _delete_file_if_exists(glob.escape(npz.data_file(prefix)))
    else:
        _delete_file_if_exists(prefix)


def _format_float(x: float) -> str:
    return repr(float(x))


def update_checkpoint_state(save_dir: Any, model_checkpoint_path: str,
                            all_model_checkpoint_paths: Optional[Sequence[str]] = None,
                            latest_filename: Optional[str] = None,
                            all_model_checkpoint_timestamps: Optional[Sequence[float]] = None,
                            last_preserved_timestamp: Optional[float] = None) -> None:
    """``tf.compat.v1.train.update_checkpoint_state``: writes the ``checkpoint`` state file.

    As TF1: ``model_checkpoint_path`` is appended to ``all_model_checkpoint_paths`` unless
    it is already the last entry; when ``save_dir`` is relative, relative paths are
    rewritten relative to ``save_dir`` (``os.path.relpath``), absolute ones are kept; the
    timestamps and ``last_preserved_timestamp`` are written when given. ``ValueError`` if
    timestamps are given for a different number of paths; ``RuntimeError`` if the
    checkpoint path is the state file itself. The file (``latest_filename``, default
    ``checkpoint``) is written atomically; :func:`compatopt.train.get_checkpoint_state` and
    ``latest_checkpoint`` read it (they ignore the timestamps).
    Difference: the caller's ``all_model_checkpoint_paths`` list is not modified (TF1
    appends to it and rewrites it in place).
    """
    save_dir = os.fspath(save_dir)
    model_checkpoint_path = os.fspath(model_checkpoint_path)
    paths = [os.fspath(p) for p in (all_model_checkpoint_paths or [])]
    if not paths or paths[-1] != model_checkpoint_path:
        _log.info("%s is not in all_model_checkpoint_paths. Manually adding it.",
                  model_checkpoint_path)
        paths.append(model_checkpoint_path)
    stamps = list(all_model_checkpoint_timestamps or [])
    if stamps and len(stamps) != len(paths):
        raise ValueError(
            "Checkpoint timestamps, if provided, must match checkpoint paths (got paths %s "
            "and timestamps %s)" % (paths, list(all_model_checkpoint_timestamps or [])))
    if not os.path.isabs(save_dir):
        if not os.path.isabs(model_checkpoint_path):
            model_checkpoint_path = os.path.relpath(model_checkpoint_path, save_dir)
        paths = [p if os.path.isabs(p) else os.path.relpath(p, save_dir) for p in paths]
    state_path = os.path.join(save_dir, latest_filename or DEFAULT_FILENAME)
    if state_path == model_checkpoint_path:
        raise RuntimeError(
            "Save path '%s' conflicts with path used for checkpoint state.  Please use a "
            "different save path." % model_checkpoint_path)
    lines = [f'model_checkpoint_path: "{_escape(model_checkpoint_path)}"']
    lines += [f'all_model_checkpoint_paths: "{_escape(p)}"' for p in paths]
    lines += [f"all_model_checkpoint_timestamps: {_format_float(t)}" for t in stamps]
    if last_preserved_timestamp is not None:
        lines.append(f"last_preserved_timestamp: {_format_float(last_preserved_timestamp)}")
    npz.atomic_write(state_path, "w", lambda f: f.write("\n".join(lines) + "\n"))


def get_checkpoint_mtimes(checkpoint_prefixes: Sequence[Any]) -> List[float]:
    """``tf.compat.v1.train.get_checkpoint_mtimes``: modification times (seconds since
    the Epoch, a float, as TF1 returns despite its docstring's "microseconds").

    As TF1, per prefix the first match of ``<prefix>.index`` (V2), else of ``<prefix>``
    (V1) counts, and prefixes with no file are skipped, so the list can be shorter than the
    input. Difference: compatopt's ``<prefix>.npz`` is looked at after ``.index`` and
    before the V1 file.
    """
    mtimes: List[float] = []

    def match_maybe_append(pathname: str) -> bool:
        fnames = sorted(glob.glob(pathname))
        if fnames:
            mtimes.append(os.stat(fnames[0]).st_mtime_ns / 1e9)
            return True
        return False

    for prefix in checkpoint_prefixes:
        prefix = os.fspath(prefix)
        if match_maybe_append(prefix + ".index"):
            continue
        if match_maybe_append(glob.escape(npz.data_file(prefix))):
            continue
        match_maybe_append(prefix)
    return mtimes


# -------------------------------------------------------------------- waiting for new ones

_time = time.time    # the clock and the sleep the iterators use (tests replace them)
_sleep = time.sleep


def wait_for_new_checkpoint(checkpoint_dir: Any, last_checkpoint: Optional[str] = None,
                            seconds_to_sleep: float = 1, timeout: Optional[float] = None
                            ) -> Optional[str]:
    """TF1's ``wait_for_new_checkpoint``: polls ``latest_checkpoint(checkpoint_dir)`` every
    ``seconds_to_sleep`` seconds until it differs from ``last_checkpoint``; ``None`` once
    ``timeout`` seconds have passed (it gives up early when the next sleep would end past
    the timeout, as TF1)."""
    _log.info("Waiting for new checkpoint at %s", checkpoint_dir)
    stop_time = _time() + timeout if timeout is not None else None
    while True:
        checkpoint_path = latest_checkpoint(os.fspath(checkpoint_dir))
        if checkpoint_path is None or checkpoint_path == last_checkpoint:
            if stop_time is not None and _time() + seconds_to_sleep > stop_time:
                return None
            _sleep(seconds_to_sleep)
        else:
            _log.info("Found new checkpoint at %s", checkpoint_path)
            return checkpoint_path


def checkpoints_iterator(checkpoint_dir: Any, min_interval_secs: float = 0,
                         timeout: Optional[float] = None,
                         timeout_fn: Optional[Callable[[], bool]] = None) -> Iterator[str]:
    """``tf.train.checkpoints_iterator``: yields each new latest checkpoint of
    ``checkpoint_dir`` (compatopt's or TF's) as it appears.

    As TF1: at least ``min_interval_secs`` pass between two yields; when no new checkpoint
    appears within ``timeout`` seconds the iterator ends, or, with ``timeout_fn``, calls it
    and ends if it returns True, else waits again. Checkpoints written faster than they are
    consumed are skipped (only the latest is yielded).
    """
    checkpoint_path = None
    while True:
        new_checkpoint_path = wait_for_new_checkpoint(checkpoint_dir, checkpoint_path,
                                                      timeout=timeout)
        if new_checkpoint_path:
            start = _time()
            checkpoint_path = new_checkpoint_path
            yield checkpoint_path
            time_to_next_eval = start + min_interval_secs - _time()
            if time_to_next_eval > 0:
                _sleep(time_to_next_eval)
        elif timeout_fn is None:
            _log.info("Timed-out waiting for a checkpoint (without timeout_fn).")
            return
        if timeout_fn is not None and timeout_fn():
            _log.info("Done. No new checkpoints will be generated.")
            return
