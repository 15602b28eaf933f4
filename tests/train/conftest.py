"""Shared fixtures for the compat-shim tests: a fresh default graph per test."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import compatopt as co  # noqa: E402

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "tf1", "shim")


@pytest.fixture(autouse=True)
def fresh_graph():
    co.reset_default_graph()
    yield
    co.reset_default_graph()
