"""kensa report: OSCAL assessment-results of real check and remediation runs validate against NIST's schema;
the JSON, JSON Lines and CSV views; --framework and --control select rules by their references."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path
from typing import Any, Dict, List

import pytest

from conftest import require_real
from evidence_run import (
    CHECK_VERDICTS,
    OUTCOMES,
    SSHD_BEFORE,
    kensa,
    make_root,
    oscal_schema,
    remediation_run,
    write_rules,
)
from kensa.cli.main import EXIT_BAD_INPUT, EXIT_NOT_APPLIED
from kensa.evidence.oscal import control_token
from kensa.rules import Reference

SCHEMA_FILE = Path(__file__).parent / "data" / "oscal" / "oscal_assessment-results_schema.json"
SCHEMA_SHA256 = "d9e34757f0c12aff61f52b821f0b8f83ba0ba75b3a149a202b08ba82f82bc4c3"


@pytest.fixture(scope="module")
def validator() -> Any:
    try:
        import jsonschema
    except ImportError:
        require_real("jsonschema is not installed: pip install -e '.[test]'")
    schema = oscal_schema(SCHEMA_FILE)
    checker = jsonschema.Draft7Validator.FORMAT_CHECKER
    # Without its optional validators jsonschema passes these formats unchecked.
    missing = {"uri", "uri-reference", "date-time"} - set(checker.checkers)
    assert not missing, f"jsonschema cannot check {missing}: install the test extra"
    return jsonschema.Draft7Validator(schema, format_checker=checker)


def errors_of(validator: Any, document: Any) -> List[str]:
    return [f"{list(e.absolute_path)}: {e.message[:200]}" for e in validator.iter_errors(document)]


def observations(document: Dict[str, Any]) -> Dict[str, Dict[str, str]]:
    """Rule id -> kensa's properties of its observation."""
    found = {}
    for obs in document["assessment-results"]["results"][0]["observations"]:
        props = {p["name"]: p["value"] for p in obs["props"]}
        found[props["rule"]] = props
    return found


def test_the_vendored_schema_is_nists_release_asset() -> None:
    """tests/data holds NIST's OSCAL 1.1.3 assessment-results schema unchanged (its published SHA-256)."""
    assert hashlib.sha256(SCHEMA_FILE.read_bytes()).hexdigest() == SCHEMA_SHA256
    assert json.loads(SCHEMA_FILE.read_text())["$id"] == "http://csrc.nist.gov/ns/oscal/1.1.3/oscal-ar-schema.json"


def test_the_validator_rejects_what_the_schema_forbids(validator: Any, tmp_path: Path) -> None:
    """The validation can fail: a bad UUID, a control id that is no token, or a missing field are each reported."""
    run = remediation_run(tmp_path, "oscal")
    good = json.loads(run["out"])
    assert errors_of(validator, good) == []
    bad_uuid = json.loads(run["out"])
    bad_uuid["assessment-results"]["uuid"] = "not-a-uuid"
    bad_token = json.loads(run["out"])
    bad_token["assessment-results"]["results"][0]["findings"][0]["target"]["target-id"] = "5.1.20"
    missing = json.loads(run["out"])
    del missing["assessment-results"]["import-ap"]
    bad_uri = json.loads(run["out"])
    bad_uri["assessment-results"]["results"][0]["observations"][0]["props"][0]["ns"] = "not a uri"
    for document in (bad_uuid, bad_token, missing, bad_uri):
        assert errors_of(validator, document)


def test_a_remediation_run_of_every_outcome_validates_as_oscal(validator: Any, tmp_path: Path) -> None:
    """Committed, skipped, rolled back and not applicable rules of one real run: schema-valid OSCAL naming each."""
    run = remediation_run(tmp_path, "oscal")
    assert run["code"] == EXIT_NOT_APPLIED  # the rolled back rule did not apply; the host is as it was for it
    document = json.loads(run["out"])
    assert errors_of(validator, document) == []
    found = observations(document)
    assert {rule: props["outcome"] for rule, props in found.items()} == OUTCOMES
    assert found["ev-ssh-root"]["host-unchanged"] == "false"
    assert found["ev-motd-conflict"]["host-unchanged"] == "true"
    result = document["assessment-results"]["results"][0]
    states = {(f["target"]["target-id"], f["target"]["status"]["state"]) for f in result["findings"]}
    assert states == {
        ("ac-6.2", "satisfied"), ("ia-2", "satisfied"), ("cis_rhel9_5.1.20", "satisfied"),
        ("ac-8", "satisfied"), ("stig_rhel9_RHEL-09-900001", "not-satisfied"),
    }
    # The not-applicable rule assessed nothing: an observation, no finding; its control is still in scope.
    reviewed = result["reviewed-controls"]["control-selections"][0]["include-controls"]
    assert "cm-6" in {c["control-id"] for c in reviewed}
    evidence = [o["relevant-evidence"][0]["href"] for o in result["observations"] if "relevant-evidence" in o]
    assert len(evidence) == 3 and all(href.endswith(".evidence.json") for href in evidence)
    assert document["assessment-results"]["metadata"]["oscal-version"] == "1.1.3"
    assert (run["root"] / "etc/ssh/sshd_config").read_text() != SSHD_BEFORE
    assert not (run["root"] / "etc/motd").exists()


