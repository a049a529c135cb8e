"""The groups, hosts and variables an inventory file declares, and the targets they make.

Both file formats fill one :class:`Tree`; :meth:`Tree.hosts` then resolves
each host's variables (``all`` first, then its groups from the outermost to
the innermost, siblings by name, then the host's own: Ansible's order) and
turns them into a :class:`~kensa.model.RemoteTarget`. Every value keeps the
line it was written on, so a bad one is reported at ``file:line``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Set, Tuple

from kensa.errors import InventoryError
from kensa.model import InventoryHost, RemoteTarget

__all__ = ["Tree", "Value", "check_name"]

# A variable's value as written: text from INI, any YAML value (other tools'
# lists and mappings included; kensa reads only its own variables).
Value = Any

# The variables kensa reads, each with its older Ansible spelling.
_HOST_VARS = ("ansible_host", "ansible_ssh_host")
_USER_VARS = ("ansible_user", "ansible_ssh_user")
_PORT_VARS = ("ansible_port", "ansible_ssh_port")
_KEY_VARS = ("ansible_ssh_private_key_file", "ansible_private_key_file")
_ROOT_VAR = "kensa_root"
# kensa's own spelling first: it wins over Ansible's when a host has both.
_PYTHON_VARS = ("kensa_python", "ansible_python_interpreter")
_KENSA_VARS = frozenset({_ROOT_VAR, "kensa_python"})

# A name must not start with "-" (ssh would read it as an option) nor hold
# whitespace, control characters, or the characters of a host key's syntax.
_BAD_NAME = re.compile(r"^-|[\s\x00-\x1f\x7f/@\[\]]|^$")


def check_name(source: str, line: int, what: str, name: str) -> str:
    """``name`` when it may name a host, user or group; otherwise an InventoryError at ``source:line``."""
    if _BAD_NAME.search(name):
        raise InventoryError(
            f"{source}:{line}: {what} name {name!r} is not usable: it must be non-empty, must not start "
            "with '-', and must not hold whitespace, control characters, '/', '@', '[' or ']'"
        )
    return name


@dataclass
class _Group:
    line: int
    hosts: Dict[str, None] = field(default_factory=dict)  # an ordered set
    vars: Dict[str, Tuple[Value, int]] = field(default_factory=dict)
    children: List[Tuple[str, int]] = field(default_factory=list)


class Tree:
    """What one inventory file declares, in the order it declares it."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.groups: Dict[str, _Group] = {"all": _Group(1)}
        self.host_lines: Dict[str, int] = {}
        self.host_vars: Dict[str, Dict[str, Tuple[Value, int]]] = {}

    def group(self, name: str, line: int) -> _Group:
        """The group ``name``, declared at ``line`` when it is new."""
        found = self.groups.get(name)
        if found is None:
            found = self.groups[name] = _Group(line)
        return found

    def add_host(self, group: str, name: str, line: int, variables: Dict[str, Tuple[Value, int]]) -> None:
        """Put host ``name`` (declared at ``line``) into ``group``, with its own variables."""
        check_name(self.source, line, "host", name)
        self.host_lines.setdefault(name, line)
        self.host_vars.setdefault(name, {}).update(variables)
        self.groups[group].hosts[name] = None

    def add_child(self, parent: str, child: str, line: int) -> None:
        """Make ``child`` a child group of ``parent``; ``all`` is nobody's child."""
        check_name(self.source, line, "group", child)
        if child == "all":
            raise InventoryError(f"{self.source}:{line}: group 'all' cannot be a child of {parent!r}; it holds every host")
        self.group(child, line)
        if all(name != child for name, _ in self.groups[parent].children):
            self.groups[parent].children.append((child, line))

    # --- resolution -------------------------------------------------------------

    def hosts(self) -> List[InventoryHost]:
        """Every host once, in the order first declared, with its target and groups."""
        depth = self._depths()
        parents: Dict[str, List[str]] = {}
        for name, group in self.groups.items():
            for child, _ in group.children:
                parents.setdefault(child, []).append(name)
        order = {name: index for index, name in enumerate(self.groups)}
        direct: Dict[str, List[str]] = {}
        for name, group in self.groups.items():
            for host in group.hosts:
                direct.setdefault(host, []).append(name)
        found: List[InventoryHost] = []
        by_key: Dict[str, InventoryHost] = {}
        for host in self.host_lines:
            member: Set[str] = set()
            todo = list(direct[host])
            while todo:
                name = todo.pop()
                if name not in member:
                    member.add(name)
                    todo.extend(parents.get(name, []))
            member.discard("all")
            merged: Dict[str, Tuple[Value, int]] = dict(self.groups["all"].vars)
            for name in sorted(member, key=lambda g: (depth[g], g)):
                merged.update(self.groups[name].vars)
            merged.update(self.host_vars[host])
            entry = InventoryHost(host, self._target(host, merged), tuple(sorted(member, key=order.__getitem__)))
            same = by_key.get(entry.target.key)
            if same is not None:
                if same.target != entry.target:
                    raise InventoryError(
                        f"{self.source}:{self.host_lines[host]}: host {host!r} is the same target as host "
                        f"{same.name!r} (line {self.host_lines[same.name]}), {entry.target.key}, with other "
                        "login settings; give one of them another port, user or kensa_root, or remove it"
                    )
                continue
            by_key[entry.target.key] = entry
            found.append(entry)
        return found

    def _depths(self) -> Dict[str, int]:
        """Each group's distance from ``all`` along its longest path; a cycle of children is an error."""
        incoming = {name: 0 for name in self.groups}
        for group in self.groups.values():
            for child, _ in group.children:
                incoming[child] += 1
        ready = [name for name, count in incoming.items() if count == 0]
        depth: Dict[str, int] = {}
        done: Set[str] = set()
        while ready:
            name = ready.pop()
            done.add(name)
            depth.setdefault(name, 0 if name == "all" else 1)
            for child, _ in self.groups[name].children:
                depth[child] = max(depth.get(child, 0), depth[name] + 1)
                incoming[child] -= 1
                if incoming[child] == 0:
                    ready.append(child)
        if len(done) < len(self.groups):
            raise self._cycle({name for name in self.groups if name not in done})
        return depth

    def _cycle(self, left: Set[str]) -> InventoryError:
        """The error naming one cycle among ``left``, the groups every one of which has a parent among them."""
        edges = {(child, parent): line for parent in left for child, line in self.groups[parent].children if child in left}
        name = min(left, key=list(self.groups).index)
        seen: List[str] = []
        while name not in seen:
            seen.append(name)
            name = next(parent for child, parent in edges if child == name)
        cycle = seen[seen.index(name) :]
        cycle.reverse()
        # Shown from the group declared first, so the message does not depend on the walk.
        first = cycle.index(min(cycle, key=list(self.groups).index))
        cycle = cycle[first:] + cycle[:first]
        shown = " -> ".join(cycle + [cycle[0]])
        line = edges[(cycle[0], cycle[-1])]
        return InventoryError(
            f"{self.source}:{line}: groups are their own descendants ({shown}); remove one of these children"
        )

    def _target(self, host: str, merged: Dict[str, Tuple[Value, int]]) -> RemoteTarget:
        for name, (_, line) in merged.items():
            if name.startswith("kensa_") and name not in _KENSA_VARS:
                known = ", ".join(sorted(_KENSA_VARS))
                raise InventoryError(f"{self.source}:{line}: unknown variable {name!r} for host {host!r}; kensa reads {known}")
        address = self._text(merged, _HOST_VARS, host) or host
        check_name(self.source, self._line(merged, _HOST_VARS, host), "host", address)
        user = self._text(merged, _USER_VARS, host)
        if user is not None:
            check_name(self.source, self._line(merged, _USER_VARS, host), "user", user)
        return RemoteTarget(
            host=address,
            user=user,
            port=self._port(merged, host),
            root=self._root(merged, host),
            identity_file=self._text(merged, _KEY_VARS, host),
            python=self._python(merged, host),
        )

    def _pick(self, merged: Dict[str, Tuple[Value, int]], names: Tuple[str, ...]) -> Optional[Tuple[Value, int]]:
        for name in names:
            if name in merged:
                return merged[name]
        return None

    def _line(self, merged: Dict[str, Tuple[Value, int]], names: Tuple[str, ...], host: str) -> int:
        picked = self._pick(merged, names)
        return picked[1] if picked is not None else self.host_lines[host]

    def _text(self, merged: Dict[str, Tuple[Value, int]], names: Tuple[str, ...], host: str) -> Optional[str]:
        picked = self._pick(merged, names)
        if picked is None or picked[0] is None:
            return None
        value, line = picked
        if not isinstance(value, str) or not value or "\x00" in value or "\n" in value:
            raise InventoryError(f"{self.source}:{line}: {names[0]} of host {host!r} must be non-empty text on one line, got {value!r}")
        return value

    def _port(self, merged: Dict[str, Tuple[Value, int]], host: str) -> Optional[int]:
        picked = self._pick(merged, _PORT_VARS)
        if picked is None or picked[0] is None:
            return None
        value, line = picked
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, str) and value.isdigit())):
            raise InventoryError(f"{self.source}:{line}: ansible_port of host {host!r} is {value!r}, not a port number (1-65535)")
        port = int(value)
        if not 1 <= port <= 65535:
            raise InventoryError(f"{self.source}:{line}: ansible_port of host {host!r} is {port}, outside 1-65535")
        return port

    def _python(self, merged: Dict[str, Tuple[Value, int]], host: str) -> Optional[str]:
        python = self._text(merged, _PYTHON_VARS, host)
        # Ansible's discovery modes: kensa's own search stands for them.
        if python is None or python in ("auto", "auto_silent", "auto_legacy", "auto_legacy_silent"):
            return None
        if not python.startswith("/") or re.search(r"[\s\x00-\x1f\x7f]", python):
            line = self._line(merged, _PYTHON_VARS, host)
            raise InventoryError(f"{self.source}:{line}: the Python interpreter of host {host!r} is {python!r}; "
                                 "it must be an absolute path without whitespace (kensa does not look it up on PATH)")
        return python

    def _root(self, merged: Dict[str, Tuple[Value, int]], host: str) -> str:
        root = self._text(merged, (_ROOT_VAR,), host)
        if root is None:
            return "/"
        if not root.startswith("/"):
            line = merged[_ROOT_VAR][1]
            raise InventoryError(f"{self.source}:{line}: kensa_root of host {host!r} is {root!r}; it must be an absolute path")
        return root
