"""A remediation's service actions: ``restart: UNIT``, ``reload: UNIT``, ``notify: [VERB] UNIT``.

They sit beside ``mechanism`` (or ``steps``) in a ``remediation``, as in Kensa's
schema. ``restart`` and ``reload`` run right after the rule's transaction
commits; when one fails, a transactional rule (the default) rolls its change
back, as the service action is part of it, and a non-transactional rule keeps
its change and reports the failure. ``notify`` runs once per host at the end
of the run however many rules name it (``notify: sshd`` restarts sshd;
``notify: reload sshd`` reloads it). See :mod:`kensa.engine.services`.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Tuple

from kensa.errors import ParamError
from kensa.facts.services import unit_name
from kensa.model import ServiceAction, ServiceVerb
from kensa.rules.yaml import Document, FieldPath

FIELDS = ("restart", "reload", "notify")


def _action(doc: Document, path: FieldPath, field: str, value: Any) -> ServiceAction:
    if not isinstance(value, str):
        raise doc.error(path + (field,), f"expected a service name, got {type(value).__name__}")
    words = value.split()
    verb, unit = (field, value) if field != "notify" else (
        (words[0], words[1]) if len(words) == 2 and words[0] in ("restart", "reload") else ("restart", value))
    try:
        return ServiceAction(ServiceVerb(verb), unit_name(unit), at_end=field == "notify")
    except ParamError as exc:
        raise doc.error(path + (field,), exc.problem) from None


def split_services(doc: Document, path: FieldPath, remediation: Any) -> Tuple[Tuple[ServiceAction, ...], Any]:
    """The service actions of the ``remediation`` at ``path``, and the remediation without them."""
    if not isinstance(remediation, Mapping):
        return (), remediation  # the remediation's own parser says what is wrong
    rest: Dict[str, Any] = {}
    actions: List[ServiceAction] = []
    for field, value in remediation.items():
        if field in FIELDS:
            actions.append(_action(doc, path, field, value))
        else:
            rest[field] = value
    return tuple(actions), rest
