"""The examples run, short, as a user runs them: each in a fresh interpreter, from an empty
folder (not the checkout), with warnings as errors (as ``pyproject.toml`` sets for the tests),
matplotlib on its Agg backend and plots written under ``tmp_path``.

Covered elsewhere, so not here: ``examples/data_parallel.py`` (needs 8 faked devices;
``tests/parallel/test_parallel.py``) and the in-process run of
``examples/migrate_tf1_checkpoint.py`` against its ``--out`` folder
(``tests/checkpoint/test_example.py``). ``examples/tf1_mlp_original.py`` needs TensorFlow;
``port_tf1_mlp.py`` is checked here against the curve it recorded.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # each example in its own interpreter

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
TIMEOUT_S = 120

# Warnings as errors, with pyproject.toml's one exception (JAX's own DeprecationWarnings);
# then the example runs as ``python examples/NAME.py ARGS``.
_RUNNER = """\
import runpy, sys, warnings
warnings.filterwarnings("error")
warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"jax.*")
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run_example(name: str, *args: str, cwd: Path, env: dict | None = None) -> str:
    """Runs ``examples/<name>`` with ``args`` from ``cwd``; returns its stdout."""
    full_env = dict(os.environ)
    paths = [p for p in full_env.get("PYTHONPATH", "").split(os.pathsep) if p]
    full_env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + paths)  # this checkout's compatopt
    full_env.setdefault("JAX_PLATFORMS", "cpu")
    full_env["MPLBACKEND"] = "Agg"
    full_env.update(env or {})
    proc = subprocess.run([sys.executable, "-c", _RUNNER, str(EXAMPLES / name), *args],
                          cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=TIMEOUT_S, check=False)
    assert proc.returncode == 0, (f"{name} {' '.join(args)} exited {proc.returncode}\n"
                                  f"--- stdout ---\n{proc.stdout}\n"
                                  f"--- stderr ---\n{proc.stderr[-4000:]}")
    return proc.stdout


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name[:-3]}", EXAMPLES / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_adamw_subclass_compares_eager_and_compiled_from_the_same_start(tmp_path):
    out = run_example("adamw_subclass.py", "--steps", "10", cwd=tmp_path)
    assert "slots: ['bias/adam_m:0', 'bias/adam_v:0', 'kernel/adam_m:0', 'kernel/adam_v:0']" in out
    eager = re.search(r"^eager    loss: (.*)$", out, re.M).group(1).split()
    compiled = re.search(r"^compiled loss: (.*)$", out, re.M).group(1).split()
    assert len(eager) == 5 and eager == compiled  # same start: same curve (4 decimals)
    assert re.search(r"^eager vs compiled: (bit-identical|.*max abs difference)", out, re.M)


def test_port_tf1_mlp_plots_against_the_recorded_tf1_curve(tmp_path):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    png = tmp_path / "plots" / "curves.png"
    png.parent.mkdir()
    out = run_example("port_tf1_mlp.py", "--steps", "40", "--recorded", "--png", str(png),
                      cwd=tmp_path)
    assert "port: 40 steps, 1 trace(s), global_step=40" in out
    m = re.search(r"TF1 original \(recorded with TensorFlow 2\.21\.0\): final loss \S+; max "
                  r"relative difference of the loss curves (\S+) \(median \S+\) over 40 steps",
                  out)
    assert m, out
    assert float(m.group(1)) < 1e-5  # XLA's and TF's matmuls differ in the last bits only
    assert png.stat().st_size > 10_000
    assert list(tmp_path.iterdir()) == [png.parent]  # nothing written into the cwd


def test_port_tf1_mlp_recorded_curve_is_for_the_default_run():
    pytest.importorskip("sklearn")
    ex = load_example("port_tf1_mlp.py")
    d = ex.make_data(15, 100)
    losses, source = ex.load_recorded(ex.RECORDED, ex.data_digest(d), 15, 100)
    assert source == "recorded with TensorFlow 2.21.0"
    assert len(losses) == len(d["batches"]) == 255
    assert np.all(np.isfinite(losses)) and losses[-1] < 0.1 * losses[0]
    assert ex.load_recorded(ex.RECORDED, "0" * 64, 15, 100)[0] is None
    assert ex.load_recorded(ex.RECORDED, ex.data_digest(d), 2, 100)[0] is None


