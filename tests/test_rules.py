"""Loading Kensa-schema rule files: valid rules, unsupported ones, malformed and hostile input."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kensa.handlers as handlers
import kensa.rules.load as rules
import kensa.rules.yaml as rules_yaml
from kensa.errors import KensaError, RuleError
from kensa.model import Step, Transaction
from kensa.rules import (
    CapabilityGate,
    Rule,
    Severity,
    load_rule_file,
    load_rules,
    parse_rule,
)

DATA = Path(__file__).parent / "data" / "rules"
EXAMPLES = Path(__file__).parent.parent / "examples" / "rules"
MINIMAL = (
    "id: r\ntitle: t\nseverity: low\nimplementations:\n"
    "  - default: true\n    remediation: {mechanism: file_absent, path: /x}\n"
)


@pytest.fixture(params=["libyaml", "pure-python"])
def yaml_loader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Run a test with libyaml's parser and with PyYAML's pure-Python one (hosts without libyaml)."""
    if request.param == "libyaml":
        if not hasattr(yaml, "CSafeLoader"):
            pytest.skip("PyYAML was built without libyaml")
        monkeypatch.setattr(rules_yaml, "_LOADER", yaml.CSafeLoader)
    else:
        monkeypatch.setattr(rules_yaml, "_LOADER", yaml.SafeLoader)
    yield request.param


def by_id(loaded: list[Rule]) -> dict[str, Rule]:
    return {rule.id: rule for rule in loaded}


# --- valid rules -------------------------------------------------------------


def test_valid_directory_loads_recursively_in_sorted_path_order() -> None:
    """A directory is searched recursively for .yml/.yaml files, sorted by path."""
    loaded = load_rules([DATA / "valid"])
    assert [Path(rule.source.path).relative_to(DATA / "valid").as_posix() for rule in loaded] == [
        "config-append-hosts-deny.yaml",
        "network/sshd-gated.yml",
        "remove-rhosts.yml",
    ]


def test_directory_walk_skips_hidden_files_and_other_suffixes() -> None:
    """Hidden files and directories and non-YAML files are skipped (the hidden ones are broken on purpose)."""
    names = {Path(rule.source.path).name for rule in load_rules([DATA / "valid"])}
    assert "ignored.yml" not in names and ".editor-swap.yml" not in names and "README.txt" not in names


def test_valid_rule_fields_and_steps() -> None:
    """Metadata, platforms, gates, checks and remediation steps come out as typed, frozen values."""
    rule = by_id(load_rules([DATA / "valid"]))["sshd-x11-forwarding-off"]
    assert rule.title == "Disable X11 forwarding in sshd"
    assert rule.severity is Severity.MEDIUM
    assert rule.category == "access-control"
    assert rule.tags == ("ssh",)
    assert rule.transactional is False
    assert rule.supported and rule.unsupported_reason == ""
    assert rule.source.line == 1 and str(rule.source).endswith("sshd-gated.yml:1")
    (platform,) = rule.platforms
    assert (platform.family, platform.min_version, platform.max_version, platform.derivatives) == (
        "rhel",
        8,
        9,
        False,
    )

    dropin, gated, default = rule.implementations
    assert dropin.when == CapabilityGate(all_of=("sshd_config_d",)) and not dropin.default
    assert [check.method for check in dropin.checks] == ["config_value"]
    assert dropin.checks[0].params["expected"] == "no"
    assert dropin.steps == (
        Step(
            "file_content",
            {"path": "/etc/ssh/sshd_config.d/50-kensa.conf", "content": "X11Forwarding no\n", "mode": "0600"},
        ),
    )
    assert gated.when == CapabilityGate(all_of=("sshd_present", "systemd"), none_of=("container",))
    assert [step.mechanism for step in gated.steps] == ["config_set", "command_exec"]
    assert gated.steps[1].params == {"run": "sshd -t"}
    assert gated.checks == ()
    assert default.default and default.when is None
    assert default.steps == (
        Step(
            "config_set",
            {"path": "/etc/ssh/sshd_config", "key": "X11Forwarding", "value": "no", "separator": " "},
        ),
    )
    with pytest.raises(AttributeError):
        rule.id = "other"  # type: ignore[misc]


def test_single_document_markers_and_yaml_suffix_are_accepted() -> None:
    """A file with an explicit '---' start and '...' end is one rule; '.yaml' files load like '.yml'."""
    loaded = by_id(load_rules([DATA / "valid"]))
    rule = loaded["no-hosts-equiv"]
    assert rule.severity is Severity.CRITICAL
    assert rule.category == "" and rule.platforms == () and rule.transactional is True
    assert rule.implementations[0].checks[0].method == "file_not_exists"
    assert loaded["hosts-deny-all"].implementations[0].steps == (
        Step("config_append", {"path": "/etc/hosts.deny", "line": "ALL: ALL"}),
    )


