"""The Host seam: LocalHost and PlannedView meet the protocols, and a step runner runs phases."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kensa.errors import StepPhaseError, UnknownMechanismError
from kensa.handlers import default_registry
from kensa.hosts import Host, LocalHost, LocalStepRunner, PlannedView, ReadableHost, StepRunner
from kensa.model import FileInfo, Phase, PreState, RollbackResult, StepResult

BANNER = {"path": "/etc/issue", "content": "Authorized use only.\n", "mode": "0644"}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "issue").write_text("Debian\n")
    os.chmod(tmp_path / "etc" / "issue", 0o644)
    return tmp_path


def test_local_host_is_a_host_and_a_planned_view_only_reads(root: Path) -> None:
    """LocalHost meets Host; a PlannedView meets ReadableHost but not Host, and refuses writes by name."""
    host = LocalHost(str(root))
    view = host.overlay({"/etc/issue": None})
    assert isinstance(host, Host) and isinstance(host, ReadableHost)
    assert isinstance(view, PlannedView) and isinstance(view, ReadableHost)
    assert not isinstance(view, Host)
    with pytest.raises(AttributeError, match="write_file: a planned view of .* is read-only"):
        view.write_file("/etc/issue", b"x\n")  # type: ignore[attr-defined]
    assert (root / "etc" / "issue").read_text() == "Debian\n"


def test_a_planned_view_answers_planned_paths_from_the_plan(root: Path) -> None:
    """Reads of a planned path come from the plan (absent, or the planned bytes); others from the host."""
    host = LocalHost(str(root))
    planned = FileInfo("file", 0o600, 0, 0, {}, b"planned\n")
    view = host.overlay({"/etc/issue": planned})
    assert view.read_bytes("/etc/issue") == b"planned\n"
    assert view.info("/etc/issue") == FileInfo("file", 0o600, 0, 0, {}, None)
    assert view.overlay({"/etc/issue": None}).read_file("/etc/issue") is None
    assert host.read_bytes("/etc/issue") == b"Debian\n"
    assert view.root == host.root and view.is_live == host.is_live and view.identity == host.identity


def test_local_step_runner_runs_each_phase_as_the_handler_does(root: Path) -> None:
    """Capture, apply, validate and rollback through LocalStepRunner change the real tree and restore it."""
    runner = LocalStepRunner(LocalHost(str(root)), default_registry())
    assert isinstance(runner, StepRunner)
    assert runner.run_phase("file_content", Phase.VALIDATE, BANNER) is False
    pre = runner.run_phase("file_content", Phase.CAPTURE, BANNER)
    assert isinstance(pre, PreState) and pre.mechanism == "file_content"
    applied = runner.run_phase("file_content", Phase.APPLY, BANNER, pre)
    assert isinstance(applied, StepResult) and applied.ok and applied.changed
    assert (root / "etc" / "issue").read_text() == BANNER["content"]
    assert runner.run_phase("file_content", Phase.VALIDATE, BANNER) is True
    undone = runner.run_phase("file_content", Phase.ROLLBACK, BANNER, pre)
    assert isinstance(undone, RollbackResult) and undone.ok
    assert (root / "etc" / "issue").read_text() == "Debian\n"


def test_capture_through_planned_files_sees_the_plan(root: Path) -> None:
    """A capture given ``planned`` records what earlier steps will leave, not what is there now."""
    runner = LocalStepRunner(LocalHost(str(root)), default_registry())
    planned = {"/etc/issue": FileInfo("file", 0o644, os.geteuid(), os.getegid(), {}, b"from step one\n")}
    pre = runner.run_phase("file_content", Phase.CAPTURE, BANNER, planned=planned)
    assert isinstance(pre, PreState)
    assert pre.data["content"] == b"from step one\n"
    assert runner.run_phase("file_content", Phase.VALIDATE, {**BANNER, "content": "from step one\n"}, planned=planned)
    assert (root / "etc" / "issue").read_text() == "Debian\n"


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda r: r.run_phase("no_such", Phase.CAPTURE, BANNER), UnknownMechanismError, "no handler for mechanism 'no_such'"),
        (lambda r: r.run_phase("file_content", Phase.COMMIT, BANNER), StepPhaseError, "is not a step phase"),
        (lambda r: r.run_phase("file_content", Phase.ROLLBACK, BANNER), StepPhaseError, "rollback needs the pre-state"),
        (lambda r: r.run_phase("file_content", Phase.APPLY, BANNER, None, {"/etc/issue": None}), StepPhaseError,
         "apply writes the host"),
    ],
    ids=["unknown-handler", "not-a-step-phase", "rollback-without-pre", "apply-through-plan"],
)
def test_step_runner_refuses_bad_requests_and_changes_nothing(root: Path, call, error, message) -> None:  # type: ignore[no-untyped-def]
    """An unknown mechanism, a phase that is no step phase, a rollback without pre-state or a write
    through planned files is refused with a message saying which, and the tree is untouched."""
    runner = LocalStepRunner(LocalHost(str(root)), default_registry())
    with pytest.raises(error, match=message):
        call(runner)
    assert (root / "etc" / "issue").read_text() == "Debian\n"
