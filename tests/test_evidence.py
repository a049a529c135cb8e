"""Signed evidence of real transactions: what it holds, that it verifies, and that no alteration passes.

A real remediation run (committed, skipped, rolled back, not applicable) in a
temporary root, through the kensa command; evidence exported from its
journal, signed with keys from ``kensa keygen``; verified with ``kensa verify``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest

from conftest import require_real, require_root
from evidence_run import OUTCOMES, SSHD_BEFORE, kensa, remediation_run, transaction_ids
from kensa.cli.main import EXIT_BAD_INPUT, EXIT_NOT_APPLIED, EXIT_OK
from kensa.evidence.canonical import canonical_bytes
from kensa.evidence.keys import load_signing_key
from kensa.evidence.sign import sign_payload, verify_bytes
from kensa.journal.store import SqliteJournal


def needs_cryptography() -> None:
    try:
        import cryptography  # noqa: F401
    except ImportError:
        require_real("cryptography is not installed: pip install -e '.[test]' (or 'kensa[evidence]')")


def keygen(folder: Path) -> Dict[str, str]:
    needs_cryptography()
    folder.mkdir(exist_ok=True)
    code, out = kensa("keygen", "--dir", str(folder), "--json")
    assert code == EXIT_OK
    pair: Dict[str, str] = json.loads(out)
    return pair


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    """One real run, a key pair, and the evidence of its three transactions."""
    needs_cryptography()
    base = tmp_path_factory.mktemp("evidence")
    found = remediation_run(base)
    assert found["code"] == EXIT_NOT_APPLIED
    found["txns"] = transaction_ids(found["out"])
    assert set(found["txns"]) == {rule for rule, outcome in OUTCOMES.items() if outcome != "not_applicable"}
    found["key"] = keygen(base / "keys")
    found["evidence"] = base / "evidence"
    found["evidence"].mkdir()
    code, out = kensa("--journal", str(found["journal"]), "evidence", "export", *found["txns"].values(),
                      "--rules", str(found["rules"]), "--key", found["key"]["private_key"], "--out", str(found["evidence"]))
    assert code == EXIT_OK, out
    found["files"] = {rule: found["evidence"] / f"{txn}.evidence.json" for rule, txn in found["txns"].items()}
    return found


def payload_of(path: Path) -> Dict[str, Any]:
    payload: Dict[str, Any] = json.loads(path.read_bytes())["payload"]
    return payload


def verify(path: Path, *keys: str) -> tuple:
    argv = ["verify", str(path)]
    for key in keys:
        argv += ["--key", key]
    return kensa(*argv)


# --- what the evidence holds ------------------------------------------------------


def test_committed_evidence_holds_rule_references_host_phases_digests_and_audit_records(run: Dict[str, Any]) -> None:
    """The committed transaction's evidence: rule id and references, host, phases, file digests, status, audit seqs."""
    payload = payload_of(run["files"]["ev-ssh-root"])
    assert payload["format"] == "kensa-evidence/1"
    assert payload["rule"]["id"] == "ev-ssh-root"
    assert [(r["framework"], r["control"], r["profile"]) for r in payload["rule"]["references"]] == [
        ("nist_800_53", "AC-6(2)", ""), ("nist_800_53", "IA-2", ""), ("cis", "5.1.20", "rhel9")]
    assert payload["rule"]["references"][2]["attributes"] == {"level": "L1"}
    rule_file = run["rules"] / "ssh-root.yml"
    assert payload["rule"]["source_sha256"] == hashlib.sha256(rule_file.read_bytes()).hexdigest()
    assert payload["host"] == str(run["root"])
    assert payload["status"] == "committed" and payload["host_unchanged"] is False
    assert [(p["phase"], p["result"]) for p in payload["phases"]] == [
        ("preflight", "success"), ("check", "success"), ("capture", "success"), ("apply", "success"), ("validate", "success")]
    assert all(isinstance(p["duration_us"], int) and p["duration_us"] >= 0 for p in payload["phases"])
    (step,) = payload["steps"]
    (touched,) = step["files"]
    sshd = run["root"] / "etc/ssh/sshd_config"
    assert touched["path"] == "/etc/ssh/sshd_config"
    assert touched["before"]["sha256"] == hashlib.sha256(SSHD_BEFORE.encode()).hexdigest()
    assert touched["after"]["sha256"] == hashlib.sha256(sshd.read_bytes()).hexdigest()
    assert touched["before"]["mode"] == touched["after"]["mode"] == 0o600
    with SqliteJournal(run["journal"], create=False) as journal:
        journaled = journal.audit_sequences(run["txns"]["ev-ssh-root"])
        entry = journal.get(run["txns"]["ev-ssh-root"])
    assert [(a["phase"], a["seq"], a["pid"]) for a in payload["audit_records"]] == [(a.phase, a.seq, a.pid) for a in journaled]
    assert [a["phase"] for a in payload["audit_records"]] == ["started", "capture", "apply", "validate", "committed"]
    assert payload["transaction"]["journal_seq"] == entry.seq
    assert payload["transaction"]["id"] == run["txns"]["ev-ssh-root"]