def test_a_check_run_validates_as_oscal_and_changes_nothing(validator: Any, tmp_path: Path) -> None:
    """Without --remediate, report checks: verdicts in schema-valid OSCAL, the root untouched."""
    rules = write_rules(tmp_path / "rules")
    root = make_root(tmp_path / "root")
    code, out = kensa("--journal", str(tmp_path / "j.db"), "report", str(rules), "--root", str(root), "--format", "oscal")
    assert code == EXIT_NOT_APPLIED
    document = json.loads(out)
    assert errors_of(validator, document) == []
    assert {rule: props["outcome"] for rule, props in observations(document).items()} == CHECK_VERDICTS
    assert (root / "etc/ssh/sshd_config").read_text() == SSHD_BEFORE
    assert not (tmp_path / "j.db").exists()


def test_json_jsonl_and_csv_carry_the_same_rows(tmp_path: Path) -> None:
    """The three tabular formats give one row per rule with its outcome and references."""
    rules = write_rules(tmp_path / "rules")
    root = make_root(tmp_path / "root")
    views = {}
    for fmt in ("json", "jsonl", "csv"):
        code, out = kensa("report", str(rules), "--root", str(root), "--format", fmt)
        assert code == EXIT_NOT_APPLIED
        views[fmt] = out
    rows = json.loads(views["json"])["results"]
    lines = [json.loads(line) for line in views["jsonl"].splitlines()]
    table = list(csv.DictReader(io.StringIO(views["csv"])))
    assert lines == rows
    assert [r["rule"] for r in table] == [r["rule"] for r in rows]
    assert {r["rule"]: r["outcome"] for r in table} == CHECK_VERDICTS
    ssh = next(r for r in table if r["rule"] == "ev-ssh-root")
    assert ssh["references"] == "nist_800_53:AC-6(2) nist_800_53:IA-2 cis:5.1.20@rhel9"
    assert ssh["finding"] == "not-satisfied" and ssh["txn"] == ""


def test_framework_and_control_filters_run_only_the_rules_that_reference_them(tmp_path: Path) -> None:
    """--framework stig remediates only the STIG rule; --control IA-2 only the rule naming it; others are untouched."""
    rules = write_rules(tmp_path / "rules")
    root = make_root(tmp_path / "root")
    journal = str(tmp_path / "j.db")
    code, out = kensa("--journal", journal, "report", str(rules), "--root", str(root), "--remediate", "--framework", "stig")
    assert [r["rule"] for r in json.loads(out)["results"]] == ["ev-motd-conflict"]
    assert (root / "etc/ssh/sshd_config").read_text() == SSHD_BEFORE
    code, out = kensa("report", str(rules), "--root", str(root), "--framework", "NIST_800_53", "--control", "ia-2")
    assert [r["rule"] for r in json.loads(out)["results"]] == ["ev-ssh-root"]
    code, out = kensa("report", str(rules), "--root", str(root), "--control", "AC-8", "--control", "CM-6")
    assert sorted(r["rule"] for r in json.loads(out)["results"]) == ["ev-banner-present", "ev-dropin-only"]


def test_a_filter_that_selects_nothing_is_an_error_that_runs_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """No rule references the control: exit 2 naming the filter, no journal written."""
    rules = write_rules(tmp_path / "rules")
    root = make_root(tmp_path / "root")
    code, out = kensa("--journal", str(tmp_path / "j.db"), "report", str(rules), "--root", str(root), "--remediate",
                      "--control", "XX-99")
    assert code == EXIT_BAD_INPUT and out == ""
    assert "--control XX-99" in capsys.readouterr().err
    assert not (tmp_path / "j.db").exists()


