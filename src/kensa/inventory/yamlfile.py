"""Ansible's YAML inventory: groups of ``hosts``, ``vars`` and ``children``, from ``all`` down.

::

    all:
      vars:
        ansible_user: ops
      children:
        web:
          hosts:
            web01.example.com:
            web02.example.com: {ansible_port: 2222, kensa_root: /srv/web02}
          vars:
            ansible_ssh_private_key_file: /etc/kensa/id_ed25519

Read with kensa's bounded YAML reader (no aliases, tags or deep nesting;
every value keeps its line). Host names may be range patterns as in INI.
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

from kensa.errors import InventoryError, RuleError
from kensa.inventory.ini import expand_range
from kensa.inventory.tree import Tree, Value, check_name
from kensa.rules.yaml import Document, FieldPath, read_document

__all__ = ["parse_yaml"]

_GROUP_KEYS = ("hosts", "vars", "children")


def parse_yaml(text: bytes, source: str) -> Tree:
    """The tree of a YAML inventory; InventoryError at ``source:line`` for what it cannot read."""
    try:
        doc, top = read_document(text, source)
    except RuleError as exc:
        raise InventoryError(str(exc)) from None
    tree = Tree(source)
    if top is None:
        return tree
    if not isinstance(top, dict):
        raise InventoryError(f"{source}:{doc.line_of(())}: an inventory is a mapping of group names (start with 'all:')")
    for name, body in top.items():
        _group(tree, doc, (name,), name, body)
    return tree


def _group(tree: Tree, doc: Document, path: FieldPath, name: str, body: Any) -> None:
    line = doc.line_of(path)
    check_name(tree.source, line, "group", name)
    tree.group(name, line)
    if body is None:
        return
    if not isinstance(body, dict):
        raise InventoryError(f"{tree.source}:{line}: group {name!r} must be a mapping of {', '.join(_GROUP_KEYS)}")
    for key in body:
        if key not in _GROUP_KEYS:
            raise InventoryError(
                f"{tree.source}:{doc.line_of(path + (key,))}: group {name!r} has {key!r}; a group holds only "
                f"{', '.join(_GROUP_KEYS)} (host variables go under the host, group variables under vars)"
            )
    tree.groups[name].vars.update(_variables(tree, doc, path + ("vars",), body.get("vars")))
    for pattern, host_vars in _members(tree, doc, path, body, "hosts", "host names").items():
        where = path + ("hosts", pattern)
        variables = _variables(tree, doc, where, host_vars)
        for host in expand_range(tree.source, doc.line_of(where), pattern):
            tree.add_host(name, host, doc.line_of(where), variables)
    for child, child_body in _members(tree, doc, path, body, "children", "groups").items():
        where = path + ("children", child)
        tree.add_child(name, child, doc.line_of(where))
        _group(tree, doc, where, child, child_body)


def _members(tree: Tree, doc: Document, path: FieldPath, body: Dict[str, Any], key: str, what: str) -> Dict[str, Any]:
    """The group's ``hosts`` or ``children`` mapping (empty when absent)."""
    found = body.get(key)
    if found is None:
        return {}
    if not isinstance(found, dict):
        raise InventoryError(f"{tree.source}:{doc.line_of(path + (key,))}: {key} of group {path[-1]!r} must be a mapping of {what}")
    return found


def _variables(tree: Tree, doc: Document, path: FieldPath, body: Any) -> Dict[str, Tuple[Value, int]]:
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise InventoryError(f"{tree.source}:{doc.line_of(path)}: variables must be a mapping of name: value")
    found: Dict[str, Tuple[Value, int]] = {}
    for key, value in body.items():
        found[key] = (value, doc.line_of(path + (key,)))
    return found
