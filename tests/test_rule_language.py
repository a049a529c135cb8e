"""The rule language as kensa check and remediate carry it out on a target: verdicts with
the check that decided them, variables, platforms, capabilities, dependencies,
conflicts, supersession, and rule files that do not load."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest

from conftest import snapshot_tree as snapshot
from kensa.cli.main import main
from kensa.errors import RuleError, UndefinedVariableError, VariableFileError
from kensa.hosts.local import LocalHost
from kensa.rules import Platform, Variables, load_variables, parse_rule
from kensa.rules.applicability import OsRelease, parse_os_release, platform_applies, read_os_release, resolve
from kensa.rules.capabilities import PROBES, detect_capabilities
from kensa.rules.load import SUPPORTED_MECHANISMS, load_rule_set

LANGUAGE = Path(__file__).parent / "data" / "rules" / "language"
MALFORMED = Path(__file__).parent / "data" / "rules" / "malformed"
VARS = ("--var", "motd_text=Authorized use only", "--var", "login_umask=027")


def make_root(tmp_path: Path, os_release: str = 'ID="rocky"\nVERSION_ID="9.3"\nID_LIKE="rhel centos fedora"\n') -> Path:
    root = tmp_path / "root"
    files = {
        "etc/os-release": os_release,
        "etc/motd": "Welcome\n",
        "etc/login.defs": "UMASK 022\n",
        "etc/issue": "Authorized\n",
        "etc/crontab": "",
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
        (root / rel).chmod(0o644)
    return root


def rules_dir(tmp_path: Path, *names: str) -> Path:
    """A directory holding some of the language rules."""
    chosen = tmp_path / "rules"
    chosen.mkdir()
    for name in names:
        shutil.copy(LANGUAGE / f"{name}.yml", chosen)
    return chosen


def kensa(*argv: str) -> Tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), out=out)
    return code, out.getvalue()


def check(tmp_path: Path, root: Path, rules: Path, *extra: str) -> Tuple[int, Dict[str, Dict[str, str]], dict]:
    code, out = kensa("--no-audit", "--journal", str(tmp_path / "j.db"), "check", str(rules), "--root", str(root), "--json", *extra)
    report = json.loads(out)
    return code, {row["rule"]: row for row in report["rules"]}, report


# --- verdicts ---------------------------------------------------------------------------


def test_check_gives_every_rule_a_verdict_and_the_check_that_decided_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """On a Rocky 9 root: a rule whose check fails is not compliant, naming the check and the
    implementation chosen; a superseded rule, a rule for Ubuntu and a rule depending on a
    non-compliant one are not applicable, saying why; a check-only rule is compliant; a gate
    kensa cannot probe is unsupported. Conflicts are only a warning for check."""
    root = make_root(tmp_path)
    code, rows, _ = check(tmp_path, root, LANGUAGE, *VARS)
    verdicts = {rule: row["verdict"] for rule, row in rows.items()}
    assert verdicts == {
        "base-motd": "not_compliant",
        "check-only": "compliant",
        "issue-long": "not_compliant",
        "issue-short": "compliant",
        "legacy-motd": "not_applicable",
        "login-umask": "not_applicable",
        "ubuntu-only": "not_applicable",
        "unprobed-gate": "unsupported",
    }
    assert (rows["base-motd"]["check"], rows["base-motd"]["implementation"]) == ("file_content_match", "implementations[0] (default)")
    assert rows["check-only"]["check"] == "file_exists"
    assert rows["legacy-motd"]["detail"] == "superseded by rule base-motd"
    assert rows["login-umask"]["detail"] == "depends on rule base-motd, which is not_compliant"
    assert "rocky 9.3" in rows["ubuntu-only"]["detail"] and "ubuntu 22+" in rows["ubuntu-only"]["detail"]
    assert "systemd_dbus" in rows["unprobed-gate"]["detail"]
    assert rows["base-motd"]["source"].endswith("base-motd.yml:2")
    assert code == 1
    assert "warning: issue-long conflicts with issue-short" in capsys.readouterr().err


def test_a_compliant_dependency_lets_the_dependent_be_checked_with_the_gated_implementation(tmp_path: Path) -> None:
    """With base-motd compliant, login-umask is checked: without the gated capabilities its
    default implementation decides; with pam_faillock present (and sssd absent) its first,
    whose two checks must both hold, naming both methods when they do."""
    root = make_root(tmp_path)
    (root / "etc/motd").write_text("Authorized use only\n")
    _, rows, _ = check(tmp_path, root, LANGUAGE, *VARS)
    assert rows["base-motd"]["verdict"] == "compliant"
    assert (rows["login-umask"]["verdict"], rows["login-umask"]["implementation"]) == ("not_compliant", "implementations[2] (default)")
    (root / "etc/security").mkdir()
    (root / "etc/security/faillock.conf").write_text("")
    (root / "etc/login.defs").write_text("UMASK 027\n")
    _, rows, _ = check(tmp_path, root, LANGUAGE, *VARS)
    assert rows["login-umask"]["verdict"] == "compliant"
    assert (rows["login-umask"]["check"], rows["login-umask"]["implementation"]) == ("config_value,file_permission", "implementations[0]")


def test_check_table_shows_verdict_and_check(tmp_path: Path) -> None:
    """The table has a VERDICT and a CHECK column."""
    root = make_root(tmp_path)
    code, out = kensa("--no-audit", "check", str(rules_dir(tmp_path, "check-only")), "--root", str(root))
    assert code == 0
    assert out.splitlines()[0].split() == ["RULE", "VERDICT", "CHECK", "DETAIL"]
    assert out.splitlines()[1].split()[:3] == ["check-only", "compliant", "file_exists"]


# --- remediation -------------------------------------------------------------------------


def test_remediate_refuses_conflicting_rules_unless_allowed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two selected rules that declare each other conflicting: remediate refuses the whole run
    (exit 2, naming the pair and --allow-conflicts) and changes nothing; with
    --allow-conflicts both run, in path order, the second undoing the first."""
    root = make_root(tmp_path)
    rules = rules_dir(tmp_path, "issue-short", "issue-long")
    before = snapshot(root)
    code, _ = kensa("--no-audit", "--journal", str(tmp_path / "j.db"), "remediate", str(rules), "--root", str(root))
    err = capsys.readouterr().err
    assert code == 2
    assert "issue-long conflicts with issue-short" in err and "--allow-conflicts" in err
    assert snapshot(root) == before
    code, out = kensa("--no-audit", "--journal", str(tmp_path / "j.db"), "remediate", str(rules), "--root", str(root), "--allow-conflicts", "--json")
    statuses = {r["rule"]: r["status"] for r in json.loads(out)["results"]}
    assert statuses == {"issue-long": "committed", "issue-short": "committed"}
    assert (root / "etc/issue").read_text() == "Authorized\n"


