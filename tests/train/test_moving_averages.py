"""``compatopt.train.ExponentialMovingAverage`` against TF1 graph mode.

Replays ``tools/make_tf1_ema_fixtures.py``: each step's variables and shadows bit for bit
(eagerly and inside ``compatopt.function``, whose first call creates the shadows), shadow
names, ``average_name``, ``variables_to_restore``, a checkpoint round trip restoring the
averages into the model variables, and TF1's errors (a failed call changes nothing).
"""

import builtins
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import compatopt as co
from compatopt.train import moving_averages as ema_module
from compatopt.train._function import Function

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tools"))
from make_tf1_ema_fixtures import CONFIGS, STEPS  # noqa: E402  # pyright: ignore[reportMissingImports]

FIX = os.path.join(HERE, "..", "fixtures", "tf1", "ema")
with np.load(os.path.join(FIX, "trainings.npz")) as _npz:
    ARRAYS = dict(_npz)


def _json(name):
    with open(os.path.join(FIX, name)) as f:
        return json.load(f)


META = _json("trainings.json")["configs"]
NAMES = _json("names.json")
ERRORS = _json("errors.json")


def _bits_equal(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _x64(key):
    return jax.enable_x64(True) if "b" in CONFIGS[key][0] else jax.enable_x64(False)


def _build(key):
    names, opt_name, opt_kwargs, kw = CONFIGS[key]
    variables = [co.Variable(ARRAYS[f"{key}:{n}"], name=n) for n in names]
    gs = co.train.get_or_create_global_step()
    opt = getattr(co.train, opt_name + "Optimizer")(**opt_kwargs)
    kw = dict(kw)
    if kw.get("decay") == "variable":
        kw["decay"] = co.Variable(np.float32(0.75), trainable=False, name="decay")
    if kw.get("num_updates") == "global_step":
        kw["num_updates"] = gs
    return variables, gs, opt, co.train.ExponentialMovingAverage(**kw)


def _avg(ema, v):
    avg = ema.average(v)
    assert avg is not None, v.name
    return avg


def _check_step(key, variables, gs, ema, t):
    assert int(gs.value) == ARRAYS[f"{key}:trajectory:global_step"][t]
    for v in variables:
        assert _bits_equal(v.value, ARRAYS[f"{key}:trajectory:{v.op.name}"][t])
        avg = _avg(ema, v)
        assert avg.name == META[key]["averages"][v.op.name]
        assert _bits_equal(avg.value, ARRAYS[f"{key}:trajectory:{avg.op.name}"][t])


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "function"])
@pytest.mark.parametrize("key", sorted(CONFIGS))
def test_steps_match_tf1(key, compiled):
    with _x64(key):
        variables, gs, opt, ema = _build(key)
        names = CONFIGS[key][0]

        def step(grads):
            opt.apply_gradients(list(zip(grads, variables)), global_step=gs)
            return ema.apply(variables)

        compiled_step = Function(step) if compiled else None  # what co.function returns
        if compiled_step is None:
            ema.apply(variables)  # TF1's docs: apply right after creating the variables
            _check_step(key, variables, gs, ema, 0)
        for t in range(STEPS):
            op = (compiled_step or step)([jnp.asarray(ARRAYS[f"{key}:{n}/g"][t]) for n in names])
            assert isinstance(op, co.train.Operation)
            _check_step(key, variables, gs, ema, t + 1)
        if compiled_step is not None:  # the first call created the shadows; one trace
            assert compiled_step.trace_count == 1
        for v in variables:
            avg = _avg(ema, v)
            assert not avg.trainable and avg not in co.trainable_variables()
        meta = META[key]
        assert sorted(v.name for v in co.global_variables()) == sorted(meta["global_variables"])
        assert [v.name for v in ema_module.moving_average_variables()] == \
            meta["moving_average_variables"]
        assert sorted((k, v.name) for k, v in ema.variables_to_restore().items()) == \
            [tuple(p) for p in meta["variables_to_restore"]]


def test_operation_run_updates_again():
    w = co.Variable(jnp.array([1.0, 2.0]), name="w")
    ema = co.train.ExponentialMovingAverage(0.5)
    op = ema.apply([w])
    w.assign(jnp.array([3.0, 6.0]))
    op.run()
    np.testing.assert_array_equal(_avg(ema, w).value, [2.0, 4.0])
    assert op.name == "ExponentialMovingAverage"


