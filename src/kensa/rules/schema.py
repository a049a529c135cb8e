"""Validating a rule file's fields, each at its file:line and field path.

Rule-level fields (id, title, tags, platforms, gates) are checked here. The
fields of a remediation step or a check are checked with the schema its handler
or check method owns (:data:`kensa.handlers.SCHEMAS`, :data:`kensa.checks.SCHEMAS`):
the very functions that read them at run time. The names kensa supports are
derived from those registries, never listed here.
"""

from __future__ import annotations

import difflib
import re
from typing import AbstractSet, Any, Callable, Dict, FrozenSet, Iterable, List, Mapping, Tuple

from kensa.checks import SCHEMAS as CHECK_SCHEMAS
from kensa.errors import ParamError
from kensa.facts.params import STEP_FIELDS, Reader, Schema, as_text, boolean as read_boolean, line, text
from kensa.handlers import SCHEMAS as MECHANISM_SCHEMAS
from kensa.model import Step
from kensa.rules import contract
from kensa.rules.model import Check
from kensa.rules.yaml import Document, FieldPath, format_field, type_name

RULE_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
"""Rule ids: start with a letter or digit, then up to 127 of ``A-Z a-z 0-9 . _ : -``."""

SUPPORTED_MECHANISMS: FrozenSet[str] = frozenset(MECHANISM_SCHEMAS)
"""Remediation mechanisms kensa has handlers for (the default of every loader)."""

SUPPORTED_CHECK_METHODS: FrozenSet[str] = frozenset(CHECK_SCHEMAS)
"""Check methods kensa evaluates (the default of every loader)."""

KENSA_MECHANISMS: FrozenSet[str] = frozenset(contract.KENSA_MECHANISMS)
"""Mechanism names Kensa's schema defines (kensa lacks some: those load as unsupported)."""

KENSA_CHECK_METHODS: FrozenSet[str] = frozenset(contract.KENSA_CHECK_METHODS)
"""Check-method names Kensa's schema defines (kensa lacks some: those load as unsupported)."""

Validator = Callable[[Document, FieldPath, Any], Any]

_CATEGORY = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:+-]{0,63}$")
_FAMILY = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_CAPABILITY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
_NAME = re.compile(r"^[A-Za-z0-9_]{1,64}$")


def _reading(read: Reader, written: Callable[[Any], None] = as_text) -> Validator:
    """A validator from a field reader: its ParamError becomes a RuleError at the field."""

    def validate(doc: Document, path: FieldPath, value: Any) -> Any:
        try:
            written(value)
            return read(value)
        except ParamError as exc:
            raise doc.error(path, exc.problem) from None

    return validate


def _matching(pattern: "re.Pattern[str]", what: str) -> Validator:
    def check(doc: Document, path: FieldPath, value: Any) -> str:
        found: str = expect_str(doc, path, value)
        if not pattern.fullmatch(found):
            raise doc.error(path, f"{found[:80]!r} is not {what}")
        return found

    return check


expect_str = _reading(text)
"""A string (as written: YAML's unquoted numbers and booleans are refused)."""
single_line = _reading(line)
"""A non-empty single line without control characters."""
boolean = _reading(read_boolean, lambda value: None)
"""true or false."""
capability = _matching(_CAPABILITY, "a capability name")
category = _matching(_CATEGORY, "a category such as 'access-control'")
family = _matching(_FAMILY, "an OS family such as 'rhel'")
tag = _matching(_TAG, "a tag")
rule_id = _matching(RULE_ID_PATTERN, "a rule id")
_name = _matching(_NAME, "a name (letters, digits and '_')")


def mapping(doc: Document, path: FieldPath, value: Any) -> Dict[str, Any]:
    if not isinstance(value, dict):
        raise doc.error(path, f"expected a mapping, got {type_name(value)}")
    return value


def sequence(doc: Document, path: FieldPath, value: Any, *, non_empty: bool = False) -> List[Any]:
    if not isinstance(value, list):
        raise doc.error(path, f"expected a list, got {type_name(value)}")
    if non_empty and not value:
        raise doc.error(path, "must list at least one entry")
    return value


def required(doc: Document, path: FieldPath, mapping: Mapping[str, Any], key: str) -> Any:
    if key not in mapping:
        raise doc.error(path + (key,), "required field is missing", line=doc.line_of(path))
    return mapping[key]


