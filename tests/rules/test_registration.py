"""Every rule is registered everywhere a rule must be (docs/adding_a_rule.md).

A new rule file that is not exported, has no shim class, is missing from the generic test
table or from the compiled-exactness check fails here, naming the missing place.
"""

import importlib
import pathlib

import compatopt as co
from compatopt import rules

from .rule_table import RULES


def _rule_modules():
    here = pathlib.Path(rules.__file__).parent
    return [p.stem for p in here.glob("*.py") if p.stem != "__init__"]


def test_every_rule_file_exports_its_constructors_through_all_rules():
    declared = set(rules.ALL_RULES)
    for stem in _rule_modules():
        module = importlib.import_module(f"compatopt.rules.{stem}")
        public = {n for n in dir(module) if n in declared}
        assert public, f"compatopt/rules/{stem}.py defines no constructor listed in ALL_RULES"


def test_every_rule_is_public_has_a_shim_class_and_is_tested():
    shim = {getattr(cls, "_rule_fn", None) for cls in vars(co.train).values()
            if isinstance(cls, type) and issubclass(cls, co.train.Optimizer)}
    tested = {spec.factory for spec in RULES}
    from tests import test_exactness_compiled as compiled

    checked = {c.factory for c in compiled.CONFIGS}
    for name in rules.ALL_RULES:
        fn = getattr(rules, name)
        assert getattr(co, name, None) is fn, f"compatopt.{name} is not exported"
        assert fn in shim, f"no compatopt.train class has _rule_fn = rules.{name}"
        assert fn in tested, f"tests/rules/rule_table.py has no RuleSpec for co.{name}"
        assert name in checked, f"tests/test_exactness_compiled.py has no Config for {name}"
