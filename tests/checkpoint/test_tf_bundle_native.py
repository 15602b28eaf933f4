"""compatopt's own reader and writer of TensorFlow's tensor-bundle checkpoints (no TF needed).

* every committed TF checkpoint (written by TF 2.21: ``tools/make_tf1_checkpoint_fixtures.py``
  and ``tools/make_tf_bundle_native_fixtures.py``) reads back exactly what TensorFlow's
  reader returned when the fixtures were recorded: names, shapes, dtypes and bytes; sharded
  checkpoints, partitioned variables, string tensors and TF2 object checkpoints included;
* the writer reproduces TF1 ``Saver``'s files byte for byte, and round-trips every dtype;
* CRC-32C against published check values and a byte-at-a-time loop;
* damaged and hostile files raise ``DataLossError`` (or ``InvalidArgumentError`` for an
  unknown version), never another exception or a huge allocation;
* with TensorFlow at ``/tmp/tfenv/bin/python`` (a subprocess), TF reads what we write.
"""

import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap

import ml_dtypes
import numpy as np
import pytest

import compatopt as co
from compatopt import errors
from compatopt.checkpoint import _bundle_format as B
from compatopt.checkpoint import _crc32c as crc
from compatopt.checkpoint import _npz as npz
from compatopt.train import saver as S

from .ckpt_problem import CONFIGS, DTYPE_STEP, FIXTURES, STEPS_BEFORE

NATIVE = os.path.join(FIXTURES, "..", "bundle_native")
with open(os.path.join(FIXTURES, "names.json")) as _f:
    NAMES = json.load(_f)
with open(os.path.join(NATIVE, "names.json")) as _f:
    NATIVE_NAMES = json.load(_f)
NATIVE_REF = np.load(os.path.join(NATIVE, "reference.npz"))
TF_PYTHON = "/tmp/tfenv/bin/python"


def tf1_prefix(cfg):
    step = DTYPE_STEP if cfg == "dtypes" else STEPS_BEFORE
    return os.path.join(FIXTURES, cfg, "tf1", f"model.ckpt-{step}")


def native_prefix(tag):
    return os.path.join(NATIVE, NATIVE_NAMES[tag]["prefix"])


def read_all(prefix):
    r = B.BundleReader(prefix)
    return {e.name: r.read(e.name) for e in r.entries()}


def assert_same(got, want, name=""):
    assert got.dtype == want.dtype and got.shape == want.shape, name
    if got.dtype == object:
        assert list(got.reshape(-1)) == list(want.reshape(-1)), name
    else:
        assert got.tobytes() == want.tobytes(), name


# ----------------------------------------------------------------- TF-written checkpoints
@pytest.mark.parametrize("cfg", sorted(CONFIGS) + ["dtypes"])
def test_reads_committed_tf1_checkpoints_as_tensorflow_did(cfg):
    reader = B.BundleReader(tf1_prefix(cfg))
    want = NAMES[cfg]
    specs = reader.specs()
    assert sorted(specs) == sorted(want)
    converted = npz.NpzReader(os.path.join(FIXTURES, cfg, "converted",
                                           os.path.basename(tf1_prefix(cfg))))
    for name, info in want.items():
        shape, dtype = specs[name]
        assert list(shape) == info["shape"] and dtype.name == info["dtype"], name
        assert_same(reader.read(name), converted.read(name), name)  # TF's reader's bytes
    # and through the public API, without TensorFlow
    assert S.list_variables(tf1_prefix(cfg)) == [(n, want[n]["shape"]) for n in sorted(want)]
    assert S.list_variables(os.path.dirname(tf1_prefix(cfg))) == S.list_variables(
        tf1_prefix(cfg))


