"""Finding and opening a checkpoint: compatopt's ``.npz`` first, else TensorFlow's bundle
(read natively, without TensorFlow).

Also TF1's names for checkpoint entries under a rename (``NameMap``), shared by
``compatopt.train.Saver`` and the functional :mod:`compatopt.checkpoint`.
"""

from __future__ import annotations

import os
from typing import Callable, Mapping, Optional, Union

from compatopt import errors
from compatopt.checkpoint import _npz as npz
from compatopt.checkpoint import _tf_bundle as tf_bundle

NameMap = Union[None, Mapping[str, str], Callable[[str], str]]
Reader = Union[npz.NpzReader, tf_bundle.bundle_format.BundleReader, tf_bundle.TFReader]


def map_name(name_map: NameMap, name: str) -> str:
    """``name`` renamed by ``name_map`` (a dict, a function, or ``None``: unchanged)."""
    if name_map is None:
        return name
    if callable(name_map):
        return name_map(name)
    return name_map.get(name, name)


class CheckpointNotFoundError(errors.NotFoundError, ValueError):
    """No checkpoint at the given path. Also a ``ValueError``, which is what TF1's
    ``Saver.restore`` raises for a path that is not a checkpoint."""


def checkpoint_not_found(prefix: Optional[str]) -> CheckpointNotFoundError:
    hint = ""
    if prefix and os.path.isdir(prefix):
        hint = (" (it is a directory: pass a checkpoint prefix such as "
                "compatopt.train.latest_checkpoint(directory))")
    return CheckpointNotFoundError(
        f"The passed save_path is not a valid checkpoint: {prefix}{hint}. A checkpoint is "
        f"a prefix such as 'model.ckpt-100' with a file '<prefix>.npz' (compatopt) or "
        f"'<prefix>.index' (TensorFlow)")


def checkpoint_exists(checkpoint_prefix: str) -> bool:
    """True if ``checkpoint_prefix`` is a compatopt or a TensorFlow checkpoint."""
    prefix = os.fspath(checkpoint_prefix)
    return npz.exists(prefix) or tf_bundle.exists(prefix)


def open_reader(prefix: str) -> Reader:
    """A reader for checkpoint ``prefix``: compatopt's own, else TensorFlow's (read by
    compatopt's native bundle reader).

    ``NotFoundError`` if neither exists.
    """
    if npz.exists(prefix):
        return npz.NpzReader(prefix)
    if prefix.endswith(npz.SUFFIX) and os.path.isfile(prefix):
        return npz.NpzReader(prefix[:-len(npz.SUFFIX)])
    if tf_bundle.exists(prefix):
        return tf_bundle.open_bundle(prefix)
    raise checkpoint_not_found(prefix)


def remove_checkpoint(prefix: str) -> None:
    """Deletes checkpoint ``prefix``'s files (compatopt's, and TensorFlow's if any)."""
    for path in (npz.data_file(prefix), prefix + ".meta"):
        if os.path.isfile(path):
            os.remove(path)
    tf_bundle.remove_tf_files(prefix)
