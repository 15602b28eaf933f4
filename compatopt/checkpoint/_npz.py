"""compatopt's checkpoint file: one ``<prefix>.npz`` holding every tensor under its TF1 name.

Layout: a ZIP archive (what ``numpy.savez`` writes) with one ``<name>.npy`` member per
tensor, so ``numpy.load("model.ckpt-100.npz")["w/Adam"]`` reads a slot without compatopt,
plus a member ``__compatopt_index__.npy`` (a ``uint8`` array of UTF-8 JSON) that records
each tensor's dtype and shape. Types NumPy cannot store natively (``bfloat16`` and the other
``ml_dtypes``) are stored as unsigned integers of the same width and viewed back on read.

Writes are atomic: the archive is written to a temporary file in the same directory,
flushed to disk, then renamed over the final name with ``os.replace``; a crash at any point
leaves either the previous file or the complete new one. Reads check the ZIP CRC-32 of
every member and the index, so a truncated or corrupt file raises
:class:`compatopt.errors.DataLossError` naming the file (and the tensor, when one is bad).
"""

from __future__ import annotations

import json
import os
import secrets
import zipfile
from typing import IO, Callable, Dict, Mapping, Tuple

import jax.numpy as jnp
import numpy as np

from compatopt.errors import DataLossError

SUFFIX = ".npz"
INDEX = "__compatopt_index__"
FORMAT = "compatopt-checkpoint"
VERSION = 1

Spec = Tuple[Tuple[int, ...], np.dtype]


def data_file(prefix: str) -> str:
    """The file that holds checkpoint ``prefix`` (``model.ckpt-100`` → ``…-100.npz``)."""
    return prefix + SUFFIX


def exists(prefix: str) -> bool:
    return os.path.isfile(data_file(prefix))


def _storable(a: np.ndarray) -> np.ndarray:
    """``a`` as a dtype ``.npy`` can store: ml_dtypes become same-width unsigned ints."""
    descr = np.lib.format.dtype_to_descr(a.dtype)
    if np.lib.format.descr_to_dtype(descr) == a.dtype:
        return a
    return a.view(np.dtype(f"u{a.dtype.itemsize}"))


def _is_numeric(dtype: np.dtype) -> bool:
    if dtype.hasobject or dtype.kind in "USO" or dtype.names is not None:
        return False
    try:  # plain void types are refused; ml_dtypes (bfloat16, float8...) are fine
        return jnp.dtype(dtype.name) == dtype
    except TypeError:
        return False


def create_temp(path: str) -> tuple:
    """``(fd, name)`` of a new file next to ``path``, with the permissions the umask gives
    (``tempfile.mkstemp`` would make it owner-only)."""
    while True:
        tmp = f"{path}.tmp{os.getpid()}-{secrets.token_hex(4)}"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue


def atomic_write(path: str, mode: str, writer: Callable[[IO], object]) -> None:
    """Runs ``writer(file)`` on a temporary file next to ``path``, syncs it and renames it
    over ``path``: a reader sees the old file or the whole new one, never a part; on any
    error the temporary file is removed and ``path`` is untouched. What ``writer`` returns
    (e.g. ``f.write``'s count) is ignored."""
    fd, tmp = create_temp(path)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as f:
            writer(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise


def write(prefix: str, tensors: Mapping[str, np.ndarray]) -> str:
    """Writes ``tensors`` (``{tf1_name: array}``) atomically to ``<prefix>.npz``.

    Returns the path written. Raises ``ValueError`` for an unusable name, ``OSError`` when
    the directory is not writable (the previous file, if any, is then untouched).
    """
    index = {"format": FORMAT, "version": VERSION, "tensors": {}}
    arrays = {}
    for name, value in tensors.items():
        if not isinstance(name, str) or not name or name == INDEX:
            raise ValueError(f"Cannot save a tensor named {name!r}")
        a = np.asarray(value)
        if not _is_numeric(a.dtype):
            raise TypeError(f"Cannot save {name!r}: dtype {a.dtype} is not numeric")
        index["tensors"][name] = {"dtype": a.dtype.name, "shape": list(a.shape)}
        arrays[name] = _storable(a)
    path = data_file(prefix)

    def write_zip(f) -> None:
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name, a in arrays.items():
                with zf.open(name + ".npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, a, allow_pickle=False)
            blob = np.frombuffer(json.dumps(index).encode("utf-8"), np.uint8)
            with zf.open(INDEX + ".npy", "w") as member:
                np.lib.format.write_array(member, blob, allow_pickle=False)

    atomic_write(path, "wb", write_zip)
    _fsync_dir(os.path.dirname(os.path.abspath(path)))
    return path


def _fsync_dir(directory: str) -> None:
    """Makes the rename durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class NpzReader:
    """Reads a compatopt checkpoint; ``specs()`` comes from the index (no tensor data read).

    Raises :class:`DataLossError` when the file is not a complete compatopt checkpoint.
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.path = data_file(prefix)
        try:
            with zipfile.ZipFile(self.path) as zf:
                if INDEX + ".npy" not in zf.namelist():
                    raise DataLossError(f"{self.path} is not a compatopt checkpoint (it has "
                                        f"no {INDEX} member)")
            blob = self._read_member(INDEX)
            index = json.loads(blob.tobytes().decode("utf-8"))
        except DataLossError:
            raise
        except (zipfile.BadZipFile, ValueError, KeyError, EOFError, OSError,
                zipfile.LargeZipFile, NotImplementedError, RuntimeError,
                UnicodeDecodeError) as e:
            raise DataLossError(f"Unable to read checkpoint {self.path}: the file is "
                                f"truncated or corrupt ({e})") from None
        if not isinstance(index, dict) or index.get("format") != FORMAT:
            raise DataLossError(f"{self.path} is not a compatopt checkpoint (no index)")
        if index.get("version", 0) > VERSION:
            raise DataLossError(f"{self.path} was written by a newer compatopt (format "
                                f"version {index['version']}); upgrade compatopt")
        try:
            self._specs: Dict[str, Spec] = {
                name: (tuple(int(d) for d in t["shape"]), np.dtype(jnp.dtype(t["dtype"])))
                for name, t in index["tensors"].items()}
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise DataLossError(f"{self.path}: corrupt index ({e})") from None
        for name, (shape, dtype) in self._specs.items():
            if any(d < 0 for d in shape) or not _is_numeric(dtype):
                raise DataLossError(f"{self.path}: corrupt index entry {name!r} "
                                    f"({dtype}{list(shape)})")

    def _read_member(self, name: str) -> np.ndarray:
        """One ``.npy`` member, its declared size checked against the archive before any
        allocation: a header claiming more bytes than the member holds (a crafted 4 TiB
        shape), a compressed member (compatopt stores, so a "zip bomb" is never inflated),
        an object dtype or a short member is :class:`DataLossError`, never a
        ``MemoryError``."""
        # The archive is opened per read: no file handle outlives a call.
        with zipfile.ZipFile(self.path) as zf:
            info = zf.getinfo(name + ".npy")
            where = f"{self.path}: member {name!r}"
            if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
                raise DataLossError(f"{where} is compressed or its sizes disagree; compatopt "
                                    f"stores tensors uncompressed")
            with zf.open(info) as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
                elif version in ((2, 0), (3, 0)):
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
                else:
                    raise DataLossError(f"{where}: unknown .npy version {version}")
                if dtype.hasobject:
                    raise DataLossError(f"{where}: dtype {dtype} is not a tensor dtype")
                count = 1
                for d in shape:
                    if not isinstance(d, int) or d < 0:
                        raise DataLossError(f"{where}: bad shape {shape}")
                    count *= d
                nbytes = count * dtype.itemsize
                header = f.tell()
                if header + nbytes != info.file_size:
                    raise DataLossError(
                        f"{where}: its header declares shape {tuple(shape)} of {dtype} "
                        f"({nbytes} bytes) but the member holds {info.file_size - header}")
                data = f.read(nbytes)
            if len(data) != nbytes:
                raise DataLossError(f"{where} is truncated")
        order = "F" if fortran else "C"
        return np.frombuffer(data, dtype=dtype, count=count).reshape(shape, order=order).copy()

    def specs(self) -> Dict[str, Spec]:
        """``{name: (shape, dtype)}`` of every tensor in the checkpoint."""
        return dict(self._specs)

    def read(self, name: str) -> np.ndarray:
        """The tensor ``name``; :class:`DataLossError` if its bytes are damaged."""
        shape, dtype = self._specs[name]
        try:
            a = self._read_member(name)
        except (zipfile.BadZipFile, ValueError, KeyError, EOFError, OSError,
                zipfile.LargeZipFile, NotImplementedError, RuntimeError) as e:
            raise DataLossError(f"Unable to read tensor {name!r} from checkpoint "
                                f"{self.path}: the file is truncated or corrupt ({e})") from None
        if a.dtype != dtype:
            if a.dtype.kind != "u" or a.dtype.itemsize != dtype.itemsize:
                raise DataLossError(f"{self.path}: tensor {name!r} is stored as {a.dtype}, "
                                    f"the index says {dtype}")
            a = a.view(dtype)
        if a.shape != shape:
            raise DataLossError(f"{self.path}: tensor {name!r} has shape {a.shape}, the "
                                f"index says {shape}")
        return a

    def close(self) -> None:
        pass
