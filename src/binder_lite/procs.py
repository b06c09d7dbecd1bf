"""Processes named by more than their PID.

A PID recorded in a file outlives the process it named: after a reboot or once the
kernel reuses the number, a signal sent to it hits whatever runs there now.  A
`ProcessId` also records when the process started (in clock ticks since boot, from
`/proc/PID/stat`) and the boot it started in, and every signal is sent through a pidfd
opened after checking both, so the check and the signal name the same process.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def boot_id() -> str:
    try:
        return _BOOT_ID.read_text().strip()
    except OSError:  # no procfs entry (some sandboxes): PID and start time must do
        return ""


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (which may hold spaces)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    _, _, rest = text.rpartition(") ")
    return rest.split() or None


def start_time(pid: int) -> int | None:
    """When `pid` started, in clock ticks since boot; None if there is no such process."""
    fields = _stat_fields(pid)
    # Field 22 of stat; the list starts at field 3 (the state).
    return int(fields[19]) if fields and len(fields) > 19 else None


@dataclass(frozen=True)
class ProcessId:
    pid: int
    started: int
    boot: str

    @classmethod
    def of(cls, pid: int) -> ProcessId | None:
        """The identity of the running process `pid`, or None if it is gone."""
        started = start_time(pid)
        return None if started is None else cls(pid, started, boot_id())

    def to_json(self) -> dict[str, Any]:
        return {"pid": self.pid, "started": self.started, "boot": self.boot}

    @classmethod
    def from_json(cls, data: object) -> ProcessId | None:
        """Read what `to_json` wrote; None for anything else (an older state file that
        held a bare PID names no process we can trust)."""
        if not isinstance(data, dict):
            return None
        pid, started, boot = data.get("pid"), data.get("started"), data.get("boot")
        if type(pid) is not int or type(started) is not int or not isinstance(boot, str):
            return None
        return cls(pid, started, boot) if pid > 0 else None

    def is_current(self) -> bool:
        """True while the process this names is the one running under its PID."""
        return self.boot == boot_id() and start_time(self.pid) == self.started

    def alive(self) -> bool:
        """Running (not a zombie) and still the same process."""
        fields = _stat_fields(self.pid)
        if not fields or fields[0] == "Z":
            return False
        return self.is_current()

    def signal(self, sig: signal.Signals) -> bool:
        """Send `sig` if the process is still the one named; True if it was sent."""
        try:
            fd = os.pidfd_open(self.pid)
        except (ProcessLookupError, OSError):
            return False
        try:
            # Checked after the pidfd is open: the fd pins this exact process, so a
            # PID reused between the check and the signal cannot be hit.
            if not self.is_current():
                return False
            signal.pidfd_send_signal(fd, sig)
            return True
        except ProcessLookupError:
            return False
        finally:
            os.close(fd)

    def terminate(self, grace: float) -> None:
        """SIGTERM, up to `grace` seconds to exit, then SIGKILL."""
        if not self.signal(signal.SIGTERM):
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and self.alive():
            time.sleep(0.05)
        with contextlib.suppress(OSError):
            self.signal(signal.SIGKILL)
