"""A run's outcomes as an OSCAL assessment-results document (OSCAL 1.1.3, JSON).

The mapping:

- ``metadata``: the run's title, kensa's version, ``oscal-version`` 1.1.3.
- ``import-ap``: kensa runs rules, not an OSCAL assessment plan; ``href``
  points into ``back-matter``, which lists each rule file read with its SHA-256.
- one ``result`` per run: ``start``/``end`` of the run; ``local-definitions``
  name the target host and kensa (the tool) as components; ``reviewed-controls``
  the controls the selected rules reference (all, when none do).
- one ``observation`` per rule outcome (method ``TEST``): the rule, the
  verdict or the transaction's status, the host, and for a transaction the
  file name its signed evidence is exported under.
- one ``finding`` per outcome and reference that it decides
  (:func:`kensa.evidence.tabular.finding_state`): target the control,
  ``satisfied`` or ``not-satisfied``; outcomes that assessed nothing
  (not applicable, unsupported) have an observation and no finding.

Control ids become OSCAL tokens: a NIST SP 800-53 control is written as its
catalog id (``AC-2(1)`` -> ``ac-2.1``); any other framework's control as
``<framework>[_<profile>]_<control>`` with characters outside letters,
digits, ``.``, ``-`` and ``_`` replaced by ``_`` (``cis_rhel9_5.2.3``).
"""

from __future__ import annotations

import hashlib
import re
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from kensa._version import __version__
from kensa.evidence.export import evidence_file_name
from kensa.evidence.record import text, timestamp
from kensa.evidence.tabular import Outcome, outcome_row
from kensa.model import TransactionResult
from kensa.rules import Reference, Rule

__all__ = ["OSCAL_VERSION", "PROPERTY_NS", "assessment_results", "control_token"]

#: The OSCAL release whose assessment-results schema the documents follow.
OSCAL_VERSION = "1.1.3"

#: The namespace of kensa's own properties.
PROPERTY_NS = "urn:kensa:oscal"

_NIST = {"nist_800_53", "nist-800-53", "nist800_53", "nist_sp_800_53"}
_NOT_TOKEN = re.compile(r"[^A-Za-z0-9._-]")


def control_token(reference: Reference) -> str:
    """The OSCAL token for ``reference``'s control (see the module docstring)."""
    if reference.framework.casefold() in _NIST:
        catalog = re.sub(r"\((\w+)\)", r".\1", reference.control.strip()).lower()
        token = _NOT_TOKEN.sub("_", catalog)
    else:
        parts = [reference.framework, reference.profile, reference.control] if reference.profile else [
            reference.framework, reference.control]
        token = _NOT_TOKEN.sub("_", "_".join(p.strip() for p in parts))
    return token if token[:1].isalpha() or token[:1] == "_" else "_" + token


def _prop(name: str, value: Any) -> Optional[Dict[str, str]]:
    shown = text(str(value)).strip()
    # OSCAL's string type has no empty value and no surrounding whitespace.
    return {"name": name, "ns": PROPERTY_NS, "value": shown} if shown else None


def _props(**values: Any) -> List[Dict[str, str]]:
    found = [_prop(name.replace("_", "-"), value) for name, value in values.items() if value is not None]
    return [prop for prop in found if prop is not None]


def _sha256_of(path: str) -> Optional[str]:
    try:
        with open(path, "rb") as handle:
            return hashlib.sha256(handle.read()).hexdigest()
    except OSError:
        return None


def _back_matter(rules: Sequence[Rule], plan_uuid: str) -> Dict[str, Any]:
    rlinks = []
    for path in sorted({rule.source.path for rule in rules}):
        link: Dict[str, Any] = {"href": Path(path).absolute().as_uri()}
        digest = _sha256_of(path)
        if digest is not None:
            link["hashes"] = [{"algorithm": "SHA-256", "value": digest}]
        rlinks.append(link)
    resource: Dict[str, Any] = {
        "uuid": plan_uuid,
        "title": "kensa rules",
        "description": "The rule files kensa ran in place of an OSCAL assessment plan.",
    }
    if rlinks:
        resource["rlinks"] = rlinks
    return {"resources": [resource]}


