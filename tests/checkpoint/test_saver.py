"""``compatopt.train.Saver``: names, paths, the state file, max_to_keep, renames, slots."""

import os

import jax.numpy as jnp
import numpy as np
import pytest

import compatopt as co
from compatopt.train import saver as S


def model():
    w = co.Variable(np.arange(6, dtype=np.float32).reshape(2, 3), name="w")
    b = co.Variable(np.ones(3, np.float32), name="b")
    step = co.train.get_or_create_global_step()
    opt = co.train.AdamOptimizer(0.1)
    return w, b, step, opt


def loss(w, b):
    return lambda: jnp.sum(jnp.square(w.value) + b.value)


def train(opt, w, b, step, n=1):
    for _ in range(n):
        opt.minimize(loss(w, b), global_step=step)


def values():
    return {v.op.name: v.numpy() for v in co.global_variables()}


def test_save_returns_prefix_and_keys_by_tf1_names(tmp_path):
    w, b, step, opt = model()
    train(opt, w, b, step, 3)
    path = S.Saver().save(None, str(tmp_path / "model.ckpt"), global_step=step)
    assert path == str(tmp_path / "model.ckpt-3")
    assert os.path.isfile(path + ".npz")
    assert S.list_variables(path) == [
        ("b", [3]), ("b/Adam", [3]), ("b/Adam_1", [3]), ("beta1_power", []),
        ("beta2_power", []), ("global_step", []), ("w", [2, 3]), ("w/Adam", [2, 3]),
        ("w/Adam_1", [2, 3])]
    # readable without compatopt
    with np.load(path + ".npz") as raw:
        np.testing.assert_array_equal(raw["w/Adam"], opt.get_slot(w, "m").numpy())
    np.testing.assert_array_equal(S.load_variable(path, "beta1_power:0"),
                                  opt._get_beta_accumulators()[0].numpy())


def test_round_trip_restores_everything(tmp_path):
    w, b, step, opt = model()
    train(opt, w, b, step, 2)
    saved = values()
    saver = S.Saver()
    path = saver.save(str(tmp_path / "m"), global_step=2)  # saver.save(path) form
    train(opt, w, b, step, 3)
    saver.restore(path)
    got = values()
    for k in saved:
        np.testing.assert_array_equal(got[k], saved[k], err_msg=k)
        assert got[k].dtype == saved[k].dtype
    # training continues from the restored state exactly as it did the first time
    train(opt, w, b, step, 3)
    again = values()
    co.reset_default_graph()
    w2, b2, step2, opt2 = model()
    train(opt2, w2, b2, step2, 5)
    for k, v in values().items():
        np.testing.assert_array_equal(again[k], v, err_msg=k)


def test_state_file_and_latest_checkpoint(tmp_path):
    w, b, step, opt = model()
    train(opt, w, b, step)
    saver = S.Saver(max_to_keep=2)
    paths = [saver.save(None, str(tmp_path / "model.ckpt"), global_step=i) for i in (10, 20, 30)]
    assert S.latest_checkpoint(str(tmp_path)) == paths[-1]
    assert saver.last_checkpoints == paths[1:]
    assert sorted(os.listdir(tmp_path)) == ["checkpoint", "model.ckpt-20.npz",
                                            "model.ckpt-30.npz"]
    assert (tmp_path / "checkpoint").read_text() == (
        'model_checkpoint_path: "model.ckpt-30"\n'
        'all_model_checkpoint_paths: "model.ckpt-20"\n'
        'all_model_checkpoint_paths: "model.ckpt-30"\n')
    state = S.get_checkpoint_state(str(tmp_path))
    assert state.all_model_checkpoint_paths == paths[1:]
    assert S.checkpoint_exists(paths[1]) and not S.checkpoint_exists(paths[0])
    # a moved directory still resolves (relative paths)
    moved = tmp_path.parent / (tmp_path.name + "_moved")
    os.rename(tmp_path, moved)
    assert S.latest_checkpoint(str(moved)) == str(moved / "model.ckpt-30")
    assert S.latest_checkpoint(str(tmp_path / "nothing")) is None


def test_max_to_keep_none_keeps_all_and_pad_step_number(tmp_path):
    w, b, step, opt = model()
    train(opt, w, b, step)
    saver = S.Saver(max_to_keep=None, pad_step_number=True)
    for i in range(7):
        saver.save(None, str(tmp_path / "m"), global_step=i)
    assert len([f for f in os.listdir(tmp_path) if f.endswith(".npz")]) == 7
    assert S.latest_checkpoint(str(tmp_path)) == str(tmp_path / "m-00000006")


