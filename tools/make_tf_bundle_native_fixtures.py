"""Records TensorFlow checkpoints that exercise the native bundle reader's less common paths.

Needs TensorFlow 2.21 (compatopt is not needed)::

    python tools/make_tf_bundle_native_fixtures.py [out_dir]

Writes into ``tests/fixtures/tf1/bundle_native/`` (default):

* ``sharded/model.ckpt-3``: ``tf.compat.v1.train.Saver(sharded=True)`` over variables on
  two CPU devices: two data files (``.data-00000-of-00002``, ``.data-00001-of-00002``);
* ``partitioned/model.ckpt``: a variable split by ``fixed_size_partitioner`` (3 parts on
  axis 0) and one split on axis 1, saved as TF1 saves partitioned variables (a full entry
  with ``slices``, plus one hidden entry per slice);
* ``misc/model.ckpt``: string tensors (scalar, vector with an empty and a non-ASCII
  element), an empty float tensor, uint8/int8/int16/uint16/uint32/uint64/complex64/
  complex128 variables;
* ``object/ckpt-1``: a TF2 object-based checkpoint (``tf.train.Checkpoint``);
* ``reference.npz``: the value of every entry as TensorFlow's reader returns it
  (``<dir>/<name>``; bfloat16 as uint16 bits, strings as an object array of bytes is not
  storable, so string tensors are stored as ``<dir>/<name>`` = the bytes joined by
  ``\\x00`` and ``<dir>/<name>.lengths``);
* ``names.json``: per checkpoint ``{name: {"shape": [...], "dtype": "..."}}`` from
  ``tf.train.load_checkpoint``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import numpy as np
import tensorflow as tf

v1 = tf.compat.v1
HERE = os.path.dirname(os.path.abspath(__file__))


def _save_graph(out_dir: str, sub: str, build, step=None, sharded=False, config=None):
    os.makedirs(os.path.join(out_dir, sub))
    graph = tf.Graph()
    with graph.as_default():
        build()
        saver = v1.train.Saver(sharded=sharded)
        with v1.Session(config=config) as sess:
            sess.run(v1.global_variables_initializer())
            cwd = os.getcwd()
            os.chdir(os.path.join(out_dir, sub))
            try:
                return os.path.join(out_dir, sub, saver.save(
                    sess, "model.ckpt", global_step=step, write_meta_graph=False))
            finally:
                os.chdir(cwd)


def build_sharded():
    rs = np.random.RandomState(1)
    with tf.device("/cpu:0"):
        v1.Variable(rs.standard_normal((4, 3)).astype(np.float32), name="a/kernel")
        v1.Variable(np.int64(3), name="global_step", trainable=False)
    with tf.device("/cpu:1"):
        v1.Variable(rs.standard_normal((5,)).astype(np.float64), name="b/bias")
        v1.Variable(rs.standard_normal((2, 2)).astype(np.float32), name="b/kernel")


def build_partitioned():
    rs = np.random.RandomState(2)
    for name, shape, axis, parts in (("emb", (10, 4), 0, 3), ("wide", (2, 7), 1, 2)):
        v1.get_variable(name, shape=shape, dtype=tf.float32,
                        initializer=v1.random_normal_initializer(seed=len(name)),
                        partitioner=v1.fixed_size_partitioner(parts, axis=axis))
    v1.Variable(rs.standard_normal((3,)).astype(np.float32), name="plain")


def build_misc():
    rs = np.random.RandomState(3)
    v1.Variable(b"hello", name="s_scalar")
    v1.Variable([b"a", b"", "\u00e9t\u00e9".encode(), b"x" * 200], name="s_vec")
    v1.Variable(np.zeros((0, 3), np.float32), name="empty")
    for dt in ("uint8", "int8", "int16", "uint16", "uint32", "uint64"):
        v1.Variable(rs.randint(0, 100, size=(3,)).astype(dt), name=f"i/{dt}")
    v1.Variable((rs.standard_normal(3) + 1j * rs.standard_normal(3)).astype(np.complex64),
                name="c/c64")
    v1.Variable((rs.standard_normal(2) + 1j * rs.standard_normal(2)).astype(np.complex128),
                name="c/c128")


def record(prefix: str, tag: str, ref: dict) -> dict:
    reader = tf.train.load_checkpoint(prefix)
    dtypes = reader.get_variable_to_dtype_map()
    out = {}
    for name, shape in sorted(reader.get_variable_to_shape_map().items()):
        out[name] = {"shape": list(shape), "dtype": dtypes[name].name}
        value = reader.get_tensor(name)
        if dtypes[name] == tf.string:
            flat = [bytes(x) for x in np.asarray(value, object).reshape(-1)]
            ref[f"{tag}/{name}"] = np.frombuffer(b"".join(flat), np.uint8)
            ref[f"{tag}/{name}.lengths"] = np.asarray([len(x) for x in flat], np.int64)
        elif dtypes[name] == tf.bfloat16:
            ref[f"{tag}/{name}"] = np.asarray(value).view(np.uint16)
        else:
            ref[f"{tag}/{name}"] = np.asarray(value)
    return out


def main(out_dir: str) -> None:
    shutil.rmtree(out_dir, ignore_errors=True)
    os.makedirs(out_dir)
    ref, names = {}, {}
    prefixes = {}
    os.makedirs(os.path.join(out_dir, "object"))
    kernel = tf.Variable(np.arange(6, dtype=np.float32).reshape(2, 3))
    cwd = os.getcwd()
    os.chdir(os.path.join(out_dir, "object"))
    try:
        prefixes["object"] = os.path.join(out_dir, "object", tf.train.Checkpoint(
            model=tf.train.Checkpoint(kernel=kernel)).save("ckpt"))
    finally:
        os.chdir(cwd)
    v1.disable_eager_execution()  # the rest is TF1 graph mode
    two_cpus = v1.ConfigProto(device_count={"CPU": 2})
    prefixes.update({
        "sharded": _save_graph(out_dir, "sharded", build_sharded, step=3, sharded=True,
                               config=two_cpus),
        "partitioned": _save_graph(out_dir, "partitioned", build_partitioned),
        "misc": _save_graph(out_dir, "misc", build_misc),
    })
    for tag, prefix in prefixes.items():
        names[tag] = {"prefix": os.path.relpath(prefix, out_dir),
                      "entries": record(prefix, tag, ref)}
    np.savez(os.path.join(out_dir, "reference.npz"), **ref)
    with open(os.path.join(out_dir, "names.json"), "w") as f:
        json.dump(names, f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else
         os.path.join(HERE, "..", "tests", "fixtures", "tf1", "bundle_native"))