def test_select_implementation_takes_first_satisfied_gate_then_default() -> None:
    """Gated implementations are tried in order; the default is chosen when no gate holds."""
    rule = by_id(load_rules([DATA / "valid"]))["sshd-x11-forwarding-off"]
    dropin, gated, default = rule.implementations
    assert rule.select_implementation({"sshd_config_d", "sshd_present", "systemd"}) is dropin
    assert rule.select_implementation({"sshd_present", "systemd"}) is gated
    assert rule.select_implementation({"sshd_present", "systemd", "container"}) is default
    assert rule.select_implementation(set()) is default


def test_select_implementation_without_default_can_find_none() -> None:
    """A rule with only gated implementations selects nothing on a host lacking the capability."""
    rule = parse_rule(
        "id: gated\ntitle: t\nseverity: low\nimplementations:\n"
        "  - when: {any: [a, b]}\n    remediation: {mechanism: file_absent, path: /etc/x}\n"
    )
    assert rule.select_implementation({"c"}) is None
    assert rule.select_implementation({"b"}) is rule.implementations[0]
    with pytest.raises(RuleError, match="no default implementation"):
        rule.to_transaction("localhost")


def test_capability_gate_semantics() -> None:
    """all_of needs every name, any_of at least one, none_of none of them."""
    gate = CapabilityGate(all_of=("a",), any_of=("b", "c"), none_of=("d",))
    assert gate.satisfied_by({"a", "c"})
    assert not gate.satisfied_by({"a"})
    assert not gate.satisfied_by({"b", "c"})
    assert not gate.satisfied_by({"a", "b", "d"})


def test_to_transaction_carries_rule_id_steps_host_and_transactional_flag() -> None:
    """The transaction built from an implementation runs exactly its steps for this rule and host."""
    rule = by_id(load_rules([DATA / "valid"]))["sshd-x11-forwarding-off"]
    gated = rule.implementations[1]
    txn = rule.to_transaction("web01", gated)
    assert isinstance(txn, Transaction)
    assert (txn.rule, txn.host, txn.steps, txn.transactional) == (
        "sshd-x11-forwarding-off",
        "web01",
        gated.steps,
        False,
    )
    assert rule.to_transaction("web01").steps == rule.implementations[2].steps


def test_to_transaction_refuses_a_foreign_implementation() -> None:
    """An implementation that belongs to another rule is refused."""
    loaded = by_id(load_rules([DATA / "valid"]))
    other = loaded["no-hosts-equiv"].implementations[0]
    with pytest.raises(RuleError, match="not one of rule 'sshd-x11-forwarding-off'"):
        loaded["sshd-x11-forwarding-off"].to_transaction("localhost", other)


def test_examples_load_and_are_all_supported() -> None:
    """The shipped example rules load with the default mechanism set and need nothing unsupported."""
    loaded = load_rules([EXAMPLES])
    mechanisms = {step.mechanism for rule in loaded for impl in rule.implementations for step in impl.steps}
    assert {"config_set", "sysctl_set", "file_permissions", "audit_rule_set", "file_content"} <= mechanisms
    assert all(rule.supported for rule in loaded), [rule.unsupported_reason for rule in loaded]
    for rule in loaded:
        assert Path(rule.source.path).stem == rule.id, "example files are named after their rule id"


def test_same_file_reached_twice_is_loaded_once() -> None:
    """Naming a directory and a file inside it does not load the file twice (and is no duplicate id)."""
    loaded = load_rules([DATA / "valid", DATA / "valid" / "remove-rhosts.yml"])
    assert [rule.id for rule in loaded].count("no-hosts-equiv") == 1


def test_load_rules_accepts_string_paths_and_explicit_files() -> None:
    """Strings and Path objects both work, and a file named directly loads whatever its suffix."""
    rule = load_rule_file(str(DATA / "valid" / "remove-rhosts.yml"))
    assert rule.id == "no-hosts-equiv"
    assert [r.id for r in load_rules([str(DATA / "valid" / "remove-rhosts.yml")])] == ["no-hosts-equiv"]


def test_supported_mechanisms_match_the_handler_registry() -> None:
    """The loader's default mechanism names are exactly the built-in handlers' names."""
    assert {cls.name for cls in handlers.HANDLERS} == set(rules.SUPPORTED_MECHANISMS)


def test_handlers_and_checks_import_neither_rules_nor_engine() -> None:
    """The registries sit below the rule loader: no module of kensa.handlers or kensa.checks
    imports kensa.rules or kensa.engine, at its top or inside a function (the loader reads
    the registries, never the reverse)."""
    import ast

    import kensa.checks as checks

    upward = []
    for package in (handlers, checks):
        for source in sorted(Path(package.__file__).parent.glob("*.py")):
            for node in ast.walk(ast.parse(source.read_text(), str(source))):
                names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
                if isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                upward += [f"{source.name}: {name}" for name in names if name.startswith(("kensa.rules", "kensa.engine"))]
    assert upward == []


def test_supported_check_methods_match_the_checks_registry() -> None:
    """The loader's default check methods are exactly the checks registry's names."""
    import kensa.checks as checks

    assert set(checks.CHECKS) == set(rules.SUPPORTED_CHECK_METHODS)
    assert len(checks.CHECKS) == len(set(checks.CHECKS)) > 8


# --- unsupported rules: loaded and reported, not raised -------------------------