def suggestion(name: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, sorted(candidates), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _apply_schema(
    doc: Document, path: FieldPath, fields: Mapping[str, Any], schema: Schema, what: str, name: str, kind: str
) -> Tuple[Dict[str, Any], List[str]]:
    """Validate ``fields`` with the handler's or check method's own ``schema``.

    What Kensa's schema allows but kensa's does not (a field kensa does not read, a
    field Kensa does not require here, a value Kensa accepts) is returned as
    unsupported; what Kensa's schema refuses too raises RuleError at the field.
    """
    terms = contract.KENSA_MECHANISMS if kind == "mechanism" else contract.KENSA_CHECK_METHODS
    theirs = terms.get(name)
    kensa_fields = (theirs.fields if theirs else frozenset()) | (
        contract.KENSA_REMEDIATION_FIELDS if kind == "mechanism" else frozenset()
    )
    known = sorted(schema.fields)
    unsupported = []
    for extra in schema.unknown(fields):
        shown = format_field(path + (extra,))
        if extra in kensa_fields:
            unsupported.append(f"field '{shown}' of {what} is not supported by kensa; kensa reads: {', '.join(known)}")
        else:
            unsupported.append(
                f"field '{shown}' of {what} is not supported{suggestion(extra, known)}; supported fields: {', '.join(known)}"
            )
    refused = False
    for field, spec in schema.fields.items():
        at = path + (field,)
        if field not in fields:
            if not spec.required:
                continue
            if theirs is not None and not theirs.requires(field, set(fields)):
                unsupported.append(f"{what} ({format_field(path)}) without '{field}' is not supported by kensa")
                refused = True
                continue
            raise doc.error(at, "required field is missing", line=doc.line_of(path))
        try:
            spec.written(fields[field])
            spec.read(fields[field])
        except ParamError as exc:
            if not contract.kensa_accepts(name, field, fields[field], spec.read):
                raise doc.error(at, exc.problem) from None
            unsupported.append(f"field '{format_field(at)}' of {what}: kensa {exc.problem}")
            refused = True
    if refused:
        return dict(fields), unsupported
    try:
        schema.read({field: value for field, value in fields.items() if field in schema.fields})
    except ParamError as exc:
        where = path + (exc.field,) if exc.field else path
        line = None if exc.field in fields else doc.line_of(path)
        problem = exc.problem if exc.field else f"{what}: {exc.problem}"
        raise doc.error(where, problem, line=line) from None
    return dict(fields), unsupported


def _unsupported_name(
    kind: str, name: str, path: FieldPath, supported: AbstractSet[str], known: AbstractSet[str]
) -> str:
    where = format_field(path)
    if name in known:
        return (
            f"{kind} '{name}' ({where}) is Kensa's but not supported by kensa yet; "
            f"kensa supports: {', '.join(sorted(supported))}"
        )
    return f"unknown {kind} '{name}' ({where}){suggestion(name, {*supported, *known})}"


def _parse_entry(
    doc: Document,
    path: FieldPath,
    value: Any,
    name_field: str,
    kind: str,
    supported: AbstractSet[str],
    known: AbstractSet[str],
    schemas: Mapping[str, Schema],
) -> Tuple[str, Dict[str, Any], List[str]]:
    """A mechanism step or a check: its name, its fields, and why it is unsupported (if it is)."""
    fields = mapping(doc, path, value)
    name = _name(doc, path + (name_field,), required(doc, path, fields, name_field))
    rest = {key: field_value for key, field_value in fields.items() if key != name_field}
    if name not in supported:
        return name, rest, [_unsupported_name(kind, name, path + (name_field,), supported, known)]
    schema = schemas.get(name)
    if schema is None:
        # A name the caller supports but this loader has no field list for.
        return name, rest, []
    if kind == "mechanism":
        # Fields of every step (``unless``), read by the engine with the same readers.
        schema = Schema(schema.owner, {**STEP_FIELDS, **schema.fields}, schema.at_least_one_of, schema.check)
    params, reasons = _apply_schema(doc, path, rest, schema, f"{kind} '{name}'", name, kind)
    return name, params, reasons


def _one_or_many(
    doc: Document, path: FieldPath, value: Any, list_field: str, name_field: str, what: str
) -> List[Tuple[FieldPath, Any]]:
    """Kensa's two forms: a single entry written inline, or ``list_field: [entries]``."""
    fields = mapping(doc, path, value)
    if list_field not in fields:
        return [(path, fields)]
    if len(fields) != 1:
        extra = sorted(name for name in fields if name != list_field)[0]
        raise doc.error(
            path + (extra,), f"{what} has either '{list_field}' or '{name_field}' with its fields, not both"
        )
    entries = sequence(doc, path + (list_field,), fields[list_field], non_empty=True)
    return [(path + (list_field, i), entry) for i, entry in enumerate(entries)]


_KINDS = {
    # list field, name field, what, the kind in messages, names known but not built, schemas
    "check": ("checks", "method", "a check", "check method", KENSA_CHECK_METHODS, CHECK_SCHEMAS),
    "remediation": ("steps", "mechanism", "a remediation", "mechanism", KENSA_MECHANISMS, MECHANISM_SCHEMAS),
}


def _entries(
    doc: Document, path: FieldPath, value: Any, kind: str, supported: AbstractSet[str]
) -> List[Tuple[str, Dict[str, Any], List[str]]]:
    list_field, name_field, what, named, known, schemas = _KINDS[kind]
    return [
        _parse_entry(doc, entry_path, entry, name_field, named, supported, known, schemas)
        for entry_path, entry in _one_or_many(doc, path, value, list_field, name_field, what)
    ]


def parse_checks(doc: Document, path: FieldPath, value: Any, methods: AbstractSet[str]) -> Tuple[Check, ...]:
    """A ``check``: one method with its fields, or ``checks: [...]``."""
    return tuple(
        Check(method, params, supported=not reasons, unsupported_reason="; ".join(reasons))
        for method, params, reasons in _entries(doc, path, value, "check", methods)
    )


def parse_remediation(
    doc: Document, path: FieldPath, value: Any, mechanisms: AbstractSet[str]
) -> Tuple[Tuple[Step, ...], List[str]]:
    """A ``remediation``: its steps, and why it is unsupported (empty when it is not)."""
    entries = _entries(doc, path, value, "remediation", mechanisms)
    return tuple(Step(name, params) for name, params, _ in entries), [r for _, _, reasons in entries for r in reasons]
