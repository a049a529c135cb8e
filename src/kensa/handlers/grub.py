"""grub_parameter_set / grub_parameter_remove: a kernel boot parameter is set (or absent) at
the next boot. On a live host both are ``staged``: the running kernel keeps its command line
until a reboot (the rule's check, which reads /proc/cmdline there, holds only after it). On an
image root there is no running kernel: the configuration is the change, and it commits.

The configuration is GRUB_CMDLINE_LINUX in /etc/default/grub: set writes
``key=value`` in its last assignment (in place of the key's first word there, or
appended) and takes every other ``key`` word out of GRUB_CMDLINE_LINUX and
GRUB_CMDLINE_LINUX_DEFAULT (a later word would win at boot); remove takes every
``key`` and ``key=...`` word out of both. The quoting, the other words and the
rest of the file are kept. A line kensa cannot read without a shell (``$``,
backquotes, backslashes, unbalanced quotes) is refused, naming it.

On a live host the boot loader is then brought in line, as the distribution's
own tools do: ``grubby --update-kernel=ALL --args=key=value`` (or
``--remove-args=key``) where grubby is installed (RHEL, Fedora: it rewrites the
boot loader entries under /boot/loader/entries and grubenv), otherwise
``grub2-mkconfig``/``grub-mkconfig -o <grub.cfg>`` (Debian, Ubuntu). kensa never
writes a boot entry itself; every file those tools may rewrite is captured first
and put back byte for byte on rollback. Without either tool the mechanism is not
available on that host. On an image root only /etc/default/grub is edited (no
tool runs against an image), and an image with boot loader entries is refused:
its entries are grubby's to write on the running system.
"""

from __future__ import annotations

import errno
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from kensa.errors import HostAccessError, NotAvailableError, ParamError
from kensa.facts import boot
from kensa.facts.config import decode, encode
from kensa.facts.params import Field, Schema, line, line_matching
from kensa.facts.tools import find_program
from kensa.handlers.filestate import (
    FilePlan,
    Planned,
    Revert,
    assess_file,
    capture_file,
    combine,
    fidelity_notes,
    planned_file,
    post_state,
    restore_file,
    restore_planned,
    restored,
    rollback_result,
    settled_files,
)
from kensa.hosts.protocol import Host, ReadableHost
from kensa.model import Assessment, Drift, PreState, RollbackResult, StepResult

TOOL_TIMEOUT = 300.0
KERNEL_CMDLINE = "/etc/kernel/cmdline"
#: mkconfig tool -> the grub.cfg it writes.
MKCONFIG = (("grub2-mkconfig", "/boot/grub2/grub.cfg"), ("grub-mkconfig", "/boot/grub/grub.cfg"))

_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_VALUE = re.compile(r"[A-Za-z0-9_.,:=/+@%~-]{0,256}")
_ASSIGN = re.compile(r"\s*(?:export\s+)?(GRUB_CMDLINE_LINUX(?:_DEFAULT)?)=")
_WORD = re.compile(r"\S+")
_SHELL = set("$`\\")


def _key(value: Any) -> str:
    return line_matching(value, _KEY, "a kernel parameter name (letters, digits, '_', '.', '-')")


def _value(value: Any) -> str:
    found = line(value) if isinstance(value, str) else str(value)
    if isinstance(value, bool) or not _VALUE.fullmatch(found):
        raise ParamError(f"{found[:80]!r} is not a kernel parameter value kensa writes (no spaces, quotes or shell characters)")
    return found


SET_SCHEMA = Schema("grub_parameter_set", {"key": Field(_key, required=True), "value": Field(_value, required=True)})
REMOVE_SCHEMA = Schema("grub_parameter_remove", {"key": Field(_key, required=True)})


def _split(text: str, where: str) -> Tuple[str, str, str, str]:
    """An assignment line as (up to '=', the quote, the words, the rest); refuses what needs a shell."""
    match = _ASSIGN.match(text)
    assert match is not None
    head, rest = text[:match.end()], text[match.end():]
    quote = rest[:1] if rest[:1] in ("'", '"') else ""
    if quote:
        end = rest.find(quote, 1)
        if end < 0:
            raise ParamError(f"{where}: unbalanced quotes in {match.group(1)}; fix the line first")
        words, tail = rest[1:end], rest[end:]
    else:
        found = re.match(r"\S*", rest)
        words = found.group() if found else ""
        tail = rest[len(words):]
    if _SHELL & set(words) or (not quote and ("'" in words or '"' in words)):
        raise ParamError(f"{where}: {match.group(1)} uses shell expansion or escapes; kensa edits only plain words")
    return head, quote, words, tail


def _edit_words(words: str, key: str, wanted: Optional[str]) -> str:
    """``words`` without any ``key`` word, or with its first one replaced by ``wanted`` (appended
    when there is none); the spacing between the other words is kept."""
    matches = [m for m in _WORD.finditer(words) if m.group().partition("=")[0] == key]
    out = words
    for index in reversed(range(len(matches))):
        start, end = matches[index].span()
        if index == 0 and wanted is not None:
            out = out[:start] + wanted + out[end:]
            continue
        before = start
        while before > 0 and out[before - 1].isspace():
            before -= 1
        if before > 0:
            out = out[:before] + out[end:]
        else:
            after = end
            while after < len(out) and out[after].isspace():
                after += 1
            out = out[:start] + out[after:]
    if wanted is not None and not matches:
        out += ("" if not out or out[-1].isspace() else " ") + wanted
    return out


