"""use_locking=True serialises concurrent apply_gradients on one optimizer."""

import threading

import jax.numpy as jnp
import numpy as np

import compatopt as co


def test_eight_threads_times_200_applies_lose_no_update():
    w = co.Variable(jnp.zeros(3), name="w")
    gs = co.train.get_or_create_global_step()
    opt = co.train.MomentumOptimizer(1.0, 0.0, use_locking=True)
    grad = jnp.ones(3)
    errors = []

    def worker():
        try:
            for _ in range(200):
                opt.apply_gradients([(grad, w)], global_step=gs)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert int(gs.numpy()) == 1600
    # every apply subtracts exactly 1 (momentum 0: accum = g): integers are exact in f32
    np.testing.assert_array_equal(w.numpy(), [-1600.0] * 3)
    np.testing.assert_array_equal(opt.get_slot(w, "momentum").numpy(), [1.0] * 3)


# ----------------------------------------------------------------- threads and compiled steps

THREADS, STEPS = 8, 100


def _run_threads(worker, n=THREADS):
    errors = []

    def guarded(i):
        try:
            worker(i)
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a thread is stuck (deadlock?)"
    assert not errors, errors[:3]


def test_compiled_steps_from_eight_threads_lose_nothing():
    """TF1's ``sess.run(train_op)`` from many threads, locked: every update lands."""
    w = co.Variable(jnp.zeros(()), name="w")
    gs = co.train.get_or_create_global_step()
    opt = co.train.GradientDescentOptimizer(1.0, use_locking=True)
    step = co.function(lambda: opt.minimize(lambda: jnp.sum(w.value), global_step=gs))
    step()  # compile once; the threads then run the compiled step

    _run_threads(lambda i: [step() for _ in range(STEPS)])
    assert float(w.numpy()) == -(THREADS * STEPS + 1)
    assert int(gs.numpy()) == THREADS * STEPS + 1


def test_unlocked_compiled_and_eager_steps_never_fail():
    """use_locking=False may race as TF1 does, but no call fails or reads a donated buffer."""
    w = co.Variable(jnp.zeros(64), name="w")
    gs = co.train.get_or_create_global_step()
    opt = co.train.GradientDescentOptimizer(1.0)
    step = co.function(lambda: opt.minimize(lambda: jnp.sum(w.value), global_step=gs))
    step()
    seen = []

    def worker(i):
        for _ in range(STEPS // 4):
            if i % 2:
                step()
            else:
                opt.minimize(lambda: jnp.sum(w.value), global_step=gs)
            value = np.asarray(w.value)  # never a deleted or torn buffer
            seen.append(bool(np.all(value == value[0])))

    _run_threads(worker)
    assert all(seen)
    assert -float(w.numpy()[0]) <= THREADS * (STEPS // 4) + 1


def test_two_locked_optimizers_on_one_variable_serialise():
    """The lock is the variable's (TF1's mutex), not the optimizer's."""
    w = co.Variable(jnp.zeros(3), name="w")
    opts = [co.train.GradientDescentOptimizer(1.0, use_locking=True) for _ in range(2)]
    grad = jnp.ones(3)
    _run_threads(lambda i: [opts[i % 2].apply_gradients([(grad, w)]) for _ in range(STEPS)])
    np.testing.assert_array_equal(w.numpy(), [-float(THREADS * STEPS)] * 3)


def test_steps_sharing_several_variables_in_other_orders_do_not_deadlock():
    a, b = co.Variable(jnp.zeros(2), name="a"), co.Variable(jnp.zeros(2), name="b")
    opt = co.train.GradientDescentOptimizer(1.0, use_locking=True)
    forward = co.function(lambda: opt.apply_gradients([(jnp.ones(2), a), (jnp.ones(2), b)]))
    backward = co.function(lambda: opt.apply_gradients([(jnp.ones(2), b), (jnp.ones(2), a)]))
    forward(), backward()
    _run_threads(lambda i: [(forward if i % 2 else backward)() for _ in range(STEPS // 2)])
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert float(a.numpy()[0]) == -(THREADS * (STEPS // 2) + 2)


def test_a_failed_apply_rolls_back_only_its_own_variables():
    """Variables other threads create meanwhile stay in the graph (and in checkpoints)."""
    w = co.Variable(jnp.zeros(3), name="w")
    opt = co.train.AdamOptimizer(0.1)
    made = []
    start = threading.Barrier(2)

    def failing_slots(var_list):
        for v in var_list:
            opt._zeros_slot(v, "m", opt._name)
        start.wait(timeout=30)   # the other thread creates its variables now
        start.wait(timeout=30)
        raise RuntimeError("boom")

    opt._create_slots = failing_slots

    def other():
        start.wait(timeout=30)
        made.extend(co.Variable(jnp.ones(()), name=f"other_{k}") for k in range(20))
        start.wait(timeout=30)

    t = threading.Thread(target=other)
    t.start()
    try:
        opt.apply_gradients([(jnp.ones(3), w)])
    except RuntimeError:
        pass
    t.join(timeout=30)
    names = [v.op.name for v in co.global_variables()]
    assert names == ["w"] + [f"other_{k}" for k in range(20)]
    assert opt.get_slot(w, "m") is None
    assert opt.variables() == []
    # the slot's name is free again: the next (successful) apply makes w/Adam, as TF1 would
    del opt._create_slots
    opt.apply_gradients([(jnp.ones(3), w)])
    assert opt.get_slot(w, "m").op.name == "w/Adam"


def test_saves_while_eight_threads_step_are_consistent(tmp_path):
    """Every checkpoint written during training holds one step: w, its slot and
    global_step agree."""
    w = co.Variable(jnp.zeros(4), name="w")
    gs = co.train.get_or_create_global_step()
    opt = co.train.MomentumOptimizer(1.0, 0.0, use_locking=True)  # w = -step, accum = 1
    step = co.function(lambda: opt.minimize(lambda: jnp.sum(w.value), global_step=gs))
    step()
    saver = co.train.Saver(max_to_keep=None)
    done = threading.Event()
    saved = []

    def saving():
        k = 0
        while not done.is_set() and k < 40:
            saved.append(saver.save(None, str(tmp_path / "m"), global_step=gs))
            k += 1

    t = threading.Thread(target=saving)
    t.start()
    try:
        _run_threads(lambda i: [step() for _ in range(STEPS // 2)])
    finally:
        done.set()
        t.join(timeout=60)
    assert saved
    for prefix in saved:
        stepno = int(co.train.load_variable(prefix, "global_step"))
        assert prefix.endswith(f"-{stepno}")
        np.testing.assert_array_equal(co.train.load_variable(prefix, "w"), [-stepno] * 4)
        np.testing.assert_array_equal(co.train.load_variable(prefix, "w/Momentum"), [1.0] * 4)


def test_concurrent_saves_keep_the_state_file_consistent(tmp_path):
    w = co.Variable(jnp.zeros(2), name="w")
    saver = co.train.Saver(max_to_keep=2)
    _run_threads(lambda i: [saver.save(None, str(tmp_path / "m"), global_step=i * 100 + k)
                            for k in range(5)], n=4)
    state = co.train.get_checkpoint_state(str(tmp_path))
    for p in state.all_model_checkpoint_paths:
        assert co.train.checkpoint_exists(p), p
    assert co.train.checkpoint_exists(state.model_checkpoint_path)
    assert w.shape == (2,)