def assessment_results(
    outcomes: Sequence[Outcome],
    rules: Mapping[str, Rule],
    *,
    title: str,
    description: str,
    start: datetime,
    end: datetime,
) -> Dict[str, Any]:
    """The OSCAL assessment-results document of a run; ``rules`` by id (those the run selected)."""
    plan_uuid, tool_uuid = str(uuid.uuid4()), str(uuid.uuid4())
    hosts: Dict[str, str] = {}
    for outcome in outcomes:
        hosts.setdefault(outcome.host, str(uuid.uuid4()))
    components = [{
        "uuid": tool_uuid, "type": "software", "title": "kensa",
        "description": f"kensa {__version__}: transactional Linux remediation with kernel audit records",
        "status": {"state": "operational"},
    }] + [{
        "uuid": host_uuid, "type": "this-system", "title": text(host),
        "description": f"The target kensa ran on, by its host key {text(host)}.",
        "status": {"state": "operational"},
    } for host, host_uuid in hosts.items()]

    controls: Dict[str, None] = {}
    observations: List[Dict[str, Any]] = []
    findings: List[Dict[str, Any]] = []
    for outcome in outcomes:
        row = outcome_row(outcome, rules)
        rule = rules.get(outcome.rule)
        observation_uuid = str(uuid.uuid4())
        observation: Dict[str, Any] = {
            "uuid": observation_uuid,
            "title": f"{row['rule']} on {row['host']}: {row['outcome']}",
            "description": row["detail"] or f"kensa {row['kind']} of rule {row['rule']}: {row['outcome']}.",
            "props": _props(rule=row["rule"], kind=row["kind"], outcome=row["outcome"], txn=row["txn"],
                            host_unchanged=None if row["host_unchanged"] is None else str(row["host_unchanged"]).lower()),
            "methods": ["TEST"],
            "types": ["finding"],
            "origins": [{"actors": [{"type": "tool", "actor-uuid": tool_uuid}]}],
            "subjects": [{"subject-uuid": hosts[outcome.host], "type": "component", "title": row["host"]}],
            "collected": timestamp(end),
        }
        if isinstance(outcome, TransactionResult):
            observation["relevant-evidence"] = [{
                "href": evidence_file_name(outcome.txn_id),
                "description": f"Signed evidence of transaction {row['txn']}: kensa evidence export {row['txn']}",
            }]
        observations.append(observation)
        for reference in rule.references if rule is not None else ():
            token = control_token(reference)
            controls[token] = None
            if row["finding"] is None:
                continue
            findings.append({
                "uuid": str(uuid.uuid4()),
                "title": f"{text(reference.framework)} {text(reference.control)}: {row['finding']}",
                "description": f"Rule {row['rule']} ({row['title']}) on {row['host']}: {row['outcome']}.",
                "props": _props(framework=reference.framework, control=reference.control, profile=reference.profile or None),
                "target": {
                    "type": "objective-id",
                    "target-id": token,
                    "status": {"state": row["finding"], "reason": "pass" if row["finding"] == "satisfied" else "fail"},
                },
                "related-observations": [{"observation-uuid": observation_uuid}],
            })
    selection: Dict[str, Any] = (
        {"include-controls": [{"control-id": token} for token in controls]} if controls else {"include-all": {}}
    )
    result: Dict[str, Any] = {
        "uuid": str(uuid.uuid4()),
        "title": text(title),
        "description": text(description),
        "start": timestamp(start),
        "end": timestamp(end),
        "local-definitions": {"components": components},
        "reviewed-controls": {
            "control-selections": [{
                "description": "The controls the selected rules reference." if controls else "Every control (the rules reference none).",
                **selection,
            }],
        },
    }
    if observations:
        result["observations"] = observations
    if findings:
        result["findings"] = findings
    return {
        "assessment-results": {
            "uuid": str(uuid.uuid4()),
            "metadata": {
                "title": text(title),
                "last-modified": timestamp(end),
                "version": __version__,
                "oscal-version": OSCAL_VERSION,
            },
            "import-ap": {
                "href": f"#{plan_uuid}",
                "remarks": "kensa runs rules, not an OSCAL assessment plan: the rule files are listed in back-matter.",
            },
            "results": [result],
            "back-matter": _back_matter(list(rules.values()), plan_uuid),
        }
    }
