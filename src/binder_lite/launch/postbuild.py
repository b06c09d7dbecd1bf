"""repo2docker's `postBuild`, run once per commit inside the session's own sandbox.

The script runs as the session will: the same sandbox (bubblewrap, or the Guix
container with the session's manifest), cgroup limits, network policy and user, in the
checkout, with nothing of the service's environment.  Its time is bounded
(`TIME_LIMIT`), its output too (events, log file and the tail a failure shows), and
whatever it started is stopped when it ends, fails or runs out of time.  What it leaves
in the checkout is what it made: that tree (without `.git`) is kept in the cache under
a key of the repository, commit, environment and script, and a later launch of the
same key gets it back instead of running the script again.  Its home and /tmp are the
sandbox's own and are not kept.

The tree is archived and restored by tar inside a sandbox of its own, offline: a
checkout a script wrote is hostile (symlinks to anywhere, special files), and only
there can following one reach nothing but the session's own files.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

from binder_lite.errors import LaunchError, ToolNotFoundError
from binder_lite.launch import lifetime, sandbox, sources
from binder_lite.launch.scripts import Script
from binder_lite.procs import ProcessId
from binder_lite.run import spawn
from binder_lite.site.model import SessionNetwork

if TYPE_CHECKING:
    from subprocess import Popen

# Seconds a postBuild may run.  A constant, not a setting: repo2docker's scripts
# install extensions or download data, minutes on a slow line; a person is waiting
# on the launch page, and the Guix environment's own build is bounded separately.
TIME_LIMIT = 900.0
LOG_LIMIT = 1 << 20  # bytes of its output kept in postbuild.log
LINE_LIMIT = 1000  # characters of one line passed on (a longer one is cut in pieces)
EVENT_LINES = 1000  # lines passed on as progress events; the rest only in the log
TAIL_LINES = 25  # lines a failure shows
DISK_CHECK_SECONDS = 2.0  # how often the checkout's size is looked at while it runs
ARCHIVE_SECONDS = 120.0  # for tar, archiving or restoring the tree
CACHE_FORMAT = 1  # part of the key: a change of what is kept makes new keys
LOG_NAME = "postbuild.log"
ARCHIVE = "files.tar"
ARCHIVE_INSIDE = "/run/binder-lite-postbuild"

Say = Callable[[str], None]


class PostBuildError(LaunchError):
    """postBuild failed, ran too long or wrote too much; the message shows its output's end."""


@dataclass(frozen=True)
class Job:
    """One run of a postBuild: its whole command (sandboxed and limited, or not) and
    what it runs with."""

    script: Script
    argv: list[str]
    env: dict[str, str]
    box: sandbox.Sandbox
    boxed: bool
    cgroups: sandbox.Cgroups | None = None
    time_limit: float = TIME_LIMIT
    cancel: threading.Event | None = None
    # Folders outside the checkout the job writes into (a Julia depot): their bytes
    # count against the same disk limit as the checkout's.
    writes: tuple[Path, ...] = ()
    log_name: str = LOG_NAME  # its output's file in the session's folder

    def disk_used(self) -> int:
        return sum(sandbox.disk_usage(p) for p in (self.box.repo, *self.writes))


def cache_key(script: Script, identity: dict[str, str | None]) -> str:
    """The key a postBuild's result is kept under: the script's bytes and place, and
    `identity` (repository, commit, manifest, channels, Guix, runtime)."""
    parts = {"format": CACHE_FORMAT, "script": script.digest, "path": str(script.real)}
    data = json.dumps({**parts, **identity}, sort_keys=True).encode()
    return hashlib.sha256(data).hexdigest()


