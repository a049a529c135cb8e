"""cron_job: a system crontab runs a command as a user on a schedule.

The entry ``<schedule> <user> <command>`` lives in ``file`` (a system crontab,
with a user field: ``/etc/crontab`` or a file of ``/etc/cron.d``), by default
``/etc/cron.d/<name>``, and without a name ``/etc/cron.d/kensa-<command's
letters and digits>``. Fields are checked strictly before anything is read
(:mod:`kensa.facts.cron`); the user must be in the target's /etc/passwd.

The step holds when the file has the entry (fields compared with spacing
ignored), is owned by root and is not group- or other-writable (cron skips
such a file). A missing file is created (0644, root:root) with a comment line
and the entry. In an existing file an entry of the same user and command with
another schedule is rewritten; otherwise the entry is appended; write bits for
group and others are cleared and the owner set to root. The footprint is that
one line (and those attributes): a rollback by id keeps other lines as they are.

Where the target has Debian's crontab (``-n``: dry run) or cronie's (``-T``),
the written file is also read back by it when the step is validated: a file
that cron's own parser refuses does not validate, so the transaction rolls back.
crontab reads the file on its standard input, opened under the target root as
kensa's own reads are: it is never given a path to resolve again, so a directory
swapped for a link out of the root cannot make it judge another file, and a root
at a path longer than crontab keeps (99 bytes) needs nothing special.
"""

from __future__ import annotations

import posixpath
from typing import Any, Dict, List, Mapping, Optional, Tuple

from kensa.errors import HostAccessError, ParamError
from kensa.facts.config import decode, encode
from kensa.facts.cron import CRON_D_NAME, command, cron_d_name, entries, schedule
from kensa.facts.params import Field, Schema, absolute_path, account, path_as_text
from kensa.handlers.filestate import OneFileStep, Revert, capture_file, post_state
from kensa.hosts.protocol import Host, ReadableHost
from kensa.model import PreState, StepResult

__all__ = ["SCHEMA", "CronJob", "cron_parser"]

HEADER = "# Managed by kensa (cron_job)\n"
_NEW_MODE = 0o644
_PARSER_TIMEOUT = 30.0
#: The bytes of a file name Debian's and cronie's crontab keep (a 100-byte buffer): a longer one is cut.
_CRONTAB_NAME_BYTES = 99


def _user(value: Any) -> str:
    found = account(value)
    if isinstance(found, int):
        raise ParamError(f"{found!r}: a crontab names its user by name, not by a numeric id")
    return found


def _short(name: str, value: str) -> None:
    # crontab cuts a path it is given at 99 bytes: a longer name could not be checked by hand with
    # "crontab -n ./NAME" from its own directory.
    if len(name.encode("utf-8", "surrogateescape")) > _CRONTAB_NAME_BYTES - 2:
        raise ParamError(f"{value!r}: crontab cannot check a file whose name is longer than "
                         f"{_CRONTAB_NAME_BYTES - 2} bytes")


def _name(value: Any) -> str:
    found = cron_d_name(value)
    _short(found, found)
    return found


def _file(value: Any) -> str:
    path_as_text(value)
    found = absolute_path(value)
    directory, name = posixpath.split(found)
    if directory == "/etc/cron.d" and not CRON_D_NAME.fullmatch(name):
        raise ParamError(f"{found!r}: cron skips files of /etc/cron.d whose names have characters other than "
                         "letters, digits, '_' and '-'")
    _short(name, found)
    return found


SCHEMA = Schema(
    "cron_job",
    {
        "schedule": Field(schedule, required=True),
        "command": Field(command, required=True),
        "user": Field(_user, required=True),
        "name": Field(_name),
        "file": Field(_file, written=path_as_text),
    },
)


def _derived_name(text: str) -> str:
    """A name cron reads, stable for a command: its ASCII letters and digits, runs of others as '-'."""
    kept = "".join(char if ("a" <= char.lower() <= "z" or "0" <= char <= "9") else "-" for char in text)
    return ("kensa-" + "-".join(part for part in kept.split("-") if part))[:64].rstrip("-")


def cron_parser(host: ReadableHost) -> Optional[List[str]]:
    """The argv prefix that makes the target's crontab check a file's syntax without installing it
    (Debian's ``crontab -n``, cronie's ``crontab -T``), or None when it has neither."""
    try:
        usage = host.run(["crontab", "-h"], _PARSER_TIMEOUT)
    except HostAccessError:
        return None
    text = (usage.stdout or "") + (usage.stderr or "")
    lines = [line.strip() for line in text.splitlines()]
    if any(line.startswith("-n") and "dry run" in line for line in lines):
        return ["crontab", "-n"]
    if any(line.startswith("-T") and "test" in line for line in lines):
        return ["crontab", "-T"]
    return None


