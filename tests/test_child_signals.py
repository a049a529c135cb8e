"""Commands kensa runs on the controller or a local target: a Ctrl-C at the terminal does not reach
them (their own session), and one killed by a signal is an error, never an answer."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kensa.checks import patterns
from kensa.errors import CheckError, HostAccessError
from kensa.hosts.commands import run_command


def test_a_command_runs_in_a_session_of_its_own() -> None:
    """The terminal's SIGINT goes to its foreground process group: a command kensa runs is not in it,
    so the first Ctrl-C lets the transaction running end instead of killing its command."""
    done = run_command(["sh", "-c", "ps -o sid= -p $$"], timeout=30, cap=1 << 16)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.strip()) != os.getsid(0)


def test_a_command_killed_by_a_signal_is_an_error() -> None:
    with pytest.raises(HostAccessError, match="killed by signal 9"):
        run_command(["sh", "-c", "kill -KILL $$"], timeout=30, cap=1 << 16)


def test_a_grep_killed_by_a_signal_is_an_error_not_a_non_match(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pattern check whose grep was killed must not read as "no line matches" (compliant for a
    pattern that must be absent)."""
    killed = tmp_path / "grep"
    killed.write_text("#!/bin/sh\nkill -KILL $$\n")
    killed.chmod(0o755)
    monkeypatch.setattr(patterns, "GREP", str(killed))
    with pytest.raises(CheckError, match="killed by signal 9"):
        patterns.search("PermitRootLogin", b"PermitRootLogin yes\n")
