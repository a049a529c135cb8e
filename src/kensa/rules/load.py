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
  on (``reload``, ``restart``, ``notify``, ``create``, ``onlyif``) count as
  unsupported: such a rule must not run as if they had been honoured.
* Anything malformed raises :class:`RuleError` naming file, line and field, for
  example ``rules/ssh.yml:7: field 'implementations[0].remediation.mechanism':
  expected a string, got list``.
* Rule ids must match :data:`RULE_ID_PATTERN` (``^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$``):
  ids end up in audit records, journals and file names.
* Values are not coerced: ``value: no`` is the boolean false in YAML and is
  refused; quote it (``value: "no"``). Modes are quoted octal strings (``"0644"``).
* One rule per file. A second YAML document (``---``) is an error: Kensa keys a
  rule file to its rule id, and one file per rule keeps error locations and
  duplicate reports unambiguous.

Hostile input is bounded: files larger than :data:`MAX_RULE_FILE_BYTES`, nesting
deeper than :data:`MAX_NESTING_DEPTH`, YAML aliases (the "billion laughs"
expansion), explicit tags, non-string or duplicate keys, integers outside 64
bits, and rule paths that are not regular files (a FIFO would block the read
forever, a device never end it) are all refused with a :class:`RuleError`. The YAML event stream is turned into values by an iterative
builder here, so no input can recurse the interpreter or build objects other
than str, int, float, bool, None, list and dict.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import (
    AbstractSet,
    Any,
    Callable,
    Dict,
    FrozenSet,
    Iterable,
    List,
    Mapping,
    Optional,
    Set,
    Tuple,
    Union,
)

import yaml

from kensa.errors import AuditRuleError, RuleError, SysctlKeyError
from kensa.facts.auditrules import rule_options
from kensa.model import Step, Transaction
from kensa.facts.sysctl import sysctl_path

__all__ = [
    "MAX_NESTING_DEPTH",
    "MAX_RULE_FILE_BYTES",
    "RULE_ID_PATTERN",
    "SUPPORTED_CHECK_METHODS",
    "SUPPORTED_MECHANISMS",
    "CapabilityGate",
    "Check",
    "Implementation",
    "Platform",
    "Rule",
    "RuleError",
    "Severity",
    "SourceLocation",
    "load_rule_file",
    "load_rules",
    "parse_rule",
]

RULE_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
"""Rule ids: start with a letter or digit, then up to 127 of ``A-Z a-z 0-9 . _ : -``."""

MAX_RULE_FILE_BYTES = 256 * 1024
"""Largest rule file accepted; real rules are a few kilobytes."""

MAX_NESTING_DEPTH = 32
"""Deepest nesting of mappings and lists accepted; real rules nest fewer than 10 levels."""

SUPPORTED_MECHANISMS: FrozenSet[str] = frozenset(
    {
        "file_content",
        "file_absent",
        "file_permissions",
        "config_set",
        "config_append",
        "sysctl_set",
        "audit_rule_set",
        "command_exec",
    }
)
"""Remediation mechanisms kensa has handlers for (the default of every loader)."""

SUPPORTED_CHECK_METHODS: FrozenSet[str] = frozenset(
    {
        "config_value",
        "file_permission",
        "file_exists",
        "file_not_exists",
        "file_content_match",
        "file_content_no_match",
        "sysctl_value",
        "audit_rule_exists",
    }
)
"""Check methods kensa evaluates; they mirror what the supported handlers validate."""

# Names Kensa's schema defines but kensa does not implement: they make a rule
# unsupported rather than misspelt, and feed the "did you mean" hints.
_KENSA_MECHANISMS = frozenset(
    {
        "config_set_dropin",
        "config_remove",
        "config_block",
        "service_enabled",
        "service_disabled",
        "service_masked",
        "package_present",
        "package_absent",
        "kernel_module_disable",
        "grub_parameter_set",
        "grub_parameter_remove",
        "mount_option_set",
        "pam_module_configure",
        "selinux_boolean_set",
        "cron_job",
        "manual",
    }
)
_KENSA_CHECK_METHODS = frozenset(
    {
        "config_absent",
        "service_state",
        "systemd_target",
        "package_state",
        "kernel_module_state",
        "mount_option",
        "grub_parameter",
        "selinux_boolean",
        "selinux_state",
        "pam_module",
        "command",
    }
)

FieldPath = Tuple[Union[str, int], ...]


