"""The state database across upgrades: a database written by each earlier release's own
store code (taken from git) is migrated by today's, with its sessions intact; a database
from a newer release is refused; a failed migration changes nothing; two services
opening it at once migrate it once."""

from __future__ import annotations

import json
import logging
import sqlite3
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from binder_lite.errors import (
    CommandError,
    StateError,
    StateMigrationError,
    StateTooNewError,
    ToolNotFoundError,
)
from binder_lite.run import run, spawn
from binder_lite.web import store
from binder_lite.web.store import VERSION, Migration, Record, Store, backup_path

ROOT = Path(__file__).resolve().parents[1]
WAIT = 120.0  # seconds: bounds a hang, measures nothing

# The releases whose store left user_version at 0, with the schema version each wrote.
FIRST, SOCKET = "0999b78", "94d220d"
# A release whose store set user_version (3), before the API's tokens table (4).
VERSIONED = "818d4b3"
# A release with the tokens table (4), before Slurm sessions' job_id and node (5).
TOKENS = "a52d859"

# A session as the first release recorded it: every column it had, set.
ROW: dict[str, Any] = {
    "id": "s-1",
    "owner": "alice",
    "repository": "https://example.org/r.git",
    "ref": "main",
    "open_path": "notebooks/a.ipynb",
    "status": "running",
    "message": "ready",
    "commit_sha": "0" * 40,
    "port": 40123,
    "pid": 4321,
    "token": "t0k3n",
    "view": "lab/tree/notebooks/a.ipynb",
    "work_dir": "/var/lib/binder-lite/sessions/s-1/work",
    "session_dir": "/var/lib/binder-lite/sessions/s-1",
    "provenance": json.dumps({"commit": "0" * 40}),
    "created": 1700000000.5,
    "ready": 1700000010.25,
    "last_activity": 1700000020.0,
    "stopped": None,
}


def release(commit: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """That release's store.py, run as it was shipped."""
    try:
        source = run(["git", "-C", ROOT, "show", f"{commit}:src/binder_lite/web/store.py"])
    except (CommandError, ToolNotFoundError):
        pytest.skip(f"needs the project's git history (commit {commit})")
    module = ModuleType(f"store_{commit}")
    # dataclasses looks its class's module up in sys.modules
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(source, f"{commit}:store.py", "exec"), module.__dict__)
    return module


def written_by(
    commits: tuple[str, ...], path: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, Any]:
    """A database that these releases opened in turn, the first adding a session and
    the last setting what it knew of it (as a launch finishing would); the row written."""
    row = dict(ROW)
    for n, commit in enumerate(commits):
        old = release(commit, monkeypatch)
        db = old.Store(path)
        if n == 0:
            db.add(old.Record(**ROW))
        if "socket" in {f.name for f in old.fields(old.Record)}:
            db.update("s-1", socket="/var/lib/binder-lite/sessions/s-1/jupyter.sock")
            row["socket"] = "/var/lib/binder-lite/sessions/s-1/jupyter.sock"
        db.add_to("launches_ready", 2)
        db.close()
    return row


def user_version(path: Path) -> int:
    with sqlite3.connect(path) as db:
        version: int = db.execute("PRAGMA user_version").fetchone()[0]
    return version


def schema(path: Path) -> dict[str, Any]:
    """Each table's columns (name, type, not null, default, key) and indexes, in no order:
    a migrated database appends the columns a new one has in the middle."""
    with sqlite3.connect(path) as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        indexes = db.execute("SELECT name, tbl_name FROM sqlite_master WHERE type='index'")
        return {
            "tables": {
                t: sorted(r[1:] for r in db.execute(f"PRAGMA table_info({t})")) for t in tables
            },
            "indexes": sorted(indexes.fetchall()),
        }


def dump(path: Path) -> list[str]:
    with sqlite3.connect(path) as db:
        return [*db.iterdump(), f"user_version {db.execute('PRAGMA user_version').fetchone()[0]}"]


def fresh_schema(tmp_path: Path) -> dict[str, Any]:
    Store(tmp_path / "fresh" / "db.sqlite").close()
    return schema(tmp_path / "fresh" / "db.sqlite")


@pytest.mark.parametrize(
    ("commits", "version"),
    [((FIRST,), 1), ((SOCKET,), 2), ((FIRST, SOCKET), 2)],
    ids=["first-release", "with-socket", "first-then-socket"],
)
def test_an_earlier_releases_database_is_migrated_with_its_sessions(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    commits: tuple[str, ...],
    version: int,
) -> None:
    path = tmp_path / "state" / "sessions.sqlite"
    row = written_by(commits, path, monkeypatch)
    assert user_version(path) == 0  # those releases never set it
    with caplog.at_level(logging.INFO, logger=store.__name__):
        db = Store(path)
    record = db.get("s-1")
    assert record is not None
    assert {k: getattr(record, k) for k in row} == row
    assert record.process is None and record.process_id() is None
    assert record.socket == row.get("socket")
    assert db.counters() == {"launches_ready": 2.0 * len(commits)}
    db.close()
    assert user_version(path) == VERSION
    assert schema(path) == fresh_schema(tmp_path)
    assert f"migrated from schema version {version} to {VERSION}" in caplog.text
    # The copy for a roll-back: the database as that release left it, the service's alone.
    backup = backup_path(path, VERSION)
    assert user_version(backup) == 0 and backup.stat().st_mode & 0o777 == 0o600
    with sqlite3.connect(backup) as old:
        assert old.execute("SELECT owner, token FROM sessions").fetchall() == [("alice", "t0k3n")]

    backup.unlink()
    before = dump(path)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=store.__name__):
        Store(path).close()
    assert dump(path) == before and not backup.exists() and "migrated" not in caplog.text