def ensure(job: Job, kept: Path | None, say: Say) -> None:
    """Run `job`'s postBuild in the checkout, or restore what it made when `kept` (its
    place in the cache) holds it already; keep a new result there."""
    name = job.script.name
    if kept is not None and _restored(job.box, kept):
        say(f"{name}: already run for this commit; its files restored")
        return
    minutes = job.time_limit / 60
    where = "in the sandbox" if job.boxed else "without a sandbox (--no-sandbox)"
    say(f"{name}: run {where} (at most {minutes:g} minutes)")
    run(job, say)
    say(f"{name}: done")
    if kept is not None and job.boxed:
        _keep(job.box, kept, say)


def run(job: Job, say: Say) -> None:
    """Run the postBuild until it exits (status 0, or PostBuildError), then stop
    whatever it left running."""
    box = job.box
    output = _Output(box.session_dir / job.log_name, job.script.name, say)
    try:
        process = spawn(
            job.argv,
            cwd=box.repo,
            env=job.env,
            inherit_env=False,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            new_session=True,
        )
    except ToolNotFoundError as e:
        raise PostBuildError(f"{job.script.name}: cannot be run: {e}") from None
    reader = threading.Thread(target=output.pump, args=(process.stdout,), daemon=True)
    reader.start()
    handle = None
    oom = 0
    try:
        handle = lifetime.track(box.session_dir, process, job.cgroups)
        if job.boxed and box.network is SessionNetwork.OUTBOUND:
            handle = _network(box, process, handle, say)
        failure = _wait(job, process)
        oom = job.cgroups.oom_kills() if job.cgroups is not None else 0
    finally:
        # Whatever it started goes with it: the cgroup, its namespace, its tree.
        lifetime.stop(box.session_dir, handle=handle, process=process, grace=1.0)
        reader.join(timeout=10)
    if failure is None and process.returncode != 0:
        failure = f"failed with status {process.returncode}"
        if oom > 0:
            failure += " (the memory limit stopped one of its processes)"
    if failure is not None:
        tail = output.tail()
        raise PostBuildError(f"{job.script.name} {failure}; the end of its output:\n{tail}")


def _network(
    box: sandbox.Sandbox, process: Popen[bytes], handle: sandbox.Handle, say: Say
) -> sandbox.Handle:
    try:
        slirp = sandbox.attach_network(box, process)
    except sandbox.SandboxError as e:
        say(f"postBuild runs without a network: {e}")
        return handle
    return lifetime.with_helper(box.session_dir, handle, slirp)


def _wait(job: Job, process: Popen[bytes]) -> str | None:
    """Until the script exits; what went wrong first, if anything did (it is then
    still running, and stopped by the caller)."""
    deadline = time.monotonic() + job.time_limit
    next_check = time.monotonic() + DISK_CHECK_SECONDS
    while process.poll() is None:
        if job.cancel is not None and job.cancel.is_set():
            raise LaunchError(f"stopped while {job.script.name} was running")
        now = time.monotonic()
        if now > deadline:
            return f"ran longer than {job.time_limit:g} seconds and was stopped"
        if job.boxed and now > next_check:
            if (used := job.disk_used()) > job.box.limits.disk:
                return _too_much(used, job.box.limits.disk)
            next_check = now + DISK_CHECK_SECONDS
        time.sleep(0.05)
    if job.boxed and (used := job.disk_used()) > job.box.limits.disk:
        return _too_much(used, job.box.limits.disk)
    return None


def _too_much(used: int, limit: int) -> str:
    return (
        f"wrote more than the session's disk limit of {limit >> 20} MiB "
        f"({used >> 20} MiB) and was stopped"
    )


