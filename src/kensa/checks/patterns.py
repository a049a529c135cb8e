"""Regular expressions of checks, matched the way Kensa's rules are written for: POSIX
extended regular expressions as ``grep -E`` reads them, one line at a time.

The match runs in a ``grep`` process on the controller over bytes already read from
the target (never over a path), with a time limit: GNU grep matches an expression
without back-references in linear time, and one with back-references that would
take too long is stopped and reported as a fault, never left to hang the run.
"""

from __future__ import annotations

import subprocess
from typing import Any

from kensa.errors import CheckError, ParamError
from kensa.facts.params import line

GREP = "grep"
MATCH_TIMEOUT = 10.0
"""Seconds a pattern may take over one file."""


def _grep(pattern: str, data: bytes, timeout: float) -> int:
    try:
        done = subprocess.run(
            [GREP, "-E", "-q", "-e", pattern], input=data, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            timeout=timeout, check=False, start_new_session=True,  # out of reach of the terminal's Ctrl-C
        )
    except FileNotFoundError:
        raise CheckError("grep is not installed on this controller; it matches the patterns of checks") from None
    except subprocess.TimeoutExpired:
        raise CheckError(f"pattern {pattern[:80]!r} took longer than {timeout:g} s to match; simplify it") from None
    if done.returncode < 0:
        raise CheckError(f"grep was killed by signal {-done.returncode} while matching pattern {pattern[:80]!r}")
    if done.returncode > 1:
        raise ParamError(f"is not a valid regular expression (POSIX extended, as grep -E reads it): {done.stderr.decode(errors='replace').strip()[:200]}")
    return done.returncode


def extended_regex(value: Any) -> str:
    """A single-line POSIX extended regular expression that grep accepts (a field reader)."""
    found = line(value)
    _grep(found, b"", MATCH_TIMEOUT)
    return found


def search(pattern: str, data: bytes, timeout: float = MATCH_TIMEOUT) -> bool:
    """Whether some line of ``data`` matches ``pattern``."""
    return _grep(pattern, data, timeout) == 0