class Severity(str, enum.Enum):
    """A rule's own severity rating (a closed set)."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class SourceLocation:
    """Where a rule was read from: a file (or ``<string>``) and a 1-based line."""

    path: str
    line: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}"


@dataclass(frozen=True)
class Platform:
    """An OS family and the inclusive range of major versions a rule applies to."""

    family: str
    min_version: int
    max_version: Optional[int] = None
    derivatives: bool = True


@dataclass(frozen=True)
class CapabilityGate:
    """A ``when`` condition over the capabilities detected on a host.

    Satisfied when every ``all_of`` capability is present, at least one
    ``any_of`` capability is present (if any are listed), and no ``none_of``
    capability is present. A bare name in YAML is ``all_of=(name,)``.
    """

    all_of: Tuple[str, ...] = ()
    any_of: Tuple[str, ...] = ()
    none_of: Tuple[str, ...] = ()

    def satisfied_by(self, capabilities: AbstractSet[str]) -> bool:
        """Whether this gate holds on a host with ``capabilities``."""
        return (
            all(name in capabilities for name in self.all_of)
            and (not self.any_of or any(name in capabilities for name in self.any_of))
            and not any(name in capabilities for name in self.none_of)
        )


@dataclass(frozen=True)
class Check:
    """One verification: a Kensa check method and its fields."""

    method: str
    params: Mapping[str, Any] = field(default_factory=dict)
    supported: bool = True
    unsupported_reason: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))


@dataclass(frozen=True)
class Implementation:
    """A check and remediation variant of a rule.

    ``checks`` must all hold for the host to be compliant; empty means the
    remediation's own validation is the check. ``supported`` is false when a
    mechanism, check method or field is one kensa cannot carry out; the reason
    names it and where it is in the rule.
    """

    when: Optional[CapabilityGate]
    default: bool
    checks: Tuple[Check, ...]
    steps: Tuple[Step, ...]
    supported: bool = True
    unsupported_reason: str = ""


@dataclass(frozen=True)
class Rule:
    """A remediation rule loaded from a rule file."""

    id: str
    title: str
    severity: Severity
    category: str
    tags: Tuple[str, ...]
    transactional: bool
    platforms: Tuple[Platform, ...]
    implementations: Tuple[Implementation, ...]
    source: SourceLocation
    description: str = ""

    @property
    def supported(self) -> bool:
        """True when kensa can carry out every implementation of this rule."""
        return all(impl.supported for impl in self.implementations)

    @property
    def unsupported_reason(self) -> str:
        """Why the rule is not supported ("" when it is), per implementation."""
        return "; ".join(impl.unsupported_reason for impl in self.implementations if not impl.supported)

    @property
    def default_implementation(self) -> Optional[Implementation]:
        """The ``default: true`` implementation, if the rule has one."""
        for impl in self.implementations:
            if impl.default:
                return impl
        return None

    def select_implementation(self, capabilities: AbstractSet[str]) -> Optional[Implementation]:
        """The first implementation whose ``when`` gate holds, else the default one.

        Returns None only for a rule without a default whose gates all fail.
        """
        for impl in self.implementations:
            if impl.when is not None and impl.when.satisfied_by(capabilities):
                return impl
        return self.default_implementation

    def to_transaction(
        self, host: str = "localhost", implementation: Optional[Implementation] = None
    ) -> Transaction:
        """A transaction applying ``implementation`` (default: the default one) to ``host``.

        Raises RuleError when the implementation is not one of this rule's, or
        is not supported.
        """
        impl = implementation if implementation is not None else self.default_implementation
        if impl is None:
            raise RuleError(
                f"{self.source}: rule '{self.id}' has no default implementation; "
                "pass the one select_implementation() chose for the host"
            )
        if not any(candidate is impl or candidate == impl for candidate in self.implementations):
            raise RuleError(f"{self.source}: the implementation given is not one of rule '{self.id}'")
        if not impl.supported:
            raise RuleError(f"{self.source}: rule '{self.id}' cannot run here: {impl.unsupported_reason}")
        return Transaction(rule=self.id, steps=impl.steps, host=host, transactional=self.transactional)


# --- YAML to values, with line numbers -------------------------------------

_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_RESOLVER = yaml.resolver.Resolver()
_STR_TAG = "tag:yaml.org,2002:str"
_ALLOWED_EXPLICIT_TAGS = frozenset({_STR_TAG, "tag:yaml.org,2002:seq", "tag:yaml.org,2002:map", "!"})
_NO_KEY = object()


def _format_field(path: FieldPath) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, dict):
        return "mapping"
    return type(value).__name__


class _Frame:
    __slots__ = ("value", "path", "key", "key_line")

    def __init__(self, value: Any, path: FieldPath) -> None:
        self.value = value
        self.path = path
        self.key: Any = _NO_KEY
        self.key_line = 0


class _Document:
    """A parsed rule file: its values plus the line of every field in it."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.lines: Dict[FieldPath, int] = {}

    def line_of(self, path: FieldPath) -> int:
        while path not in self.lines and path:
            path = path[:-1]
        return self.lines.get(path, 1)

    def error(self, path: FieldPath, problem: str, *, line: Optional[int] = None) -> RuleError:
        if line is None:
            line = self.line_of(path)
        where = f"field '{_format_field(path)}': " if path else ""
        return RuleError(f"{self.source}:{line}: {where}{problem}")

    def at_line(self, line: int, problem: str) -> RuleError:
        return RuleError(f"{self.source}:{line}: {problem}")