def test_a_rule_whose_remediation_kensa_lacks_is_checked_but_not_remediated(tmp_path: Path) -> None:
    """check-only's check is kensa's, its remediation a value only Kensa's schema accepts:
    check gives compliant, remediate reports it unsupported with the field named, and runs nothing."""
    root = make_root(tmp_path)
    rules = rules_dir(tmp_path, "check-only")
    assert check(tmp_path, root, rules)[1]["check-only"]["verdict"] == "compliant"
    code, out = kensa("--no-audit", "--journal", str(tmp_path / "j.db"), "remediate", str(rules), "--root", str(root), "--json")
    report = json.loads(out)
    assert code == 1 and report["results"] == []
    [row] = report["unsupported"]
    assert row["status"] == "unsupported"
    assert "remediation.rule' of mechanism 'audit_rule_set'" in row["detail"] and "starts with '-e'" in row["detail"]


def test_remediate_runs_a_dependency_first_and_its_dependent_after(tmp_path: Path) -> None:
    """login-umask depends on base-motd: remediate commits base-motd first, then login-umask;
    the variables given reach both files as their values."""
    root = make_root(tmp_path)
    rules = rules_dir(tmp_path, "login-umask", "base-motd")
    code, out = kensa("--no-audit", "--journal", str(tmp_path / "j.db"), "remediate", str(rules), "--root", str(root), "--json", *VARS)
    results = json.loads(out)["results"]
    assert [(r["rule"], r["status"]) for r in results] == [("base-motd", "committed"), ("login-umask", "committed")]
    assert code == 0
    assert (root / "etc/motd").read_text() == "Authorized use only\n"
    assert (root / "etc/login.defs").read_text() == "UMASK 027\n"