# kensa has a handler for every mechanism of Kensa's schema; a caller with fewer
# (here: all but dconf_set) shows what a rule using a missing one does.
WITHOUT_DCONF = rules.SUPPORTED_MECHANISMS - {"dconf_set"}


def test_unsupported_mechanism_is_reported_not_raised() -> None:
    """A Kensa mechanism the caller has no handler for loads; the rule says which mechanism and where."""
    rule = load_rule_file(DATA / "unsupported" / "dconf-mechanism.yml", mechanisms=WITHOUT_DCONF)
    assert not rule.supported
    assert "mechanism 'dconf_set'" in rule.unsupported_reason
    assert "implementations[0].remediation.mechanism" in rule.unsupported_reason
    assert rule.implementations[0].steps[0].mechanism == "dconf_set"
    with pytest.raises(RuleError, match="dconf_set"):
        rule.to_transaction("localhost")


def test_unsupported_check_method_is_reported_not_raised() -> None:
    """A check method kensa cannot evaluate makes the implementation unsupported, naming the method."""
    rule = load_rule_file(DATA / "unsupported" / "pam-module-check.yml")
    impl = rule.implementations[0]
    assert not impl.supported and not impl.checks[0].supported
    assert "check method 'pam_module'" in impl.unsupported_reason
    assert impl.steps[0].mechanism == "command_exec"


def test_unknown_field_on_a_supported_mechanism_is_unsupported_with_a_hint() -> None:
    """A field kensa does not implement (here a misspelling) is not silently ignored."""
    rule = load_rule_file(DATA / "unsupported" / "unknown-field.yml")
    assert not rule.supported
    assert "field 'implementations[0].remediation.seperator'" in rule.unsupported_reason
    assert "did you mean 'separator'?" in rule.unsupported_reason


def test_kensa_fields_no_handler_acts_on_make_the_rule_unsupported() -> None:
    """Kensa's reload and onlyif are not carried out: a rule using them is reported, not run without them."""
    rule = parse_rule(
        "id: r\ntitle: t\nseverity: low\nimplementations:\n"
        "  - default: true\n    remediation:\n      steps:\n"
        "        - {mechanism: config_set, path: /etc/ssh/sshd_config, key: A, value: b, reload: sshd}\n"
        "        - {mechanism: command_exec, run: /bin/true, onlyif: /bin/false}\n"
    )
    assert not rule.supported
    assert (
        "field 'implementations[0].remediation.steps[0].reload' of mechanism 'config_set'"
        in rule.unsupported_reason
    )
    assert (
        "field 'implementations[0].remediation.steps[1].onlyif' of mechanism 'command_exec'"
        in rule.unsupported_reason
    )


def test_unknown_mechanism_name_suggests_the_close_one() -> None:
    """A misspelt mechanism is reported as unknown with the closest real name."""
    rule = parse_rule(
        "id: r\ntitle: t\nseverity: low\nimplementations:\n"
        "  - default: true\n    remediation: {mechanism: sysctl_sett, key: a.b, value: '1'}\n"
    )
    assert not rule.supported
    assert "unknown mechanism 'sysctl_sett'" in rule.unsupported_reason
    assert "did you mean 'sysctl_set'?" in rule.unsupported_reason


def test_unsupported_gated_variant_leaves_the_default_usable() -> None:
    """Only the unsupported implementation is marked; the supported default still builds a transaction."""
    rule = load_rule_file(DATA / "unsupported" / "gated-only.yml", mechanisms=WITHOUT_DCONF)
    gated, default = rule.implementations
    assert not gated.supported and default.supported and not rule.supported
    assert rule.unsupported_reason == gated.unsupported_reason
    assert rule.to_transaction("localhost", rule.select_implementation(set())).steps == default.steps


def test_mechanism_set_is_a_parameter() -> None:
    """The mechanisms a caller has handlers for are a parameter: the same rule loads as
    supported with dconf_set among them and unsupported without."""
    path = DATA / "unsupported" / "dconf-mechanism.yml"
    assert load_rule_file(path).supported
    assert not load_rule_file(path, mechanisms=WITHOUT_DCONF).supported
    narrow = load_rules([DATA / "valid"], mechanisms={"file_absent"})
    assert {rule.id: rule.supported for rule in narrow} == {
        "hosts-deny-all": False,
        "sshd-x11-forwarding-off": False,
        "no-hosts-equiv": True,
    }


def test_check_method_set_is_a_parameter() -> None:
    """Check methods are a parameter too: without config_value the gated sshd variant is unsupported."""
    rule = load_rule_file(DATA / "valid" / "network" / "sshd-gated.yml", check_methods={"file_exists"})
    assert not rule.implementations[0].supported
    assert "check method 'config_value'" in rule.implementations[0].unsupported_reason
    assert rule.implementations[2].supported


# --- malformed rules: RuleError naming file, line and field ----------------------