def _scalar(doc: _Document, event: Any) -> Any:
    line = event.start_mark.line + 1
    tag = event.tag
    if tag is not None and tag not in _ALLOWED_EXPLICIT_TAGS:
        raise doc.at_line(line, f"YAML tag '{tag}' is not allowed in rule files; remove it")
    if tag == _STR_TAG:
        return event.value
    resolved = _RESOLVER.resolve(yaml.ScalarNode, event.value, event.implicit)
    if resolved == "tag:yaml.org,2002:null":
        return None
    if resolved == "tag:yaml.org,2002:bool":
        return bool(yaml.constructor.SafeConstructor.bool_values[event.value.lower()])
    if resolved in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float"):
        constructor = yaml.constructor.SafeConstructor()
        node = yaml.ScalarNode(resolved, event.value)
        try:
            if resolved.endswith("int"):
                number = constructor.construct_yaml_int(node)
                # Hex and octal escape Python's digit limit; a huge int would
                # then fail in every message that shows it.
                if not -(2**63) <= number < 2**63:
                    raise ValueError("too large: numbers in rule files must fit in 64 bits")
                return number
            return constructor.construct_yaml_float(node)
        except (ValueError, OverflowError) as exc:
            reason = str(exc).split(";")[0]
            raise doc.at_line(
                line, f"cannot read number {event.value[:40]!r}: {reason}; quote it if it is text"
            ) from None
    # Timestamps and YAML 1.1 oddities ('=', '<<') stay the text that was written.
    return event.value


