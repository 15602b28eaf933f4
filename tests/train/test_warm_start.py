"""``init_from_checkpoint`` and ``warm_start`` replay TF1 graph mode's recorded results.

``tests/fixtures/tf1/warm_start/warm_start.json`` (``tools/make_tf1_warm_start_fixtures.py``)
holds, per case, the graph's variables, the call, and what TF1 did: every variable's value
after ``global_variables_initializer()``, or the exception. Each case runs here on the same
checkpoint written by compatopt (always) and on TF1's own files (when a reader for them is
available), and a failing call must leave every variable as it was.
"""

import ast
import json
import os
import re
import shutil

import numpy as np
import pytest

import compatopt as co
from compatopt import errors
from compatopt.checkpoint import _npz as npz
from compatopt.checkpoint import _state_file as state_file

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "fixtures", "tf1", "warm_start")
with open(os.path.join(FIXTURES, "warm_start.json")) as _f:
    DATA = json.load(_f)
STEP = DATA["step"]
PREFIX = f"model.ckpt-{STEP}"

ERROR_TYPES = {"ValueError": ValueError, "TypeError": TypeError,
               "NotFoundError": errors.NotFoundError,
               "InvalidArgumentError": errors.InvalidArgumentError,
               "DataLossError": errors.DataLossError}

# Where compatopt deliberately differs from TF1: case -> what compatopt does instead.
# TF1 refuses an int64 tensor for an int32 variable at initializer run; compatopt loads it
# when the values fit (TF1's int64 global_step into compatopt's int32 step).
LOADS_ANYWAY = {"variable_dtype_int32_from_int64": {"gs": STEP}}


def write_compatopt_checkpoint(root):
    """The fixture's checkpoint in compatopt's format (values and dtypes as TF1 wrote them)."""
    os.makedirs(os.path.join(root, "tf1"))
    tensors = {k: np.asarray(e["values"], e["dtype"]).reshape(e["shape"])
               for k, e in DATA["checkpoint"].items()}
    prefix = os.path.join(root, "tf1", PREFIX)
    npz.write(prefix, tensors)
    state_file.write_state(os.path.join(root, "tf1"), prefix, [prefix])


def copy_tf_checkpoint(root):
    shutil.copytree(os.path.join(FIXTURES, "tf1"), os.path.join(root, "tf1"))
    try:
        co.train.NewCheckpointReader(os.path.join(root, "tf1", PREFIX))
    except ImportError:  # no reader for TensorFlow's format here
        pytest.skip("TensorFlow's checkpoint format is not readable here (no TensorFlow)")


@pytest.fixture(params=["compatopt", "tf1"])
def paths(request, tmp_path):
    root = str(tmp_path)
    if request.param == "compatopt":
        write_compatopt_checkpoint(root)
    else:
        copy_tf_checkpoint(root)
    os.makedirs(os.path.join(root, "empty"))
    return {"file": os.path.join(root, "tf1", PREFIX), "dir": os.path.join(root, "tf1"),
            "missing": os.path.join(root, "tf1", "no_such.ckpt"),
            "empty_dir": os.path.join(root, "empty")}


def init_value(spec):
    n = int(np.prod(spec["shape"], dtype=np.int64))
    return (-1.0 - np.arange(n) * 0.5).astype(spec["dtype"]).reshape(spec["shape"])


def build(specs):
    """The case's variables: ``{name: Variable or [parts]}`` (parts ``<name>/part_<i>``)."""
    made = {}
    for s in specs:
        whole = init_value(s)
        kw = dict(trainable=s["trainable"])
        if s["partitions"]:
            made[s["name"]] = [co.Variable(piece, name=f"{s['name']}/part_{i}", **kw)
                               for i, piece in enumerate(np.split(whole, s["partitions"]))]
        else:
            made[s["name"]] = co.Variable(whole, name=s["name"], **kw)
    return made


def target(t, made):
    if "name" in t:
        return t["name"]
    if "var" in t:
        return made[t["var"]]
    if "vars" in t:
        return list(made[t["vars"]])
    return t["raw"]


def values():
    return {v.op.name: np.array(v.numpy()) for v in co.global_variables()}


def assert_values(expected, got=None):
    got = values() if got is None else got
    assert sorted(got) == sorted(expected)
    for k, want in expected.items():
        want = np.asarray(want)
        np.testing.assert_array_equal(got[k], want.astype(got[k].dtype), err_msg=k)


