"""The binder-lite service on a target without the Shepherd: a Debian or Ubuntu server
that installer/bootstrap.sh set up, where systemd runs it.  `service_on` picks the
service manager the target has, so the same checks judge both kinds of machine."""

from __future__ import annotations

from typing import Any

from binder_lite.smoke.shepherd import AsRoot, ShepherdService, ShepherdStatus

# One status record for both managers (`output` is what the manager printed).
ServiceStatus = ShepherdStatus


class SystemdService:
    manager = "systemd"

    def __init__(self, host: Any, name: str, as_root: AsRoot) -> None:
        self.host = host
        self.name = name
        self.as_root = as_root

    def status(self) -> ServiceStatus:
        shown = self.host.run(
            self.as_root("systemctl show -p ActiveState -p SubState -p MainPID %s"),
            f"{self.name}.service",
        )
        fields = _properties(shown.stdout)
        running = (
            shown.rc == 0
            and fields.get("ActiveState") == "active"
            and fields.get("SubState") == "running"
        )
        pid = int(fields.get("MainPID", "0") or "0") or None
        described = self.host.run(
            self.as_root("systemctl status --no-pager --lines 15 %s"), f"{self.name}.service"
        )
        output = (described.stdout + described.stderr).strip() or shown.stdout.strip()
        return ServiceStatus(self.name, running, pid, output)

    def describe(self) -> str:
        return f"systemctl status {self.name}"


def _properties(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def uses_systemd(host: Any) -> bool:
    """Does systemd run the target (PID 1 and a unit for binder-lite's service)?"""
    return bool(host.run("test -d /run/systemd/system").rc == 0)


def service_on(host: Any, name: str, as_root: AsRoot) -> SystemdService | ShepherdService:
    """The service as the target's own manager runs it."""
    if uses_systemd(host):
        return SystemdService(host, name, as_root)
    return ShepherdService(host, name, as_root)


def status_command(service: SystemdService | ShepherdService) -> str:
    """What an administrator types to see what the messages show."""
    if isinstance(service, SystemdService):
        return service.describe()
    return f"herd status {service.name}"
