"""selinux_boolean_set: not available where SELinux is not enabled (this machine: Debian without
selinuxfs), on an image root, and through the agent; bad parameters refused.

The enabled path (getsebool to capture, setsebool [-P] to set and to roll back) needs a host
running SELinux, which this test machine is not; it is not exercised here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict

import pytest

from agent_targets import py36_path, transport
from conftest import require_root, snapshot_tree as snapshot
from kensa.engine import Engine
from kensa.errors import KensaError, NotAvailableError, ParamError
from kensa.handlers import default_registry
from kensa.hosts.local import LocalHost, resolve_host
from kensa.hosts.remote import connect
from kensa.model import Status, Step, Transaction

REGISTRY = default_registry()
HANDLER = REGISTRY["selinux_boolean_set"]
PARAMS = {"name": "httpd_can_network_connect", "value": "off"}


def selinux_disabled_here() -> None:
    if os.path.exists("/sys/fs/selinux/enforce"):
        pytest.skip("SELinux is enabled on this machine: the not-available path cannot be shown")


def test_a_live_host_without_selinux_is_not_available_before_anything_changes() -> None:
    """On this machine (root "/", no selinuxfs) capture, validate and apply each say "not
    available on this host: SELinux is not enabled"; setsebool is never reached."""
    require_root()
    selinux_disabled_here()
    host = LocalHost("/")
    for call in (lambda: HANDLER.capture(host, PARAMS), lambda: HANDLER.validate(host, PARAMS),
                 lambda: HANDLER.apply(host, PARAMS, None)):
        with pytest.raises(NotAvailableError, match="selinux_boolean_set: not available on this host: SELinux is not enabled"):
            call()


def test_a_rule_s_transaction_on_this_host_errors_with_the_host_unchanged() -> None:
    """A real Engine transaction on localhost ends errored, host unchanged, its error saying why."""
    require_root()
    selinux_disabled_here()
    result = Engine(REGISTRY, hosts=resolve_host).run(Transaction("selinux", (Step("selinux_boolean_set", PARAMS),), host="localhost"))
    assert result.status is Status.ERRORED and result.host_unchanged
    assert result.error is not None and "SELinux is not enabled" in result.error.message


def test_an_image_root_is_not_available(tmp_path: Path) -> None:
    """An image root has no running policy for setsebool to change: not available, nothing changes."""
    (tmp_path / "etc/selinux").mkdir(parents=True)
    (tmp_path / "etc/selinux/config").write_text("SELINUX=enforcing\n")
    before = snapshot(tmp_path)
    with pytest.raises(NotAvailableError, match="not available on an image root"):
        HANDLER.capture(LocalHost(str(tmp_path)), PARAMS)
    assert snapshot(tmp_path) == before


def test_through_the_agent_the_remote_host_says_not_available(tmp_path: Path) -> None:
    """Through kensa's agent on this machine's root (a Python without the 3.7+ features): the
    remote capture fails with the same "SELinux is not enabled" reason."""
    require_root()
    selinux_disabled_here()
    host = connect(transport("old-python", py36_path(tmp_path / "bin")), "/")
    try:
        handler = host.handlers(default_registry())["selinux_boolean_set"]
        with pytest.raises(KensaError, match="SELinux is not enabled"):
            handler.capture(host, PARAMS)
    finally:
        host.close()


@pytest.mark.parametrize("params", [
    {"name": "httpd_can_network_connect; reboot", "value": "on"},
    {"name": "-P", "value": "on"},
    {"name": "x\ny", "value": "on"},
    {"name": "httpd_can_network_connect", "value": "maybe"},
    {"name": "httpd_can_network_connect", "value": 2},
    {"name": "httpd_can_network_connect"},
    {"value": "on"},
], ids=lambda p: repr(p)[:40])
def test_bad_parameters_are_a_param_error(params: Dict[str, Any]) -> None:
    """Names that are not SELinux boolean names, values other than on/off: a ParamError naming
    the mechanism, raised before the host is even asked."""
    with pytest.raises(ParamError, match="selinux_boolean_set"):
        HANDLER.capture(LocalHost("/"), params)


def test_yaml_booleans_read_as_on_and_off() -> None:
    """Unquoted on/off in YAML 1.1 arrive as true/false: both spellings mean the same value."""
    read = HANDLER.schema.read({"name": "ftpd_full_access", "value": True, "persistent": False})
    assert (read["value"], read["persistent"]) == ("on", False)
    assert HANDLER.schema.read({"name": "ftpd_full_access", "value": "off"})["value"] == "off"