MALFORMED = [
    # file, line, field (None: not about one field), words the message must contain
    ("mechanism-list.yml", 7, "implementations[0].remediation.mechanism", "expected a string, got list"),
    ("missing-title.yml", 1, "title", "required field is missing"),
    ("bad-severity.yml", 3, "severity", "'urgent' is not one of"),
    ("bad-id.yml", 1, "id", "not a valid rule id"),
    ("unquoted-bool-value.yml", 10, "implementations[0].remediation.value", "got bool; quote it"),
    ("unquoted-mode.yml", 9, "implementations[0].remediation.mode", "quoted octal string"),
    ("relative-path.yml", 8, "implementations[0].remediation.path", "not an absolute path"),
    ("dotdot-path.yml", 8, "implementations[0].remediation.path", "'..' component"),
    ("newline-in-value.yml", 10, "implementations[0].remediation.value", "single line"),
    ("two-defaults.yml", 7, "implementations[1].default", "second default implementation"),
    ("no-gate.yml", 5, "implementations[0]", "needs a 'when' capability gate or 'default: true'"),
    (
        "steps-and-mechanism.yml",
        7,
        "implementations[0].remediation.mechanism",
        "either 'steps' or 'mechanism'",
    ),
    ("empty-steps.yml", 7, "implementations[0].remediation.steps", "at least one entry"),
    ("syntax-error.yml", 3, None, "YAML syntax error"),
    ("alias-bomb.yml", 2, None, "alias '*a' is not allowed"),
    ("multi-document.yml", 7, None, "second YAML document"),
    ("empty.yml", 1, None, "rule file is empty"),
    ("not-a-mapping.yml", 1, None, "must hold a mapping of rule fields, got list"),
    ("duplicate-key.yml", 4, "title", "duplicate key (first at line 2)"),
    ("non-string-key.yml", 4, None, "mapping key '42' (read as int) in the top level is not a string"),
    ("unknown-field.yml", 2, "titel", "did you mean 'title'?"),
    ("deep-nesting.yml", 2, None, "nesting deeper than"),
    ("python-tag.yml", 1, None, "YAML tag 'tag:yaml.org,2002:python/object/apply:os.system' is not allowed"),
    ("sysctl-key-escape.yml", 8, "implementations[0].remediation.key", "not a sysctl parameter name"),
    ("when-list.yml", 5, "implementations[0].when", "capability name or a mapping"),
    ("version-order.yml", 7, "platforms[0].max_version", "below min_version 9"),
    ("missing-path.yml", 6, "implementations[0].remediation.path", "required field is missing"),
    ("bad-regex.yml", 9, "implementations[0].check.pattern", "not a valid regular expression"),
    ("control-char-title.yml", 2, "title", "single line without control characters"),
    ("not-utf8.yml", 2, None, "not UTF-8 text"),
]


@pytest.mark.parametrize("name, line, field, words", MALFORMED, ids=[case[0] for case in MALFORMED])
def test_malformed_rule_names_file_line_and_field(
    yaml_loader: str, name: str, line: int, field: Optional[str], words: str
) -> None:
    """Each malformed file raises RuleError whose message starts with file:line and names the field."""
    path = DATA / "malformed" / name
    with pytest.raises(RuleError) as caught:
        load_rule_file(path)
    message = str(caught.value)
    assert message.startswith(f"{path}:{line}: "), message
    if field is not None:
        assert f"field '{field}': " in message, message
    assert words in message, message


def test_every_malformed_data_file_has_an_expectation() -> None:
    """The malformed corpus and the expectation table stay in step: no file goes untested."""
    assert sorted(p.name for p in (DATA / "malformed").iterdir()) == sorted(case[0] for case in MALFORMED)


def _audit_rule_file(rule: str) -> str:
    return (
        "id: r\ntitle: t\nseverity: low\nimplementations:\n"
        f"  - default: true\n    remediation: {{mechanism: audit_rule_set, rule: '{rule}'}}\n"
    )


@pytest.mark.parametrize(
    "rule, option",
    [
        ("-w /etc/passwd -p wa -k identity -e 2", "-e"),
        ("-w /etc/passwd -p wa -f 2", "-f"),
        ("-a always,exit -S open -k x -D x", "-D"),
        ("-a always,exit -S open -b 8192", "-b"),
        ("-w /etc/passwd -p wa -W /etc/passwd", "-W"),
        ("-e 0", "-e"),
        ("-D", "-D"),
    ],
)
def test_audit_rule_with_a_control_option_is_a_rule_error(rule: str, option: str) -> None:
    """The loader refuses a rule line carrying a control or deletion option anywhere, naming it."""
    with pytest.raises(RuleError) as caught:
        parse_rule(_audit_rule_file(rule))
    message = str(caught.value)
    assert "field 'implementations[0].remediation.rule': " in message, message
    assert f"'{option}'" in message, message


@pytest.mark.parametrize("rule", ["-e 2", "-k logins", "-b 8192", "-w /etc/passwd -p wa -k identity\n-e 2"])
def test_kensa_audit_control_lines_load_as_unsupported(rule: str) -> None:
    """Kensa's schema takes audit lines that set audit's state or name rules by key only
    ('-e 2', '-k logins'); kensa's handler does not carry them out. Such a rule loads,
    unsupported, with the handler's reason at its field: it is not a malformed rule."""
    impl = parse_rule(_audit_rule_file(rule.replace("\n", "\\n")).replace("'", '"')).implementations[0]
    assert not impl.supported
    assert "field 'implementations[0].remediation.rule' of mechanism 'audit_rule_set': kensa " in impl.unsupported_reason


