"""TensorFlow's tensor-bundle checkpoint format (``tf.train.Saver``'s V2 format), natively.

Reads and writes what ``tensorflow/core/util/tensor_bundle`` does, without TensorFlow or a
protobuf library. A checkpoint ``<prefix>`` is:

* ``<prefix>.index``: a LevelDB-style SSTable (``tensorflow/core/lib/io/table``), keys
  sorted bytewise:

  - data blocks: entries ``varint32 shared, varint32 non_shared, varint32 value_len,
    key[shared:], value``, the key prefix-compressed against the previous key except at a
    restart point (every 16th entry); then the restart offsets (``fixed32`` each) and
    their count (``fixed32``);
  - a meta-index block (empty: TensorFlow writes no filters or stats), then an index
    block: one entry per data block, ``key >= `` the block's last key and ``<`` the next
    block's first, value the block's handle (``varint64 offset, varint64 size``);
  - every block is followed by a 5-byte trailer: a compression byte (0: none; 1: Snappy,
    which TensorFlow never uses for bundles and this reader refuses) and the masked
    CRC-32C of the block and that byte;
  - a 48-byte footer: the meta-index and index handles (varints, zero-padded to 40 bytes)
    and the magic number ``0xdb4775248b80fb57`` (``fixed64``).

  The empty key holds a ``BundleHeaderProto`` (``num_shards`` = 1, ``endianness`` = 2,
  ``version`` = 3: a ``VersionDef``, ``producer`` = 1, ``min_consumer`` = 2,
  ``bad_consumers`` = 3); every other key is a tensor name whose value is a
  ``BundleEntryProto``: ``dtype`` = 1 (TensorFlow's ``DataType`` enum), ``shape`` = 2
  (``TensorShapeProto``: ``dim`` = 2, each ``size`` = 1, ``name`` = 2; ``unknown_rank`` =
  3), ``shard_id`` = 3, ``offset`` = 4, ``size`` = 5, ``crc32c`` = 6 (``fixed32``, the
  masked CRC-32C of the tensor's bytes), ``slices`` = 7 (``TensorSliceProto``s: ``extent``
  = 1, each ``start`` = 1, ``length`` = 2, no length = the whole dimension).

* ``<prefix>.data-%05d-of-%05d`` (one per shard): the tensors' bytes, each at its entry's
  ``offset``, ``size`` bytes long, in the header's byte order (little-endian as written).
  A numeric tensor is its elements in C order; a string tensor is the ``varint64`` length
  of every element, the masked CRC-32C of those lengths (each as a little-endian
  ``uint32``), then the elements' bytes, and its entry's CRC covers the lengths (as
  ``uint32``), the length CRC and the bytes.

* A partitioned variable (``tf.compat.v1.get_variable(..., partitioner=...)``) is a full
  entry (dtype, full shape, ``slices``, no data) plus one hidden entry per slice, keyed by
  ``EncodeTensorNameSlice``: ``OrderedCode`` of ``0``, the name, the rank and each
  dimension's start and length (``-1`` for the whole dimension). The reader lists the full
  variable and assembles it from its slices, as TensorFlow's reader does.

Messages are decoded by hand (protobuf wire format: varints, ``fixed32``/``fixed64``,
length-delimited; unknown fields skipped). Nothing in the files is trusted: every varint,
handle, block, restart array, key order, shape, dtype, shard, offset and size is checked
against the file and against the others before anything is allocated (a tensor's memory
is its checked ``size``, which fits in its data file), every block's and tensor's CRC is
verified, and anything wrong raises :class:`compatopt.errors.DataLossError` naming the
file and the entry (``InvalidArgumentError`` for a checkpoint version this reader does not
know, as TensorFlow).

The writer (:func:`write_bundle`) writes what TensorFlow 2.21's ``BundleWriter`` writes for
the same tensors, byte for byte: one shard, the header, entries sorted by name with their
CRC-32C, 256 KiB data blocks, no compression.
"""

from __future__ import annotations

import functools
import os
import struct
from typing import Any, Dict, Iterator, List, Mapping, NamedTuple, Optional, Tuple

import numpy as np

from compatopt.checkpoint import _crc32c as crc32c
from compatopt.checkpoint._npz import Spec, atomic_write
from compatopt.errors import DataLossError, InvalidArgumentError

# Entries TensorFlow adds to object-based checkpoints; they are not variables.
TF_INTERNAL_KEYS = frozenset({"_CHECKPOINTABLE_OBJECT_GRAPH"})

MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48
TRAILER_SIZE = 5
BLOCK_SIZE = 262144          # TensorFlow's table::Options::block_size
RESTART_INTERVAL = 16        # TensorFlow's table::Options::block_restart_interval
BUNDLE_VERSION = 1           # kTensorBundleVersion (kTensorBundleMinConsumer = 0)
HEADER_KEY = b""

