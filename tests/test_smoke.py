"""The smoke suite's own parts, here on this machine: one shared wait for the service,
and root commands run directly as root, through sudo otherwise.  The VM tests
(test_vm.py) run the whole suite against a booted machine over SSH."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from binder_lite.smoke.readiness import ServiceWait
from binder_lite.smoke.shepherd import AsRoot, ShepherdService, as_root_on

HERD = """\
#!/bin/sh
# A stand-in for the Shepherd's herd: records how it was called, prints what
# Shepherd 1.0 prints for a running service.
echo "$0 $*" >> {log}
printf '● Status of %s:\\n  It is running since 10:00:00 (1 minute ago).\\n' "$2"
printf '  Main PID: 4242\\n'
"""


class Probe:
    """A service that answers from its `after`-th probe on (never, for None)."""

    def __init__(self, after: int | None) -> None:
        self.after = after
        self.calls = 0
        self.diagnosed = 0

    def answers(self) -> bool:
        self.calls += 1
        return self.after is not None and self.calls >= self.after

    def diagnose(self) -> str:
        self.diagnosed += 1
        return "herd status binder-lite:\nIt is stopped."


def test_the_service_is_waited_for_once_and_the_reason_repeated() -> None:
    probe = Probe(after=None)
    wait = ServiceWait(probe.answers, 0.3, "binder-lite on port 8080", probe.diagnose, 0.01)
    with pytest.raises(pytest.fail.Exception) as first:
        wait.require()
    probes = probe.calls
    assert probes > 1
    assert str(first.value) == (
        "binder-lite on port 8080 did not answer within 0.3 s; "
        "herd status binder-lite:\nIt is stopped."
    )
    for _ in range(3):  # the other checks: at once, with the same reason
        with pytest.raises(pytest.fail.Exception) as again:
            wait.require()
        assert str(again.value) == str(first.value)
    assert probe.calls == probes and probe.diagnosed == 1


def test_a_service_that_comes_up_is_not_waited_for_again() -> None:
    probe = Probe(after=3)
    wait = ServiceWait(probe.answers, 60, "binder-lite", probe.diagnose, 0.01)
    wait.require()
    wait.require()
    assert probe.calls == 3 and probe.diagnosed == 0


@pytest.fixture
def local_herd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Path]:
    """testinfra's host for this machine, with a stand-in `herd` alone on PATH."""
    import testinfra

    bin_dir, log = tmp_path / "bin", tmp_path / "herd.log"
    bin_dir.mkdir()
    (bin_dir / "herd").write_text(HERD.format(log=log))
    (bin_dir / "herd").chmod(0o755)
    # Only herd and the shell's own tools: no sudo, as on a host without it.
    for tool in ("id", "sh"):
        found = shutil.which(tool)
        assert found is not None
        (bin_dir / tool).symlink_to(found)
    monkeypatch.setenv("PATH", str(bin_dir))
    return testinfra.get_host("local://"), log


@pytest.mark.skipif(os.geteuid() != 0, reason="checks what happens when logged in as root")
def test_as_root_herd_runs_without_sudo(local_herd: tuple[Any, Path]) -> None:
    host, log = local_herd
    as_root = as_root_on(host)
    assert as_root == AsRoot(sudo=False)
    status = ShepherdService(host, "binder-lite", as_root).status()
    assert status.running and status.pid == 4242, status.output
    assert log.read_text().splitlines() == [f"{log.parent}/bin/herd status binder-lite"]
    # Through sudo, as before: a host without sudo fails the check.
    through_sudo = ShepherdService(host, "binder-lite", AsRoot(sudo=True)).status()
    assert not through_sudo.running and "sudo" in through_sudo.output


def test_other_users_go_through_sudo() -> None:
    assert AsRoot(sudo=True)("herd status %s") == "sudo -n herd status %s"
    assert AsRoot(sudo=False)("kill -9 %s") == "kill -9 %s"