def test_tf1_values_equal_the_session_values():
    ref = np.load(os.path.join(FIXTURES, "reference.npz"))
    for cfg in CONFIGS:
        for name, value in read_all(tf1_prefix(cfg)).items():
            assert_same(value, ref[f"{cfg}/step50/{name}"], name)
    got = read_all(tf1_prefix("dtypes"))
    np.testing.assert_array_equal(got["bf16"].view(np.uint16), ref["dtypes/bf16"])
    assert got["bf16"].dtype == ml_dtypes.bfloat16


@pytest.mark.parametrize("tag", sorted(NATIVE_NAMES))
def test_reads_sharded_partitioned_string_and_object_checkpoints(tag):
    reader = B.BundleReader(native_prefix(tag))
    entries = NATIVE_NAMES[tag]["entries"]
    assert sorted(e.name for e in reader.entries()) == sorted(entries)
    for name, info in entries.items():
        value = reader.read(name)
        assert list(value.shape) == info["shape"], name
        if info["dtype"] == "string":
            flat = list(value.reshape(-1))
            assert b"".join(flat) == NATIVE_REF[f"{tag}/{name}"].tobytes()
            assert [len(x) for x in flat] == list(NATIVE_REF[f"{tag}/{name}.lengths"])
            assert name not in reader.specs()  # as TF's reader behind compatopt did
        else:
            assert value.dtype.name == info["dtype"], name
            assert value.tobytes() == NATIVE_REF[f"{tag}/{name}"].tobytes(), name
            assert reader.specs()[name] == (tuple(info["shape"]), value.dtype)


def test_sharded_and_partitioned_layouts_are_reported():
    sharded = {e.name: e for e in B.BundleReader(native_prefix("sharded")).entries()}
    assert {e.shard_id for e in sharded.values()} == {0, 1}
    part = {e.name: e for e in B.BundleReader(native_prefix("partitioned")).entries()}
    assert [len(e.slices) for e in (part["emb"], part["wide"], part["plain"])] == [3, 2, 0]
    assert [s[0] for s in part["emb"].slices] == [B.Extent(0, 4), B.Extent(4, 3),
                                                  B.Extent(7, 3)]
    assert S.list_variables(native_prefix("partitioned")) == [
        ("emb", [10, 4]), ("plain", [3]), ("wide", [2, 7])]  # as tf.train.list_variables


def test_restore_and_convert_without_tensorflow(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # `import tensorflow` fails
    cfg = "adam"
    dst = S.convert_tf1_checkpoint(os.path.dirname(tf1_prefix(cfg)), str(tmp_path / "c"))
    committed = npz.NpzReader(os.path.join(FIXTURES, cfg, "converted",
                                           os.path.basename(tf1_prefix(cfg))))
    ours = npz.NpzReader(dst)
    assert ours.specs() == committed.specs()
    for name in ours.specs():
        assert_same(ours.read(name), committed.read(name), name)
    w = co.Variable(np.zeros((10, 4), np.float32), name="emb")
    S.Saver([w]).restore(None, native_prefix("partitioned"))
    np.testing.assert_array_equal(w.numpy(), NATIVE_REF["partitioned/emb"])
    step = co.Variable(np.zeros((), np.int32), name="global_step")
    S.Saver([step]).restore(None, native_prefix("sharded"))
    assert int(step.numpy()) == 3


# ---------------------------------------------------------------------------- the writer
@pytest.mark.parametrize("prefix", [tf1_prefix(c) for c in sorted(CONFIGS) + ["dtypes"]]
                         + [native_prefix("misc")], ids=lambda p: p.split(os.sep)[-3])
def test_writer_reproduces_tensorflows_files_byte_for_byte(tmp_path, prefix):
    out = co.checkpoint.write_tf_bundle(str(tmp_path / "re"), read_all(prefix))
    for suffix in (".index", ".data-00000-of-00001"):
        with open(prefix + suffix, "rb") as a, open(out + suffix, "rb") as b:
            assert a.read() == b.read(), suffix


def _all_dtypes():
    rs = np.random.RandomState(0)
    out = {}
    for dt in ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8",
               "uint16", "uint32", "uint64", "complex64", "complex128"):
        out[f"t/{dt}"] = (rs.standard_normal((3, 2)) * 100).astype(dt)
    out["t/bf16"] = rs.standard_normal((5,)).astype(ml_dtypes.bfloat16)
    out["t/f8"] = rs.standard_normal((4,)).astype(ml_dtypes.float8_e4m3fn)
    out["t/bool"] = rs.rand(7) > 0.5
    out["t/scalar"] = np.float32(3.5)
    out["t/empty"] = np.zeros((0, 5), np.float32)
    out["t/big_endian"] = np.arange(6, dtype=">i4")
    out["t/str"] = np.array([b"a", b"", "\u00e9".encode(), b"\x00\xff" * 300], object)
    out["t/str_u"] = np.array(["x", "\u00fcber"])
    out["\u00fcnicode/name"] = np.ones(2, np.float32)
    return out


