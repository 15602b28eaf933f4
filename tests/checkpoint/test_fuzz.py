"""Hostile checkpoint files: every damaged or crafted ``.npz`` is a ``DataLossError`` naming
the file (and the entry), never another exception, never a huge allocation, and nothing is
assigned on error.

What a restore of a mutated file may do (the fuzzers below check exactly this):

* raise ``DataLossError``: the file is damaged or inconsistent (CRC, sizes, a header that
  disagrees with the index or the member's size, a missing, extra or duplicate member...);
* raise ``NotFoundError`` / ``InvalidArgumentError``: only when the mutation leaves a
  *consistent* file (ZIP CRCs recomputed, index and ``.npy`` header changed together) whose
  names, shapes or dtypes no longer match the model, as TF1 would for such a file;
* succeed: then every variable, slot and the global step hold exactly the saved values
  (trailing or leading junk, a re-deflated member, the index's ``version`` set to 0...).

Any other exception, or a successful restore with different values, is a reader bug. On
every error all variables are unchanged.
"""

import io
import json
import re
import struct
import time
import tracemalloc
import warnings
import zipfile
import zlib

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import compatopt as co
from compatopt import errors
from compatopt.checkpoint import _npz
from compatopt.train import saver as S

from .ckpt_helpers import assert_unchanged, snapshot

INDEX_MEMBER = _npz.INDEX + ".npy"
ALLOWED = (errors.DataLossError, errors.NotFoundError, errors.InvalidArgumentError)
TIB4 = 2**40  # float32 elements: 4 TiB
_LOCAL = 30  # bytes of a ZIP local file header before its name

_FUZZ = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture,
                                        HealthCheck.too_slow])


# ------------------------------------------------------------------------- the model
def _build():
    """The default graph's model: float32 and bfloat16 variables, their Adam slots, the
    beta powers and an int32 global step (slots made by create_slots: nothing compiles)."""
    w = co.Variable(jnp.zeros((3, 4)), name="w")
    b = co.Variable(jnp.zeros(2, jnp.bfloat16), name="b")
    co.train.get_or_create_global_step()
    S.create_slots(co.train.AdamOptimizer(0.1), [w, b])
    return {v.op.name: v for v in co.global_variables()}


def _saved_values(variables):
    """Distinct non-zero values for every variable (what the good checkpoint holds)."""
    out = {}
    for i, (name, v) in enumerate(sorted(variables.items())):
        n = int(np.prod(v.shape))
        out[name] = (np.arange(n).reshape(v.shape) * 0.25 + i + 1).astype(v.dtype)
    return out


def _set(variables, values):
    for name, v in variables.items():
        v.assign(values[name])


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """``(bytes of a good checkpoint, {name: saved value})``, written by ``Saver``."""
    co.reset_default_graph()
    variables = _build()
    values = _saved_values(variables)
    _set(variables, values)
    prefix = str(tmp_path_factory.mktemp("good") / "m")
    S.Saver().save(None, prefix)
    co.reset_default_graph()
    with open(prefix + ".npz", "rb") as f:
        return f.read(), values


@pytest.fixture
def model(good):
    """``(variables, sentinel values)``: the model of the good checkpoint, holding values
    that differ from the saved ones in every element."""
    variables = _build()
    sentinel = {k: (np.asarray(v) * -3 - 100).astype(v.dtype) for k, v in good[1].items()}
    _set(variables, sentinel)
    return variables, sentinel


def _restore_checked(variables, sentinel, expected, data, tmp_path, name="m"):
    """Restores ``data`` (the bytes of a ``.npz``) with ``Saver().restore`` and checks the
    contract; returns the exception (or None)."""
    _set(variables, sentinel)
    before = snapshot()
    prefix = str(tmp_path / name)
    with open(prefix + ".npz", "wb") as f:
        f.write(data)
    try:
        S.Saver().restore(None, prefix)
    except ALLOWED as e:
        assert_unchanged(before)
        if isinstance(e, errors.DataLossError):
            assert f"{name}.npz" in str(e), str(e)
        return e
    for k, v in variables.items():
        got = np.asarray(v.numpy())
        assert got.dtype == expected[k].dtype, k
        assert got.tobytes() == expected[k].tobytes(), k
    return None


# ------------------------------------------------------------------- building files
def _npy_header(descr, shape, fortran=False, version=1, pad_to=118):
    text = "{'descr': %r, 'fortran_order': %r, 'shape': %s, }" % (descr, fortran, shape)
    text = text.ljust(pad_to) + "\n"
    size = len(text).to_bytes(2 if version == 1 else 4, "little")
    return b"\x93NUMPY" + bytes([version, 0]) + size + text.encode("latin1")


def _npy(array):
    out = io.BytesIO()
    np.lib.format.write_array(out, array, allow_pickle=False)
    return out.getvalue()


def _index(tensors, **extra):
    doc = {"format": _npz.FORMAT, "version": _npz.VERSION, "tensors": tensors, **extra}
    return _npy(np.frombuffer(json.dumps(doc).encode(), np.uint8))