def test_audit_rule_of_allowed_options_loads() -> None:
    """Watches with -p/-k/-F key= and syscall rules with -S/-F/-C/-k load."""
    for rule in ("-w /etc/passwd -p wa -k identity", "-w /etc/sudoers.d/ -F key=scope",
                 "-a always,exit -F arch=b64 -S sethostname -C auid!=uid -k loc"):
        assert parse_rule(_audit_rule_file(rule)).implementations[0].supported


SYSCTL_KEYS = [
    ("net.ipv4.ip_forward", True),
    ("net/ipv4/conf/eth0.100/forwarding", True),
    ("net.ipv4.conf.eth0/100.forwarding", True),
    ("kernel", True),
    ("net/../../../etc/shadow", False),
    ("kernel/..", False),
    ("net..ipv4", False),
    ("net/ipv4/./ip_forward", False),
    ("net.ipv4.conf.eth0@1.forwarding", False),
    ("net.ipv4.conf.eth0:1.forwarding", False),
    ("net.ipv4.", False),
]


@pytest.mark.parametrize("key, accepted", SYSCTL_KEYS, ids=[k for k, _ in SYSCTL_KEYS])
def test_loader_and_handler_accept_the_same_sysctl_keys(key: str, accepted: bool) -> None:
    """The loader's sysctl key validation is the handler's: a key loads exactly when the handler takes it."""
    text = (
        "id: r\ntitle: t\nseverity: low\nimplementations:\n"
        f"  - default: true\n    remediation: {{mechanism: sysctl_set, key: '{key}', value: '1'}}\n"
    )
    try:
        parse_rule(text)
        loaded = True
    except RuleError as exc:
        assert "not a sysctl parameter name" in str(exc)
        loaded = False
    try:
        handlers.SysctlSet()._desired({"key": key, "value": "1"})
        taken = True
    except handlers.ParamError:
        taken = False
    assert (loaded, taken) == (accepted, accepted)


def test_document_marker_alone_is_an_empty_rule() -> None:
    """A file holding only '---' is reported as empty, not as a null value."""
    with pytest.raises(RuleError, match="<string>:1: the YAML document is empty"):
        parse_rule("---\n")


def test_rule_error_is_a_kensa_error_and_a_value_error() -> None:
    """RuleError can be caught as KensaError or as ValueError."""
    with pytest.raises(KensaError):
        parse_rule("[]")
    with pytest.raises(ValueError):
        parse_rule("[]")


def test_malformed_file_in_a_directory_stops_the_load() -> None:
    """load_rules raises for the first malformed file in path order rather than skipping it."""
    with pytest.raises(RuleError, match=r"alias-bomb\.yml:2: "):
        load_rules([DATA / "malformed"])


def test_duplicate_rule_ids_name_both_files() -> None:
    """Two files defining one id raise RuleError naming both files and lines."""
    with pytest.raises(RuleError) as caught:
        load_rules([DATA / "duplicate"])
    message = str(caught.value)
    assert f"{DATA / 'duplicate' / 'second.yml'}:3: rule id 'same-id'" in message
    assert f"{DATA / 'duplicate' / 'first.yml'}:1" in message


def test_missing_path_is_a_rule_error() -> None:
    """A path that does not exist raises RuleError naming it, not FileNotFoundError."""
    with pytest.raises(RuleError, match="no such rule file or directory"):
        load_rules([DATA / "does-not-exist"])
    with pytest.raises(RuleError, match="cannot read rule file"):
        load_rule_file(DATA / "does-not-exist.yml")


def test_directory_given_as_a_file_is_a_rule_error() -> None:
    """load_rule_file on a directory raises RuleError, not IsADirectoryError."""
    with pytest.raises(RuleError, match="cannot read rule file"):
        load_rule_file(DATA / "valid")


def test_oversized_file_is_refused_before_parsing(tmp_path: Path) -> None:
    """A file over MAX_RULE_FILE_BYTES is refused with its size, whatever it holds."""
    big = tmp_path / "big.yml"
    big.write_text("# " + "x" * rules.MAX_RULE_FILE_BYTES + "\n")
    with pytest.raises(
        RuleError, match=rf"big\.yml:1: rule file is \d+ bytes, over the {rules.MAX_RULE_FILE_BYTES}"
    ):
        load_rule_file(big)


def test_billion_laughs_is_refused_at_the_first_alias(yaml_loader: str) -> None:
    """An alias-expansion bomb is refused at its first alias instead of being expanded."""
    levels = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    levels += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 10)]
    with pytest.raises(RuleError, match=r"<string>:2: YAML alias '\*l0' is not allowed"):
        parse_rule("\n".join(levels))


