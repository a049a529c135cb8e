"""The rule loader on hostile input: a Rule or a RuleError, never another exception, never a hang.

Inputs: random text and bytes (up to a few KB), YAML punctuation soup,
deeply nested flow collections, alias bombs, huge scalars, random YAML
structures, and byte-level and structural mutations of every example rule
in examples/rules. Each input is parsed with libyaml's parser and with
PyYAML's pure-Python one (as on hosts without libyaml), under a SIGALRM
watchdog: an input still parsing after ``HANG_SECONDS`` is a hang.
"""

from __future__ import annotations

import signal
import time
from types import FrameType
from typing import Any, Dict, List, Optional, Tuple

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.reporting import with_reporter

import kensa.rules.yaml as rules_yaml
from kensa.errors import RuleError
from kensa.rules import Rule, parse_rule

from .context import REPO, Context
from .report import Section, table

HANG_SECONDS = 10
EXAMPLES = sorted((REPO / "examples" / "rules").rglob("*.yml"))


class Hang(Exception):
    """An input took longer than HANG_SECONDS to parse."""


def _alarm(signum: int, frame: Optional[FrameType]) -> None:
    raise Hang(f"still parsing after {HANG_SECONDS} s")


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=40),
    st.sampled_from(["no", "yes", "0644", "~", "*a", "&a", "!!python/object:os.system", "<<", "=", "/etc/x",
                     "config_set", "file_content", "../../etc/shadow", "\0", "-D", "-e 2"]),
)
yamlish = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=6), st.dictionaries(st.text(max_size=16), children, max_size=6)),
    max_leaves=60,
)


def _nested(depth: int, opener: str) -> str:
    closer = {"[": "]", "{": "}"}[opener]
    inner = "a" if opener == "[" else "a: b"
    return opener * depth + inner + closer * depth


def _mutate(text: bytes, edits: List[Tuple[int, int, bytes]]) -> bytes:
    out = bytearray(text)
    for position, delete, insert in edits:
        at = position % (len(out) + 1)
        out[at : at + delete] = insert
    return bytes(out)


def _inputs() -> st.SearchStrategy[Tuple[str, Any]]:
    seeds = [path.read_bytes() for path in EXAMPLES] or [b"id: x\n"]
    seed = st.sampled_from(seeds)
    edit = st.tuples(st.integers(0, 10_000), st.integers(0, 8), st.binary(max_size=8) | st.sampled_from([b"\n", b": ", b"- ", b"&a ", b"*a", b"!!", b"{", b"[", b"'", b'"', b"\t", b"#"]))
    return st.one_of(
        st.tuples(st.just("text"), st.text(max_size=4000)),
        st.tuples(st.just("bytes"), st.binary(max_size=4000)),
        st.tuples(st.just("punctuation"), st.text(alphabet=list("[]{}:-?&*!|>'\"#%@` \n\t,.~\\abc019"), max_size=2000)),
        st.tuples(st.just("nesting"), st.tuples(st.integers(1, 50_000), st.sampled_from("[{")).map(lambda p: _nested(*p))),
        st.tuples(st.just("huge scalar"), st.integers(1, 2_000_000).map(lambda n: "id: " + "x" * n)),
        st.tuples(st.just("yaml structure"), yamlish.map(lambda v: yaml.safe_dump(v, allow_unicode=True))),
        st.tuples(st.just("mutated example"), st.tuples(seed, st.lists(edit, min_size=1, max_size=8)).map(lambda p: _mutate(*p))),
        st.tuples(st.just("example, value replaced"), st.tuples(seed, yamlish).map(lambda p: _replace_value(p[0], p[1]))),
    )


def _replace_value(seed: bytes, value: Any) -> str:
    """The example rule with one top-level field replaced by ``value``."""
    doc = yaml.safe_load(seed)
    key = sorted(doc)[hash(repr(value)) % len(doc)]
    doc[key] = value
    return str(yaml.safe_dump(doc, allow_unicode=True))


def _parse(data: Any, loader: Any) -> str:
    rules_yaml._LOADER = loader
    signal.alarm(HANG_SECONDS)
    try:
        result = parse_rule(data, "fuzz.yml")
    except RuleError as exc:
        if not str(exc).startswith("fuzz.yml:"):
            raise AssertionError(f"RuleError does not name the file: {exc}") from None
        return "RuleError"
    finally:
        signal.alarm(0)
    assert isinstance(result, Rule)
    return "supported rule" if result.supported else "unsupported rule"


def run(ctx: Context) -> Section:
    loaders = [("libyaml", getattr(yaml, "CSafeLoader", None)), ("pure Python", yaml.SafeLoader)]
    loaders = [(name, loader) for name, loader in loaders if loader is not None]
    outcomes: Dict[Tuple[str, str], int] = {}
    slowest: Dict[str, float] = {}
    problems: List[str] = []
    original_loader = rules_yaml._LOADER
    previous = signal.signal(signal.SIGALRM, _alarm)

    @settings(max_examples=ctx.size.rule_examples, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])
    @given(_inputs())
    def property_(item: Tuple[str, Any]) -> None:
        kind, data = item
        for name, loader in loaders:
            began = time.perf_counter()
            outcome = _parse(data, loader)
            slowest[name] = max(slowest.get(name, 0.0), time.perf_counter() - began)
            outcomes[(kind, outcome)] = outcomes.get((kind, outcome), 0) + 1

    reports: List[object] = []
    try:
        with with_reporter(reports.append):
            property_()
    except Exception as exc:  # the falsifying example is in reports
        problems.append(f"{type(exc).__name__}: {str(exc)[:500]}; {' '.join(map(str, reports))[-1500:]}")
    finally:
        rules_yaml._LOADER = original_loader
        signal.signal(signal.SIGALRM, previous)
    kinds = sorted({k for k, _ in outcomes})
    results = ["RuleError", "unsupported rule", "supported rule"]
    rows = [(k, *(outcomes.get((k, r), 0) for r in results)) for k in kinds]
    total = sum(outcomes.values())
    body = [
        f"{total:,} parses ({ctx.size.rule_examples:,} inputs x {len(loaders)} YAML parsers: "
        f"{', '.join(n for n, _ in loaders)}), seeds from {len(EXAMPLES)} example rules. Slowest parse: "
        + ", ".join(f"{n} {slowest.get(n, 0) * 1000:.0f} ms" for n, _ in loaders)
        + f" (watchdog: {HANG_SECONDS} s).",
        "",
        *table(["input", *results], rows),
    ]
    figures = {"parses": total, "problems": len(problems), "slowest_seconds": max(slowest.values(), default=0.0)}
    return Section(
        "fuzz_rules", "Fuzzing the rule loader",
        tried=f"{total:,} parses of hostile YAML and bytes",
        found="only RuleError, no crash, no hang" if not problems else "an input escaped as another exception or hung",
        body=tuple(body), problems=tuple(problems), figures=figures,
    )
