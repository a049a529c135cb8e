"""Rule variables: ``{{ name }}`` in a rule's check and remediation fields, replaced by
a value from the operator's variable sources before the rule is validated or run.

Plain substitution, no expression language: ``{{ name }}`` (spaces inside the braces
optional; a name is a letter then letters, digits and ``_``) is replaced by the
variable's value as text. A list value is its members joined by ``,`` (as Kensa
renders one; a check that takes a set, such as ``set_compare``, splits it again),
so a member may hold neither ``,`` nor whitespace. A rule that uses a
variable no source defines is refused, naming every such variable: a template
must never reach a host.

Sources, lowest priority first, each later one winning on a name both define
(Kensa's layout of a configuration directory)::

    DIR/defaults.yml            variables: {name: value, ...}
    DIR/conf.d/*.yml            the same, in file-name order
    DIR/groups/<group>.yml      for each group of the target, in the order given
    DIR/hosts/<host>.yml        for the target's host name
    --var NAME=VALUE            on the command line

A missing file or directory is no source; a present one that is malformed is an
error naming the file, line and variable. Substitution happens in the parsed
strings, never in the YAML text, so a value cannot change the rule's structure.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from kensa.errors import VariableFileError
from kensa.rules.yaml import MAX_RULE_FILE_BYTES, FieldPath, read_document, type_name

__all__ = ["LIST_SEPARATOR", "TEMPLATE", "VARIABLE_NAME", "Variables", "load_variables", "parse_assignment", "substitute"]

VARIABLE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
"""What a variable's name may be."""

TEMPLATE = re.compile(r"\{\{\s*([A-Za-z][A-Za-z0-9_]*)\s*\}\}")
"""One ``{{ name }}`` template."""

LIST_SEPARATOR = ","
"""What joins the members of a list variable."""


@dataclass(frozen=True)
class Variables:
    """The variables one target's rules see: name -> text, and where each came from
    (a file path or ``--var``), for messages."""

    values: Mapping[str, str] = field(default_factory=dict)
    origins: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "values", MappingProxyType(dict(self.values)))
        object.__setattr__(self, "origins", MappingProxyType(dict(self.origins)))


def _text(value: Any) -> Optional[str]:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return str(value)
    return None


def _read_file(path: str) -> Dict[str, str]:
    try:
        with open(path, "rb") as stream:
            data = stream.read(MAX_RULE_FILE_BYTES + 1)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise VariableFileError(f"{path}: cannot read variable file: {exc.strerror or exc}") from None
    doc, value = read_document(data, path)
    if value is None:
        return {}
    if not isinstance(value, dict) or set(value) - {"variables"}:
        raise doc.at_line(doc.line_of(()), "a variable file holds one mapping, 'variables: {name: value, ...}'")
    block = value.get("variables")
    if block is None:
        return {}
    if not isinstance(block, dict):
        raise doc.error(("variables",), f"expected a mapping of variable names to values, got {type_name(block)}")
    found: Dict[str, str] = {}
    for name, item in block.items():
        where: FieldPath = ("variables", name)
        if not VARIABLE_NAME.fullmatch(name):
            raise doc.error(where, f"{name[:64]!r} is not a variable name (a letter, then letters, digits or '_')")
        text = _text(item)
        if text is not None:
            found[name] = text
            continue
        items = [_text(one) for one in item] if isinstance(item, list) else None
        if items is None or any(one is None for one in items):
            raise doc.error(where, f"a variable's value is a string, number, boolean or list of them, got {type_name(item)}")
        members = [one for one in items if one is not None]
        split = next((one for one in members if not one or LIST_SEPARATOR in one or one.split() != [one]), None)
        if split is not None:
            raise doc.error(where, f"list member {split[:64]!r} is empty or holds ',' or whitespace: it would split into other members")
        found[name] = LIST_SEPARATOR.join(members)
    return found


def _sources(config_dir: str, host: Optional[str], groups: Sequence[str]) -> List[str]:
    files = [os.path.join(config_dir, "defaults.yml")]
    conf_d = os.path.join(config_dir, "conf.d")
    try:
        files += [os.path.join(conf_d, name) for name in sorted(os.listdir(conf_d)) if name.endswith((".yml", ".yaml"))]
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise VariableFileError(f"{conf_d}: cannot list variable files: {exc.strerror or exc}") from None
    for kind, names in (("groups", list(groups)), ("hosts", [host] if host else [])):
        for name in names:
            if not name or "/" in name or name.startswith("."):
                raise VariableFileError(f"{kind[:-1]} name {name!r} cannot name a variable file in {config_dir}/{kind}")
            files.append(os.path.join(config_dir, kind, f"{name}.yml"))
    return files


def parse_assignment(text: str) -> Tuple[str, str]:
    """``NAME=VALUE`` as given to ``--var``: (name, value). Raises VariableFileError."""
    name, sep, value = text.partition("=")
    if not sep or not VARIABLE_NAME.fullmatch(name):
        raise VariableFileError(
            f"--var {text[:80]!r}: expected NAME=VALUE with NAME a letter, then letters, digits or '_'"
        )
    return name, value


def load_variables(
    config_dir: Optional[str] = None,
    *,
    host: Optional[str] = None,
    groups: Sequence[str] = (),
    overrides: Iterable[Tuple[str, str]] = (),
) -> Variables:
    """The variables of a target named ``host`` in ``groups``: the files of ``config_dir``
    (see the module docstring), then ``overrides`` (``--var`` pairs, the last one winning).

    Raises VariableFileError naming the file, line and variable when a source is malformed.
    """
    values: Dict[str, str] = {}
    origins: Dict[str, str] = {}
    if config_dir:
        if not os.path.isdir(config_dir):
            raise VariableFileError(f"{config_dir}: no such variable directory")
        for path in _sources(config_dir, host, groups):
            for name, value in _read_file(path).items():
                values[name], origins[name] = value, path
    for name, value in overrides:
        if not VARIABLE_NAME.fullmatch(name):
            raise VariableFileError(f"--var {name[:64]!r}: not a variable name (a letter, then letters, digits or '_')")
        values[name], origins[name] = value, "--var"
    return Variables(values, origins)


def substitute(value: Any, variables: Variables, missing: Dict[str, FieldPath], path: FieldPath = ()) -> Any:
    """``value`` (a parsed YAML tree at ``path``) with every template in its strings replaced.

    Each name no variable defines is added to ``missing`` with the first field using
    it, and its template left in place; the caller must refuse the result when
    ``missing`` is not empty.
    """
    if isinstance(value, dict):
        return {key: substitute(item, variables, missing, path + (key,)) for key, item in value.items()}
    if isinstance(value, list):
        return [substitute(item, variables, missing, path + (i,)) for i, item in enumerate(value)]
    if not isinstance(value, str) or "{{" not in value:
        return value

    def one(match: "re.Match[str]") -> str:
        name = match.group(1)
        found = variables.values.get(name)
        if found is None:
            missing.setdefault(name, path)
            return match.group(0)
        return found

    return TEMPLATE.sub(one, value)