class CronJob(OneFileStep):
    """One entry of a system crontab, in a root-owned file cron reads."""

    name = "cron_job"
    quick_reads = False  # its validate runs crontab
    capturable = True
    schema = SCHEMA

    def _desired(self, params: Mapping[str, Any]) -> Tuple[str, Tuple[str, ...], str, str]:
        read = SCHEMA.read(params)
        if read["file"] and read["name"]:
            raise ParamError(f"{self.name}: give name or file, not both", field="file", problem="give name or file, not both")
        path = read["file"] or f"/etc/cron.d/{read['name'] or _derived_name(read['command'])}"
        return path, read["schedule"], read["user"], read["command"]

    def _line(self, params: Mapping[str, Any]) -> str:
        _, fields, user, cmd = self._desired(params)
        return f"{' '.join(fields)} {user} {cmd}"

    def _edit(self, text: Optional[str], params: Mapping[str, Any]) -> Tuple[str, Optional[str], str]:
        """The file's text with the entry, the line it replaced (None: appended), and the line written."""
        _, fields, user, cmd = self._desired(params)
        line = self._line(params)
        if text is None:
            return HEADER + line + "\n", None, line
        lines = text.splitlines(keepends=True)
        found = entries(text)
        if any(entry == (fields, user, cmd) for _, entry in found):
            return text, None, ""
        for index, (_, found_user, found_cmd) in found:
            if (found_user, found_cmd) == (user, cmd):
                old = lines[index]
                lines[index] = line + old[len(old.rstrip("\r\n")):]
                return "".join(lines), old.rstrip("\r\n"), line
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n"
        return "".join(lines) + line + "\n", None, line

    def _attributes(self, state: Mapping[str, Any]) -> Dict[str, int]:
        if not state.get("exists"):
            return {"mode": _NEW_MODE, "uid": 0, "gid": 0}
        return {"mode": int(state["mode"]) & ~0o022, "uid": 0, "gid": 0 if int(state["uid"]) != 0 else int(state["gid"])}

    def validate(self, host: ReadableHost, params: Mapping[str, Any]) -> bool:
        path, fields, user, cmd = self._desired(params)
        found = host.read_file(path)
        if found is None or found.uid != 0 or found.mode & 0o022:
            return False
        if not any(entry == (fields, user, cmd) for _, entry in entries(decode(found.content))):
            return False
        parser = cron_parser(host)
        if parser is None:
            return True
        # crontab reads the file as "-" from a descriptor the host opened under its root: a path
        # string would be resolved again by crontab, through a directory link planted since the
        # read above, and the verdict could be about a file outside the root.
        return host.run(parser + ["-"], _PARSER_TIMEOUT, stdin_file=path).returncode == 0

    def capture(self, host: ReadableHost, params: Mapping[str, Any]) -> PreState:
        path, _, user, _ = self._desired(params)
        host.lookup_id("passwd", user)  # a user the target does not have is refused before anything changes
        state = capture_file(host, path)
        if state.get("exists") and state.get("kind") != "file":
            raise ParamError(f"{self.name}: {host.where(path)} is not a regular file; nothing was changed")
        post = post_state(state, self.written(PreState(self.name, params, state)), **self._attributes(state))
        return PreState(self.name, params, {**state, "post": post})

    def apply(self, host: Host, params: Mapping[str, Any], pre: Optional[PreState]) -> StepResult:
        path, _, user, _ = self._desired(params)
        host.lookup_id("passwd", user)
        current = host.read_file(path)
        text, _, written = self._edit(None if current is None else decode(current.content), params)
        state: Dict[str, Any] = {"exists": False} if current is None else {"exists": True, "mode": current.mode, "uid": current.uid,
                                                                           "gid": current.gid}
        wanted = self._attributes(state)
        if current is not None and not written and all(getattr(current, key) == value for key, value in wanted.items()):
            return StepResult(self.name, ok=True, changed=False)
        host.write_file(path, encode(text), mode=wanted["mode"], uid=wanted["uid"], gid=wanted["gid"])
        return StepResult(self.name, ok=True, changed=True, detail=f"cron entry for {user} in {host.where(path)}")

    def written(self, pre: PreState) -> Optional[bytes]:
        content = decode(pre.data.get("content")) if pre.data.get("exists") else None
        return encode(self._edit(content, pre.params)[0])

    def revert(self, pre: PreState) -> Optional[Revert]:
        if not pre.data.get("exists"):
            return self._revert_created(self._line(pre.params))
        _, old, written = self._edit(decode(pre.data.get("content")), pre.params)

        def revert(now: bytes) -> Optional[bytes]:
            if not written:
                return now
            lines = decode(now).splitlines(keepends=True)
            for index in range(len(lines) - 1, -1, -1):
                if lines[index].rstrip("\r\n") == written:
                    if old is None:
                        del lines[index]
                    else:
                        lines[index] = old + lines[index][len(lines[index].rstrip("\r\n")):]
                    return encode("".join(lines))
            return None

        return revert

    @staticmethod
    def _revert_created(written: str) -> Revert:
        """Undo a file kensa created: its comment line and entry go; lines added since stay (nothing
        left: the file goes). None when kensa's entry is no longer there as written."""

        def revert(now: bytes) -> Optional[bytes]:
            lines = decode(now).splitlines(keepends=True)
            plain = [line.rstrip("\r\n") for line in lines]
            if written not in plain:
                return None
            del lines[plain.index(written)]
            if HEADER in lines:
                lines.remove(HEADER)
            return encode("".join(lines))

        return revert
