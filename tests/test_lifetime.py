"""Ending a session's processes (launch/lifetime.py): real processes, no Jupyter but in
the last test."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from launchkit import execute, make_repo, processes_mentioning

from binder_lite.launch import launch, lifetime
from binder_lite.launch.sandbox import Handle, descendants
from binder_lite.launch.session import Isolation
from binder_lite.procs import ProcessId
from binder_lite.run import spawn
from binder_lite.site.model import Runtime

SLEEP = "import time; time.sleep(120)"


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts; whatever is left of them is killed after it."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        proc.kill()
        proc.wait()


def sleeper(procs: list[subprocess.Popen[bytes]], *args: str) -> subprocess.Popen[bytes]:
    """A process that sleeps, with `args` in its command line."""
    proc = spawn([sys.executable, "-c", SLEEP, *args], new_session=True)
    procs.append(proc)
    return proc


def ended(proc: subprocess.Popen[bytes]) -> bool:
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        return False
    return True


def test_strays_are_the_processes_naming_the_folder_and_no_others(
    tmp_path: Path, started: list[subprocess.Popen[bytes]]
) -> None:
    folder = tmp_path / "sessions" / "ab"
    stray = sleeper(started, f"{folder}/repo/kernel.json")
    sibling = sleeper(started, f"{folder}c/repo")  # another session: .../abc/
    bare = sleeper(started, str(folder))  # the folder itself, as no file of it names it
    lifetime.reap_strays(folder)
    assert ended(stray)
    assert sibling.poll() is None and bare.poll() is None


def test_a_handle_naming_a_reused_pid_signals_nothing(
    tmp_path: Path, started: list[subprocess.Popen[bytes]]
) -> None:
    unrelated = sleeper(started)
    now = ProcessId.of(unrelated.pid)
    assert now is not None
    for then in (
        dataclasses.replace(now, started=now.started - 1),
        dataclasses.replace(now, boot="another boot"),
    ):
        Handle(then, helpers=(then,)).save(lifetime.state_file(tmp_path))
        assert not lifetime.alive(tmp_path)
        assert lifetime.adoptable(tmp_path, then) is None
        lifetime.stop(tmp_path, grace=0)
        assert unrelated.poll() is None
    # The handle as it should be: adopted, then stopped.
    Handle(now).save(lifetime.state_file(tmp_path))
    assert lifetime.adoptable(tmp_path, now) == Handle(now)
    assert lifetime.adoptable(tmp_path, None) is None  # a record of the older format
    lifetime.stop(tmp_path, grace=0)
    assert ended(unrelated)


def test_stop_ends_the_whole_tree_and_reaps_our_child(
    tmp_path: Path, started: list[subprocess.Popen[bytes]]
) -> None:
    # A child that ignores SIGTERM: the stop waits its grace, then kills.
    script = "trap '' TERM; sleep 120 & sleep 120 & wait"
    root = spawn(["/bin/sh", "-c", script], new_session=True)
    started.append(root)
    deadline = time.monotonic() + 10
    while len(descendants(root.pid)) < 2:
        assert time.monotonic() < deadline, "the tree never started"
        time.sleep(0.01)
    children = [ProcessId.of(pid) for pid in descendants(root.pid)]
    handle = lifetime.track(tmp_path, root, None)
    assert lifetime.alive(tmp_path)
    lifetime.stop(tmp_path, process=root, grace=0.5)
    assert root.returncode is not None  # reaped, not a zombie
    assert not any(child is not None and child.alive() for child in children)
    assert handle.members() == set()


def test_an_unsandboxed_session_stops_with_its_kernel(tmp_path: Path) -> None:
    session = launch(
        str(make_repo(tmp_path / "repo")),
        runtime_kind=Runtime.LOCAL,
        cache_dir=tmp_path / "cache",
        isolation=Isolation(sandboxed=False),
    )
    try:
        handle = lifetime.load(session.session_dir)
        assert handle == session.handle and handle.process.pid == session.pid
        server = handle.members()
        assert execute(session.base_url, session.token, "6 * 7") == "42"
        assert handle.members() - server, "no kernel process"
    finally:
        session.stop()
    assert not session.alive() and handle.members() == set()
    assert processes_mentioning(str(session.session_dir)) == []
