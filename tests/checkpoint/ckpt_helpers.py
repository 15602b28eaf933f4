"""Helpers shared by the checkpoint tests."""

import warnings

import numpy as np
import pytest

import compatopt as co


def snapshot():
    """``{name: copy of value}`` of every variable of the default graph."""
    return {v.name: np.array(v.numpy()) for v in co.global_variables()}


def assert_unchanged(before):
    after = snapshot()
    assert after.keys() == before.keys()
    for k in before:
        np.testing.assert_array_equal(after[k], before[k], err_msg=f"{k} changed")


def import_tf():
    """TensorFlow, or a clean skip of the calling module when it cannot be imported."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import tensorflow as tf
    except Exception as e:  # not installed, or a broken installation
        pytest.skip(f"TensorFlow is not importable ({type(e).__name__}: {e})",
                    allow_module_level=True)
    return tf