def _assignments(lines: List[str]) -> List[int]:
    return [index for index, text in enumerate(lines) if _ASSIGN.match(text)]


def edited(text: str, key: str, wanted: Optional[str], where: str = boot.DEFAULT_GRUB) -> str:
    """/etc/default/grub's ``text`` with ``wanted`` (``key=value``) set in the last
    GRUB_CMDLINE_LINUX and every other ``key`` word gone (``wanted`` None: every one gone)."""
    lines = text.splitlines(keepends=True)
    indexes = _assignments(lines)
    linux = [i for i in indexes if lines[i].lstrip().replace("export ", "", 1).lstrip().startswith("GRUB_CMDLINE_LINUX=")]
    for index in indexes:
        body = lines[index].rstrip("\r\n")
        head, quote, words, tail = _split(body, f"{where}:{index + 1}")
        new = _edit_words(words, key, wanted if linux and index == linux[-1] else None)
        if new == words:
            continue
        if not quote and len(new.split()) > 1:
            quote, tail = '"', '"' + tail
        lines[index] = head + quote + new + tail + lines[index][len(body):]
    if wanted is not None and not linux:
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n"
        lines.append(f'GRUB_CMDLINE_LINUX="{wanted}"\n')
    return "".join(lines)


def _revert(before: str, after: str) -> Revert:
    """Undo only kensa's edit: when the assignment lines are still exactly those kensa wrote,
    they go back to what they were; every other line stays as it is now. None otherwise."""
    old_lines, new_lines = before.splitlines(keepends=True), after.splitlines(keepends=True)
    old = [old_lines[i].rstrip("\r\n") for i in _assignments(old_lines)]
    new = [new_lines[i].rstrip("\r\n") for i in _assignments(new_lines)]

    def revert(now: bytes) -> Optional[bytes]:
        lines = decode(now).splitlines(keepends=True)
        indexes = _assignments(lines)
        if [lines[i].rstrip("\r\n") for i in indexes] != new:
            return None
        for index in reversed(indexes[len(old):]):  # the line kensa appended
            del lines[index]
        for index, text in zip(indexes, old):
            lines[index] = text + lines[index][len(lines[index].rstrip("\r\n")):]
        return encode("".join(lines))

    return revert


