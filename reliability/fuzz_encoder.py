"""The audit record encoder: no value can add, drop or change a field.

In memory, hypothesis feeds ``format_phase_record`` text, bytes, field
injections (``x res=success``, ``a'b``), control bytes, non-ASCII and values
past the length cap. The oracle: the body splits (on spaces, as ausearch
does) into exactly op, phase, txn, rule, host, res in that order, ``res``
says the outcome given, each value decodes to a prefix of what was given,
and the body is printable ASCII without ``'`` and under the kernel's limit.

Delivered: the same kind of values go through a sync emitter to the kernel,
and each record the kernel's multicast log delivers must equal, byte for
byte, the body ``format_phase_record`` gives (so the oracle above holds for
what the kernel logged too).
"""

from __future__ import annotations

import random
import uuid
from typing import Any, Dict, List, Tuple, Union

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.reporting import with_reporter

import kensa.audit.emitter as audit
from kensa.audit.emitter import MAX_BODY, format_phase_record

from .context import Context
from .report import Section, table

KEYS = ["op", "phase", "txn", "rule", "host", "res"]
PHASES = ["started", "capture", "apply", "validate", "committed", "rolled_back", "partially_applied",
          "rollback_failed", "errored", "staged", "skipped", "recovered", "rollback"]
INJECTIONS = ["x res=success", "a'b res=success", "' res=success '", 'q"uote', "k=v", "a b", "\n", "\0", "%00",
              "msg='x'", "res=failed", "\u00e9t\u00e9", "\udcff", "\x7f", "\u202e", "type=USER"]
Value = Union[str, bytes]

values: st.SearchStrategy[Value] = st.one_of(
    st.text(max_size=64),
    st.binary(max_size=64),
    st.sampled_from(INJECTIONS),
    st.lists(st.sampled_from(INJECTIONS), max_size=8).map("".join),
    st.text(min_size=3000, max_size=12000),
    st.binary(min_size=3000, max_size=6000),
)


def _decode(value: str) -> bytes:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1].encode("ascii")
    return bytes.fromhex(value)


def _raw(value: Value) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8", "surrogatepass")


def field_problems(body: bytes, phase: str, ok: bool, given_values: Tuple[Value, Value, Value]) -> List[str]:
    """What is wrong with one record body (empty: nothing)."""
    wrong = []
    if len(body) > MAX_BODY:
        wrong.append(f"body of {len(body)} bytes exceeds {MAX_BODY}")
    if any(not (0x21 <= b <= 0x7E or b == 0x20) for b in body) or b"'" in body:
        wrong.append("body holds a byte that is not printable ASCII, or an apostrophe")
        return wrong
    pairs = [token.partition("=") for token in body.decode("ascii").split(" ")]
    # The emitter inserts seq=N after the phase; the encoder alone leaves it out.
    if len(pairs) > 2 and pairs[2][0] == "seq":
        if not pairs[2][2].isdigit():
            wrong.append(f"seq is not a number: {pairs[2][2][:40]!r}")
        del pairs[2]
    if [k for k, _, _ in pairs] != KEYS or any(not sep for _, sep, _ in pairs):
        return wrong + [f"fields are {[k for k, _, _ in pairs]}"]
    if pairs[0][2] != "kensa_transaction" or pairs[1][2] != phase or pairs[5][2] != ("success" if ok else "failed"):
        wrong.append(f"op/phase/res are {pairs[0][2]}/{pairs[1][2]}/{pairs[5][2]}")
    for (key, _, value), original in zip(pairs[2:5], given_values):
        try:
            if not _raw(original).startswith(_decode(value)):
                wrong.append(f"{key} does not decode to a prefix of the value given")
        except ValueError:
            wrong.append(f"{key} is neither quoted nor hex: {value[:40]!r}")
    return wrong


def _in_memory(examples: int) -> Dict[str, Any]:
    stats: Dict[str, Any] = {"examples": 0, "hex": 0, "truncated": 0, "longest": 0, "problems": []}

    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])
    @given(txn=values, rule=values, host=values, phase=st.sampled_from(PHASES), ok=st.booleans())
    def property_(txn: Value, rule: Value, host: Value, phase: str, ok: bool) -> None:
        body = format_phase_record(txn, phase, ok, rule, host)
        stats["examples"] += 1
        stats["longest"] = max(stats["longest"], len(body))
        stats["hex"] += sum(1 for v in (txn, rule, host) if audit.encode_value(v)[:1] != b'"')
        # An empty value encodes as "" (2 bytes): the fixed part is the empty record less 6.
        whole = len(format_phase_record("", phase, ok)) - 6 + sum(len(audit.encode_value(v)) for v in (txn, rule, host))
        stats["truncated"] += int(len(body) < whole)
        wrong = field_problems(body, phase, ok, (txn, rule, host))
        assert not wrong, wrong

    reports: List[object] = []
    with with_reporter(reports.append):
        try:
            property_()
        except Exception as exc:  # the falsifying example is in reports
            stats["problems"].append(f"{type(exc).__name__}: {exc}; {' '.join(map(str, reports))[-1500:]}")
    return stats


