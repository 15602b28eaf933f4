"""A TF1 checkpoint of float16/bfloat16/float64/int32/int64/bool variables (converted), read
without TensorFlow: names, dtypes and values bit for bit; integer narrowing only where the
value fits."""

import json
import os

import jax
import ml_dtypes
import numpy as np
import pytest

import compatopt as co
from compatopt import errors
from compatopt.train import saver as S

from .ckpt_helpers import assert_unchanged, snapshot
from .ckpt_problem import DTYPE_STEP, DTYPE_VARS, FIXTURES

REF = np.load(os.path.join(FIXTURES, "reference.npz"))
with open(os.path.join(FIXTURES, "names.json")) as _f:
    NAMES = json.load(_f)["dtypes"]
CONVERTED = os.path.join(FIXTURES, "dtypes", "converted", f"model.ckpt-{DTYPE_STEP}")


def reference(name):
    value = REF[f"dtypes/{name}"]
    return value.view(ml_dtypes.bfloat16) if DTYPE_VARS[name][0] == "bfloat16" else value


def test_names_dtypes_and_values():
    assert S.list_variables(CONVERTED) == [(n, NAMES[n]["shape"]) for n in sorted(NAMES)]
    reader = S.load_checkpoint(CONVERTED)
    dtypes = reader.get_variable_to_dtype_map()
    for name, (dtype, _) in DTYPE_VARS.items():
        assert dtypes[name].name == dtype == NAMES[name]["dtype"]
        got = reader.get_tensor(name)
        assert got.dtype == reference(name).dtype
        assert got.shape == reference(name).shape and got.tobytes() == reference(name).tobytes()
    assert int(reader.get_tensor("global_step")) == DTYPE_STEP
    assert dtypes["global_step"] == np.int64


def test_restore_without_x64():
    """int64 ``global_step`` → the int32 step; an int64 value beyond int32 is refused."""
    variables = {n: co.Variable(np.zeros(DTYPE_VARS[n][1], reference(n).dtype), name=n)
                 for n in ("f16", "bf16", "i32", "flag")}
    step = co.train.get_or_create_global_step()
    assert step.dtype == np.int32
    S.Saver(list(variables.values()) + [step]).restore(None, CONVERTED)
    assert int(step.numpy()) == DTYPE_STEP
    for n, v in variables.items():
        assert v.dtype == reference(n).dtype
        np.testing.assert_array_equal(v.numpy(), reference(n))
    big = co.Variable(np.int32(0), name="i64")
    before = snapshot()
    with pytest.raises(errors.InvalidArgumentError, match="'i64'.*int64 values do not fit"):
        S.Saver().restore(None, CONVERTED, expect_partial=True)  # f64 needs x64
    assert_unchanged(before)
    assert int(big.numpy()) == 0


def test_restore_with_x64():
    with jax.enable_x64(True):
        variables = {n: co.Variable(np.zeros(s, reference(n).dtype), name=n)
                     for n, (_, s) in DTYPE_VARS.items()}
        step = co.train.get_or_create_global_step()
        assert step.dtype == np.int64
        S.Saver().restore(None, CONVERTED)
        for n, v in variables.items():
            assert v.dtype == reference(n).dtype, n
            np.testing.assert_array_equal(v.numpy(), reference(n))
        assert int(variables["i64"].numpy()) == 2**40 + 5
        assert int(step.numpy()) == DTYPE_STEP