class _Output:
    """A script's output: each line (cut at LINE_LIMIT, control characters replaced)
    as an event up to EVENT_LINES, the first LOG_LIMIT bytes in its log file, the last
    TAIL_LINES lines for a failure's message."""

    def __init__(self, log_file: Path, name: str, say: Say) -> None:
        self._log_file = log_file
        self._name = name
        self._say = say
        self._tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self._lock = threading.Lock()

    def pump(self, stream: IO[bytes] | None) -> None:
        assert stream is not None
        written = lines = 0
        with open(self._log_file, "wb") as log, stream:
            while chunk := stream.readline(LINE_LIMIT):
                if written < LOG_LIMIT:
                    log.write(chunk[: LOG_LIMIT - written])
                    written += min(len(chunk), LOG_LIMIT - written)
                line = _printable(chunk.decode("utf-8", "replace").rstrip("\r\n"))
                with self._lock:
                    self._tail.append(line)
                lines += 1
                if lines <= EVENT_LINES:
                    self._say(f"{self._name}: {line}")
                elif lines == EVENT_LINES + 1:
                    self._say(
                        f"{self._name}: its output beyond {EVENT_LINES} lines is not shown "
                        f"(the first {LOG_LIMIT >> 20} MiB are in {self._log_file.name})"
                    )

    def tail(self) -> str:
        with self._lock:
            return "\n".join(self._tail) or "(no output)"


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() or c == "\t" else "?" for c in text)


# -- the tree it made: kept, and restored -----------------------------------------------


def _keep(box: sandbox.Sandbox, kept: Path, say: Say) -> None:
    """Archive the checkout (without .git) into `kept`; a failure only costs a later
    launch a new run."""
    partial = kept.parent / f".{kept.name}.{secrets.token_hex(4)}"
    partial.mkdir(mode=0o700, parents=True)
    try:
        with open(partial / ARCHIVE, "wb") as out:
            inner = ["tar", "-C", sandbox.WORK_DIR, "--exclude=./.git", "-cf", "-", "."]
            status = _in_sandbox(box, inner, (), out)
        if status != 0:
            say(f"postBuild's files could not be kept (tar: status {status}); run again next time")
            return
        with contextlib.suppress(OSError):  # another launch kept the same already
            partial.rename(kept)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


RESTORE = (
    f"find {sandbox.WORK_DIR} -mindepth 1 -maxdepth 1 ! -name .git -exec rm -rf {{}} + && "
    f"tar -C {sandbox.WORK_DIR} -xf {ARCHIVE_INSIDE}/{ARCHIVE}"
)


def _restored(box: sandbox.Sandbox, kept: Path) -> bool:
    """The checkout as postBuild left it, its files replaced by the kept tree's, when
    the cache holds that tree; held meanwhile, so that the cache's trimming leaves it,
    and marked as used, so that it is trimmed last."""
    with sources.shared_lock(kept):
        if not (kept / ARCHIVE).is_file():
            return False
        os.utime(kept)
        status = _in_sandbox(box, ["/bin/sh", "-c", RESTORE], [(kept, ARCHIVE_INSIDE)], None)
    if status != 0:
        raise PostBuildError(f"postBuild's kept files could not be restored (status {status})")
    return True


def _in_sandbox(
    box: sandbox.Sandbox,
    inner: list[str],
    readonly: list[tuple[Path, str]] | tuple[()],
    stdout: IO[bytes] | None,
) -> int:
    """`inner` in an offline sandbox of the session, its files bounded by the disk
    limit; its exit status, or -9 when it ran out of time."""
    offline = dataclasses.replace(box, network=SessionNetwork.NONE)
    boxed = sandbox.bwrap_argv(offline, inner, readonly, share_run=False)
    argv = sandbox.limited(boxed, None, box.limits)
    process = spawn(
        argv,
        env=sandbox.session_environment({}),
        inherit_env=False,
        stdout=stdout if stdout is not None else subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        new_session=True,
    )
    try:
        return process.wait(timeout=ARCHIVE_SECONDS)
    except subprocess.TimeoutExpired:
        _kill_tree(process)
        return -9


def _kill_tree(process: Popen[bytes]) -> None:
    """SIGKILL `process` (our child) and everything under it, then reap it."""
    named = [ProcessId.of(pid) for pid in sandbox.descendants(process.pid)]
    process.kill()
    for p in named:
        if p is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                p.signal(signal.SIGKILL)
    process.wait()
