"""A Shepherd service as seen through testinfra (which knows systemd, OpenRC and SysV
init, not the Shepherd), and running commands as root on the target."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class AsRoot:
    """How a command runs as root on the target: directly when we log in as root (a
    host may have no sudo at all), else through `sudo -n` (which never prompts)."""

    sudo: bool

    def __call__(self, command: str) -> str:
        return f"sudo -n {command}" if self.sudo else command


def as_root_on(host: Any) -> AsRoot:
    """Ask the target who we are: root is uid 0, whatever the account's name."""
    return AsRoot(sudo=host.run("id -u").stdout.strip() != "0")


@dataclass(frozen=True)
class ShepherdStatus:
    name: str
    running: bool
    pid: int | None
    output: str  # `herd status` as printed, for failure messages


class ShepherdService:
    manager = "the Shepherd"

    def __init__(self, host: Any, name: str, as_root: AsRoot) -> None:
        self.host = host
        self.name = name
        self.as_root = as_root

    def status(self) -> ShepherdStatus:
        result = self.host.run(self.as_root("herd status %s"), self.name)
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
