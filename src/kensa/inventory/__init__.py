"""Inventory files: the hosts of a fleet, their groups and how to log in to each.

kensa reads the inventories Ansible users already keep, INI or YAML (see
docs/inventory.md): :func:`load_inventory` gives each host once, in the order
the file declares them, as an :class:`~kensa.model.InventoryHost` whose
``target`` is the :class:`~kensa.model.RemoteTarget` to remediate;
:func:`select_hosts` keeps those a ``--limit`` names. Reading does no I/O but
reading the one file, and a malformed file changes nothing: it is an
:class:`~kensa.errors.InventoryError` naming ``file:line``.
"""

from __future__ import annotations

import os
from typing import List, Sequence, Union

from kensa.errors import InventoryError
from kensa.inventory.ini import parse_ini
from kensa.model import InventoryHost

__all__ = ["MAX_INVENTORY_BYTES", "load_inventory", "parse_inventory", "select_hosts"]

MAX_INVENTORY_BYTES = 16 * 1024 * 1024
"""Largest INI inventory read (a YAML one is bounded by the YAML reader's limit, 256 KiB)."""

_YAML_SUFFIXES = (".yml", ".yaml", ".json")


def load_inventory(path: Union[str, "os.PathLike[str]"]) -> List[InventoryHost]:
    """Every host of the inventory file at ``path``, once each, in the order first declared.

    The format is YAML for a ``.yml``/``.yaml``/``.json`` file or a file whose
    first line of content is a mapping key (``all:``), INI otherwise.
    """
    source = os.fspath(path)
    try:
        with open(source, "rb") as handle:
            raw = handle.read(MAX_INVENTORY_BYTES + 1)
    except OSError as exc:
        raise InventoryError(f"{source}: cannot read the inventory: {exc.strerror or exc}") from None
    return parse_inventory(raw, source, yaml=source.endswith(_YAML_SUFFIXES) or None)


def parse_inventory(raw: bytes, source: str, *, yaml: Union[bool, None] = None) -> List[InventoryHost]:
    """The hosts of inventory text ``raw``; ``source`` names it in errors; ``yaml`` None: tell by the content."""
    if len(raw) > MAX_INVENTORY_BYTES:
        raise InventoryError(f"{source}:1: inventory is over the {MAX_INVENTORY_BYTES}-byte limit")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise InventoryError(f"{source}:{line}: not UTF-8 text (byte {exc.start}); save the inventory as UTF-8") from None
    if yaml is None:
        yaml = _looks_like_yaml(text)
    if yaml:
        # Imported here: a command reading an INI inventory logs in before it needs a YAML reader.
        from kensa.inventory.yamlfile import parse_yaml
        from kensa.rules.yaml import MAX_RULE_FILE_BYTES

        if len(raw) > MAX_RULE_FILE_BYTES:
            raise InventoryError(
                f"{source}:1: YAML inventory is {len(raw)} bytes, over the {MAX_RULE_FILE_BYTES}-byte limit; "
                "split it, or write it as INI"
            )
        return parse_yaml(raw, source).hosts()
    return parse_ini(text, source).hosts()


def _looks_like_yaml(text: str) -> bool:
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped[0] in "#;":
            continue
        return stripped == "---" or (stripped.endswith(":") and not stripped.startswith("["))
    return False


def select_hosts(hosts: Sequence[InventoryHost], limit: str, source: str = "the inventory") -> List[InventoryHost]:
    """The hosts that ``limit`` names, in inventory order.

    ``limit`` is one or more host or group names separated by ``,`` or ``:``
    (``all`` is every host). A name that is neither is an InventoryError
    naming ``source``: a typo must not quietly select nothing.
    """
    names = [name.strip() for name in limit.replace(":", ",").split(",") if name.strip()]
    if not names:
        raise InventoryError(f"--limit {limit!r}: names no host or group of {source}")
    known_groups = {group for host in hosts for group in host.groups}
    known_hosts = {host.name for host in hosts}
    for name in names:
        if name != "all" and name not in known_groups and name not in known_hosts:
            raise InventoryError(
                f"--limit {limit!r}: {source} has no host named {name!r} and no host in a group of that name"
            )
    wanted = set(names)
    if "all" in wanted:
        return list(hosts)
    return [host for host in hosts if host.name in wanted or wanted.intersection(host.groups)]