def normalize(message):
    """A message with the checkpoint's ``{name: shape}`` map in a fixed order and TF's
    Variable class written as compatopt's."""
    message = message.replace(
        "<class 'tensorflow.python.ops.resource_variable_ops.ResourceVariable'>",
        "<class 'compatopt.train._variable.Variable'>")
    m = re.match(r"^(.* checkpoint )(\{.*\})$", message, re.S)
    if m:
        message = m.group(1) + repr(sorted(ast.literal_eval(m.group(2)).items()))
    return message


def expected_message(error, path_arg, paths):
    msg = error["message"].replace("{path}", path_arg)
    for k in ("dir", "empty_dir"):
        msg = msg.replace("{" + k + "}", paths[k])
    return normalize(msg)


def replay(case, name, call, paths):
    path_arg = paths[case.get("path", "file")]
    made = build(case["vars"])
    before = values()
    result = case["result"]
    if name in LOADS_ANYWAY:
        assert result["error"]["type"] == "InvalidArgumentError"  # what TF1 does
        call(path_arg, made)
        assert_values(LOADS_ANYWAY[name])
        return
    if "values" in result:
        call(path_arg, made)
        assert_values(result["values"])
        return
    err = result["error"]
    with pytest.raises(ERROR_TYPES[err["type"]]) as info:
        call(path_arg, made)
    assert normalize(str(info.value)) == expected_message(err, path_arg, paths)
    assert_values(before)  # a failed call assigns nothing (TF1 may have replaced some)


def ifc_call(case):
    def call(path, made):
        pairs = [(k, target(t, made)) for k, t in case["map"]]
        amap = pairs if case.get("form") == "pairs" else dict(pairs)
        co.train.init_from_checkpoint(path, amap)
    return call


@pytest.mark.parametrize("name", sorted(DATA["init_from_checkpoint"]))
def test_init_from_checkpoint_as_tf1(name, paths):
    case = DATA["init_from_checkpoint"][name]
    replay(case, name, ifc_call(case), paths)


def vtws(spec, made):
    if spec is None:
        return ".*"
    if "regex" in spec:
        return spec["regex"]
    if "regexes" in spec:
        return list(spec["regexes"])
    if "variables" in spec:
        return [made[n] for n in spec["variables"]]
    if "none" in spec:
        return None
    if "mixed" in spec:
        return [spec["mixed"][0], made[spec["mixed"][1]]]
    if "raw_tuple" in spec:
        return tuple(spec["raw_tuple"])
    return spec["raw"]


def ws_call(case):
    def call(path, made):
        kwargs = {}
        if case.get("prev") is not None:
            kwargs["var_name_to_prev_var_name"] = dict(case["prev"])
        co.train.warm_start(path, vtws(case["vtws"], made), **kwargs)
    return call


@pytest.mark.parametrize("name", sorted(DATA["warm_start"]))
def test_warm_start_as_tf1(name, paths):
    case = DATA["warm_start"][name]
    replay(case, name, ws_call(case), paths)


def test_tf1_replaced_some_initializers_before_raising():
    """The recorded TF1 behaviour the all-or-nothing rule improves on."""
    ifc = DATA["init_from_checkpoint"]["err_partial_failure"]["result"]
    assert ifc["values_after_error"]["new_scope/var1"][0][0] > 0  # loaded by TF1
    ws = DATA["warm_start"]["err_prev_var_name_unused"]["result"]
    assert ws["values_after_error"]["other/var3"][0] > 0


def test_failed_call_assigns_nothing(tmp_path):
    write_compatopt_checkpoint(str(tmp_path))
    prefix = str(tmp_path / "tf1" / PREFIX)
    a = co.Variable(np.zeros((2, 3), np.float32), name="a")
    b = co.Variable(np.zeros(3, np.float32), name="b")
    c = co.Variable(np.zeros(2, np.float32), name="c")
    cases = [
        {"old_scope/var1": a, "zzz": b},                      # missing tensor, sorted last
        {"old_scope/var1": "a", "old_scope/var2": "nope/b"},  # missing variable
        {"old_scope/var1": a, "root_var": b},                 # shape
        {"old_scope/var1": a, "dbl": c},                      # dtype
    ]
    for amap in cases:
        with pytest.raises((ValueError, errors.OpError)):
            co.train.init_from_checkpoint(prefix, amap)
        for v in (a, b, c):
            assert not np.any(v.numpy()), amap
    with pytest.raises(ValueError, match="not used"):
        co.train.warm_start(prefix, [a], var_name_to_prev_var_name={"a": "old_scope/var1",
                                                                    "x": "y"})
    assert not np.any(a.numpy())


