"""Resume equivalence: TF1 trains 50 steps and saves; compatopt restores and trains 50 more;
the result equals TF1 training 100 steps.

Runs without TensorFlow: the TF1 checkpoint was converted by
``compatopt.train.convert_tf1_checkpoint`` when the fixture was recorded
(``tools/make_tf1_checkpoint_fixtures.py``), and the 50 later steps use the gradients TF
computed (recorded), so every update sees exactly TF's inputs. Adam, Nesterov momentum and
centered RMSProp on dense float32 are bit-exact in the functional core, so the comparison
is bit for bit (``assert_array_equal``) on CPU: variables, every slot,
``beta1_power``/``beta2_power`` and the global step. On a GPU XLA's float32 division and
square root are approximate (README, Exactness), so there only dense momentum stays
bit-exact and Adam/RMSProp are held to the tolerance below. Training with compatopt's own gradients (``minimize``) is compared
within ``rtol=1e-5``, since XLA's and TF's matmuls differ in the last bits.
"""

import json
import os

import jax
import numpy as np
import pytest

import compatopt as co
from compatopt import checkpoint as C
from compatopt.train import saver as S

from .ckpt_problem import CONFIGS, FIXTURES, STEPS_AFTER, STEPS_BEFORE, VARS, problem

REF = np.load(os.path.join(FIXTURES, "reference.npz"))
with open(os.path.join(FIXTURES, "names.json")) as _f:
    NAMES = json.load(_f)
RULES = {"Adam": co.adam, "Momentum": co.momentum, "RMSProp": co.rmsprop}


def converted(cfg):
    return os.path.join(FIXTURES, cfg, "converted", f"model.ckpt-{STEPS_BEFORE}")


def build(cfg, init=None):
    """The model as a ported TF1 program builds it: variables, step, optimizer, slots."""
    kind, kwargs, _ = CONFIGS[cfg]
    init = init or problem()[2]
    params = {n: co.Variable(init[n], name=n) for n in VARS}
    step = co.train.get_or_create_global_step()
    opt = getattr(co.train, kind + "Optimizer")(**kwargs)
    S.create_slots(opt, [params[n] for n in VARS])
    return params, step, opt


def bit_exact_here(cfg):
    """Whether the core is bit-exact for this configuration on the default device."""
    return jax.default_backend() == "cpu" or cfg == "momentum"


def close(got, want, err_msg):
    """rtol 1e-5; entries near zero are held to 1e-5 of their array's largest magnitude."""
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.max(np.abs(want))),
                               err_msg=err_msg)


def check_step100(cfg, params, opt, step, exact=True):
    compare = np.testing.assert_array_equal if exact and bit_exact_here(cfg) else close
    ref = {k.split("/", 2)[2]: REF[k] for k in REF.files if k.startswith(f"{cfg}/step100/")}
    got = {v.op.name: v.numpy() for v in co.global_variables()}
    assert sorted(got) == sorted(ref)
    for name in ref:
        if name == "global_step":
            assert int(got[name]) == int(ref[name]) == STEPS_BEFORE + STEPS_AFTER
        else:
            compare(got[name], ref[name], err_msg=f"{cfg}: {name}")


def test_converted_checkpoint_holds_tf1s_step50_values():
    for cfg in CONFIGS:
        listed = S.list_variables(converted(cfg))
        assert listed == [(n, NAMES[cfg][n]["shape"]) for n in sorted(NAMES[cfg])]
        reader = S.load_checkpoint(converted(cfg))
        for name, dtype in reader.get_variable_to_dtype_map().items():
            assert dtype.name == NAMES[cfg][name]["dtype"]
            np.testing.assert_array_equal(reader.get_tensor(name), REF[f"{cfg}/step50/{name}"])


