"""Ansible's INI inventory: ``[group]``, ``[group:vars]``, ``[group:children]`` and host ranges.

::

    mail.example.com                      # before any section: group "ungrouped"

    [web]
    web[01:20].example.com ansible_user=ops
    db1 ansible_host=10.0.0.5 ansible_port=2222 kensa_root=/srv/db1

    [prod:children]
    web

    [prod:vars]
    ansible_ssh_private_key_file=/etc/kensa/id_ed25519

A host line is a name (or a range pattern) and ``key=value`` pairs, quoted
as in a shell; ``#`` and ``;`` start comments.
"""

from __future__ import annotations

import re
import shlex
from typing import Dict, List, Tuple

from kensa.errors import InventoryError
from kensa.inventory.tree import Tree, Value, check_name

__all__ = ["MAX_RANGE_HOSTS", "expand_range", "parse_ini"]

MAX_RANGE_HOSTS = 100_000
"""Most hosts one range pattern may expand to; a larger one is an error, not a memory blow-up."""

_SECTION = re.compile(r"^\[([^\]:\s]+)(?::(vars|children))?\]\s*$")
_RANGE = re.compile(r"\[([0-9]+|[a-z]):([0-9]+|[a-z])(?::([0-9]+))?\]")


def parse_ini(text: str, source: str) -> Tree:
    """The tree of an INI inventory; InventoryError at ``source:line`` for what it cannot read."""
    tree = Tree(source)
    group, kind = "ungrouped", "hosts"
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            found = _SECTION.match(line)
            if found is None:
                raise InventoryError(
                    f"{source}:{number}: section {line[:80]!r} is not [group], [group:vars] or [group:children]"
                )
            group, kind = check_name(source, number, "group", found.group(1)), found.group(2) or "hosts"
            tree.group(group, number)
            continue
        if kind == "vars":
            name, value = _variable(source, number, line)
            tree.group(group, number).vars[name] = (value, number)
            continue
        words = _words(source, number, line)
        if kind == "children":
            if len(words) != 1:
                raise InventoryError(f"{source}:{number}: a [{group}:children] line names one group, got {line[:80]!r}")
            tree.add_child(group, words[0], number)
        else:
            tree.group(group, number)
            variables = {name: (value, number) for name, value in _pairs(source, number, words[1:]).items()}
            for host in expand_range(source, number, words[0]):
                tree.add_host(group, host, number, variables)
    return tree


def _words(source: str, number: int, line: str) -> List[str]:
    try:
        lexer = shlex.shlex(line, posix=True, punctuation_chars=False)
        lexer.whitespace_split = True
        lexer.commenters = "#"
        return list(lexer)
    except ValueError as exc:
        raise InventoryError(f"{source}:{number}: cannot read {line[:80]!r}: {exc}") from None


def _variable(source: str, number: int, line: str) -> Tuple[str, Value]:
    # In a vars section spaces may surround "=", and the value is the rest of the line.
    name, equals, value = (part.strip() for part in line.partition("="))
    if not equals or not name.isidentifier():
        raise InventoryError(f"{source}:{number}: {line[:80]!r} is not a variable=value line")
    words = _words(source, number, value) if value else [""]
    return name, words[0] if len(words) == 1 else value


def _pairs(source: str, number: int, words: List[str]) -> Dict[str, Value]:
    pairs: Dict[str, Value] = {}
    for word in words:
        name, equals, value = word.partition("=")
        if not equals or not name.isidentifier():
            raise InventoryError(f"{source}:{number}: {word[:80]!r} is not a variable=value pair")
        pairs[name] = value
    return pairs


def expand_range(source: str, number: int, pattern: str) -> List[str]:
    """The host names of ``pattern``: ``web[01:03]`` is web01, web02, web03; ``[a:c]`` and ``[1:9:2]`` too."""
    found = _RANGE.search(pattern)
    if found is None:
        return [pattern]
    first, last, step = found.group(1), found.group(2), found.group(3)
    names = _range_items(source, number, pattern, first, last, int(step) if step else 1)
    head, tail = pattern[: found.start()], pattern[found.end() :]
    rest = expand_range(source, number, tail)
    if len(names) * len(rest) > MAX_RANGE_HOSTS:
        raise InventoryError(f"{source}:{number}: {pattern!r} expands to more than {MAX_RANGE_HOSTS} hosts")
    return [head + name + more for name in names for more in rest]


def _range_items(source: str, number: int, pattern: str, first: str, last: str, step: int) -> List[str]:
    numeric = first.isdigit()
    if numeric != last.isdigit() or step < 1:
        raise InventoryError(f"{source}:{number}: range in {pattern!r} mixes letters and numbers or has a step below 1")
    start, stop = (int(first), int(last)) if numeric else (ord(first), ord(last))
    if stop < start:
        raise InventoryError(f"{source}:{number}: range in {pattern!r} ends before it starts")
    if (stop - start) // step + 1 > MAX_RANGE_HOSTS:
        raise InventoryError(f"{source}:{number}: {pattern!r} expands to more than {MAX_RANGE_HOSTS} hosts")
    # A leading zero fixes the width: web[01:10] is web01 ... web10.
    width = len(first) if numeric and first.startswith("0") else 0
    return [str(value).zfill(width) if numeric else chr(value) for value in range(start, stop + 1, step)]
