"""TF1's checkpoint utilities replayed from the recorded fixture, without TensorFlow:
``NewCheckpointReader``, ``update_checkpoint_state``, ``remove_checkpoint``,
``get_checkpoint_mtimes``, ``checkpoints_iterator`` (``tools/make_tf1_warm_start_fixtures.py``).
"""

import copy
import json
import os
import shutil
from typing import Any, Dict

import jax.numpy as jnp
import numpy as np
import pytest

import compatopt as co
from compatopt import errors
from compatopt.checkpoint import _npz as npz
from compatopt.checkpoint import _state_file as state_file
from compatopt.train import checkpoint_utils as cu

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "fixtures", "tf1", "warm_start")
with open(os.path.join(FIXTURES, "warm_start.json")) as _f:
    DATA = json.load(_f)
PREFIX = f"model.ckpt-{DATA['step']}"
READER = DATA["reader"]
UTILS = DATA["utils"]


@pytest.fixture(params=["compatopt", "tf1"])
def ckpt(request, tmp_path):
    """``{file, dir, missing, empty_dir}`` for the fixture's checkpoint in one format."""
    d = tmp_path / "tf1"
    if request.param == "compatopt":
        d.mkdir()
        npz.write(str(d / PREFIX), {k: np.asarray(e["values"], e["dtype"]).reshape(e["shape"])
                                    for k, e in DATA["checkpoint"].items()})
        state_file.write_state(str(d), str(d / PREFIX), [str(d / PREFIX)])
    else:
        shutil.copytree(os.path.join(FIXTURES, "tf1"), str(d))
        try:
            co.train.NewCheckpointReader(str(d / PREFIX))
        except ImportError:
            pytest.skip("TensorFlow's checkpoint format is not readable here (no TensorFlow)")
    (tmp_path / "empty").mkdir()
    return {"file": str(d / PREFIX), "dir": str(d), "missing": str(d / "no_such.ckpt"),
            "empty_dir": str(tmp_path / "empty")}


def test_reader_maps_as_tf1(ckpt):
    r = co.train.NewCheckpointReader(ckpt["file"])
    assert r.get_variable_to_shape_map() == READER["shape_map"]
    dtypes = r.get_variable_to_dtype_map()
    assert {k: d.name for k, d in dtypes.items()} == READER["dtype_map"]
    assert r.debug_string() == READER["debug_string"].encode()
    for name, has in READER["has_tensor"].items():
        assert r.has_tensor(name) is has
    assert str(r.get_tensor("global_step").dtype) == READER["get_tensor_int64_dtype"]
    for name, e in DATA["checkpoint"].items():
        np.testing.assert_array_equal(r.get_tensor(name), np.asarray(e["values"], e["dtype"]))
    assert [[k, s] for k, s in co.train.list_variables(ckpt["file"])] == READER["list_variables"]


def test_reader_errors_as_tf1(ckpt):
    errs = READER["errors"]
    r = co.train.NewCheckpointReader(ckpt["file"])
    with pytest.raises(errors.NotFoundError) as info:
        r.get_tensor("nope")
    assert str(info.value) == errs["get_tensor_missing"]["message"]
    with pytest.raises(errors.NotFoundError) as info:
        co.train.NewCheckpointReader(ckpt["missing"])
    assert str(info.value) == errs["open_missing"]["message"].replace("{path}", ckpt["missing"])
    with pytest.raises(errors.DataLossError) as info:
        co.train.NewCheckpointReader(ckpt["dir"])
    assert str(info.value) == errs["open_directory"]["message"].replace("{dir}", ckpt["dir"])
    # load_checkpoint (compatopt.checkpoint's) raises a ValueError too, with its own message
    assert errs["load_checkpoint_empty_dir"]["type"] == "ValueError"
    with pytest.raises(ValueError):
        co.train.load_checkpoint(ckpt["empty_dir"])


def test_dtype_object():
    d = cu.DType(np.float32)
    assert d.name == "float32" and repr(d) == "tf.float32"
    assert d == np.float32 and d == "float32" and d == jnp.float32 and d == cu.DType("float32")
    assert d != np.float64 and d != cu.DType(np.int64)
    assert d.as_numpy_dtype is np.float32 and d.base_dtype is d and d.is_floating
    assert cu.DType(np.int64).is_integer and cu.DType(np.bool_).is_bool
    assert np.zeros(2, d).dtype == np.float32 and jnp.zeros(2, d).dtype == jnp.float32
    assert cu.DType(jnp.bfloat16).name == "bfloat16" and cu.DType(jnp.bfloat16).is_floating
    assert len({d, cu.DType("float32")}) == 1
    assert cu.tf_dtype_string(np.float64) == "double"


def _sub(x: Any, d: str) -> Any:
    if isinstance(x, str):
        return x.replace("{dir}", d)
    if isinstance(x, list):
        return [_sub(p, d) for p in x]
    return x


