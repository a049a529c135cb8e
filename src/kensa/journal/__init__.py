"""The durable record of every transaction: intent and exact pre-states before the
first change, the outcome after, so an interrupted run can be reversed by a later
process. One SQLite file, locked per writer."""

from kensa.errors import (
    InvalidJournalQuery,
    JournalCorruptError,
    JournalEntryNotFound,
    JournalError,
    JournalLockTimeout,
    JournalNotFound,
)
from kensa.journal.store import SCHEMA_VERSION, JournalEntry, JournalLock, PruneResult, SqliteJournal, default_journal_path

__all__ = [
    "SCHEMA_VERSION",
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
