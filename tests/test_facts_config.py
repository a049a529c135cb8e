"""How sshd_config-style files are read (kensa.facts.config): the key search agrees with reading line by line."""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

from hypothesis import given, settings
from hypothesis import strategies as st

from kensa.facts.config import find_key, get_value, line_key

_PIECES = ["Port", "port", "PORT", "Match", "match", " ", "\t", "\x0b", "\x1c", "\u00a0", "#", ";", "=", "x", "22", "a b"]


def _line_by_line(lines: Sequence[str], key: str, comments: Sequence[str]) -> Tuple[Optional[int], int]:
    """The reading the format describes, one line at a time through line_key."""
    for index, line in enumerate(lines):
        found = line_key(line, comments)
        if found is None:
            continue
        if found.lower() == "match":
            return None, index
        if found.lower() == key.lower():
            return index, index
    return None, len(lines)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.lists(st.sampled_from(_PIECES), max_size=5).map("".join), max_size=8),
       st.sampled_from(["Port", "x", "22"]), st.sampled_from([("#",), ("#", ";")]))
def test_find_key_agrees_with_reading_each_line(lines: List[str], key: str, comments: Tuple[str, ...]) -> None:
    """For any lines of keys, comments, Match blocks and odd whitespace (vertical tab, unicode
    spaces), find_key finds the line and the end of the global lines that reading each line
    with line_key finds."""
    assert find_key(lines, key, comments) == _line_by_line(lines, key, comments)


def test_the_first_global_setting_wins_and_match_ends_the_global_lines() -> None:
    """The first line setting a key (case-insensitively) is its value; one inside a Match block is not global."""
    text = "# Port 1\n  port 2\nPort 3\nMatch User x\n  Banner none\n"
    assert get_value(text, "Port") == "2"
    assert get_value(text, "Banner") is None
    assert find_key(text.splitlines(), "Banner", ("#",)) == (None, 3)
