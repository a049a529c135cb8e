"""Signed evidence of transactions and assessment reports (OSCAL, JSON, JSON Lines, CSV).

:mod:`~kensa.evidence.canonical` (the canonical JSON that is signed),
:mod:`~kensa.evidence.keys` (Ed25519 key pairs and their files),
:mod:`~kensa.evidence.record` (a transaction's evidence payload),
:mod:`~kensa.evidence.sign` (the signed file and its verification),
:mod:`~kensa.evidence.export` (journal -> evidence files),
:mod:`~kensa.evidence.select` (rules chosen by framework and control),
:mod:`~kensa.evidence.oscal` and :mod:`~kensa.evidence.tabular` (reports of a run).

It sits above the journal and the rules, which it reads, and below the CLI;
signing and verifying need the ``cryptography`` package (``kensa[evidence]``),
imported only when used.
"""