def test_names_match_tf1():
    w = co.Variable(jnp.ones(3), name="w")
    k = co.Variable(jnp.ones(2), name="dense/kernel")
    gs = co.train.get_or_create_global_step()
    co.train.MomentumOptimizer(0.1, 0.9).apply_gradients([(jnp.ones(3), w)], global_step=gs)
    ema = co.train.ExponentialMovingAverage(0.9)
    assert ema.average_name(w) == NAMES["average_name_before"]
    ema.apply([w, k])
    assert [v.name for v in co.global_variables()] == NAMES["after_first"]
    assert [ema.average_name(w), ema.average_name(k)] == NAMES["average_name_after"]
    ema.apply([w])
    assert [v.name for v in co.global_variables()] == NAMES["after_second_apply"]
    ema2 = co.train.ExponentialMovingAverage(0.9)
    assert ema2.average_name(w) == NAMES["ema2_average_name_before"]
    ema2.apply([w])
    assert _avg(ema2, w).name == NAMES["ema2_average"]
    ema3 = co.train.ExponentialMovingAverage(0.9, name="avg")
    assert ema3.name == "avg"
    assert ema3.average_name(w) == NAMES["ema3_average_name_before"]
    ema3.apply([w])
    assert _avg(ema3, w).name == NAMES["ema3_average"]
    assert ema3.average_name(k) == NAMES["ema3_average_name_unapplied"]
    assert repr(ema3.average(k)) == NAMES["ema3_average_unapplied"]
    assert [v.name for v in co.global_variables()] == NAMES["global_variables"]
    assert [v.name for v in ema_module.moving_average_variables()] == \
        NAMES["moving_average_variables"]
    for label, e, arg in [("vtr", ema, None), ("vtr_ema2", ema2, None),
                          ("vtr_ema3", ema3, None), ("vtr_list", ema, [w])]:
        got = sorted((key, v.name) for key, v in e.variables_to_restore(arg).items())
        assert got == [tuple(p) for p in NAMES[label]], label


def test_checkpoint_restores_averages_into_model(tmp_path):
    """CIFAR-10's eval pattern: ``Saver(ema.variables_to_restore()).restore(...)``."""
    key = "num_updates"
    variables, gs, opt, ema = _build(key)

    @co.function
    def step(grads):
        opt.apply_gradients(list(zip(grads, variables)), global_step=gs)
        return ema.apply(variables)

    for t in range(STEPS):
        step([jnp.asarray(ARRAYS[f"{key}:{v.op.name}/g"][t]) for v in variables])
    path = co.train.Saver().save(None, str(tmp_path / "model.ckpt"), global_step=gs)

    co.reset_default_graph()  # the evaluation program: fresh variables, no apply
    fresh = [co.Variable(jnp.zeros_like(v.value), name=v.op.name) for v in variables]
    co.train.get_or_create_global_step()
    eval_ema = co.train.ExponentialMovingAverage(0.999)
    to_restore = eval_ema.variables_to_restore()
    assert sorted(to_restore) == ["global_step", "h/ExponentialMovingAverage",
                                  "w/ExponentialMovingAverage"]
    co.train.Saver(to_restore).restore(None, path)
    for v in fresh:
        assert _bits_equal(v.value, ARRAYS[f"{key}:trajectory:{v.op.name}/ExponentialMovingAverage"]
                           [STEPS])


def test_zero_debias_leaves_variables_alone():
    """TF1 debiases only non-Variable tensors: fixture ``zero_debias_vars`` has no
    ``biased``/``local_step`` and matches the plain average (``test_steps_match_tf1``)."""
    assert META["zero_debias_vars"]["tracked"] == ["w/avg"]


def _state():
    return ([v.name for v in co.global_variables()],
            [v.name for v in ema_module.moving_average_variables()],
            [np.asarray(v.value).tobytes() for v in co.global_variables()])


@pytest.mark.parametrize("case", ["int_variable", "python_float", "numpy_array",
                                  "variable_not_list", "decay_string", "partial_failure"])
def test_errors_match_tf1_and_change_nothing(case):
    w = co.Variable(jnp.ones(3), name="w")
    i = co.Variable(np.int32(3), name="i")
    ema = co.train.ExponentialMovingAverage(0.9)
    calls = {
        "int_variable": lambda: ema.apply([i]),
        "python_float": lambda: ema.apply([1.0]),
        "numpy_array": lambda: ema.apply([np.ones(3, np.float32)]),
        "variable_not_list": lambda: ema.apply(w),
        "decay_string": lambda: co.train.ExponentialMovingAverage("x").apply([w]),
        "partial_failure": lambda: ema.apply([w, 1.0]),
    }
    expected = ERRORS[case]
    before = _state()
    with pytest.raises(Exception) as info:
        calls[case]()
    for base in expected["bases"]:  # TF1's built-in exception types are caught
        assert isinstance(info.value, getattr(builtins, base))
    message = str(info.value)
    if case in ("int_variable", "decay_string"):
        assert message == expected["message"]
    elif case in ("python_float", "partial_failure"):
        assert message.startswith(expected["message"])
    assert _state() == before  # TF1 keeps w/ExponentialMovingAverage on partial failure
    assert ema.average(w) is None
    if case == "partial_failure":
        assert ERRORS["partial_failure_variables"] == ["w:0", "w/ExponentialMovingAverage:0"]
    ema.apply([w])  # the names a failed call took are free again
    assert _avg(ema, w).name == "w/ExponentialMovingAverage:0"


def test_apply_twice_makes_one_shadow():
    w = co.Variable(jnp.ones(3), name="w")
    ema = co.train.ExponentialMovingAverage(0.9)
    before = {v.name for v in co.global_variables()}
    ema.apply([w])
    ema.apply([w])
    new = [v.name for v in co.global_variables() if v.name not in before]
    assert len(new) == len(ERRORS["apply_twice_new_variables"]) == 1


def test_default_var_list_is_trainable_variables():
    w = co.Variable(jnp.ones(2), name="w")
    co.Variable(jnp.ones(2), name="frozen", trainable=False)
    ema = co.train.ExponentialMovingAverage(0.9)
    ema.apply()
    assert [v.name for v in ema_module.moving_average_variables()] == [w.name]