def test_round_trip_every_dtype(tmp_path):
    tensors = _all_dtypes()
    got = read_all(co.checkpoint.write_tf_bundle(str(tmp_path / "rt"), tensors))
    assert sorted(got) == sorted(tensors)
    for name, want in tensors.items():
        want = np.asarray(want)
        if want.dtype.kind in "SUO":
            want = np.array([x.encode() if isinstance(x, str) else bytes(x)
                             for x in want.reshape(-1)], object).reshape(want.shape)
        elif want.dtype.byteorder == ">":
            want = want.astype(want.dtype.newbyteorder("<"))
        assert_same(got[name], want, name)


def test_many_tensors_span_several_blocks(tmp_path):
    tensors = {f"layer_{i:04d}/kernel/Adam_1": np.full(i % 3, i, np.int32) for i in range(600)}
    prefix = B.write_bundle(str(tmp_path / "many"), tensors, block_size=1024)
    with open(prefix + ".index", "rb") as f:
        index = B._block_entries(B._block(f.read(), _footer_index(prefix), "index"), "index")
    assert len(index) > 10
    got = read_all(prefix)
    for name, want in tensors.items():
        assert_same(got[name], want, name)


def _footer_index(prefix):
    with open(prefix + ".index", "rb") as f:
        footer = f.read()[-B.FOOTER_SIZE:]
    _, pos = B._varint(footer, 0, 40)
    _, pos = B._varint(footer, pos, 40)
    offset, pos = B._varint(footer, pos, 40)
    size, _ = B._varint(footer, pos, 40)
    return offset, size


def test_saver_and_functional_save_write_tensorflow_format(tmp_path):
    w = co.Variable(np.arange(6, dtype=np.float32).reshape(2, 3), name="dense/kernel")
    step = co.train.get_or_create_global_step()
    step.assign(np.asarray(12, step.dtype))
    saver = S.Saver(format="tf", max_to_keep=1)
    d = tmp_path / "run"
    d.mkdir()
    (d / "model.ckpt-12.npz").write_bytes(b"stale")  # a stale compatopt file is removed
    path = saver.save(None, str(d / "model.ckpt"), global_step=step)
    assert os.path.isfile(path + ".index") and not os.path.exists(path + ".npz")
    assert S.latest_checkpoint(str(d)) == path
    assert B.BundleReader(path).specs()["global_step"][1] == np.int64  # as TF1's
    w.assign(np.zeros((2, 3), np.float32))
    S.Saver().restore(None, path)
    np.testing.assert_array_equal(w.numpy(), np.arange(6).reshape(2, 3))
    saver.save(None, str(d / "model.ckpt"), global_step=13)
    assert not os.path.exists(path + ".index")  # max_to_keep deletes TF files too
    with pytest.raises(ValueError, match="format"):
        S.Saver(format="h5")
    rule = co.adam(0.1)
    params = {"w": np.ones(3, np.float32)}
    state = rule.init(params)
    co.checkpoint.save(str(tmp_path / "fn"), rule, params, state, global_step=4, format="tf")
    p2, s2 = co.checkpoint.load(str(tmp_path / "fn"), rule, params)
    np.testing.assert_array_equal(p2["w"], params["w"])
    assert int(s2.count) == 4


