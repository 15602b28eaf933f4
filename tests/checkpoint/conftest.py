"""Shared fixtures for the checkpoint tests: a fresh default graph per test, helpers."""

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))

import compatopt as co  # noqa: E402


@pytest.fixture(autouse=True)
def fresh_graph():
    co.reset_default_graph()
    yield
    co.reset_default_graph()


def snapshot():
    """``{name: copy of value}`` of every variable of the default graph."""
    return {v.name: np.array(v.numpy()) for v in co.global_variables()}


def assert_unchanged(before):
    after = snapshot()
    assert after.keys() == before.keys()
    for k in before:
        np.testing.assert_array_equal(after[k], before[k], err_msg=f"{k} changed")


def import_tf():
    """TensorFlow, or a clean skip when it cannot be imported."""
    try:
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import tensorflow as tf
    except Exception as e:  # not installed, or a broken installation
        pytest.skip(f"TensorFlow is not importable ({type(e).__name__}: {e})",
                    allow_module_level=True)
    return tf
