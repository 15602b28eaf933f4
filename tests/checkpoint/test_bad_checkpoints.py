"""Bad checkpoints: each raises a clear error naming the variable, and changes nothing.

Every restore below is attempted on a model whose variables hold values different from the
checkpoint's; after the error all of them (variables, slots, step) must be unchanged.
"""

import os
import shutil

import numpy as np
import pytest

import compatopt as co
from compatopt import errors
from compatopt.train import saver as S

from .ckpt_helpers import assert_unchanged, snapshot


def make_model(shape=(2, 3), dtype=np.float32, extra=False, slots=True):
    w = co.Variable(np.full(shape, 7, dtype), name="w")
    b = co.Variable(np.full(3, 7, np.float32), name="b")
    if extra:
        co.Variable(np.float32(7), name="extra")
    step = co.train.get_or_create_global_step()
    opt = co.train.AdamOptimizer(0.1)
    if slots:
        S.create_slots(opt, [w, b])
    return w, b, step, opt


@pytest.fixture(scope="module")
def good_ckpt(tmp_path_factory):
    """A good checkpoint of the standard model after one step (written once)."""
    co.reset_default_graph()
    w, b, step, opt = make_model()
    opt.minimize(lambda: (w * w).sum() + b.value.sum(), global_step=step)
    path = S.Saver().save(None, str(tmp_path_factory.mktemp("good") / "model.ckpt"),
                          global_step=step)
    co.reset_default_graph()
    return path


@pytest.fixture
def ckpt(good_ckpt, tmp_path):
    """A private copy of the good checkpoint (some tests delete or damage files)."""
    d = tmp_path / "ckpt"
    shutil.copytree(os.path.dirname(good_ckpt), d)
    return str(d / os.path.basename(good_ckpt))


def restore_fails(path, exc, match, **kw):
    before = snapshot()
    with pytest.raises(exc, match=match):
        S.Saver(**kw).restore(None, path)
    assert_unchanged(before)


def test_good_checkpoint_restores(ckpt):
    w, b, step, opt = make_model()
    S.Saver().restore(None, ckpt)
    assert int(step.numpy()) == 1


def test_missing_slot(ckpt, tmp_path):
    w, b, step, opt = make_model()
    reader = S.load_checkpoint(ckpt)
    tensors = {n: reader.get_tensor(n) for n, _ in S.list_variables(ckpt) if n != "w/Adam_1"}
    from compatopt.checkpoint import _npz as fmt
    fmt.write(str(tmp_path / "partial"), tensors)
    restore_fails(str(tmp_path / "partial"), errors.NotFoundError,
                  r"Key 'w/Adam_1' not found in checkpoint")


def test_extra_variable_in_the_model(ckpt):
    make_model(extra=True)
    restore_fails(ckpt, errors.NotFoundError, r"Key 'extra' not found in checkpoint")


def test_extra_entries_in_the_checkpoint(ckpt):
    make_model(slots=False)  # slots not created: the checkpoint has entries no one takes
    restore_fails(ckpt, errors.NotFoundError,
                  r"(?s)6 entries that no variable takes:.*'beta1_power'.*'w/Adam_1'")
    # an explicit var_list restores a subset, as TF1
    w = co.global_variables()[0]
    S.Saver([w]).restore(None, ckpt)
    # and expect_partial=True says the same for var_list=None
    S.Saver().restore(None, ckpt, expect_partial=True)


def test_shape_mismatch(ckpt):
    make_model(shape=(3, 3))
    restore_fails(ckpt, errors.InvalidArgumentError,
                  r"tensor_name = 'w': shape \(2, 3\) in the checkpoint does not match the "
                  r"variable's shape \(3, 3\)")


def test_reshape_allows_same_size(ckpt):
    w, b, step, opt = make_model(shape=(3, 2))
    S.create_slots(opt, [w, b])
    S.Saver(reshape=True).restore(None, ckpt)
    assert w.shape == (3, 2) and int(step.numpy()) == 1


