"""The transaction mix that the load and audit-fault scenarios run, and what each must give.

Every kind has one right terminal status and a known number of audit records,
so a run can be checked transaction by transaction:

==============  ==============  ========================================================  =======
kind            status          records                                                   count
==============  ==============  ========================================================  =======
commit          committed       started, capture, apply, validate, committed              5
validate_fail   rolled_back     started, capture, apply, validate(failed), rolled_back    5
apply_fail      rolled_back     started, capture, apply(failed), rolled_back              4
skipped         skipped         started, skipped                                          2
errored         errored         started, errored (the step's directory is missing)        2
==============  ==============  ========================================================  =======

Commits rotate over the real capturable handlers, each time with a value no
earlier transaction wrote, so two runs on one root can interleave in any
order and every commit still changes the host.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple

from kensa.handlers import default_registry
from kensa.handlers.file_content import FileContent
from kensa.hosts.local import LocalHost
from kensa.model import PreState, RollbackResult, Status, Step, StepResult, Transaction

KINDS = ("commit",) * 6 + ("validate_fail", "apply_fail", "skipped", "errored")
EXPECTED: Dict[str, Tuple[Status, int]] = {
    "commit": (Status.COMMITTED, 5),
    "validate_fail": (Status.ROLLED_BACK, 5),
    "apply_fail": (Status.ROLLED_BACK, 4),
    "skipped": (Status.SKIPPED, 2),
    "errored": (Status.ERRORED, 2),
}
SKIP_FILE = "/etc/app/compliant.conf"
SKIP_CONTENT = "already compliant\n"


class UnverifiableContent(FileContent):
    """file_content whose result never verifies: validate fails, the engine rolls back."""

    name = "file_content_unverifiable"

    def validate(self, host: LocalHost, params: Mapping[str, Any]) -> bool:
        return False


class FailingContent(FileContent):
    """file_content that writes, then reports failure: the engine rolls the write back."""

    name = "file_content_failing"

    def apply(self, host: LocalHost, params: Mapping[str, Any], pre: Optional[PreState]) -> StepResult:
        super().apply(host, params, pre)
        return StepResult(self.name, ok=False, changed=True, detail="failed on purpose after writing")


class OverlapDetector:
    """Wraps a handler; counts calls that ran while another call on the same root was running."""

    def __init__(self, inner: Any, state: "OverlapState") -> None:
        self.inner = inner
        self.name = inner.name
        self.capturable = inner.capturable
        self._state = state

    def capture(self, host: LocalHost, params: Mapping[str, Any]) -> PreState:
        with self._state.inside(host.root):
            return self.inner.capture(host, params)  # type: ignore[no-any-return]

    def apply(self, host: LocalHost, params: Mapping[str, Any], pre: Optional[PreState]) -> StepResult:
        with self._state.inside(host.root):
            return self.inner.apply(host, params, pre)  # type: ignore[no-any-return]

    def validate(self, host: LocalHost, params: Mapping[str, Any]) -> bool:
        with self._state.inside(host.root):
            return bool(self.inner.validate(host, params))

    def rollback(self, host: LocalHost, pre: PreState) -> RollbackResult:
        with self._state.inside(host.root):
            return self.inner.rollback(host, pre)  # type: ignore[no-any-return]


class OverlapState:
    """Handler calls in progress per root, and how often two overlapped."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active: Counter[str] = Counter()
        self.overlaps: Counter[str] = Counter()
        self.calls = 0

    def inside(self, root: str) -> "_Inside":
        return _Inside(self, root)


class _Inside:
    def __init__(self, state: OverlapState, root: str) -> None:
        self._state, self._root = state, root

    def __enter__(self) -> None:
        with self._state._lock:
            self._state.calls += 1
            self._state._active[self._root] += 1
            if self._state._active[self._root] > 1:
                self._state.overlaps[self._root] += 1

    def __exit__(self, *exc: object) -> None:
        with self._state._lock:
            self._state._active[self._root] -= 1


def registry(overlaps: Optional[OverlapState] = None) -> Dict[str, Any]:
    """The built-in handlers plus the two misbehaving ones, wrapped when ``overlaps`` is given."""
    handlers: Dict[str, Any] = dict(default_registry())
    for cls in (UnverifiableContent, FailingContent):
        handlers[cls.name] = cls()
    if overlaps is not None:
        handlers = {name: OverlapDetector(h, overlaps) for name, h in handlers.items()}
    return handlers


def prepare_root(root: str) -> None:
    """Add what the mix needs to a tree from :func:`reliability.trees.make_root`."""
    LocalHost(root).write_file(SKIP_FILE, SKIP_CONTENT.encode(), mode=0o644)


_COMMITS = (
    lambda n: Step("file_content", {"path": f"/etc/app/conf-{n % 16}.conf", "content": f"value {n}\n", "mode": "0640"}),
    lambda n: Step("config_set", {"path": "/etc/ssh/sshd_config", "key": f"Key{n % 5}", "value": f"v{n}"}),
    lambda n: Step("config_append", {"path": "/etc/app/append.conf", "line": f"line {n}"}),
    lambda n: Step("sysctl_set", {"key": "kernel.kptr_restrict", "value": str(n)}),
    lambda n: Step("file_content", {"path": "/etc/motd", "content": f"motd {n}\n"}),
    lambda n: Step("file_permissions", {"path": "/etc/motd", "owner": 2000 + n % 60000, "mode": "0644"}),
)


def step_for(kind: str, n: int) -> Tuple[Step, ...]:
    """The steps of the ``n``-th transaction, of ``kind``; ``n`` is unique within a root."""
    if kind == "commit":
        return (_COMMITS[n % len(_COMMITS)](n),)
    if kind == "validate_fail":
        return (Step("file_content_unverifiable", {"path": "/etc/app/never.conf", "content": f"never {n}\n"}),)
    if kind == "apply_fail":
        return (Step("file_content_failing", {"path": "/etc/motd", "content": f"failing {n}\n"}),)
    if kind == "skipped":
        return (Step("file_content", {"path": SKIP_FILE, "content": SKIP_CONTENT}),)
    if kind == "errored":
        return (Step("file_content", {"path": "/no/such/dir/file", "content": "x"}),)
    raise ValueError(f"unknown transaction kind {kind!r}")


def transactions(root: str, count: int, start: int = 0, tag: str = "rel") -> Iterator[Tuple[str, Transaction]]:
    """``count`` (kind, transaction) pairs on ``root``, numbered from ``start``."""
    for n in range(start, start + count):
        kind = KINDS[n % len(KINDS)]
        yield kind, Transaction(f"{tag}-{kind}", step_for(kind, n), host=root, transactional=True)


def check(kinds: List[str], statuses: List[Status]) -> List[str]:
    """Transactions whose status is not the one their kind must give."""
    wrong = []
    for index, (kind, status) in enumerate(zip(kinds, statuses)):
        if status is not EXPECTED[kind][0]:
            wrong.append(f"transaction {index} ({kind}) ended {status.value}, expected {EXPECTED[kind][0].value}")
    return wrong


def expected_records(kinds: List[str]) -> int:
    return sum(EXPECTED[kind][1] for kind in kinds)