def _zip(members, compression=zipfile.ZIP_STORED):
    """A ZIP of ``[(name, bytes), ...]`` (duplicates allowed) with correct CRCs."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about duplicate names
        with zipfile.ZipFile(buf, "w", compression=compression) as zf:
            for name, data in members:
                zf.writestr(name, data)
    return buf.getvalue()


def _raw_zip(entries):
    """A ZIP written byte by byte, so its declared sizes, CRCs, method and flags can lie.
    ``entries``: dicts with ``name``, ``data`` (the bytes actually present) and optionally
    ``method``, ``crc``, ``csize``, ``usize``, ``flags``; ``offset`` points the central
    directory's entry elsewhere, ``skip`` leaves the local header and data out."""
    out, central = bytearray(), bytearray()
    for e in entries:
        name, data = e["name"].encode(), e["data"]
        csize, usize = e.get("csize", len(data)), e.get("usize", len(data))
        crc = e.get("crc", zlib.crc32(data))
        method, flags = e.get("method", 0), e.get("flags", 0)
        zip64 = max(csize, usize) >= 0xFFFFFFFF
        extra = struct.pack("<HHQQ", 1, 16, usize, csize) if zip64 else b""
        c32, u32 = (0xFFFFFFFF, 0xFFFFFFFF) if zip64 else (csize, usize)
        need = 45 if zip64 else 20
        offset = e.get("offset", len(out))
        if not e.get("skip"):
            out += struct.pack("<4s5H3L2H", b"PK\x03\x04", need, flags, method, 0, 33, crc,
                               c32, u32, len(name), len(extra)) + name + extra + data
        central += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", need, need, flags, method, 0, 33,
                               crc, c32, u32, len(name), len(extra), 0, 0, 0, 0,
                               offset) + name + extra
    n = len(entries)
    return bytes(out + central + struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, n, n,
                                             len(central), len(out), 0))


def _members(data):
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return [(i.filename, zf.read(i)) for i in zf.infolist()]


