"""compatopt.Variable, collections and the global-step helpers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import compatopt as co


def test_names_are_uniquified_as_tf1_graph_mode():
    a, b, c = co.Variable(1.0, name="w"), co.Variable(2.0, name="w"), co.Variable(3.0)
    assert (a.name, b.name, c.name) == ("w:0", "w_1:0", "Variable:0")
    assert a.op.name == "w" and b.op.name == "w_1"
    co.reset_default_graph()
    assert co.Variable(1.0, name="w").name == "w:0"


def test_metadata_and_conversion():
    w = co.Variable([[1.0, 2.0]], name="w")
    assert w.shape == (1, 2) and w.dtype == jnp.float32 and w.trainable
    assert isinstance(w.value, jax.Array)
    np.testing.assert_array_equal(w.numpy(), [[1.0, 2.0]])
    assert co.Variable(3).dtype == jnp.int32  # Python int -> int32, as TF
    assert co.Variable(lambda: jnp.zeros(2)).shape == (2,)
    with pytest.raises(ValueError, match="initial_value must be specified"):
        co.Variable()


def test_operators_return_arrays():
    w = co.Variable(jnp.array([1.0, 2.0]), name="w")
    x = np.array([3.0, 4.0], np.float32)
    for out, want in [(w + 1, [2, 3]), (1 - w, [0, -1]), (w * w, [1, 4]), (w / 2, [.5, 1]),
                      (2 ** w, [2, 4]), (w ** 2, [1, 4]), (-w, [-1, -2]), (x * w, [3, 8]),
                      (w[1], 2.0), (w > 1.5, [False, True])]:
        assert isinstance(out, jax.Array)
        np.testing.assert_array_equal(out, want)
    assert float(x @ w) == 11.0 and float(w @ x) == 11.0


def test_numpy_conversion_inside_a_loss_is_a_type_error_naming_value():
    w = co.Variable(jnp.ones(2), name="w")
    opt = co.train.GradientDescentOptimizer(0.1)
    with pytest.raises(TypeError, match=r"w\.value"):
        opt.minimize(lambda: jnp.sum(np.asarray(w)))
    np.testing.assert_array_equal(w.numpy(), [1, 1])


def test_assign_refuses_changed_shape_and_dtype():
    w = co.Variable(jnp.ones(2), name="w")
    with pytest.raises(ValueError, match="Shape mismatch"):
        w.assign(jnp.ones(3))
    with pytest.raises(TypeError):
        w.assign(jnp.ones(2, jnp.int32))
    np.testing.assert_array_equal(w.numpy(), [1, 1])
    w.assign([5.0, 6.0]).assign_add([1.0, 1.0])
    w.assign_sub(jnp.array([1.0, 1.0]))
    np.testing.assert_array_equal(w.numpy(), [5, 6])


def test_collections():
    a = co.Variable(1.0, name="a")
    b = co.Variable(2.0, name="b", trainable=False)
    assert co.global_variables() == [a, b]
    assert co.trainable_variables() == [a]
    co.reset_default_graph()
    assert co.global_variables() == [] and co.trainable_variables() == []


def test_global_step_helpers():
    assert co.train.get_global_step() is None
    gs = co.train.get_or_create_global_step()
    assert gs.name == "global_step:0" and not gs.trainable and gs.shape == ()
    assert jnp.issubdtype(gs.dtype, jnp.integer)
    assert co.train.get_or_create_global_step() is gs
    assert co.train.get_global_step() is gs
    assert co.train.global_step(None, gs) == 0
    assert gs in co.global_variables() and gs not in co.trainable_variables()


def test_sparse_read_out_of_range_raises_tf1s_gather_error():
    from compatopt.errors import InvalidArgumentError

    w = co.Variable(np.ones((4, 2), np.float32), name="emb_rows")
    with pytest.raises(InvalidArgumentError,
                       match=r"gather from variable 'emb_rows': indices\[1\] = 7 is not in "
                             r"\[0, 4\)"):
        w.sparse_read([1, 7])
    assert w.sparse_read([3, 0]).shape == (2, 2)


def test_jnp_lax_and_jit_read_a_variable_as_its_value():
    """JAX 0.10 no longer converts ``__jax_array__`` objects in ``jnp.*``; a Variable is
    registered with JAX instead (``compatopt.train._jax_values``): ``jnp.tanh(w)`` is
    ``jnp.tanh(w.value)``, a tracked read, eagerly, under autodiff and in a compiled step."""
    w = co.Variable(np.full(2, 0.5, np.float32), name="tanh_w")
    np.testing.assert_array_equal(jnp.tanh(w), jnp.tanh(jnp.full(2, 0.5, jnp.float32)))
    np.testing.assert_array_equal(jnp.matmul(w, jnp.ones(2)), jnp.matmul(w.value, jnp.ones(2)))
    np.testing.assert_array_equal(jax.lax.add(w, 1.0), w.value + 1.0)
    np.testing.assert_array_equal(jax.jit(lambda a: a * 2)(w), w.value * 2)
    assert jax.typeof(w).shape == (2,)

    opt = co.train.GradientDescentOptimizer(0.5)
    (grad, var), = opt.compute_gradients(lambda: jnp.sum(jnp.tanh(w)))  # no var_list
    assert var is w
    np.testing.assert_array_equal(grad, jax.grad(lambda x: jnp.sum(jnp.tanh(x)))(w.value))

    @co.function
    def step():
        return opt.minimize(lambda: jnp.sum(jnp.tanh(w)))

    by_hand = co.Variable(np.full(2, 0.5, np.float32), name="by_hand")

    @co.function
    def step_by_hand():
        return opt.minimize(lambda: jnp.sum(jnp.tanh(by_hand.value)))

    for _ in range(2):
        step()
        step_by_hand()
    np.testing.assert_array_equal(w.numpy(), by_hand.numpy())
    assert np.all(w.numpy() < 0.5)