# TensorFlow's DataType enum -> (name, numpy dtype or None for strings).
_DT_NAMES = {1: "float32", 2: "float64", 3: "int32", 4: "uint8", 5: "int16", 6: "int8",
             7: "string", 8: "complex64", 9: "int64", 10: "bool", 14: "bfloat16",
             17: "uint16", 18: "complex128", 19: "float16", 22: "uint32", 23: "uint64",
             24: "float8_e5m2", 25: "float8_e4m3fn"}
_TF_TYPE_NAMES = {11: "qint8", 12: "quint8", 13: "qint32", 15: "qint16", 16: "quint16",
                  20: "resource", 21: "variant", 26: "float8_e4m3fnuz",
                  27: "float8_e4m3b11fnuz", 28: "float8_e5m2fnuz", 29: "int4", 30: "uint4"}
DT_STRING = 7


@functools.lru_cache(maxsize=None)
def _np_dtypes() -> Dict[int, np.dtype]:
    import ml_dtypes

    out = {}
    for code, name in _DT_NAMES.items():
        if name != "string":
            out[code] = np.dtype(getattr(ml_dtypes, name, None) or name)
    return out


def dtype_name(code: int) -> str:
    """TensorFlow's name of ``DataType`` ``code`` (``"float32"``, ``"qint8"``...)."""
    return _DT_NAMES.get(code) or _TF_TYPE_NAMES.get(code) or f"DataType({code})"


def tf_dtype_code(dtype: np.dtype) -> int:
    """TensorFlow's ``DataType`` of a numpy dtype; ``TypeError`` if it has none."""
    dtype = np.dtype(dtype)
    for code, d in _np_dtypes().items():
        if d == dtype:
            return code
    if dtype.kind in "SUO":
        return DT_STRING
    raise TypeError(f"dtype {dtype} has no TensorFlow checkpoint type")


# ----------------------------------------------------------------------------- wire format
class _Corrupt(Exception):
    """Raised inside the decoders; the caller turns it into a DataLossError with context."""