class _GrubParameter:
    """The shared body of grub_parameter_set and grub_parameter_remove."""

    name = ""
    capturable = True
    schema = SET_SCHEMA

    def _desired(self, params: Mapping[str, Any]) -> Tuple[str, Optional[str]]:
        raise NotImplementedError

    def _holds(self, words: List[str], params: Mapping[str, Any]) -> bool:
        key, wanted = self._desired(params)
        found = boot.parameter(words, key)
        return found is None if wanted is None else f"{key}={found}" == wanted

    def validate(self, host: ReadableHost, params: Mapping[str, Any]) -> bool:
        words = boot.grub_defaults(host)
        return words is not None and self._holds(words, params)

    def _require_default_grub(self, host: ReadableHost) -> None:
        folder, _, name = boot.DEFAULT_GRUB.rpartition("/")
        if name not in (host.list_dir(folder) or []):
            raise NotAvailableError(f"{self.name}: not available on this host: {host.where(boot.DEFAULT_GRUB)} does not exist")

    def _tool(self, host: ReadableHost) -> Optional[Tuple[str, Optional[str]]]:
        """(tool, the grub.cfg it writes or None for grubby) on a live host; None on an image."""
        if not host.is_live:
            if host.list_dir(boot.BLS_ENTRIES):
                raise NotAvailableError(
                    f"{self.name}: not available on an image root with boot loader entries "
                    f"({host.where(boot.BLS_ENTRIES)}): grubby writes them on the running system")
            return None
        if find_program(host, "grubby") is not None:
            return "grubby", None
        for tool, cfg in MKCONFIG:
            if find_program(host, tool) is not None:
                return tool, cfg
        raise NotAvailableError(f"{self.name}: not available on this host: grubby or grub-mkconfig is not installed")

    def _boot_files(self, host: ReadableHost, tool: Optional[Tuple[str, Optional[str]]]) -> List[str]:
        if tool is None:
            return []
        if tool[1] is not None:
            return [tool[1]]
        entries = [f"{boot.BLS_ENTRIES}/{name}" for name in host.list_dir(boot.BLS_ENTRIES) or [] if name.endswith(".conf")]
        return [*entries, boot.GRUBENV, KERNEL_CMDLINE]

    def capture(self, host: ReadableHost, params: Mapping[str, Any]) -> PreState:
        key, wanted = self._desired(params)
        self._require_default_grub(host)
        state = capture_file(host, boot.DEFAULT_GRUB)
        state["post"] = post_state(state, encode(edited(decode(state["content"]), key, wanted, host.where(boot.DEFAULT_GRUB))))
        tool = self._tool(host)
        files = [capture_file(host, path) for path in self._boot_files(host, tool)]
        data: Dict[str, Any] = {"default": state, "tool": None if tool is None else list(tool), "boot": files}
        return PreState(self.name, params, data)

    def apply(self, host: Host, params: Mapping[str, Any], pre: Optional[PreState]) -> StepResult:
        key, wanted = self._desired(params)
        self._require_default_grub(host)
        old = host.read_bytes(boot.DEFAULT_GRUB)
        new = encode(edited(decode(old), key, wanted, host.where(boot.DEFAULT_GRUB)))
        tool = self._tool(host) if pre is None else pre.data["tool"]
        if new != old:
            host.write_file(boot.DEFAULT_GRUB, new)
        said = f"{wanted or key + ' removed'} in {host.where(boot.DEFAULT_GRUB)}"
        if tool is not None:
            argv = self._tool_argv(tool, key, wanted)
            done = host.run(argv, TOOL_TIMEOUT)
            if done.returncode != 0:
                raise HostAccessError(errno.EIO, f"{self.name}: {' '.join(argv)} failed: {done.stderr.strip()[:300]}")
            said += f", then {' '.join(argv)}"
        words = boot.grub_defaults(host)
        if words is None or not self._holds(words, params):
            return StepResult(self.name, ok=False, changed=new != old, detail=f"{said}, but it does not read back")
        if not host.is_live:
            # An image has no running kernel to wait for: its configuration is the whole
            # change, and the rule's check (which reads it) holds now.
            return StepResult(self.name, ok=True, changed=new != old, detail=f"{said}; in effect when the image boots")
        return StepResult(self.name, ok=True, changed=True, staged=True, detail=f"{said}; staged: in effect after a reboot")

    @staticmethod
    def _tool_argv(tool: Sequence[Optional[str]], key: str, wanted: Optional[str]) -> List[str]:
        if tool[0] == "grubby":
            change = f"--args={wanted}" if wanted is not None else f"--remove-args={key}"
            return ["grubby", "--update-kernel=ALL", change]
        return [str(tool[0]), "-o", str(tool[1])]

    def planned(self, host: ReadableHost, pre: PreState) -> Planned:
        key, wanted = self._desired(pre.params)
        state = pre.data["default"]
        return planned_file(state, encode(edited(decode(state["content"]), key, wanted)))

    def settled(self, host: ReadableHost, pre: PreState, assessment: Assessment, force: bool = False) -> Planned:
        return settled_files(host, [pre.data["default"], *pre.data["boot"]], assessment, force)

    def assess(self, host: ReadableHost, pre: PreState) -> Assessment:
        key, wanted = self._desired(pre.params)
        state = pre.data["default"]
        before = decode(state["content"])
        plans: List[Any] = [assess_file(host, state, state.get("post"), _revert(before, edited(before, key, wanted)))]
        for captured in pre.data["boot"]:
            plans.append(self._assess_boot_file(host, captured))
        return combine(plans)

    def _assess_boot_file(self, host: ReadableHost, captured: Mapping[str, Any]) -> FilePlan:
        """A file grubby or grub-mkconfig rewrote: what they wrote is theirs to decide, so kensa
        cannot tell its change from a later one; only a file still as captured is left alone."""
        path = str(captured["path"])
        now = host.info(path, content=True)
        same = (now is None) if not captured["exists"] else (now is not None and now.content == captured["content"])
        if same:
            return FilePlan(path, Drift.AT_PRE)
        return FilePlan(path, Drift.CONFLICT, (f"{path} was rewritten by the boot loader's tool; --force puts back the captured file",))

    def restore(self, host: Host, pre: PreState, assessment: Assessment, force: bool = False) -> RollbackResult:
        files = [pre.data["default"], *pre.data["boot"]]
        problems: List[str] = []
        for captured, plan in zip(files, assessment.plan):
            problems += restore_planned(host, captured, plan, force)
        return restored(self.name, problems, assessment, force, fidelity_notes(host, files))

    def rollback(self, host: Host, pre: PreState) -> RollbackResult:
        files = [pre.data["default"], *pre.data["boot"]]
        problems: List[str] = []
        for captured in files:
            problems += restore_file(host, captured)
        return rollback_result(self.name, problems, fidelity_notes(host, files))


class GrubParameterSet(_GrubParameter):
    """Set ``key=value`` on the kernel command line of the next boot."""

    name = "grub_parameter_set"
    schema = SET_SCHEMA

    def _desired(self, params: Mapping[str, Any]) -> Tuple[str, Optional[str]]:
        read = SET_SCHEMA.read(params)
        return read["key"], f"{read['key']}={read['value']}"


class GrubParameterRemove(_GrubParameter):
    """Take ``key`` (bare or with any value) off the kernel command line of the next boot."""

    name = "grub_parameter_remove"
    schema = REMOVE_SCHEMA

    def _desired(self, params: Mapping[str, Any]) -> Tuple[str, Optional[str]]:
        return REMOVE_SCHEMA.read(params)["key"], None
