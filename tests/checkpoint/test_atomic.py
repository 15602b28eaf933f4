"""Atomic saves: a crash or an error mid-save leaves the last good checkpoint readable."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import compatopt as co
from compatopt.checkpoint import _npz as fmt
from compatopt.checkpoint import _state_file as state_mod
from compatopt.train import saver as S

HERE = os.path.dirname(os.path.abspath(__file__))


def model():
    w = co.Variable(np.arange(1000, dtype=np.float32), name="w")
    b = co.Variable(np.ones(3, np.float32), name="b")
    step = co.train.get_or_create_global_step()
    return w, b, step


def test_error_while_writing_data_keeps_previous(tmp_path, monkeypatch):
    w, b, step = model()
    saver = S.Saver()
    first = saver.save(None, str(tmp_path / "m"), global_step=1)
    w.assign(w.value + 1)

    calls = []
    real = np.lib.format.write_array

    def failing(f, a, **kw):  # the second tensor fails half way
        calls.append(1)
        if len(calls) == 2:
            f.write(b"\0" * 16)
            raise OSError("disk full")
        return real(f, a, **kw)

    monkeypatch.setattr(fmt.np.lib.format, "write_array", failing)
    with pytest.raises(OSError, match="disk full"):
        saver.save(None, str(tmp_path / "m"), global_step=2)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["checkpoint", "m-1.npz"]  # temp file removed
    assert S.latest_checkpoint(str(tmp_path)) == first
    S.Saver().restore(None, first)
    np.testing.assert_array_equal(w.numpy(), np.arange(1000, dtype=np.float32))


def test_error_while_writing_state_keeps_previous(tmp_path, monkeypatch):
    w, b, step = model()
    saver = S.Saver()
    first = saver.save(None, str(tmp_path / "m"), global_step=1)

    def failing(*a, **k):
        raise OSError("no space for the state file")

    monkeypatch.setattr(state_mod, "write_state", failing)
    with pytest.raises(OSError):
        saver.save(None, str(tmp_path / "m"), global_step=2)
    monkeypatch.undo()
    assert S.latest_checkpoint(str(tmp_path)) == first  # the new file is complete but unlisted
    S.Saver().restore(None, first)
    S.Saver().restore(None, str(tmp_path / "m-2"))


def test_hard_crash_mid_write_leaves_last_checkpoint_readable(tmp_path):
    """A process killed (os._exit, no cleanup) half way through writing checkpoint 2."""
    script = textwrap.dedent(f"""
        import os, sys
        import numpy as np
        import compatopt as co
        from compatopt.train import saver as S; from compatopt.checkpoint import _npz as fmt
        w = co.Variable(np.arange(1000, dtype=np.float32), name="w")
        step = co.train.get_or_create_global_step()
        saver = S.Saver()
        saver.save(None, {str(tmp_path / "m")!r}, global_step=1)
        w.assign(w.value * 2)
        real = np.lib.format.write_array
        def crash(f, a, **kw):
            f.write(b"partial")
            f.flush()
            os._exit(3)
        fmt.np.lib.format.write_array = crash
        saver.save(None, {str(tmp_path / "m")!r}, global_step=2)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 3, proc.stderr
    files = sorted(os.listdir(tmp_path))
    assert "m-2.npz" not in files and "m-1.npz" in files
    assert any(".tmp" in f for f in files)  # the crash left its temp file behind
    latest = S.latest_checkpoint(str(tmp_path))
    assert latest == str(tmp_path / "m-1")
    w = co.Variable(np.zeros(1000, np.float32), name="w")
    co.train.get_or_create_global_step()
    S.Saver().restore(None, latest)
    np.testing.assert_array_equal(w.numpy(), np.arange(1000, dtype=np.float32))
    # and saving again works next to the stale temp file
    S.Saver().save(None, str(tmp_path / "m"), global_step=3)
    assert S.latest_checkpoint(str(tmp_path)) == str(tmp_path / "m-3")