def test_dtype_mismatch(ckpt):
    make_model(dtype=np.float16)
    restore_fails(ckpt, errors.InvalidArgumentError,
                  r"tensor_name = 'w': expected dtype float16 does not equal original dtype "
                  r"float32")


def test_renamed_variable_is_named_in_the_message(ckpt):
    v = co.Variable(np.zeros(4, np.float32), name="kernel")
    before = snapshot()
    with pytest.raises(errors.InvalidArgumentError, match=r"'w' \(variable kernel:0\)"):
        S.Saver({"w": v}).restore(None, ckpt)
    assert_unchanged(before)


def test_all_problems_listed_at_once(ckpt):
    make_model(shape=(3, 3), dtype=np.float16)
    co.Variable(np.float32(0), name="extra")
    before = snapshot()
    with pytest.raises(errors.NotFoundError) as info:
        S.Saver().restore(None, ckpt)
    assert "'extra'" in str(info.value)
    assert_unchanged(before)


def test_truncated_file(ckpt, tmp_path):
    make_model()
    with open(ckpt + ".npz", "rb") as f:
        data = f.read()
    for cut in (len(data) // 2, len(data) - 10, 100):
        bad = str(tmp_path / f"cut{cut}")
        with open(bad + ".npz", "wb") as f:
            f.write(data[:cut])
        restore_fails(bad, errors.DataLossError, r"cut\d+\.npz.*truncated or corrupt")


def test_corrupt_byte_in_a_tensor(ckpt, tmp_path):
    make_model()
    with open(ckpt + ".npz", "rb") as f:
        data = bytearray(f.read())
    with np.load(ckpt + ".npz") as raw_file:
        raw = raw_file["w/Adam"].tobytes()
    at = bytes(data).index(raw) + 5  # inside the w/Adam payload
    data[at] ^= 0x40
    bad = str(tmp_path / "flipped")
    with open(bad + ".npz", "wb") as f:
        f.write(bytes(data))
    restore_fails(bad, errors.DataLossError, r"tensor 'w/Adam'.*truncated or corrupt")


def test_not_a_checkpoint(ckpt, tmp_path):
    make_model()
    garbage = str(tmp_path / "garbage")
    with open(garbage + ".npz", "wb") as f:
        f.write(b"this is not a zip file" * 10)
    restore_fails(garbage, errors.DataLossError, "truncated or corrupt")
    plain = str(tmp_path / "plain")
    np.savez(plain + ".npz", w=np.zeros(3))  # a zip of arrays without compatopt's index
    restore_fails(plain, errors.DataLossError, "not a compatopt checkpoint")


def test_wrong_path(ckpt, tmp_path):
    make_model()
    missing = str(tmp_path / "model.ckpt-999")
    restore_fails(missing, errors.NotFoundError, r"not a valid checkpoint: .*model\.ckpt-999")
    restore_fails(missing, ValueError, "not a valid checkpoint")  # TF1's exception type
    restore_fails(str(tmp_path), errors.NotFoundError, r"it is a directory.*latest_checkpoint")
    with pytest.raises(errors.NotFoundError):
        S.list_variables(str(tmp_path / "empty_dir_that_does_not_exist"))


def test_state_file_pointing_to_deleted_checkpoint(ckpt):
    d = os.path.dirname(ckpt)
    assert S.latest_checkpoint(d) == ckpt
    os.remove(ckpt + ".npz")
    assert S.latest_checkpoint(d) is None
    with pytest.raises(errors.NotFoundError, match="Unable to find a checkpoint"):
        S.list_variables(d)


def test_integer_step_narrows_only_when_it_fits(tmp_path):
    from compatopt.checkpoint import _npz as fmt
    step = co.train.get_or_create_global_step()  # int32 without jax_enable_x64
    fmt.write(str(tmp_path / "ok"), {"global_step": np.int64(123)})
    S.Saver().restore(None, str(tmp_path / "ok"))
    assert int(step.numpy()) == 123
    fmt.write(str(tmp_path / "big"), {"global_step": np.int64(2**40)})
    restore_fails(str(tmp_path / "big"), errors.InvalidArgumentError,
                  "'global_step'.*do not fit the variable's dtype int32")
