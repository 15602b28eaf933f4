"""Inspecting and converting checkpoints (compatopt's or TensorFlow's): ``list_variables``,
``load_checkpoint``, ``load_variable``, as ``tf.train`` has them, and
``convert_tf1_checkpoint``."""

from __future__ import annotations

import os
from typing import Any, Dict, List, Tuple

import numpy as np

from compatopt import errors
from compatopt.checkpoint import _npz as npz
from compatopt.checkpoint import _state_file as state_file
from compatopt.checkpoint._paths import NameMap, map_name, open_reader
from compatopt.checkpoint._tf_bundle import exists as tf_exists
from compatopt.checkpoint._tf_bundle import open_bundle


def list_variables(ckpt_dir_or_file: Any) -> List[Tuple[str, List[int]]]:
    """``tf.train.list_variables``: ``[(name, shape), ...]`` sorted by name, for a
    checkpoint prefix or a directory (its latest checkpoint), compatopt's or TF's."""
    reader = load_checkpoint(ckpt_dir_or_file)
    return sorted((name, list(shape)) for name, (shape, _) in reader.specs().items())


class CheckpointReader:
    """``tf.train.load_checkpoint``'s reader over compatopt and TensorFlow checkpoints."""

    def __init__(self, reader: Any) -> None:
        self._reader = reader
        self.path = reader.path

    def specs(self) -> Dict[str, Tuple[tuple, np.dtype]]:
        return self._reader.specs()

    def get_variable_to_shape_map(self) -> Dict[str, List[int]]:
        return {k: list(s) for k, (s, _) in self._reader.specs().items()}

    def get_variable_to_dtype_map(self) -> Dict[str, np.dtype]:
        return {k: d for k, (_, d) in self._reader.specs().items()}

    def has_tensor(self, name: str) -> bool:
        return name in self._reader.specs()

    def get_tensor(self, name: str) -> np.ndarray:
        if name not in self._reader.specs():
            raise errors.NotFoundError(f"Key {name} not found in checkpoint {self.path}")
        return self._reader.read(name)


def load_checkpoint(ckpt_dir_or_file: Any) -> CheckpointReader:
    """A reader for a checkpoint prefix or a directory's latest checkpoint."""
    prefix = state_file.resolve_checkpoint(os.fspath(ckpt_dir_or_file))
    return CheckpointReader(open_reader(prefix))


def load_variable(ckpt_dir_or_file: Any, name: str) -> np.ndarray:
    """``tf.train.load_variable``: one tensor of a checkpoint (``name`` may end in ``:0``)."""
    if name.endswith(":0"):
        name = name[:-2]
    return load_checkpoint(ckpt_dir_or_file).get_tensor(name)


def convert_tf1_checkpoint(src: str, dst: str, name_map: NameMap = None) -> str:
    """Converts a TensorFlow checkpoint into a compatopt checkpoint (no TensorFlow needed).

    Every numeric tensor of ``src`` (a checkpoint prefix such as ``model.ckpt-50``, or a
    directory: its latest checkpoint) is read with compatopt's native bundle reader and
    written, bit for bit, to ``<dst>.npz`` under the same name, or ``name_map(name)`` /
    ``name_map.get(name, name)``: partitioned variables whole, string tensors and TF2's
    object graph left out. ``DataLossError`` if ``src`` is damaged, ``NotFoundError`` if it
    is not a checkpoint (a compatopt checkpoint is copied).
    ``compatopt.train.Saver`` restores TensorFlow checkpoints directly too; converting gives
    the one-file format. Returns ``dst``.
    """
    src = state_file.resolve_checkpoint(src)
    reader = open_bundle(src) if tf_exists(src) else open_reader(src)
    tensors = {}
    for name in sorted(reader.specs()):
        new = map_name(name_map, name)
        if new in tensors:
            raise ValueError(f"name_map maps two checkpoint entries to {new!r}")
        tensors[new] = reader.read(name)
    npz.write(dst, tensors)
    return dst
