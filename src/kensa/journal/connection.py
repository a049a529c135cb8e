"""Opening the journal file: a private file, a connection set up for WAL, and the migrations.

Opening fails, with the path and the cause, on a read-only or full
filesystem before any transaction has changed the host: the migrations run
in one SQL transaction that ends in a write probe.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from kensa._version import __version__
from kensa.errors import JournalError
from kensa.journal import schema
from kensa.journal.codec import lenient_text
from kensa.journal.lock import JOURNAL_WHAT_TO_DO

__all__ = ["WAL_CHECKPOINT_PAGES", "connect", "create_private_file", "default_journal_path", "failure", "migrate", "sql_transaction"]

#: WAL pages after which a commit checkpoints the WAL into the database, so that the next writer
#: reuses the WAL from its start. A commit that extends the WAL file fsyncs its new size too
#: (about twice the cost here); SQLite's default of 1000 pages (4 MiB) is more than a run of a
#: hundred rules writes, so with it nearly every commit of a command extended the file (SQLite
#: deletes the WAL when the last connection closes). Checkpointing every 1 MiB costs a database
#: write and fsync now and then, and takes nothing from durability: every commit still fsyncs.
WAL_CHECKPOINT_PAGES = 256


def default_journal_path() -> Path:
    """Return where the journal lives unless told otherwise (see the module docstring)."""
    configured = os.environ.get("KENSA_JOURNAL")
    if configured:
        return Path(configured)
    if os.geteuid() == 0:
        return Path("/var/lib/kensa/journal.db")
    state_home = os.environ.get("XDG_STATE_HOME", "")
    # The XDG spec says relative values are invalid and must be ignored.
    base = Path(state_home) if os.path.isabs(state_home) else Path.home() / ".local" / "state"
    return base / "kensa" / "journal.db"


def create_private_file(path: Path) -> None:
    """Create ``path`` with mode 0600 (and its directory 0700) unless it exists; durable when this returns."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    # The new directory entry must survive a crash as well as the data in it.
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def failure(path: Path, what: str, exc: BaseException) -> JournalError:
    """The JournalError for ``what`` failing on the journal at ``path``: the cause, with SQLite's error name, and what to do."""
    code = getattr(exc, "sqlite_errorname", None)
    cause = f"{exc} ({type(exc).__name__}{', ' + code if code else ''})"
    return JournalError(f"kensa journal {path}: could not {what}: {cause}. {JOURNAL_WHAT_TO_DO}")


def connect(path: Path, resolved: Path, *, create: bool, busy_timeout: float) -> sqlite3.Connection:
    """A connection to the journal file ``resolved`` (``path`` as given, for messages), in WAL mode with ``synchronous=FULL``.

    With ``create`` a missing file is created (mode 0600); without, a missing file is an error.
    """
    try:
        if create:
            create_private_file(resolved)
            target = str(resolved)
        else:
            # mode=rw: a journal deleted since __init__ is an error, not a new empty file.
            target = resolved.as_uri() + "?mode=rw"
        conn = sqlite3.connect(
            target, timeout=busy_timeout, isolation_level=None, check_same_thread=False, uri=not create
        )
    except (OSError, sqlite3.Error) as exc:
        raise failure(path, "open it", exc) from exc
    try:
        conn.row_factory = sqlite3.Row
        # Text that is not UTF-8 can only come from a damaged row; decoded
        # leniently, it fails its digest or decode and is reported as that
        # entry's corruption instead of failing the whole query.
        conn.text_factory = lenient_text
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise JournalError(
                f"kensa journal {path}: SQLite could not switch it to WAL mode (it stays {mode}); "
                "put the journal on a local filesystem that supports shared memory mappings"
            )
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
        conn.execute("PRAGMA foreign_keys=ON")
    except BaseException as exc:
        conn.close()
        if isinstance(exc, sqlite3.Error):
            raise failure(path, "open it", exc) from exc
        raise
    return conn


def migrate(path: Path, conn: sqlite3.Connection) -> None:
    """Apply the migrations ``conn``'s journal lacks and prove it writable, in one SQL transaction."""
    known = len(schema.MIGRATIONS)
    try:
        with sql_transaction(conn, "BEGIN IMMEDIATE"):
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > known:
                raise JournalError(
                    f"kensa journal {path} has schema version {version}, but this kensa "
                    f"({__version__}) knows versions up to {known}: it was written by a newer kensa. "
                    "Upgrade kensa, or set KENSA_JOURNAL to another journal file."
                )
            if version == 0 and conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                raise JournalError(
                    f"kensa journal {path} is an SQLite database with tables but no kensa "
                    "schema version: it is not a kensa journal. Choose another path."
                )
            for number in range(version, known):
                try:
                    schema.MIGRATIONS[number](conn)
                except sqlite3.Error as exc:
                    what = f"migrate the schema from version {number} to {number + 1} (nothing was changed)"
                    raise failure(path, what, exc) from exc
            if version != known:
                conn.execute(f"PRAGMA user_version = {int(known)}")
            # The write probe: opening succeeds only if a commit does.
            conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('last_opened', ?)",
                (f"kensa {__version__}, pid {os.getpid()}, {datetime.now(timezone.utc).isoformat()}",),
            )
    except sqlite3.Error as exc:
        raise failure(path, "open it", exc) from exc


@contextlib.contextmanager
def sql_transaction(conn: sqlite3.Connection, begin: str) -> Iterator[sqlite3.Connection]:
    """``begin`` ... COMMIT on ``conn``; ROLLBACK when anything inside raises, and that error propagates."""
    conn.execute(begin)
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            # The original error says more than a failed ROLLBACK would.
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise
