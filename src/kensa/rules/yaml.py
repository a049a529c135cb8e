"""A bounded YAML reader for rule files that keeps the line of every field.

The YAML event stream is turned into values by an iterative builder here, so no
input can recurse the interpreter or build objects other than str, int, float,
bool, None, list and dict. Hostile input is bounded: files larger than
:data:`MAX_RULE_FILE_BYTES`, nesting deeper than :data:`MAX_NESTING_DEPTH`, YAML
aliases (the "billion laughs" expansion), explicit tags, non-string or duplicate
keys and integers outside 64 bits are refused with a :class:`RuleError` naming
the file and line. One document per file: a second one (``---``) is an error.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple, Union

import yaml

from kensa.errors import RuleError
from kensa.facts.params import type_name

__all__ = ["MAX_NESTING_DEPTH", "MAX_RULE_FILE_BYTES", "Document", "FieldPath", "format_field", "read_document", "type_name"]

MAX_RULE_FILE_BYTES = 256 * 1024
"""Largest rule file accepted; real rules are a few kilobytes."""

MAX_NESTING_DEPTH = 32
"""Deepest nesting of mappings and lists accepted; real rules nest fewer than 10 levels."""

FieldPath = Tuple[Union[str, int], ...]
"""Where a value is in a document: mapping keys and list indexes from the top."""

_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_RESOLVER = yaml.resolver.Resolver()
_STR_TAG = "tag:yaml.org,2002:str"
_ALLOWED_EXPLICIT_TAGS = frozenset({_STR_TAG, "tag:yaml.org,2002:seq", "tag:yaml.org,2002:map", "!"})
_NO_KEY = object()


def format_field(path: FieldPath) -> str:
    """A field path as rule errors show it: ``implementations[0].remediation.mode``."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


class _Frame:
    __slots__ = ("value", "path", "key", "key_line")

    def __init__(self, value: Any, path: FieldPath) -> None:
        self.value = value
        self.path = path
        self.key: Any = _NO_KEY
        self.key_line = 0


class Document:
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
        where = f"field '{format_field(path)}': " if path else ""
        return RuleError(f"{self.source}:{line}: {where}{problem}")

    def at_line(self, line: int, problem: str) -> RuleError:
        return RuleError(f"{self.source}:{line}: {problem}")


def _scalar(doc: Document, event: Any) -> Any:
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


def _compose(doc: Document, text: str) -> Any:
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
                where = format_field(top.path) or "the top level"
                if isinstance(event, yaml.ScalarEvent):
                    shown = f"{event.value[:40]!r} (read as {type_name(key)})"
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


def read_document(text: Union[str, bytes], source: str) -> Tuple[Document, Any]:
    """The values of the one YAML document in ``text`` and where each one is.

    ``source`` names the text in errors. Raises RuleError for text that is too
    large, not UTF-8, not valid YAML, empty, or outside the bounds above.
    """
    doc = Document(source)
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
    return doc, value
