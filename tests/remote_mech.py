"""One mechanism's step through kensa's agent as a remote host would run it (for the tests/test_mech_*.py files).

The agent runs as a real process under SubprocessTransport with a ``python3``
that lacks what Python 3.7+ added (tests/agent_targets.py), so a handler that
needs a newer Python than RHEL 8's on the target fails here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from agent_targets import py36_path, transport
from conftest import snapshot_tree
from kensa.handlers import default_registry
from kensa.hosts.remote import connect
from kensa.model import StepResult


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