def test_deep_nesting_is_refused_without_recursion(yaml_loader: str) -> None:
    """Nesting far past the interpreter's recursion limit gives RuleError, not RecursionError."""
    depth = sys.getrecursionlimit() * 4
    with pytest.raises(RuleError, match="nesting deeper than"):
        parse_rule("a: " + "[" * depth + "]" * depth)
    with pytest.raises(RuleError, match="nesting deeper than"):
        parse_rule("".join("  " * i + f"k{i}:\n" for i in range(100)))


def test_explicit_str_tag_is_allowed_and_other_scalar_tags_are_not(yaml_loader: str) -> None:
    """'!!str' only makes a value text; tags that construct other types are refused."""
    text = MINIMAL.replace("title: t", "title: !!str 123")
    assert parse_rule(text).title == "123"
    with pytest.raises(RuleError, match="YAML tag 'tag:yaml.org,2002:int' is not allowed"):
        parse_rule("id: !!int 5\n")
    with pytest.raises(RuleError, match="YAML tag 'tag:yaml.org,2002:set' is not allowed"):
        parse_rule("tags: !!set {a: null}\n")


def test_non_string_and_complex_keys_are_refused(yaml_loader: str) -> None:
    """YAML 1.1 booleans, nulls and collections as keys are refused with the key's line."""
    for text, shown in [
        ("id: r\non: x\n", "'on' (read as bool)"),
        ("~: x\n", "'~' (read as null)"),
        ("? [a]\n: x\n", "a list or mapping"),
    ]:
        with pytest.raises(RuleError) as caught:
            parse_rule(text)
        assert f"mapping key {shown}" in str(caught.value)


def test_lone_surrogate_in_text_is_a_rule_error() -> None:
    """A str that cannot be encoded as UTF-8 (a lone surrogate) gives RuleError."""
    with pytest.raises(RuleError, match="not valid Unicode"):
        parse_rule("id: \ud800\n")


def test_byte_order_mark_is_accepted() -> None:
    """A UTF-8 byte order mark, as some editors write, does not break loading."""
    assert parse_rule(b"\xef\xbb\xbf" + MINIMAL.encode()).id == "r"
    assert parse_rule("\ufeff" + MINIMAL).id == "r"


# --- hypothesis: hostile input gives a Rule or a RuleError, nothing else -----------

FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

VALID_RULE = {
    "id": "fuzzed-rule",
    "title": "A rule",
    "severity": "high",
    "category": "access-control",
    "tags": ["ssh"],
    "platforms": [{"family": "rhel", "min_version": 8}],
    "implementations": [
        {
            "when": "cap",
            "check": {"method": "config_value", "path": "/etc/ssh/sshd_config", "key": "A", "expected": "no"},
            "remediation": {
                "mechanism": "config_set",
                "path": "/etc/ssh/sshd_config",
                "key": "A",
                "value": "no",
            },
        },
        {
            "default": True,
            "remediation": {"steps": [{"mechanism": "sysctl_set", "key": "a.b", "value": "1"}]},
        },
    ],
}

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=20),
    st.sampled_from(
        ["no", "yes", "0644", "~", "*a", "&a", "!!int x", "<<", "=", "2024-01-01", "/etc/x", "config_set"]
    ),
)
yamlish = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(
            st.one_of(st.text(max_size=12), st.sampled_from(sorted(VALID_RULE))), children, max_size=5
        ),
    ),
    max_leaves=30,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            found += _paths(child, prefix + (key,))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += _paths(child, prefix + (index,))
    return found


