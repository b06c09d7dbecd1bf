"""Session records in SQLite, so a restarted service finds the sessions it started."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
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
    pid INTEGER,
    token TEXT,
    view TEXT,                     -- URL path of the page to show, under the session
    work_dir TEXT,
    session_dir TEXT,
    provenance TEXT,               -- JSON
    created REAL NOT NULL,
    ready REAL,
    last_activity REAL,
    stopped REAL
);
CREATE INDEX IF NOT EXISTS sessions_status ON sessions (status);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value REAL NOT NULL);
"""


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
    pid: int | None = None
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


_COLUMNS = [f.name for f in fields(Record)]


class Store:
    """A small, thread-safe wrapper: launches finish in worker threads."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Every session's token is in here: the service's user only, the WAL files too.
        for name in (path.name, path.name + "-wal", path.name + "-shm"):
            fd = os.open(path.with_name(name), os.O_RDWR | os.O_CREAT, 0o600)
            os.fchmod(fd, 0o600)
            os.close(fd)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)
        # A database made before a column existed gets it (no migrations framework yet).
        have = {row[1] for row in self._db.execute("PRAGMA table_info(sessions)")}
        for column, kind in (("socket", "TEXT"),):
            if column not in have:
                self._db.execute(f"ALTER TABLE sessions ADD COLUMN {column} {kind}")
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
