"""The record encoder: field order, encoding of untrusted values, length cap."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import decode_value, parse_fields, require_audit
import kensa.audit.emitter as audit
from kensa.errors import AuditArgumentError
from kensa.audit.compiled import WITHOUT_EXTENSION, reason_names
from kensa.audit.emitter import MAX_BODY, encode_value, format_phase_record

DATA = Path(__file__).parent / "data"
KEYS = ["op", "phase", "txn", "rule", "host", "res"]
values = st.one_of(st.text(), st.binary())


def test_known_answer_records() -> None:
    """Known inputs give exactly the recorded bodies (tests/data/records.json)."""
    for case in json.loads((DATA / "records.json").read_text()):
        body = format_phase_record(case["txn"], case["phase"], case["ok"], case["rule"], case["host"])
        assert body.decode("ascii") == case["body"]


@settings(max_examples=400, deadline=None)
@given(txn=values, rule=values, host=values, ok=st.booleans())
def test_untrusted_values_never_change_the_field_set(txn: object, rule: object, host: object, ok: bool) -> None:
    """Whatever txn, rule and host hold, the body has exactly kensa's six fields, in order."""
    body = format_phase_record(txn, "apply", ok, rule, host)  # type: ignore[arg-type]
    assert len(body) <= MAX_BODY
    assert all(0x21 <= b <= 0x7E or b == 0x20 for b in body)
    assert b"'" not in body
    fields = parse_fields(body.decode("ascii"))
    assert [k for k, _ in fields] == KEYS
    assert fields[0][1] == "kensa_transaction" and fields[1][1] == "apply"
    assert fields[5][1] == ("success" if ok else "failed")
    for (_, value), original in zip(fields[2:5], (txn, rule, host)):
        raw = original if isinstance(original, bytes) else original.encode("utf-8", "surrogatepass")  # type: ignore[union-attr]
        assert raw.startswith(decode_value(value))


@pytest.mark.parametrize(
    "hostile",
    ["x res=success", "a'b res=success", 'q"uote', "new\nline", "nul\0byte", "tab\there", "\u00e9t\u00e9", "\udcff", "x" * 10_000, ""],
)
def test_hostile_values_are_encoded_or_quoted(hostile: str) -> None:
    """Spaces, quotes, control bytes and non-ASCII are hex; plain ids stay readable."""
    enc = encode_value(hostile).decode("ascii")
    raw = hostile.encode("utf-8", "surrogatepass")
    if raw and all(0x21 <= b <= 0x7E and b not in b"\"'" for b in raw):
        assert enc == f'"{hostile}"'
    elif raw:
        assert enc == raw.hex().upper()
    else:
        assert enc == '""'


def test_length_cap_truncates_values_never_fields() -> None:
    """Three 10 KB values fit under the kernel's limit and keep every field."""
    body = format_phase_record("t" * 10_000, "partially_applied", False, "r" * 10_000, "h\n" * 5_000)
    assert len(body) <= MAX_BODY
    assert [k for k, _ in parse_fields(body.decode())] == KEYS
    assert body.endswith(b" res=failed")


def test_short_values_survive_next_to_a_huge_one() -> None:
    """Truncation takes from the long value, not from the short ones."""
    body = format_phase_record("txn-1", "apply", True, "r" * 20_000, "web01").decode()
    fields = dict(parse_fields(body))
    assert fields["txn"] == '"txn-1"' and fields["host"] == '"web01"'
    assert len(body) > MAX_BODY - 64


def test_phase_must_be_a_plain_name() -> None:
    """A phase is never caller data: anything but lowercase and '_' is refused."""
    for bad in ["Apply", "apply res=success", "", "a" * 33, "apply\n"]:
        with pytest.raises(ValueError, match="invalid audit phase"):
            format_phase_record("t", bad, True)


@pytest.mark.parametrize("msg_type", [1005, 1100, 1199, 2100, 2999])
def test_user_message_types_are_accepted(msg_type: int) -> None:
    """AUDIT_USER and the user ranges are valid record types."""
    audit.open_emitter("sync", msg_type=msg_type).close()


@pytest.mark.parametrize("msg_type", [0, 1000, 1004, 1006, 1099, 1200, 2000, 2099, 3000, 1300])
def test_other_message_types_are_rejected(msg_type: int) -> None:
    """Kernel and reserved types are refused with a message naming the valid ranges."""
    with pytest.raises(ValueError, match="1100-1199 or 2100-2999"):
        audit.open_emitter(msg_type=msg_type)


def test_bad_arguments_are_rejected() -> None:
    """An unknown mode or a non-positive capacity is a clear error."""
    with pytest.raises(ValueError, match="mode"):
        audit.open_emitter("fast")
    with pytest.raises(ValueError, match="capacity"):
        audit.open_emitter(capacity=0)