def _varint(buf: bytes, pos: int, end: int, bits: int = 64) -> Tuple[int, int]:
    result, shift = 0, 0
    while True:
        if pos >= end:
            raise _Corrupt("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            break
        shift += 7
        if shift >= 70:
            raise _Corrupt("varint too long")
    if result >> bits:
        raise _Corrupt(f"varint does not fit {bits} bits")
    return result, pos


def _put_varint(out: bytearray, value: int) -> None:
    if value < 0:
        value += 1 << 64  # protobuf's encoding of negative int32/int64
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return


def _signed(value: int, bits: int = 64) -> int:
    return value - (1 << 64) if value >> (bits - 1) else value


def _fields(buf: bytes) -> Iterator[Tuple[int, int, Any]]:
    """``(field, wire_type, value)`` of a protobuf message: ``int`` for varint and fixed
    fields, ``bytes`` for length-delimited ones."""
    pos, end = 0, len(buf)
    while pos < end:
        tag, pos = _varint(buf, pos, end)
        field, wire = tag >> 3, tag & 7
        if field == 0:
            raise _Corrupt("field number 0")
        if wire == 0:
            value, pos = _varint(buf, pos, end)
        elif wire == 1:
            if pos + 8 > end:
                raise _Corrupt("truncated fixed64")
            value, pos = struct.unpack_from("<Q", buf, pos)[0], pos + 8
        elif wire == 5:
            if pos + 4 > end:
                raise _Corrupt("truncated fixed32")
            value, pos = struct.unpack_from("<I", buf, pos)[0], pos + 4
        elif wire == 2:
            n, pos = _varint(buf, pos, end)
            if n > end - pos:
                raise _Corrupt("length-delimited field runs past the message")
            value, pos = bytes(buf[pos:pos + n]), pos + n
        else:
            raise _Corrupt(f"unsupported wire type {wire}")
        yield field, wire, value


def _expect(wire: int, want: int, what: str) -> None:
    if wire != want:
        raise _Corrupt(f"field {what} has wire type {wire}, expected {want}")


class Header(NamedTuple):
    num_shards: int
    big_endian: bool
    producer: int
    min_consumer: int
    bad_consumers: Tuple[int, ...]


def decode_header(buf: bytes) -> Header:
    num_shards, endianness, producer, min_consumer, bad = 0, 0, 0, 0, []
    for f, w, v in _fields(buf):
        if f == 1:
            _expect(w, 0, "num_shards")
            num_shards = _signed(v)
        elif f == 2:
            _expect(w, 0, "endianness")
            endianness = v
        elif f == 3:
            _expect(w, 2, "version")
            for vf, vw, vv in _fields(v):
                if vf in (1, 2):
                    _expect(vw, 0, "version")
                    if vf == 1:
                        producer = _signed(vv)
                    else:
                        min_consumer = _signed(vv)
                elif vf == 3:
                    if vw == 0:
                        bad.append(_signed(vv))
                    elif vw == 2:  # packed
                        pos = 0
                        while pos < len(vv):
                            x, pos = _varint(vv, pos, len(vv))
                            bad.append(_signed(x))
                    else:
                        raise _Corrupt("bad_consumers has a bad wire type")
    if endianness not in (0, 1):
        raise _Corrupt(f"unknown endianness {endianness}")
    return Header(num_shards, endianness == 1, producer, min_consumer, tuple(bad))


def encode_header(num_shards: int = 1) -> bytes:
    out = bytearray()
    out += b"\x08"
    _put_varint(out, num_shards)
    version = bytearray(b"\x08")
    _put_varint(version, BUNDLE_VERSION)
    out += b"\x1a"
    _put_varint(out, len(version))
    out += version
    return bytes(out)


class Extent(NamedTuple):
    start: int
    length: int  # -1: the whole dimension


class Entry(NamedTuple):
    """A decoded ``BundleEntryProto``."""

    dtype: int
    shape: Tuple[int, ...]
    shard_id: int
    offset: int
    size: int
    crc32c: Optional[int]
    slices: Tuple[Tuple[Extent, ...], ...]


def _decode_shape(buf: bytes) -> Tuple[int, ...]:
    dims = []
    for f, w, v in _fields(buf):
        if f == 2:
            _expect(w, 2, "shape.dim")
            size = 0
            for df, dw, dv in _fields(v):
                if df == 1:
                    _expect(dw, 0, "shape.dim.size")
                    size = _signed(dv)
            if size < 0:
                raise _Corrupt(f"negative dimension {size}")
            dims.append(size)
        elif f == 3 and v:
            raise _Corrupt("shape of unknown rank")
    return tuple(dims)


def _decode_slice(buf: bytes) -> Tuple[Extent, ...]:
    extents = []
    for f, w, v in _fields(buf):
        if f == 1:
            _expect(w, 2, "slice.extent")
            start, length = 0, -1
            for ef, ew, ev in _fields(v):
                if ef in (1, 2):
                    _expect(ew, 0, "slice.extent")
                    if ef == 1:
                        start = _signed(ev)
                    else:
                        length = _signed(ev)
            extents.append(Extent(start, length))
    return tuple(extents)


def decode_entry(buf: bytes) -> Entry:
    dtype, shape, shard, offset, size, crc = 0, (), 0, 0, 0, None
    slices = []
    for f, w, v in _fields(buf):
        if f in (1, 3, 4, 5):
            _expect(w, 0, ("", "dtype", "", "shard_id", "offset", "size")[f])
            if f == 1:
                dtype = v
            elif f == 3:
                shard = _signed(v)
            elif f == 4:
                offset = _signed(v)
            else:
                size = _signed(v)
        elif f == 2:
            _expect(w, 2, "shape")
            shape = _decode_shape(v)
        elif f == 6:
            _expect(w, 5, "crc32c")
            crc = v
        elif f == 7:
            _expect(w, 2, "slices")
            slices.append(_decode_slice(v))
    if shard < 0 or offset < 0 or size < 0:
        raise _Corrupt(f"negative shard_id, offset or size ({shard}, {offset}, {size})")
    return Entry(dtype, shape, shard, offset, size, crc, tuple(slices))


def encode_entry(dtype: int, shape: Tuple[int, ...], offset: int, size: int, crc: int,
                 shard_id: int = 0) -> bytes:
    """A ``BundleEntryProto`` as TensorFlow serialises it (proto3: zero fields left out)."""
    out = bytearray()
    out += b"\x08"
    _put_varint(out, dtype)
    shape_msg = bytearray()
    for d in shape:
        dim = bytearray()
        if d:
            dim += b"\x08"
            _put_varint(dim, d)
        shape_msg += b"\x12"
        _put_varint(shape_msg, len(dim))
        shape_msg += dim
    out += b"\x12"
    _put_varint(out, len(shape_msg))
    out += shape_msg
    for tag, value in ((b"\x18", shard_id), (b"\x20", offset), (b"\x28", size)):
        if value:
            out += tag
            _put_varint(out, value)
    out += b"\x35" + struct.pack("<I", crc)
    return bytes(out)


# ------------------------------------------------------------------------- OrderedCode keys
def _ordered_num(out: bytearray, value: int) -> None:
    """``OrderedCode::WriteNumIncreasing``: length byte, then big-endian bytes."""
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big") if value else b""
    out.append(len(raw))
    out += raw


_HEADER_BITS = [(0, 0), (0x80, 0), (0xC0, 0), (0xE0, 0), (0xF0, 0), (0xF8, 0), (0xFC, 0),
                (0xFE, 0), (0xFF, 0), (0xFF, 0x80), (0xFF, 0xC0)]


def _ordered_signed(out: bytearray, value: int) -> None:
    """``OrderedCode::WriteSignedNumIncreasing``."""
    x = ~value if value < 0 else value
    if x < 64:
        out.append((0x80 ^ value) & 0xFF)
        return
    n = x.bit_length() // 7 + 1
    buf = bytearray(value.to_bytes(10, "big", signed=True)[10 - n:])
    buf[0] ^= _HEADER_BITS[n][0]
    buf[1] ^= _HEADER_BITS[n][1]
    out += buf


def slice_key(name: bytes, extents: Tuple[Extent, ...]) -> bytes:
    """``checkpoint::EncodeTensorNameSlice``: the key of one slice of a partitioned
    variable."""
    out = bytearray()
    _ordered_num(out, 0)
    for b in name:  # OrderedCode::WriteString: escape 0x00 and 0xff, end with 0x00 0x01
        out += b"\x00\xff" if b == 0 else b"\xff\x00" if b == 0xFF else bytes([b])
    out += b"\x00\x01"
    _ordered_num(out, len(extents))
    for e in extents:
        _ordered_signed(out, e.start)
        _ordered_signed(out, e.length)
    return bytes(out)


# ------------------------------------------------------------------------------ the table
def _u32(buf: bytes, pos: int) -> int:
    return struct.unpack_from("<I", buf, pos)[0]


def _block(data: bytes, handle: Tuple[int, int], what: str) -> bytes:
    """The contents of the block at ``handle``, its trailer's CRC checked."""
    offset, size = handle
    if offset + size + TRAILER_SIZE > len(data) - FOOTER_SIZE:
        raise _Corrupt(f"{what} (offset {offset}, size {size}) runs past the end of the "
                       f"table")
    contents = data[offset:offset + size]
    kind = data[offset + size]
    stored = _u32(data, offset + size + 1)
    if crc32c.unmask(stored) != crc32c.extend(crc32c.value(contents), bytes([kind])):
        raise _Corrupt(f"{what}: block checksum mismatch")
    if kind != 0:
        name = "Snappy" if kind == 1 else f"type {kind}"
        raise _Corrupt(f"{what} is compressed ({name}); compatopt reads only uncompressed "
                       f"blocks, which is what TensorFlow writes for checkpoints")
    return contents


def _block_entries(block: bytes, what: str) -> List[Tuple[bytes, bytes]]:
    if len(block) < 4:
        raise _Corrupt(f"{what} is shorter than its restart count")
    num_restarts = _u32(block, len(block) - 4)
    if num_restarts > (len(block) - 4) // 4:
        raise _Corrupt(f"{what}: {num_restarts} restart points do not fit the block")
    limit = len(block) - 4 - 4 * num_restarts
    restarts = [_u32(block, limit + 4 * i) for i in range(num_restarts)]
    if any(r >= limit and not (r == 0 and limit == 0) for r in restarts):
        raise _Corrupt(f"{what}: a restart point is outside the block")
    out: List[Tuple[bytes, bytes]] = []
    pos, key, fresh = 0, b"", set()  # fresh: offsets of entries that share nothing
    while pos < limit:
        start = pos
        shared, pos = _varint(block, pos, limit, 32)
        if shared == 0:
            fresh.add(start)
        non_shared, pos = _varint(block, pos, limit, 32)
        value_len, pos = _varint(block, pos, limit, 32)
        if shared > len(key) or non_shared + value_len > limit - pos:
            raise _Corrupt(f"{what}: bad entry at offset {pos}")
        key = key[:shared] + bytes(block[pos:pos + non_shared])
        pos += non_shared
        out.append((key, bytes(block[pos:pos + value_len])))
        pos += value_len
    if limit and any(r not in fresh for r in restarts):
        raise _Corrupt(f"{what}: a restart point is not at an entry with a whole key")
    return out


def _handle(value: bytes, what: str) -> Tuple[int, int]:
    offset, pos = _varint(value, 0, len(value))
    size, pos = _varint(value, pos, len(value))
    return offset, size


def read_table(data: bytes) -> List[Tuple[bytes, bytes]]:
    """Every ``(key, value)`` of an SSTable held in ``data``, in order (keys checked to be
    strictly increasing). Raises ``_Corrupt``."""
    if len(data) < FOOTER_SIZE:
        raise _Corrupt(f"the file is {len(data)} bytes, shorter than a table footer")
    footer = data[len(data) - FOOTER_SIZE:]
    if struct.unpack_from("<Q", footer, 40)[0] != MAGIC:
        raise _Corrupt("not a table (bad magic number)")
    _, pos = _varint(footer, 0, 40)           # meta-index handle (unused)
    _, pos = _varint(footer, pos, 40)
    index_offset, pos = _varint(footer, pos, 40)
    index_size, pos = _varint(footer, pos, 40)
    index = _block_entries(_block(data, (index_offset, index_size), "index block"),
                           "index block")
    entries: List[Tuple[bytes, bytes]] = []
    last = None
    for i, (_, value) in enumerate(index):
        for key, v in _block_entries(_block(data, _handle(value, "index"), f"data block {i}"),
                                     f"data block {i}"):
            if last is not None and key <= last:
                raise _Corrupt(f"keys out of order ({last!r} then {key!r})")
            entries.append((key, v))
            last = key
    return entries


class _BlockBuilder:
    def __init__(self, restart_interval: int) -> None:
        self.interval = restart_interval
        self.buf = bytearray()
        self.restarts = [0]
        self.counter = 0
        self.last = b""
        self.empty = True

    def add(self, key: bytes, value: bytes) -> None:
        shared = 0
        if self.counter < self.interval:
            n = min(len(self.last), len(key))
            while shared < n and self.last[shared] == key[shared]:
                shared += 1
        else:
            self.restarts.append(len(self.buf))
            self.counter = 0
        _put_varint(self.buf, shared)
        _put_varint(self.buf, len(key) - shared)
        _put_varint(self.buf, len(value))
        self.buf += key[shared:]
        self.buf += value
        self.last = key
        self.counter += 1
        self.empty = False

    def size_estimate(self) -> int:
        return len(self.buf) + 4 * len(self.restarts) + 4

    def finish(self) -> bytes:
        out = self.buf + b"".join(struct.pack("<I", r) for r in self.restarts)
        return bytes(out + struct.pack("<I", len(self.restarts)))


def _separator(start: bytes, limit: bytes) -> bytes:
    """``BytewiseComparator::FindShortestSeparator``."""
    n = min(len(start), len(limit))
    i = 0
    while i < n and start[i] == limit[i]:
        i += 1
    if i < n:
        b = start[i]
        if b < 0xFF and b + 1 < limit[i]:
            return start[:i] + bytes([b + 1])
    return start


def _successor(key: bytes) -> bytes:
    """``BytewiseComparator::FindShortSuccessor``."""
    for i, b in enumerate(key):
        if b != 0xFF:
            return key[:i] + bytes([b + 1])
    return key


def build_table(items: List[Tuple[bytes, bytes]], block_size: int = BLOCK_SIZE) -> bytes:
    """An SSTable of ``items`` (sorted, distinct keys) as TensorFlow's ``TableBuilder``
    writes it without compression."""
    out = bytearray()

    def write_block(contents: bytes) -> bytes:
        handle = bytearray()
        _put_varint(handle, len(out))
        _put_varint(handle, len(contents))
        crc = crc32c.mask(crc32c.extend(crc32c.value(contents), b"\x00"))
        out.extend(contents + b"\x00" + struct.pack("<I", crc))
        return bytes(handle)

    data = _BlockBuilder(RESTART_INTERVAL)
    index = _BlockBuilder(1)
    pending: Optional[bytes] = None
    last = b""
    for key, value in items:
        if pending is not None:
            index.add(_separator(last, key), pending)
            pending = None
        data.add(key, value)
        last = key
        if data.size_estimate() >= block_size:
            pending = write_block(data.finish())
            data = _BlockBuilder(RESTART_INTERVAL)
    if not data.empty:
        pending = write_block(data.finish())
    meta_handle = write_block(_BlockBuilder(RESTART_INTERVAL).finish())
    if pending is not None:
        index.add(_successor(last), pending)
    index_handle = write_block(index.finish())
    footer = (meta_handle + index_handle).ljust(40, b"\x00") + struct.pack("<Q", MAGIC)
    return bytes(out + footer)


# ----------------------------------------------------------------------------- the bundle
def data_file(prefix: str, shard: int, num_shards: int) -> str:
    """``<prefix>.data-00000-of-00001``."""
    return f"{prefix}.data-{shard:05d}-of-{num_shards:05d}"


class EntryInfo(NamedTuple):
    """What :meth:`BundleReader.entries` reports for one tensor."""

    name: str
    dtype: str          # TensorFlow's name: "float32", "string", "qint8"...
    shape: Tuple[int, ...]
    shard_id: int
    offset: int
    size: int
    slices: Tuple[Tuple[Extent, ...], ...]  # a partitioned variable's slices, else ()


class BundleReader:
    """Reads a TensorFlow checkpoint ``prefix`` (``<prefix>.index``, ``.data-*``) without
    TensorFlow, behind the interface of :class:`compatopt.checkpoint._npz.NpzReader`.

    Opening reads and checks the whole index and the data files' sizes; :meth:`read`
    reads one tensor and checks its CRC-32C. :meth:`specs` lists the numeric tensors
    (partitioned variables whole, under their own name, as TensorFlow lists them);
    string tensors and TensorFlow's internal object graph are left out of it (as
    TensorFlow's reader behind compatopt left them out) and read with :meth:`read` too,
    as object arrays of ``bytes``. :meth:`entries` reports everything, slices included.
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.path = prefix
        self._index_path = prefix + ".index"
        try:
            with open(self._index_path, "rb") as f:
                raw = f.read()
        except FileNotFoundError as e:
            raise DataLossError(f"Unable to read TensorFlow checkpoint {prefix}: "
                                f"{self._index_path} does not exist") from e
        except OSError as e:
            raise DataLossError(f"Unable to read TensorFlow checkpoint {prefix}: {e}") from e
        try:
            items = read_table(raw)
        except _Corrupt as e:
            raise self._loss(f"the index file is truncated or corrupt ({e})") from None
        if not items or items[0][0] != HEADER_KEY:
            raise self._loss("the index has no bundle header (the empty key)")
        try:
            header = decode_header(items[0][1])
        except _Corrupt as e:
            raise self._loss(f"corrupt bundle header ({e})") from None
        if header.producer < 0 or header.min_consumer > BUNDLE_VERSION or \
                BUNDLE_VERSION in header.bad_consumers:
            raise InvalidArgumentError(
                f"Checkpoint {prefix} needs a newer reader: version producer "
                f"{header.producer}, min_consumer {header.min_consumer}, bad_consumers "
                f"{list(header.bad_consumers)}; this reader is version {BUNDLE_VERSION}")
        if header.num_shards < 1:
            raise self._loss(f"the header says {header.num_shards} shards")
        self._header = header
        self._entries: Dict[str, Entry] = {}
        self._raw_keys: Dict[bytes, Entry] = {}
        for key, value in items[1:]:
            try:
                entry = decode_entry(value)
            except _Corrupt as e:
                raise self._loss(f"corrupt entry {key!r} ({e})") from None
            self._raw_keys[key] = entry
        self._shard_sizes: Dict[int, int] = {}
        for key, entry in self._raw_keys.items():
            if key.startswith(b"\x00"):
                continue  # a slice of a partitioned variable, checked with its variable
            try:
                name = key.decode("utf-8")
            except UnicodeDecodeError:
                raise self._loss(f"tensor name {key!r} is not UTF-8") from None
            self._check_entry(name, entry)
            self._entries[name] = entry

    # ---------------------------------------------------------------- checks
    def _loss(self, what: str, name: Optional[str] = None) -> DataLossError:
        where = f" tensor {name!r}:" if name is not None else ""
        return DataLossError(f"Unable to read TensorFlow checkpoint {self.prefix}:{where} "
                             f"{what}")

    def _shard_size(self, shard: int, name: str) -> int:
        if shard not in self._shard_sizes:
            path = data_file(self.prefix, shard, self._header.num_shards)
            try:
                self._shard_sizes[shard] = os.path.getsize(path)
            except OSError:
                raise self._loss(f"its data file {path} is missing", name) from None
        return self._shard_sizes[shard]

    def _check_data(self, name: str, entry: Entry, shape: Tuple[int, ...]) -> None:
        if entry.dtype != DT_STRING and entry.dtype in _np_dtypes():
            itemsize = _np_dtypes()[entry.dtype].itemsize
            nbytes = int(np.prod(shape, dtype=object)) * itemsize
            if nbytes != entry.size:
                raise self._loss(f"its entry says {entry.size} bytes, but "
                                 f"{dtype_name(entry.dtype)}{list(shape)} is {nbytes}", name)
        elif entry.dtype == DT_STRING and int(np.prod(shape, dtype=object)) + 4 > entry.size:
            raise self._loss(f"{entry.size} bytes cannot hold a string tensor of shape "
                             f"{list(shape)}", name)
        if entry.shard_id >= self._header.num_shards:
            raise self._loss(f"shard {entry.shard_id} of {self._header.num_shards}", name)
        if entry.crc32c is None:
            raise self._loss("its entry has no crc32c", name)
        size = self._shard_size(entry.shard_id, name)
        if entry.offset + entry.size > size:
            raise self._loss(
                f"bytes {entry.offset}..{entry.offset + entry.size} lie past the end of "
                f"{data_file(self.prefix, entry.shard_id, self._header.num_shards)} "
                f"({size} bytes): the data file is truncated", name)

    def _check_entry(self, name: str, entry: Entry) -> None:
        if not entry.slices:
            self._check_data(name, entry, entry.shape)
            return
        if entry.dtype not in _np_dtypes():
            raise self._loss(f"a partitioned {dtype_name(entry.dtype)} variable", name)
        for extents in entry.slices:
            if len(extents) != len(entry.shape):
                raise self._loss(f"a slice of rank {len(extents)} of a variable of shape "
                                 f"{list(entry.shape)}", name)
            shape = self._slice_shape(name, entry.shape, extents)
            part = self._raw_keys.get(slice_key(name.encode("utf-8"), extents))
            if part is None:
                raise self._loss(f"the entry of its slice {self._fmt(extents)} is missing",
                                 name)
            if part.dtype != entry.dtype or part.shape != shape or part.slices:
                raise self._loss(f"the entry of its slice {self._fmt(extents)} says "
                                 f"{dtype_name(part.dtype)}{list(part.shape)}", name)
            self._check_data(f"{name} slice {self._fmt(extents)}", part, shape)

    @staticmethod
    def _fmt(extents: Tuple[Extent, ...]) -> str:
        return ":".join("-" if e.length < 0 else f"{e.start},{e.length}" for e in extents)

    def _slice_shape(self, name, full, extents) -> Tuple[int, ...]:
        shape = []
        for e, dim in zip(extents, full):
            start, length = (0, dim) if e.length == -1 else (e.start, e.length)
            if start < 0 or length < 0 or start + length > dim:
                raise self._loss(f"slice {self._fmt(extents)} lies outside its shape "
                                 f"{list(full)}", name)
            shape.append(length)
        return tuple(shape)

    # -------------------------------------------------------------- interface
    def entries(self) -> List[EntryInfo]:
        """Every tensor of the checkpoint (partitioned variables once, with their
        slices), sorted by name."""
        return [EntryInfo(n, dtype_name(e.dtype), e.shape, e.shard_id, e.offset, e.size,
                          e.slices) for n, e in sorted(self._entries.items())]

    def specs(self) -> Dict[str, Spec]:
        out: Dict[str, Spec] = {}
        for name, entry in self._entries.items():
            if name not in TF_INTERNAL_KEYS and entry.dtype in _np_dtypes():
                out[name] = (entry.shape, _np_dtypes()[entry.dtype])
        return out

    def read(self, name: str) -> np.ndarray:
        """The tensor ``name``: a numpy array of its dtype (bfloat16 and float8 as
        ``ml_dtypes``), or for a string tensor an object array of ``bytes``."""
        entry = self._entries.get(name)
        if entry is None:
            from compatopt.errors import NotFoundError
            raise NotFoundError(f"Key {name} not found in checkpoint {self.prefix}")
        if entry.dtype != DT_STRING and entry.dtype not in _np_dtypes():
            raise InvalidArgumentError(
                f"Tensor {name!r} of checkpoint {self.prefix} has dtype "
                f"{dtype_name(entry.dtype)}, which compatopt cannot read")
        if not entry.slices:
            return self._read_data(name, entry, entry.shape)
        dtype = _np_dtypes()[entry.dtype]
        parts = []
        for extents in entry.slices:
            shape = self._slice_shape(name, entry.shape, extents)
            part = self._raw_keys[slice_key(name.encode("utf-8"), extents)]
            parts.append((extents, self._read_data(f"{name} slice {self._fmt(extents)}",
                                                   part, shape)))
        total = int(np.prod(entry.shape, dtype=object))
        if sum(p.size for _, p in parts) != total:  # bounded by the slices' checked sizes
            raise self._loss(f"its slices hold {sum(p.size for _, p in parts)} of its "
                             f"{total} elements", name)
        out = np.zeros(entry.shape, dtype)
        covered = np.zeros(entry.shape, bool)
        for extents, value in parts:
            index = tuple(slice(None) if e.length == -1 else slice(e.start, e.start + e.length)
                          for e in extents)
            if covered[index].any():
                raise self._loss(f"its slices overlap at {self._fmt(extents)}", name)
            covered[index] = True
            out[index] = value
        return out

    def _read_data(self, name: str, entry: Entry, shape: Tuple[int, ...]) -> np.ndarray:
        path = data_file(self.prefix, entry.shard_id, self._header.num_shards)
        buf = np.empty(entry.size, np.uint8)  # entry.size was checked against the file's size
        try:
            with open(path, "rb") as f:
                f.seek(entry.offset)
                got = f.readinto(buf.data)
        except OSError as e:
            raise self._loss(f"cannot read {path} ({e})", name) from None
        if got != entry.size:
            raise self._loss(f"{path} is truncated (read {got} of {entry.size} bytes)", name)
        raw = buf
        assert entry.crc32c is not None  # checked when the index was opened
        strings = None
        if entry.dtype == DT_STRING:
            try:
                strings, actual = _decode_strings(raw.tobytes(), shape,
                                                  self._header.big_endian)
            except _Corrupt as e:
                raise self._loss(f"corrupt string tensor ({e}); the data file {path} is "
                                 f"corrupt", name) from None
        else:
            actual = crc32c.value(raw)
        if crc32c.unmask(entry.crc32c) != actual:
            raise self._loss(f"checksum does not match: stored "
                             f"{crc32c.unmask(entry.crc32c):#010x}, actual {actual:#010x}; "
                             f"the data file {path} is corrupt", name)
        if strings is not None:
            return strings
        dtype = _np_dtypes()[entry.dtype]
        if entry.dtype == 10 and raw.max(initial=0) > 1:
            raise self._loss("a bool tensor holds bytes other than 0 and 1", name)
        if self._header.big_endian and dtype.itemsize > 1:  # swap each element's bytes
            width = dtype.itemsize // (2 if dtype.kind == "c" else 1)
            raw = np.ascontiguousarray(raw.reshape(-1, width)[:, ::-1]).reshape(-1)
        return raw.view(dtype).reshape(shape)

    def close(self) -> None:
        pass


def _decode_strings(raw: bytes, shape: Tuple[int, ...], big_endian: bool
                    ) -> Tuple[np.ndarray, int]:
    """A string tensor's elements and its CRC-32C (over the lengths as ``uint32``, the
    length checksum and the bytes)."""
    n = int(np.prod(shape, dtype=object))
    pos, lengths = 0, []
    for _ in range(n):
        length, pos = _varint(raw, pos, len(raw))
        lengths.append(length)
    if pos + 4 > len(raw):
        raise _Corrupt("truncated length checksum")
    stored = struct.unpack_from(">I" if big_endian else "<I", raw, pos)[0]
    crc = _lengths_crc(lengths, big_endian)
    if crc32c.unmask(stored) != crc:
        raise _Corrupt("length checksum mismatch")
    crc = crc32c.extend(crc, raw[pos:pos + 4])
    pos += 4
    if sum(lengths) != len(raw) - pos:
        raise _Corrupt(f"the lengths add up to {sum(lengths)} bytes, the tensor has "
                       f"{len(raw) - pos}")
    out = np.empty(n, object)
    for i, length in enumerate(lengths):
        out[i] = raw[pos:pos + length]
        pos += length
    return out.reshape(shape), crc32c.extend(crc, raw[pos - sum(lengths):])


def _lengths_crc(lengths: List[int], big_endian: bool = False) -> int:
    crc = 0
    order = ">" if big_endian else "<"
    for length in lengths:
        crc = crc32c.extend(crc, struct.pack(order + ("I" if length <= 0xFFFFFFFF else "Q"),
                                             length))
    return crc


def _encode_strings(value: np.ndarray) -> Tuple[bytes, int]:
    """A string tensor's bytes and its (unmasked) CRC-32C."""
    items = []
    for x in value.reshape(-1):
        if isinstance(x, str):
            x = x.encode("utf-8")
        if not isinstance(x, (bytes, np.bytes_)):
            raise TypeError(f"a string tensor element must be bytes or str, got {x!r}")
        items.append(bytes(x))
    lengths = bytearray()
    for x in items:
        _put_varint(lengths, len(x))
    crc = _lengths_crc([len(x) for x in items])
    length_crc = struct.pack("<I", crc32c.mask(crc))
    crc = crc32c.extend(crc, length_crc)
    body = b"".join(items)
    return bytes(lengths) + length_crc + body, crc32c.extend(crc, body)