def _compose(doc: _Document, text: str) -> Any:
    stack: List[_Frame] = []
    root: Any = _NO_KEY
    documents = 0
    document_line = 1
    for event in yaml.parse(text, Loader=_LOADER):
        if isinstance(event, yaml.AliasEvent):
            raise doc.at_line(
                event.start_mark.line + 1,
                f"YAML alias '*{event.anchor}' is not allowed in rule files; write the value out",
            )
        if isinstance(event, yaml.DocumentStartEvent):
            documents += 1
            if documents > 1:
                raise doc.at_line(
                    event.start_mark.line + 1,
                    "a second YAML document ('---'); one rule per file, move this rule to its own file",
                )
            # The rule starts at its '---' when it has one, else at its first line.
            document_line = event.start_mark.line + 1
            continue
        if isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            stack.pop()
            continue
        if not isinstance(event, (yaml.ScalarEvent, yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            continue
        line = event.start_mark.line + 1
        if not isinstance(event, yaml.ScalarEvent) and event.tag not in (None, *_ALLOWED_EXPLICIT_TAGS):
            raise doc.at_line(line, f"YAML tag '{event.tag}' is not allowed in rule files; remove it")
        top = stack[-1] if stack else None
        if top is not None and isinstance(top.value, dict) and top.key is _NO_KEY:
            key = _scalar(doc, event) if isinstance(event, yaml.ScalarEvent) else None
            if not isinstance(key, str):
                where = _format_field(top.path) or "the top level"
                if isinstance(event, yaml.ScalarEvent):
                    shown = f"{event.value[:40]!r} (read as {_type_name(key)})"
                else:
                    shown = "a list or mapping"
                raise doc.at_line(
                    line, f"mapping key {shown} in {where} is not a string; quote the field name"
                )
            if key in top.value:
                first = doc.lines[top.path + (key,)]
                raise doc.error(
                    top.path + (key,), f"duplicate key (first at line {first}); keep one", line=line
                )
            top.key, top.key_line = key, line
            continue
        if isinstance(event, yaml.ScalarEvent):
            value: Any = _scalar(doc, event)
        else:
            value = [] if isinstance(event, yaml.SequenceStartEvent) else {}
        if top is None:
            path: FieldPath = ()
            root = value
            doc.lines[path] = document_line
        elif isinstance(top.value, list):
            path = top.path + (len(top.value),)
            top.value.append(value)
            doc.lines[path] = line
        else:
            path = top.path + (top.key,)
            top.value[top.key] = value
            doc.lines[path] = top.key_line
            top.key = _NO_KEY
        if not isinstance(event, yaml.ScalarEvent):
            if len(stack) >= MAX_NESTING_DEPTH:
                raise doc.at_line(
                    line, f"nesting deeper than {MAX_NESTING_DEPTH} levels; rule files are shallow"
                )
            stack.append(_Frame(value, path))
    return root


# --- field validation -------------------------------------------------------

_Validator = Callable[[_Document, FieldPath, Any], Any]

_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_LINE_BREAKS = re.compile(r"[\r\n\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")
_CATEGORY = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:+-]{0,63}$")
_FAMILY = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_CAPABILITY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
_MODE = re.compile(r"^[0-7]{3,4}$")
_NAME = re.compile(r"^[A-Za-z0-9_]{1,64}$")
_ACCOUNT = re.compile(r"^(?:[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?|[0-9]{1,10})$")
_CONFIG_KEY = re.compile(r"^[^\s#;=][^\s=]{0,255}$")
_MAX_PATH = 4096


def _expect_str(doc: _Document, path: FieldPath, value: Any) -> str:
    if not isinstance(value, str):
        hint = ""
        if isinstance(value, (bool, int, float)) or value is None:
            hint = f"; quote it (YAML read the unquoted text as {_type_name(value)} {value!r})"
        raise doc.error(path, f"expected a string, got {_type_name(value)}{hint}")
    if "\x00" in value:
        raise doc.error(path, "contains a NUL character")
    return value


def _line_text(doc: _Document, path: FieldPath, value: Any, *, allow_empty: bool = False) -> str:
    text = _expect_str(doc, path, value)
    if not text and not allow_empty:
        raise doc.error(path, "must not be empty")
    if _LINE_BREAKS.search(text) or _CONTROL_CHARS.search(text):
        raise doc.error(path, "must be a single line without control characters")
    return text


def _matching(pattern: "re.Pattern[str]", what: str) -> _Validator:
    def check(doc: _Document, path: FieldPath, value: Any) -> str:
        text = _expect_str(doc, path, value)
        if not pattern.fullmatch(text):
            raise doc.error(path, f"{text[:80]!r} is not {what}")
        return text

    return check


def _single_line(doc: _Document, path: FieldPath, value: Any) -> str:
    return _line_text(doc, path, value)


def _single_line_or_empty(doc: _Document, path: FieldPath, value: Any) -> str:
    return _line_text(doc, path, value, allow_empty=True)


def _any_text(doc: _Document, path: FieldPath, value: Any) -> str:
    return _expect_str(doc, path, value)


def _command(doc: _Document, path: FieldPath, value: Any) -> str:
    text = _expect_str(doc, path, value)
    if not text.strip():
        raise doc.error(path, "must not be empty")
    return text


def _absolute_path(doc: _Document, path: FieldPath, value: Any) -> str:
    text = _line_text(doc, path, value)
    if not text.startswith("/") or len(text) > _MAX_PATH:
        raise doc.error(path, f"{text[:80]!r} is not an absolute path (start it with '/')")
    if ".." in text.split("/"):
        raise doc.error(path, f"{text[:80]!r} contains a '..' component; write the path without it")
    return text


def _mode(doc: _Document, path: FieldPath, value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        raise doc.error(
            path,
            f'expected a quoted octal string such as "0644", got int {value}; YAML misreads unquoted modes',
        )
    text = _expect_str(doc, path, value)
    if not _MODE.fullmatch(text):
        raise doc.error(path, f'{text[:80]!r} is not an octal mode such as "0644"')
    return text


def _audit_rule(doc: _Document, path: FieldPath, value: Any) -> str:
    text = _line_text(doc, path, value)
    try:
        rule_options(text)
    except AuditRuleError as exc:
        raise doc.error(path, f"{exc}; write one rule such as '-w /etc/shadow -p wa -k identity'") from None
    return text


def _sysctl_key(doc: _Document, path: FieldPath, value: Any) -> str:
    text = _expect_str(doc, path, value)
    try:
        sysctl_path(text)
    except SysctlKeyError as exc:
        raise doc.error(path, str(exc)[:300]) from None
    return text


def _regex(doc: _Document, path: FieldPath, value: Any) -> str:
    text = _line_text(doc, path, value)
    try:
        re.compile(text)
    except (re.error, RecursionError, OverflowError) as exc:
        raise doc.error(path, f"is not a valid regular expression: {exc}") from None
    return text


def _timeout(doc: _Document, path: FieldPath, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 86400:
        raise doc.error(
            path, f"expected a number of seconds between 0 and 86400, got {_type_name(value)} {value!r}"
        )
    return float(value)


def _boolean(doc: _Document, path: FieldPath, value: Any) -> bool:
    if not isinstance(value, bool):
        raise doc.error(path, f"expected true or false, got {_type_name(value)}")
    return value


_account = _matching(_ACCOUNT, "a user or group name or numeric id")
_config_key = _matching(_CONFIG_KEY, "a configuration key (one word, no '=' or spaces)")
_capability = _matching(_CAPABILITY, "a capability name")
_category = _matching(_CATEGORY, "a category such as 'access-control'")
_family = _matching(_FAMILY, "an OS family such as 'rhel'")
_tag = _matching(_TAG, "a tag")
_rule_id = _matching(RULE_ID_PATTERN, "a rule id")
_name = _matching(_NAME, "a name (letters, digits and '_')")


@dataclass(frozen=True)
class _Schema:
    """Fields of a mechanism or check method kensa implements."""

    required: Mapping[str, _Validator]
    optional: Mapping[str, _Validator] = dataclasses.field(default_factory=dict)
    at_least_one_of: Tuple[str, ...] = ()


_OWNERSHIP: Mapping[str, _Validator] = {"owner": _account, "group": _account, "mode": _mode}

# Only fields the handlers act on are listed. Kensa's reload/restart/notify,
# config_set's create and command_exec's onlyif are left out on purpose: a rule
# relying on them loads as unsupported instead of running without them.
_MECHANISM_SCHEMAS: Mapping[str, _Schema] = {
    "config_set": _Schema(
        {"path": _absolute_path, "key": _config_key, "value": _single_line_or_empty},
        {"separator": _single_line_or_empty},
    ),
    "config_append": _Schema({"path": _absolute_path, "line": _single_line}),
    "file_content": _Schema({"path": _absolute_path, "content": _any_text}, dict(_OWNERSHIP)),
    "file_absent": _Schema({"path": _absolute_path}),
    "file_permissions": _Schema({"path": _absolute_path}, dict(_OWNERSHIP), ("owner", "group", "mode")),
    "sysctl_set": _Schema({"key": _sysctl_key, "value": _single_line}, {"persist_file": _absolute_path}),
    "audit_rule_set": _Schema({"rule": _audit_rule}, {"persist_file": _absolute_path, "allow_silencing": _boolean}),
    "command_exec": _Schema({"run": _command}, {"unless": _command, "timeout": _timeout}),
}

_CHECK_SCHEMAS: Mapping[str, _Schema] = {
    "config_value": _Schema({"path": _absolute_path, "key": _config_key, "expected": _single_line_or_empty}),
    "file_permission": _Schema({"path": _absolute_path}, dict(_OWNERSHIP), ("owner", "group", "mode")),
    "file_exists": _Schema({"path": _absolute_path}),
    "file_not_exists": _Schema({"path": _absolute_path}),
    "file_content_match": _Schema({"path": _absolute_path, "pattern": _regex}),
    "file_content_no_match": _Schema({"path": _absolute_path, "pattern": _regex}),
    "sysctl_value": _Schema({"key": _sysctl_key, "expected": _single_line}),
    "audit_rule_exists": _Schema({"rule": _audit_rule}),
}


def _mapping(doc: _Document, path: FieldPath, value: Any) -> Dict[str, Any]:
    if not isinstance(value, dict):
        raise doc.error(path, f"expected a mapping, got {_type_name(value)}")
    return value


def _sequence(doc: _Document, path: FieldPath, value: Any, *, non_empty: bool = False) -> List[Any]:
    if not isinstance(value, list):
        raise doc.error(path, f"expected a list, got {_type_name(value)}")
    if non_empty and not value:
        raise doc.error(path, "must list at least one entry")
    return value


def _required(doc: _Document, path: FieldPath, mapping: Mapping[str, Any], key: str) -> Any:
    if key not in mapping:
        raise doc.error(path + (key,), "required field is missing", line=doc.line_of(path))
    return mapping[key]


def _suggestion(name: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, sorted(candidates), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _apply_schema(
    doc: _Document, path: FieldPath, fields: Mapping[str, Any], schema: _Schema, what: str
) -> Tuple[Dict[str, Any], List[str]]:
    """Validate ``fields`` against ``schema``; unknown fields are returned as unsupported, not raised."""
    params: Dict[str, Any] = {}
    unsupported: List[str] = []
    for name, validate in schema.required.items():
        params[name] = validate(doc, path + (name,), _required(doc, path, fields, name))
    for name, value in fields.items():
        if name in schema.required:
            continue
        validate_optional = schema.optional.get(name)
        if validate_optional is None:
            known = {*schema.required, *schema.optional}
            unsupported.append(
                f"field '{_format_field(path + (name,))}' of {what} is not supported"
                f"{_suggestion(name, known)}; supported fields: {', '.join(sorted(known))}"
            )
            params[name] = value
        else:
            params[name] = validate_optional(doc, path + (name,), value)
    if schema.at_least_one_of and not any(name in fields for name in schema.at_least_one_of):
        raise doc.error(path, f"{what} needs at least one of: {', '.join(schema.at_least_one_of)}")
    return params, unsupported


def _unsupported_name(
    kind: str, name: str, path: FieldPath, supported: AbstractSet[str], known: AbstractSet[str]
) -> str:
    where = _format_field(path)
    if name in known:
        return (
            f"{kind} '{name}' ({where}) is not supported by kensa; supported: {', '.join(sorted(supported))}"
        )
    return f"unknown {kind} '{name}' ({where}){_suggestion(name, {*supported, *known})}"


def _parse_entry(
    doc: _Document,
    path: FieldPath,
    value: Any,
    name_field: str,
    kind: str,
    supported: AbstractSet[str],
    known: AbstractSet[str],
    schemas: Mapping[str, _Schema],
) -> Tuple[str, Dict[str, Any], List[str]]:
    """A mechanism step or a check: its name, its fields, and why it is unsupported (if it is)."""
    fields = _mapping(doc, path, value)
    name = _name(doc, path + (name_field,), _required(doc, path, fields, name_field))
    rest = {key: field_value for key, field_value in fields.items() if key != name_field}
    if name not in supported:
        return name, rest, [_unsupported_name(kind, name, path + (name_field,), supported, known)]
    schema = schemas.get(name)
    if schema is None:
        # A name the caller supports but this loader has no field list for.
        return name, rest, []
    params, reasons = _apply_schema(doc, path, rest, schema, f"{kind} '{name}'")
    return name, params, reasons


def _one_or_many(
    doc: _Document, path: FieldPath, value: Any, list_field: str, name_field: str, what: str
) -> List[Tuple[FieldPath, Any]]:
    """Kensa's two forms: a single entry written inline, or ``list_field: [entries]``."""
    fields = _mapping(doc, path, value)
    if list_field not in fields:
        return [(path, fields)]
    if len(fields) != 1:
        extra = sorted(name for name in fields if name != list_field)[0]
        raise doc.error(
            path + (extra,), f"{what} has either '{list_field}' or '{name_field}' with its fields, not both"
        )
    entries = _sequence(doc, path + (list_field,), fields[list_field], non_empty=True)
    return [(path + (list_field, i), entry) for i, entry in enumerate(entries)]


def _parse_checks(
    doc: _Document, path: FieldPath, value: Any, methods: AbstractSet[str]
) -> Tuple[Check, ...]:
    checks = []
    for entry_path, entry in _one_or_many(doc, path, value, "checks", "method", "a check"):
        method, params, reasons = _parse_entry(
            doc,
            entry_path,
            entry,
            "method",
            "check method",
            methods,
            _KENSA_CHECK_METHODS | SUPPORTED_CHECK_METHODS,
            _CHECK_SCHEMAS,
        )
        checks.append(Check(method, params, supported=not reasons, unsupported_reason="; ".join(reasons)))
    return tuple(checks)


def _parse_remediation(
    doc: _Document, path: FieldPath, value: Any, mechanisms: AbstractSet[str]
) -> Tuple[Tuple[Step, ...], List[str]]:
    steps = []
    all_reasons: List[str] = []
    for entry_path, entry in _one_or_many(doc, path, value, "steps", "mechanism", "a remediation"):
        mechanism, params, reasons = _parse_entry(
            doc,
            entry_path,
            entry,
            "mechanism",
            "mechanism",
            mechanisms,
            _KENSA_MECHANISMS | SUPPORTED_MECHANISMS,
            _MECHANISM_SCHEMAS,
        )
        steps.append(Step(mechanism, params))
        all_reasons += reasons
    return tuple(steps), all_reasons


def _capability_list(doc: _Document, path: FieldPath, value: Any) -> Tuple[str, ...]:
    if isinstance(value, str):
        return (_capability(doc, path, value),)
    items = _sequence(doc, path, value, non_empty=True)
    return tuple(_capability(doc, path + (i,), item) for i, item in enumerate(items))


def _parse_gate(doc: _Document, path: FieldPath, value: Any) -> CapabilityGate:
    if isinstance(value, str):
        return CapabilityGate(all_of=_capability_list(doc, path, value))
    if not isinstance(value, dict):
        raise doc.error(
            path, f"expected a capability name or a mapping of all, any or not, got {_type_name(value)}"
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
    doc: _Document, path: FieldPath, value: Any, mechanisms: AbstractSet[str], methods: AbstractSet[str]
) -> Implementation:
    fields = _mapping(doc, path, value)
    for name in fields:
        if name not in _IMPLEMENTATION_FIELDS:
            raise doc.error(
                path + (name,),
                f"unknown field{_suggestion(name, _IMPLEMENTATION_FIELDS)}; "
                f"an implementation has: {', '.join(sorted(_IMPLEMENTATION_FIELDS))}",
            )
    default = _boolean(doc, path + ("default",), fields["default"]) if "default" in fields else False
    when = _parse_gate(doc, path + ("when",), fields["when"]) if "when" in fields else None
    if default and when is not None:
        raise doc.error(path + ("when",), "the default implementation must not have a 'when' gate")
    if not default and when is None:
        raise doc.error(path, "needs a 'when' capability gate or 'default: true'")
    checks = _parse_checks(doc, path + ("check",), fields["check"], methods) if "check" in fields else ()
    steps, reasons = _parse_remediation(
        doc, path + ("remediation",), _required(doc, path, fields, "remediation"), mechanisms
    )
    reasons = [check.unsupported_reason for check in checks if not check.supported] + reasons
    return Implementation(
        when=when,
        default=default,
        checks=checks,
        steps=steps,
        supported=not reasons,
        unsupported_reason="; ".join(reasons),
    )


def _parse_platform(doc: _Document, path: FieldPath, value: Any) -> Platform:
    fields = _mapping(doc, path, value)
    for name in fields:
        if name not in ("family", "min_version", "max_version", "derivatives"):
            raise doc.error(
                path + (name,), "unknown field; a platform has: family, min_version, max_version, derivatives"
            )
    family = _family(doc, path + ("family",), _required(doc, path, fields, "family"))
    versions: Dict[str, Optional[int]] = {"min_version": None, "max_version": None}
    for name in versions:
        if name in fields:
            number = fields[name]
            if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= 10_000:
                raise doc.error(
                    path + (name,),
                    f"expected a major version number such as 8, got {_type_name(number)} {number!r}",
                )
            versions[name] = number
    min_version = versions["min_version"]
    if min_version is None:
        raise doc.error(path + ("min_version",), "required field is missing", line=doc.line_of(path))
    max_version = versions["max_version"]
    if max_version is not None and max_version < min_version:
        raise doc.error(path + ("max_version",), f"{max_version} is below min_version {min_version}")
    derivatives = (
        _boolean(doc, path + ("derivatives",), fields["derivatives"]) if "derivatives" in fields else True
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


def _parse_document(
    doc: _Document, value: Any, mechanisms: AbstractSet[str], methods: AbstractSet[str]
) -> Rule:
    if value is None:
        raise doc.at_line(doc.line_of(()), "the YAML document is empty; it must hold one rule mapping")
    if not isinstance(value, dict):
        raise doc.at_line(
            doc.line_of(()), f"a rule file must hold a mapping of rule fields, got {_type_name(value)}"
        )
    for name in value:
        if name not in _RULE_FIELDS:
            raise doc.error((name,), f"unknown rule field{_suggestion(name, _RULE_FIELDS)}")
    rule_id = _expect_str(doc, ("id",), _required(doc, (), value, "id"))
    if not RULE_ID_PATTERN.fullmatch(rule_id):
        raise doc.error(
            ("id",), f"{rule_id[:80]!r} is not a valid rule id; ids match {RULE_ID_PATTERN.pattern}"
        )
    title = _single_line(doc, ("title",), _required(doc, (), value, "title"))
    severity_text = _expect_str(doc, ("severity",), _required(doc, (), value, "severity"))
    try:
        severity = Severity(severity_text)
    except ValueError:
        raise doc.error(
            ("severity",), f"{severity_text[:40]!r} is not one of: low, medium, high, critical"
        ) from None
    category = _category(doc, ("category",), value["category"]) if "category" in value else ""
    description = _any_text(doc, ("description",), value["description"]) if "description" in value else ""
    if "rationale" in value:
        _any_text(doc, ("rationale",), value["rationale"])
    for id_list in ("depends_on", "conflicts_with", "supersedes"):
        if id_list in value:
            for i, other in enumerate(_sequence(doc, (id_list,), value[id_list])):
                _rule_id(doc, (id_list, i), other)
    if "references" in value:
        _mapping(doc, ("references",), value["references"])
    tags: Tuple[str, ...] = ()
    if "tags" in value:
        tags = tuple(
            _tag(doc, ("tags", i), tag) for i, tag in enumerate(_sequence(doc, ("tags",), value["tags"]))
        )
    transactional = (
        _boolean(doc, ("transactional",), value["transactional"]) if "transactional" in value else True
    )
    platforms: Tuple[Platform, ...] = ()
    if "platforms" in value:
        platforms = tuple(
            _parse_platform(doc, ("platforms", i), entry)
            for i, entry in enumerate(_sequence(doc, ("platforms",), value["platforms"]))
        )
    entries = _sequence(
        doc, ("implementations",), _required(doc, (), value, "implementations"), non_empty=True
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
    )


# --- public loaders ---------------------------------------------------------


def parse_rule(
    text: Union[str, bytes],
    source: str = "<string>",
    *,
    mechanisms: AbstractSet[str] = SUPPORTED_MECHANISMS,
    check_methods: AbstractSet[str] = SUPPORTED_CHECK_METHODS,
) -> Rule:
    """Parse one rule from YAML ``text``; ``source`` names it in errors.

    ``mechanisms`` and ``check_methods`` are the names this kensa can carry out;
    anything else loads as unsupported. Raises RuleError for any malformed input.
    """
    doc = _Document(source)
    raw = text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
    if len(raw) > MAX_RULE_FILE_BYTES:
        raise doc.at_line(1, f"rule file is {len(raw)} bytes, over the {MAX_RULE_FILE_BYTES}-byte limit")
    if isinstance(text, bytes):
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line = raw.count(b"\n", 0, exc.start) + 1
            raise doc.at_line(line, f"not UTF-8 text (byte {exc.start}); save the file as UTF-8") from None
    elif text.startswith("\ufeff"):
        text = text[1:]
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise doc.at_line(
            text.count("\n", 0, exc.start) + 1, "text holds a character that is not valid Unicode"
        ) from None
    try:
        value = _compose(doc, text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        problem = exc.problem or "invalid YAML"
        if "maximum nesting depth" in problem:
            # Newer libyaml stops deep nesting itself, before our own bound.
            raise doc.at_line(line, f"nesting deeper than {MAX_NESTING_DEPTH} levels; rule files are shallow") from None
        context = ""
        if exc.context:
            started = exc.context_mark
            at = f" at line {started.line + 1}" if started is not None and mark is not started else ""
            context = f" ({exc.context}{at})"
        column = f", column {mark.column + 1}" if mark is not None else ""
        raise doc.at_line(line, f"YAML syntax error{column}: {problem}{context}") from None
    except yaml.YAMLError as exc:
        position = getattr(exc, "position", None)
        line = text.count("\n", 0, position) + 1 if isinstance(position, int) else 1
        reason = getattr(exc, "reason", None) or str(exc).splitlines()[0]
        raise doc.at_line(line, f"YAML error: {reason}") from None
    if value is _NO_KEY:
        raise doc.at_line(1, "rule file is empty; it must hold one rule mapping")
    return _parse_document(doc, value, mechanisms, check_methods)


def load_rule_file(
    path: Union[str, "os.PathLike[str]"],
    *,
    mechanisms: AbstractSet[str] = SUPPORTED_MECHANISMS,
    check_methods: AbstractSet[str] = SUPPORTED_CHECK_METHODS,
) -> Rule:
    """Load the one rule in the YAML file at ``path``. Raises RuleError."""
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
    return parse_rule(data, name, mechanisms=mechanisms, check_methods=check_methods)


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
) -> List[Rule]:
    """Load rules from files and directories, in the order given.

    Directories are searched recursively for ``*.yml`` and ``*.yaml`` files,
    skipping hidden files and directories, in sorted path order; a file named
    directly is loaded whatever its suffix. A file reached twice is loaded
    once. Raises RuleError for the first malformed file, and for two files that
    define the same rule id (naming both).
    """
    rules: List[Rule] = []
    seen_files: Set[str] = set()
    by_id: Dict[str, Rule] = {}
    for given in paths:
        for file in _rule_files(Path(given)):
            key = os.path.realpath(file)
            if key in seen_files:
                continue
            seen_files.add(key)
            rule = load_rule_file(file, mechanisms=mechanisms, check_methods=check_methods)
            first = by_id.get(rule.id)
            if first is not None:
                raise RuleError(
                    f"{rule.source}: rule id '{rule.id}' is already defined in {first.source}; "
                    "rule ids must be unique, rename one"
                )
            by_id[rule.id] = rule
            rules.append(rule)
    return rules
