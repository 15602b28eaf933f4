"""compatopt's checkpoint file: one ``<prefix>.npz`` holding every tensor under its TF1 name.

Layout: a ZIP archive (what ``numpy.savez`` writes) with one ``<name>.npy`` member per
tensor, so ``numpy.load("model.ckpt-100.npz")["w/Adam"]`` reads a slot without compatopt,
plus a member ``__compatopt_index__.npy`` (a ``uint8`` array of UTF-8 JSON) that records
each tensor's dtype and shape. Types NumPy cannot store natively (``bfloat16`` and the other
``ml_dtypes``) are stored as unsigned integers of the same width and viewed back on read.

Writes are atomic: the archive is written to a temporary file in the same directory,
flushed to disk, then renamed over the final name with ``os.replace``; a crash at any point
leaves either the previous file or the complete new one.

Reads trust nothing in the file. Opening a checkpoint checks the archive (no member twice,
no member reaching past the end of the file, only stored or deflated members, a deflated
member's declared size within what deflate can produce from its compressed bytes), the
index (known tensor dtypes, non-negative shapes of a representable size, no name twice),
that index and members name the same tensors, and every member's ``.npy`` header (its own
parser: no pickles, no object or unknown dtypes) against its index entry and against the
member's size. Only then is a tensor's memory allocated, at the size already checked, and
filled by a bounded reader that also checks the ZIP CRC-32. Anything wrong is
:class:`compatopt.errors.DataLossError` naming the file (and the entry, when one is bad),
never a ``MemoryError`` or a parser's own exception.
"""

from __future__ import annotations

import ast
import functools
import json
import os
import secrets
import struct
import sys
import zipfile
import zlib
from typing import IO, Any, Callable, Dict, Mapping, Optional, Tuple, cast

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


@functools.lru_cache(maxsize=None)
def _stored_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype a tensor of ``dtype`` is stored as: itself where ``.npy`` can describe it,
    else the unsigned integer of its width (``bfloat16`` → ``uint16``)."""
    try:
        if np.lib.format.descr_to_dtype(np.lib.format.dtype_to_descr(dtype)) == dtype:
            return dtype
    except TypeError:  # ml_dtypes whose descr NumPy cannot read back ('<f1', '<c4')
        pass
    return np.dtype(f"u{dtype.itemsize}")


@functools.lru_cache(maxsize=None)
def _stored_descr(dtype: np.dtype) -> str:
    """The ``descr`` a ``.npy`` header of a tensor of ``dtype`` holds (``'<f4'``)."""
    return str(np.lib.format.dtype_to_descr(_stored_dtype(dtype)))


def _storable(a: np.ndarray) -> np.ndarray:
    """``a`` as a dtype ``.npy`` can store: ml_dtypes become same-width unsigned ints."""
    stored = _stored_dtype(a.dtype)
    return a if stored == a.dtype else a.view(stored)


def _is_numeric(dtype: np.dtype) -> bool:
    if dtype.hasobject or dtype.names is not None or dtype.subdtype is not None:
        return False
    if dtype.kind not in "biufcV" or dtype.type is np.void:
        return False  # strings, datetimes and plain void are refused
    try:  # ml_dtypes (bfloat16, float8...) are fine
        return jnp.dtype(dtype.name) == dtype
    except TypeError:
        return False


@functools.lru_cache(maxsize=None)
def _tensor_dtypes() -> Dict[str, np.dtype]:
    """``{name: dtype}`` of every dtype a checkpoint may hold: the index's dtype names are
    looked up here, never parsed."""
    types = list(np.sctypeDict.values())
    try:
        import ml_dtypes

        types += [t for t in vars(ml_dtypes).values()
                  if isinstance(t, type) and issubclass(t, np.generic)]
    except ImportError:  # pragma: no cover - jax depends on ml_dtypes
        pass
    out: Dict[str, np.dtype] = {}
    for t in types:
        try:
            dtype = np.dtype(t)
        except TypeError:
            continue
        if _is_numeric(dtype):
            out.setdefault(dtype.name, dtype)
    return out


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


# What a damaged archive or .npy member makes zipfile, zlib, struct, json or ast raise; each
# becomes a DataLossError (DataLossError itself is an OSError: it is re-raised before these).
_CORRUPT = (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, KeyError, IndexError,
            TypeError, EOFError, OverflowError, struct.error, zlib.error, NotImplementedError,
            RuntimeError, OSError)
_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflated"}
_MAX_DEFLATE_RATIO = 1032  # deflate's largest expansion: more is a lie (a "zip bomb")
_LOCAL_HEADER = 30  # bytes of a ZIP local file header before its name
_LOCAL_HEADER_STRUCT = "<4s2B4HL2L2H"  # signature ... name length, extra length
_NPY_MAGIC = b"\x93NUMPY"
_MAX_HEADER = 10000  # numpy's own limit on a .npy header
_MAX_NDIM = 64
_CHUNK = 1 << 22  # the bounded reader's step


def _brief(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _stamp(st: os.stat_result) -> tuple:
    """What identifies one version of a file: a checkpoint is replaced, never rewritten in
    place (``atomic_write``), so a new version is a new inode (or size, or time)."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _member_end(info: Any) -> int:
    """Where member ``info``'s bytes end at the earliest (its local header holds at least
    its name, one byte or more per character)."""
    return info.header_offset + _LOCAL_HEADER + len(info.orig_filename) + info.compress_size