def write_bundle(prefix: str, tensors: Mapping[str, Any], *,
                 block_size: int = BLOCK_SIZE) -> str:
    """Writes ``tensors`` (``{name: array}``) as a TensorFlow checkpoint ``prefix``.

    What ``tf.compat.v1.train.Saver`` (V2 format) writes for the same tensors, byte for
    byte: ``<prefix>.data-00000-of-00001`` (the tensors' bytes in name order) and
    ``<prefix>.index`` (header and entries with their CRC-32C). Numeric arrays keep their
    dtype (bfloat16 and float8 as ``ml_dtypes``); arrays of ``bytes``/``str`` (object,
    ``S`` or ``U`` dtype) are string tensors. Each file is written to a temporary file and
    renamed into place, the data file first, so the index only ever names complete data.
    ``TensorFlow`` reads the result with ``tf.train.load_checkpoint`` and
    ``tf.compat.v1.train.Saver().restore``. Returns ``prefix``.
    """
    entries = []
    for name, value in tensors.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"Cannot save a tensor named {name!r}")
        a = np.asarray(value)
        if a.dtype.byteorder == ">":
            a = a.astype(a.dtype.newbyteorder("<"))
        code = tf_dtype_code(a.dtype)
        if code == DT_STRING:
            raw, crc = _encode_strings(a)
        else:
            raw = np.ascontiguousarray(a).tobytes()
            crc = crc32c.value(raw)
        entries.append((name.encode("utf-8"), code, tuple(a.shape), raw, crc))
    entries.sort(key=lambda e: e[0])
    items = [(HEADER_KEY, encode_header(1))]
    offset = 0
    for key, code, shape, raw, crc in entries:
        items.append((key, encode_entry(code, shape, offset, len(raw), crc32c.mask(crc))))
        offset += len(raw)

    def write_data(f) -> None:
        for e in entries:
            f.write(e[3])

    atomic_write(data_file(prefix, 0, 1), "wb", write_data)
    atomic_write(prefix + ".index", "wb", lambda f: f.write(build_table(items, block_size)))
    return prefix
