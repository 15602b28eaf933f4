"""Records TF1 graph mode's warm starts and checkpoint utilities for the warm-start tests.

Needs only TensorFlow 2.21 (not compatopt)::

    python tools/make_tf1_warm_start_fixtures.py [out_dir]

Writes into ``tests/fixtures/tf1/warm_start/`` (default):

* ``tf1/model.ckpt-7.index`` / ``.data-00000-of-00001`` and the ``checkpoint`` state file: a
  tiny checkpoint written by ``tf.compat.v1.train.Saver`` (graph mode, no ``.meta``);
* ``warm_start.json``:

  - ``checkpoint``: every entry of that checkpoint (dtype, shape, values), so that the tests
    can write the same checkpoint with compatopt and replay everything without TensorFlow;
  - ``init_from_checkpoint`` and ``warm_start``: per case the graph's variables (name,
    shape, dtype, trainable, partitions, initial values), the call, and what TF1 did: the
    value of every variable after ``global_variables_initializer`` (``"values"``) or the
    exception (type, message) and, where TF1 had already replaced some initializers when
    it raised, the values an initializer run gives afterwards (``"values_after_error"``);
  - ``reader``: ``NewCheckpointReader``'s maps, ``debug_string``, ``has_tensor`` and its
    errors;
  - ``utils``: ``update_checkpoint_state``'s state files, ``remove_checkpoint``'s and
    ``get_checkpoint_mtimes``'s results.

Paths inside messages are written as ``{path}`` (the checkpoint argument as passed) and
``{dir}`` (a temporary directory).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import tensorflow as tf

v1 = tf.compat.v1
v1.disable_eager_execution()

HERE = os.path.dirname(os.path.abspath(__file__))
STEP = 7

# The checkpoint: name -> (dtype, shape). Values: _values(name, ...).
CHECKPOINT = {
    "old_scope/var1": ("float32", [2, 3]),
    "old_scope/var2": ("float32", [3]),
    "old_scope/acc": ("float32", [3]),
    "other/var3": ("float32", [4]),
    "root_var": ("float32", [2]),
    "part_src": ("float32", [4, 2]),
    "table": ("float32", [4, 2]),
    "dbl": ("float64", [2]),
    "global_step": ("int64", []),
}


def _values(name: str, dtype: str, shape: list, offset: float) -> np.ndarray:
    n = int(np.prod(shape, dtype=np.int64))
    base = (sum(map(ord, name)) % 17) + offset
    if dtype == "int64":
        return np.asarray(STEP, np.int64).reshape(shape)
    return (base + np.arange(n) * 0.25).astype(dtype).reshape(shape)


def ckpt_values() -> dict:
    return {k: _values(k, d, s, 1.0) for k, (d, s) in CHECKPOINT.items()}


def V(name, shape, dtype="float32", trainable=True, partitions=None):
    """A graph variable of a case; initial values are negative, checkpoint values positive."""
    return {"name": name, "shape": shape, "dtype": dtype, "trainable": trainable,
            "partitions": partitions}


S1, S2 = V("new_scope/var1", [2, 3]), V("new_scope/var2", [3])
KEEP = V("keep/var3", [4])

# Targets: {"name": str} (a variable or scope name), {"var": name} (the Variable object),
# {"vars": name} (the list of a partitioned variable's parts), {"raw": value}.
# "map" is a list of pairs; "form": "dict" passes dict(map), "pairs" the list itself.
IFC_CASES = {
    "scope_to_scope": dict(vars=[S1, S2, KEEP], map=[["old_scope/", {"name": "new_scope/"}]]),
    "name_to_name": dict(vars=[S1, S2, KEEP], map=[
        ["old_scope/var1", {"name": "new_scope/var1"}], ["other/var3", {"name": "keep/var3"}]]),
    "name_to_variable": dict(vars=[S1, S2, KEEP], map=[
        ["old_scope/var2", {"var": "new_scope/var2"}], ["other/var3", {"var": "keep/var3"}]]),
    "root_to_scope": dict(vars=[V("new_root/root_var", [2]), V("new_root/old_scope/var1", [2, 3]),
                                KEEP], map=[["/", {"name": "new_root/"}]]),
    "root_to_root": dict(vars=[V("root_var", [2]), V("old_scope/var1", [2, 3]),
                               V("other/var3", [4])], map=[["/", {"name": "/"}]]),
    "scope_to_nested_scope": dict(vars=[V("a/b/var1", [2, 3]), V("a/b/var2", [3]),
                                        V("a/var2", [3])], map=[["old_scope/", {"name": "a/b/"}]]),
    "scope_ckpt_to_root_vars": dict(vars=[V("var1", [2, 3]), V("var2", [3])],
                                    map=[["old_scope/", {"name": "/"}]]),
    "pairs_same_tensor_twice": dict(form="pairs", vars=[V("a/x", [3]), V("b/x", [3]), KEEP],
                                    map=[["old_scope/var2", {"name": "a/x"}],
                                         ["old_scope/var2", {"var": "b/x"}]]),
    "directory": dict(path="dir", vars=[S1, S2], map=[["old_scope/", {"name": "new_scope/"}]]),
    "partitioned_by_name": dict(vars=[V("part", [4, 2], partitions=2), KEEP],
                                map=[["part_src", {"name": "part"}]]),
    "partitioned_by_list": dict(vars=[V("part", [4, 2], partitions=2), KEEP],
                                map=[["part_src", {"vars": "part"}]]),
    "partitioned_in_scope": dict(vars=[V("p/table", [4, 2], partitions=2), V("p/root_var", [2])],
                                 map=[["/", {"name": "p/"}]]),
    # TF1 cuts a scope's variable names at the first "/part_", also inside "part_src"
    "err_scope_name_with_part_": dict(vars=[V("p/part_src", [4, 2]), V("p/root_var", [2])],
                                      map=[["/", {"name": "p/"}]]),
    "scope_with_no_variables": dict(vars=[S1], map=[["old_scope/", {"name": "empty_scope/"}]]),
    "variable_dtype_int32_from_int64": dict(vars=[V("gs", [], "int32", trainable=False)],
                                            map=[["global_step", {"name": "gs"}]]),
    # errors
    "err_tensor_missing": dict(vars=[S1, S2], map=[["old_scope/nope", {"name": "new_scope/var1"}]]),
    "err_tensor_missing_variable_form": dict(vars=[S1, S2],
                                             map=[["old_scope/nope", {"var": "new_scope/var1"}]]),
    "err_variable_missing": dict(vars=[S1, S2],
                                 map=[["old_scope/var1", {"name": "new_scope/nope"}]]),
    "err_variable_missing_no_scope": dict(vars=[S1, S2], map=[["old_scope/var1", {"name": "nope"}]]),
    "err_scope_tensor_missing": dict(vars=[S1, S2, V("new_scope/extra", [2])],
                                     map=[["old_scope/", {"name": "new_scope/"}]]),
    "err_scope_value_without_slash": dict(vars=[S1, S2], map=[["old_scope/", {"name": "new_scope"}]]),
    "err_shape_mismatch": dict(vars=[S1, S2], map=[["old_scope/var1", {"name": "new_scope/var2"}]]),
    "err_shape_mismatch_variable_form": dict(vars=[S1, S2],
                                             map=[["old_scope/var2", {"var": "new_scope/var1"}]]),
    "err_dtype_mismatch": dict(vars=[V("f", [2])], map=[["dbl", {"name": "f"}]]),
    "err_dtype_mismatch_float_to_int": dict(vars=[V("i", [2], "int32")],
                                            map=[["root_var", {"name": "i"}]]),
    "err_partitioned_shape_mismatch": dict(vars=[V("part", [2, 4], partitions=2)],
                                           map=[["part_src", {"name": "part"}]]),
    "err_partial_failure": dict(vars=[S1, S2], map=[
        ["old_scope/var1", {"name": "new_scope/var1"}], ["zzz/missing", {"name": "new_scope/var2"}]]),
    "err_path_missing": dict(path="missing", vars=[S1], map=[["old_scope/", {"name": "new_scope/"}]]),
    "err_empty_directory": dict(path="empty_dir", vars=[S1],
                                map=[["old_scope/", {"name": "new_scope/"}]]),
    "err_bad_target_type": dict(vars=[S1], map=[["old_scope/var1", {"raw": 3}]]),
}

W_VARS = [V("old_scope/var1", [2, 3]), V("old_scope/var2", [3]), V("other/var3", [4]),
          V("old_scope/acc", [3], trainable=False), V("global_step", [], "int64", trainable=False)]

# vars_to_warm_start: {"regex": str} / {"regexes": [str]} / {"variables": [names]} /
# {"none": true} / {"raw": value}; prev: var_name_to_prev_var_name.
WS_CASES = {
    "default": dict(vars=W_VARS, vtws=None),
    "regex": dict(vars=W_VARS, vtws={"regex": "old_scope"}),
    "regex_anchored_at_start": dict(vars=W_VARS, vtws={"regex": "var"}),
    "regex_search_like": dict(vars=W_VARS, vtws={"regex": ".*var2"}),
    "regex_matches_nontrainable_name": dict(vars=W_VARS, vtws={"regex": "old_scope/acc"}),
    "regex_list": dict(vars=W_VARS, vtws={"regexes": ["old_scope/acc", "other"]}),
    "name_list": dict(vars=W_VARS, vtws={"regexes": ["old_scope/var1", "global_step"]}),
    "variable_list": dict(vars=W_VARS, vtws={"variables": ["old_scope/var2", "old_scope/acc"]}),
    "none": dict(vars=W_VARS, vtws={"none": True}),
    "err_overlapping_regexes": dict(vars=W_VARS, vtws={"regexes": ["old_scope", "old_scope/var1"]}),
    "err_variable_listed_twice": dict(vars=W_VARS,
                                      vtws={"variables": ["old_scope/var2", "old_scope/var2"]}),
    "empty_list": dict(vars=W_VARS, vtws={"regexes": []}),
    "empty_string": dict(vars=W_VARS, vtws={"regex": ""}),
    "prev_var_name": dict(vars=[V("renamed/w", [2, 3]), V("other/var3", [4])], vtws=None,
                          prev={"renamed/w": "old_scope/var1"}),
    "prev_var_name_same_tensor_twice": dict(
        vars=[V("a/w", [3]), V("b/w", [3]), V("other/var3", [4])], vtws=None,
        prev={"a/w": "old_scope/var2", "b/w": "old_scope/var2"}),
    "prev_var_name_not_warm_started": dict(vars=[V("renamed/w", [2, 3]), V("other/var3", [4])],
                                           vtws={"regex": "other"},
                                           prev={"renamed/w": "old_scope/var1"}),
    "partitioned": dict(vars=[V("part_src", [4, 2], partitions=2), V("root_var", [2])], vtws=None),
    "partitioned_prev_name": dict(vars=[V("p", [4, 2], partitions=2)], vtws=None,
                                  prev={"p": "part_src"}),
    "directory": dict(path="dir", vars=W_VARS, vtws={"regex": "old_scope"}),
    # errors
    "err_prev_var_name_unused": dict(vars=W_VARS, vtws={"regex": "other"},
                                     prev={"nope/w": "old_scope/var1"}),
    "err_tensor_missing": dict(vars=W_VARS + [V("new/extra", [2])], vtws=None),
    "err_shape_mismatch": dict(vars=[V("old_scope/var1", [3, 2])], vtws=None),
    "err_mixed_list": dict(vars=W_VARS, vtws={"mixed": ["old_scope/var1", "other/var3"]}),
    "err_tuple": dict(vars=W_VARS, vtws={"raw_tuple": ["old_scope"]}),
    "err_int": dict(vars=W_VARS, vtws={"raw": 3}),
    "err_path_missing": dict(path="missing", vars=W_VARS, vtws={"regex": "other"}),
}


def _init_value(spec: dict) -> np.ndarray:
    n = int(np.prod(spec["shape"], dtype=np.int64))
    return (-1.0 - np.arange(n) * 0.5).astype(spec["dtype"]).reshape(spec["shape"])


def _paths(root: str) -> dict:
    return {"file": os.path.join(root, "tf1", f"model.ckpt-{STEP}"), "dir": os.path.join(root, "tf1"),
            "missing": os.path.join(root, "tf1", "no_such.ckpt"),
            "empty_dir": os.path.join(root, "empty")}


def _build(specs: list) -> dict:
    """``{name: variable or PartitionedVariable}`` made with ``get_variable`` (the store)."""
    out = {}
    for s in specs:
        part = v1.fixed_size_partitioner(s["partitions"]) if s["partitions"] else None

        def init(shape, dtype=None, partition_info=None, whole=_init_value(s)):
            if partition_info is None:
                return tf.constant(whole)
            start = partition_info.var_offset[0]
            return tf.constant(whole[start:start + shape[0]])

        out[s["name"]] = v1.get_variable(
            s["name"], shape=s["shape"], dtype=tf.as_dtype(s["dtype"]),
            initializer=init, partitioner=part,
            trainable=s["trainable"], use_resource=True)
    return out


def _target(t: dict, made: dict):
    if "name" in t:
        return t["name"]
    if "var" in t:
        return made[t["var"]]
    if "vars" in t:
        return list(made[t["vars"]])
    return t["raw"]


def _state(sess) -> dict:
    return {v.op.name: np.asarray(sess.run(v)).tolist() for v in v1.global_variables()}


def _error(e: BaseException, paths: dict, path_arg: str) -> dict:
    msg = str(e)
    if msg.startswith("Graph execution error"):  # the kernel's message: the line after "Node:"
        lines = msg.splitlines()
        msg = next(lines[i + 1] for i, line in enumerate(lines) if line.startswith("Node: "))
    msg = msg.replace(path_arg, "{path}")
    for k in ("dir", "empty_dir"):
        msg = msg.replace(paths[k], "{" + k + "}")
    return {"type": type(e).__name__, "module": type(e).__module__, "message": msg}


def _run_case(case: dict, call, paths: dict) -> dict:
    path_arg = paths[case.get("path", "file")]
    out = {}
    graph = tf.Graph()
    with graph.as_default():
        made = _build(case["vars"])
        raised = None
        try:
            call(path_arg, made)
        except Exception as e:  # noqa: BLE001
            raised = e
            out["error"] = _error(e, paths, path_arg)
        with v1.Session() as sess:
            try:
                sess.run(v1.global_variables_initializer())
            except tf.errors.OpError as e:
                assert raised is None
                out["error"] = _error(e, paths, path_arg)
                out["error"]["when"] = "initializer run"
                return out
            values = _state(sess)
    if raised is None:
        out["values"] = values
    else:
        out["error"]["when"] = "call"
        initial = {}
        for s in case["vars"]:
            whole = _init_value(s)
            if s["partitions"]:
                for i, piece in enumerate(np.split(whole, s["partitions"], axis=0)):
                    initial[f"{s['name']}/part_{i}"] = piece.tolist()
            else:
                initial[s["name"]] = whole.tolist()
        if values != initial:
            out["values_after_error"] = values
    return out


def record_ifc(paths: dict) -> dict:
    out = {}
    for name, case in IFC_CASES.items():
        def call(path, made, case=case):
            pairs = [(k, _target(t, made)) for k, t in case["map"]]
            amap = pairs if case.get("form") == "pairs" else dict(pairs)
            v1.train.init_from_checkpoint(path, amap)
        out[name] = dict(case, result=_run_case(case, call, paths))
    return out


def _vtws(spec, made):
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


def record_ws(paths: dict) -> dict:
    out = {}
    for name, case in WS_CASES.items():
        def call(path, made, case=case):
            kwargs = {}
            if case.get("prev") is not None:
                kwargs["var_name_to_prev_var_name"] = dict(case["prev"])
            v1.train.warm_start(path, _vtws(case["vtws"], made), **kwargs)
        out[name] = dict(case, result=_run_case(case, call, paths))
    return out


def write_checkpoint(root: str) -> None:
    values = ckpt_values()
    graph = tf.Graph()
    with graph.as_default():
        variables = [v1.get_variable(k, initializer=tf.constant(v), use_resource=True)
                     for k, v in values.items()]
        saver = v1.train.Saver(variables)
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            cwd = os.getcwd()
            os.chdir(root)
            try:  # relative save path: the state file holds relative paths
                saver.save(sess, "tf1/model.ckpt", global_step=STEP, write_meta_graph=False)
            finally:
                os.chdir(cwd)


def record_reader(paths: dict) -> dict:
    reader = v1.train.NewCheckpointReader(paths["file"])
    out = {
        "shape_map": {k: list(v) for k, v in sorted(reader.get_variable_to_shape_map().items())},
        "dtype_map": {k: v.name for k, v in sorted(reader.get_variable_to_dtype_map().items())},
        "debug_string": reader.debug_string().decode(),
        "has_tensor": {k: bool(reader.has_tensor(k)) for k in ("root_var", "nope", "root_var:0")},
        "get_tensor_int64_dtype": str(reader.get_tensor("global_step").dtype),
        "list_variables": [[k, list(s)] for k, s in tf.train.list_variables(paths["file"])],
    }
    errs = {}
    for case, fn in {
        "get_tensor_missing": lambda: reader.get_tensor("nope"),
        "open_missing": lambda: v1.train.NewCheckpointReader(paths["missing"]),
        "open_directory": lambda: v1.train.NewCheckpointReader(paths["dir"]),
        "load_checkpoint_empty_dir": lambda: tf.train.load_checkpoint(paths["empty_dir"]),
    }.items():
        try:
            fn()
            errs[case] = None
        except Exception as e:  # noqa: BLE001
            arg = paths["missing"] if "missing" in case else paths["file"]
            errs[case] = _error(e, paths, arg)
    out["errors"] = errs
    return out


def record_utils() -> dict:
    out = {}
    with tempfile.TemporaryDirectory() as d:
        cwd = os.getcwd()
        os.chdir(d)
        try:
            os.makedirs("run")
            states = {}
            calls = {
                "relative": dict(save_dir="run", model_checkpoint_path="run/model.ckpt-2",
                                 all_model_checkpoint_paths=["run/model.ckpt-1"]),
                "relative_bare_names": dict(save_dir="run", model_checkpoint_path="model.ckpt-2",
                                            all_model_checkpoint_paths=["model.ckpt-1",
                                                                        "model.ckpt-2"]),
                "absolute": dict(save_dir=os.path.join(d, "run"),
                                 model_checkpoint_path=os.path.join(d, "run", "model.ckpt-2"),
                                 all_model_checkpoint_paths=[os.path.join(d, "run",
                                                                          "model.ckpt-1")]),
                "timestamps": dict(save_dir="run", model_checkpoint_path="run/model.ckpt-2",
                                   all_model_checkpoint_paths=["run/model.ckpt-1",
                                                               "run/model.ckpt-2"],
                                   all_model_checkpoint_timestamps=[1700000000.5, 1700000100.25],
                                   last_preserved_timestamp=1699999999.0),
                "latest_filename": dict(save_dir="run", model_checkpoint_path="run/m-3",
                                        latest_filename="other_state"),
            }
            for name, kw in calls.items():
                v1.train.update_checkpoint_state(**copy.deepcopy(kw))  # TF edits the list
                fname = kw.get("latest_filename") or "checkpoint"
                with open(os.path.join("run", fname)) as f:
                    states[name] = {"args": kw, "text": f.read().replace(d, "{dir}")}
                state = tf.train.get_checkpoint_state("run", kw.get("latest_filename"))
                states[name]["read_back"] = {
                    "model_checkpoint_path": state.model_checkpoint_path.replace(d, "{dir}"),
                    "all_model_checkpoint_paths": [p.replace(d, "{dir}")
                                                   for p in state.all_model_checkpoint_paths]}
            for name in calls:
                for key in ("save_dir", "model_checkpoint_path"):
                    calls[name][key] = calls[name][key].replace(d, "{dir}")
                calls[name]["all_model_checkpoint_paths"] = [
                    p.replace(d, "{dir}") for p in calls[name].get("all_model_checkpoint_paths")
                    or []] or None
            errs = {}
            for name, kw in {
                "conflict": dict(save_dir=os.path.join(d, "run"),
                                 model_checkpoint_path=os.path.join(d, "run", "checkpoint")),
                "conflict_latest_filename": dict(
                    save_dir=os.path.join(d, "run"), latest_filename="state",
                    model_checkpoint_path=os.path.join(d, "run", "state")),
                "no_conflict_relative": dict(save_dir="run", model_checkpoint_path="run/checkpoint"),
                "timestamps_length": dict(save_dir="run", model_checkpoint_path="run/m-2",
                                          all_model_checkpoint_paths=["run/m-1"],
                                          all_model_checkpoint_timestamps=[1.0]),
            }.items():
                rec = {k: (v.replace(d, "{dir}") if isinstance(v, str) else v)
                       for k, v in kw.items()}
                try:
                    v1.train.update_checkpoint_state(**copy.deepcopy(kw))
                    errs[name] = {"args": rec, "type": None}
                except Exception as e:  # noqa: BLE001
                    errs[name] = {"args": rec, "type": type(e).__name__,
                                  "message": str(e).replace(d, "{dir}")}
            out["update_checkpoint_state"] = states
            out["update_checkpoint_state_errors"] = errs

            # remove_checkpoint: which files of a checkpoint directory remain
            removed = {}
            for name, kw in {"v2": {}, "v1": {"checkpoint_format_version": 1},
                             "suffix": {"meta_graph_suffix": "mg"}}.items():
                shutil.rmtree("rm", ignore_errors=True)
                os.makedirs("rm")
                files = ["model.ckpt-5.index", "model.ckpt-5.data-00000-of-00001",
                         "model.ckpt-5.data-00000-of-00002", "model.ckpt-5.data-00001-of-00002",
                         "model.ckpt-5.meta", "model.ckpt-5.mg", "model.ckpt-5", "model.ckpt-50.index",
                         "model.ckpt-5.npz", "checkpoint"]
                for fn in files:
                    open(os.path.join("rm", fn), "w").close()
                v1.train.remove_checkpoint("rm/model.ckpt-5", **kw)
                removed[name] = {"args": kw, "before": sorted(files),
                                 "after": sorted(os.listdir("rm"))}
            v1.train.remove_checkpoint("rm/never_existed")  # no error
            out["remove_checkpoint"] = removed

            # get_checkpoint_mtimes: V2 index first, else the V1 file; missing ones skipped
            os.makedirs("mt")
            for fn, stamp in (("a.index", 1000.0), ("b", 2000.0), ("c.index", 3000.0),
                              ("c", 4000.0)):
                open(os.path.join("mt", fn), "w").close()
                os.utime(os.path.join("mt", fn), (stamp, stamp))
            out["get_checkpoint_mtimes"] = {
                "files": {"a.index": 1000.0, "b": 2000.0, "c.index": 3000.0, "c": 4000.0},
                "prefixes": ["a", "b", "missing", "c"],
                "mtimes": v1.train.get_checkpoint_mtimes(
                    [os.path.join("mt", p) for p in ("a", "b", "missing", "c")])}
        finally:
            os.chdir(cwd)
    return out


def main(out_dir: str) -> None:
    shutil.rmtree(os.path.join(out_dir, "tf1"), ignore_errors=True)
    os.makedirs(os.path.join(out_dir, "tf1"))
    write_checkpoint(out_dir)
    scratch = tempfile.mkdtemp()
    try:
        # the cases read a copy, so that the messages name a path we can replace
        shutil.copytree(os.path.join(out_dir, "tf1"), os.path.join(scratch, "tf1"))
        os.makedirs(os.path.join(scratch, "empty"))
        paths = _paths(scratch)
        data = {
            "tensorflow": tf.__version__,
            "step": STEP,
            "checkpoint": {k: {"dtype": d, "shape": s, "values": ckpt_values()[k].tolist()}
                           for k, (d, s) in CHECKPOINT.items()},
            "init_from_checkpoint": record_ifc(paths),
            "warm_start": record_ws(paths),
            "reader": record_reader(paths),
            "utils": record_utils(),
            "recorded_at": time.strftime("%Y-%m-%d"),
        }
    finally:
        shutil.rmtree(scratch)
    with open(os.path.join(out_dir, "warm_start.json"), "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else
         os.path.join(HERE, "..", "tests", "fixtures", "tf1", "warm_start"))