def test_migrate_tf1_checkpoint_runs_from_anywhere_and_removes_its_temp_dir(tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    out = run_example("migrate_tf1_checkpoint.py", "--steps", "3", cwd=work,
                      env={"TMPDIR": str(tmp)})
    assert "restored 15 variables at global_step 50" in out
    assert "files: ['checkpoint', 'model.ckpt-54.npz', 'model.ckpt-55.npz']" in out
    assert "state: AdamState(count=50" in out and "(count 53)" in out
    saved_in = re.search(r"Save compatopt checkpoints in (\S+)", out).group(1)
    assert Path(saved_in).parent == tmp
    assert list(tmp.iterdir()) == [] and list(work.iterdir()) == []


def test_migrate_tf1_checkpoint_says_where_the_fixture_is_missing(tmp_path):
    ex = load_example("migrate_tf1_checkpoint.py")
    with pytest.raises(SystemExit, match="not at .*missing.*--fixture DIR"):
        ex.main(["--fixture", str(tmp_path / "missing")])
    with pytest.raises(SystemExit, match="no checkpoint at .*model.ckpt-1"):
        ex.main(["--checkpoint", str(tmp_path / "model.ckpt-1")])


def test_migrate_tf1_checkpoint_data_is_the_fixture_recorders():
    """The example carries its own copy of the data the TF1 checkpoint was trained on."""
    spec = importlib.util.spec_from_file_location(
        "ckpt_problem_for_examples", ROOT / "tests" / "checkpoint" / "ckpt_problem.py")
    recorder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recorder)
    ex = load_example("migrate_tf1_checkpoint.py")
    assert ex.VARS == recorder.VARS
    (x, y, init), (rx, ry, rinit) = ex.problem(), recorder.problem()
    np.testing.assert_array_equal(x, rx)
    np.testing.assert_array_equal(y, ry)
    assert init.keys() == rinit.keys()
    for k in init:
        np.testing.assert_array_equal(init[k], rinit[k])


def test_train_digits_one_epoch(tmp_path):
    pytest.importorskip("sklearn")
    out = run_example("train_digits.py", "--epochs", "1", cwd=tmp_path)
    m = re.search(r"^22 steps in \S+ s; test accuracy (\S+)$", out, re.M)
    assert m, out
    assert float(m.group(1)) > 0.5


def test_ema_convnet_evaluates_with_the_restored_averages(tmp_path):
    png = tmp_path / "ema.png"
    out = run_example("ema_convnet.py", "--steps", "60", "--plot", str(png), cwd=tmp_path)
    m = re.search(r"test accuracy: raw weights ([\d.]+), moving averages ([\d.]+)", out)
    assert m, out
    assert float(m.group(1)) > 0.3 and float(m.group(2)) > 0.1
    assert "conv1/biases/ExponentialMovingAverage" in out
    assert png.stat().st_size > 10_000


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_loss_scaling_functional_equals_shim(tmp_path, dtype):
    out = run_example("bf16_loss_scaling.py", "--steps", "60", "--dtype", dtype, cwd=tmp_path)
    assert "functional vs shim: identical losses" in out, out
    m = re.search(r"loss ([\d.]+) -> ([\d.]+)", out)
    assert m and float(m.group(2)) < float(m.group(1)), out


@pytest.mark.parametrize("name, size_flag", [("nnx_flat.py", "--layers"),
                                             ("equinox_flat.py", "--depth")])
def test_framework_flat_layout_examples_train_bit_identically(tmp_path, name, size_flag):
    out = run_example(name, size_flag, "8", "--steps", "3", cwd=tmp_path)
    rows = [ln for ln in out.splitlines() if "first call" in ln]
    assert len(rows) == 3, out
    assert all(ln.endswith("bit-identical to per leaf") for ln in rows), out
    assert list(tmp_path.iterdir()) == []