def _sane_shape(shape: Any, itemsize: int) -> bool:
    """``shape`` is a tuple or list of non-negative ints whose array NumPy can represent."""
    if not isinstance(shape, (tuple, list)) or len(shape) > _MAX_NDIM:
        return False
    nbytes = itemsize
    for d in shape:
        if type(d) is not int or d < 0:
            return False
        nbytes *= d or 1
        if nbytes > sys.maxsize:
            return False
    return True


class NpzReader:
    """Reads a compatopt checkpoint; ``specs()`` comes from the index, each entry checked
    against its member's ``.npy`` header and size when the reader is made.

    Raises :class:`DataLossError` when the file is not a complete compatopt checkpoint.
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.path = data_file(prefix)
        raw, zf, self._stamp, self._members = self._open_archive(None)
        with raw, zf:
            members = self._members
            try:
                with zf.open(members[INDEX]) as f:
                    blob = self._read_npy(f, members[INDEX], INDEX, None)
                index = json.loads(blob.tobytes().decode("utf-8"),
                                   object_pairs_hook=self._unique_keys)
            except DataLossError:
                raise
            except _CORRUPT as e:
                raise self._corrupt(e, INDEX) from None
            self._specs: Dict[str, Spec] = self._parse_index(index)
            missing = [n for n in self._specs if n not in members]
            if missing:
                raise DataLossError(f"{self.path}: the index lists {len(missing)} tensor(s) the "
                                    f"archive lacks, e.g. entry {missing[0]!r}")
            extra = [n for n in members if n != INDEX and n not in self._specs]
            if extra:
                raise DataLossError(f"{self.path}: the archive holds {len(extra)} member(s) the "
                                    f"index does not list, e.g. entry {extra[0]!r}")
            for name, spec in self._specs.items():
                try:
                    with zf.open(members[name]) as f:
                        self._read_npy(f, members[name], name, spec, data=False)
                except DataLossError:
                    raise
                except _CORRUPT as e:
                    raise self._corrupt(e, name) from None

    # ------------------------------------------------------------------ helpers
    def _corrupt(self, e: BaseException, name: Optional[str]) -> DataLossError:
        what = ("checkpoint" if name is None else "the index of checkpoint" if name == INDEX
                else f"tensor {name!r} from checkpoint")
        return DataLossError(f"Unable to read {what} {self.path}: the file is truncated or "
                             f"corrupt ({type(e).__name__}: {e})")

    def _unique_keys(self, pairs: list) -> dict:
        out = {}
        for k, v in pairs:
            if k in out:
                raise DataLossError(f"{self.path}: corrupt index: it lists {_brief(k)} twice")
            out[k] = v
        return out

    def _open_archive(self, tensor: Optional[str]) -> tuple:
        """``(raw file, ZipFile, stamp, {entry: ZipInfo})``: the archive opened and every
        member's sizes checked against the file; ``stamp`` identifies the file that was
        read. ``tensor`` names the tensor being read, for the messages."""
        raw = zf = None
        try:
            raw = open(self.path, "rb")
            st = os.fstat(raw.fileno())
            zf = zipfile.ZipFile(raw)
            return raw, zf, _stamp(st), self._check_members(zf, st.st_size)
        except BaseException as e:
            for f in (zf, raw):
                if f is not None:
                    f.close()
            if isinstance(e, _CORRUPT) and not isinstance(e, DataLossError):
                raise self._corrupt(e, tensor) from None
            raise

    def _check_members(self, zf: zipfile.ZipFile, size: int) -> Dict[str, Any]:
        infos = zf.infolist()
        if not any(info.filename == INDEX + ".npy" for info in infos):
            raise DataLossError(f"{self.path} is not a compatopt checkpoint (it has no {INDEX} "
                                f"member)")
        members: Dict[str, Any] = {}
        for info in infos:
            name = info.filename
            if not name.endswith(".npy") or len(name) == 4:
                raise DataLossError(f"{self.path}: member {name!r} is not a tensor (.npy) of a "
                                    f"compatopt checkpoint")
            entry = name[:-4]
            where = f"{self.path}: entry {entry!r}"
            if entry in members:
                raise DataLossError(f"{where} appears twice in the archive")
            members[entry] = info
            if info.flag_bits & 0x1:
                raise DataLossError(f"{where} is encrypted")
            if info.compress_type not in _METHODS:
                raise DataLossError(f"{where} uses ZIP compression method {info.compress_type}; "
                                    f"compatopt reads stored or deflated members")
            if (info.header_offset < 0 or info.compress_size < 0 or info.file_size < 0
                    or _member_end(info) > size):
                raise DataLossError(f"{where} reaches past the end of the file: the file is "
                                    f"truncated or corrupt")
            if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
                raise DataLossError(f"{where} is stored uncompressed but its sizes disagree "
                                    f"({info.compress_size} and {info.file_size} bytes)")
            if info.file_size > _MAX_DEFLATE_RATIO * info.compress_size + 64:
                raise DataLossError(f"{where} claims {info.file_size} bytes from "
                                    f"{info.compress_size} compressed bytes, more than deflate "
                                    f"can produce")
        # No two members share bytes (nor a member the central directory's): the tensors'
        # declared sizes together stay within what the file holds.
        spans = sorted(members.items(), key=lambda item: item[1].header_offset)
        for (entry, info), (other, nxt) in zip(spans, spans[1:]):
            if _member_end(info) > nxt.header_offset:
                raise DataLossError(f"{self.path}: entry {entry!r} overlaps entry {other!r}")
        if spans and _member_end(spans[-1][1]) > getattr(zf, "start_dir", size):
            raise DataLossError(f"{self.path}: entry {spans[-1][0]!r} overlaps the ZIP central "
                                f"directory")
        return members

    def _open_member(self, raw: IO[bytes], info: Any) -> IO[bytes]:
        """Member ``info`` of the archive open as ``raw``, as ``ZipFile.open`` opens it (the
        local header checked against the central directory's), without parsing the whole
        central directory again."""
        raw.seek(info.header_offset)
        header = raw.read(_LOCAL_HEADER)
        if len(header) != _LOCAL_HEADER:
            raise zipfile.BadZipFile("Truncated file header")
        fields = struct.unpack(_LOCAL_HEADER_STRUCT, header)
        if fields[0] != b"PK\x03\x04":
            raise zipfile.BadZipFile("Bad magic number for file header")
        name = raw.read(fields[10])
        raw.seek(fields[11], os.SEEK_CUR)
        if info.flag_bits & 0x60:
            raise NotImplementedError("compressed patched data or strong encryption")
        if name.decode("utf-8" if info.flag_bits & 0x800 else "cp437") != info.orig_filename:
            raise zipfile.BadZipFile(f"File name in directory {info.orig_filename!r} and "
                                     f"header {name!r} differ.")
        return cast(IO[bytes], zipfile.ZipExtFile(raw, "r", info))

    def _parse_index(self, index: Any) -> Dict[str, Spec]:
        if not isinstance(index, dict) or index.get("format") != FORMAT:
            raise DataLossError(f"{self.path} is not a compatopt checkpoint (no index)")
        version = index.get("version", 0)
        if type(version) is not int:
            raise DataLossError(f"{self.path}: corrupt index (version {_brief(version)})")
        if version > VERSION:
            raise DataLossError(f"{self.path} was written by a newer compatopt (format "
                                f"version {version}); upgrade compatopt")
        tensors = index.get("tensors")
        if not isinstance(tensors, dict):
            raise DataLossError(f"{self.path}: corrupt index (no tensor table)")
        specs: Dict[str, Spec] = {}
        for name, t in tensors.items():
            where = f"{self.path}: corrupt index entry {_brief(name)}"
            if not name or name == INDEX or not isinstance(t, dict):
                raise DataLossError(where)
            dtype_name = t.get("dtype")
            dtype = _tensor_dtypes().get(dtype_name) if isinstance(dtype_name, str) else None
            if dtype is None:
                raise DataLossError(f"{where} (unknown dtype {_brief(dtype_name)})")
            shape = t.get("shape")
            if not isinstance(shape, list) or not _sane_shape(shape, dtype.itemsize):
                raise DataLossError(f"{where} ({dtype}{_brief(shape)})")
            specs[name] = (tuple(shape), dtype)
        return specs

    def _read_npy(self, f: IO, info: Any, name: str, spec: Optional[Spec],
                  data: bool = True) -> np.ndarray:
        """Member ``name``'s ``.npy`` array, read from ``f`` (member ``info`` open; ``spec``
        None: the index, a 1-D ``uint8``), its header checked against ``spec`` and the
        member's size before any allocation (a crafted 4 TiB shape is a
        :class:`DataLossError`, never a ``MemoryError``); with ``data=False`` only the
        header is checked and an empty array returned."""
        where = f"{self.path}: entry {name!r}"
        magic = f.read(8)
        if len(magic) < 8 or magic[:6] != _NPY_MAGIC:
            raise DataLossError(f"{where} is not a .npy array (or is truncated)")
        version = (magic[6], magic[7])
        if version not in ((1, 0), (2, 0), (3, 0)):
            raise DataLossError(f"{where}: unknown .npy version {version}")
        width = 2 if version == (1, 0) else 4
        raw_len = f.read(width)
        if len(raw_len) < width:
            raise DataLossError(f"{where} is truncated (in its .npy header)")
        header_len = int.from_bytes(raw_len, "little")
        if header_len > _MAX_HEADER:
            raise DataLossError(f"{where}: its .npy header claims {header_len} bytes")
        header_bytes = f.read(header_len)
        if len(header_bytes) < header_len:
            raise DataLossError(f"{where} is truncated (in its .npy header)")
        header = self._parse_header(where, header_bytes, version)
        descr, fortran, shape = header
        if spec is None:  # the index: a 1-D uint8 array
            dtype = stored = np.dtype(np.uint8)
            ok = descr == "|u1" and len(shape) == 1
            want = "a 1-D uint8 array"
        else:
            dtype = spec[1]
            stored = _stored_dtype(dtype)
            ok = descr == _stored_descr(dtype) and shape == spec[0]
            want = f"{dtype}{list(spec[0])} (stored as {_stored_descr(dtype)!r})"
        if not _sane_shape(shape, stored.itemsize):
            raise DataLossError(f"{where}: bad shape {_brief(shape)} in its .npy header")
        count = 1
        for d in shape:
            count *= d
        nbytes = count * stored.itemsize
        if not ok:
            raise DataLossError(f"{where}: its .npy header says {_brief(descr)}"
                                f"{_brief(list(shape))}, the index says {want}")
        held = info.file_size - (len(magic) + width + header_len)
        if nbytes != held:
            raise DataLossError(
                f"{where}: its header declares shape {shape} of {descr!r} ({nbytes} bytes) "
                f"but the member holds {held}")
        if not data:
            return np.empty(0, stored)
        out = np.empty(nbytes, np.uint8)
        view = out.data
        pos = 0
        while pos < nbytes:  # bounded: never more than the member was checked to hold
            chunk = f.read(min(_CHUNK, nbytes - pos))
            if not chunk:
                raise DataLossError(f"{where} is truncated")
            view[pos:pos + len(chunk)] = chunk
            pos += len(chunk)
        if f.read(1):  # also where zipfile checks the CRC-32
            raise DataLossError(f"{where} holds more bytes than its header declares")
        a = out.view(stored)
        if stored != dtype:
            a = a.view(dtype)
        if fortran:
            return a.reshape(shape, order="F").copy()
        return a.reshape(shape)

    @staticmethod
    def _parse_header(where: str, header_bytes: bytes, version: tuple) -> tuple:
        """``(descr, fortran_order, shape)`` of a ``.npy`` header: a literal dict, read
        without evaluating anything and without handing its descr to ``numpy.dtype``."""
        try:
            text = header_bytes.decode("utf-8" if version == (3, 0) else "latin1")
            d = ast.literal_eval(text)
        except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError):
            # MemoryError, RecursionError: the parser's own stack on a deeply nested (but
            # at most _MAX_HEADER bytes long) header
            raise DataLossError(f"{where}: unreadable .npy header") from None
        if (not isinstance(d, dict) or set(d) != {"descr", "fortran_order", "shape"}
                or not isinstance(d["descr"], str) or type(d["fortran_order"]) is not bool
                or not isinstance(d["shape"], tuple)):
            raise DataLossError(f"{where}: bad .npy header {_brief(d)}")
        return d["descr"], d["fortran_order"], d["shape"]

    # -------------------------------------------------------------------- reading
    def specs(self) -> Dict[str, Spec]:
        """``{name: (shape, dtype)}`` of every tensor in the checkpoint."""
        return dict(self._specs)

    def read(self, name: str) -> np.ndarray:
        """The tensor ``name``; :class:`DataLossError` if its bytes are damaged."""
        spec = self._specs[name]
        # The file is opened per read: no file handle outlives a call. While it is the file
        # the reader checked, its members are where they were; a replaced file (a new save
        # under the same prefix) is checked again.
        try:
            raw = open(self.path, "rb")
        except OSError as e:
            raise self._corrupt(e, name) from None
        with raw:
            try:
                same = _stamp(os.fstat(raw.fileno())) == self._stamp
            except OSError as e:
                raise self._corrupt(e, name) from None
            if same:
                return self._read_tensor(raw, None, self._members, name, spec)
        raw, zf, _, members = self._open_archive(name)
        with raw, zf:
            return self._read_tensor(raw, zf, members, name, spec)

    def _read_tensor(self, raw: IO, zf: Optional[zipfile.ZipFile], members: Dict[str, Any],
                     name: str, spec: Spec) -> np.ndarray:
        if name not in members:
            raise DataLossError(f"{self.path}: entry {name!r} is missing from the archive")
        info = members[name]
        try:
            with (zf.open(info) if zf is not None else self._open_member(raw, info)) as f:
                return self._read_npy(f, info, name, spec)
        except DataLossError:
            raise
        except _CORRUPT as e:
            raise self._corrupt(e, name) from None

    def close(self) -> None:
        pass
