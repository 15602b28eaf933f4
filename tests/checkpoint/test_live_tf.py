"""Live TensorFlow: checkpoints written by ``tf.compat.v1.train.Saver`` read through
TensorFlow's own reader. Skipped cleanly when ``import tensorflow`` fails (CI has no TF).

* the committed TF1 checkpoints restore directly (no conversion) and resume bit-exactly;
* ``convert_tf1_checkpoint`` reproduces the committed converted files bit for bit;
* a fresh TF1 graph-mode training (50 steps, save, 50 more) against compatopt restoring
  the TF checkpoint it just wrote and applying TF's gradients: equal bit for bit;
* damaged or incomplete TF checkpoints raise compatopt's error types and change nothing;
* TF2 object-based checkpoints list and restore through ``var_list`` dicts.
"""

import os
import shutil

import numpy as np
import pytest

import compatopt as co
from compatopt import errors
from compatopt.train import saver as S

from .ckpt_helpers import assert_unchanged, import_tf, snapshot
from .ckpt_problem import CONFIGS, DTYPE_STEP, FIXTURES, STEPS_AFTER, STEPS_BEFORE, VARS
from .test_resume_tf1 import NAMES, REF, build, check_step100

tf = import_tf()  # skips the module without TensorFlow
v1 = tf.compat.v1


def tf1_ckpt(cfg):
    step = DTYPE_STEP if cfg == "dtypes" else STEPS_BEFORE
    return os.path.join(FIXTURES, cfg, "tf1", f"model.ckpt-{step}")


def test_list_variables_matches_tensorflow():
    for cfg in list(CONFIGS) + ["dtypes"]:
        want = [(n, list(s)) for n, s in tf.train.list_variables(tf1_ckpt(cfg))]
        assert S.list_variables(tf1_ckpt(cfg)) == want
        assert S.list_variables(os.path.dirname(tf1_ckpt(cfg))) == want  # a directory
        assert S.latest_checkpoint(os.path.dirname(tf1_ckpt(cfg))) == tf1_ckpt(cfg)
        assert want == [(n, NAMES[cfg][n]["shape"]) for n in sorted(NAMES[cfg])]


@pytest.mark.parametrize("cfg", sorted(CONFIGS))
def test_restore_tf1_checkpoint_directly_and_resume(cfg):
    params, step, opt = build(cfg)
    S.Saver().restore(None, tf1_ckpt(cfg))
    for v in co.global_variables():
        np.testing.assert_array_equal(v.numpy(), REF[f"{cfg}/step50/{v.op.name}"])
    for i in range(STEPS_AFTER):
        opt.apply_gradients([(REF[f"{cfg}/grads/{n}"][i], params[n]) for n in VARS],
                            global_step=step)
    check_step100(cfg, params, opt, step)


def test_converter_reproduces_committed_files(tmp_path):
    for cfg in list(CONFIGS) + ["dtypes"]:
        dst = S.convert_tf1_checkpoint(os.path.dirname(tf1_ckpt(cfg)), str(tmp_path / cfg))
        committed = S.load_checkpoint(os.path.join(
            FIXTURES, cfg, "converted", os.path.basename(tf1_ckpt(cfg))))
        fresh = S.load_checkpoint(dst)
        assert fresh.specs() == committed.specs()
        for name in committed.specs():
            assert fresh.get_tensor(name).tobytes() == committed.get_tensor(name).tobytes()
    with pytest.raises(ValueError, match="name_map maps two"):
        S.convert_tf1_checkpoint(tf1_ckpt("adam"), str(tmp_path / "x"), name_map=lambda n: "a")


def _tf1_train(save_dir, kind, kwargs, x, y, init, steps_before, steps_after):
    """TF1 graph-mode training with a Saver; returns grads after the save and the end."""
    out = {"grads": [], "end": None}
    with tf.Graph().as_default():
        gs = v1.train.get_or_create_global_step()
        w = v1.get_variable("w", initializer=init["w"], use_resource=False)
        b = v1.get_variable("b", initializer=init["b"], use_resource=False)
        loss = tf.reduce_mean(tf.square(tf.tanh(tf.matmul(x, w)) + b - y))
        grads = tf.gradients(loss, [w, b])
        feeds = [v1.placeholder(tf.float32, v.shape) for v in (w, b)]
        opt = getattr(v1.train, kind + "Optimizer")(**kwargs)
        train = opt.apply_gradients(list(zip(feeds, [w, b])), global_step=gs)
        saver = v1.train.Saver()
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            for i in range(steps_before + steps_after):
                if i == steps_before:
                    out["path"] = saver.save(sess, os.path.join(save_dir, "model.ckpt"),
                                             global_step=gs, write_meta_graph=False)
                g = sess.run(grads)
                if i >= steps_before:
                    out["grads"].append(g)
                sess.run(train, feed_dict=dict(zip(feeds, g)))
            out["end"] = sess.run({v.op.name: v for v in v1.global_variables()})
    return out


