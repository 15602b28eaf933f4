"""optax's own generic optimizer tests (``optax/_src/alias_test.py``), run on compatopt's rules.

The test module installed with optax is executed from its source with two substitutions:
its table ``_OPTIMIZERS_UNDER_TEST`` becomes :data:`TF1_TABLE` (compatopt's ten rules, with
hyper-parameters under which they converge on optax's parabola and Rosenbrock problems in
optax's 10,000 steps), and its ``alias`` module resolves those names to compatopt's rules.
Everything else (the problems, the tolerances, the no-recompilation checks, the extra-args,
``inject_hyperparams``, dtype-preservation, state-stability and ``MultiSteps`` tests) is
optax's code, unchanged.

What cannot apply, and why (never a silent skip):

* complex parameters: TF1's optimizers in compatopt update float16/bfloat16/float32/float64
  variables only (``TypeError``); the rules are added to optax's own list of optimizers
  that "do not support complex parameters", so those cases are skipped by optax's code with
  that message;
* ``test_explicit_dtype`` tests optax's ``sgd``/``adam``/``adamw`` ``mu_dtype`` arguments,
  which TF1's optimizers do not have (slots are always in the variable's dtype); it is not
  collected;
* ``LBFGSTest`` tests optax's L-BFGS only; not collected.
"""

from __future__ import annotations

import importlib.util
import re
import types

import pytest

import compatopt as co

pytest.importorskip("optax")
pytest.importorskip("absl.testing.parameterized")
pytest.importorskip("sklearn")
pytest.importorskip("scipy")

# 10,000 jitted steps per problem and rule: about a minute in all.
pytestmark = pytest.mark.slow

TF1_TABLE = (
    {"opt_name": "gradient_descent", "opt_kwargs": {"learning_rate": 1e-3}},
    {"opt_name": "momentum", "opt_kwargs": {"learning_rate": 1e-3, "momentum": 0.9}},
    {"opt_name": "momentum", "opt_kwargs": {"learning_rate": 1e-3, "momentum": 0.9,
                                            "use_nesterov": True}},
    {"opt_name": "adagrad", "opt_kwargs": {"learning_rate": 1.0}},
    {"opt_name": "adagrad_da", "opt_kwargs": {"learning_rate": 1.0}},
    {"opt_name": "adadelta", "opt_kwargs": {"learning_rate": 1.0, "rho": 0.9}},
    {"opt_name": "adam", "opt_kwargs": {"learning_rate": 0.1}},
    {"opt_name": "ftrl", "opt_kwargs": {"learning_rate": 1.0}},
    {"opt_name": "proximal_gradient_descent", "opt_kwargs": {"learning_rate": 1e-3}},
    {"opt_name": "proximal_adagrad", "opt_kwargs": {"learning_rate": 1.0}},
    {"opt_name": "rmsprop", "opt_kwargs": {"learning_rate": 5e-3}},
    {"opt_name": "rmsprop", "opt_kwargs": {"learning_rate": 5e-3, "momentum": 0.9}},
    {"opt_name": "rmsprop", "opt_kwargs": {"learning_rate": 5e-3, "momentum": 0.9,
                                           "centered": True}},
)
TF1_NAMES = tuple(sorted({entry["opt_name"] for entry in TF1_TABLE}))


def _alias_namespace() -> types.SimpleNamespace:
    from optax._src import alias

    ours = {name: getattr(co, name) for name in TF1_NAMES}
    ns = types.SimpleNamespace(**{k: getattr(alias, k) for k in dir(alias)
                                  if not k.startswith("__")})
    for name, factory in ours.items():
        setattr(ns, name, factory)
    return ns


def _load_optax_suite() -> types.ModuleType:
    spec = importlib.util.find_spec("optax._src.alias_test")
    if spec is None or spec.origin is None:
        pytest.skip("this optax installation ships without its tests (optax/_src/alias_test.py)",
                    allow_module_level=True)
    with open(spec.origin, encoding="utf-8") as f:
        source = f.read()
    table = re.search(r"^_OPTIMIZERS_UNDER_TEST = \($.*?^\)$", source, re.S | re.M)
    assert table is not None, "optax's alias_test.py no longer has _OPTIMIZERS_UNDER_TEST"
    source = source.replace(table.group(0), "_OPTIMIZERS_UNDER_TEST = _COMPAT_TABLE")
    assert source.count("from optax._src import alias\n") == 1
    source = source.replace("from optax._src import alias\n", "alias = _COMPAT_ALIAS\n")
    # optax's lists of optimizers without complex support: ours join them (see docstring).
    assert source.count("'fromage',") >= 2
    source = source.replace("'fromage',", "'fromage', *_COMPAT_NAMES,")
    module = types.ModuleType("optax_alias_suite_on_compatopt")
    module.__dict__.update(_COMPAT_TABLE=TF1_TABLE, _COMPAT_ALIAS=_alias_namespace(),
                           _COMPAT_NAMES=TF1_NAMES)
    exec(compile(source, spec.origin, "exec"), module.__dict__)  # noqa: S102
    return module


_suite = _load_optax_suite()


class TestOptaxAliasSuite(_suite.AliasTest):  # type: ignore[name-defined]
    """optax's ``AliasTest`` over :data:`TF1_TABLE`."""

    __test__ = True


# optax's sgd/adam mu_dtype test: TF1's optimizers have no slot-dtype argument.
for _name in [n for n in dir(TestOptaxAliasSuite) if n.startswith("test_explicit_dtype")]:
    setattr(TestOptaxAliasSuite, _name, None)


def test_the_suite_runs_every_rule():
    """Every rule of compatopt is in the table; optax's generic tests are all present."""
    assert set(TF1_NAMES) == {"gradient_descent", "momentum", "adagrad", "adagrad_da",
                              "adadelta", "adam", "ftrl", "proximal_gradient_descent",
                              "proximal_adagrad", "rmsprop"}
    methods = {n.split("_", 1)[1].rsplit("0", 1)[0] for n in dir(TestOptaxAliasSuite)
               if n.startswith("test_") and getattr(TestOptaxAliasSuite, n) is not None}
    for generic in ("optimization", "optimizers_accept_extra_args",
                    "optimizers_can_be_wrapped_in_inject_hyperparams", "preserve_dtype",
                    "state_shape_dtype_shard_stability", "gradient_accumulation"):
        assert any(m.startswith(generic) for m in methods), generic
