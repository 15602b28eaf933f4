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


def test_jnp_on_a_variable_fails_with_a_type_error():
    w = co.Variable(jnp.ones(2), name="w")
    with pytest.raises(TypeError):
        jnp.dot(w, jnp.ones(2))
    opt = co.train.GradientDescentOptimizer(0.1)
    with pytest.raises(TypeError, match=r"w\.value"):
        opt.minimize(lambda: jnp.sum(np.asarray(w)))


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


def test_jnp_function_on_a_variable_is_a_type_error_naming_the_variable_type():
    """JAX 0.10 no longer converts ``__jax_array__`` objects in ``jnp.*`` and offers no hook
    to change its message (checked: ``pytype_aval_mappings`` hints are dropped), so the
    error is JAX's TypeError naming the type; README item 1 says to read ``w.value``."""
    w = co.Variable(np.ones(2, np.float32), name="tanh_w")
    with pytest.raises(TypeError, match="Variable"):
        jnp.tanh(w)
    np.testing.assert_array_equal(jnp.tanh(w.value), np.tanh(np.ones(2, np.float32)))