def _compiled():  # type: ignore[no-untyped-def]
    try:
        from kensa import _audit
    except ImportError:
        require_audit("the extension kensa._audit is not built")
    return _audit


def test_limits_come_from_the_c_header_and_follow_the_kernel() -> None:
    """MAX_BODY and SEQ_ROOM are the C emitter's values, and the body cap is the kernel's limit less its NUL."""
    lib = _compiled().lib
    assert MAX_BODY == lib.KENSA_MAX_BODY == lib.AUDIT_MESSAGE_TEXT_MAX - 1
    assert audit.SEQ_ROOM == lib.KENSA_SEQ_ROOM
    assert audit.AUDIT_USER == lib.AUDIT_USER


def test_values_a_pure_python_install_uses_are_the_compiled_ones() -> None:
    """Every value the formatter falls back on without the extension equals the compiled module's."""
    lib = _compiled().lib
    assert {name: getattr(lib, name) for name in WITHOUT_EXTENSION} == dict(WITHOUT_EXTENSION)


def test_reason_names_are_read_from_the_c_enum() -> None:
    """The reasons status() and stats() report are enum kensa_reason's members, named as users rely on."""
    _compiled()
    assert dict(reason_names()) == {
        0: "on", 1: "no_capability", 2: "user_namespace", 3: "no_kernel_audit", 4: "refused_eperm",
        5: "refused_econnrefused", 6: "socket_error", 7: "closed", 8: "no_memory", 9: "thread_error",
    }
    # Each one has the sentence status() shows for it.
    assert set(reason_names().values()) <= set(audit._REASON_TEXT)


def test_longest_body_with_the_largest_seq_still_fits() -> None:
    """Truncated values leave room for seq=<20 digits>: the body the C side builds stays under the cap."""
    body = format_phase_record("t" * 10_000, "partially_applied", False, "r" * 10_000, "h" * 10_000, seq=2**64 - 1)
    assert len(body) <= MAX_BODY
    assert [k for k, _ in parse_fields(body.decode())] == ["op", "phase", "seq", *KEYS[2:]]


def test_seq_must_be_a_positive_64_bit_number() -> None:
    """format_phase_record refuses a seq the emitter can never produce, with an AuditArgumentError."""
    for bad in (0, -1, 2**64, True, "1"):
        with pytest.raises(AuditArgumentError, match="seq"):
            format_phase_record("t", "apply", True, seq=bad)  # type: ignore[arg-type]


@pytest.mark.smoke
def test_import_kensa_without_the_extension() -> None:
    """With kensa._audit unimportable, import works, emission is a no-op and says why."""
    code = (
        "import sys; sys.modules['kensa._audit'] = None\n"
        "import kensa, kensa.audit as a\n"
        "e = a.open_emitter(); e.emit_phase('t', 'started', True, 'r', 'h')\n"
        "s = a.status(); print(type(e).__name__, s.enabled, s.reason, e.stats().reason)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["NoopEmitter", "False", "no_extension", "no_extension"]


def test_a_remediation_without_the_extension_warns_loudly(tmp_path: Path) -> None:
    """An install without kensa._audit is not silent: the CLI and default_engine() say no records are written."""
    rules = Path(__file__).resolve().parent.parent / "examples" / "rules"
    root = tmp_path / "root"
    root.mkdir()
    cli = (
        "import sys; sys.modules['kensa._audit'] = None\n"
        "from kensa.cli import main\n"
        f"sys.exit(main(['--journal', {str(tmp_path / 'j.db')!r}, 'remediate', {str(rules)!r}, '--root', {str(root)!r}]))\n"
    )
    out = subprocess.run([sys.executable, "-c", cli], capture_output=True, text=True)
    assert "kensa: warning: kensa writes no audit records" in out.stderr, out.stderr
    assert "installed without its C extension" in out.stderr
    api = (
        "import sys, warnings; sys.modules['kensa._audit'] = None\n"
        "import kensa\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        f"    kensa.default_engine({str(tmp_path / 'k.db')!r})\n"
        f"    kensa.default_engine({str(tmp_path / 'k.db')!r}, audit=False)\n"
        "print(len(w), w[0].category.__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", api], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1", "NoAuditExtensionWarning"]


def test_kensa_audit_off_in_the_environment() -> None:
    """KENSA_AUDIT=off gives a no-op emitter whose status says so."""
    env = dict(os.environ, KENSA_AUDIT="off")
    code = "import kensa.audit as a; e = a.open_emitter(); print(type(e).__name__, a.status().reason)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.split() == ["NoopEmitter", "disabled"]
