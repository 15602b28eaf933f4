"""Validates a whole restore before anything is assigned.

:func:`read_checked` reads the wanted tensors from a checkpoint reader and returns them
converted to the wanted dtypes, or raises one error that names every bad entry:

* a wanted key the checkpoint lacks, or (``expect_partial=False``) a checkpoint entry
  nothing wants: :class:`~compatopt.errors.NotFoundError` (TF1: ``Key w/Adam not found in
  checkpoint``);
* a shape or dtype that differs: :class:`~compatopt.errors.InvalidArgumentError` (TF1:
  ``tensor_name = w; expected dtype double does not equal original dtype float``);
* damaged bytes: :class:`~compatopt.errors.DataLossError` (from the reader).

Integer tensors may change width when every value fits (a TF1 ``int64`` ``global_step``
restores into compatopt's ``int32`` step when ``jax_enable_x64`` is off).
"""

from __future__ import annotations

from typing import Dict, Mapping, Optional

import numpy as np

from compatopt import errors
from compatopt.checkpoint._npz import Spec

_MAX_LISTED = 20


def _listing(items: list) -> str:
    shown = items[:_MAX_LISTED]
    more = f"\n  ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return "\n  " + "\n  ".join(shown) + more


def _ints_convertible(have: np.dtype, want: np.dtype) -> bool:
    return have.kind in "iu" and want.kind in "iu"


def read_checked(reader, wanted: Mapping[str, Spec], labels: Optional[Mapping[str, str]] = None,
                 *, reshape: bool = False, expect_partial: bool = True,
                 unused_hint: str = "") -> Dict[str, np.ndarray]:
    """``{key: array}`` for every key of ``wanted`` (``{key: (shape, dtype)}``), checked.

    Args:
      reader: a checkpoint reader (``specs()``, ``read(name)``, ``path``).
      wanted: the checkpoint keys to read and the shape and dtype each must have.
      labels: ``{key: description}`` used in messages (e.g. the variable's name).
      reshape: accept a different shape with the same number of elements (TF1's
        ``Saver(reshape=True)``).
      expect_partial: when False, checkpoint entries that are not wanted are an error.
      unused_hint: appended to the message about unwanted entries.
    """
    labels = labels or {}
    have = reader.specs()
    where = f"checkpoint {reader.path}"
    label = lambda k: f"{k!r}" + (f" ({labels[k]})" if k in labels else "")  # noqa: E731

    missing = [f"Key {label(k)} not found in {where}" for k in wanted if k not in have]
    unused = [] if expect_partial else sorted(k for k in have if k not in wanted)
    if missing or unused:
        parts = []
        if missing:
            parts.append(f"{len(missing)} variable(s) are missing from {where}:"
                         + _listing(missing))
        if unused:
            parts.append(f"{where} holds {len(unused)} entr{'y' if len(unused) == 1 else 'ies'}"
                         f" that no variable takes:" + _listing([repr(k) for k in unused])
                         + (f"\n{unused_hint}" if unused_hint else ""))
        raise errors.NotFoundError("\n".join(parts))

    bad = []
    for k, (shape, dtype) in wanted.items():
        c_shape, c_dtype = have[k]
        shape_ok = tuple(c_shape) == tuple(shape) or (
            reshape and int(np.prod(c_shape)) == int(np.prod(shape)))
        if not shape_ok:
            bad.append(f"tensor_name = {label(k)}: shape {tuple(c_shape)} in the checkpoint "
                       f"does not match the variable's shape {tuple(shape)}")
        if c_dtype != dtype and not _ints_convertible(c_dtype, dtype):
            bad.append(f"tensor_name = {label(k)}: expected dtype {np.dtype(dtype).name} does "
                       f"not equal original dtype {np.dtype(c_dtype).name}")
    if bad:
        raise errors.InvalidArgumentError(
            f"Restoring from {where} failed: {len(bad)} mismatch(es) between the variables "
            f"and the checkpoint:" + _listing(bad))

    out = {}
    for k, (shape, dtype) in wanted.items():
        value = reader.read(k)
        if value.dtype != dtype:
            info = np.iinfo(dtype)
            if value.size and (value.min() < info.min or value.max() > info.max):
                raise errors.InvalidArgumentError(
                    f"tensor_name = {label(k)}: the checkpoint's {value.dtype.name} values "
                    f"do not fit the variable's dtype {np.dtype(dtype).name}")
            value = value.astype(dtype)
        out[k] = value.reshape(shape)
    return out
