"""Canonical JSON (kensa.evidence.canonical): the exact bytes evidence is signed as, as docs/evidence.md defines them."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, strategies as st

from kensa.errors import EvidenceError
from kensa.evidence.canonical import MAX_SAFE_INTEGER, canonical_bytes


def test_known_answer() -> None:
    """Sorted keys, no whitespace, UTF-8 text as itself, only the escapes JSON requires, lowercase hex."""
    value = {"b": [1, -2, 0, True, False, None], "a": "é\u2028\"\\\n\t\x01\x7f/", "c": {}, "": []}
    assert canonical_bytes(value) == (
        b'{"":[],"a":"\xc3\xa9\xe2\x80\xa8\\"\\\\\\n\\t\\u0001\x7f/","b":[1,-2,0,true,false,null],"c":{}}'
    )


def test_keys_sort_by_utf16_code_units_as_rfc_8785_says() -> None:
    """U+1F600 (surrogates D83D DE00) sorts before U+E000, unlike code point order."""
    assert canonical_bytes({"\ue000": 1, "\U0001f600": 2}) == '{"\U0001f600":2,"\ue000":1}'.encode("utf-8")


@pytest.mark.parametrize(
    "value, named",
    [
        (1.5, "floating-point"),
        (MAX_SAFE_INTEGER + 1, "outside"),
        (-MAX_SAFE_INTEGER - 1, "outside"),
        ("\udcff", "lone surrogate"),
        ({1: "x"}, "not a string"),
        ({"k": b"bytes"}, "bytes"),
        ({"a": {"b": [float("nan")]}}, "$.a.b[0]"),
    ],
)
def test_what_canonical_json_cannot_hold_is_refused_naming_where(value: Any, named: str) -> None:
    """Floats, unsafe integers, invalid Unicode, non-string keys and non-JSON types raise EvidenceError saying where."""
    with pytest.raises(EvidenceError, match=named.replace("$", r"\$").replace("[", r"\[")):
        canonical_bytes(value)


def test_deep_nesting_is_refused() -> None:
    """A value nested beyond the bound is an error, not a RecursionError."""
    value: Any = []
    for _ in range(100):
        value = [value]
    with pytest.raises(EvidenceError, match="nested"):
        canonical_bytes(value)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-MAX_SAFE_INTEGER, MAX_SAFE_INTEGER) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=20,
)


@given(json_values)
def test_canonical_bytes_are_a_fixed_point_of_parsing(value: Any) -> None:
    """Any JSON reader reads the bytes back to the same value, and canonicalising that again gives the same bytes."""
    data = canonical_bytes(value)
    parsed = json.loads(data.decode("utf-8"))
    assert parsed == json.loads(json.dumps(value))
    assert canonical_bytes(parsed) == data
    assert b" " not in data.replace(b"\\", b"") or any(" " in s for s in _strings(value))


def _strings(value: Any) -> list:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for item in value for s in _strings(item)]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [k, *_strings(v)]]
    return []