def test_keep_checkpoint_every_n_hours_keeps_old_ones(tmp_path, monkeypatch):
    w, b, step, opt = model()
    train(opt, w, b, step)
    clock = [1000.0]
    monkeypatch.setattr(S, "_now", lambda: clock[0])
    saver = S.Saver(max_to_keep=1, keep_checkpoint_every_n_hours=1.0)
    for i in range(4):
        clock[0] += 1800.0  # half an hour per save
        saver.save(None, str(tmp_path / "m"), global_step=i)
    kept = sorted(f for f in os.listdir(tmp_path) if f.endswith(".npz"))
    # saves at 0.5, 1.0, 1.5, 2.0 h; m-2 is the first one saved more than an hour after the
    # saver was made (TF1's test is strictly later), m-3 the newest
    assert kept == ["m-2.npz", "m-3.npz"]


def test_recover_last_checkpoints_counts_files_from_before_a_restart(tmp_path):
    w, b, step, opt = model()
    train(opt, w, b, step)
    first = S.Saver(max_to_keep=2)
    for i in range(2):
        first.save(None, str(tmp_path / "m"), global_step=i)
    second = S.Saver(max_to_keep=2)
    second.recover_last_checkpoints(S.get_checkpoint_state(str(tmp_path))
                                    .all_model_checkpoint_paths)
    second.save(None, str(tmp_path / "m"), global_step=2)
    assert sorted(f for f in os.listdir(tmp_path) if f.endswith(".npz")) == ["m-1.npz",
                                                                            "m-2.npz"]


def test_save_argument_errors_as_tf1(tmp_path):
    w, b, step, opt = model()
    saver = S.Saver()
    with pytest.raises(ValueError, match="Parent directory of .* doesn't exist, can't save."):
        saver.save(None, str(tmp_path / "no" / "model"))
    with pytest.raises(ValueError, match="'latest_filename' must not contain path components"):
        saver.save(None, str(tmp_path / "m"), latest_filename="a/b")
    with pytest.raises(ValueError, match="Can't load save_path when it is None."):
        saver.restore(None, None)
    with pytest.raises(ValueError, match="At least two variables have the same name: w"):
        S.Saver([w, co.Variable(1.0, name="x")], name_map={"x": "w"})
    with pytest.raises(ValueError, match="No variables to save"):
        S.Saver([])
    with pytest.raises(TypeError):
        S.Saver({"w": np.ones(3)})
    path = saver.save(None, str(tmp_path / "s"), latest_filename="my_state", write_state=True)
    assert S.latest_checkpoint(str(tmp_path), "my_state") == path
    assert S.latest_checkpoint(str(tmp_path)) is None


def test_var_list_dict_restores_renamed_variables(tmp_path):
    w, b, step, opt = model()
    train(opt, w, b, step)
    path = S.Saver().save(None, str(tmp_path / "old"))
    want_w, want_m = w.numpy(), opt.get_slot(w, "m").numpy()
    co.reset_default_graph()
    kernel = co.Variable(np.zeros((2, 3), np.float32), name="dense/kernel")
    m = co.Variable(np.zeros((2, 3), np.float32), name="dense/kernel/Adam")
    S.Saver({"w": kernel, "w/Adam": m}).restore(None, path)  # the rest is ignored
    np.testing.assert_array_equal(kernel.numpy(), want_w)
    np.testing.assert_array_equal(m.numpy(), want_m)


def test_name_map_renames_in_save_and_restore(tmp_path):
    w, b, step, opt = model()
    train(opt, w, b, step)
    saved = values()
    saver = S.Saver(name_map=lambda n: "model/" + n)
    path = saver.save(None, str(tmp_path / "m"))
    assert all(n.startswith("model/") for n, _ in S.list_variables(path))
    train(opt, w, b, step)
    saver.restore(None, path)
    for k, v in values().items():
        np.testing.assert_array_equal(v, saved[k])
    co.reset_default_graph()
    w2 = co.Variable(np.zeros((2, 3), np.float32), name="w")
    S.Saver([w2], name_map={"w": "model/w"}).restore(None, path)
    np.testing.assert_array_equal(w2.numpy(), saved["w"])


