"""The session manager on its own: its event stream, culling and adoption of real
sessions (the web tests drive the rest through the service)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from launchkit import make_repo

from binder_lite.launch.sandbox import Handle
from binder_lite.launch.session import Event, Isolation, Phase, process_alive
from binder_lite.site.model import Runtime, SessionNetwork
from binder_lite.web.manager import Limits, Live, SessionManager
from binder_lite.web.store import Record, Store


def test_events_replay_then_heartbeat_then_end(tmp_path: Path) -> None:
    async def scenario() -> list[object]:
        manager = SessionManager(
            Store(tmp_path / "db.sqlite"), tmp_path, Runtime.LOCAL, Limits(2, 2, 60, 600, 60)
        )
        manager._loop = asyncio.get_running_loop()
        manager.live["abc"] = Live("abc")
        manager._deliver("abc", Event(Phase.FETCHING, "one"))
        received: list[object] = []

        async def later() -> None:
            await asyncio.sleep(0.25)
            manager._deliver("abc", Event(Phase.READY, "notebooks/x.ipynb"))

        asyncio.get_running_loop().create_task(later())
        async for event in manager.events("abc", heartbeat=0.1):
            received.append(event.phase if event else None)
        return received

    received = asyncio.run(scenario())
    assert received[0] is Phase.FETCHING and received[-1] is Phase.READY
    assert None in received  # heartbeats while nothing happened


def manager(tmp_path: Path, idle: float = 3600, max_age: float = 3600) -> SessionManager:
    """A manager over tmp_path's state (a second one over the same state is the service
    after a restart); it culls only when a test says so."""
    return SessionManager(
        Store(tmp_path / "state" / "db.sqlite"),
        tmp_path / "state",
        Runtime.LOCAL,
        Limits(4, 4, idle, max_age, 3600),
        Isolation(network=SessionNetwork.NONE),
    )


async def running(sessions: SessionManager, repo: Path) -> Record:
    session_id = sessions.request("alice", f"file://{repo}", "HEAD", None)
    await asyncio.wait_for(sessions.live[session_id].done.wait(), 180)
    record = sessions.store.get(session_id)
    assert record is not None and record.status == "running", record
    return record


def sandbox_of(record: Record) -> Handle:
    handle = Handle.load(Path(record.session_dir or "/nonexistent") / "sandbox.json")
    assert handle is not None
    return handle


def running_in(handle: Handle) -> set[int]:
    """The sandbox's processes, but zombies (the sandbox's first process may wait a
    moment for init to reap it)."""
    return {pid for pid in handle.members() if process_alive(pid)}


def jupyter_of(handle: Handle) -> int:
    for pid in handle.members():
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if f.read().split(b"\0")[1:3] == [b"-m", b"notebook"]:  # not bwrap's
                return pid
    raise AssertionError("no Jupyter in the session's sandbox")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo")


@pytest.mark.parametrize(
    ("idle", "max_age", "reason"),
    [
        (3, 3600, "its notebook server did not answer for"),
        (3600, 1, "reached the maximum age of 1 s"),
    ],
    ids=["not-answering", "max-age"],
)
def test_a_jupyter_that_does_not_answer_is_culled(
    tmp_path: Path, repo: Path, idle: float, max_age: float, reason: str
) -> None:
    async def scenario() -> None:
        sessions = manager(tmp_path, idle, max_age)
        await sessions.start()
        loop = asyncio.get_running_loop()
        try:
            record = await running(sessions, repo)
            handle = sandbox_of(record)
            os.kill(jupyter_of(handle), signal.SIGSTOP)  # alive, but answers nothing
            assert sessions._jupyter_status(record) is None
            deadline = time.monotonic() + 60
            while (now := sessions.store.get(record.id)) and now.status == "running":
                assert time.monotonic() < deadline, "never culled"
                sessions.touch(record.id)  # its page keeps asking: the session is not idle
                await loop.run_in_executor(None, sessions.cull)
            assert now is not None and reason in now.message, now.message
            assert running_in(handle) == set()  # the stopped Jupyter too
        finally:
            await sessions.shutdown()

    asyncio.run(scenario())


@pytest.fixture
def foreign() -> Iterator[subprocess.Popen[bytes]]:
    """A process of another user (as a PID the service recorded may be after a restart)."""
    proc = subprocess.Popen(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "sleep", "120"],
        start_new_session=True,
    )
    yield proc
    proc.kill()
    proc.wait()


def test_restart_gives_up_what_it_cannot_judge_and_adopts_the_rest(
    tmp_path: Path,
    repo: Path,
    foreign: subprocess.Popen[bytes],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ours = subprocess.Popen(["sleep", "120"], start_new_session=True)
    state = tmp_path / "state"

    def record(session_id: str, pid: int, handle: Handle | None = None) -> Record:
        folder = state / "sessions" / session_id
        folder.mkdir(parents=True)
        if handle is not None:
            handle.save(folder / "sandbox.json")
        return Record(
            id=session_id,
            owner="bob",
            repository="file:///x",
            ref="HEAD",
            open_path=None,
            status="running",
            pid=pid,
            token="t",
            socket=str(folder / "run" / "jupyter.sock"),
            session_dir=str(folder),
            created=1.0,
        )

    # A PID that passes the check but is another user's by the time it is signalled
    # (a race only; the check keeps a non-root service from a real PermissionError).
    real_killpg = os.killpg

    def killpg(pid: int, sig: int) -> None:
        if pid == ours.pid:
            raise PermissionError(1, "Operation not permitted")
        real_killpg(pid, sig)

    async def scenario() -> None:
        before = manager(tmp_path)
        await before.start()
        alive = await running(before, repo)
        handle = sandbox_of(alive)
        before._pool.shutdown(wait=False)  # a crash: the session runs on, unstopped
        assert before._culler is not None
        before._culler.cancel()
        # Records older than the live one: adoption judges them first.
        for bad in (
            record("pid-reused", foreign.pid),
            record("sandbox-pid-reused", foreign.pid, Handle(foreign.pid)),
            record("signal-refused", ours.pid),
        ):
            before.store.add(bad)
        monkeypatch.setattr(os, "killpg", killpg)
        after = manager(tmp_path)
        try:
            with caplog.at_level(logging.WARNING, "binder_lite.web.manager"):
                await after.start()  # does not raise
            assert after.store.get(alive.id) == alive and alive.id in after.running
            for name in ("pid-reused", "sandbox-pid-reused", "signal-refused"):
                gone = after.store.get(name)
                assert gone is not None and gone.status == "stopped", gone
                assert "lost while the service was not running" in gone.message
                assert not (state / "sessions" / name).exists()
            assert "could not be judged after the restart (PermissionError" in caplog.text
            assert foreign.poll() is None  # another user's process is never signalled
        finally:
            await after.shutdown()
            handle.stop()  # whatever the service left (nothing, unless it failed)
        assert running_in(handle) == set()

    try:
        asyncio.run(scenario())
    finally:
        ours.kill()
        ours.wait()
