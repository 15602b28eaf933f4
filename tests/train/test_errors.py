"""Every error of spec §2/§3/§5: same exception type and message as recorded from TF1.

Messages that embed a ``repr`` are compared after normalising it: TF's ``<tf.Variable
'w:0' ...>`` is ``<compatopt.Variable 'w:0' ...>`` here, function addresses are dropped.
"""

import json
import os
import re

import jax.numpy as jnp
import numpy as np
import pytest

import compatopt as co

from .conftest import FIXTURES

with open(os.path.join(FIXTURES, "errors.json")) as f:
    ERRORS = json.load(f)

tr = co.train


def _norm(msg: str) -> str:
    msg = msg.replace("<tf.Variable", "<compatopt.Variable")
    msg = re.sub(r"<function \S+ at 0x[0-9a-f]+>", "<function>", msg)
    return re.sub(r"<object object at 0x[0-9a-f]+>", "<object>", msg)


def _w():
    return co.Variable(np.ones(2, np.float32), name="w")


def _cases():
    def gd():
        return tr.GradientDescentOptimizer(0.1)

    def wc_sparse():
        wc = co.Variable(np.ones((3, 2), np.float32), name="wc", constraint=lambda x: x)
        gd().apply_gradients([(co.IndexedSlices(jnp.ones((1, 2)), jnp.array([0]), (3, 2)),
                               wc)])

    def step_var(value):
        def f():
            co.Variable(value, name="step", trainable=False,
                        collections=["variables", "global_step"])
            tr.get_global_step()
        return f

    def twice():
        tr.create_global_step()
        tr.create_global_step()

    return {
        "empty_name": lambda: tr.GradientDescentOptimizer(0.1, name=""),
        "none_name": lambda: tr.AdamOptimizer(name=None),
        "adagrad_init": lambda: tr.AdagradOptimizer(0.1, initial_accumulator_value=0.0),
        "adagrad_init_before_name": lambda: tr.AdagradOptimizer(
            0.1, initial_accumulator_value=-1.0, name=""),
        "adagrad_da_init": lambda: tr.AdagradDAOptimizer(
            0.1, None, initial_gradient_squared_accumulator_value=0.0, name=""),
        "proximal_adagrad_init": lambda: tr.ProximalAdagradOptimizer(
            0.1, initial_accumulator_value=0.0, name=""),
        "ftrl_name_first": lambda: tr.FtrlOptimizer(0.1, initial_accumulator_value=-1.0,
                                                    name=""),
        "ftrl_init": lambda: tr.FtrlOptimizer(0.1, initial_accumulator_value=-1.0),
        "ftrl_power": lambda: tr.FtrlOptimizer(0.1, learning_rate_power=0.5),
        "ftrl_l1": lambda: tr.FtrlOptimizer(0.1, l1_regularization_strength=-1.0),
        "ftrl_l2": lambda: tr.FtrlOptimizer(0.1, l2_regularization_strength=-1.0),
        "ftrl_l2_shrinkage": lambda: tr.FtrlOptimizer(
            0.1, l2_shrinkage_regularization_strength=-1.0),
        "apply_empty": lambda: gd().apply_gradients([]),
        "apply_all_none": lambda: gd().apply_gradients([(None, _w())]),
        "apply_bad_grad": lambda: gd().apply_gradients([(object(), _w())]),
        "minimize_no_vars": lambda: gd().minimize(lambda: jnp.float32(1.0)),
        "minimize_unconnected": lambda: gd().minimize(lambda: jnp.float32(1.0),
                                                      var_list=[_w()]),
        "compute_gradients_tensor": lambda: gd().compute_gradients(jnp.float32(1.0)),
        "ftrl_callable_lr": lambda: (lambda w: tr.FtrlOptimizer(lambda: 0.1).minimize(
            lambda: jnp.sum(w * w)))(_w()),
        "adagrad_da_no_step": lambda: (lambda w: tr.AdagradDAOptimizer(0.1, None).minimize(
            lambda: jnp.sum(w * w)))(_w()),
        "sparse_constraint": wc_sparse,
        "assign_shape": lambda: _w().assign(np.ones(3, np.float32)),
        "gate_gradients": lambda: gd().compute_gradients(lambda: jnp.sum(_w().value),
                                                         gate_gradients=7),
        "aggregation_method": lambda: gd().compute_gradients(lambda: jnp.sum(_w().value),
                                                             aggregation_method=7),
        "create_global_step_twice": twice,
        "global_step_float": step_var(np.float32(0)),
        "global_step_not_scalar": step_var(np.zeros(2, np.int32)),
    }