# --------------------------------------------------------- huge declared sizes, bombs
def _assert_cheap(path, match):
    """Opening and reading ``path``'s checkpoint raises DataLossError matching ``match``
    within 1 s and without allocating more than 4 MiB."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(errors.DataLossError, match=match) as info:
            reader = _npz.NpzReader(path)
            for name in reader.specs():
                reader.read(name)
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert elapsed < 1, elapsed
    assert peak < 4 * 2**20, peak
    return info.value


def test_a_header_claiming_four_tebibytes_is_data_loss_without_allocating(tmp_path):
    data = _zip([("w.npy", _npy_header("<f4", f"({TIB4},)") + b"\0" * 16),
                 (INDEX_MEMBER, _index({"w": {"dtype": "float32", "shape": [TIB4]}}))])
    assert len(data) < 700
    (tmp_path / "m.npz").write_bytes(data)
    e = _assert_cheap(str(tmp_path / "m"), r"m\.npz: entry 'w': its header declares shape "
                                           r"\(1099511627776,\) of '<f4' \(4398046511104 bytes\)"
                                           r" but the member holds 16")
    # the same file through the Saver: the same error, nothing assigned
    w = co.Variable(np.ones(4, np.float32), name="w")
    with pytest.raises(errors.DataLossError, match="declares shape"):
        S.Saver().restore(None, str(tmp_path / "m"))
    assert w.numpy().tolist() == [1, 1, 1, 1]
    assert "MemoryError" not in str(e)


def test_zip_sizes_that_lie_are_data_loss_without_allocating(tmp_path):
    header = _npy_header("<f4", f"({TIB4},)")
    index = {"name": INDEX_MEMBER,
             "data": _index({"w": {"dtype": "float32", "shape": [TIB4]}})}
    stored_lie = {"name": "w.npy", "data": header + b"\0" * 16,
                  "csize": len(header) + 4 * TIB4, "usize": len(header) + 4 * TIB4}
    (tmp_path / "lie.npz").write_bytes(_raw_zip([stored_lie, index]))
    _assert_cheap(str(tmp_path / "lie"), r"lie\.npz: entry 'w' reaches past the end of the file")
    # a zip bomb: a deflated member declaring 4 TiB from a few hundred bytes
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    stream = packer.compress(header + b"\0" * 2**20) + packer.flush()
    bomb = {"name": "w.npy", "data": stream, "method": 8, "crc": 0,
            "usize": len(header) + 4 * TIB4}
    (tmp_path / "bomb.npz").write_bytes(_raw_zip([bomb, index]))
    _assert_cheap(str(tmp_path / "bomb"), r"bomb\.npz: entry 'w' claims 43980465112\d\d bytes "
                                          r"from \d+ compressed bytes")
    # a stored member whose two sizes disagree
    odd = dict(stored_lie, csize=len(header) + 16)
    (tmp_path / "odd.npz").write_bytes(_raw_zip([odd, index]))
    _assert_cheap(str(tmp_path / "odd"), r"odd\.npz: entry 'w' is stored uncompressed but its "
                                         r"sizes disagree")


def test_a_deflate_stream_longer_than_declared_is_never_inflated(tmp_path):
    """A deflated member declaring 12 floats whose stream inflates to 64 MiB: the bounded
    reader inflates the declared bytes only."""
    member = _npy(np.arange(12, dtype=np.float32))
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    stream = packer.compress(member + b"\0" * 2**26) + packer.flush()
    entries = [{"name": "w.npy", "data": stream, "method": 8, "crc": zlib.crc32(member),
                "usize": len(member)},
               {"name": INDEX_MEMBER, "data": _index({"w": {"dtype": "float32",
                                                              "shape": [12]}})}]
    (tmp_path / "m.npz").write_bytes(_raw_zip(entries))
    tracemalloc.start()
    try:
        got = _npz.NpzReader(str(tmp_path / "m")).read("w")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert got.tolist() == list(range(12))
    assert peak < 4 * 2**20, peak


def test_overlapping_members_are_data_loss(tmp_path):
    """Member ``a``'s bytes hold member ``b`` whole (local header and data): each is a
    consistent ``.npy``, but together they declare more bytes than the file holds (nested
    k deep, a file of n bytes would make k * n bytes of tensors)."""
    inner = _raw_zip([{"name": "b.npy", "data": _npy(np.arange(4, dtype=np.uint8))}])
    local_b = inner[:inner.index(b"PK\x01\x02")]
    outer = _npy_header("|u1", f"({len(local_b)},)") + local_b
    index = _index({"a": {"dtype": "uint8", "shape": [len(local_b)]},
                    "b": {"dtype": "uint8", "shape": [4]}})
    entries = [{"name": "a.npy", "data": outer},
               {"name": "b.npy", "data": _npy(np.arange(4, dtype=np.uint8)), "skip": True,
                "offset": _LOCAL + len("a.npy") + len(outer) - len(local_b)},
               {"name": INDEX_MEMBER, "data": index}]
    (tmp_path / "m.npz").write_bytes(_raw_zip(entries))
    with zipfile.ZipFile(tmp_path / "m.npz") as zf:  # zipfile itself reads both
        assert zf.read("b.npy") == _npy(np.arange(4, dtype=np.uint8))
        assert zf.read("a.npy") == outer
    with pytest.raises(errors.DataLossError, match=r"m\.npz: entry 'a' overlaps entry 'b'"):
        _npz.NpzReader(str(tmp_path / "m"))
    # the last member reaching into the central directory (not past the end of the file)
    index = _index({"a": {"dtype": "uint8", "shape": [4]}})
    entries = [{"name": "a.npy", "data": _npy(np.arange(4, dtype=np.uint8))},
               {"name": INDEX_MEMBER, "data": index, "csize": len(index) + 40,
                "usize": len(index) + 40}]
    (tmp_path / "c.npz").write_bytes(_raw_zip(entries))
    with pytest.raises(errors.DataLossError, match=r"c\.npz: entry '__compatopt_index__' "
                                                   r"overlaps the ZIP central directory"):
        _npz.NpzReader(str(tmp_path / "c"))


def test_reads_parse_the_archive_once(tmp_path, monkeypatch):
    """Reading every tensor of a checkpoint parses its ZIP central directory once (when the
    reader is made), not once per tensor: a 2000-tensor restore took 25 s."""
    tensors = {f"layer{i}/w": np.full((2, 2), i, np.float32) for i in range(300)}
    _npz.write(str(tmp_path / "many"), tensors)
    made = []
    real = zipfile.ZipFile
    monkeypatch.setattr(_npz.zipfile, "ZipFile", lambda *a, **k: made.append(1) or real(*a, **k))
    reader = _npz.NpzReader(str(tmp_path / "many"))
    got = {k: reader.read(k) for k in reader.specs()}
    assert len(made) == 1
    assert all(got[k].tobytes() == v.tobytes() for k, v in tensors.items())


def test_a_file_replaced_after_opening_is_checked_again(tmp_path):
    """Another save under the same prefix between ``NpzReader()`` and ``read``: a good
    file with the same tensors is read (as before), a damaged one is DataLossError."""
    prefix = str(tmp_path / "m")
    _npz.write(prefix, {"w": np.zeros(3, np.float32), "b": np.ones(2, np.int32)})
    reader = _npz.NpzReader(prefix)
    _npz.write(prefix, {"w": np.full(3, 5, np.float32), "b": np.ones(2, np.int32)})
    assert reader.read("w").tolist() == [5, 5, 5]
    _npz.write(prefix, {"w": np.zeros(4, np.float32), "b": np.ones(2, np.int32)})
    with pytest.raises(errors.DataLossError, match=r"entry 'w': its \.npy header says "
                                                   r"'<f4'\[4\], the index says float32\[3\]"):
        reader.read("w")
    with open(prefix + ".npz", "rb") as f:
        data = f.read()
    (tmp_path / "m.npz").write_bytes(data[:len(data) // 2])
    with pytest.raises(errors.DataLossError, match=r"tensor 'b' from checkpoint .*m\.npz: the "
                                                   r"file is truncated or corrupt"):
        reader.read("b")
    (tmp_path / "m.npz").unlink()
    with pytest.raises(errors.DataLossError, match=r"tensor 'b' .*FileNotFoundError"):
        reader.read("b")


# ---------------------------------------------------------------- crafted bad files
def _good_members(good):
    return _members(good[0])


def _replace(members, name, data):
    return [(n, data if n == name else d) for n, d in members]


def _index_doc(members):
    blob = dict(members)[INDEX_MEMBER]
    return json.loads(np.load(io.BytesIO(blob)).tobytes())


def _with_index(members, doc=None, raw=None):
    if raw is None:
        raw = json.dumps(doc).encode()
    return _replace(members, INDEX_MEMBER, _npy(np.frombuffer(raw, np.uint8)))


def _w_header(descr="<f4", shape="(3, 4)", fortran=False, payload=48):
    return _npy_header(descr, shape, fortran) + b"\0" * payload


def _set_entry(doc, name, **kw):
    doc["tensors"][name].update(kw)
    return doc


CRAFTED = {
    # .npy headers: pickles, object and unknown dtypes, bad shapes, bad headers
    "object dtype": (lambda m, d: _replace(m, "w.npy", _w_header("|O", payload=96)),
                     r"entry 'w'"),
    "pickle payload": (lambda m, d: _replace(
        m, "w.npy", _npy_header("|O", "(1,)") + b"\x80\x04\x95" + b"cos\nsystem\n"),
        r"entry 'w'"),
    "unknown descr": (lambda m, d: _replace(m, "w.npy", _w_header("<f3", payload=36)),
                      r"entry 'w'"),
    "void descr": (lambda m, d: _replace(m, "w.npy", _w_header("|V4")), r"entry 'w'"),
    "datetime descr": (lambda m, d: _replace(m, "w.npy", _w_header("<M8[ns]", payload=96)),
                       r"entry 'w'"),
    "structured descr": (lambda m, d: _replace(
        m, "w.npy", _npy_header([("a", "<f4")], "(3, 4)") + b"\0" * 48), r"entry 'w'"),
    "negative shape": (lambda m, d: _replace(m, "w.npy", _w_header(shape="(-3, -4)")),
                       r"entry 'w'"),
    "float shape": (lambda m, d: _replace(m, "w.npy", _w_header(shape="(3.0, 4)")),
                    r"entry 'w'"),
    "overflowing shape": (lambda m, d: _replace(
        m, "w.npy", _w_header(shape=f"({2**62}, {2**62})")), r"entry 'w'"),
    "zero-size overflowing shape": (lambda m, d: _replace(
        m, "w.npy", _w_header(shape=f"(0, {2**70})", payload=0)), r"entry 'w'"),
    "too many dimensions": (lambda m, d: _replace(
        m, "w.npy", _npy_header("<f4", "(" + "1, " * 70 + ")", pad_to=400) + b"\0" * 4),
        r"entry 'w'"),
    "header shorter than it says": (lambda m, d: _replace(
        m, "w.npy", _npy_header("<f4", "(3, 4)")[:60]), r"entry 'w'"),
    "header not a dict": (lambda m, d: _replace(
        m, "w.npy", b"\x93NUMPY\x01\x00\x10\x00" + b"[1, 2, 3]".ljust(15) + b"\n" + b"\0" * 48),
        r"entry 'w'"),
    "header missing shape": (lambda m, d: _replace(
        m, "w.npy", b"\x93NUMPY\x01\x00\x40\x00"
        + b"{'descr': '<f4', 'fortran_order': False}".ljust(63) + b"\n" + b"\0" * 48),
        r"entry 'w'"),
    "header with a call": (lambda m, d: _replace(
        m, "w.npy", b"\x93NUMPY\x01\x00\x40\x00"
        + b"__import__('os').system('true')".ljust(63) + b"\n" + b"\0" * 48), r"entry 'w'"),
    "deeply nested header": (lambda m, d: _replace(
        m, "w.npy", b"\x93NUMPY\x01\x00\x10\x27" + b"-" * 9999 + b"1"), r"entry 'w'"),
    "header too long": (lambda m, d: _replace(
        m, "w.npy", b"\x93NUMPY\x02\x00" + (2**31).to_bytes(4, "little") + b" " * 64),
        r"entry 'w'"),
    "fortran_order not a bool": (lambda m, d: _replace(
        m, "w.npy", _npy_header("<f4", "(3, 4)", fortran=1) + b"\0" * 48), r"entry 'w'"),
    "bad magic": (lambda m, d: _replace(m, "w.npy", b"\x93NUMPZ" + _w_header()[6:]),
                  r"entry 'w'"),
    "unknown npy version": (lambda m, d: _replace(m, "w.npy", b"\x93NUMPY\x09\x00" + b"\0" * 8),
                            r"entry 'w'"),
    "empty member": (lambda m, d: _replace(m, "w.npy", b""), r"entry 'w'"),
    # header and index disagree (a consistent-looking member of another dtype or shape)
    "uint32 stored for float32": (lambda m, d: _replace(m, "w.npy", _w_header("<u4")),
                                  r"entry 'w': its \.npy header says '<u4'\[3, 4\], the index "
                                  r"says float32\[3, 4\]"),
    "int16 stored for bfloat16": (lambda m, d: _replace(
        m, "b.npy", _npy_header("<i2", "(2,)") + b"\0" * 4), r"entry 'b'"),
    "transposed header": (lambda m, d: _replace(m, "w.npy", _w_header(shape="(4, 3)")),
                          r"entry 'w': its \.npy header says '<f4'\[4, 3\]"),
    "payload short": (lambda m, d: _replace(m, "w.npy", _w_header(payload=44)),
                      r"entry 'w': its header declares shape \(3, 4\)"),
    "payload long": (lambda m, d: _replace(m, "w.npy", _w_header(payload=52)),
                     r"entry 'w': its header declares shape \(3, 4\)"),
    # members: missing, extra, duplicate, not .npy
    "missing member": (lambda m, d: [x for x in m if x[0] != "w/Adam.npy"],
                       r"lacks, e\.g\. entry 'w/Adam'"),
    "extra member": (lambda m, d: m + [("extra.npy", _npy(np.zeros(2, np.float32)))],
                     r"does not list, e\.g\. entry 'extra'"),
    "duplicate member": (lambda m, d: m + [("w.npy", dict(m)["w.npy"])],
                         r"entry 'w' appears twice"),
    "duplicate index": (lambda m, d: m + [(INDEX_MEMBER, dict(m)[INDEX_MEMBER])],
                        r"entry '__compatopt_index__' appears twice"),
    "not a .npy member": (lambda m, d: m + [("README", b"hello")], r"member 'README'"),
    "directory member": (lambda m, d: m + [("w/", b"")], r"member 'w/'"),
    # the index
    "index unknown dtype": (lambda m, d: _with_index(m, _set_entry(d, "w", dtype="float33")),
                            r"corrupt index entry 'w' \(unknown dtype 'float33'\)"),
    "index object dtype": (lambda m, d: _with_index(m, _set_entry(d, "w", dtype="object")),
                           r"corrupt index entry 'w'"),
    "index descr as dtype": (lambda m, d: _with_index(m, _set_entry(d, "w", dtype="<f4")),
                             r"corrupt index entry 'w'"),
    "index dtype not a str": (lambda m, d: _with_index(m, _set_entry(d, "w", dtype=[1])),
                              r"corrupt index entry 'w'"),
    "index negative shape": (lambda m, d: _with_index(m, _set_entry(d, "w", shape=[-3, -4])),
                             r"corrupt index entry 'w'"),
    "index float shape": (lambda m, d: _with_index(m, _set_entry(d, "w", shape=[3.5, 4])),
                          r"corrupt index entry 'w'"),
    "index huge shape": (lambda m, d: _with_index(m, _set_entry(d, "w", shape=[2**62, 2**62])),
                         r"corrupt index entry 'w'"),
    "index shape not a list": (lambda m, d: _with_index(m, _set_entry(d, "w", shape="(3, 4)")),
                               r"corrupt index entry 'w'"),
    "index shape disagrees": (lambda m, d: _with_index(m, _set_entry(d, "w", shape=[4, 3])),
                              r"entry 'w': its \.npy header says '<f4'\[3, 4\], the index says "
                              r"float32\[4, 3\]"),
    "index dtype disagrees": (lambda m, d: _with_index(m, _set_entry(d, "w", dtype="int32")),
                              r"entry 'w'"),
    "index names a tensor twice": (lambda m, d: _with_index(m, raw=json.dumps(d).replace(
        '"tensors": {', '"tensors": {"w": {"dtype": "float32", "shape": [3, 4]}, ', 1).encode()),
        r"corrupt index: it lists 'w' twice"),
    "index entry not a dict": (lambda m, d: _with_index(m, {**d, "tensors": {
        **d["tensors"], "w": [3, 4]}}), r"corrupt index entry 'w'"),
    "index without tensors": (lambda m, d: _with_index(m, {**d, "tensors": [1]}),
                              r"corrupt index \(no tensor table\)"),
    "index version a string": (lambda m, d: _with_index(m, {**d, "version": "1"}),
                               r"corrupt index \(version '1'\)"),
    "index from the future": (lambda m, d: _with_index(m, {**d, "version": 99}),
                              r"newer compatopt"),
    "index not json": (lambda m, d: _with_index(m, raw=b"{\"format\": "), r"index of checkpoint"),
    "index not utf-8": (lambda m, d: _with_index(m, raw=b"\xff\xfe{}"), r"index of checkpoint"),
    "index deeply nested": (lambda m, d: _with_index(m, raw=b"[" * 100000),
                            r"index of checkpoint"),
    "index huge number": (lambda m, d: _with_index(m, raw=b"1" * 5000), r"index of checkpoint"),
    "index float32 blob": (lambda m, d: _replace(
        m, INDEX_MEMBER, _npy(np.zeros(4, np.float32))), r"entry '__compatopt_index__'"),
    "index 2-D blob": (lambda m, d: _replace(
        m, INDEX_MEMBER, _npy(np.frombuffer(json.dumps(d).encode(), np.uint8).reshape(1, -1))),
        r"entry '__compatopt_index__'"),
    "no index": (lambda m, d: [x for x in m if x[0] != INDEX_MEMBER],
                 r"not a compatopt checkpoint"),
    "not compatopt's index": (lambda m, d: _with_index(m, {**d, "format": "other"}),
                              r"not a compatopt checkpoint"),
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_crafted_files_are_data_loss_naming_file_and_entry(good, model, tmp_path, case):
    make, match = CRAFTED[case]
    members = make(_good_members(good), _index_doc(_good_members(good)))
    e = _restore_checked(*model, good[1], _zip(members), tmp_path)
    assert isinstance(e, errors.DataLossError), (case, e)
    assert re.search(match, str(e)), str(e)


def _raw_entries(good, **changes):
    """The good checkpoint as ``_raw_zip`` entries, ``changes[name]`` updating one."""
    return [{"name": n, "data": d, **changes.get(n, {})} for n, d in _good_members(good)]


@pytest.mark.parametrize("change,match", [
    ({"crc": 1}, r"tensor 'w' from checkpoint .*m\.npz: the file is truncated or corrupt "
                 r"\(BadZipFile: Bad CRC-32"),
    ({"method": 12}, r"entry 'w' uses ZIP compression method 12"),
    ({"method": 14}, r"entry 'w' uses ZIP compression method 14"),
    ({"method": 99}, r"entry 'w' uses ZIP compression method 99"),
    ({"method": 8}, r"tensor 'w' from checkpoint .*truncated or corrupt"),  # not a deflate stream
    ({"flags": 1}, r"entry 'w' is encrypted"),
    ({"flags": 0x20}, r"tensor 'w' from checkpoint .*truncated or corrupt"),  # patched data
])
def test_zip_entries_that_lie_are_data_loss(good, model, tmp_path, change, match):
    data = _raw_zip(_raw_entries(good, **{"w.npy": change}))
    e = _restore_checked(*model, good[1], data, tmp_path)
    assert isinstance(e, errors.DataLossError), e
    assert re.search(match, str(e)), str(e)


def test_truncated_central_directory_and_end_record(good, model, tmp_path):
    data = good[0]
    start = data.rindex(b"PK\x01\x02")  # the last central directory entry
    end = data.rindex(b"PK\x05\x06")
    for i, cut in enumerate([start + 10, end - 5, end + 4, len(data) - 1, 30, 0]):
        e = _restore_checked(*model, good[1], data[:cut], tmp_path, name=f"cut{i}")
        assert isinstance(e, errors.DataLossError), (cut, e)
        assert f"cut{i}.npz" in str(e) and "truncated or corrupt" in str(e), str(e)
    # the end record pointing past the start of the file: "Bad offset" from zipfile
    bad = bytearray(data)
    struct.pack_into("<L", bad, end + 16, len(data) * 4)
    e = _restore_checked(*model, good[1], bytes(bad), tmp_path, name="offset")
    assert isinstance(e, errors.DataLossError), e


# --------------------------------------------------------------------- good variants
def _npy_version(member, version):
    out = io.BytesIO()
    np.lib.format.write_array(out, np.load(io.BytesIO(member)), version=version)
    return out.getvalue()


def test_good_variants_restore_exactly(good, model, tmp_path):
    """What changes the file but not its content: re-deflated (``numpy.savez_compressed``
    of the members), members reordered, junk before or after the archive, version 0, .npy
    format 2.0 and 3.0 headers."""
    members = _good_members(good)
    doc = _index_doc(members)
    with np.load(io.BytesIO(good[0])) as z:
        arrays = {k: z[k] for k in z.files}
    savez = io.BytesIO()
    np.savez_compressed(savez, **arrays)
    variants = {
        "deflated": _zip(members, zipfile.ZIP_DEFLATED),
        "savez_compressed": savez.getvalue(),
        "reversed": _zip(members[::-1]),
        "prefixed": b"#!junk\n" * 10 + good[0],
        "suffixed": good[0] + b"trailing junk",
        "version 0": _zip(_with_index(members, {**doc, "version": 0})),
        "index reformatted": _zip(_with_index(members, raw=json.dumps(doc, indent=2).encode())),
        "npy 2.0 headers": _zip([(n, _npy_version(d, (2, 0))) for n, d in members]),
        "npy 3.0 headers": _zip([(n, _npy_version(d, (3, 0))) for n, d in members]),
    }
    for name, data in variants.items():
        e = _restore_checked(*model, good[1], data, tmp_path, name=name.replace(" ", "_"))
        assert e is None, (name, e)


def test_every_tensor_dtype_round_trips_bit_exactly(tmp_path):
    """Every dtype the index may name (NumPy's and ml_dtypes', float8_e5m2 and complex32
    included: NumPy cannot read their descr back), C and Fortran order, empty tensors."""
    rng = np.random.default_rng(0)
    tensors = {}
    for name, dtype in sorted(_npz._tensor_dtypes().items()):
        raw = rng.integers(0, 256, size=6 * dtype.itemsize, dtype=np.uint8)
        tensors[name] = raw.view(dtype).reshape(2, 3)
        tensors[name + "/fortran"] = np.asfortranarray(tensors[name].T)
        tensors[name + "/empty"] = np.zeros((0, 3), dtype)
    tensors["scalar"] = np.float32(1.5)
    assert {"bfloat16", "float8_e5m2", "int4", "complex32", "float64", "bool"} <= set(tensors)
    _npz.write(str(tmp_path / "all"), tensors)
    reader = _npz.NpzReader(str(tmp_path / "all"))
    assert reader.specs() == {k: (np.shape(v), np.asarray(v).dtype) for k, v in tensors.items()}
    for name, value in tensors.items():
        got = reader.read(name)
        assert got.dtype == np.asarray(value).dtype and got.shape == np.shape(value), name
        assert got.tobytes() == np.ascontiguousarray(value).tobytes(), name
        assert got.flags.writeable, name
    assert reader.read("bfloat16").dtype == ml_dtypes.bfloat16


# -------------------------------------------------------------------------- fuzzers
@_FUZZ
@given(data=st.data())
def test_byte_mutations_restore_exactly_or_fail_cleanly(good, model, tmp_path, data):
    """Truncations, bit flips, byte insertions, deletions and overwrites at any offset of
    the stored or the deflated checkpoint; ``.npy`` headers rewritten in place (shape,
    dtype, fortran order). No CRC is fixed: every change of a tensor's bytes is caught."""
    base = good[0] if data.draw(st.booleans()) else _zip(_good_members(good),
                                                          zipfile.ZIP_DEFLATED)
    raw = bytearray(base)
    at = data.draw(st.integers(0, len(raw) - 1))
    kind = data.draw(st.sampled_from(["truncate", "flip", "insert", "delete", "overwrite",
                                      "header"]))
    if kind == "truncate":
        raw = raw[:at]
    elif kind == "flip":
        raw[at] ^= 1 << data.draw(st.integers(0, 7))
    elif kind == "insert":
        raw[at:at] = data.draw(st.binary(min_size=1, max_size=8))
    elif kind == "delete":
        del raw[at:at + data.draw(st.integers(1, 8))]
    elif kind == "overwrite":
        chunk = data.draw(st.binary(min_size=1, max_size=8))
        raw[at:at + len(chunk)] = chunk
    else:  # rewrite a shape, dtype or order inside some .npy header (stored file only)
        field = data.draw(st.sampled_from([b"'shape': (", b"'descr': '", b"'fortran_order': "]))
        pos = bytes(raw).find(field, at)
        pos = bytes(raw).find(field) if pos < 0 else pos
        if pos >= 0:
            text = data.draw(st.sampled_from(
                [b"1099511627776,", b"-1, 2", b"0, 9999999999999999999", b"4, 3", b"12,",
                 b"'|O'", b"'<u4'", b"'<i4'", b"'<f8'", b"'<V4'", b"True ", b"1    "]))
            start = pos + len(field)
            raw[start:start + len(text)] = text
    _restore_checked(*model, good[1], bytes(raw), tmp_path)