def test_audit_records_in_evidence_carry_the_sequence_numbers_the_kernel_got(run: Dict[str, Any]) -> None:
    """As root with kernel audit, every record of the transaction was handed over and its seq is in the evidence."""
    require_root("the kernel accepts audit records from root only")
    payload = payload_of(run["files"]["ev-ssh-root"])
    seqs = [a["seq"] for a in payload["audit_records"]]
    assert all(isinstance(seq, int) for seq in seqs), seqs
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def test_rolled_back_evidence_names_the_failed_phase_and_the_restore(run: Dict[str, Any]) -> None:
    """The rolled-back transaction: validate failed, rollback succeeded, host unchanged, both steps' digests."""
    payload = payload_of(run["files"]["ev-motd-conflict"])
    assert payload["status"] == "rolled_back" and payload["host_unchanged"] is True
    phases = {p["phase"]: p["result"] for p in payload["phases"]}
    assert phases["apply"] == "success" and phases["validate"] == "failed" and phases["rollback"] == "success"
    assert payload["error"]["phase"] == "validate"
    assert [r["ok"] for r in payload["rollbacks"]] == [True, True]
    assert [s["files"][0]["before"]["exists"] for s in payload["steps"]] == [False, True]
    assert payload["steps"][1]["files"][0]["after"]["sha256"] == hashlib.sha256(b"two\n").hexdigest()
    assert payload["audit_records"][-1]["phase"] == "rolled_back"


def test_skipped_evidence_has_no_capture(run: Dict[str, Any]) -> None:
    """Already compliant: started and skipped only, no step captured, host unchanged."""
    payload = payload_of(run["files"]["ev-banner-present"])
    assert payload["status"] == "skipped" and payload["host_unchanged"] is True
    assert [p["phase"] for p in payload["phases"]] == ["preflight", "check"]
    assert payload["steps"] == [] and payload["transaction"]["intent_recorded_at"] is None
    assert [a["phase"] for a in payload["audit_records"]] == ["started", "skipped"]


def test_the_evidence_file_is_its_own_canonical_form(run: Dict[str, Any]) -> None:
    """The file is the canonical JSON of what it holds plus a newline; the signature is over the payload's."""
    data = run["files"]["ev-ssh-root"].read_bytes()
    envelope = json.loads(data)
    assert canonical_bytes(envelope) + b"\n" == data
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    public = base64.b64decode(envelope["public_key"])
    assert hashlib.sha256(public).hexdigest() == envelope["key_id"] == run["key"]["key_id"]
    Ed25519PublicKey.from_public_bytes(public).verify(base64.b64decode(envelope["signature"]), canonical_bytes(envelope["payload"]))


# --- verification -----------------------------------------------------------------


def test_untouched_evidence_verifies_against_the_trusted_key(run: Dict[str, Any]) -> None:
    """kensa verify exits 0 and says OK for every file, with the public key given."""
    code, out = kensa("verify", *map(str, run["files"].values()), "--key", run["key"]["public_key"])
    assert code == EXIT_OK, out
    assert out.count("OK ") == 3 and "untouched" in out


def test_evidence_checked_only_against_its_own_key_is_not_called_trusted(run: Dict[str, Any]) -> None:
    """Without --key the signature may verify, but the output says it proves nothing and the exit is 1."""
    code, out = verify(run["files"]["ev-ssh-root"])
    assert code == 1
    assert out.startswith("NOT TRUSTED") and "OK" not in out and "--key" in out


