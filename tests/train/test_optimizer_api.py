"""Optimizer API details: var_list defaults, None and IndexedSlices gradients, grad_loss,
constants, decay-function learning rates."""

import jax.numpy as jnp
import numpy as np
import pytest

import compatopt as co

tr = co.train


def test_constants():
    assert (tr.Optimizer.GATE_NONE, tr.Optimizer.GATE_OP, tr.Optimizer.GATE_GRAPH) == (0, 1, 2)
    assert tr.AggregationMethod.ADD_N == tr.AggregationMethod.DEFAULT == 0
    assert tr.AggregationMethod.EXPERIMENTAL_TREE == 1
    assert tr.AggregationMethod.EXPERIMENTAL_ACCUMULATE_N == 2
    assert tr.AdamOptimizer().get_name() == "Adam"
    assert tr.FtrlOptimizer(0.1, name="F").get_name() == "F"


def test_default_var_list_is_trainable_variables_read_in_first_read_order():
    a = co.Variable(jnp.ones(2), name="a")
    b = co.Variable(jnp.ones(2), name="b")
    frozen = co.Variable(jnp.ones(2), name="frozen", trainable=False)
    co.Variable(jnp.ones(2), name="unused")
    gvs = tr.GradientDescentOptimizer(0.1).compute_gradients(
        lambda: jnp.sum(b * frozen) + jnp.sum(a * a) + jnp.sum(b.value))
    assert [v for _, v in gvs] == [b, a]
    np.testing.assert_array_equal(gvs[0][0], [2.0, 2.0])
    np.testing.assert_array_equal(gvs[1][0], [2.0, 2.0])


def test_explicit_var_list_gives_none_for_unconnected_and_integer_variables():
    a = co.Variable(jnp.ones(2), name="a")
    frozen = co.Variable(jnp.full(2, 3.0), name="frozen", trainable=False)
    unconnected = co.Variable(jnp.ones(2), name="u")
    counter = co.Variable(jnp.zeros(2, jnp.int32), name="counter")
    gvs = tr.GradientDescentOptimizer(0.1).compute_gradients(
        lambda: jnp.sum(a * frozen), var_list=[[a, frozen], unconnected, counter])
    assert [v for _, v in gvs] == [a, frozen, unconnected, counter]
    np.testing.assert_array_equal(gvs[1][0], [1.0, 1.0])  # non-trainable, but listed
    assert gvs[2][0] is None and gvs[3][0] is None


def test_grad_loss_scales_the_output_gradient():
    a = co.Variable(jnp.ones(2), name="a")
    gvs = tr.GradientDescentOptimizer(0.1).compute_gradients(
        lambda: a * 3.0, grad_loss=jnp.array([1.0, -2.0]))
    np.testing.assert_array_equal(gvs[0][0], [3.0, -6.0])


def test_none_gradients_are_skipped_and_get_no_slots():
    w = co.Variable(jnp.ones(2), name="w")
    u = co.Variable(jnp.ones(2), name="u")
    opt = tr.AdagradOptimizer(0.1)
    opt.apply_gradients([(jnp.ones(2), w), (None, u)])
    np.testing.assert_array_equal(u.numpy(), [1.0, 1.0])
    assert opt.get_slot(u, "accumulator") is None
    assert opt.get_slot(w, "accumulator").name == "w/Adagrad:0"


@pytest.mark.parametrize("kind", ["GradientDescent", "Adam", "Adagrad", "RMSProp"])
def test_indexed_slices_are_applied_sparsely_as_the_rule(kind):
    table = np.arange(12, dtype=np.float32).reshape(6, 2) / 10
    w = co.Variable(table, name="w")
    args = {"learning_rate": 0.1}
    opt = getattr(tr, kind + "Optimizer")(**args)
    rule = {"GradientDescent": co.gradient_descent, "Adam": co.adam, "Adagrad": co.adagrad,
            "RMSProp": co.rmsprop}[kind](**args)
    grad = co.IndexedSlices(jnp.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]),
                            jnp.array([4, 1, 4]), (6, 2))
    state = rule.init(jnp.asarray(table))
    p = jnp.asarray(table)
    for _ in range(3):
        opt.apply_gradients([(grad, w)])
        p, state = rule.apply(grad, state, p)
    np.testing.assert_array_equal(w.numpy(), np.asarray(p))
    if kind != "Adam":  # Adam decays every row, the others touch only the listed rows
        np.testing.assert_array_equal(w.numpy()[[0, 2, 3, 5]], table[[0, 2, 3, 5]])


def test_sparse_read_gives_indexed_slices_gradients():
    emb = co.Variable(jnp.ones((5, 2)), name="emb")
    gvs = tr.GradientDescentOptimizer(0.1).compute_gradients(
        lambda: jnp.sum(emb.sparse_read(jnp.array([3, 0, 3])) * 2.0))
    (g, v), = gvs
    assert v is emb and isinstance(g, co.IndexedSlices)
    np.testing.assert_array_equal(g.indices, [3, 0, 3])
    np.testing.assert_array_equal(g.values, np.full((3, 2), 2.0))


def test_decay_function_learning_rate_and_constraint():
    gs = tr.get_or_create_global_step()
    lr = tr.exponential_decay(1.0, gs, 1, 0.5, staircase=True)
    w = co.Variable(jnp.zeros(2), name="w", constraint=lambda v: jnp.clip(v.value, -1.25, 0))
    opt = tr.GradientDescentOptimizer(lr)
    for _ in range(3):
        opt.minimize(lambda: jnp.sum(w * 1.0), global_step=gs)
    # steps of 1, 0.5, 0.25, clipped at -1.25 after the third
    np.testing.assert_array_equal(w.numpy(), [-1.25, -1.25])
    assert int(gs.numpy()) == 3


def test_same_variable_twice_in_one_call_is_applied_twice():
    w = co.Variable(jnp.zeros(2), name="w")
    tr.GradientDescentOptimizer(1.0).apply_gradients([(jnp.ones(2), w), (jnp.ones(2), w)])
    np.testing.assert_array_equal(w.numpy(), [-2.0, -2.0])