_SHAPES = st.one_of(st.sampled_from([(), (12,), (4, 3), (3, 4), (2,), (0,), (1, 12), (2, 2, 3),
                                     (TIB4,), (2**62, 4), (-1,), (3, -4)]),
                    st.lists(st.integers(-2, 13), max_size=3).map(tuple))
_DESCRS = st.sampled_from(["<f4", "<u4", "<i4", "<f2", "<u2", "<i2", "|u1", "<f8", "|b1", "|O",
                           "<V2", "<M8[s]", "<f3", ">f4", "<c8"])
_DTYPES = st.sampled_from(["float32", "uint32", "int32", "float16", "uint16", "bfloat16",
                           "int64", "uint8", "bool", "object", "float33", "V2"])


@_FUZZ
@given(data=st.data())
def test_consistent_rewrites_restore_exactly_or_fail_cleanly(good, model, tmp_path, data):
    """Member-level mutations with correct ZIP CRCs, so the checks behind the CRC run: a
    member's ``.npy`` header rewritten (shape, dtype; its payload resized or not), the index
    entry rewritten with it or not, members dropped, duplicated, renamed or deflated, index
    entries dropped or added, index JSON bytes flipped, and (written byte by byte) a member's
    ZIP sizes, CRC, compression method or flags made to lie."""
    members = _good_members(good)
    doc = _index_doc(members)
    names = [n for n, _ in members if n != INDEX_MEMBER]
    target = data.draw(st.sampled_from(names))
    entry = target[:-4]
    kind = data.draw(st.sampled_from(["header", "header+index", "index", "drop", "duplicate",
                                      "rename", "rename+index", "drop entry", "add entry",
                                      "json flip", "deflate", "resize payload",
                                      "zip fields", "zip fields", "zip fields"]))
    body = dict(members)[target]
    header_len = 10 + int.from_bytes(body[8:10], "little")
    payload = body[header_len:]
    if kind in ("header", "header+index"):
        shape, descr = data.draw(_SHAPES), data.draw(_DESCRS)
        if data.draw(st.booleans()):  # payload sized to the new header when it is sane
            count = int(np.prod(shape)) if all(0 <= d < 64 for d in shape) else 1
            width = {"|u1": 1, "|b1": 1, "<f2": 2, "<u2": 2, "<i2": 2, "<V2": 2,
                     "<f8": 8, "<c8": 8, "<M8[s]": 8, "|O": 8}.get(descr, 4)
            payload = (payload * (count * width // max(len(payload), 1) + 1))[:count * width]
        members = _replace(members, target, _npy_header(descr, repr(shape)) + payload)
        if kind == "header+index":
            name = data.draw(_DTYPES)
            members = _with_index(members, _set_entry(doc, entry, shape=list(shape), dtype=name))
    elif kind == "index":
        if data.draw(st.booleans()):
            _set_entry(doc, entry, shape=list(data.draw(_SHAPES)))
        else:
            _set_entry(doc, entry, dtype=data.draw(_DTYPES))
        members = _with_index(members, doc)
    elif kind == "drop":
        members = [m for m in members if m[0] != target]
    elif kind == "duplicate":
        members = members + [(target, body)]
    elif kind in ("rename", "rename+index"):
        new = data.draw(st.sampled_from(["w", "b", "w/Adam", "zz", "w.npy", "", "a/b"]))
        members = [(new + ".npy" if n == target else n, d) for n, d in members]
        if kind == "rename+index":
            doc["tensors"][new] = doc["tensors"].pop(entry)
            members = _with_index(members, doc)
    elif kind == "drop entry":
        del doc["tensors"][entry]
        members = _with_index(members, doc)
    elif kind == "add entry":
        doc["tensors"]["extra"] = {"dtype": "float32", "shape": [2]}
        members = _with_index(members, doc) + [("extra.npy", _npy(np.ones(2, np.float32)))]
    elif kind == "json flip":
        raw = bytearray(json.dumps(doc).encode())
        at = data.draw(st.integers(0, len(raw) - 1))
        raw[at] ^= 1 << data.draw(st.integers(0, 7))
        members = _with_index(members, raw=bytes(raw))
    elif kind == "resize payload":
        cut = data.draw(st.integers(-len(payload), 8))
        payload = payload[:cut] if cut < 0 else payload + b"\0" * cut
        members = _replace(members, target, body[:header_len] + payload)
    elif kind == "zip fields":  # the ZIP's own fields lie: sizes, CRC, method, flags
        size = len(body)
        lie = data.draw(st.fixed_dictionaries({}, optional={
            "crc": st.integers(0, 2**32 - 1), "method": st.sampled_from([0, 8, 12, 14, 99]),
            "flags": st.sampled_from([0x1, 0x8, 0x20, 0x40, 0x800])}))
        which = data.draw(st.sampled_from(["both", "csize", "usize", "neither"]))
        value = data.draw(_ZIP_SIZES)(size)
        if which != "neither":
            lie.update({k: value for k in ("csize", "usize") if which in (k, "both")})
        declared = lie.get("usize", size)
        if declared > 129 and data.draw(st.booleans()):
            # the .npy header (and maybe the index) agree with the lying size: only the
            # archive's length can tell the member is not there
            body = _npy_header("|u1", f"({declared - 129},)") + payload
            members = _replace(members, target, body)
            if data.draw(st.booleans()):
                members = _with_index(members, _set_entry(doc, entry, shape=[declared - 129],
                                                          dtype="uint8"))
        entries = [{"name": n, "data": d, **(lie if n == target else {})} for n, d in members]
        _restore_checked(*model, good[1], _raw_zip(entries), tmp_path)
        return
    compression = zipfile.ZIP_DEFLATED if kind == "deflate" else zipfile.ZIP_STORED
    _restore_checked(*model, good[1], _zip(members, compression), tmp_path)


_ZIP_SIZES = st.sampled_from([lambda n: 0, lambda n: n - 1, lambda n: n + 1, lambda n: n * 1100,
                              lambda n: 2**32 - 1, lambda n: 2**32 + n, lambda n: n + 4 * TIB4,
                              lambda n: 2**62, lambda n: n])
