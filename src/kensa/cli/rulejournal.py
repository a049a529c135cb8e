"""After a remediation: the journal keeps the rule each transaction ran, for its evidence.

The commands that remediate import this module when they start, and it imports
everything it needs at once: a kensa installed without one of those modules
fails the command before any host is changed, never after its transactions ran.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Optional, Sequence

from kensa.cli.render import printable
from kensa.errors import KensaError
from kensa.evidence.record import rule_source
from kensa.journal.connection import default_journal_path
from kensa.journal.rulesources import record_rule_sources
from kensa.model import Transaction

__all__ = ["journal_rules"]


def journal_rules(journal: Optional[str], txns: Sequence[Transaction], rules: Sequence[Any]) -> None:
    """Keep in the journal (``--journal``, None: the default) the rule each transaction ran, for its evidence.

    Never changes the run's outcome: a journal that refuses is a warning, and
    ``kensa evidence export`` then reads those rules from ``--rules``.
    """
    by_id = {rule.id: rule for rule in rules}
    try:
        record_rule_sources(journal or os.fspath(default_journal_path()),
                            [rule_source(t.id, by_id[t.rule]) for t in txns if t.rule in by_id])
    except KensaError as exc:
        sys.stderr.write(f"kensa: warning: the journal did not keep the rules of this run ({printable(exc)}); "
                         "kensa evidence export will need them with --rules\n")
