"""The durable record of every transaction: intent and exact pre-states before the
first change, the outcome after, so an interrupted run can be reversed by a later
process. One SQLite file, locked per writer.

:mod:`kensa.journal.store` is the journal itself (:class:`SqliteJournal`); the
other modules are its parts (see there). The entries it gives back are
:mod:`kensa.model` data, re-exported here."""

from kensa.errors import (
    InvalidJournalQuery,
    JournalCorruptError,
    JournalEntryNotFound,
    JournalError,
    JournalLockTimeout,
    JournalNotFound,
)
from kensa.journal.lock import JournalLock
from kensa.journal.schema import SCHEMA_VERSION
from kensa.journal.store import SqliteJournal, default_journal_path
from kensa.model import AuditSequence, JournalEntry, PruneResult

__all__ = [
    "SCHEMA_VERSION",
    "AuditSequence",
    "InvalidJournalQuery",
    "JournalCorruptError",
    "JournalEntry",
    "JournalEntryNotFound",
    "JournalError",
    "JournalLock",
    "JournalLockTimeout",
    "JournalNotFound",
    "PruneResult",
    "SqliteJournal",
    "default_journal_path",
]