def _flip_positions(data: bytes) -> Dict[str, List[int]]:
    """Byte positions inside the value of each envelope field, and every other (structural) byte."""
    text = data.decode("utf-8")
    at = [len(text[:i].encode()) for i in range(len(text) + 1)]  # character index -> byte offset
    classes: Dict[str, List[int]] = {}
    for field in ("signature", "key_id", "public_key"):
        marker = f'"{field}":"'
        start = text.index(marker) + len(marker)
        classes[field] = list(range(at[start], at[text.index('"', start)]))
    start, end = text.index('"payload":') + len('"payload":'), text.index(',"public_key"')
    # Letters inside the payload's strings: a flip there keeps the file JSON, so only the signature and digests catch it.
    in_string, escaped, letters = False, False, []
    for i in range(start, end):
        char = text[i]
        if in_string and not escaped and char.isascii() and char.isalpha():
            letters.append(at[i])
        if char == '"' and not escaped:
            in_string = not in_string
        escaped = in_string and char == "\\" and not escaped
    classes["payload"] = letters
    inside = {i for ranges in classes.values() for i in ranges} | set(range(at[start], at[end]))
    classes["elsewhere"] = [i for i in range(len(data)) if i not in inside]
    return classes


def test_flipping_any_byte_of_the_file_fails_verification(run: Dict[str, Any]) -> None:
    """Every single-bit change, at every position of the file, is caught: never valid, never trusted."""
    data = run["files"]["ev-banner-present"].read_bytes()
    trusted = {run["key"]["key_id"]: base64.b64decode(json.loads(data)["public_key"])}
    assert verify_bytes(data, "f", trusted).trusted
    for index in range(len(data)):
        for bit in (0x01, 0x20):
            altered = bytearray(data)
            altered[index] ^= bit
            result = verify_bytes(bytes(altered), "f", trusted)
            assert not result.valid and not result.trusted and result.problems, (index, bit)


