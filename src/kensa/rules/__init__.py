"""Rules in Kensa's YAML schema: the data model (:mod:`~kensa.rules.model`), a bounded
YAML reader that keeps line numbers (:mod:`~kensa.rules.yaml`), field validation
(:mod:`~kensa.rules.schema`, steps' and checks' fields with their handlers' and check
methods' own schemas), and the loaders that turn files into rules (:mod:`~kensa.rules.load`)."""

from typing import TYPE_CHECKING

from kensa._exports import lazy_exports
from kensa.errors import RuleError

if TYPE_CHECKING:
    from kensa.rules.load import load_rule_file, load_rule_set, load_rules, parse_rule
    from kensa.rules.model import RULE_CHECK, CapabilityGate, Check, Implementation, Platform, Reference, Rule
    from kensa.rules.model import RuleProblem, RuleSet, Severity, SourceLocation
    from kensa.rules.variables import Variables, load_variables
    from kensa.rules.schema import RULE_ID_PATTERN, SUPPORTED_CHECK_METHODS, SUPPORTED_MECHANISMS
    from kensa.rules.yaml import MAX_NESTING_DEPTH, MAX_RULE_FILE_BYTES

# Imported on first use: reading an inventory needs kensa.rules.yaml alone, not the schema
# and with it every handler and check module (a remote command logs in meanwhile).
__getattr__, __dir__ = lazy_exports(__name__, globals(), {
    "kensa.rules.load": ["load_rule_file", "load_rule_set", "load_rules", "parse_rule"],
    "kensa.rules.model": ["RULE_CHECK", "CapabilityGate", "Check", "Implementation", "Platform", "Reference", "Rule",
                          "RuleProblem", "RuleSet", "Severity", "SourceLocation"],
    "kensa.rules.variables": ["Variables", "load_variables"],
    "kensa.rules.schema": ["RULE_ID_PATTERN", "SUPPORTED_CHECK_METHODS", "SUPPORTED_MECHANISMS"],
    "kensa.rules.yaml": ["MAX_NESTING_DEPTH", "MAX_RULE_FILE_BYTES"],
})

__all__ = [
    "MAX_NESTING_DEPTH",
    "MAX_RULE_FILE_BYTES",
    "RULE_CHECK",
    "RULE_ID_PATTERN",
    "SUPPORTED_CHECK_METHODS",
    "SUPPORTED_MECHANISMS",
    "CapabilityGate",
    "Check",
    "Implementation",
    "Platform",
    "Reference",
    "Rule",
    "RuleError",
    "RuleProblem",
    "RuleSet",
    "Severity",
    "SourceLocation",
    "Variables",
    "load_rule_file",
    "load_rule_set",
    "load_rules",
    "load_variables",
    "parse_rule",
]