def test_report_output_goes_to_the_file_given(tmp_path: Path) -> None:
    """--output writes the report there and nothing to stdout."""
    rules = write_rules(tmp_path / "rules")
    root = make_root(tmp_path / "root")
    target = tmp_path / "report.csv"
    code, out = kensa("report", str(rules), "--root", str(root), "--format", "csv", "--output", str(target))
    assert out == "" and target.read_text().startswith("rule,title,host,kind,outcome")
    assert code == EXIT_NOT_APPLIED


@pytest.mark.parametrize(
    "reference, token",
    [
        (Reference("nist_800_53", "AC-6(2)"), "ac-6.2"),
        (Reference("nist_800_53", "SI-7"), "si-7"),
        (Reference("cis", "5.2.3", "rhel9"), "cis_rhel9_5.2.3"),
        (Reference("stig", "V-257947"), "stig_V-257947"),
        (Reference("9x", "a b/c"), "_9x_a_b_c"),
    ],
)
def test_control_ids_become_oscal_tokens(reference: Reference, token: str) -> None:
    """NIST controls become catalog ids; others a framework-qualified token with no character OSCAL forbids."""
    assert control_token(reference) == token


def test_a_report_of_no_outcome_at_all_still_validates(validator: Any) -> None:
    """An empty run (every rule filtered by the caller) is still a valid document: all controls, no observations."""
    from datetime import datetime, timezone

    from kensa.evidence.oscal import assessment_results

    now = datetime.now(timezone.utc)
    document = assessment_results([], {}, title="empty", description="nothing ran", start=now, end=now)
    assert errors_of(validator, document) == []


def test_a_csv_cell_a_spreadsheet_would_run_is_defused(tmp_path: Path) -> None:
    """A rule title starting with '=' (a formula) is written to CSV behind a quote; JSON keeps it as it is."""
    rules = write_rules(tmp_path / "rules")
    hostile = (rules / "ssh-root.yml").read_text().replace("title: No root login over SSH", "title: '=HYPERLINK(\"x\")'")
    (rules / "ssh-root.yml").write_text(hostile)
    root = make_root(tmp_path / "root")
    _, out = kensa("report", str(rules), "--root", str(root), "--format", "csv", "--control", "IA-2")
    (row,) = csv.DictReader(io.StringIO(out))
    assert row["title"] == "'=HYPERLINK(\"x\")"
    _, out = kensa("report", str(rules), "--root", str(root), "--format", "json", "--control", "IA-2")
    assert json.loads(out)["results"][0]["title"] == '=HYPERLINK("x")'


DEPENDENT_RULES = {
    "issue-present.yml": """\
id: ev-dep-issue-present
title: /etc/issue exists
severity: low
implementations:
  - default: true
    check: {method: file_exists, path: /etc/issue}
    remediation: {mechanism: file_content, path: /etc/issue, content: "Authorized use only.\\n"}
""",
    "issue-text.yml": """\
id: ev-dep-issue-text
title: /etc/issue names the authorized users
severity: medium
depends_on: [ev-dep-issue-present]
references:
  nist_800_53: [AC-8]
implementations:
  - default: true
    check: {method: file_content_match, path: /etc/issue, pattern: "^Authorized staff only\\\\.$"}
    remediation: {mechanism: file_content, path: /etc/issue, content: "Authorized staff only.\\n"}
""",
}


def test_a_framework_filter_selects_what_is_reported_not_how_a_rule_is_decided(tmp_path: Path) -> None:
    """report --framework reports the rules referencing it, each decided as kensa check decides it
    in the rule set given: a rule whose dependency (referencing no framework) holds is judged by
    its own check, not called not applicable because the filter left its dependency out."""
    rules = tmp_path / "rules"
    rules.mkdir()
    for name, text in DEPENDENT_RULES.items():
        (rules / name).write_text(text)
    root = make_root(tmp_path / "root")
    code, out = kensa("check", str(rules), "--root", str(root), "--json")
    checked = {r["rule"]: r["verdict"] for r in json.loads(out)["rules"]}
    assert checked == {"ev-dep-issue-present": "compliant", "ev-dep-issue-text": "not_compliant"}, out
    code, out = kensa("report", str(rules), "--root", str(root), "--framework", "nist_800_53")
    reported = {r["rule"]: r["outcome"] for r in json.loads(out)["results"]}
    assert reported == {"ev-dep-issue-text": "not_compliant"}, out
    assert code == EXIT_NOT_APPLIED
