"""Rules in Kensa's YAML schema: the data model, a bounded YAML reader that keeps
line numbers, the field schemas, and the loaders that turn files into rules."""

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