@pytest.mark.parametrize("name", sorted(UTILS["update_checkpoint_state"]))
def test_update_checkpoint_state_as_tf1(name, tmp_path, monkeypatch):
    rec = UTILS["update_checkpoint_state"][name]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run").mkdir()
    d = str(tmp_path)
    kw: Dict[str, Any] = {k: _sub(v, d) for k, v in rec["args"].items() if v is not None}
    passed = copy.deepcopy(kw)
    co.train.update_checkpoint_state(**passed)
    assert passed == kw  # the caller's list is left alone (TF1 appends to it)
    fname = kw.get("latest_filename") or "checkpoint"
    with open(os.path.join("run", fname)) as f:
        assert f.read() == rec["text"].replace("{dir}", d)
    state = co.train.get_checkpoint_state("run", kw.get("latest_filename"))
    assert state is not None
    assert state.model_checkpoint_path == _sub(rec["read_back"]["model_checkpoint_path"], d)
    assert state.all_model_checkpoint_paths == _sub(
        rec["read_back"]["all_model_checkpoint_paths"], d)


@pytest.mark.parametrize("name", sorted(UTILS["update_checkpoint_state_errors"]))
def test_update_checkpoint_state_errors_as_tf1(name, tmp_path, monkeypatch):
    rec = UTILS["update_checkpoint_state_errors"][name]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run").mkdir()
    d = str(tmp_path)
    kw: Dict[str, Any] = {k: _sub(v, d) for k, v in rec["args"].items()}
    if rec["type"] is None:
        co.train.update_checkpoint_state(**kw)
        return
    with pytest.raises({"ValueError": ValueError, "RuntimeError": RuntimeError}[rec["type"]]) \
            as info:
        co.train.update_checkpoint_state(**kw)
    assert str(info.value) == rec["message"].replace("{dir}", d)
    assert not os.listdir("run")  # nothing written


@pytest.mark.parametrize("name", sorted(UTILS["remove_checkpoint"]))
def test_remove_checkpoint_as_tf1(name, tmp_path):
    rec = UTILS["remove_checkpoint"][name]
    for fn in rec["before"]:
        (tmp_path / fn).write_text("")
    co.train.remove_checkpoint(str(tmp_path / "model.ckpt-5"), **rec["args"])
    want = list(rec["after"])
    if rec["args"].get("checkpoint_format_version", 2) == 2:
        want.remove("model.ckpt-5.npz")  # compatopt also deletes its own data file
    assert sorted(os.listdir(tmp_path)) == want
    co.train.remove_checkpoint(str(tmp_path / "never_existed"))  # no error, as TF1


def test_remove_checkpoint_of_a_saver_checkpoint(tmp_path):
    co.Variable(np.ones(2, np.float32), name="w")
    path = co.train.Saver().save(None, str(tmp_path / "m"), global_step=3)
    assert co.train.checkpoint_exists(path)
    co.train.remove_checkpoint(path)
    assert not co.train.checkpoint_exists(path)
    assert os.listdir(tmp_path) == ["checkpoint"]


def test_get_checkpoint_mtimes_as_tf1(tmp_path):
    rec = UTILS["get_checkpoint_mtimes"]
    for fn, stamp in rec["files"].items():
        (tmp_path / fn).write_text("")
        os.utime(tmp_path / fn, (stamp, stamp))
    got = co.train.get_checkpoint_mtimes([str(tmp_path / p) for p in rec["prefixes"]])
    assert got == rec["mtimes"]
    (tmp_path / "n.npz").write_text("")
    os.utime(tmp_path / "n.npz", (5000.0, 5000.0))
    assert co.train.get_checkpoint_mtimes([str(tmp_path / "n")]) == [5000.0]


class FakeClock:
    """``time`` and ``sleep`` for the iterators; ``events`` run when their time comes."""

    def __init__(self):
        self.now = 1000.0
        self.events = []
        self.slept = []

    def time(self):
        return self.now

    def sleep(self, s):
        self.slept.append(s)
        self.now += s
        for at, fn in list(self.events):
            if at <= self.now:
                self.events.remove((at, fn))
                fn()


@pytest.fixture
def clock(monkeypatch):
    c = FakeClock()
    monkeypatch.setattr(cu, "_time", c.time)
    monkeypatch.setattr(cu, "_sleep", c.sleep)
    return c


def _save(d, step):
    w = co.global_variables()[0] if co.global_variables() else co.Variable(np.ones(2), name="w")
    del w
    return co.train.Saver().save(None, os.path.join(d, "model.ckpt"), global_step=step)


def test_checkpoints_iterator_yields_new_checkpoints(tmp_path, clock):
    d = str(tmp_path)
    first = _save(d, 1)
    clock.events.append((1003.0, lambda: _save(d, 2)))
    it = co.train.checkpoints_iterator(d, min_interval_secs=2, timeout=10)
    assert next(it) == first
    assert next(it) == os.path.join(d, "model.ckpt-2")
    assert list(it) == []  # no new checkpoint within the timeout: the iterator ends
    assert clock.slept[0] == 2  # min_interval_secs after the first yield


def test_checkpoints_iterator_timeout_fn(tmp_path, clock):
    d = str(tmp_path)
    calls = []

    def timeout_fn():
        calls.append(clock.now)
        if len(calls) == 2:
            _save(d, 5)
        return len(calls) >= 4

    got = list(co.train.checkpoints_iterator(d, timeout=3, timeout_fn=timeout_fn))
    assert got == [os.path.join(d, "model.ckpt-5")]
    assert len(calls) == 4  # also called after the yield, as TF1


def test_checkpoints_iterator_on_a_tf1_directory(tmp_path, clock):
    shutil.copytree(os.path.join(FIXTURES, "tf1"), str(tmp_path / "tf1"))
    it = co.train.checkpoints_iterator(str(tmp_path / "tf1"), timeout=0)
    assert list(it) == [str(tmp_path / "tf1" / PREFIX)]
