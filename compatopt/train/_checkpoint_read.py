"""Inspecting checkpoints (compatopt's or TensorFlow's): ``list_variables``,
``load_checkpoint``, ``load_variable``, as ``tf.train`` has them."""

from __future__ import annotations

import os
from typing import Any, Dict, List, Tuple

import numpy as np

from compatopt import errors
from compatopt.train import _checkpoint_state as state_file
from compatopt.train import _checkpoint_tf as tfc


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
    return CheckpointReader(tfc.open_reader(prefix))


def load_variable(ckpt_dir_or_file: Any, name: str) -> np.ndarray:
    """``tf.train.load_variable``: one tensor of a checkpoint (``name`` may end in ``:0``)."""
    if name.endswith(":0"):
        name = name[:-2]
    return load_checkpoint(ckpt_dir_or_file).get_tensor(name)