def test_a_versioned_database_gets_the_tokens_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "sessions.sqlite"
    old = release(VERSIONED, monkeypatch)
    db = old.Store(path)
    db.add(old.Record(**ROW))
    db.close()
    assert user_version(path) == 3 and "tokens" not in schema(path)["tables"]
    with caplog.at_level(logging.INFO, logger=store.__name__):
        db = Store(path)
    record = db.get("s-1")
    assert record is not None and record.owner == "alice" and db.tokens_of("alice") == []
    db.close()
    assert user_version(path) == VERSION
    assert schema(path) == fresh_schema(tmp_path)
    assert f"migrated from schema version 3 to {VERSION}" in caplog.text
    assert user_version(backup_path(path, VERSION)) == 3


def test_a_database_with_tokens_gets_slurm_columns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "sessions.sqlite"
    old = release(TOKENS, monkeypatch)
    db = old.Store(path)
    db.add(old.Record(**ROW))
    db.close()
    assert user_version(path) == 4
    db = Store(path)
    db.update("s-1", job_id="17", node="10.0.0.11:40000")
    record = db.get("s-1")
    db.close()
    assert record is not None and record.owner == "alice" and record.token == "t0k3n"
    assert record.node_address() == ("10.0.0.11", 40000) and record.job_id == "17"
    assert user_version(path) == VERSION == 5
    assert schema(path) == fresh_schema(tmp_path)
    assert user_version(backup_path(path, VERSION)) == 4


def test_todays_unversioned_database_is_recognised_by_its_columns(tmp_path: Path) -> None:
    """The store before migrations (with `process`) wrote today's schema, version 0."""
    path = tmp_path / "sessions.sqlite"
    db = Store(path)
    process = json.dumps({"pid": 4321, "started": 99, "boot": "b"})
    db.add(Record(**ROW, process=process))
    db.close()
    with sqlite3.connect(path) as raw:
        raw.execute("PRAGMA user_version = 0")
    db = Store(path)
    record = db.get("s-1")
    db.close()
    assert record is not None and record.process == json.dumps(
        {"pid": 4321, "started": 99, "boot": "b"}
    )
    assert user_version(path) == VERSION and not backup_path(path, VERSION).exists()


def test_an_empty_file_gets_the_newest_schema_directly(tmp_path: Path) -> None:
    path = tmp_path / "sessions.sqlite"
    path.touch()
    Store(path).close()
    assert user_version(path) == VERSION and not backup_path(path, VERSION).exists()
    assert "process" in {name for name, *_ in schema(path)["tables"]["sessions"]}


def test_a_newer_releases_database_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "sessions.sqlite"
    db = Store(path)
    db.add(Record(**ROW))
    db.close()
    with sqlite3.connect(path) as raw:
        raw.execute(f"PRAGMA user_version = {VERSION + 1}")
    backup = backup_path(path, VERSION + 1)  # what that newer release left for a roll-back
    backup.touch()
    before = dump(path)
    with pytest.raises(StateTooNewError) as refused:
        Store(path)
    assert (refused.value.found, refused.value.known) == (VERSION + 1, VERSION)
    message = str(refused.value)
    assert f"version {VERSION + 1}, newer than the {VERSION}" in message and str(backup) in message
    assert dump(path) == before


def test_a_failed_migration_leaves_the_database_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "sessions.sqlite"
    written_by((FIRST,), path, monkeypatch)
    content, before = path.read_bytes(), dump(path)

    def half_then_fail(db: sqlite3.Connection) -> None:
        db.execute("ALTER TABLE sessions ADD COLUMN process TEXT")
        db.execute("UPDATE sessions SET owner = 'mallory'")
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(
        store, "MIGRATIONS", (store.MIGRATIONS[0], Migration(3, "broken", half_then_fail))
    )
    with pytest.raises(StateMigrationError) as failed:
        Store(path)
    assert (failed.value.found, failed.value.target) == (1, VERSION)
    assert "disk on fire" in str(failed.value) and str(backup_path(path, VERSION)) in str(
        failed.value
    )
    assert path.read_bytes() == content and dump(path) == before

    monkeypatch.undo()  # the real migrations then succeed on the same file
    db = Store(path)
    record = db.get("s-1")
    db.close()
    assert record is not None and record.owner == "alice"


def test_what_is_not_a_state_database_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE notes (text TEXT)")
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_text("not a database, just text that is long enough to have a header")
    for path in (other, garbage):
        with pytest.raises(StateError, match=str(path)):
            Store(path)


OPEN = """
import logging, sys
from pathlib import Path
from binder_lite.web.store import Store
logging.basicConfig(level=logging.INFO, format="%(message)s")
print("opening", flush=True)
Store(Path(sys.argv[1])).close()
"""


def test_two_services_opening_at_once_migrate_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "sessions.sqlite"
    row = written_by((FIRST,), path, monkeypatch)
    # Hold the write lock until both have started opening, so that they race for it.
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    argv: list[str | Path] = [sys.executable, "-c", OPEN, path]
    pipe = subprocess.PIPE
    procs = [spawn(argv, stdout=pipe, stderr=pipe) for _ in range(2)]
    try:
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline() == b"opening\n"
        holder.execute("ROLLBACK")
        outputs = [proc.communicate(timeout=WAIT) for proc in procs]
    finally:
        holder.close()
        for proc in procs:
            proc.kill()
            proc.wait(WAIT)
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    logs = b"".join(err for _, err in outputs).decode()
    assert logs.count(f"migrated from schema version 1 to {VERSION}") == 1, logs
    assert user_version(path) == VERSION
    db = Store(path)
    record = db.get("s-1")
    db.close()
    assert record is not None and record.token == row["token"]
