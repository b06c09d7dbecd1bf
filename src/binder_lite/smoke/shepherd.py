"""A Shepherd service as seen through testinfra (which knows systemd, OpenRC and SysV
init, not the Shepherd)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ShepherdStatus:
    name: str
    running: bool
    pid: int | None
    output: str  # `herd status` as printed, for failure messages


class ShepherdService:
    def __init__(self, host: Any, name: str, sudo: bool = True) -> None:
        self.host = host
        self.name = name
        self.sudo = sudo

    def status(self) -> ShepherdStatus:
        prefix = "sudo -n " if self.sudo else ""
        result = self.host.run(prefix + "herd status %s", self.name)
        output = (result.stdout + result.stderr).strip()
        return ShepherdStatus(
            self.name, result.rc == 0 and _is_running(output), _main_pid(output), output
        )


def _is_running(output: str) -> bool:
    # Shepherd 1.0: "● Status of binder-lite:\n  It is running since …"; older ones
    # said "It is started."
    return bool(re.search(r"It is (running|started)", output))


def _main_pid(output: str) -> int | None:
    m = re.search(r"(?:Main PID|Running value is):? (\d+)", output)
    return int(m.group(1)) if m else None
