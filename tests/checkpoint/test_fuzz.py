"""Hostile checkpoint files: every damaged or crafted ``.npz`` is a ``DataLossError`` (or
TF1's ``NotFoundError``/``InvalidArgumentError`` when the damage leaves a readable file
whose names, shapes or dtypes no longer match), never another exception, never a huge
allocation, and nothing is assigned on error."""

import io
import json
import time
import tracemalloc
import zipfile

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import compatopt as co
from compatopt import errors

from .ckpt_helpers import assert_unchanged, snapshot

INDEX_MEMBER = "__compatopt_index__.npy"
ALLOWED = (errors.DataLossError, errors.NotFoundError, errors.InvalidArgumentError)


def _model():
    co.reset_default_graph()
    w = co.Variable(jnp.arange(12.0).reshape(3, 4), name="w")
    b = co.Variable(jnp.asarray([0.5, -1.0], jnp.bfloat16), name="b")
    gs = co.train.get_or_create_global_step()
    opt = co.train.AdamOptimizer(0.1)
    opt.minimize(lambda: jnp.sum(w.value ** 2) + jnp.sum(b.value.astype(jnp.float32)),
                 global_step=gs)
    return co.train.Saver()


@pytest.fixture(scope="module")
def good_bytes(tmp_path_factory):
    saver = _model()
    prefix = str(tmp_path_factory.mktemp("good") / "m")
    saver.save(None, prefix)
    with open(prefix + ".npz", "rb") as f:
        return f.read()


def _npy(shape_text: str, dtype: str = "<f4", payload: bytes = b"") -> bytes:
    header = "{'descr': '%s', 'fortran_order': False, 'shape': %s, }" % (dtype, shape_text)
    header = header.ljust(118) + "\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + payload


def _crafted(members: dict) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _index(tensors: dict) -> bytes:
    from compatopt.checkpoint import _npz

    blob = json.dumps({"format": _npz.FORMAT, "version": _npz.VERSION,
                       "tensors": tensors}).encode()
    out = io.BytesIO()
    np.lib.format.write_array(out, np.frombuffer(blob, np.uint8), allow_pickle=False)
    return out.getvalue()


def test_a_header_claiming_four_tebibytes_is_data_loss_without_allocating(tmp_path):
    from compatopt.checkpoint import _npz

    huge = "(1099511627776,)"  # 2**40 float32: 4 TiB
    data = _crafted({"w.npy": _npy(huge, payload=b"\0" * 16),
                     INDEX_MEMBER: _index({"w": {"dtype": "float32",
                                                    "shape": [1099511627776]}})})
    assert len(data) < 1000
    (tmp_path / "m.npz").write_bytes(data)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        reader = _npz.NpzReader(str(tmp_path / "m"))
        with pytest.raises(errors.DataLossError, match="declares shape"):
            reader.read("w")
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert time.perf_counter() - start < 5
    assert peak < 16 * 2**20


def test_compressed_members_and_object_dtypes_are_refused(tmp_path):
    from compatopt.checkpoint import _npz

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("w.npy", _npy("(4,)", payload=b"\0" * 16))
        zf.writestr(INDEX_MEMBER, _index({"w": {"dtype": "float32", "shape": [4]}}))
    (tmp_path / "z.npz").write_bytes(buf.getvalue())
    with pytest.raises(errors.DataLossError):
        _npz.NpzReader(str(tmp_path / "z"))
    (tmp_path / "o.npz").write_bytes(_crafted({
        "w.npy": _npy("(1,)", dtype="|O", payload=b"\0" * 8),
        INDEX_MEMBER: _index({"w": {"dtype": "float32", "shape": [1]}})}))
    with pytest.raises(errors.DataLossError):
        _npz.NpzReader(str(tmp_path / "o")).read("w")


_FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.function_scoped_fixture,
                                        HealthCheck.too_slow])


@_FUZZ
@given(data=st.data())
def test_mutated_checkpoints_restore_exactly_or_fail_cleanly(good_bytes, tmp_path, data):
    kind = data.draw(st.sampled_from(["truncate", "flip", "insert", "delete", "header"]))
    raw = bytearray(good_bytes)
    at = data.draw(st.integers(0, len(raw) - 1))
    if kind == "truncate":
        raw = raw[:at]
    elif kind == "flip":
        raw[at] ^= 1 << data.draw(st.integers(0, 7))
    elif kind == "insert":
        raw[at:at] = data.draw(st.binary(min_size=1, max_size=8))
    elif kind == "delete":
        del raw[at:at + data.draw(st.integers(1, 8))]
    else:  # rewrite a shape or dtype inside some .npy header
        text = bytes(raw)
        pos = text.find(b"'shape': (", at) if data.draw(st.booleans()) else text.find(b"<f4", at)
        if pos < 0:
            pos = text.find(b"'shape': (")
        raw[pos:pos + 12] = data.draw(st.binary(min_size=12, max_size=12))
    saver = _model()
    before = snapshot()
    prefix = str(tmp_path / "m")
    with open(prefix + ".npz", "wb") as f:
        f.write(bytes(raw))
    try:
        saver.restore(None, prefix)
    except ALLOWED:
        assert_unchanged(before)
        return
    # no error: the restore must have read exactly what was saved
    good = tmp_path / "good"
    good.mkdir(exist_ok=True)
    (good / "m.npz").write_bytes(good_bytes)
    for name, _ in co.train.list_variables(str(good / "m")):
        want = co.train.load_variable(str(good / "m"), name)
        got = next(v for v in co.global_variables() if v.op.name == name).numpy()
        np.testing.assert_array_equal(np.asarray(got), want, err_msg=name)
