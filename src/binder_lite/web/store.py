"""Session records in SQLite, so a restarted service finds the sessions it started.

The schema has a version, `PRAGMA user_version`, and an ordered list of migrations
that bring an older database up to it when the service opens it (an upgrade)."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from binder_lite.errors import StateError, StateMigrationError, StateTooNewError
from binder_lite.procs import ProcessId

log = logging.getLogger(__name__)

# API tokens (tokens.py), since version 4.
TOKENS = (
    """CREATE TABLE tokens (
    id TEXT PRIMARY KEY,           -- shown on the tokens page, to revoke it by
    owner TEXT NOT NULL,           -- the identity that made it; its sessions are theirs
    name TEXT NOT NULL,
    digest TEXT NOT NULL UNIQUE,   -- SHA-256 of the secret: the secret is never stored
    created REAL NOT NULL,
    expires REAL NOT NULL,
    last_used REAL,
    revoked REAL
)""",
    "CREATE INDEX tokens_owner ON tokens (owner)",
)

# The newest schema, as a new database gets it.  A change here needs a migration below
# (tests/test_store_migrations.py checks that migrating gives this same schema).
SCHEMA = (
    """CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    repository TEXT NOT NULL,
    ref TEXT NOT NULL,
    open_path TEXT,
    status TEXT NOT NULL,          -- pending | running | stopped | failed
    message TEXT NOT NULL DEFAULT '',
    commit_sha TEXT,
    port INTEGER,
    socket TEXT,                   -- the Unix socket Jupyter listens on, when sandboxed
    job_id TEXT,                   -- the Slurm job running it (binder.runtime: slurm)
    node TEXT,                     -- HOST:PORT of its node's relay (launch/node.py)
    pid INTEGER,                   -- shown only: `process` names the process
    process TEXT,                  -- JSON: its ProcessId (pid, start time, boot)
    token TEXT,
    view TEXT,                     -- URL path of the page to show, under the session
    work_dir TEXT,
    session_dir TEXT,
    provenance TEXT,               -- JSON
    created REAL NOT NULL,
    ready REAL,
    last_activity REAL,
    stopped REAL
)""",
    "CREATE INDEX sessions_status ON sessions (status)",
    "CREATE TABLE counters (name TEXT PRIMARY KEY, value REAL NOT NULL)",
    *TOKENS,
)


@dataclass(frozen=True)
class Migration:
    """What takes a database from `version - 1` to `version`."""

    version: int
    summary: str
    apply: Callable[[sqlite3.Connection], None]


def _sql(*statements: str) -> Callable[[sqlite3.Connection], None]:
    def apply(db: sqlite3.Connection) -> None:
        for statement in statements:
            db.execute(statement)

    return apply


# Version 1 is the first release's schema (sessions and counters, commit 0999b78).
MIGRATIONS = (
    Migration(2, "sessions.socket", _sql("ALTER TABLE sessions ADD COLUMN socket TEXT")),
    Migration(3, "sessions.process", _sql("ALTER TABLE sessions ADD COLUMN process TEXT")),
    Migration(4, "tokens", _sql(*TOKENS)),
    Migration(
        5,
        "sessions.job_id and sessions.node",
        _sql(
            "ALTER TABLE sessions ADD COLUMN job_id TEXT",
            "ALTER TABLE sessions ADD COLUMN node TEXT",
        ),
    ),
)
VERSION = MIGRATIONS[-1].version

# The releases before user_version was set left it at 0: their version is told by the
# columns each added.  Databases from later releases carry their version.
_UNVERSIONED = ((3, "process"), (2, "socket"), (1, "created"))

# How long an open waits for another process's migration (or write) to finish.
_LOCK_WAIT = 30.0


def backup_path(path: Path, version: int) -> Path:
    """Where the database is copied before it is migrated to `version`: a roll-back to
    the release before restores it from there."""
    return path.with_name(f"{path.name}.before-v{version}")


def migrate(db: sqlite3.Connection, path: Path) -> int | None:
    """Bring the database at `path` (open as `db`, in autocommit mode) to `VERSION`, all
    or nothing; the version it was at when a migration ran, else None.  The write lock is
    taken before the version is read, so of two processes opening it at once one migrates
    and the other then finds it done."""
    if _stored_version(db) == VERSION:
        return None
    db.execute("BEGIN IMMEDIATE")
    try:
        found = _version(db, path)
        if found > VERSION:
            raise StateTooNewError(path, found, VERSION, _existing(backup_path(path, found)))
        if found == 0:
            _sql(*SCHEMA)(db)
        elif found < VERSION:
            _apply(db, path, found)
        db.execute(f"PRAGMA user_version = {VERSION}")
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:  # SQLite may have rolled back already (a full disk, ...)
            db.execute("ROLLBACK")
        raise
    return found if 0 < found < VERSION else None


def _apply(db: sqlite3.Connection, path: Path, found: int) -> None:
    backup = backup_path(path, VERSION)
    try:
        _copy(path, backup)
    except (OSError, sqlite3.Error) as e:
        raise StateMigrationError(path, found, VERSION, None, f"copying it to {backup}: {e}") from e
    for migration in MIGRATIONS:
        if migration.version > found:
            try:
                migration.apply(db)
            except Exception as e:
                why = f"version {migration.version}, {migration.summary}: {e}"
                raise StateMigrationError(path, found, VERSION, backup, why) from e


def _stored_version(db: sqlite3.Connection) -> int:
    version: int = db.execute("PRAGMA user_version").fetchone()[0]
    return version


def _version(db: sqlite3.Connection, path: Path) -> int:
    stored = _stored_version(db)
    if stored:
        return stored
    columns = {row[1] for row in db.execute("PRAGMA table_info(sessions)")}
    if "job_id" in columns:
        return 5  # today's schema with its version lost: nothing to add
    if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'tokens'").fetchone():
        return 4
    if not columns:
        if db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
            raise StateError(f"{path}: not a binder-lite state database (no sessions table)")
        return 0
    for version, column in _UNVERSIONED:
        if column in columns:
            return version
    raise StateError(f"{path}: not a binder-lite state database (sessions has no `created`)")


def _copy(path: Path, backup: Path) -> None:
    """A consistent copy of the database (with what is still in its WAL), made from a
    second connection: the migrating one holds the write lock, and WAL lets others read."""
    partial = backup.with_name(backup.name + ".partial")
    fd = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)  # tokens: 0600
    os.fchmod(fd, 0o600)
    os.close(fd)
    source = sqlite3.connect(path)
    target = sqlite3.connect(partial)
    try:
        source.backup(target)
    finally:
        target.close()
        source.close()
    os.replace(partial, backup)


def _existing(path: Path) -> Path | None:
    return path if path.exists() else None


@dataclass
class Record:
    id: str
    owner: str
    repository: str
    ref: str
    open_path: str | None
    status: str
    message: str = ""
    commit_sha: str | None = None
    port: int | None = None
    socket: str | None = None
    job_id: str | None = None  # the Slurm job (binder.runtime: slurm)
    node: str | None = None  # HOST:PORT where the job's node relays to Jupyter
    pid: int | None = None
    process: str | None = None  # ProcessId.to_json() of the session's first process
    token: str | None = None
    view: str | None = None
    work_dir: str | None = None
    session_dir: str | None = None
    provenance: str | None = None
    created: float = 0.0
    ready: float | None = None
    last_activity: float | None = None
    stopped: float | None = None

    def provenance_dict(self) -> dict[str, Any]:
        return json.loads(self.provenance) if self.provenance else {}

    def node_address(self) -> tuple[str, int] | None:
        """Where a Slurm session's node relays to its Jupyter (launch/node.py)."""
        host, _, port = (self.node or "").rpartition(":")
        return (host, int(port)) if host and port.isdigit() else None

    def process_id(self) -> ProcessId | None:
        """The session's first process as recorded; None for a record made before
        processes were named by more than their PID (or an unreadable one)."""
        try:
            return ProcessId.from_json(json.loads(self.process or "null"))
        except ValueError:
            return None


