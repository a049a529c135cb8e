"""What the tests/test_mech_*.py files share: an image root holding one labelled file, and one
mechanism's step through kensa's agent as a remote host would run it.

The agent runs as a real process under SubprocessTransport with a ``python3``
that lacks what Python 3.7+ added (tests/agent_targets.py), so a handler that
needs a newer Python than RHEL 8's on the target fails here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import os

from agent_targets import py36_path, transport
from conftest import snapshot_tree
from kensa.handlers import default_registry
from kensa.hosts.remote import connect
from kensa.model import StepResult


def image_with(tmp_path: Path, path: str, content: str) -> Path:
    """tmp_path holding an image root ("root") with ``content`` at ``path`` (mode 0644, a user.*
    xattr and, as root, a security.* one, so a restore must put those back too), and an
    "outside" directory with a file of the same name, which nothing may touch."""
    target = tmp_path / "root" / path.lstrip("/")
    target.parent.mkdir(parents=True)
    target.write_bytes(content.encode())
    target.chmod(0o644)
    os.setxattr(target, "user.kensa", b"keep me")
    if os.geteuid() == 0:
        os.setxattr(target, "security.kensa", b"label")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / target.name).write_text(content)
    return tmp_path


def remote_round_trip(root: Path, bin_dir: Path, mechanism: str, params: Mapping[str, Any]) -> StepResult:
    """capture, apply, validate and rollback of one step on the agent confined to ``root``;
    asserts that validate held after apply and that rollback left ``root`` as it was. Returns
    the apply's result."""
    before = snapshot_tree(root)
    host = connect(transport("old-python", py36_path(bin_dir)), str(root))
    try:
        handler = host.handlers(default_registry())[mechanism]
        pre = handler.capture(host, params)
        applied: StepResult = handler.apply(host, params, pre)
        assert applied.ok, applied.detail
        assert handler.validate(host, params)
        rolled = handler.rollback(host, pre)
        assert rolled.ok, rolled.detail
    finally:
        host.close()
    assert snapshot_tree(root) == before
    return applied
