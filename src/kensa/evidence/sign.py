"""Signed evidence files: the envelope, signing, and verification that names what was altered.

An evidence file is one JSON object in canonical form
(:mod:`kensa.evidence.canonical`) followed by one newline::

    {"algorithm":"Ed25519","digests":{...},"format":"kensa-signed-evidence/1",
     "key_id":"<hex>","payload":{...},"public_key":"<base64>","signature":"<base64>"}

- ``signature``: Ed25519 over the canonical JSON bytes of ``payload``, base64 (RFC 4648, padded).
- ``public_key``: the signer's raw 32-byte Ed25519 public key, base64.
- ``key_id``: SHA-256 of those 32 bytes, lowercase hex.
- ``digests``: for each top-level field of ``payload``, the SHA-256 (hex) of its
  canonical JSON. They are not signed and prove nothing on their own: they
  let a verifier say which field was altered when the signature fails.

Verifying: the file must be exactly the canonical form of what it holds (so
no byte can change without being noticed, even whitespace or an escape's
spelling); ``key_id`` must be the SHA-256 of ``public_key``; the signature
must verify; and the key must be one of the verifier's trusted keys. A file
that verifies only against the key it carries is *valid* but not *trusted*:
whoever altered it could have re-signed it with a key of their own.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Any, Dict, List, Mapping, Optional

from kensa.errors import EvidenceError
from kensa.evidence.canonical import canonical_bytes
from kensa.evidence.keys import SigningKey, ed25519, key_id
from kensa.model import Verification

__all__ = ["ENVELOPE_FORMAT", "MAX_EVIDENCE_BYTES", "sign_payload", "verify_bytes"]

#: The ``format`` of the envelope.
ENVELOPE_FORMAT = "kensa-signed-evidence/1"

#: Evidence files larger than this are refused unread.
MAX_EVIDENCE_BYTES = 16 * 1024 * 1024

_FIELDS = ("algorithm", "digests", "format", "key_id", "payload", "public_key", "signature")


def _digests(payload: Mapping[str, Any]) -> Dict[str, str]:
    return {key: hashlib.sha256(canonical_bytes(value)).hexdigest() for key, value in payload.items()}


def sign_payload(payload: Mapping[str, Any], key: SigningKey) -> bytes:
    """The bytes of the evidence file that carries ``payload`` signed by ``key``."""
    signed = canonical_bytes(dict(payload))
    envelope = {
        "algorithm": "Ed25519",
        "digests": _digests(payload),
        "format": ENVELOPE_FORMAT,
        "key_id": key.key_id,
        "payload": dict(payload),
        "public_key": base64.b64encode(key.public_raw).decode("ascii"),
        "signature": base64.b64encode(key.sign(signed)).decode("ascii"),
    }
    return canonical_bytes(envelope) + b"\n"


def _first_difference(a: bytes, b: bytes) -> int:
    for index, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return index
    return min(len(a), len(b))


def _base64(value: Any, field: str, size: int, problems: List[str]) -> Optional[bytes]:
    if not isinstance(value, str):
        problems.append(f"{field} is not a string: altered")
        return None
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        problems.append(f"{field} is not valid base64: altered")
        return None
    if len(raw) != size or base64.b64encode(raw).decode("ascii") != value:
        problems.append(f"{field} does not hold {size} bytes in canonical base64: altered")
        return None
    return raw


def verify_bytes(data: bytes, path: str, trusted: Optional[Mapping[str, bytes]] = None) -> Verification:
    """Verify the evidence file ``data`` (read from ``path``, for messages) against ``trusted`` (key id -> raw key).

    Never raises for what the file holds: every problem is one line of
    :attr:`Verification.problems`. ``trusted`` None or empty: the file can be
    valid, never trusted.
    """
    verifier = ed25519()
    from cryptography.exceptions import InvalidSignature

    problems: List[str] = []

    def failed(*more: str, kid: str = "", txn: str = "") -> Verification:
        return Verification(path, False, False, kid, txn, (*problems, *more))

    if len(data) > MAX_EVIDENCE_BYTES:
        return failed(f"{len(data)} bytes: larger than any evidence file kensa writes ({MAX_EVIDENCE_BYTES})")
    try:
        envelope = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        return failed(f"byte {exc.start} is not UTF-8: the file was altered or is not evidence")
    except json.JSONDecodeError as exc:
        return failed(f"not valid JSON at line {exc.lineno} column {exc.colno} ({exc.msg}): the file was altered or truncated")
    if not isinstance(envelope, dict) or sorted(envelope) != sorted(_FIELDS):
        fields = sorted(envelope) if isinstance(envelope, dict) else type(envelope).__name__
        return failed(f"not a kensa evidence file: expected the fields {', '.join(_FIELDS)}, found {fields}")
    transaction = envelope["payload"].get("transaction") if isinstance(envelope["payload"], dict) else None
    txn = transaction.get("id") if isinstance(transaction, dict) else ""
    txn = txn if isinstance(txn, str) else ""
    claimed = envelope["key_id"] if isinstance(envelope["key_id"], str) else ""
    try:
        canonical = canonical_bytes(envelope) + b"\n"
    except EvidenceError as exc:
        return failed(f"holds what canonical JSON does not allow, so it was altered: {exc}", kid=claimed, txn=txn)
    if canonical != data:
        at = _first_difference(canonical, data)
        problems.append(
            f"byte {at} differs from the canonical form of what the file holds (whitespace, an escape, key order, "
            "a duplicate key or a trailing byte): the file was altered"
        )
    if envelope["format"] != ENVELOPE_FORMAT or envelope["algorithm"] != "Ed25519":
        problems.append(f"format {envelope['format']!r} / algorithm {envelope['algorithm']!r}: altered, or not kensa evidence")
    payload = envelope["payload"]
    if not isinstance(payload, dict):
        return failed("payload is not an object: altered", kid=claimed, txn=txn)
    recorded = envelope["digests"] if isinstance(envelope["digests"], dict) else {}
    actual = _digests(payload)
    altered = sorted(k for k in set(actual) | set(recorded) if actual.get(k) != recorded.get(k))
    if altered:
        problems.append(
            "payload field(s) " + ", ".join(altered) + " no longer match the digests written at signing: "
            "the field or its digest was altered"
        )
    public = _base64(envelope["public_key"], "public_key", 32, problems)
    signature = _base64(envelope["signature"], "signature", 64, problems)
    if public is not None and key_id(public) != claimed:
        problems.append("key_id is not the SHA-256 of public_key: the key id or the public key was altered")
    signature_ok = False
    if public is not None and signature is not None:
        try:
            verifier.Ed25519PublicKey.from_public_bytes(public).verify(signature, canonical_bytes(payload))
            signature_ok = True
        except InvalidSignature:
            problems.append(
                "the signature does not verify over the payload with the public key the file carries: "
                + ("the payload, the signature or the public key was altered" if not altered else f"{', '.join(altered)} altered")
            )
    valid = signature_ok and not problems
    is_trusted = False
    if valid and trusted:
        is_trusted = trusted.get(claimed) == public
        if not is_trusted:
            problems.append(
                f"signed by key {claimed}, which is none of the trusted keys given "
                f"({', '.join(sorted(trusted))}): it may have been re-signed by someone else"
            )
    return Verification(path, valid, is_trusted, claimed, txn, tuple(problems))
