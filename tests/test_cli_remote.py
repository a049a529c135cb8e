"""The command line for remote hosts: -H and its login flags, what they refuse, how the sudo password is read."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path
from typing import List

import pytest

from kensa.cli.main import EXIT_BAD_INPUT, build_parser
from kensa.cli.remote import parse_host, ssh_options, targets_from
from kensa.errors import UsageError
from kensa.model import RemoteTarget
from test_ssh_e2e import kensa_cli, rules_dir


def rule_file(tmp_path: Path) -> str:
    return rules_dir(tmp_path)


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("web01", RemoteTarget("web01", "ops", 2222, "/srv/t")),
        ("admin@web01", RemoteTarget("web01", "admin", 2222, "/srv/t")),
        ("admin@10.0.0.5:22", RemoteTarget("10.0.0.5", "admin", 22, "/srv/t")),
        ("[::1]:2200", RemoteTarget("::1", "ops", 2200, "/srv/t")),
    ],
)
def test_a_host_entry_fills_in_user_and_port_from_the_flags(spec: str, expected: RemoteTarget) -> None:
    """-H [user@]host[:port]: what the entry names wins, -u and -p fill in the rest; --root is the root on the host."""
    assert parse_host(spec, "ops", 2222, "/srv/t", None) == expected


@pytest.mark.parametrize("root, key", [("/srv/t/", "ssh://web01/srv/t"), ("//", "ssh://web01/"), ("/srv/./t", "ssh://web01/srv/t")])
def test_a_root_is_keyed_in_one_spelling(root: str, key: str) -> None:
    """--root /srv/t/ and /srv/t are one target: the key the engine journals results under, so none goes missing from the report."""
    assert parse_host("web01", None, None, root, None).key == key


@pytest.mark.parametrize("spec", ["-oProxyCommand=touch {marker}", "web01;touch {marker}", "$(touch {marker})",
                                  "a b", "ops@-oProxyCommand=x", "-l@web01", "web01:99999", "web01:"])
def test_hostile_or_malformed_host_entries_are_refused_and_nothing_runs(tmp_path: Path, spec: str) -> None:
    """A -H entry that ssh could read as an option, a shell could run, or that is malformed: exit 2 naming it, nothing ran."""
    marker = tmp_path / "ran"
    code, out = kensa_cli("--journal", str(tmp_path / "j.db"), "check", rule_file(tmp_path),
                          f"--hosts=web00,{spec.format(marker=marker)}")
    assert code == EXIT_BAD_INPUT
    assert not marker.exists() and not (tmp_path / "j.db").exists()


def test_the_sudo_password_cannot_be_given_as_an_argument(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """No option takes the sudo password as an argument (it would be in argv, ps and shell history)."""
    with pytest.raises(SystemExit) as caught:
        build_parser().parse_args(["remediate", rule_file(tmp_path), "-H", "web01", "--sudo-password", "secret"])
    assert caught.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err


def parsed(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["remediate", "rules.yml", "-H", "web01", *argv])


def test_the_sudo_password_is_read_from_the_first_line_of_stdin() -> None:
    """--sudo-password-stdin reads one line (without its newline) and turns sudo on; the rest of stdin is left."""
    stdin = io.StringIO("s3cret pass\nnext line\n")
    options = ssh_options(parsed("--sudo-password-stdin"), stdin)
    assert options.sudo and options.sudo_password == "s3cret pass"
    assert "s3cret" not in repr(options)
    assert stdin.read() == "next line\n"


def test_an_empty_stdin_for_the_sudo_password_is_an_error() -> None:
    """--sudo-password-stdin with nothing on stdin: a usage error, not an empty password."""
    with pytest.raises(UsageError, match="stdin is empty"):
        ssh_options(parsed("--sudo-password-stdin"), io.StringIO(""))


def test_asking_for_the_sudo_password_needs_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """--ask-sudo-password without a terminal on stdin is a usage error pointing to --sudo-password-stdin."""
    monkeypatch.setattr("sys.stdin", io.StringIO("not a tty\n"))
    with pytest.raises(UsageError, match="--sudo-password-stdin"):
        ssh_options(parsed("--ask-sudo-password"))


def test_login_flags_become_ssh_options(tmp_path: Path) -> None:
    """--strict-host-keys, --known-hosts, --ssh-config and the timeouts reach the SshOptions."""
    config = tmp_path / "ssh_config"
    config.write_text("")
    options = ssh_options(parsed("--strict-host-keys", "--known-hosts", str(tmp_path / "kh"), "--ssh-config", str(config),
                                 "--connect-timeout", "3", "--timeout", "40", "--sudo"))
    assert (options.strict_host_keys, options.known_hosts_file, options.ssh_config_file) == (True, str(tmp_path / "kh"), str(config))
    assert (options.connect_timeout, options.operation_timeout, options.sudo, options.sudo_password) == (3, 40, True, None)


def test_hosts_are_taken_once_in_order_from_every_h(tmp_path: Path) -> None:
    """-H a,b -H c,a: hosts a, b, c, each once, in the order first named."""
    args = build_parser().parse_args(["check", "r.yml", "-H", "a,b", "-H", "c,a", "-u", "ops"])
    assert [t.host for _, t in targets_from(args)] == ["a", "b", "c"]


def test_inventory_hosts_take_the_command_line_where_the_inventory_is_silent(tmp_path: Path) -> None:
    """--inventory: the file's user/port/root win; -u, -p, -k and --root fill in what it leaves out; --limit selects."""
    key = tmp_path / "id"
    key.write_text("")
    inventory = tmp_path / "hosts.ini"
    inventory.write_text("[web]\nweb01 ansible_user=admin\nweb02 ansible_port=2200 kensa_root=/srv/w2\n[db]\ndb01\n")
    args = build_parser().parse_args(["check", "r.yml", "--inventory", str(inventory), "--limit", "web", "-u", "ops",
                                      "-p", "22", "-k", str(key), "--root", "/srv/all"])
    assert [t for _, t in targets_from(args)] == [
        RemoteTarget("web01", "admin", 22, "/srv/all", str(key)),
        RemoteTarget("web02", "ops", 2200, "/srv/w2", str(key)),
    ]