# ------------------------------------------------------------------------------- CRC-32C
def test_crc32c_check_values():
    assert crc.value(b"123456789") == 0xE3069283
    assert crc.value(bytes(32)) == 0x8A9136AA          # RFC 3720, B.4
    assert crc.value(b"\xff" * 32) == 0x62A8AB43
    assert crc.value(bytes(range(32))) == 0x46DD794E
    assert crc.value(b"") == 0
    for x in (0, 1, 0xDEADBEEF, 0xFFFFFFFF):
        assert crc.unmask(crc.mask(x)) == x
    rs = np.random.RandomState(5)
    for n in (1, 8191, crc._SHORT, crc._SHORT + 1, 100_003, 1 << 20, 2_500_001):
        data = rs.bytes(n)
        assert crc.value(data) == crc._raw_bytes(0xFFFFFFFF, data) ^ 0xFFFFFFFF, n
        cut = n // 3
        assert crc.extend(crc.value(data[:cut]), data[cut:]) == crc.value(data), n
        assert crc.value(np.frombuffer(data, np.uint8)) == crc.value(data)


# --------------------------------------------------------------------- damaged and hostile
def _copy(tmp_path, prefix, name="d"):
    out = str(tmp_path / name)
    for suffix in (".index", ".data-00000-of-00001"):
        shutil.copy(prefix + suffix, out + suffix)
    return out


def _read_everything(prefix):
    r = B.BundleReader(prefix)
    return {e.name: r.read(e.name) for e in r.entries()}


def test_every_flipped_index_byte_is_detected_or_harmless(tmp_path):
    src = tf1_prefix("dtypes")
    want = read_all(src)
    bad = _copy(tmp_path, src)
    with open(src + ".index", "rb") as f:
        raw = f.read()
    index_offset, _ = _footer_index(src)
    harmless = []
    for i in range(len(raw)):
        data = bytearray(raw)
        data[i] ^= 0x5A
        with open(bad + ".index", "wb") as f:
            f.write(data)
        try:
            got = _read_everything(bad)
        except (errors.DataLossError, errors.InvalidArgumentError) as e:
            assert bad in str(e)
            continue
        harmless.append(i)
        assert got.keys() == want.keys() and all(
            got[k].tobytes() == want[k].tobytes() for k in want), i
    # Only what no reader (TensorFlow's neither) looks at: the empty meta-index block, its
    # handle and the zero padding of the footer.
    meta_block = range(index_offset - 8 - B.TRAILER_SIZE, index_offset)
    footer = range(len(raw) - B.FOOTER_SIZE, len(raw) - 8)
    assert all(i in meta_block or i in footer for i in harmless), harmless


def test_every_flipped_data_byte_and_every_truncation_is_detected(tmp_path):
    src = tf1_prefix("dtypes")
    bad = _copy(tmp_path, src)
    data_path = bad + ".data-00000-of-00001"
    with open(src + ".data-00000-of-00001", "rb") as f:
        raw = f.read()
    for i in range(len(raw)):
        data = bytearray(raw)
        data[i] ^= 0x01
        with open(data_path, "wb") as f:
            f.write(data)
        with pytest.raises(errors.DataLossError, match="checksum does not match|bool"):
            _read_everything(bad)
    for cut in range(len(raw)):
        with open(data_path, "wb") as f:
            f.write(raw[:cut])
        with pytest.raises(errors.DataLossError, match="truncated"):
            _read_everything(bad)
    shutil.copy(src + ".data-00000-of-00001", data_path)
    with open(src + ".index", "rb") as f:
        index = f.read()
    for cut in range(len(index)):
        with open(bad + ".index", "wb") as f:
            f.write(index[:cut])
        with pytest.raises(errors.DataLossError, match="index file is truncated or corrupt"):
            B.BundleReader(bad)
    shutil.copy(src + ".index", bad + ".index")
    os.remove(data_path)
    with pytest.raises(errors.DataLossError, match="data file .* is missing"):
        B.BundleReader(bad)
    os.remove(bad + ".index")
    with pytest.raises(errors.NotFoundError, match="not a valid checkpoint"):
        S.Saver([co.Variable(np.zeros(3, np.float16), name="f16")]).restore(None, bad)


