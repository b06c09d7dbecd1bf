"""Run the smoke tests against one target, as pytest does, with JUnit XML and a summary."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paramiko
import pytest

from binder_lite.site.model import Site
from binder_lite.smoke.forward import forward
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
    results: list[tuple[str, str, str]] = field(default_factory=list)


class SmokePlugin:
    """Gives the checks their fixtures and keeps their results for the summary."""

    def __init__(self, context: SmokeContext) -> None:
        self.context = context
        self._client: paramiko.SSHClient | None = None

    @pytest.fixture(scope="session")
    def smoke(self) -> SmokeContext:
        return self.context

    @pytest.fixture(scope="session")
    def ssh_client(self) -> Iterator[paramiko.SSHClient]:
        c = self.context
        client = ssh.connect(c.target, c.host_keys, c.identity)
        yield client
        client.close()

    @pytest.fixture(scope="session")
    def host(self, ssh_client: paramiko.SSHClient) -> Any:
        import testinfra
        from testinfra.backend.paramiko import ParamikoBackend

        target = self.context.target
        backend = ParamikoBackend(f"paramiko://{target.user}@{target.host}:{target.port}")
        # testinfra's own client takes unknown host keys (WarningPolicy): use ours.
        backend.__dict__["client"] = ssh_client
        return testinfra.host.Host(backend)

    @pytest.fixture(scope="session")
    def web(self, ssh_client: paramiko.SSHClient) -> Iterator[str]:
        """binder-lite's address, reached through the SSH connection."""
        transport = ssh_client.get_transport()
        assert transport is not None
        with forward(transport, self.context.site.binder.port) as port:
            yield f"http://127.0.0.1:{port}"

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
            message = ""
            if report.failed:
                message = str(report.longrepr.reprcrash.message) if hasattr(  # type: ignore[union-attr]
                    report.longrepr, "reprcrash") else str(report.longrepr)  # fmt: skip
            elif report.skipped and isinstance(report.longrepr, tuple):
                message = str(report.longrepr[2])
            self.context.results.append((report.nodeid.split("::")[-1], report.outcome, message))


def run(context: SmokeContext, junit_xml: Path | None, verbose: bool = False) -> int:
    """Run every check; return pytest's exit status (0: all passed)."""
    with tempfile.TemporaryDirectory(prefix="binder-lite-smoke-") as tmp:
        ini = Path(tmp) / "pytest.ini"
        ini.write_text("[pytest]\n")  # keep any project's pytest settings out
        args = [str(CHECKS), "-c", str(ini), "--rootdir", tmp, "-p", "no:cacheprovider",
                "-o", "junit_family=xunit2", "-v" if verbose else "-q", "--tb=short"]  # fmt: skip
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
    counts = {o: sum(1 for _, out, _ in context.results if out == o)
              for o in ("passed", "failed", "skipped")}  # fmt: skip
    lines.append(f"{counts['passed']} passed, {counts['failed']} failed, "
                 f"{counts['skipped']} skipped")  # fmt: skip
    return "\n".join(lines)
