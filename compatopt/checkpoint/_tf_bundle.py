"""TensorFlow's checkpoints (``tf.compat.v1.train.Saver``, ``tf.train``): which files they
are, how to open and delete them.

compatopt reads and writes TensorFlow's tensor-bundle format itself, without TensorFlow
(:mod:`compatopt.checkpoint._bundle_format`): :func:`open_bundle` is the reader every path
uses (``Saver.restore``, ``list_variables``, ``load_variable``, ``convert_tf1_checkpoint``,
``compatopt.checkpoint.load``), and :func:`write_tf_bundle` writes a checkpoint that
TensorFlow restores. :class:`TFReader`, the same interface over TensorFlow's own
``tf.train.load_checkpoint`` (imported only when one is built), is kept as a cross-check
for the tests and for checkpoints the native reader refuses (e.g. Snappy-compressed
tables, which TensorFlow itself never writes for checkpoints).
"""

from __future__ import annotations

import glob
import os
from typing import Any, Dict, Mapping, cast

import numpy as np

from compatopt import errors
from compatopt.checkpoint import _bundle_format as bundle_format
from compatopt.checkpoint._npz import Spec

from compatopt.checkpoint._bundle_format import TF_INTERNAL_KEYS as TF_INTERNAL_KEYS

_INSTALL_HINT = (
    "Reading a checkpoint written by TensorFlow ({path}) needs TensorFlow: "
    "`pip install compatopt[tf]`. Or convert it once, on a machine that has TensorFlow, with "
    "`compatopt.train.convert_tf1_checkpoint(src, dst)`; the converted checkpoint restores "
    "without TensorFlow.")


def exists(prefix: str) -> bool:
    """True if a TensorFlow (V2 format) checkpoint ``prefix`` exists: ``<prefix>.index``."""
    return os.path.isfile(prefix + ".index")


def open_bundle(prefix: str) -> bundle_format.BundleReader:
    """The native reader of TensorFlow checkpoint ``prefix`` (no TensorFlow needed)."""
    return bundle_format.BundleReader(prefix)


def write_tf_bundle(prefix: str, tensors: Mapping[str, Any]) -> str:
    """Writes ``tensors`` (``{name: array}``) as a TensorFlow checkpoint ``prefix``
    (``<prefix>.index`` and ``<prefix>.data-00000-of-00001``), byte for byte what
    ``tf.compat.v1.train.Saver`` writes for them; TensorFlow's ``tf.train.load_checkpoint``
    and ``Saver.restore`` read it. No ``checkpoint`` state file is written (``Saver.save``
    does that). Returns ``prefix``."""
    return bundle_format.write_bundle(prefix, tensors)


def _import_tf(path: str) -> Any:
    try:
        import tensorflow as tf
    except Exception as e:  # ImportError, or a broken installation
        raise ImportError(_INSTALL_HINT.format(path=path)) from e
    return tf


_ERROR_TYPES = {"NotFoundError": errors.NotFoundError,
                "InvalidArgumentError": errors.InvalidArgumentError,
                "DataLossError": errors.DataLossError,
                "FailedPreconditionError": errors.FailedPreconditionError}


def _translate(tf: Any, e: BaseException, what: str) -> BaseException:
    """TensorFlow's ``OpError`` → compatopt's error of the same name; anything else the
    reader raises (e.g. ``IndexError: Read less bytes than requested`` for a truncated data
    file) → :class:`DataLossError`."""
    if isinstance(e, tf.errors.OpError):
        cls = _ERROR_TYPES.get(type(e).__name__, errors.DataLossError)
        # ``tf`` is untyped, so isinstance does not narrow ``e`` to tf's OpError.
        return cls(f"{what}: {cast(Any, e).message}")
    if isinstance(e, Exception):
        return errors.DataLossError(f"{what}: the checkpoint is truncated or corrupt "
                                    f"({type(e).__name__}: {e})")
    return e


class TFReader:
    """``tf.train.load_checkpoint`` behind the interface of :class:`NpzReader` (needs
    TensorFlow; compatopt's own paths use :func:`open_bundle`)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.path = prefix
        tf = self._tf = _import_tf(prefix)
        try:
            self._reader = tf.train.load_checkpoint(prefix)
            shapes = self._reader.get_variable_to_shape_map()
            dtypes = self._reader.get_variable_to_dtype_map()
        except Exception as e:
            raise _translate(tf, e, f"Unable to read TensorFlow checkpoint {prefix}") from e
        self._specs = {}
        for name, shape in shapes.items():
            if name in TF_INTERNAL_KEYS or dtypes[name] == tf.string:
                continue
            self._specs[name] = (tuple(int(d) for d in shape),
                                 np.dtype(dtypes[name].as_numpy_dtype))

    def specs(self) -> Dict[str, Spec]:
        return dict(self._specs)

    def read(self, name: str) -> np.ndarray:
        try:
            value = self._reader.get_tensor(name)
        except Exception as e:
            raise _translate(self._tf, e, f"Unable to read tensor {name!r} from TensorFlow "
                                          f"checkpoint {self.prefix}") from e
        return np.asarray(value)

    def close(self) -> None:
        pass


def remove_tf_files(prefix: str) -> None:
    """Deletes TensorFlow's files of checkpoint ``prefix`` (``.index``, ``.data-*``)."""
    for path in glob.glob(glob.escape(prefix) + ".data-*") + [prefix + ".index"]:
        if os.path.isfile(path):
            os.remove(path)