@pytest.mark.parametrize(
    "where, named",
    [
        ("signature", "signature"),
        ("key_id", "key_id is not the SHA-256 of public_key"),
        ("public_key", "public_key"),
        ("payload", "payload field(s)"),
        ("elsewhere", "altered"),
    ],
)
def test_a_flipped_byte_is_reported_by_the_kensa_command_naming_what_was_altered(
    run: Dict[str, Any], tmp_path: Path, where: str, named: str
) -> None:
    """A byte flipped in the signature, the key id, the public key, the payload or the structure: exit 1 naming it."""
    data = run["files"]["ev-ssh-root"].read_bytes()
    positions = _flip_positions(data)[where]
    for index in (positions[0], positions[len(positions) // 2], positions[-1]):
        altered = bytearray(data)
        altered[index] ^= 0x01
        target = tmp_path / f"{where}-{index}.json"
        target.write_bytes(bytes(altered))
        code, out = verify(target, run["key"]["public_key"])
        assert code == 1 and out.startswith("ALTERED"), (index, out)
        assert named in out, (index, out)


def test_a_changed_value_is_named_by_its_field(run: Dict[str, Any], tmp_path: Path) -> None:
    """Turning 'rolled_back' into 'committed' is reported as an alteration of the status field."""
    data = run["files"]["ev-motd-conflict"].read_bytes()
    target = tmp_path / "forged.json"
    target.write_bytes(data.replace(b'"status":"rolled_back"', b'"status":"committed"'))
    code, out = verify(target, run["key"]["public_key"])
    assert code == 1
    assert "payload field(s) status" in out and "signature does not verify" in out


def test_evidence_signed_with_another_key_fails_against_the_trusted_one(run: Dict[str, Any], tmp_path: Path) -> None:
    """A forger's re-signed payload verifies with its own embedded key but not against the trusted key."""
    other = keygen(tmp_path / "other")
    payload = payload_of(run["files"]["ev-motd-conflict"])
    payload["status"] = "committed"
    forged = tmp_path / "forged.json"
    forged.write_bytes(sign_payload(payload, load_signing_key(other["private_key"])))
    code, out = verify(forged, run["key"]["public_key"])
    assert code == 1
    assert out.startswith("NOT TRUSTED") and other["key_id"] in out and "none of the trusted keys" in out
    code, _ = verify(forged, other["public_key"])
    assert code == EXIT_OK  # it is what that key signed


def test_after_rotation_old_and_new_evidence_verify_with_both_keys_trusted(run: Dict[str, Any], tmp_path: Path) -> None:
    """A new key pair gets a new id; evidence signed before keeps verifying with the old public key; verify takes both."""
    new = keygen(tmp_path / "rotated")
    assert new["key_id"] != run["key"]["key_id"]
    out_dir = tmp_path / "new-evidence"
    out_dir.mkdir()
    txn = run["txns"]["ev-ssh-root"]
    code, _ = kensa("--journal", str(run["journal"]), "evidence", "export", txn, "--rules", str(run["rules"]),
                    "--key", new["private_key"], "--out", str(out_dir))
    assert code == EXIT_OK
    fresh = out_dir / f"{txn}.evidence.json"
    old = run["files"]["ev-ssh-root"]
    assert verify(old, run["key"]["public_key"])[0] == EXIT_OK
    assert verify(fresh, run["key"]["public_key"])[0] == 1
    code, out = kensa("verify", str(old), str(fresh), "--key", run["key"]["public_key"], "--key", new["public_key"])
    assert code == EXIT_OK and out.count("OK ") == 2
    # A directory of public keys is a keyring.
    keyring = tmp_path / "keyring"
    keyring.mkdir()
    for pub in (run["key"]["public_key"], new["public_key"]):
        (keyring / Path(pub).name).write_bytes(Path(pub).read_bytes())
    assert kensa("verify", str(old), str(fresh), "--key", str(keyring))[0] == EXIT_OK


def test_verify_of_a_missing_file_or_a_bad_key_is_bad_input(run: Dict[str, Any], tmp_path: Path) -> None:
    """A file that does not exist, or a trusted key that is not a public key: exit 2."""
    assert verify(tmp_path / "nope.json", run["key"]["public_key"])[0] == EXIT_BAD_INPUT
    not_a_key = tmp_path / "x.pub"
    not_a_key.write_text("hello\n")
    assert verify(run["files"]["ev-ssh-root"], str(not_a_key))[0] == EXIT_BAD_INPUT
    assert verify(run["files"]["ev-ssh-root"], run["key"]["private_key"])[0] == EXIT_BAD_INPUT


def test_a_file_that_is_not_evidence_is_reported_not_raised(tmp_path: Path) -> None:
    """Truncated, not JSON, not UTF-8, or JSON of another shape: each fails with a reason, none raises."""
    needs_cryptography()
    for name, data in {"empty": b"", "text": b"hello", "latin1": b'{"a":"\xe9"}\n', "list": b"[]\n",
                       "float": b'{"algorithm":1.5,"digests":{},"format":"","key_id":"","payload":{},"public_key":"","signature":""}\n'}.items():
        result = verify_bytes(data, name)
        assert not result.valid and result.problems, name


# --- keys -------------------------------------------------------------------------


def test_keygen_writes_a_private_key_only_its_owner_can_read(tmp_path: Path) -> None:
    """The private key file is 0600, the public one 0644; the id is the SHA-256 of the raw public key."""
    pair = keygen(tmp_path / "k")
    assert stat.S_IMODE(os.stat(pair["private_key"]).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(pair["public_key"]).st_mode) == 0o644
    key = load_signing_key(pair["private_key"])
    assert key.key_id == pair["key_id"] == hashlib.sha256(key.public_raw).hexdigest()
    assert pair["key_id"] not in repr(key) and "PRIVATE" not in repr(key)


def test_a_signing_key_readable_by_others_is_refused(run: Dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Group- or world-readable: export exits 2 naming the file and chmod 600, writes nothing, never prints the key."""
    pair = keygen(tmp_path / "k")
    os.chmod(pair["private_key"], 0o640)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code, out = kensa("--journal", str(run["journal"]), "evidence", "export", run["txns"]["ev-ssh-root"],
                      "--rules", str(run["rules"]), "--key", pair["private_key"], "--out", str(out_dir))
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT and list(out_dir.iterdir()) == []
    assert pair["private_key"] in err and "chmod 600" in err and "0640" in err
    secret = Path(pair["private_key"]).read_text()
    body = "".join(secret.splitlines()[1:-1])
    assert body not in err and body not in out


def test_keygen_never_overwrites_a_key(tmp_path: Path) -> None:
    """Two key pairs in one directory are two files each; an existing key file is never replaced."""
    first, second = keygen(tmp_path / "k"), keygen(tmp_path / "k")
    assert first["private_key"] != second["private_key"]
    assert len(list((tmp_path / "k").iterdir())) == 4


def test_signing_keys_never_enter_the_journal(run: Dict[str, Any]) -> None:
    """After exporting, the journal (and its WAL) holds no byte sequence of the private key, PEM or raw."""
    from cryptography.hazmat.primitives import serialization

    key = load_signing_key(run["key"]["private_key"])
    raw = key._private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    pem_body = "".join(Path(run["key"]["private_key"]).read_text().splitlines()[1:-1]).encode()
    for path in Path(run["journal"]).parent.glob(Path(run["journal"]).name + "*"):
        stored = path.read_bytes()
        assert raw not in stored and pem_body not in stored, path


# --- export -----------------------------------------------------------------------


def test_export_of_a_transaction_whose_rule_neither_journal_nor_rules_hold_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Run through the Python API (no rule journaled): without --rules, exit 2 naming the rule; with them, evidence."""
    from evidence_run import make_root, write_rules
    from kensa.factory import default_engine
    from kensa.rules import load_rules

    rules = write_rules(tmp_path / "rules")
    root = make_root(tmp_path / "root")
    journal = tmp_path / "j.db"
    (rule,) = [r for r in load_rules([str(rules)]) if r.id == "ev-ssh-root"]
    engine = default_engine(str(journal), audit=False)
    result = engine.run(rule.to_transaction(str(root)))
    assert result.status.value == "committed"
    key = keygen(tmp_path / "k")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    common = ["--journal", str(journal), "evidence", "export", result.txn_id, "--key", key["private_key"], "--out", str(out_dir)]
    assert kensa(*common)[0] == EXIT_BAD_INPUT and list(out_dir.iterdir()) == []
    err = capsys.readouterr().err
    assert "ran rule 'ev-ssh-root', which none of the rules given defines" in err and "--rules" in err
    assert kensa(*common, "--rules", str(rules))[0] == EXIT_OK
    payload = payload_of(out_dir / f"{result.txn_id}.evidence.json")
    assert payload["rule"]["recorded"] == "at_export"
    assert payload["rule"]["references"][1]["control"] == "IA-2"


def test_evidence_names_the_references_the_rule_had_when_it_ran(run: Dict[str, Any], tmp_path: Path) -> None:
    """The run journaled its rules: export needs no --rules, and a rule file edited since does not rewrite history."""
    txn = run["txns"]["ev-ssh-root"]
    assert payload_of(run["files"]["ev-ssh-root"])["rule"]["recorded"] == "at_run"
    edited = tmp_path / "rules"
    edited.mkdir()
    text = (run["rules"] / "ssh-root.yml").read_text().replace("[AC-6(2), IA-2]", "[AC-17]")
    (edited / "ssh-root.yml").write_text(text)
    for extra in ([], ["--rules", str(edited)]):
        out_dir = tmp_path / f"out{len(extra)}"
        out_dir.mkdir()
        code, _ = kensa("--journal", str(run["journal"]), "evidence", "export", txn, "--key", run["key"]["private_key"],
                        "--out", str(out_dir), *extra)
        assert code == EXIT_OK
        rule = payload_of(out_dir / f"{txn}.evidence.json")["rule"]
        assert [r["control"] for r in rule["references"]] == ["AC-6(2)", "IA-2", "5.1.20"]
        assert rule["source_sha256"] == hashlib.sha256((run["rules"] / "ssh-root.yml").read_bytes()).hexdigest()
        if extra:
            assert rule["source_sha256_at_export"] == hashlib.sha256(text.encode()).hexdigest()
        else:
            assert "source_sha256_at_export" not in rule


def test_a_journal_from_before_rule_sources_reads_as_holding_none(tmp_path: Path) -> None:
    """A journal written by an older kensa (no rule_sources table) still opens; no rule source is found."""
    import shutil

    from kensa.journal.rulesources import read_rule_source

    old = tmp_path / "old.db"
    shutil.copy(Path(__file__).parent / "data" / "journal_v1.db", old)
    SqliteJournal(old).close()  # migrates as any run would
    assert read_rule_source(old, "any-id") is None


def test_export_of_an_unknown_transaction_or_both_selectors_is_bad_input(run: Dict[str, Any], tmp_path: Path) -> None:
    """An id the journal does not hold, TXN and --since together, or neither: exit 2."""
    common = ["--key", run["key"]["private_key"], "--out", str(tmp_path)]
    journal = ["--journal", str(run["journal"])]
    assert kensa(*journal, "evidence", "export", "no-such-txn", *common)[0] == EXIT_BAD_INPUT
    assert kensa(*journal, "evidence", "export", run["txns"]["ev-ssh-root"], "--since", "1d", *common)[0] == EXIT_BAD_INPUT
    assert kensa(*journal, "evidence", "export", *common)[0] == EXIT_BAD_INPUT
    assert list(tmp_path.iterdir()) == []


def test_export_since_writes_every_finished_transaction(run: Dict[str, Any], tmp_path: Path) -> None:
    """--since 1d exports the run's three transactions, each verifying against the key."""
    code, out = kensa("--journal", str(run["journal"]), "evidence", "export", "--since", "1d", "--rules", str(run["rules"]),
                      "--key", run["key"]["private_key"], "--out", str(tmp_path), "--json")
    assert code == EXIT_OK
    written = json.loads(out)["written"]
    assert sorted(w["txn"] for w in written) == sorted(run["txns"].values())
    assert kensa("verify", *(w["file"] for w in written), "--key", run["key"]["public_key"])[0] == EXIT_OK


def test_evidence_commands_without_cryptography_say_how_to_install_it(tmp_path: Path) -> None:
    """With cryptography not importable, keygen exits 2 and names the kensa[evidence] extra."""
    src = Path(__file__).resolve().parent.parent / "src"
    code = (
        "import sys; sys.modules['cryptography'] = None\n"
        "from kensa.cli.main import main\n"
        f"sys.exit(main(['keygen', '--dir', {str(tmp_path)!r}]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(src)}, timeout=60)
    assert proc.returncode == EXIT_BAD_INPUT
    assert "pip install 'kensa[evidence]'" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_openssl_verifies_the_evidence_as_docs_evidence_md_says(run: Dict[str, Any], tmp_path: Path) -> None:
    """Another tool verifies offline: OpenSSL checks the signature over the payload's RFC 8785 bytes and the key id."""
    import shutil

    if shutil.which("openssl") is None:
        from conftest import require_real

        require_real("openssl is not installed")
    envelope = json.loads(run["files"]["ev-ssh-root"].read_bytes())
    payload = json.dumps(envelope["payload"], ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    (tmp_path / "payload.bin").write_bytes(payload.encode("utf-8"))
    (tmp_path / "sig.bin").write_bytes(base64.b64decode(envelope["signature"]))
    pub = run["key"]["public_key"]
    proc = subprocess.run(["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", pub, "-rawin", "-in",
                           str(tmp_path / "payload.bin"), "-sigfile", str(tmp_path / "sig.bin")], capture_output=True, text=True)
    assert proc.returncode == 0 and "Verified Successfully" in proc.stdout, proc.stdout + proc.stderr
    der = subprocess.run(["openssl", "pkey", "-pubin", "-in", pub, "-outform", "DER"], capture_output=True, check=True).stdout
    assert hashlib.sha256(der[-32:]).hexdigest() == envelope["key_id"]
    (tmp_path / "payload.bin").write_bytes(payload.replace('"committed"', '"rolled_back"').encode("utf-8"))
    proc = subprocess.run(["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", pub, "-rawin", "-in",
                           str(tmp_path / "payload.bin"), "-sigfile", str(tmp_path / "sig.bin")], capture_output=True, text=True)
    assert proc.returncode != 0


def test_a_later_rollback_by_id_is_in_the_evidence(tmp_path: Path) -> None:
    """kensa rollback of a committed transaction: its evidence keeps committed and adds the later rollback."""
    found = remediation_run(tmp_path)
    txn = transaction_ids(found["out"])["ev-ssh-root"]
    code, _ = kensa("--journal", str(found["journal"]), "rollback", txn)
    assert code == EXIT_OK
    assert (found["root"] / "etc/ssh/sshd_config").read_text() == SSHD_BEFORE
    key = keygen(tmp_path / "k")
    code, _ = kensa("--journal", str(found["journal"]), "evidence", "export", txn, "--key", key["private_key"],
                    "--out", str(tmp_path))
    assert code == EXIT_OK
    file = tmp_path / f"{txn}.evidence.json"
    payload = payload_of(file)
    assert payload["status"] == "committed"
    later = payload["later_rollback"]
    assert later["status"] == "rolled_back" and later["host_unchanged"] is True
    assert later["recorded_at"] is not None and [p["phase"] for p in later["phases"]][-1] == "rollback"
    assert verify(file, key["public_key"])[0] == EXIT_OK


def test_a_later_rollback_that_kept_an_operators_edit_says_so_in_the_evidence(tmp_path: Path) -> None:
    """An operator edits another line of the file after the commit; the rollback by id reverts only
    kensa's line, and the evidence's later rollback names the kept change (as the journal does)."""
    found = remediation_run(tmp_path)
    txn = transaction_ids(found["out"])["ev-ssh-root"]
    config = found["root"] / "etc/ssh/sshd_config"
    config.write_text(config.read_text() + "MaxAuthTries 3\n")
    code, _ = kensa("--journal", str(found["journal"]), "rollback", txn)
    assert code == EXIT_OK
    assert config.read_text() == SSHD_BEFORE + "MaxAuthTries 3\n"
    key = keygen(tmp_path / "k")
    code, _ = kensa("--journal", str(found["journal"]), "evidence", "export", txn, "--key", key["private_key"],
                    "--out", str(tmp_path))
    assert code == EXIT_OK
    file = tmp_path / f"{txn}.evidence.json"
    [rollback] = payload_of(file)["later_rollback"]["rollbacks"]
    assert rollback["ok"] is True and rollback["kept"], rollback
    assert all("/etc/ssh/sshd_config" in line for line in rollback["kept"]), rollback
    assert verify(file, key["public_key"])[0] == EXIT_OK


def test_an_envelope_of_the_right_fields_but_wrong_types_is_reported_not_raised() -> None:
    """Fields present but of other types (a list for the transaction, numbers for keys): problems, no exception."""
    needs_cryptography()
    envelope = {"algorithm": "Ed25519", "digests": [], "format": 1, "key_id": 7,
                "payload": {"transaction": ["x"]}, "public_key": None, "signature": {}}
    result = verify_bytes(canonical_bytes(envelope) + b"\n", "f")
    assert not result.valid and not result.trusted and len(result.problems) >= 3


def test_a_signing_key_reached_through_a_symlink_is_refused(tmp_path: Path) -> None:
    """The private key is opened without following links: a link to it is an error saying so."""
    from kensa.errors import KeyFileError

    pair = keygen(tmp_path / "k")
    link = tmp_path / "link.key"
    link.symlink_to(pair["private_key"])
    with pytest.raises(KeyFileError, match="symbolic link"):
        load_signing_key(link)


def test_verify_json_reports_each_file(run: Dict[str, Any], tmp_path: Path) -> None:
    """--json: one object per file with valid, trusted, key id, transaction and problems."""
    forged = tmp_path / "forged.json"
    forged.write_bytes(run["files"]["ev-ssh-root"].read_bytes().replace(b'"committed"', b'"rolled_back"'))
    code, out = kensa("verify", str(run["files"]["ev-ssh-root"]), str(forged), "--key", run["key"]["public_key"], "--json")
    assert code == 1
    good, bad = json.loads(out)
    assert good == {"file": str(run["files"]["ev-ssh-root"]), "valid": True, "trusted": True, "key_id": run["key"]["key_id"],
                    "txn": run["txns"]["ev-ssh-root"], "problems": []}
    assert bad["valid"] is False and bad["trusted"] is False and bad["problems"]


@pytest.mark.parametrize(
    "timed, error_phase, rollbacks_ok, status, expected",
    [
        ("preflight check capture", "capture", (), "errored", {"capture": "failed", "check": "success"}),
        ("preflight check capture apply rollback", "rollback", (False,), "rollback_failed",
         {"apply": "failed", "rollback": "failed"}),
        ("preflight check capture apply validate rollback", "validate", (True,), "rolled_back",
         {"apply": "success", "validate": "failed", "rollback": "success"}),
    ],
)
def test_each_phase_result_follows_from_the_journaled_result(
    tmp_path: Path, timed: str, error_phase: str, rollbacks_ok: tuple, status: str, expected: Dict[str, str]
) -> None:
    """A rollback means the last of apply/validate failed, whatever the error names; a failed restore fails rollback."""
    from datetime import datetime, timezone

    from kensa.evidence.record import evidence_payload
    from kensa.model import JournalEntry, Phase, RollbackResult, Status, Transaction, TransactionError, TransactionResult
    from kensa.rules import load_rules
    from evidence_run import write_rules

    (rule,) = [r for r in load_rules([str(write_rules(tmp_path / "rules"))]) if r.id == "ev-ssh-root"]
    txn = Transaction(rule.id, (), host="h")
    result = TransactionResult(
        txn.id, rule.id, "h", Status(status), True, {Phase(p): 0.001 for p in timed.split()},
        rollbacks=tuple(RollbackResult("config_set", ok) for ok in rollbacks_ok),
        error=TransactionError("E", "m", Phase(error_phase)),
    )
    now = datetime.now(timezone.utc)
    entry = JournalEntry(txn, (), result, now, now, intent_recorded=False)
    phases = {p["phase"]: p["result"] for p in evidence_payload(entry, [], rule)["phases"]}
    assert [p for p in phases] == timed.split()
    assert {k: phases[k] for k in expected} == expected
    assert all(v == "success" for k, v in phases.items() if k not in expected)


@pytest.mark.serial
def test_evidence_gives_each_phase_record_the_kernels_time_and_serial_from_auditds_log(tmp_path: Path) -> None:
    """--audit-log: every audit record of the transaction gets its logged time and serial; ausearch finds it by serial."""
    import time

    from conftest import require_auditd
    from kensa.evidence.export import logged_records

    require_auditd()
    found = remediation_run(tmp_path)
    txn = transaction_ids(found["out"])["ev-ssh-root"]
    with SqliteJournal(found["journal"], create=False) as journal:
        journaled = journal.audit_sequences(txn)
    if not all(a.seq is not None for a in journaled):
        require_real(f"kernel audit took no record of the run: {journaled}")
    deadline = time.monotonic() + 120
    while len(logged_records([txn])) < len(journaled):
        if time.monotonic() > deadline:
            pytest.fail("auditd never wrote the transaction's records to its log")
        time.sleep(0.5)
    key = keygen(tmp_path / "k")
    code, _ = kensa("--journal", str(found["journal"]), "evidence", "export", txn, "--audit-log",
                    "--key", key["private_key"], "--out", str(tmp_path))
    assert code == EXIT_OK
    payload = payload_of(tmp_path / f"{txn}.evidence.json")
    assert payload["audit_log_read"] is True
    records = payload["audit_records"]
    assert all(isinstance(r["audit_serial"], int) and r["logged_at"].endswith("Z") for r in records), records
    assert [r["logged_at"] for r in records] == sorted(r["logged_at"] for r in records)
    out = subprocess.run(["ausearch", "-a", str(records[-1]["audit_serial"])], capture_output=True, text=True).stdout
    assert f"seq={records[-1]['seq']} " in out and "phase=committed" in out and txn in out
    assert records[0]["phase"] == "started"


def test_without_audit_log_the_evidence_says_the_log_was_not_read(run: Dict[str, Any]) -> None:
    """By default the log is not read: audit_log_read is false and records carry no logged time."""
    payload = payload_of(run["files"]["ev-ssh-root"])
    assert payload["audit_log_read"] is False
    assert all("logged_at" not in r for r in payload["audit_records"])


def test_an_audit_log_that_does_not_exist_is_bad_input(run: Dict[str, Any], tmp_path: Path) -> None:
    """--log naming a missing file: exit 2, nothing written."""
    code, _ = kensa("--journal", str(run["journal"]), "evidence", "export", run["txns"]["ev-ssh-root"], "--audit-log",
                    "--log", str(tmp_path / "none.log"), "--key", run["key"]["private_key"], "--out", str(tmp_path))
    assert code == EXIT_BAD_INPUT and list(tmp_path.iterdir()) == []


def test_rule_sources_of_pruned_transactions_go_with_them(tmp_path: Path) -> None:
    """history --prune deletes entries and their rule sources; the next run records its own."""
    from kensa.journal.rulesources import read_rule_source

    found = remediation_run(tmp_path)
    old = transaction_ids(found["out"])["ev-ssh-root"]
    assert read_rule_source(found["journal"], old) is not None
    assert kensa("--journal", str(found["journal"]), "history", "--prune", "--keep-last", "0")[0] == EXIT_OK
    assert read_rule_source(found["journal"], old) is None
    code, out = kensa("--journal", str(found["journal"]), "report", str(found["rules"]), "--root", str(found["root"]),
                      "--remediate", "--control", "IA-2")
    new = transaction_ids(out)["ev-ssh-root"]
    assert read_rule_source(found["journal"], new) is not None
