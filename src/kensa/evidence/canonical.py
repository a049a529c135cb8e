"""Canonical JSON: the one byte sequence a JSON value is signed as.

The rules, so that another tool can reproduce the bytes (they are those of
RFC 8785, the JSON Canonicalization Scheme, for values without fractions):

- Values are objects, arrays, strings, integers, ``true``, ``false`` and
  ``null``. There are no floating-point numbers: durations are integer
  microseconds. Integers lie in -(2**53 - 1) .. 2**53 - 1, so every JSON
  reader holds them exactly; they are written in decimal, no leading zeros,
  ``-`` for negatives, no exponent.
- Object keys are strings, unique, sorted by their UTF-16 code units (RFC 8785);
  for keys within the Basic Multilingual Plane this is code point order.
- No whitespace outside strings: ``,`` between items and ``:`` after a key.
- Strings are UTF-8 with only the escapes JSON requires: ``\\"``, ``\\\\``,
  ``\\b \\f \\n \\r \\t``, and ``\\u00xx`` (lowercase hex) for the other
  control characters below U+0020; everything else, including non-ASCII
  characters, is written as itself. Text that is not valid Unicode (a lone
  surrogate) is refused.
"""

from __future__ import annotations

import json
from typing import Any, List

from kensa.errors import EvidenceError

__all__ = ["MAX_SAFE_INTEGER", "canonical_bytes"]

#: The largest integer canonical JSON holds (2**53 - 1, exact in every JSON reader).
MAX_SAFE_INTEGER = 2**53 - 1

_MAX_DEPTH = 64


def canonical_bytes(value: Any) -> bytes:
    """``value`` as canonical JSON (see the module docstring); :class:`EvidenceError` names what cannot be."""
    out: List[str] = []
    _write(value, out, "$", 0)
    try:
        return "".join(out).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise EvidenceError(f"canonical JSON: text holds a lone surrogate ({exc.reason}); it is not valid Unicode") from None


def _string(text: str, where: str) -> str:
    # json.dumps with ensure_ascii=False escapes exactly what RFC 8785 escapes, in the same spelling.
    for char in text:
        if 0xD800 <= ord(char) <= 0xDFFF:
            raise EvidenceError(f"canonical JSON: {where} holds a lone surrogate U+{ord(char):04X}; it is not valid Unicode")
    return json.dumps(text, ensure_ascii=False)


def _write(value: Any, out: List[str], where: str, depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise EvidenceError(f"canonical JSON: {where} is nested more than {_MAX_DEPTH} levels deep")
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            raise EvidenceError(f"canonical JSON: {where} is {value}, outside -(2**53-1)..2**53-1")
        out.append(str(int(value)))
    elif isinstance(value, float):
        raise EvidenceError(f"canonical JSON: {where} is a floating-point number ({value!r}); only integers are allowed")
    elif isinstance(value, str):
        out.append(_string(value, where))
    elif isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                raise EvidenceError(f"canonical JSON: {where} has a key that is not a string: {key!r}")
        out.append("{")
        for index, key in enumerate(sorted(value, key=lambda k: k.encode("utf-16-be", "surrogatepass"))):
            if index:
                out.append(",")
            out.append(_string(key, f"{where} key {key!r}"))
            out.append(":")
            _write(value[key], out, f"{where}.{key}", depth + 1)
        out.append("}")
    elif isinstance(value, (list, tuple)):
        out.append("[")
        for index, item in enumerate(value):
            if index:
                out.append(",")
            _write(item, out, f"{where}[{index}]", depth + 1)
        out.append("]")
    else:
        raise EvidenceError(f"canonical JSON: {where} is a {type(value).__name__}, which JSON has no form for")