def test_works_on_a_compatopt_saver_checkpoint(tmp_path):
    w = co.Variable(np.arange(6, dtype=np.float32).reshape(2, 3), name="model/dense/kernel")
    b = co.Variable(np.ones(3, np.float32), name="model/dense/bias")
    step = co.train.get_or_create_global_step()
    opt = co.train.AdamOptimizer(0.1)
    opt.minimize(lambda: (w.value.sum() + b.value.sum()) ** 2, global_step=step)
    saved = {v.op.name: v.numpy() for v in co.global_variables()}
    co.train.Saver().save(None, str(tmp_path / "model.ckpt"), global_step=step)

    co.reset_default_graph()
    k2 = co.Variable(np.zeros((2, 3), np.float32), name="new/dense/kernel")
    b2 = co.Variable(np.zeros(3, np.float32), name="new/dense/bias")
    co.train.init_from_checkpoint(str(tmp_path), {"model/": "new/"})  # a directory
    np.testing.assert_array_equal(k2.numpy(), saved["model/dense/kernel"])
    np.testing.assert_array_equal(b2.numpy(), saved["model/dense/bias"])

    co.reset_default_graph()
    k3 = co.Variable(np.zeros((2, 3), np.float32), name="model/dense/kernel")
    m3 = co.Variable(np.zeros((2, 3), np.float32), name="model/dense/kernel/Adam",
                     trainable=False)
    step3 = co.train.get_or_create_global_step()
    co.train.warm_start(str(tmp_path), ["model/dense/kernel", "global_step"])
    np.testing.assert_array_equal(k3.numpy(), saved["model/dense/kernel"])
    np.testing.assert_array_equal(m3.numpy(), saved["model/dense/kernel/Adam"])  # regex
    assert int(step3.numpy()) == 1


def test_vocab_info_is_not_implemented(tmp_path):
    write_compatopt_checkpoint(str(tmp_path))
    v = co.Variable(np.zeros(3, np.float32), name="old_scope/var2")
    with pytest.raises(NotImplementedError, match="var_name_to_vocab_info"):
        co.train.warm_start(str(tmp_path / "tf1"), var_name_to_vocab_info={"x": object()})
    assert not np.any(v.numpy())
    co.train.warm_start(str(tmp_path / "tf1"), "old_scope", var_name_to_vocab_info={})
    assert np.all(v.numpy() > 0)


def test_loaded_values_are_the_checkpoints_bits(tmp_path):
    write_compatopt_checkpoint(str(tmp_path))
    v = co.Variable(np.zeros((4, 2), np.float32), name="t")
    co.train.init_from_checkpoint(str(tmp_path / "tf1" / PREFIX), [("table", v)])
    want = np.asarray(DATA["checkpoint"]["table"]["values"], np.float32)
    assert v.dtype == np.float32
    np.testing.assert_array_equal(v.numpy(), want)


def test_int_tensor_that_does_not_fit_is_refused(tmp_path):
    prefix = str(tmp_path / "m")
    npz.write(prefix, {"big": np.asarray(2 ** 40, np.int64)})
    v = co.Variable(np.int32(3), name="small")
    with pytest.raises(errors.InvalidArgumentError, match="expected dtype int32"):
        co.train.init_from_checkpoint(prefix, {"big": v})
    assert int(v.numpy()) == 3


def test_partitioned_list_with_other_trailing_shapes_is_refused(tmp_path):
    write_compatopt_checkpoint(str(tmp_path))
    parts = [co.Variable(np.zeros((2, 2), np.float32), name="p/part_0"),
             co.Variable(np.zeros((2, 1), np.float32), name="p/part_1")]
    with pytest.raises(ValueError, match="Slices must all be from the same tensor"):
        co.train.init_from_checkpoint(str(tmp_path / "tf1"), {"part_src": parts})
    assert not any(np.any(p.numpy()) for p in parts)