def _write_raw(tmp_path, items, data=b"", name="h", block_size=B.BLOCK_SIZE):
    prefix = str(tmp_path / name)
    with open(prefix + ".index", "wb") as f:
        f.write(B.build_table(sorted(items), block_size))
    with open(B.data_file(prefix, 0, 1), "wb") as f:
        f.write(data)
    return prefix


def _entry(dtype=1, shape=(2,), offset=0, size=8, data=bytes(8), shard=0):
    return B.encode_entry(dtype, shape, offset, size, crc.mask(crc.value(data)), shard)


HEADER = (b"", B.encode_header(1))


@pytest.mark.parametrize("items,data,match", [
    ([HEADER, (b"w", _entry(shape=(1 << 40,), size=1 << 42))], bytes(8),
     "lie past the end"),
    ([HEADER, (b"w", _entry(shape=(1 << 40, 1 << 40), size=8))], bytes(8),
     "says 8 bytes"),
    ([HEADER, (b"w", _entry(offset=1 << 62))], bytes(8), "lie past the end"),
    ([HEADER, (b"w", _entry(dtype=7, shape=(1 << 30,), size=8))], bytes(8),
     "cannot hold a string tensor"),
    ([HEADER, (b"w", _entry(shard=3))], bytes(8), "shard 3 of 1"),
    ([HEADER, (b"w", b"\x08\x01\x12\x04\x12\x02\x08\x7f\x28")], bytes(8), "corrupt entry"),
    ([HEADER, (b"w", b"\x08\x01\x12\x0d\x12\x0b\x08" + b"\xff" * 9 + b"\x01")], bytes(8),
     "negative dimension"),
    ([HEADER, (b"w", b"\x0b")], b"", "wire type"),
    ([HEADER, (b"\xff\xfe", _entry())], bytes(8), "not UTF-8"),
    ([(b"", b"\x08\x01\x1a\x02\x10\x05")], b"", "needs a newer reader"),
    ([(b"w", _entry())], bytes(8), "no bundle header"),
    ([HEADER, (b"w", _entry(dtype=10, shape=(8,), data=b"\x02" * 8))], b"\x02" * 8,
     "bool tensor"),
    ([HEADER, (b"w", _entry(dtype=1, shape=(2,), size=8).replace(b"\x35", b"\x30", 1))],
     bytes(8), "corrupt entry|no crc32c"),
])
def test_hostile_index_entries(tmp_path, items, data, match):
    prefix = _write_raw(tmp_path, items, data)
    exc = errors.InvalidArgumentError if "newer" in match else errors.DataLossError
    with pytest.raises(exc, match=match):
        _read_everything(prefix)


