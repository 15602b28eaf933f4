"""CRC-32C (Castagnoli), as TensorFlow's ``tsl::crc32c``, in NumPy.

Polynomial ``0x82F63B78`` (reflected), initial value and final XOR ``0xFFFFFFFF``:
``value(b"123456789") == 0xE3069283``. :func:`extend` continues a CRC over more bytes
(``crc32c::Extend``); :func:`mask` / :func:`unmask` are TensorFlow's and LevelDB's masking of
a stored CRC (rotate right by 15 bits, add ``0xA282EAD8``).

Speed: the CRC register update without the initial/final XOR is linear over GF(2), so a long
input is cut into ``n`` equal chunks whose CRCs are computed side by side (one NumPy
operation advances all ``n`` chunks by 8 bytes, through 16-bit lookup tables) and then
combined pairwise in a tree (shifting a CRC over ``k`` zero bytes is a 32x32 bit matrix,
applied with lookup tables as well). Short inputs (and the tail) use a plain byte loop.
About 0.5-1 GB/s on one core; a 100 MB checkpoint is checked in a fraction of a second.
"""

from __future__ import annotations

import functools
from typing import Tuple, Union

import numpy as np

_POLY = 0x82F63B78
_MASK_DELTA = 0xA282EAD8
_SHORT = 1 << 14      # inputs up to this length use the byte loop
_CHUNKS = 1 << 14     # at most this many chunks run side by side
_CHUNK_BYTES = 2048   # of at most this many bytes (32 MiB per pass)

Bytes = Union[bytes, bytearray, memoryview, np.ndarray]


def _byte_table() -> np.ndarray:
    t = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        t = np.where(t & 1, (t >> 1) ^ np.uint32(_POLY), t >> 1).astype(np.uint32)
    return t


_TABLE = _byte_table()
_TABLE_LIST = [int(x) for x in _TABLE]


def _raw_bytes(crc: int, data: Union[bytes, bytearray, memoryview]) -> int:
    """The register update over ``data`` (no initial or final XOR), one byte at a time."""
    t = _TABLE_LIST
    for b in bytes(data):
        crc = t[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc


def _apply(columns: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The GF(2)-linear map with ``columns[k] = map(1 << k)`` applied to every ``x``."""
    out = np.zeros_like(x)
    for k in range(32):
        out ^= np.where((x >> np.uint32(k)) & np.uint32(1), columns[k], np.uint32(0))
    return out


@functools.lru_cache(maxsize=None)
def _zeros_columns(nbytes: int) -> np.ndarray:
    """Columns of the map "run the register over ``nbytes`` zero bytes"."""
    if nbytes == 0:
        return (np.uint32(1) << np.arange(32, dtype=np.uint32)).astype(np.uint32)
    if nbytes == 1:
        e = (np.uint32(1) << np.arange(32, dtype=np.uint32)).astype(np.uint32)
        return (_TABLE[e & np.uint32(0xFF)] ^ (e >> np.uint32(8))).astype(np.uint32)
    half = _zeros_columns(nbytes // 2)
    cols = _apply(half, half)                  # half ∘ half
    if nbytes % 2:
        cols = _apply(_zeros_columns(1), cols)
    return cols


@functools.lru_cache(maxsize=None)
def _zeros_tables(nbytes: int) -> Tuple[np.ndarray, np.ndarray]:
    """``(lo, hi)``: the zeros map of ``nbytes`` as two 65536-entry tables of the low and
    high 16 bits of its input."""
    cols = _zeros_columns(nbytes)
    v = np.arange(1 << 16, dtype=np.uint32)
    return _apply(cols, v), _apply(cols, v << np.uint32(16))


def _raw_parallel(crc: int, words: np.ndarray) -> int:
    """Register update over ``words`` (``(n, m)`` little-endian ``uint32`` pairs, ``n`` a
    power of two, each row ``2m`` words = one chunk of ``8m`` bytes), chunks side by side."""
    n, m2 = words.shape
    lo8, hi8 = _zeros_tables(8)
    lo4, hi4 = _zeros_tables(4)
    state = np.zeros(n, np.uint32)
    state[0] = crc
    cols = np.ascontiguousarray(words.T)       # column j: word j of every chunk
    x, i, a = np.empty(n, np.uint32), np.empty(n, np.uint32), np.empty(n, np.uint32)
    mask16, s16 = np.uint32(0xFFFF), np.uint32(16)
    for j in range(0, m2, 2):                  # state = Z8(state ^ w0) ^ Z4(w1)
        np.bitwise_xor(state, cols[j], out=x)
        np.bitwise_and(x, mask16, out=i)
        np.take(lo8, i, out=state)
        np.right_shift(x, s16, out=i)
        np.take(hi8, i, out=a)
        state ^= a
        y = cols[j + 1]
        np.bitwise_and(y, mask16, out=i)
        np.take(lo4, i, out=a)
        state ^= a
        np.right_shift(y, s16, out=i)
        np.take(hi4, i, out=a)
        state ^= a
    size = 4 * m2                              # bytes per chunk
    while len(state) > 1:
        state = _apply(_zeros_columns(size), state[0::2]) ^ state[1::2]
        size *= 2
    return int(state[0])


def _raw(crc: int, data: Bytes) -> int:
    buf = np.frombuffer(data, np.uint8) if not isinstance(data, np.ndarray) else \
        data.reshape(-1).view(np.uint8)
    pos, total = 0, buf.size
    while total - pos > _SHORT:
        rest = total - pos
        # n chunks of `chunk` bytes, both powers of two (so few distinct tables)
        n = min(_CHUNKS, 1 << ((rest // 1024).bit_length() - 1))  # chunks of >= 1 KiB
        chunk = 1 << (min(rest // n, _CHUNK_BYTES).bit_length() - 1)
        words = buf[pos:pos + n * chunk].view("<u4").reshape(n, chunk // 4)
        crc = _raw_parallel(crc, words)
        pos += n * chunk
    return _raw_bytes(crc, buf[pos:].tobytes())


def extend(crc: int, data: Bytes) -> int:
    """``crc32c::Extend``: the CRC-32C of ``A + data`` given ``crc`` = the CRC of ``A``."""
    return _raw(crc ^ 0xFFFFFFFF, data) ^ 0xFFFFFFFF


def value(data: Bytes) -> int:
    """``crc32c::Value``: the CRC-32C of ``data`` (bytes or a contiguous array's bytes)."""
    return extend(0, data)


def mask(crc: int) -> int:
    """The stored form of a CRC (``crc32c::Mask``)."""
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


def unmask(masked: int) -> int:
    """Inverse of :func:`mask`."""
    rot = (masked - _MASK_DELTA) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF
