"""``kensa keygen``, ``kensa verify`` and ``kensa evidence export``: signed evidence of transactions.

Exit codes of ``verify``: 0 when every file is untouched and signed by a
trusted key (``--key``); 1 when any is altered, badly signed, signed by a key
that is not trusted, or checked without any trusted key (then it can be
*valid*, never *trusted*); 2 for bad input (a missing file, an unreadable key).
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any, TextIO

from kensa.cli.render import printable
from kensa.errors import UsageError

__all__ = ["cmd_evidence_export", "cmd_keygen", "cmd_verify", "register"]

EXIT_OK = 0
EXIT_NOT_VERIFIED = 1


def cmd_keygen(args: argparse.Namespace, out: TextIO) -> int:
    """Write a new key pair and say its id; the private key is never printed."""
    from kensa.evidence.keys import generate_key_pair

    pair = generate_key_pair(args.dir)
    if args.json:
        json.dump({"key_id": pair.key_id, "private_key": pair.private_path, "public_key": pair.public_path}, out, indent=2)
        out.write("\n")
        return EXIT_OK
    out.write(
        f"key id:      {pair.key_id}\n"
        f"signing key: {printable(pair.private_path)} (mode 0600: keep it private, never in the journal)\n"
        f"public key:  {printable(pair.public_path)} (give it to assessors: kensa verify --key {printable(pair.public_path)} ...)\n"
    )
    return EXIT_OK


def cmd_verify(args: argparse.Namespace, out: TextIO) -> int:
    """Verify each evidence file against the trusted keys; see the module docstring for the exit code."""
    from kensa.evidence.keys import load_trusted_keys
    from kensa.evidence.sign import MAX_EVIDENCE_BYTES, verify_bytes

    trusted = load_trusted_keys(args.key or [])
    results = []
    for path in args.evidence:
        try:
            with open(path, "rb") as handle:
                data = handle.read(MAX_EVIDENCE_BYTES + 1)
        except OSError as exc:
            raise UsageError(f"verify {path}: cannot read it: {exc.strerror or exc}") from None
        results.append(verify_bytes(data, path, trusted))
    if args.json:
        json.dump(
            [{"file": r.path, "valid": r.valid, "trusted": r.trusted, "key_id": r.key_id, "txn": r.txn_id,
              "problems": list(r.problems)} for r in results],
            out,
            indent=2,
        )
        out.write("\n")
    for r in results if not args.json else []:
        where = printable(r.path)
        if r.trusted:
            out.write(f"OK         {where}: transaction {printable(r.txn_id)}, untouched, signed by trusted key {r.key_id}\n")
        elif r.valid and not trusted:
            out.write(
                f"NOT TRUSTED {where}: the signature verifies only with the public key the file itself carries "
                f"({r.key_id}); whoever altered the file could have re-signed it, so this proves nothing. "
                "Verify against the signer's public key: kensa verify --key KEY.pub\n"
            )
        else:
            label = "NOT TRUSTED" if r.valid else "ALTERED   "
            out.write(f"{label} {where}: " + "; ".join(printable(p) for p in r.problems) + "\n")
    return EXIT_OK if results and all(r.trusted for r in results) else EXIT_NOT_VERIFIED


def cmd_evidence_export(args: argparse.Namespace, out: TextIO) -> int:
    """Sign and write the evidence of the named (or recent) transactions."""
    from kensa.audit.reconcile import parse_since
    from kensa.cli.plan import load
    from kensa.evidence.export import export_evidence, logged_records, rules_by_id, select_entries
    from kensa.evidence.keys import load_signing_key
    from kensa.journal.store import SqliteJournal, default_journal_path

    since = parse_since(args.since) if args.since is not None else None
    key = load_signing_key(args.key)
    rules = rules_by_id(load(args.rules)) if args.rules else {}
    path = args.journal or os.fspath(default_journal_path())
    with SqliteJournal(path, create=False) as journal:
        entries, left_out = select_entries(journal, args.txn, since)
        logged = logged_records([e.txn.id for e in entries], args.log) if args.audit_log or args.log else None
        written = export_evidence(journal, entries, rules, key, args.out, logged=logged)
    if args.json:
        json.dump(
            {"key_id": key.key_id, "written": [{"txn": t, "file": f} for t, f in written],
             "left_out": [{"txn": t, "why": why} for t, why in left_out]},
            out,
            indent=2,
        )
        out.write("\n")
        return EXIT_OK
    for txn_id, file in written:
        out.write(f"{printable(txn_id)}: {printable(file)}\n")
    for txn_id, why in left_out:
        out.write(f"{printable(txn_id)}: left out, {why}\n")
    out.write(f"{len(written)} evidence file(s) signed by key {key.key_id}\n")
    return EXIT_OK


def register(sub: Any) -> None:
    """Add ``keygen``, ``verify`` and ``evidence`` to the command's subparsers."""
    p = sub.add_parser("keygen", help="make a new Ed25519 key pair for signing evidence")
    p.add_argument("--dir", default=".", metavar="DIR", help="where to write the pair (default: the current directory)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_keygen)

    p = sub.add_parser("verify", help="check evidence files: untouched and signed by a trusted key")
    p.add_argument("evidence", nargs="+", metavar="EVIDENCE", help="evidence files")
    p.add_argument("--key", action="append", metavar="PUB",
                   help="trusted public key file, or a directory of *.pub (repeatable: every key in rotation)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("evidence", help="signed evidence of journaled transactions")
    evidence_sub = p.add_subparsers(dest="evidence_command", metavar="SUBCOMMAND", required=True)
    q = evidence_sub.add_parser("export", help="sign and write one evidence file per transaction")
    q.add_argument("txn", nargs="*", metavar="TXN", help="transaction ids (or --since)")
    q.add_argument("--since", metavar="TIME", help="every transaction journaled since TIME (ISO 8601, or an age: 30m, 2h, 1d)")
    q.add_argument("--rules", action="append", metavar="DIR",
                   help="rule files or directories the transactions ran, for those whose rule the journal did not keep")
    q.add_argument("--key", required=True, metavar="KEY", help="signing key file (from kensa keygen; mode 0600)")
    q.add_argument("--audit-log", action="store_true",
                   help="add each audit record's kernel time and serial from auditd's log (auditd.conf's log_file and rotations)")
    q.add_argument("--log", action="append", metavar="PATH", help="with --audit-log: auditd log file to read instead (repeatable)")
    q.add_argument("--out", default=".", metavar="DIR", help="where to write the files (default: the current directory)")
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.set_defaults(func=cmd_evidence_export)
