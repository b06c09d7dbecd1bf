"""Run the smoke tests against one target, as pytest does, with JUnit XML and a summary."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import paramiko
import pytest

from binder_lite.site.model import Site
from binder_lite.smoke.command import SERVICE_TIMEOUT
from binder_lite.vm import ssh

CHECKS = Path(__file__).with_name("checks.py")


@dataclass
class SmokeContext:
    target: ssh.Target
    host_keys: paramiko.HostKeys
    identity: Path | None
    site: Site
    repo: str | None = None  # a repository the target may launch; else one made there
    respawn_within: float = 10.0
    service_timeout: float = SERVICE_TIMEOUT  # for the service to answer at all, after a boot
    results: list[tuple[str, str, str]] = field(default_factory=list)


CONTEXT = pytest.StashKey[SmokeContext]()


class SmokePlugin:
    """Hands the checks their context (see fixtures.py) and keeps their results."""

    def __init__(self, context: SmokeContext) -> None:
        self.context = context

    def pytest_configure(self, config: pytest.Config) -> None:
        config.stash[CONTEXT] = self.context

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
            self.context.results.append(
                (report.nodeid.split("::")[-1], report.outcome, _message(report))
            )


def _message(report: pytest.TestReport) -> str:
    if report.failed:
        crash = getattr(report.longrepr, "reprcrash", None)
        return str(crash.message) if crash is not None else str(report.longrepr)
    if report.skipped and isinstance(report.longrepr, tuple):
        return str(report.longrepr[2])
    return ""


def run(context: SmokeContext, junit_xml: Path | None, verbose: bool = False) -> int:
    """Run every check; return pytest's exit status (0: all passed)."""
    with tempfile.TemporaryDirectory(prefix="binder-lite-smoke-") as tmp:
        ini = Path(tmp) / "pytest.ini"
        ini.write_text("[pytest]\n")  # keep any project's pytest settings out
        # testinfra's own pytest plugin would add a `host` fixture for this machine:
        # ours (fixtures.py) reaches the target, with its host key checked.
        args = [
            str(CHECKS),
            "-c",
            str(ini),
            "--rootdir",
            tmp,
            "-p",
            "no:cacheprovider",
            "-p",
            "no:testinfra",
            "-p",
            "binder_lite.smoke.fixtures",
            "-o",
            "junit_family=xunit2",
            "-v" if verbose else "-q",
            "--tb=short",
        ]
        if junit_xml is not None:
            args += ["--junitxml", str(junit_xml)]
        return int(pytest.main(args, plugins=[SmokePlugin(context)]))


def summary(context: SmokeContext) -> str:
    width = max((len(name) for name, _, _ in context.results), default=10)
    lines = [f"smoke tests of {context.target} ({context.site.site.name}):"]
    for name, outcome, message in context.results:
        mark = {"passed": "ok  ", "failed": "FAIL", "skipped": "skip"}.get(outcome, outcome)
        detail = f"  {message.splitlines()[0][:160]}" if message and outcome != "passed" else ""
        lines.append(f"  {mark} {name.ljust(width)}{detail}")
    counts = {
        o: sum(1 for _, out, _ in context.results if out == o)
        for o in ("passed", "failed", "skipped")
    }
    lines.append(
        f"{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped"
    )
    return "\n".join(lines)
