"""Which auditctl rule lines kensa accepts: one watch or syscall rule, no control options.

A rule line is handed to ``auditctl`` as its argument list, so every option in it
is carried out, not only the first. A watch or syscall rule followed by ``-e 2``
would lock the audit configuration until reboot, ``-f 2`` would make an audit
failure panic the kernel, ``-D`` would delete every rule. So a line is accepted
only when it is exactly one rule, built from an allow-list of options per kind:

- ``-w PATH`` (absolute) with ``-p PERMS`` (letters of ``rwxa``), ``-k KEY`` and
  ``-F key=KEY``;
- ``-a LIST,ACTION`` or ``-A LIST,ACTION`` with ``-S``, ``-F``, ``-C`` and ``-k``.

Each option takes exactly one argument (as auditctl's getopt reads them), so the
line is read as option/argument pairs and anything else is refused by name.

Some well-formed rules silence audit (:func:`silencing_reason`): every rule on
the ``exclude`` list (``-a exclude,always -F msgtype=USER`` drops every record
kensa writes; one that spares kensa's type still drops logins, AVCs or syscall
records an auditor expects), and every rule whose action is ``never``, on any
list. A field does not make a ``never`` rule narrow: ``-F auid>=0`` or
``-F pid>0`` match every task, and kensa cannot tell such a field from one that
narrows. The handler refuses these unless the step sets
``allow_silencing: true``. ``-e 0`` (audit off) is a control line and is
refused always.
Comparing rules (:func:`rule_identity`): ``auditctl -l`` prints a rule in its own
canonical spelling (``-k x`` on a syscall rule becomes ``-F key=x``, several ``-S``
merge into one comma list, a watch's trailing slash and permission order change),
so whether a rule is present, in a rules file or in the kernel, is decided on a
normalised identity. :func:`rules_hold` is what the ``audit_rule_set`` handler
validates and the ``audit_rule_exists`` check evaluates.
"""

from __future__ import annotations

import errno
import shlex
import operator
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from kensa.errors import AuditControlError, AuditRuleError, HostAccessError, ParamError
from kensa.hosts.protocol import ReadableHost

#: Options allowed after the first one, per rule kind.
WATCH_OPTIONS = frozenset({"-p", "-k", "-F"})
SYSCALL_OPTIONS = frozenset({"-S", "-F", "-C", "-k"})
_PERMS = frozenset("rwxa")


def rule_options(line: str) -> List[Tuple[str, str]]:
    """The (option, argument) pairs of the rule ``line``; raises AuditRuleError if refused.

    The first pair is ``-w``, ``-a`` or ``-A``; the others are from that kind's
    allow-list.
    """
    try:
        tokens = shlex.split(line)
    except ValueError as exc:  # unbalanced quotes
        raise AuditRuleError(f"cannot parse audit rule {line!r}: {exc}") from None
    if not tokens or tokens[0] not in ("-w", "-a", "-A"):
        first = tokens[0] if tokens else ""
        raise AuditRuleError(
            f"audit rule {line!r} starts with {first!r}: only '-w PATH ...' watches and "
            "'-a LIST,ACTION ...' syscall rules are accepted (control lines such as -D, -e, -f, -b are not)"
        )
    kind = tokens[0]
    allowed = WATCH_OPTIONS if kind == "-w" else SYSCALL_OPTIONS
    pairs: List[Tuple[str, str]] = []
    for index in range(0, len(tokens), 2):
        option = tokens[index]
        if index and option not in allowed:
            what = "a watch (-w)" if kind == "-w" else "a syscall rule (-a/-A)"
            raise AuditRuleError(
                f"audit rule {line!r}: option {option!r} is not allowed in {what}; "
                f"allowed are {', '.join(sorted(allowed))} (control and deletion options such as "
                "-e, -f, -D, -W, -d are refused)"
            )
        if index + 1 == len(tokens):
            raise AuditRuleError(f"audit rule {line!r}: option {option!r} has no argument")
        arg = tokens[index + 1]
        if kind == "-w" and option == "-F" and not arg.startswith("key="):
            raise AuditRuleError(f"audit rule {line!r}: a watch takes only '-F key=VALUE', not '-F {arg}'")
        if option == "-p" and (not arg or not set(arg) <= _PERMS):
            raise AuditRuleError(f"audit rule {line!r}: permissions {arg!r} must be letters of 'rwxa'")
        pairs.append((option, arg))
    target = pairs[0][1]
    if kind == "-w" and not target.startswith("/"):
        raise AuditRuleError(f"audit rule {line!r}: the watched path {target!r} must be absolute")
    if kind != "-w" and (target.count(",") != 1 or "" in target.split(",")):
        raise AuditRuleError(f"audit rule {line!r}: {target!r} is not LIST,ACTION such as 'always,exit'")
    return pairs