def test_a_dependent_is_not_run_when_its_dependency_did_not_hold(tmp_path: Path) -> None:
    """base-motd cannot commit (its file is a directory): login-umask, which depends on it, is
    reported not run and its file is left alone."""
    root = make_root(tmp_path)
    (root / "etc/motd").unlink()
    (root / "etc/motd").mkdir()
    rules = rules_dir(tmp_path, "login-umask", "base-motd")
    code, out = kensa("--no-audit", "--journal", str(tmp_path / "j.db"), "remediate", str(rules), "--root", str(root), "--json", *VARS)
    report = json.loads(out)
    assert [r["rule"] for r in report["results"]] == ["base-motd"]
    assert report["results"][0]["status"] != "committed"
    [row] = report["unsupported"]
    assert row["rule"] == "login-umask" and "depends on rule base-motd" in row["detail"]
    assert (root / "etc/login.defs").read_text() == "UMASK 022\n"
    assert code != 0


# --- variables ---------------------------------------------------------------------------


def test_undefined_variable_is_an_error_of_that_rule_and_never_reaches_the_target(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Without motd_text, base-motd is an error naming the variable (check and remediate) and
    /etc/motd is untouched; the other rule of the directory still runs; the exit code is 2."""
    root = make_root(tmp_path)
    rules = rules_dir(tmp_path, "base-motd", "check-only")
    before = snapshot(root)
    code, rows, report = check(tmp_path, root, rules)
    assert code == 2
    assert rows["base-motd"]["verdict"] == "error" and "undefined variable motd_text" in rows["base-motd"]["detail"]
    assert rows["check-only"]["verdict"] == "compliant"
    assert report["problems"][0]["rule"] == "base-motd"
    code, out = kensa("--no-audit", "--journal", str(tmp_path / "j.db"), "remediate", str(rules), "--root", str(root), "--json")
    assert code == 2
    assert json.loads(out)["results"] == []
    assert snapshot(root) == before
    assert "base-motd.yml:27: field 'implementations[0].check.pattern'" in capsys.readouterr().err


def test_variable_files_follow_kensas_priority(tmp_path: Path) -> None:
    """defaults.yml < conf.d/*.yml in name order < groups in the order given < hosts/<host>.yml
    < --var; a missing file or directory is no source."""
    conf = tmp_path / "conf"
    (conf / "conf.d").mkdir(parents=True)
    (conf / "groups").mkdir()
    (conf / "hosts").mkdir()
    (conf / "defaults.yml").write_text("variables: {a: d, b: d, c: d, d: d, e: d, f: 1}\n")
    (conf / "conf.d/20-late.yml").write_text("variables: {b: late, c: late}\n")
    (conf / "conf.d/10-early.yml").write_text("variables: {b: early}\n")
    (conf / "groups/web.yml").write_text("variables: {c: web, d: web}\n")
    (conf / "groups/eu.yml").write_text("variables: {d: eu}\n")
    (conf / "hosts/h1.yml").write_text("variables: {e: h1, list: [x, 2]}\n")
    found = load_variables(str(conf), host="h1", groups=["web", "eu", "absent"], overrides=[("f", "cli")])
    assert dict(found.values) == {"a": "d", "b": "late", "c": "web", "d": "eu", "e": "h1", "f": "cli", "list": "x,2"}
    assert found.origins["e"] == str(conf / "hosts/h1.yml")
    assert dict(load_variables(str(conf), host="other").values)["e"] == "d"


@pytest.mark.parametrize(
    "text, words",
    [
        ("variables: {1bad: x}\n", "defaults.yml:1: field 'variables.1bad': '1bad' is not a variable name"),
        ("variables: {a: {b: c}}\n", "field 'variables.a': a variable's value is a string, number, boolean or list"),
        ("other: 1\n", "a variable file holds one mapping"),
        ("variables: [a]\n", "expected a mapping of variable names"),
    ],
)
def test_malformed_variable_file_names_file_line_and_variable(tmp_path: Path, text: str, words: str) -> None:
    """A present but malformed variable file is an error naming the file, the line and the variable."""
    (tmp_path / "defaults.yml").write_text(text)
    with pytest.raises(RuleError) as caught:
        load_variables(str(tmp_path))
    assert words in str(caught.value)


def test_var_assignment_must_name_a_variable(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """--var without '=' or with a name that is not a variable name is bad input, exit 2."""
    code, _ = kensa("check", str(LANGUAGE), "--root", str(make_root(tmp_path)), "--var", "9x=1")
    assert code == 2 and "expected NAME=VALUE" in capsys.readouterr().err
    with pytest.raises(VariableFileError):
        load_variables(str(tmp_path / "nowhere"))


def test_a_value_is_text_and_cannot_change_the_rules_structure() -> None:
    """A variable's value is put into the parsed string, so YAML in it stays text: the
    remediation keeps its one mechanism and the content is the value, newline and all; where
    the field must be one line (a check's pattern), such a value is refused at that field."""
    hostile = "x\n    mechanism: command_exec\n    run: reboot"
    text = "id: r\ntitle: t\nseverity: low\nimplementations:\n  - default: true\n    remediation: {mechanism: file_content, path: /etc/motd, content: \"{{ motd }}\\n\"}\n"
    [step] = parse_rule(text, variables=Variables({"motd": hostile})).implementations[0].steps
    assert step.mechanism == "file_content"
    assert step.params["content"] == hostile + "\n"
    with pytest.raises(RuleError, match="base-motd.yml:27: field 'implementations\\[0\\].check.pattern': must be a single line"):
        load_rule_set([LANGUAGE / "base-motd.yml"], variables=Variables({"motd_text": hostile}), strict=True)


def test_a_list_variable_is_its_members_joined_by_commas(tmp_path: Path) -> None:
    """A list variable renders as its members joined by ',' wherever its template is (as
    Kensa renders one); a member that would split into others is refused at its variable."""
    (tmp_path / "defaults.yml").write_text("variables: {units: [a.service, b.service], one: []}\n")
    variables = load_variables(str(tmp_path))
    assert dict(variables.values) == {"units": "a.service,b.service", "one": ""}
    text = "id: r\ntitle: t\nseverity: low\nimplementations:\n  - default: true\n    remediation: {mechanism: command_exec, run: 'for u in {{ units }}; do :; done'}\n"
    rule = parse_rule(text.replace("id: r", "id: r\ntransactional: false"), variables=variables)
    assert rule.implementations[0].steps[0].params["run"] == "for u in a.service,b.service; do :; done"
    (tmp_path / "defaults.yml").write_text("variables: {units: [a b]}\n")
    with pytest.raises(RuleError, match="field 'variables.units': list member 'a b'"):
        load_variables(str(tmp_path))


# --- platforms ----------------------------------------------------------------------------

RHEL8 = Platform("rhel", 8)
PLATFORMS = [
    # platforms, os-release (id, version), applies
    ([RHEL8], ("rhel", "9.4"), True),
    ([RHEL8], ("redhat", "8"), True),
    ([RHEL8], ("rocky", "9.3"), True),
    ([RHEL8], ("almalinux", "8.10"), True),
    ([RHEL8], ("ol", "9"), True),
    ([RHEL8], ("centos", "9"), True),
    ([Platform("rhel", 8, derivatives=False)], ("rocky", "9"), False),
    ([Platform("rhel", 8, derivatives=False)], ("redhat", "9"), True),
    ([Platform("rocky", 8)], ("almalinux", "9"), True),
    ([RHEL8], ("rhel", "7.9"), False),
    ([Platform("rhel", 8, 9)], ("rhel", "10.0"), False),
    ([Platform("ubuntu", 22)], ("debian", "12"), False),
    ([Platform("debian", 12)], ("ubuntu", "24.04"), False),
    ([Platform("ubuntu", 22)], ("ubuntu", "24.04"), True),
    ([Platform("ubuntu", 22)], ("ubuntu", "20.04"), False),
    ([RHEL8, Platform("ubuntu", 22)], ("ubuntu", "22.04"), True),
    ([RHEL8], ("fedora", "40"), False),
    ([RHEL8], ("rhel", ""), True),
    ([], ("fedora", "40"), True),
]


@pytest.mark.parametrize("platforms, os, applies", PLATFORMS, ids=[f"{'+'.join(x.family for x in p) or 'none'}-{o[0]}{o[1]}" for p, o, _ in PLATFORMS])
def test_platforms_follow_kensas_family_and_derivative_semantics(platforms: List[Platform], os: Tuple[str, str], applies: bool) -> None:
    """EL rebuilds count as rhel (and as each other) with derivatives; Ubuntu and Debian are
    different families; the major version is bounded inclusively; no version bounds nothing."""
    assert platform_applies(platforms, OsRelease(*os))[0] is applies


def test_os_release_is_read_through_the_host_and_unknown_means_applicable(tmp_path: Path) -> None:
    """os-release is read from the target root (/usr/lib/os-release when /etc has none);
    a target without one is unknown, and every rule applies there, as in Kensa."""
    root = tmp_path / "r"
    (root / "usr/lib").mkdir(parents=True)
    (root / "usr/lib/os-release").write_text("NAME='Rocky Linux'\nID=rocky\nVERSION_ID=9.3\n")
    assert read_os_release(LocalHost(str(root))) == OsRelease("rocky", "9.3", ())
    assert read_os_release(LocalHost(str(tmp_path / "r" / "usr"))) is None
    assert platform_applies([RHEL8], None) == (True, "")
    assert parse_os_release("# nothing\n") is None


# --- capabilities -------------------------------------------------------------------------

# Every capability the public corpus's 'when' gates name.
CORPUS_CAPABILITIES = [
    "apt", "authselect", "directory_joined", "firewalld", "gdm", "nftables_active", "pam_faillock",
    "rsyslog_active", "selinux", "sshd_config_d", "sssd", "sssd_configured",
]

# capability -> files that make it present (path -> content, None: a directory; "->x": a symlink)
PRESENT: Dict[str, Dict[str, Optional[str]]] = {
    "apt": {"usr/bin/apt-get": ""},
    "authselect": {"usr/bin/authselect": ""},
    "directory_joined": {"etc/nsswitch.conf": "passwd: files sss\n", "etc/sssd/sssd.conf": "[domain/corp]\nid_provider = ad\n"},
    "firewalld": {"usr/lib/systemd/system/firewalld.service": ""},
    "gdm": {"usr/sbin/gdm3": ""},
    "nftables_active": {"etc/systemd/system/multi-user.target.wants/nftables.service": "->/lib/systemd/system/nftables.service"},
    "pam_faillock": {"etc/security/faillock.conf": ""},
    "rsyslog_active": {"etc/systemd/system/multi-user.target.wants/rsyslog.service": "->/lib/systemd/system/rsyslog.service"},
    "selinux": {"etc/selinux/config": "SELINUX=enforcing\nSELINUXTYPE=targeted\n"},
    "sshd_config_d": {"etc/ssh/sshd_config.d": None, "etc/ssh/sshd_config": "Include /etc/ssh/sshd_config.d/*.conf\n"},
    "sssd": {"lib/systemd/system/sssd.service": ""},
    "sssd_configured": {"etc/sssd/sssd.conf": "[pam]\npam_cert_auth = True\n"},
}

# capability -> files that look close but do not make it present
ABSENT: Dict[str, Dict[str, Optional[str]]] = {
    "directory_joined": {"etc/nsswitch.conf": "passwd: files sss\n", "etc/sssd/sssd.conf": "[pam]\n"},
    "selinux": {"etc/selinux/config": "SELINUX=permissive\n"},
    "sshd_config_d": {"etc/ssh/sshd_config.d": None, "etc/ssh/sshd_config": "PermitRootLogin no\n"},
    "sssd_configured": {"etc/sssd/sssd.conf": "\n"},
    "nftables_active": {"lib/systemd/system/nftables.service": ""},
}


def _tree(base: Path, files: Dict[str, Optional[str]]) -> LocalHost:
    for rel, content in files.items():
        path = base / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if content is None:
            path.mkdir(exist_ok=True)
        elif content.startswith("->"):
            path.symlink_to(content[2:])
        else:
            path.write_text(content)
    return LocalHost(str(base))


def test_every_capability_the_corpus_gates_on_has_a_probe() -> None:
    """Each capability name the corpus's 'when' gates use is probed, and has a case below."""
    assert set(CORPUS_CAPABILITIES) <= set(PROBES)
    assert set(CORPUS_CAPABILITIES) == set(PRESENT)


@pytest.mark.parametrize("name", CORPUS_CAPABILITIES)
def test_capability_probe_reads_the_target(tmp_path: Path, name: str) -> None:
    """A probe finds its capability in a target root made for it, not in an empty one, and not
    in a root that only looks close; it reads the root only (a tree of this machine's /etc is
    never consulted)."""
    assert name in detect_capabilities(_tree(tmp_path / "present", PRESENT[name]))
    assert name not in detect_capabilities(_tree(tmp_path / "empty", {"etc/hostname": "x\n"}))
    if name in ABSENT:
        assert name not in detect_capabilities(_tree(tmp_path / "close", ABSENT[name]))


# --- loading ----------------------------------------------------------------------------


def test_a_bad_file_is_reported_and_the_rest_of_the_directory_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A malformed file among good ones: check reports it by file:line:field on stderr and in
    the JSON problems, still gives the good rule its verdict, and exits 2."""
    rules = rules_dir(tmp_path, "check-only")
    shutil.copy(MALFORMED / "relative-path.yml", rules)
    code, rows, report = check(tmp_path, make_root(tmp_path), rules)
    assert code == 2
    assert rows["check-only"]["verdict"] == "compliant"
    [problem] = report["problems"]
    assert problem["message"].startswith(f"{rules / 'relative-path.yml'}:8: field 'implementations[0].remediation.path'")
    assert "relative-path.yml:8" in capsys.readouterr().err
    loaded = load_rule_set([rules])
    assert [r.id for r in loaded.rules] == ["check-only"] and len(loaded.problems) == 1


def test_kensas_names_are_not_supported_yet_and_other_names_unknown() -> None:
    """A mechanism or check method Kensa defines but kensa lacks is 'not supported yet'; a name
    neither has is unknown, with the closest name suggested. Both rules still load."""
    base = "id: r\ntitle: t\nseverity: low\nimplementations:\n  - default: true\n    remediation: {mechanism: MECH, schedule: '@daily', command: x, user: root}\n"
    known = parse_rule(base.replace("MECH", "cron_job"), mechanisms=SUPPORTED_MECHANISMS - {"cron_job"})
    assert "mechanism 'cron_job'" in known.unsupported_reason and "not supported by kensa yet" in known.unsupported_reason
    unknown = parse_rule(base.replace("MECH", "dconf_sett"))
    assert "unknown mechanism 'dconf_sett'" in unknown.unsupported_reason and "did you mean 'dconf_set'" in unknown.unsupported_reason
    check = parse_rule(base.replace("remediation: {mechanism: MECH, schedule: '@daily', command: x, user: root}",
                                    "check: {method: sysctl_valu, key: a, expected: b}\n    remediation: {mechanism: file_absent, path: /x}"))
    impl = check.implementations[0]
    assert not impl.checkable and "unknown check method 'sysctl_valu'" in impl.check_unsupported_reason
    assert "did you mean 'sysctl_value'" in impl.check_unsupported_reason


def test_find_based_file_permissions_loads_and_without_a_selection_is_malformed() -> None:
    """Kensa's file_permissions with find_paths instead of path (and a symbolic mode) loads as
    supported; with neither path nor find_paths it is malformed, naming the field."""
    base = "id: r\ntitle: t\nseverity: low\nimplementations:\n  - default: true\n    remediation: {mechanism: file_permissions, FIELDS}\n"
    rule = parse_rule(base.replace("FIELDS", "find_paths: [/usr/lib], find_type: d, mode: go-w"))
    assert rule.supported, rule.unsupported_reason
    with pytest.raises(RuleError, match="field 'implementations\\[0\\].remediation.path': give either 'path' or 'find_paths'"):
        parse_rule(base.replace("FIELDS", "mode: '0644'"))


def test_resolve_orders_dependencies_first_and_reports_cycles() -> None:
    """Dependencies come before their dependents whatever the input order; the members of a
    dependency cycle are not evaluated, and the cycle is named."""
    def rule(rule_id: str, *needs: str) -> object:
        needed = f"depends_on: [{', '.join(needs)}]\n" if needs else ""
        return parse_rule(f"id: {rule_id}\ntitle: t\nseverity: low\n{needed}implementations:\n  - default: true\n    remediation: {{mechanism: file_absent, path: /x}}\n")

    resolution = resolve([rule("c", "b"), rule("b", "a"), rule("a"), rule("x", "y"), rule("y", "x")])  # type: ignore[list-item]
    assert [r.id for r in resolution.order] == ["a", "b", "c"]
    assert resolution.skipped["x"].startswith("dependency cycle: ")
    assert set(resolution.skipped) == {"x", "y"}


def test_a_rule_depending_on_a_superseded_rule_names_its_verdict(tmp_path: Path) -> None:
    """A dependency that another rule supersedes is not evaluated; its dependent is not
    applicable, naming the dependency's own verdict rather than calling it missing."""
    rules = rules_dir(tmp_path, "base-motd", "legacy-motd", "check-only")
    text = (rules / "check-only.yml").read_text().replace("id: check-only", "id: check-only\ndepends_on: [legacy-motd]")
    (rules / "check-only.yml").write_text(text)
    _, rows, _ = check(tmp_path, make_root(tmp_path), rules, *VARS)
    assert rows["check-only"]["detail"] == "depends on rule legacy-motd, which is not_applicable"
