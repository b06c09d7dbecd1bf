"""The session manager on its own: its event stream, culling and adoption of real
sessions (the web tests drive the rest through the service)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from launchkit import make_repo

from binder_lite.launch import lifetime
from binder_lite.launch.sandbox import Handle
from binder_lite.launch.session import Event, Isolation, Phase
from binder_lite.procs import ProcessId
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
    handle = lifetime.load(Path(record.session_dir or "/nonexistent"))
    assert handle is not None
    return handle


def running_in(handle: Handle) -> set[int]:
    """The sandbox's processes, but zombies (the sandbox's first process may wait a
    moment for init to reap it)."""
    return handle.members()


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


@pytest.fixture
def unrelated() -> Iterator[subprocess.Popen[bytes]]:
    """A process that is no session's, whose PID a record may name after a reuse."""
    proc = subprocess.Popen(["sleep", "120"], start_new_session=True)
    yield proc
    proc.kill()
    proc.wait()


def identity(proc: subprocess.Popen[bytes]) -> ProcessId:
    named = ProcessId.of(proc.pid)
    assert named is not None
    return named


def recorded(
    state: Path, session_id: str, pid: int, named: ProcessId | None, *, status: str = "running"
) -> Record:
    """A record as the service writes it for a session whose first process is `named`
    (None: a record and handle of the older format, which held a bare PID)."""
    folder = state / "sessions" / session_id
    folder.mkdir(parents=True)
    if named is not None:
        Handle(named).save(folder / "sandbox.json")
    else:
        old = {"pid": pid, "cgroups": [], "pid_namespaces": [], "helpers": []}
        (folder / "sandbox.json").write_text(json.dumps(old))
    return Record(
        id=session_id,
        owner="bob",
        repository="file:///x",
        ref="HEAD",
        open_path=None,
        status=status,
        pid=pid,
        process=json.dumps(named.to_json()) if named is not None else None,
        token="t",
        socket=str(folder / "run" / "jupyter.sock"),
        session_dir=str(folder),
        created=time.time(),
    )


@pytest.mark.parametrize("reuse", ["start-time", "boot", "older-format"])
def test_a_reused_pid_is_never_signalled_by_stop_cull_or_adopt(
    tmp_path: Path, unrelated: subprocess.Popen[bytes], reuse: str
) -> None:
    """A record naming a PID that is now an unrelated process's (it started later, or
    in another boot, or the record does not say when it started): every way a session
    ends marks it ended, and the process runs on."""
    now = identity(unrelated)
    named = {
        "start-time": dataclasses.replace(now, started=now.started - 1),
        "boot": dataclasses.replace(now, boot="another boot"),
        "older-format": None,
    }[reuse]
    state = tmp_path / "state"
    sessions = manager(tmp_path)
    try:
        sessions.store.add(recorded(state, "stopped", unrelated.pid, named))
        assert sessions.stop("stopped")
        sessions.store.add(recorded(state, "culled", unrelated.pid, named))
        sessions.cull()
        for status in ("running", "pending"):
            sessions.store.add(recorded(state, status, unrelated.pid, named, status=status))
        sessions.adopt()
        for session_id, reason in (
            ("stopped", "stopped by its owner"),
            ("culled", "the notebook server exited"),
            ("running", "lost while the service was not running"),
            ("pending", "lost while the service was not running"),
        ):
            record = sessions.store.get(session_id)
            assert record is not None and record.status == "stopped", record
            assert reason in record.message, record.message
        assert unrelated.poll() is None, "an unrelated process was signalled"
        assert identity(unrelated) == now
    finally:
        sessions._pool.shutdown()


def test_restart_gives_up_what_it_cannot_judge_and_adopts_the_rest(
    tmp_path: Path,
    repo: Path,
    foreign: subprocess.Popen[bytes],
    unrelated: subprocess.Popen[bytes],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ours = subprocess.Popen(["sleep", "120"], start_new_session=True)
    state = tmp_path / "state"
    reused = dataclasses.replace(identity(foreign), started=identity(foreign).started - 1)

    # A process that is still the one recorded but refuses the signal (it changed its
    # user): what a non-root service meets; it must not stop the start.
    real_send = signal.pidfd_send_signal

    def send(fd: int, sig: int, *args: object) -> None:
        if f"Pid:\t{ours.pid}\n" in Path(f"/proc/self/fdinfo/{fd}").read_text():
            raise PermissionError(1, "Operation not permitted")
        real_send(fd, sig, *args)  # type: ignore[arg-type]

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
            recorded(state, "pid-reused", foreign.pid, reused),
            recorded(state, "older-format", unrelated.pid, None),
            recorded(state, "signal-refused", ours.pid, identity(ours)),
        ):
            bad.created = 1.0
            before.store.add(bad)
        monkeypatch.setattr(signal, "pidfd_send_signal", send)
        after = manager(tmp_path)
        try:
            with caplog.at_level(logging.WARNING):
                await after.start()  # does not raise
            assert after.store.get(alive.id) == alive and alive.id in after.running
            for name in ("pid-reused", "older-format", "signal-refused"):
                gone = after.store.get(name)
                assert gone is not None and gone.status == "stopped", gone
                assert "lost while the service was not running" in gone.message
                assert not (state / "sessions" / name).exists()
            assert f"process {ours.pid} refused SIGTERM" in caplog.text
            # Neither another user's process nor ours is ever signalled for a record
            # that names them by a reused PID or a bare one.
            assert foreign.poll() is None and unrelated.poll() is None
        finally:
            monkeypatch.undo()
            await after.shutdown()
            lifetime.stop(Path(alive.session_dir or "/nonexistent"), handle=handle)
        assert running_in(handle) == set()

    try:
        asyncio.run(scenario())
    finally:
        ours.kill()
        ours.wait()