# auditctl's -F comparison operators, longest first so "<=" is not read as "<".
_OPERATORS: Sequence[Tuple[str, Callable[[int, int], bool]]] = (
    ("!=", operator.ne),
    ("<=", operator.le),
    (">=", operator.ge),
    ("&=", lambda value, mask: value & mask == mask),
    ("=", operator.eq),
    ("<", operator.lt),
    (">", operator.gt),
    ("&", lambda value, mask: bool(value & mask)),
)


def _field(arg: str) -> Tuple[str, str, str]:
    for symbol, _ in _OPERATORS:
        name, sep, value = arg.partition(symbol)
        if sep and name and not any(c in name for c in "!<>&="):
            return name, symbol, value
    return arg, "", ""


def _msgtype_admits(symbol: str, value: str, msg_type: int) -> bool:
    """Whether ``msgtype<symbol><value>`` holds for ``msg_type`` (AUDIT_USER); True when kensa cannot tell."""
    compare = dict(_OPERATORS)[symbol]
    text = value.strip()
    if text.isdigit():
        number = int(text)
    elif text.lower().startswith("0x"):
        try:
            number = int(text, 16)
        except ValueError:
            return True
    elif symbol in ("=", "!="):
        # auditctl's name of AUDIT_USER is USER; any other name is another type.
        number = msg_type if text.upper() == "USER" else -1
    else:
        return True  # an ordering or mask against a name kensa does not map: assume it covers
    return compare(msg_type, number)


def silencing_reason(line: str, audit_user: int) -> Optional[str]:
    """Why the rule ``line`` would silence audit itself, or None; see the module docstring.

    ``audit_user`` is the type of kensa's records, AUDIT_USER (the caller reads it
    from the C extension's cdef: this layer does not load it). ``line`` must be a
    rule :func:`rule_options` accepts (it raises AuditRuleError otherwise).
    """
    pairs = rule_options(line)
    if pairs[0][0] == "-w":
        return None
    first, second = pairs[0][1].split(",")
    actions = {"always", "never"}
    action, filter_list = (first, second) if first in actions else (second, first)
    fields = [_field(arg) for option, arg in pairs[1:] if option == "-F"]
    if filter_list == "exclude":
        # Whether it spares kensa's own records or not, an exclude rule drops records
        # an auditor expects (logins, AVCs, syscalls): always an explicit decision.
        msgtypes = [(symbol, value) for name, symbol, value in fields if name == "msgtype" and symbol]
        if all(_msgtype_admits(symbol, value, audit_user) for symbol, value in msgtypes):
            return (
                f"a rule on the exclude list that can match msgtype {audit_user} (AUDIT_USER) drops those "
                "records, kensa's own audit trail included"
            )
        return "a rule on the exclude list drops every record type it matches from the audit trail"
    if action == "never":
        # A field does not make it narrow: "-F auid>=0" or "-F pid>0" match every task,
        # and kensa cannot tell a narrowing field from one that matches everything.
        if filter_list == "user":
            return (
                f"'never' on the user list drops user records (msgtype {audit_user}, AUDIT_USER, among them), "
                "kensa's own audit trail included"
            )
        return f"'never' on the {filter_list} list turns off auditing of whatever it matches"
    return None


DEFAULT_PERSIST_FILE = "/etc/audit/rules.d/99-kensa.rules"
AUDITCTL_TIMEOUT = 30.0


def rule_identity(line: str) -> Tuple[Any, ...]:
    """A normalised form of a rule line under which auditctl's spellings compare equal."""
    try:
        pairs = rule_options(line)
    except AuditRuleError as exc:
        raise ParamError(f"audit_rule_set: {exc}", field="rule", problem=str(exc)) from None
    kind = "w" if pairs[0][0] == "-w" else "a"
    perms = "rwxa" if kind == "w" else ""
    target: Tuple[str, ...] = ()
    syscalls: List[str] = []
    fields: List[str] = []
    keys: List[str] = []
    for option, arg in pairs:
        if option == "-w":
            target = (arg.rstrip("/") or "/",)
        elif option in ("-a", "-A"):
            target = tuple(sorted(arg.split(",")))
        elif option == "-p":
            perms = arg
        elif option == "-S":
            syscalls.extend(arg.split(","))
        elif option == "-k":
            keys.append(arg)
        elif option == "-F" and arg.startswith("key="):
            keys.append(arg[len("key="):])
        else:
            fields.append(f"{option} {_unset_spelled_once(arg)}")
    if kind == "a" and not syscalls:
        syscalls = ["all"]  # auditctl -l shows a syscall rule without -S as '-S all'
    return (kind, target, "".join(sorted(set(perms))), tuple(sorted(set(syscalls))), tuple(sorted(fields)), tuple(keys))