@pytest.mark.parametrize("kind,kwargs", [
    ("Adam", {"learning_rate": 0.02, "beta1": 0.8, "epsilon": 1e-6}),
    ("RMSProp", {"learning_rate": 0.01, "momentum": 0.9}),
])
def test_fresh_tf1_training_resumes_bit_exactly(tmp_path, kind, kwargs):
    rs = np.random.RandomState(5)
    x, y = rs.randn(16, 6).astype(np.float32), rs.randn(16, 3).astype(np.float32)
    init = {"w": rs.randn(6, 3).astype(np.float32), "b": rs.randn(3).astype(np.float32)}
    ref = _tf1_train(str(tmp_path), kind, kwargs, x, y, init, 20, 20)

    w = co.Variable(init["w"], name="w")
    b = co.Variable(init["b"], name="b")
    step = co.train.get_or_create_global_step()
    opt = getattr(co.train, kind + "Optimizer")(**kwargs)
    S.create_slots(opt, [w, b])
    S.Saver().restore(None, S.latest_checkpoint(str(tmp_path)))
    assert int(step.numpy()) == 20
    for gw, gb in ref["grads"]:
        opt.apply_gradients([(gw, w), (gb, b)], global_step=step)
    got = {v.op.name: v.numpy() for v in co.global_variables()}
    assert sorted(got) == sorted(ref["end"])
    for name, want in ref["end"].items():
        np.testing.assert_array_equal(got[name], want, err_msg=name)


def _damaged_copy(tmp_path, how):
    d = tmp_path / "tf1"
    shutil.copytree(os.path.dirname(tf1_ckpt("adam")), d)
    prefix = str(d / os.path.basename(tf1_ckpt("adam")))
    data = prefix + ".data-00000-of-00001"
    if how == "truncated data":
        with open(data, "r+b") as f:
            f.truncate(os.path.getsize(data) // 2)
    elif how == "flipped data":
        with open(data, "r+b") as f:
            raw = bytearray(f.read())
            raw[len(raw) // 2] ^= 0x10
            f.seek(0)
            f.write(raw)
    elif how == "truncated index":
        with open(prefix + ".index", "r+b") as f:
            f.truncate(40)
    elif how == "missing data":
        os.remove(data)
    return prefix


@pytest.mark.parametrize("how,exc", [
    ("truncated data", errors.DataLossError), ("flipped data", errors.DataLossError),
    ("truncated index", errors.DataLossError), ("missing data", errors.DataLossError)])
def test_damaged_tf1_checkpoint_changes_nothing(tmp_path, how, exc):
    build("adam")
    prefix = _damaged_copy(tmp_path, how)
    before = snapshot()
    with pytest.raises(exc) as info:
        S.Saver().restore(None, prefix)
    assert prefix in str(info.value)
    assert_unchanged(before)


def test_tf1_checkpoint_mismatch_names_the_variable():
    params, step, opt = build("adam")
    co.Variable(np.zeros(2, np.float32), name="hidden/extra")
    before = snapshot()
    with pytest.raises(errors.NotFoundError, match="Key 'hidden/extra' not found"):
        S.Saver().restore(None, tf1_ckpt("adam"))
    assert_unchanged(before)


def test_tf2_object_based_checkpoint(tmp_path):
    kernel = tf.Variable(np.arange(6, dtype=np.float32).reshape(2, 3))
    path = tf.train.Checkpoint(model=tf.train.Checkpoint(kernel=kernel)).write(
        str(tmp_path / "obj"))
    key = "model/kernel/.ATTRIBUTES/VARIABLE_VALUE"
    assert [n for n, _ in S.list_variables(path)] == [key]  # the object graph is left out
    w = co.Variable(np.zeros((2, 3), np.float32), name="w")
    S.Saver({key: w}).restore(None, path)
    np.testing.assert_array_equal(w.numpy(), kernel.numpy())


def test_state_file_interoperates_with_tensorflow(tmp_path):
    d = tmp_path / 'dir "ü"'
    d.mkdir()
    w = co.Variable(np.zeros(2, np.float32), name="w")
    ours = S.Saver([w]).save(None, str(d / "m"), global_step=3)
    state = tf.train.get_checkpoint_state(str(d))
    assert state.model_checkpoint_path == ours  # TF reads compatopt's state file
    v1.train.update_checkpoint_state(str(d), str(d / "tf-7"),
                                    all_model_checkpoint_paths=[ours, str(d / "tf-7")])
    assert S.get_checkpoint_state(str(d)).all_model_checkpoint_paths == [ours, str(d / "tf-7")]
