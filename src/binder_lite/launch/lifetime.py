"""A launched session's processes: what names them, whether they run, and the one way
to end them (`stop`).

Everything a session runs is found through its handle, `sandbox.json` in the session's
folder (a `sandbox.Handle`, written for unsandboxed sessions too): its first process,
its cgroups, its PID namespaces and its network helper, each process named by a
`ProcessId`.  A service that restarted reads the same file; a process that is no
longer the one recorded (the machine rebooted, or the kernel reused its PID) is never
signalled.  Kernels of an unsandboxed session run in sessions of their own and may
outlive their server: `reap_strays` finds them by the session's folder in their
command line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from binder_lite.errors import LaunchError
from binder_lite.launch.sandbox import Cgroups, Handle
from binder_lite.procs import ProcessId

if TYPE_CHECKING:
    from subprocess import Popen

log = logging.getLogger(__name__)

STATE_FILE = "sandbox.json"


def state_file(session_dir: Path) -> Path:
    return session_dir / STATE_FILE


def track(session_dir: Path, process: Popen[bytes], cgroups: Cgroups | None) -> Handle:
    """Name the session's first process, just started, in its folder: from now on a
    stop finds it, also after a restart of the service."""
    named = ProcessId.of(process.pid)
    if named is None:  # our child, not yet reaped: its /proc entry stays until then
        raise LaunchError(f"the session's process {process.pid} cannot be found in /proc")
    handle = Handle(named, tuple(str(d) for d in cgroups.dirs) if cgroups else ())
    handle.save(state_file(session_dir))
    return handle


def with_helper(session_dir: Path, handle: Handle, helper: Popen[bytes]) -> Handle:
    """`handle` with a helper process of the session (slirp4netns), recorded."""
    named = ProcessId.of(helper.pid)
    if named is None:
        return handle
    handle = dataclasses.replace(handle, helpers=(*handle.helpers, named))
    handle.save(state_file(session_dir))
    return handle


def settled(session_dir: Path, handle: Handle) -> Handle:
    """`handle` with the PID namespaces the session made by now, recorded."""
    handle = handle.with_namespaces()
    handle.save(state_file(session_dir))
    return handle


def load(session_dir: Path) -> Handle | None:
    """The session's handle as its folder holds it (None: none, or an older format)."""
    return Handle.load(state_file(session_dir))


def adoptable(session_dir: Path, recorded: ProcessId | None) -> Handle | None:
    """The handle of a session that a restarted service may take back: its first
    process is the one `recorded` (by the service, elsewhere) and still that process.
    None for a reused PID, another boot, or a record or handle of an older format."""
    handle = load(session_dir)
    if handle is None or recorded is None or handle.process != recorded:
        return None
    return handle if recorded.alive() else None


def alive(session_dir: Path) -> bool:
    """Whether anything of the session still runs (after a restart of the service,
    bwrap's own process may be gone while Jupyter runs)."""
    handle = load(session_dir)
    return handle is not None and handle.alive()


def stop(
    session_dir: Path,
    *,
    handle: Handle | None = None,
    process: Popen[bytes] | None = None,
    grace: float = 10.0,
) -> None:
    """End the session and everything it started: SIGTERM first (Jupyter shuts its
    kernels down), SIGKILL whatever is left after `grace`, then any stray naming the
    session's files.  `handle` is read from the folder unless given; `process`, when
    the session's first process is our child, is reaped (no zombie of ours is left)."""
    handle = handle or load(session_dir)
    if handle is not None:
        _end(handle, grace)
    reap_strays(session_dir)
    if process is not None:
        if process.poll() is None:  # never tracked: our child, so its PID is its own
            process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5)


def _end(handle: Handle, grace: float) -> None:
    refused = _signal_all(handle.processes(), signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and handle.processes() - refused:
        time.sleep(0.05)
    for _ in range(50):
        left = handle.processes() - refused
        if not left:
            break
        refused |= _signal_all(left, signal.SIGKILL)
        time.sleep(0.02)
    _signal_all(handle.helpers, signal.SIGKILL)
    Cgroups(tuple(Path(d) for d in handle.cgroups)).remove()


def _signal_all(processes: Iterable[ProcessId], sig: signal.Signals) -> set[ProcessId]:
    """Signal each process that is still the one named; return those that refused
    (one that changed its user): they are logged and not waited for, and the others
    are still signalled."""
    refused = set()
    for process in processes:
        try:
            process.signal(sig)
        except PermissionError:
            log.warning("process %d refused %s: not stopped", process.pid, sig.name)
            refused.add(process)
    return refused


def reap_strays(session_dir: Path) -> None:
    """SIGKILL the processes whose command line names a file in the session's folder
    (a kernel outside the session's process tree, a git of its launch); never this
    process, nor one naming another folder whose name begins with this one's."""
    marker = os.fsencode(session_dir) + b"/"
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        # Named before its command line is read: the signal goes to the process read.
        named = ProcessId.of(int(entry.name))
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if named is not None and marker in cmdline:
            with contextlib.suppress(PermissionError):
                named.signal(signal.SIGKILL)