# Fields holding a user or group id; auditctl -l prints their "unset" id as -1.
_ID_FIELDS = frozenset({"auid", "uid", "euid", "suid", "fsuid", "gid", "egid", "sgid", "fsgid", "ouid", "ogid"})


def _unset_spelled_once(arg: str) -> str:
    """``auid!=unset`` and ``auid!=4294967295`` as auditctl -l prints them: ``auid!=-1``."""
    name, symbol, value = _field(arg)
    if name in _ID_FIELDS and value in ("unset", "4294967295"):
        return f"{name}{symbol}-1"
    return arg


def identities(lines: Sequence[str]) -> List[Tuple[Any, ...]]:
    """The identities of the rule lines among ``lines`` (comments, control lines and lines
    kensa does not parse have none: they are never kensa's)."""
    found = []
    for line in lines:
        try:
            found.append(rule_identity(line))
        except (ParamError, ValueError):
            continue
    return found


def missing(rules: Sequence[str], present: Sequence[str]) -> List[str]:
    """The lines of ``rules`` whose identity is not among ``present``."""
    have = set(identities(present))
    return [line for line in rules if rule_identity(line) not in have]


def audit_rules(value: Any) -> List[str]:
    """A ``rule`` field: one rule line, several lines, or a list of them, each made of
    allowed options (blank and ``#`` lines skipped, repeats of one identity dropped)."""
    if isinstance(value, str):
        candidates = value.splitlines()
    elif isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value):
        candidates = list(value)
    else:
        raise ParamError(f"must be a rule line or a list of them, got {value!r}")
    rules = [line.strip() for line in candidates if line.strip() and not line.strip().startswith("#")]
    if not rules:
        raise ParamError("holds no rule")
    unique: Dict[Tuple[Any, ...], str] = {}
    for line in rules:
        try:
            unique.setdefault(rule_identity(line), line)
        except ParamError as exc:
            raise ParamError(f"{exc.problem}; write one rule such as '-w /etc/shadow -p wa -k identity'") from None
    return list(unique.values())


def auditctl(host: ReadableHost, args: Sequence[str]) -> Tuple[int, str]:
    """Run auditctl on ``host``: its exit status and output."""
    done = host.run(["auditctl", *args], AUDITCTL_TIMEOUT)
    return done.returncode, (done.stdout + done.stderr).strip()


def kernel_rules(host: ReadableHost) -> Optional[Dict[str, Any]]:
    """The kernel's audit state (``immutable``, the ``rules`` auditctl lists), or None when
    the target is not the live host or audit cannot be controlled there."""
    if not host.is_live:
        return None
    try:
        code, status = auditctl(host, ["-s"])
    except HostAccessError as exc:
        if exc.errno == errno.ENOENT:  # auditctl is not installed
            return None
        raise
    if code != 0:
        return None
    immutable = any(line.split() == ["enabled", "2"] for line in status.splitlines())
    code, listing = auditctl(host, ["-l"])
    if code != 0:
        raise AuditControlError(f"auditctl -l failed: {listing}")
    rules = [] if listing == "No rules" else [line for line in listing.splitlines() if line.strip()]
    return {"immutable": immutable, "rules": rules}


def rules_hold(host: ReadableHost, rules: Sequence[str], persist: str) -> bool:
    """Whether every rule is in the rules file ``persist`` and, where kensa can see it, loaded."""
    data = host.read_bytes(persist)
    text = "" if data is None else data.decode("utf-8", "surrogateescape")
    if missing(rules, text.splitlines()):
        return False
    kernel = kernel_rules(host)
    return kernel is None or not missing(rules, kernel["rules"])


RULES_DIR = "/etc/audit/rules.d"
LOADED_RULES_FILE = "/etc/audit/audit.rules"


def persisted_rules(host: ReadableHost) -> Tuple[List[str], List[str]]:
    """The rule lines of every rules file auditd loads at boot (each ``*.rules`` of
    /etc/audit/rules.d, which augenrules compiles, and /etc/audit/audit.rules, which
    auditd reads), and the files read."""
    names = host.list_dir(RULES_DIR) or []
    files = [f"{RULES_DIR}/{name}" for name in names if name.endswith(".rules") and not name.startswith(".")]
    lines: List[str] = []
    read: List[str] = []
    for path in files + [LOADED_RULES_FILE]:
        found = host.info(path, content=True)
        if found is None or found.kind != "file":
            continue
        read.append(path)
        lines += (found.content or b"").decode("utf-8", "surrogateescape").splitlines()
    return lines, read