def test_shim_names_match_tf1_checkpoint():
    """create_slots makes exactly the TF1 checkpoint's names (slots, non-slots, step)."""
    for cfg in CONFIGS:
        co.reset_default_graph()
        build(cfg)
        assert sorted(v.op.name for v in co.global_variables()) == sorted(NAMES[cfg])


@pytest.mark.parametrize("cfg", sorted(CONFIGS))
def test_restore_then_apply_recorded_gradients_is_bit_exact(cfg):
    params, step, opt = build(cfg)
    S.Saver().restore(None, converted(cfg))
    assert int(step.numpy()) == STEPS_BEFORE
    for i in range(STEPS_AFTER):
        grads = [(REF[f"{cfg}/grads/{n}"][i], params[n]) for n in VARS]
        opt.apply_gradients(grads, global_step=step)
    check_step100(cfg, params, opt, step)


@pytest.mark.parametrize("cfg", sorted(CONFIGS))
def test_functional_load_then_apply_is_bit_exact(cfg):
    kind, kwargs, slots = CONFIGS[cfg]
    rule = RULES[kind](**kwargs)
    _, _, init = problem()
    like = {"hidden": {"kernel": init["hidden/kernel"], "bias": init["hidden/bias"]},
            "out": {"kernel": init["out/kernel"], "bias": init["out/bias"]}}
    params, state = C.load(converted(cfg), rule, jax.eval_shape(lambda: like))
    assert int(state.count) == STEPS_BEFORE

    @jax.jit
    def step(params, state, grads):
        return rule.apply(grads, state, params)

    for i in range(STEPS_AFTER):
        g = {"hidden": {"kernel": REF[f"{cfg}/grads/hidden/kernel"][i],
                        "bias": REF[f"{cfg}/grads/hidden/bias"][i]},
             "out": {"kernel": REF[f"{cfg}/grads/out/kernel"][i],
                     "bias": REF[f"{cfg}/grads/out/bias"][i]}}
        params, state = step(params, state, g)
    got = C.to_tf1(rule, params, state, global_step=state.count)
    want = {k.split("/", 2)[2]: REF[k] for k in REF.files if k.startswith(f"{cfg}/step100/")}
    assert sorted(got) == sorted(want)
    compare = np.testing.assert_array_equal if bit_exact_here(cfg) else close
    for name in want:
        compare(got[name], want[name], err_msg=f"{cfg}: {name}")


def test_restore_then_minimize_matches_tf1_within_tolerance():
    """A ported loop: restore, then ``minimize`` with compatopt's own gradients."""
    import jax.numpy as jnp
    cfg = "adam"
    x, y, _ = problem()
    params, step, opt = build(cfg)
    S.Saver().restore(None, converted(cfg))

    def loss():
        h = jnp.tanh(x @ params["hidden/kernel"] + params["hidden/bias"].value)
        return jnp.mean(jnp.square(h @ params["out/kernel"] + params["out/bias"].value - y))

    losses = []
    with jax.default_matmul_precision("highest"):  # GPUs default to TF32 for float32 matmuls
        for _ in range(STEPS_AFTER):
            losses.append(float(loss()))
            opt.minimize(loss, global_step=step)
    np.testing.assert_allclose(losses, REF[f"{cfg}/loss"], rtol=1e-5)
    check_step100(cfg, params, opt, step, exact=False)


def test_tf1_checkpoint_without_tensorflow_is_read_natively(monkeypatch):
    """TF1 checkpoints no longer need TensorFlow: the tensor bundle is read natively."""
    monkeypatch.setitem(__import__("sys").modules, "tensorflow", None)  # import fails
    build("adam")
    tf1 = os.path.join(FIXTURES, "adam", "tf1", f"model.ckpt-{STEPS_BEFORE}")
    S.Saver().restore(None, tf1)
    names = [n for n, _ in S.list_variables(os.path.dirname(tf1))]
    assert "global_step" in names and any(n.endswith("/Adam") for n in names)
    assert S.latest_checkpoint(os.path.dirname(tf1)) == tf1
