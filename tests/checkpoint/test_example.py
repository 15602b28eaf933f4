"""``examples/migrate_tf1_checkpoint.py`` runs (short), as the README shows it."""

import os
import runpy
import sys

import pytest

pytestmark = pytest.mark.slow  # a whole example run

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "examples",
                       "migrate_tf1_checkpoint.py")


def test_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [EXAMPLE, "--steps", "2", "--out", str(tmp_path)])
    runpy.run_path(EXAMPLE, run_name="__main__")
    out = capsys.readouterr().out
    assert "restored 15 variables at global_step 50" in out
    assert "state: AdamState(count=50" in out
    assert sorted(os.listdir(tmp_path)) == ["checkpoint", "model.ckpt-53.npz",
                                            "model.ckpt-54.npz"]
