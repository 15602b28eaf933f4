"""TF1's extension hooks, written with jnp and var.assign, eagerly and compiled.

The references are TF1 runs of the same subclasses written with ``tf`` ops
(``tools/make_tf1_shim_fixtures.py``): BERT's AdamWeightDecay (``examples/``) and a
momentum variant that uses the remaining hooks (non-slot variable, ``_finish``,
``_get_or_make_slot``, sparse rows, callable hyper-parameter).
"""

import importlib.util
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

import compatopt as co

from .conftest import FIXTURES
from .shim_models import mlp_loss, sparse_loss
from .shim_problem import problem

REF = np.load(os.path.join(FIXTURES, "subclasses.npz"))
with open(os.path.join(FIXTURES, "subclasses.json")) as f:
    NAMES = json.load(f)

_spec = importlib.util.spec_from_file_location(
    "adamw_subclass", os.path.join(os.path.dirname(__file__), "..", "..", "examples",
                                   "adamw_subclass.py"))
adamw = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(adamw)


class CountingMomentum(co.train.Optimizer):
    """Momentum whose step is divided by (1 + number of applies so far)."""

    def __init__(self, learning_rate, momentum, name="CountingMomentum"):
        super().__init__(False, name)
        self._lr, self._mu = learning_rate, momentum

    def _create_slots(self, var_list):
        first = min(var_list, key=lambda v: v.name)
        self._create_non_slot_variable(initial_value=0.0, name="applies", colocate_with=first)
        for v in var_list:
            self._get_or_make_slot(v, jnp.ones_like(v.value) * 0.5, "acc", self._name)

    def _prepare(self):
        self._lr_t = jnp.float32(self._call_if_callable(self._lr))

    def _resource_apply_dense(self, grad, var):
        acc = self.get_slot(var, "acc")
        n = self._get_non_slot_variable("applies")
        new_acc = acc * self._mu + grad
        acc.assign(new_acc)
        var.assign_sub(self._lr_t * new_acc / (1.0 + n))

    def _resource_apply_sparse(self, grad, var, indices):
        acc = self.get_slot(var, "acc")
        rows = acc.value.at[indices].get(mode="fill", fill_value=0) * self._mu + grad
        acc.scatter_update(co.IndexedSlices(rows, indices))
        var.scatter_sub(co.IndexedSlices(self._lr_t * rows, indices))

    def _finish(self, update_ops, name_scope):
        self._get_non_slot_variable("applies").assign_add(1.0)


def _cases():
    mlp, sp = problem()
    return {
        "AdamWeightDecay": (lambda: adamw.AdamWeightDecayOptimizer(
            0.01, weight_decay_rate=0.01, exclude_from_weight_decay=["b1", "b2"]),
            mlp["init"], lambda p: mlp_loss(p, mlp["x"], mlp["y"]), 50),
        "CountingMomentum": (lambda: CountingMomentum(lambda: 0.05, 0.9), mlp["init"],
                             lambda p: mlp_loss(p, mlp["x"], mlp["y"]), 30),
        "CountingMomentum@sparse": (lambda: CountingMomentum(0.05, 0.9), sp["init"],
                                    lambda p: sparse_loss(p, sp["ids"], sp["c"]), 20),
    }


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "function"])
@pytest.mark.parametrize("name", sorted(_cases()))
def test_subclass_matches_tf1(name, compiled):
    make, init, loss_of, steps = _cases()[name]
    params = {k: co.Variable(v, name=k) for k, v in init.items()}
    opt = make()

    def step():
        value = loss_of(params)
        opt.minimize(lambda: loss_of(params))
        return value

    run = co.function(step) if compiled else step
    losses = np.asarray([float(run()) for _ in range(steps)], np.float32)
    if compiled:
        assert run.trace_count == 1
    np.testing.assert_allclose(losses, REF[f"{name}/loss"], rtol=1e-5)
    for k, v in params.items():
        want = REF[f"{name}/var/{k}"]
        np.testing.assert_allclose(v.numpy(), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    assert [v.name for v in opt.variables()] == NAMES[name]


def test_builtin_subclass_overriding_a_hook_uses_the_hooks_and_equals_the_fast_path():
    calls = []

    class TracedAdam(co.train.AdamOptimizer):
        def _resource_apply_dense(self, grad, var):
            calls.append(var.op.name)
            return super()._resource_apply_dense(grad, var)

    w = co.Variable(np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3), name="w")
    u = co.Variable(np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3), name="u")
    a, b = TracedAdam(0.1), co.train.AdamOptimizer(0.1)
    for _ in range(5):
        a.minimize(lambda: jnp.sum(jnp.sin(w.value) * w))
        b.minimize(lambda: jnp.sum(jnp.sin(u.value) * u))
    assert calls == ["w"] * 5
    np.testing.assert_array_equal(w.numpy(), u.numpy())
    np.testing.assert_array_equal(a.get_slot(w, "v").numpy(), b.get_slot(u, "v").numpy())
    np.testing.assert_array_equal(a._get_beta_accumulators()[0].numpy(),
                                  b._get_beta_accumulators()[0].numpy())


def test_ref_variable_style_subclass_with_apply_dense_only():
    class PlainSGD(co.train.Optimizer):
        def __init__(self):
            super().__init__(False, "PlainSGD")

        def _apply_dense(self, grad, var):
            var.assign_sub(0.5 * grad)

    w = co.Variable(jnp.ones(2), name="w")
    PlainSGD().minimize(lambda: jnp.sum(w * w))
    np.testing.assert_array_equal(w.numpy(), [0.0, 0.0])


def test_base_optimizer_without_hooks_raises_not_implemented():
    w = co.Variable(jnp.ones(2), name="w")
    with pytest.raises(NotImplementedError):
        co.train.Optimizer(False, "Bare").minimize(lambda: jnp.sum(w * w))
    np.testing.assert_array_equal(w.numpy(), [1.0, 1.0])


def test_ref_variable_style_sparse_hook_receives_deduplicated_indexed_slices():
    seen = []

    class SparseSGD(co.train.Optimizer):
        def __init__(self):
            super().__init__(False, "SparseSGD")

        def _apply_sparse(self, grad, var):
            seen.append(np.asarray(grad.indices).tolist())
            var.scatter_sub(co.IndexedSlices(0.5 * grad.values, grad.indices))

    emb = co.Variable(jnp.zeros((4, 2)), name="emb")
    SparseSGD().minimize(lambda: jnp.sum(emb.sparse_read(jnp.array([2, 0, 2]))))
    assert sorted(seen[0]) == [0, 2]
    np.testing.assert_array_equal(emb.numpy(), [[-0.5, -0.5], [0, 0], [-1, -1], [0, 0]])