def test_restore_before_the_first_step_with_create_slots(tmp_path):
    """TF1 makes slots in the first apply; restoring earlier needs them: create_slots."""
    w, b, step, opt = model()
    train(opt, w, b, step, 4)
    path = S.Saver().save(None, str(tmp_path / "m"), global_step=step)
    saved = values()
    train(opt, w, b, step, 1)
    expected = values()

    co.reset_default_graph()
    w, b, step, opt = model()
    saver = S.Saver()  # made before the slots exist: var_list is read at restore time
    with pytest.raises(co.errors.NotFoundError, match=r"(?s)w/Adam.*create_slots"):
        saver.restore(None, path)  # the slots do not exist yet
    created = S.create_slots(opt, [w, b])
    assert [v.name for v in created] == ["b/Adam:0", "b/Adam_1:0", "beta1_power:0",
                                         "beta2_power:0", "w/Adam:0", "w/Adam_1:0"]
    assert S.create_slots(opt, [w, b]) == created  # idempotent
    saver.restore(None, path)
    for k, v in values().items():
        np.testing.assert_array_equal(v, saved[k], err_msg=k)
    train(opt, w, b, step, 1)  # the first step uses the restored slots
    for k, v in values().items():
        np.testing.assert_array_equal(v, expected[k], err_msg=k)


def test_ported_graph_order_minimize_then_restore(tmp_path):
    """TF1 graph code calls minimize (graph building) before restore; in compatopt that
    first minimize takes an eager step, which the restore then overwrites entirely."""
    w, b, step, opt = model()
    train(opt, w, b, step, 4)
    path = S.Saver().save(None, str(tmp_path / "m"), global_step=step)
    saved = values()
    co.reset_default_graph()
    w, b, step, opt = model()
    op = opt.minimize(loss(w, b), global_step=step)
    S.Saver().restore(None, path)
    for k, v in values().items():
        np.testing.assert_array_equal(v, saved[k], err_msg=k)
    op.run()
    assert int(step.numpy()) == 5


def test_create_slots_for_every_builtin_optimizer_matches_first_apply():
    kinds = {"GradientDescent": dict(learning_rate=0.1), "Adagrad": dict(learning_rate=0.1),
             "Momentum": dict(learning_rate=0.1, momentum=0.9),
             "Adadelta": {}, "Adam": {}, "Ftrl": dict(learning_rate=0.1),
             "ProximalAdagrad": dict(learning_rate=0.1),
             "RMSProp": dict(learning_rate=0.1, centered=True)}
    for kind, kw in kinds.items():
        co.reset_default_graph()
        w = co.Variable(np.ones(3, np.float32), name="w")
        created = S.create_slots(getattr(co.train, kind + "Optimizer")(**kw), [w])
        made = {v.name: v.numpy() for v in created}
        co.reset_default_graph()
        w = co.Variable(np.ones(3, np.float32), name="w")
        opt = getattr(co.train, kind + "Optimizer")(**kw)
        opt.apply_gradients([(np.zeros(3, np.float32), w)])
        assert sorted(made) == [v.name for v in opt.variables()], kind
    with pytest.raises(ValueError, match="No variables provided"):
        S.create_slots(co.train.AdamOptimizer(), [])


def test_state_file_written_by_tensorflow_and_odd_names(tmp_path):
    from compatopt.checkpoint import _npz as fmt
    d = tmp_path / 'run "ü" 1'
    d.mkdir()
    fmt.write(str(d / "model.ckpt-5"), {"w": np.zeros(1, np.float32)})
    # TF2 writes absolute paths (when saving to one), timestamps, and octal escapes
    escaped = str(d).encode("utf-8").decode("latin-1")
    escaped = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else
                      ("\\" + c if c in '"\\' else f"\\{ord(c):03o}") for c in escaped)
    (d / "checkpoint").write_text(
        f'model_checkpoint_path: "{escaped}/model.ckpt-5"\n'
        f'all_model_checkpoint_paths: "{escaped}/model.ckpt-5"\n'
        f'all_model_checkpoint_timestamps: 1700000000.5\n'
        f'last_preserved_timestamp: 1699999999.0\n')
    assert S.latest_checkpoint(str(d)) == str(d / "model.ckpt-5")
    # compatopt's own writes round-trip the same names
    w = co.Variable(np.zeros(2, np.float32), name='w "quoted" ü')
    path = S.Saver([w]).save(None, str(d / "m"), global_step=1)
    assert S.latest_checkpoint(str(d)) == path
    assert S.list_variables(path) == [('w "quoted" ü', [2])]
