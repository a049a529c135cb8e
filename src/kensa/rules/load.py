"""Load remediation rules written in Kensa's rule YAML schema.

A rule file holds one rule: metadata (``id``, ``title``, ``severity``,
``category``, ``tags``, ``platforms``) and a list of ``implementations``. Each
implementation pairs an optional ``check`` with a ``remediation`` and is either
gated by a ``when`` capability condition or marked ``default: true``::

    id: ssh-disable-root-login
    title: Disable SSH root login
    severity: high                  # low | medium | high | critical
    category: access-control
    tags: [ssh]
    transactional: true             # optional, default true
    platforms:
      - family: rhel
        min_version: 8
    implementations:
      - when: sshd_config_d         # a name, or {all: [...]}, {any: [...]}, {not: name}
        check: {method: config_value, path: /etc/ssh/sshd_config, key: PermitRootLogin, expected: "no"}
        remediation: {mechanism: config_set, path: /etc/ssh/sshd_config, key: PermitRootLogin, value: "no"}
      - default: true
        remediation:
          steps:
            - {mechanism: config_set, path: /etc/ssh/sshd_config, key: PermitRootLogin, value: "no"}

``check`` is either one ``method`` with its fields or ``checks: [...]`` (all must
hold); without a check, the remediation's own validation decides compliance.
``remediation`` is either one ``mechanism`` with its fields or ``steps: [...]``.

What loads, what is refused:

* A rule whose mechanism, check method or one of their fields kensa does not
  support still loads; its implementation has ``supported = False`` and an
  ``unsupported_reason`` naming the mechanism, method or field, so a run can
  report it instead of failing the whole rule set. Kensa fields no handler acts
  on (``create``, ``onlyif``) count as unsupported: such a rule must not run as
  if they had been honoured. A remediation's ``restart``, ``reload`` and
  ``notify`` are its service actions (:mod:`kensa.rules.services`).
* Anything malformed raises :class:`RuleError` naming file, line and field, for
  example ``rules/ssh.yml:7: field 'implementations[0].remediation.mechanism':
  expected a string, got list``.
* Rule ids must match :data:`RULE_ID_PATTERN` (``^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$``):
  ids end up in audit records, journals and file names.
* Values are not coerced: ``value: no`` is the boolean false in YAML and is
  refused; quote it (``value: "no"``). Modes are quoted octal strings as chmod
  reads them (``"0644"``, ``"4755"``; not Python's ``"0o644"``).
* One rule per file. A second YAML document (``---``) is an error: Kensa keys a
  rule file to its rule id, and one file per rule keeps error locations and
  duplicate reports unambiguous.

Hostile input is bounded: files larger than :data:`MAX_RULE_FILE_BYTES`, nesting
deeper than :data:`MAX_NESTING_DEPTH`, YAML aliases (the "billion laughs"
expansion), explicit tags, non-string or duplicate keys, integers outside 64
bits, and rule paths that are not regular files (a FIFO would block the read
forever, a device never end it) are all refused with a :class:`RuleError`
(:mod:`kensa.rules.yaml` reads the YAML; :mod:`kensa.rules.schema` checks the
fields, a step's and a check's with the schema its handler or check method owns).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import AbstractSet, Any, Dict, Iterable, List, Optional, Set, Tuple, Union

from kensa.errors import RuleError, UndefinedVariableError
from kensa.rules import schema
from kensa.rules.model import (
    CapabilityGate,
    Implementation,
    Platform,
    Reference,
    Rule,
    RuleProblem,
    RuleSet,
    Severity,
    SourceLocation,
)
from kensa.rules.services import split_services
from kensa.rules.schema import RULE_ID_PATTERN, SUPPORTED_CHECK_METHODS, SUPPORTED_MECHANISMS
from kensa.rules.variables import Variables, substitute
from kensa.rules.yaml import MAX_RULE_FILE_BYTES, Document, FieldPath, format_field, read_document, type_name

__all__ = ["load_rule_file", "load_rule_set", "load_rules", "parse_rule"]

_NO_VARIABLES = Variables()


def _capability_list(doc: Document, path: FieldPath, value: Any) -> Tuple[str, ...]:
    if isinstance(value, str):
        return (schema.capability(doc, path, value),)
    items = schema.sequence(doc, path, value, non_empty=True)
    return tuple(schema.capability(doc, path + (i,), item) for i, item in enumerate(items))


def _parse_gate(doc: Document, path: FieldPath, value: Any) -> CapabilityGate:
    if isinstance(value, str):
        return CapabilityGate(all_of=_capability_list(doc, path, value))
    if not isinstance(value, dict):
        raise doc.error(
            path, f"expected a capability name or a mapping of all, any or not, got {type_name(value)}"
        )
    fields: Dict[str, Any] = value
    unknown = sorted(set(fields) - {"all", "any", "not"})
    if unknown:
        raise doc.error(
            path + (unknown[0],), "a 'when' gate is a capability name or a mapping of all, any or not"
        )
    if not fields:
        raise doc.error(path, "a 'when' mapping needs one of: all, any, not")
    return CapabilityGate(
        all_of=_capability_list(doc, path + ("all",), fields["all"]) if "all" in fields else (),
        any_of=_capability_list(doc, path + ("any",), fields["any"]) if "any" in fields else (),
        none_of=_capability_list(doc, path + ("not",), fields["not"]) if "not" in fields else (),
    )


_IMPLEMENTATION_FIELDS = frozenset({"when", "default", "check", "remediation"})


def _parse_implementation(
    doc: Document, path: FieldPath, value: Any, mechanisms: AbstractSet[str], methods: AbstractSet[str]
) -> Implementation:
    fields = schema.mapping(doc, path, value)
    for name in fields:
        if name not in _IMPLEMENTATION_FIELDS:
            raise doc.error(
                path + (name,),
                f"unknown field{schema.suggestion(name, _IMPLEMENTATION_FIELDS)}; "
                f"an implementation has: {', '.join(sorted(_IMPLEMENTATION_FIELDS))}",
            )
    default = schema.boolean(doc, path + ("default",), fields["default"]) if "default" in fields else False
    when = _parse_gate(doc, path + ("when",), fields["when"]) if "when" in fields else None
    if default and when is not None:
        raise doc.error(path + ("when",), "the default implementation must not have a 'when' gate")
    if not default and when is None:
        raise doc.error(path, "needs a 'when' capability gate or 'default: true'")
    checks = schema.parse_checks(doc, path + ("check",), fields["check"], methods) if "check" in fields else ()
    services, remediation = split_services(doc, path + ("remediation",), schema.required(doc, path, fields, "remediation"))
    steps, reasons = schema.parse_remediation(doc, path + ("remediation",), remediation, mechanisms)
    reasons = [check.unsupported_reason for check in checks if not check.supported] + reasons
    return Implementation(
        when=when,
        default=default,
        checks=checks,
        steps=steps,
        supported=not reasons,
        unsupported_reason="; ".join(reasons),
        services=services,
    )


def _parse_platform(doc: Document, path: FieldPath, value: Any) -> Platform:
    fields = schema.mapping(doc, path, value)
    for name in fields:
        if name not in ("family", "min_version", "max_version", "derivatives"):
            raise doc.error(
                path + (name,), "unknown field; a platform has: family, min_version, max_version, derivatives"
            )
    family = schema.family(doc, path + ("family",), schema.required(doc, path, fields, "family"))
    versions: Dict[str, Optional[int]] = {"min_version": None, "max_version": None}
    for name in versions:
        if name in fields:
            number = fields[name]
            if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= 10_000:
                raise doc.error(
                    path + (name,),
                    f"expected a major version number such as 8, got {type_name(number)} {number!r}",
                )
            versions[name] = number
    min_version = versions["min_version"]
    if min_version is None:
        raise doc.error(path + ("min_version",), "required field is missing", line=doc.line_of(path))
    max_version = versions["max_version"]
    if max_version is not None and max_version < min_version:
        raise doc.error(path + ("max_version",), f"{max_version} is below min_version {min_version}")
    derivatives = (
        schema.boolean(doc, path + ("derivatives",), fields["derivatives"]) if "derivatives" in fields else True
    )
    return Platform(family, min_version, max_version, derivatives)


_RULE_FIELDS = frozenset(
    {
        "id",
        "title",
        "description",
        "rationale",
        "severity",
        "category",
        "tags",
        "transactional",
        "platforms",
        "implementations",
        "references",
        "depends_on",
        "conflicts_with",
        "supersedes",
    }
)


# The key of a per-profile reference entry that names its control, by preference.
_CONTROL_KEYS = ("section", "stig_id", "id", "control", "vuln_id")


def _reference_text(doc: Document, path: FieldPath, value: Any) -> str:
    # Control ids are text; YAML reads an unquoted "6.1" as a number, kept as written.
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise doc.error(path, f"expected a control id or attribute as text, got {type_name(value)}")
    return str(value)


def _profile_reference(doc: Document, path: FieldPath, framework: str, profile: str, value: Any) -> Reference:
    if not isinstance(value, dict):
        return Reference(framework, _reference_text(doc, path, value), profile)
    attributes: Dict[str, Union[str, Tuple[str, ...]]] = {}
    for key, item in value.items():
        at = path + (key,)
        if isinstance(item, list):  # such as a STIG entry's CCI list
            attributes[str(key)] = tuple(_reference_text(doc, at + (i,), one) for i, one in enumerate(item))
        else:
            attributes[str(key)] = _reference_text(doc, at, item)
    control = next((attributes.pop(key) for key in _CONTROL_KEYS if isinstance(attributes.get(key), str)), None)
    if not isinstance(control, str):
        raise doc.error(path, f"names no control: give one of {', '.join(_CONTROL_KEYS)}")
    return Reference(framework, control, profile, attributes)


def _parse_references(doc: Document, path: FieldPath, value: Any) -> Tuple[Reference, ...]:
    """``references``: framework -> list of control ids, or profile -> entry (or list of entries)."""
    found: List[Reference] = []
    for framework, entries in schema.mapping(doc, path, value).items():
        where = path + (framework,)
        schema.expect_str(doc, where, framework)
        if isinstance(entries, list):
            found.extend(Reference(framework, _reference_text(doc, where + (i,), item)) for i, item in enumerate(entries))
            continue
        for profile, entry in schema.mapping(doc, where, entries).items():
            at = where + (profile,)
            items = entry if isinstance(entry, list) else [entry]
            for i, item in enumerate(items):
                found.append(_profile_reference(doc, at + (i,) if isinstance(entry, list) else at, framework, str(profile), item))
    return tuple(found)


def _parse_document(
    doc: Document, value: Any, mechanisms: AbstractSet[str], methods: AbstractSet[str], variables: Variables
) -> Rule:
    if value is None:
        raise doc.at_line(doc.line_of(()), "the YAML document is empty; it must hold one rule mapping")
    if not isinstance(value, dict):
        raise doc.at_line(
            doc.line_of(()), f"a rule file must hold a mapping of rule fields, got {type_name(value)}"
        )
    for name in value:
        if name not in _RULE_FIELDS:
            raise doc.error((name,), f"unknown rule field{schema.suggestion(name, _RULE_FIELDS)}")
    rule_id = schema.expect_str(doc, ("id",), schema.required(doc, (), value, "id"))
    if not RULE_ID_PATTERN.fullmatch(rule_id):
        raise doc.error(
            ("id",), f"{rule_id[:80]!r} is not a valid rule id; ids match {RULE_ID_PATTERN.pattern}"
        )
    title = schema.single_line(doc, ("title",), schema.required(doc, (), value, "title"))
    severity_text = schema.expect_str(doc, ("severity",), schema.required(doc, (), value, "severity"))
    try:
        severity = Severity(severity_text)
    except ValueError:
        raise doc.error(
            ("severity",), f"{severity_text[:40]!r} is not one of: low, medium, high, critical"
        ) from None
    category = schema.category(doc, ("category",), value["category"]) if "category" in value else ""
    description = schema.expect_str(doc, ("description",), value["description"]) if "description" in value else ""
    if "rationale" in value:
        schema.expect_str(doc, ("rationale",), value["rationale"])
    relations: Dict[str, Tuple[str, ...]] = {}
    for id_list in ("depends_on", "conflicts_with", "supersedes"):
        if id_list in value:
            relations[id_list] = tuple(
                schema.rule_id(doc, (id_list, i), other)
                for i, other in enumerate(schema.sequence(doc, (id_list,), value[id_list]))
            )
    references = _parse_references(doc, ("references",), value["references"]) if "references" in value else ()
    tags: Tuple[str, ...] = ()
    if "tags" in value:
        tags = tuple(
            schema.tag(doc, ("tags", i), tag) for i, tag in enumerate(schema.sequence(doc, ("tags",), value["tags"]))
        )
    transactional = (
        schema.boolean(doc, ("transactional",), value["transactional"]) if "transactional" in value else True
    )
    platforms: Tuple[Platform, ...] = ()
    if "platforms" in value:
        platforms = tuple(
            _parse_platform(doc, ("platforms", i), entry)
            for i, entry in enumerate(schema.sequence(doc, ("platforms",), value["platforms"]))
        )
    entries = schema.sequence(
        doc, ("implementations",), schema.required(doc, (), value, "implementations"), non_empty=True
    )
    missing: Dict[str, FieldPath] = {}
    entries = substitute(entries, variables, missing, ("implementations",))
    if missing:
        names = sorted(missing)
        first = min(missing.values(), key=doc.line_of)
        raise UndefinedVariableError(
            f"{doc.source}:{doc.line_of(first)}: field '{format_field(first)}': rule '{rule_id}' uses undefined "
            f"variable{'s' if len(names) > 1 else ''} {', '.join(names)}; define "
            f"{'them' if len(names) > 1 else 'it'} with --var NAME=VALUE or in a variable file",
            tuple(names),
            rule_id,
        )
    implementations = tuple(
        _parse_implementation(doc, ("implementations", i), entry, mechanisms, methods)
        for i, entry in enumerate(entries)
    )
    defaults = [i for i, impl in enumerate(implementations) if impl.default]
    if len(defaults) > 1:
        raise doc.error(
            ("implementations", defaults[1], "default"),
            f"a second default implementation (the first is implementations[{defaults[0]}]); keep one",
        )
    return Rule(
        id=rule_id,
        title=title,
        severity=severity,
        category=category,
        tags=tags,
        transactional=transactional,
        platforms=platforms,
        implementations=implementations,
        source=SourceLocation(doc.source, doc.line_of(())),
        description=description,
        references=references,
        depends_on=relations.get("depends_on", ()),
        conflicts_with=relations.get("conflicts_with", ()),
        supersedes=relations.get("supersedes", ()),
    )


# --- public loaders ---------------------------------------------------------


def parse_rule(
    text: Union[str, bytes],
    source: str = "<string>",
    *,
    mechanisms: AbstractSet[str] = SUPPORTED_MECHANISMS,
    check_methods: AbstractSet[str] = SUPPORTED_CHECK_METHODS,
    variables: Variables = _NO_VARIABLES,
) -> Rule:
    """Parse one rule from YAML ``text``; ``source`` names it in errors.

    ``mechanisms`` and ``check_methods`` are the names this kensa can carry out;
    anything else loads as unsupported. ``{{ name }}`` templates in the rule's
    implementations take their values from ``variables`` (see
    :mod:`kensa.rules.variables`). Raises RuleError for any malformed input, and
    UndefinedVariableError (a RuleError) naming every variable used but undefined.
    """
    doc, value = read_document(text, source)
    return _parse_document(doc, value, mechanisms, check_methods, variables)


def load_rule_file(
    path: Union[str, "os.PathLike[str]"],
    *,
    mechanisms: AbstractSet[str] = SUPPORTED_MECHANISMS,
    check_methods: AbstractSet[str] = SUPPORTED_CHECK_METHODS,
    variables: Variables = _NO_VARIABLES,
) -> Rule:
    """Load the one rule in the YAML file at ``path`` (see :func:`parse_rule`). Raises RuleError."""
    name = os.fspath(path)
    try:
        _require_regular(name, os.stat(name).st_mode)
        # O_NONBLOCK: a FIFO swapped in after the stat must not block the open.
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with open(fd, "rb") as stream:
            _require_regular(name, os.fstat(fd).st_mode)
            data = stream.read(MAX_RULE_FILE_BYTES + 1)
    except OSError as exc:
        raise RuleError(f"{name}: cannot read rule file: {exc.strerror or exc}") from None
    return parse_rule(data, name, mechanisms=mechanisms, check_methods=check_methods, variables=variables)


_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _require_regular(name: str, mode: int) -> None:
    """Refuse anything but a regular file: reading a FIFO or a device could block forever or never end."""
    if stat.S_ISREG(mode):
        return
    kind = next((what for test, what in _FILE_KINDS if test(mode)), "not a file")
    raise RuleError(f"{name}: cannot read rule file: not a regular file ({kind}); rule files must be regular files")


def _rule_files(path: Path) -> List[Path]:
    if not path.is_dir():
        if not path.exists():
            raise RuleError(f"{path}: no such rule file or directory")
        return [path]
    found: List[Path] = []
    # os.walk does not follow directory symlinks, so a link loop cannot hang the walk.
    for directory, subdirectories, files in os.walk(path):
        subdirectories[:] = sorted(d for d in subdirectories if not d.startswith("."))
        found.extend(
            Path(directory, name)
            for name in files
            if not name.startswith(".") and name.endswith((".yml", ".yaml"))
        )
    return sorted(found)


def load_rules(
    paths: Iterable[Union[str, "os.PathLike[str]"]],
    *,
    mechanisms: AbstractSet[str] = SUPPORTED_MECHANISMS,
    check_methods: AbstractSet[str] = SUPPORTED_CHECK_METHODS,
    variables: Variables = _NO_VARIABLES,
) -> List[Rule]:
    """Load rules from files and directories, in the order given.

    Directories are searched recursively for ``*.yml`` and ``*.yaml`` files,
    skipping hidden files and directories, in sorted path order; a file named
    directly is loaded whatever its suffix. A file reached twice is loaded
    once. Raises RuleError for the first malformed file, and for two files that
    define the same rule id (naming both). :func:`load_rule_set` loads the
    other files instead and reports each bad one.
    """
    loaded = load_rule_set(paths, mechanisms=mechanisms, check_methods=check_methods, variables=variables, strict=True)
    return list(loaded.rules)


def load_rule_set(
    paths: Iterable[Union[str, "os.PathLike[str]"]],
    *,
    mechanisms: AbstractSet[str] = SUPPORTED_MECHANISMS,
    check_methods: AbstractSet[str] = SUPPORTED_CHECK_METHODS,
    variables: Variables = _NO_VARIABLES,
    strict: bool = False,
) -> RuleSet:
    """Load rules as :func:`load_rules` does, but a file that does not load (malformed,
    unreadable, an undefined variable, a rule id already defined) is reported in
    :attr:`RuleSet.problems` with its RuleError's message, and the other files still
    load. ``strict`` raises the first such RuleError instead. A path that does not
    exist raises RuleError: nothing was asked for that could be loaded.
    """
    rules: List[Rule] = []
    problems: List[RuleProblem] = []
    seen_files: Set[str] = set()
    by_id: Dict[str, Rule] = {}
    for given in paths:
        for file in _rule_files(Path(given)):
            key = os.path.realpath(file)
            if key in seen_files:
                continue
            seen_files.add(key)
            try:
                rule = load_rule_file(file, mechanisms=mechanisms, check_methods=check_methods, variables=variables)
                first = by_id.get(rule.id)
                if first is not None:
                    raise RuleError(
                        f"{rule.source}: rule id '{rule.id}' is already defined in {first.source}; "
                        "rule ids must be unique, rename one"
                    )
            except RuleError as exc:
                if strict:
                    raise
                problems.append(RuleProblem(os.fspath(file), str(exc), getattr(exc, "rule_id", "")))
                continue
            by_id[rule.id] = rule
            rules.append(rule)
    return RuleSet(tuple(rules), tuple(problems))
