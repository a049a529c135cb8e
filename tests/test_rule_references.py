"""A rule's ``references`` become :class:`kensa.rules.Reference` entries, one per control."""

from __future__ import annotations

import pytest

from kensa.errors import RuleError
from kensa.rules import Reference, parse_rule

_RULE = """\
id: demo-refs
title: A rule with references
severity: low
references:
{refs}
implementations:
  - default: true
    check:
      method: file_exists
      path: /etc/demo
    remediation:
      mechanism: file_content
      path: /etc/demo
      content: "x\\n"
"""


def _refs(text: str) -> tuple:
    return parse_rule(_RULE.format(refs=text)).references


def test_lists_profiles_and_entry_lists_become_references() -> None:
    """Plain id lists, one entry per profile and a list of entries per profile all load, in order."""
    refs = _refs(
        "  nist_800_53: [AC-3, SI-7]\n"
        "  cis:\n"
        "    rhel9: {section: '5.2.1', level: L1, type: Automated}\n"
        "  stig:\n"
        "    rhel8:\n"
        "      - {vuln_id: V-1, stig_id: RHEL-08-1, severity: CAT II, cci: [CCI-1, CCI-2]}\n"
        "      - {vuln_id: V-2, stig_id: RHEL-08-2}\n"
    )
    assert refs == (
        Reference("nist_800_53", "AC-3"),
        Reference("nist_800_53", "SI-7"),
        Reference("cis", "5.2.1", "rhel9", {"level": "L1", "type": "Automated"}),
        Reference("stig", "RHEL-08-1", "rhel8", {"vuln_id": "V-1", "severity": "CAT II", "cci": ("CCI-1", "CCI-2")}),
        Reference("stig", "RHEL-08-2", "rhel8", {"vuln_id": "V-2"}),
    )


def test_a_rule_without_references_has_none() -> None:
    """No ``references`` field: an empty tuple."""
    text = _RULE.replace("references:\n{refs}\n", "")
    assert parse_rule(text).references == ()


@pytest.mark.parametrize(
    "refs, expected",
    [
        ("  cis:\n    rhel9: {level: L1}\n", "names no control"),
        ("  nist_800_53: [[AC-3]]\n", "expected a control id"),
        ("  cis: nope\n", "expected a mapping"),
    ],
)
def test_a_reference_without_a_control_is_refused_where_it_is(refs: str, expected: str) -> None:
    """An entry that names no control, or has the wrong shape, is an error naming the field."""
    with pytest.raises(RuleError, match=expected) as caught:
        _refs(refs)
    assert "references" in str(caught.value)