def test_partitioned_variable_with_missing_or_overlapping_slices(tmp_path):
    def slices_entry(*extents):
        msg = bytearray(B.encode_entry(1, (4,), 0, 0, 0)[:-5])  # dtype + shape, no crc
        for start, length in extents:
            ext = b"\x08" + bytes([start]) + b"\x10" + bytes([length])
            sl = b"\x0a" + bytes([len(ext)]) + ext
            msg += b"\x3a" + bytes([len(sl)]) + sl
        return bytes(msg)

    part = np.arange(2, dtype=np.float32).tobytes()
    key = B.slice_key(b"v", (B.Extent(0, 2),))
    items = [HEADER, (b"v", slices_entry((0, 2), (2, 2))), (key, _entry(data=part))]
    with pytest.raises(errors.DataLossError, match="slice 2,2 is missing"):
        _read_everything(_write_raw(tmp_path, items, part))
    items = [HEADER, (b"v", slices_entry((0, 2), (1, 2))), (key, _entry(data=part)),
             (B.slice_key(b"v", (B.Extent(1, 2),)), _entry(data=part))]
    with pytest.raises(errors.DataLossError, match="overlap"):
        _read_everything(_write_raw(tmp_path, items, part, name="o"))
    items = [HEADER, (b"v", slices_entry((0, 2), (3, 2))), (key, _entry(data=part))]
    with pytest.raises(errors.DataLossError, match="outside its shape"):
        _read_everything(_write_raw(tmp_path, items, part, name="x"))


def test_damaged_tables(tmp_path):
    good = _write_raw(tmp_path, [HEADER, (b"w", _entry())], bytes(8))
    with open(good + ".index", "rb") as f:
        raw = bytearray(f.read())
    # a compressed (Snappy) block with a valid checksum: refused clearly
    end = raw.index(b"\x01\x00\x00\x00") + 4  # the first block's restart count
    raw[end] = 1
    raw[end + 1:end + 5] = struct.pack("<I", crc.mask(crc.value(bytes(raw[:end + 1]))))
    with open(good + ".index", "wb") as f:
        f.write(raw)
    with pytest.raises(errors.DataLossError, match="Snappy"):
        B.BundleReader(good)
    raw[-1] ^= 1  # the magic number
    with open(good + ".index", "wb") as f:
        f.write(raw)
    with pytest.raises(errors.DataLossError, match="bad magic number"):
        B.BundleReader(good)
    # keys out of order (a block written unsorted)
    blk = B._BlockBuilder(16)
    blk.add(b"", B.encode_header(1))
    blk.add(b"w", _entry())
    blk.add(b"a", _entry())
    contents = blk.finish()
    table = contents + b"\x00" + struct.pack("<I", crc.mask(crc.extend(crc.value(contents),
                                                                        b"\x00")))
    index = B._BlockBuilder(1)
    handle = bytearray()
    B._put_varint(handle, 0)
    B._put_varint(handle, len(contents))
    index.add(b"x", bytes(handle))
    ic = index.finish()
    footer = bytearray()
    B._put_varint(footer, 0)
    B._put_varint(footer, 0)
    B._put_varint(footer, len(table))
    B._put_varint(footer, len(ic))
    table += ic + b"\x00" + struct.pack("<I", crc.mask(crc.extend(crc.value(ic), b"\x00")))
    table += bytes(footer).ljust(40, b"\x00") + struct.pack("<Q", B.MAGIC)
    with open(good + ".index", "wb") as f:
        f.write(table)
    with pytest.raises(errors.DataLossError, match="out of order"):
        B.BundleReader(good)


