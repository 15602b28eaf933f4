"""A fresh default graph for every checkpoint test."""

import pytest

import compatopt as co


@pytest.fixture(autouse=True)
def fresh_graph():
    co.reset_default_graph()
    yield
    co.reset_default_graph()