CASES = _cases()


def test_every_recorded_error_has_a_case():
    assert sorted(CASES) == sorted(ERRORS)


# Cases whose reference is now TF1 graph mode (tests/train/test_error_contract.py replays
# both modes): graph mode's wording, TF1 eager's type still catches the error.
GRAPH_MODE_WORDING = {
    "apply_bad_grad": "Gradient must be convertible to a Tensor or IndexedSlices, or None: "
                      "<object> (the gradient for variable 'w')",
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_error_matches_tf1(case):
    want = ERRORS[case]
    with pytest.raises(Exception) as info:
        CASES[case]()
    assert want["type"] in [c.__name__ for c in type(info.value).__mro__]
    assert _norm(str(info.value)) == _norm(GRAPH_MODE_WORDING.get(case, want["message"]))


def test_unsupported_target_raises_not_implemented():
    with pytest.raises(NotImplementedError):
        tr.GradientDescentOptimizer(0.1).apply_gradients([(jnp.ones(2), jnp.ones(2))])


def test_a_failed_apply_changes_nothing():
    w = _w()
    v = co.Variable(np.ones(3, np.float32), name="v")
    gs = tr.get_or_create_global_step()
    opt = tr.AdamOptimizer(0.1)
    n_vars = len(co.global_variables())
    with pytest.raises(ValueError):  # second gradient has the wrong shape
        opt.apply_gradients([(jnp.ones(2), w), (jnp.ones(2), v)], global_step=gs)
    assert len(co.global_variables()) == n_vars and opt.variables() == []
    assert int(gs.numpy()) == 0 and np.all(w.numpy() == 1)
    opt.apply_gradients([(jnp.ones(2), w)], global_step=gs)
    assert int(gs.numpy()) == 1
    slots = [s.numpy() for s in opt.variables()]
    with pytest.raises(ValueError):
        opt.apply_gradients([(jnp.ones(2), w), (jnp.ones(2), v)], global_step=gs)
    assert int(gs.numpy()) == 1
    assert all(np.array_equal(a, s.numpy()) for a, s in zip(slots, opt.variables()))
    assert [s.name for s in opt.variables()] == ["beta1_power:0", "beta2_power:0",
                                                 "w/Adam:0", "w/Adam_1:0"]


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "function"])
@pytest.mark.parametrize("bad", ["shape", "dtype", "sparse_shape"])
def test_shim_errors_name_the_variable(bad, compiled):
    """A bad gradient's error names the variable (TF1 names the op), changes nothing."""
    w = co.Variable(jnp.zeros((3, 2)), name="hidden/kernel")
    opt = co.train.AdamOptimizer(0.1)
    grad = {"shape": jnp.ones((2, 3)), "dtype": jnp.ones((3, 2), jnp.float16),
            "sparse_shape": co.IndexedSlices(jnp.ones((2, 3)), jnp.asarray([0, 1]), (3, 2))}[bad]
    apply = (co.function(lambda: opt.apply_gradients([(grad, w)])) if compiled
             else lambda: opt.apply_gradients([(grad, w)]))
    with pytest.raises((TypeError, ValueError)) as info:
        apply()
    assert "hidden/kernel" in str(info.value)
    assert "[0]" not in str(info.value)
    np.testing.assert_array_equal(w.numpy(), np.zeros((3, 2)))
    assert opt.variables() == []