# ------------------------------------------------------------------- live TensorFlow check
_TF_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    v1 = tf.compat.v1
    prefix, ref_path, meta_path, saver_prefix = sys.argv[1:5]
    ref = np.load(ref_path, allow_pickle=False)
    meta = json.load(open(meta_path))
    reader = tf.train.load_checkpoint(prefix)
    shapes = reader.get_variable_to_shape_map()
    dtypes = reader.get_variable_to_dtype_map()
    bad = []
    assert sorted(shapes) == sorted(meta), sorted(set(shapes) ^ set(meta))
    for name, (dtype, shape) in meta.items():
        if dtypes[name].name != dtype or list(shapes[name]) != shape:
            bad.append((name, dtypes[name].name, list(shapes[name])))
            continue
        value = reader.get_tensor(name)
        if dtype == "string":
            got = b"".join(bytes(x) for x in np.asarray(value, object).reshape(-1))
        else:
            got = np.ascontiguousarray(value).tobytes()
        if got != ref[name].tobytes():
            bad.append((name, "bytes differ"))
    # TF1's Saver restores the checkpoint compatopt's Saver(format="tf") wrote
    v1.disable_eager_execution()
    with tf.Graph().as_default():
        w = v1.get_variable("dense/kernel", shape=(2, 3), dtype=tf.float32)
        step = v1.train.get_or_create_global_step()
        saver = v1.train.Saver()
        with v1.Session() as sess:
            saver.restore(sess, tf.train.latest_checkpoint(saver_prefix))
            w_v, step_v = sess.run([w, step])
    if w_v.tolist() != np.arange(6, dtype=np.float32).reshape(2, 3).tolist() or step_v != 9:
        bad.append(("saver", w_v.tolist(), int(step_v)))
    print(json.dumps({"bad": bad, "n": len(meta)}))
""")


@pytest.mark.skipif(not os.path.exists(TF_PYTHON),
                    reason=f"no TensorFlow interpreter at {TF_PYTHON} to cross-check with")
def test_tensorflow_reads_what_we_write_bit_for_bit(tmp_path):
    tensors = _all_dtypes()
    tensors.pop("t/big_endian")
    for i in range(3500):  # an index of several 256 KiB data blocks
        tensors[f"{i:05d}/{'x' * 80}"] = np.full((2,), i, np.int64)
    prefix = co.checkpoint.write_tf_bundle(str(tmp_path / "ours"), tensors)
    with open(prefix + ".index", "rb") as f:
        index = B._block_entries(B._block(f.read(), _footer_index(prefix), "index"), "index")
    assert len(index) >= 2
    ref, meta = {}, {}
    for name, value in tensors.items():
        a = np.asarray(value)
        if a.dtype.kind in "SUO":
            meta[name] = ("string", list(a.shape))
            ref[name] = np.frombuffer(b"".join(x.encode() if isinstance(x, str) else bytes(x)
                                               for x in a.reshape(-1)), np.uint8)
        else:
            meta[name] = (a.dtype.name, list(a.shape))
            ref[name] = np.frombuffer(a.tobytes(), np.uint8)
    np.savez(tmp_path / "ref.npz", **ref)
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    run_dir = tmp_path / "saver"
    run_dir.mkdir()
    co.Variable(np.arange(6, dtype=np.float32).reshape(2, 3), name="dense/kernel")
    step = co.train.get_or_create_global_step()
    step.assign(np.asarray(9, step.dtype))
    S.Saver(format="tf").save(None, str(run_dir / "model.ckpt"), global_step=step)
    script = tmp_path / "check.py"
    script.write_text(_TF_SCRIPT)
    proc = subprocess.run(
        [TF_PYTHON, str(script), prefix, str(tmp_path / "ref.npz"), str(tmp_path / "meta.json"),
         str(run_dir)], capture_output=True, text=True, timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"bad": [], "n": len(tensors)}


def test_big_endian_bundle(tmp_path):
    """A header saying BIG endian (a checkpoint written on a big-endian machine)."""
    values = {"f": np.arange(3, dtype=">f4"), "c": np.array([1 + 2j], ">c8"),
              "i": np.array([-5], ">i8"), "u": np.array([7], "u1")}
    items, data = [(b"", B.encode_header(1) + b"\x10\x01")], b""
    for name in sorted(values):
        raw = values[name].tobytes()
        code = B.tf_dtype_code(values[name].dtype.newbyteorder("="))
        items.append((name.encode(), B.encode_entry(code, values[name].shape, len(data),
                                                    len(raw), crc.mask(crc.value(raw)))))
        data += raw
    got = read_all(_write_raw(tmp_path, items, data))
    for name, want in values.items():
        np.testing.assert_array_equal(got[name], want)
        assert got[name].dtype.byteorder in "=|"