def _replace(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[path[0]] = _replace(copy[path[0]], path[1:], new)
    return copy


def assert_only_rule_error(data: Any) -> None:
    try:
        result = parse_rule(data, "fuzz.yml")
    except RuleError as exc:
        assert str(exc).startswith("fuzz.yml:"), str(exc)
    else:
        assert isinstance(result, Rule)


@FUZZ
@given(st.text(max_size=400))
def test_random_text_gives_rule_or_rule_error(yaml_loader: str, text: str) -> None:
    """Arbitrary text never raises anything but RuleError, and errors always name the file."""
    assert_only_rule_error(text)


@FUZZ
@given(st.binary(max_size=400))
def test_random_bytes_give_rule_or_rule_error(yaml_loader: str, data: bytes) -> None:
    """Arbitrary bytes never raise anything but RuleError."""
    assert_only_rule_error(data)


@FUZZ
@given(st.text(alphabet=list("[]{}:-?&*!|>'\"#%@` \n\t,.~\\abc019"), max_size=300))
def test_yaml_punctuation_soup_gives_rule_or_rule_error(yaml_loader: str, text: str) -> None:
    """Text made of YAML syntax characters (anchors, tags, flow, block scalars) gives RuleError at worst."""
    assert_only_rule_error(text)


@FUZZ
@given(yamlish)
def test_random_yaml_structures_give_rule_or_rule_error(yaml_loader: str, value: Any) -> None:
    """Any YAML document PyYAML can write, of any shape, loads or raises RuleError."""
    assert_only_rule_error(yaml.safe_dump(value, allow_unicode=True))


@FUZZ
@given(st.data())
def test_mutated_valid_rule_gives_rule_or_rule_error(yaml_loader: str, data: st.DataObject) -> None:
    """Replacing any part of a valid rule with a random value never escapes as another exception."""
    path = data.draw(st.sampled_from(_paths(VALID_RULE)))
    mutated = _replace(VALID_RULE, path, data.draw(yamlish))
    assert_only_rule_error(yaml.safe_dump(mutated, allow_unicode=True))


def test_unmutated_fuzz_seed_is_valid() -> None:
    """The seed the mutation test starts from is itself a supported rule (so mutations probe real paths)."""
    rule = parse_rule(yaml.safe_dump(VALID_RULE))
    assert rule.supported and rule.select_implementation({"cap"}) is rule.implementations[0]


def test_integers_outside_64_bits_are_refused_naming_file_and_line(tmp_path: Path) -> None:
    """A hex integer of 5,000 digits (beyond Python's decimal digit limit) and a decimal one past 64 bits are RuleErrors at their line."""
    for number in ("0x" + "f" * 5000, str(2**63), str(-(2**63) - 1)):
        path = tmp_path / "big.yml"
        path.write_text(f"id: big\ntitle: {number}\n")
        with pytest.raises(RuleError, match=rf"big.yml:2: cannot read number .*too large") as caught:
            load_rule_file(path)
        assert len(str(caught.value)) < 300
    path.write_text(f"id: big\ntitle: t\nseverity: {2**63 - 1}\n")
    with pytest.raises(RuleError, match="big.yml:3: field 'severity'"):
        load_rule_file(path)


def test_a_fifo_among_rule_files_is_refused_without_blocking(tmp_path: Path) -> None:
    """load_rules on a directory holding a FIFO named *.yml raises RuleError naming it instead of waiting for a writer."""
    os.mkfifo(tmp_path / "pipe.yml")
    with pytest.raises(RuleError, match=r"pipe.yml: cannot read rule file: not a regular file \(a FIFO\)"):
        load_rules([tmp_path])


# --- the loader and the handlers read a step's fields with one schema --------------

SAME_VERDICT = [
    # mechanism fields, whether both the loader and the handler take them
    ({"mechanism": "config_set", "path": "/etc/ssh/sshd_config", "key": "Match", "value": "all"}, False),
    ({"mechanism": "config_set", "path": "/etc/ssh/sshd_config", "key": "match", "value": "User bob"}, False),
    ({"mechanism": "config_set", "path": "/etc/ssh/sshd_config", "key": "PermitRootLogin", "value": "no"}, True),
    ({"mechanism": "config_set", "path": "/etc/ssh/sshd_config", "key": "Port#x", "value": "22"}, False),
    ({"mechanism": "file_permissions", "path": "/etc/issue", "mode": "0644"}, True),
    ({"mechanism": "file_permissions", "path": "/etc/issue", "mode": "644"}, True),
    ({"mechanism": "file_permissions", "path": "/etc/issue", "mode": "4755"}, True),
    ({"mechanism": "file_permissions", "path": "/etc/issue", "mode": "7"}, True),
    ({"mechanism": "file_permissions", "path": "/etc/issue", "mode": "00644"}, True),
    ({"mechanism": "file_permissions", "path": "/etc/issue", "mode": "0o644"}, False),
    ({"mechanism": "file_permissions", "path": "/etc/issue", "mode": "0O644"}, False),
    ({"mechanism": "file_permissions", "path": "/etc/issue", "mode": " 644"}, False),
    ({"mechanism": "file_permissions", "path": "/etc/issue", "mode": "6_44"}, False),
    ({"mechanism": "file_permissions", "path": "/etc/issue", "mode": "+644"}, False),
    ({"mechanism": "file_permissions", "path": "/etc/issue", "mode": "10000"}, False),
    ({"mechanism": "file_content", "path": "/etc/motd", "content": "x\n", "mode": "0o600"}, False),
    ({"mechanism": "audit_rule_set", "rule": ["-w /etc/passwd -p wa -k id", "-w /etc/shadow -p wa -k id"]}, True),
]


@pytest.mark.parametrize("fields, accepted", SAME_VERDICT, ids=[f"{f['mechanism']}-{f.get('key', f.get('mode'))!r}" for f, _ in SAME_VERDICT])
def test_loader_and_handler_agree_on_a_steps_fields(tmp_path: Path, fields: dict[str, Any], accepted: bool) -> None:
    """A step's fields load exactly when its handler takes them at run time: chmod's numeric
    modes (octal digits up to 07777, leading zeros allowed) and no other spelling ('0o644' is
    Python's, '+644' is chmod's "add these bits"); sshd_config's 'Match' starts a conditional
    block and cannot be set as a key. So a rule that loads cannot end errored for its fields."""
    from kensa.hosts.local import LocalHost

    inline = ", ".join(f"{name}: {value!r}" for name, value in fields.items())
    text = f"id: r\ntitle: t\nseverity: low\nimplementations:\n  - default: true\n    remediation: {{{inline}}}\n"
    try:
        rule = parse_rule(text, "r.yml")
        assert rule.supported, rule.unsupported_reason
        loaded = True
    except RuleError as exc:
        field = next(name for name in fields if f"remediation.{name}'" in str(exc))
        assert str(exc).startswith("r.yml:6: field 'implementations[0].remediation."), exc
        assert field in ("key", "mode")
        loaded = False
    root = tmp_path / "root"
    (root / "etc" / "ssh").mkdir(parents=True)
    (root / "etc" / "audit" / "rules.d").mkdir(parents=True)
    for name in ("issue", "motd", "ssh/sshd_config"):
        (root / "etc" / name).write_text("")
    params = {name: value for name, value in fields.items() if name != "mechanism"}
    try:
        handlers.default_registry()[fields["mechanism"]].validate(LocalHost(str(root)), params)
        taken = True
    except handlers.ParamError:
        taken = False
    assert (loaded, taken) == (accepted, accepted)


@pytest.mark.parametrize("mode", ["u=rw", "go-w", "+t", "u=rwx,g=rx,o="])
def test_symbolic_mode_loads_as_supported(mode: str) -> None:
    """chmod's symbolic modes (Kensa's find-based rules use them) load as supported and the
    handler's schema reads them; each file then gets the mode chmod would give it."""
    text = MINIMAL.replace("{mechanism: file_absent, path: /x}", f"{{mechanism: file_permissions, path: /x, mode: '{mode}'}}")
    rule = parse_rule(text)
    assert rule.supported, rule.unsupported_reason
    assert handlers.default_registry()["file_permissions"].schema.read({"path": "/x", "mode": mode})["mode"] == mode


@pytest.mark.parametrize("mode", ["u+q", "go-w,", "rwx", "0o644"])
def test_a_mode_neither_numeric_nor_symbolic_is_refused(mode: str) -> None:
    """A mode that is neither chmod's numeric nor its symbolic form is a ParamError naming it."""
    with pytest.raises(handlers.ParamError, match="mode"):
        handlers.default_registry()["file_permissions"].schema.read({"path": "/x", "mode": mode})


def test_match_key_error_says_why() -> None:
    """Setting 'Match' as a config_set key is refused with the reason: it opens a conditional block."""
    text = MINIMAL.replace(
        "{mechanism: file_absent, path: /x}", "{mechanism: config_set, path: /etc/ssh/sshd_config, key: Match, value: all}"
    )
    with pytest.raises(RuleError, match=r"<string>:6: field 'implementations\[0\]\.remediation\.key': .*conditional block"):
        parse_rule(text)


def test_python_prefixed_mode_error_says_how_to_write_it() -> None:
    """A '0o644' mode is refused naming chmod's spelling to use instead."""
    text = MINIMAL.replace("{mechanism: file_absent, path: /x}", "{mechanism: file_permissions, path: /x, mode: '0o644'}")
    with pytest.raises(RuleError, match=r"remediation\.mode': '0o644' .*'0644'"):
        parse_rule(text)


def test_a_checks_fields_are_read_by_its_methods_schema() -> None:
    """A check's fields are validated by the check method's own schema: a '0o644' mode in a
    file_permission check is refused at its field, as the check would refuse it at run time."""
    import kensa.checks as checks

    text = MINIMAL.replace(
        "  - default: true\n", "  - default: true\n    check: {method: file_permission, path: /x, mode: '0o644'}\n"
    )
    with pytest.raises(RuleError, match=r"<string>:6: field 'implementations\[0\]\.check\.mode': '0o644' is Python's"):
        parse_rule(text)
    with pytest.raises(handlers.ParamError, match="file_permission: mode '0o644' is Python's"):
        checks.CHECKS["file_permission"].evaluate(None, {"path": "/x", "mode": "0o644"})


def test_command_exec_refuses_both_run_and_its_other_name() -> None:
    """A step naming both 'run' and 'command' (its other name, as the README says) is refused at
    its file:line:field instead of running one command and silently ignoring the other; either
    name alone loads."""
    rule = (
        "id: r\ntitle: t\nseverity: low\nimplementations:\n  - default: true\n"
        "    remediation: {{mechanism: command_exec, {fields}, unless: 'true'}}\n"
    )
    with pytest.raises(RuleError, match=r"command.*other name of 'run'"):
        parse_rule(rule.format(fields="run: 'touch /a', command: 'touch /b'"))
    for fields in ("run: 'touch /a'", "command: 'touch /b'"):
        assert parse_rule(rule.format(fields=fields)).implementations[0].supported


def test_kensa_rules_keeps_the_names_it_exported_before_the_split() -> None:
    """kensa.rules still exports every public name it had as one module (the split into
    model, yaml, schema and load keeps its exports), so callers' imports keep working."""
    import kensa.rules as package

    exported_before = [
        "MAX_NESTING_DEPTH", "MAX_RULE_FILE_BYTES", "RULE_ID_PATTERN", "SUPPORTED_CHECK_METHODS",
        "SUPPORTED_MECHANISMS", "CapabilityGate", "Check", "Implementation", "Platform", "Rule",
        "RuleError", "Severity", "SourceLocation", "load_rule_file", "load_rules", "parse_rule",
    ]
    missing = [name for name in exported_before if not hasattr(package, name)]
    assert missing == []
    assert set(exported_before) <= set(package.__all__)