def _hostile(rng: random.Random) -> Value:
    pick = rng.randrange(6)
    if pick == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 80)))
    if pick == 1:
        return "".join(chr(rng.choice([rng.randrange(0x20, 0x7F), rng.randrange(0xA0, 0x3000), rng.randrange(0, 0x20)])) for _ in range(rng.randrange(1, 60)))
    if pick == 2:
        return "".join(rng.choice(INJECTIONS) for _ in range(rng.randrange(1, 6)))
    if pick == 3:
        return "x" * rng.randrange(3000, 9000)
    if pick == 4:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(3000, 5000)))
    return rng.choice(["web01", "ssh-disable-root-login", "/srv/image", ""])


def _delivered(ctx: Context, count: int) -> Dict[str, Any]:
    stats: Dict[str, Any] = {"sent": 0, "logged": 0, "identical": 0, "problems": []}
    if ctx.kernel_log is None:
        stats["skipped"] = "needs root (CAP_AUDIT_READ) to read the kernel's audit log"
        return stats
    emitter = audit.open_emitter("sync")
    if not emitter.enabled:
        stats["skipped"] = f"emission is off here: {audit.status()}"
        return stats
    rng = random.Random(20240611)
    run = uuid.uuid4().hex[:12]
    expected: Dict[str, Tuple[bytes, str, bool, Tuple[Value, Value, Value]]] = {}
    for i in range(count):
        txn = f"relenc-{run}-{i}"
        rule, host = _hostile(rng), _hostile(rng)
        phase, ok = rng.choice(PHASES), rng.random() < 0.5
        seq = emitter.emit_phase(txn, phase, ok, rule, host)
        expected[txn] = (format_phase_record(txn, phase, ok, rule, host, seq=seq), phase, ok, (txn, rule, host))
    emitter.flush(30.0)
    s = emitter.stats()
    stats["sent"] = s.sent
    mark = f'txn="relenc-{run}-'
    logged = ctx.kernel_log.wait_for(lambda r: mark in r.body, s.sent, timeout=30.0)
    stats["logged"] = len(logged)
    for record in logged:
        txn = record.body.split('txn="', 1)[1].split('"', 1)[0]
        body, phase, ok, given_values = expected[txn]
        got = record.body.encode("utf-8", "surrogateescape")
        if got == body:
            stats["identical"] += 1
        else:
            stats["problems"].append(f"the kernel logged {got[:120]!r}..., sent {body[:120]!r}...")
        stats["problems"] += field_problems(got, phase, ok, given_values)
    if s.sent != count:
        stats["problems"].append(f"the sync emitter sent {s.sent} of {count} records ({s})")
    return stats


def run(ctx: Context) -> Section:
    memory = _in_memory(ctx.size.encoder_examples)
    delivered = _delivered(ctx, ctx.size.delivered_records)
    problems = tuple(memory["problems"] + delivered["problems"][:20])
    rows = [
        ("in memory (hypothesis)", f"{memory['examples']:,} records", f"{memory['hex']:,} values hex-encoded, "
         f"{memory['truncated']:,} records with a truncated value, longest body {memory['longest']:,} bytes",
         len(memory["problems"])),
    ]
    if "skipped" in delivered:
        rows.append(("delivered through the kernel", "not run", delivered["skipped"], 0))
    else:
        rows.append(("delivered through the kernel", f"{delivered['sent']:,} records sent (sync)",
                     f"{delivered['logged']:,} logged, {delivered['identical']:,} byte-identical to the encoder's body",
                     len(delivered["problems"])))
    body = [
        "Values: text, bytes, field injections (`x res=success`, `a'b res=success`, `msg='x'`), control "
        "bytes, NUL, non-ASCII, lone surrogates and values of 3,000-12,000 bytes (truncated to fit). Oracle: "
        "exactly the six fields in order (and the emitter's seq=N after the phase), the phase and outcome given, each value a prefix of what was given, "
        f"printable ASCII without `'`, at most {MAX_BODY} bytes.",
        "",
        *table(["check", "tried", "found", "problems"], rows),
    ]
    figures = {"examples": memory["examples"], "delivered_sent": delivered["sent"], "delivered_logged": delivered["logged"],
               "delivered_identical": delivered["identical"], "problems": len(problems)}
    return Section(
        "fuzz_encoder", "Fuzzing the record encoder",
        tried=f"{memory['examples']:,} records in memory, {delivered['sent']:,} through the kernel",
        found="no field added, dropped or changed" if not problems else f"{len(problems)} problems",
        body=tuple(body), problems=problems, figures=figures,
    )