_COLUMNS = [f.name for f in fields(Record)]


@dataclass(frozen=True)
class TokenRecord:
    """An API token as stored: its secret's digest, never the secret."""

    id: str
    owner: str
    name: str
    digest: str
    created: float
    expires: float
    last_used: float | None = None
    revoked: float | None = None


_TOKEN_COLUMNS = [f.name for f in fields(TokenRecord)]


class Store:
    """A small, thread-safe wrapper: launches finish in worker threads."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Every session's token is in here: the service's user only, the WAL files too.
        for name in (path.name, path.name + "-wal", path.name + "-shm"):
            fd = os.open(path.with_name(name), os.O_RDWR | os.O_CREAT, 0o600)
            os.fchmod(fd, 0o600)
            os.close(fd)
        self._db = sqlite3.connect(
            path, check_same_thread=False, isolation_level=None, timeout=_LOCK_WAIT
        )
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            was = migrate(self._db, path)
        except sqlite3.DatabaseError as e:
            self._db.close()
            raise StateError(f"{path}: cannot open the state database: {e}") from e
        except BaseException:
            self._db.close()
            raise
        if was is not None:
            log.info("%s: migrated from schema version %d to %d", path, was, VERSION)
        self._lock = threading.Lock()

    def add(self, record: Record) -> None:
        record.created = record.created or time.time()
        values = asdict(record)
        marks = ", ".join("?" for _ in _COLUMNS)
        with self._lock:
            self._db.execute(
                f"INSERT INTO sessions ({', '.join(_COLUMNS)}) VALUES ({marks})",
                [values[c] for c in _COLUMNS],
            )

    def update(self, session_id: str, **changes: Any) -> None:
        unknown = set(changes) - set(_COLUMNS)
        if unknown:
            raise KeyError(f"no such columns: {unknown}")
        assignments = ", ".join(f"{k} = ?" for k in changes)
        with self._lock:
            self._db.execute(
                f"UPDATE sessions SET {assignments} WHERE id = ?", [*changes.values(), session_id]
            )

    def get(self, session_id: str) -> Record | None:
        rows = self._select("WHERE id = ?", session_id)
        return rows[0] if rows else None

    def with_status(self, *statuses: str) -> list[Record]:
        marks = ", ".join("?" for _ in statuses)
        return self._select(f"WHERE status IN ({marks}) ORDER BY created", *statuses)

    def owned_by(self, owner: str) -> list[Record]:
        return self._select("WHERE owner = ? ORDER BY created DESC LIMIT 100", owner)

    def _select(self, where: str, *args: Any) -> list[Record]:
        with self._lock:
            cursor = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM sessions {where}", args)
            return [Record(**dict(zip(_COLUMNS, row, strict=True))) for row in cursor]

    def add_token(self, token: TokenRecord) -> None:
        marks = ", ".join("?" for _ in _TOKEN_COLUMNS)
        values = asdict(token)
        with self._lock:
            self._db.execute(
                f"INSERT INTO tokens ({', '.join(_TOKEN_COLUMNS)}) VALUES ({marks})",
                [values[c] for c in _TOKEN_COLUMNS],
            )

    def token_with_digest(self, digest: str) -> TokenRecord | None:
        found = self._tokens("WHERE digest = ?", digest)
        return found[0] if found else None

    def tokens_of(self, owner: str) -> list[TokenRecord]:
        return self._tokens("WHERE owner = ? ORDER BY created DESC", owner)

    def revoke_token(self, owner: str, token_id: str) -> bool:
        """Revoke `owner`'s token `token_id`; whether there was one to revoke."""
        with self._lock:
            cursor = self._db.execute(
                "UPDATE tokens SET revoked = ? WHERE id = ? AND owner = ? AND revoked IS NULL",
                (time.time(), token_id, owner),
            )
            return cursor.rowcount == 1

    def token_used(self, token_id: str) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE tokens SET last_used = ? WHERE id = ?", (time.time(), token_id)
            )

    def _tokens(self, where: str, *args: Any) -> list[TokenRecord]:
        with self._lock:
            cursor = self._db.execute(
                f"SELECT {', '.join(_TOKEN_COLUMNS)} FROM tokens {where}", args
            )
            return [TokenRecord(*row) for row in cursor]

    def add_to(self, counter: str, amount: float = 1.0) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO counters (name, value) VALUES (?, ?) "
                "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                (counter, amount),
            )

    def counters(self) -> dict[str, float]:
        with self._lock:
            return dict(self._db.execute("SELECT name, value FROM counters").fetchall())

    def close(self) -> None:
        with self._lock:
            self._db.close()