def test_limit_without_an_inventory_is_refused(tmp_path: Path) -> None:
    """--limit selects from an inventory: without --inventory it is a usage error (exit 2)."""
    code, _ = kensa_cli("--journal", str(tmp_path / "j.db"), "check", rule_file(tmp_path), "-H", "web01", "--limit", "web")
    assert code == EXIT_BAD_INPUT


def test_a_host_named_with_user_and_port_reads_its_host_name_variable_file(tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """-H root@127.0.0.1:1 is the host 127.0.0.1: its variables come from DIR/hosts/127.0.0.1.yml
    (the target's host name, as docs/rules.md says), not from a file named after the whole entry;
    so the rule's variable is defined and the host's only fault is that nothing listens on port 1."""
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "motd.yml").write_text(
        "id: cli-remote-motd\ntitle: A banner from a variable\nseverity: low\nimplementations:\n  - default: true\n"
        "    remediation: {mechanism: file_content, path: /etc/motd, content: \"{{ banner }}\\n\"}\n")
    config = tmp_path / "config"
    (config / "hosts").mkdir(parents=True)
    (config / "hosts" / "127.0.0.1.yml").write_text("variables:\n  banner: Authorized use only\n")
    code, out = kensa_cli("--journal", str(tmp_path / "j.db"), "check", str(rules), "-H", "root@127.0.0.1:1",
                          "--config-dir", str(config), "--connect-timeout", "5", "--known-hosts", str(tmp_path / "kh"))
    err = capsys.readouterr().err
    assert "undefined variable" not in err + out, err + out
    assert "cannot connect" in out, out


def test_an_unreachable_host_still_lists_its_rules_with_an_undefined_variable(tmp_path: Path) -> None:
    """check -H on a host nothing answers on: every rule of the set has a row for that host, a
    rule whose variable is undefined too (an error naming the variable), as on a reachable host."""
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "motd.yml").write_text(
        "id: cli-remote-undefined\ntitle: A banner from a variable\nseverity: low\nimplementations:\n  - default: true\n"
        "    remediation: {mechanism: file_content, path: /etc/motd, content: \"{{ banner }}\\n\"}\n")
    code, out = kensa_cli("--journal", str(tmp_path / "j.db"), "check", str(rules), "-H", "root@127.0.0.1:1",
                          "--connect-timeout", "5", "--known-hosts", str(tmp_path / "kh"), "--json")
    [host] = json.loads(out)["hosts"]
    assert [(r["rule"], r["verdict"]) for r in host["rules"]] == [("cli-remote-undefined", "error")], out
    assert "banner" in host["rules"][0]["detail"]
    assert code == EXIT_BAD_INPUT


def test_a_host_whose_work_raises_stops_the_hosts_not_started() -> None:
    """An error of one host's work (the journal's run lock not taken in time, say) ends the command:
    the hosts not started yet are never started, as before the pool waited for every host."""
    from kensa.cli.fleet import _per_host

    started: List[int] = []

    def work(host: int) -> int:
        started.append(host)
        if host == 0:
            raise RuntimeError("host 0 failed")
        return host

    with pytest.raises(RuntimeError, match="host 0 failed"):
        _per_host(list(range(6)), 1, work)
    # The pool's thread may take host 1 before the error reaches this thread; no more.
    assert started[:1] == [0] and len(started) <= 2
