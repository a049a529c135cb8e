"""Rules in Kensa's YAML schema: the data model (:mod:`~kensa.rules.model`), a bounded
YAML reader that keeps line numbers (:mod:`~kensa.rules.yaml`), field validation
(:mod:`~kensa.rules.schema`, steps' and checks' fields with their handlers' and check
methods' own schemas), and the loaders that turn files into rules (:mod:`~kensa.rules.load`)."""

from kensa.errors import RuleError
from kensa.rules.load import (
    Check,
    Implementation,
    Rule,
    load_rule_file,
    load_rules,
    parse_rule,
)

__all__ = ["Check", "Implementation", "Rule", "RuleError", "load_rule_file", "load_rules", "parse_rule"]
