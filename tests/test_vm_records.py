"""What `vm stop` and `vm list` may signal: only the process a VM's record names, checked
by PID, start time and boot.  Real processes (`sleep`) stand in for QEMU; the VM tests
(test_vm.py) stop real machines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from binder_lite.procs import ProcessId
from binder_lite.vm import qemu


@dataclass
class Result:
    code: int
    out: str
    err: str


Run = Callable[..., Result]


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private XDG cache: where binder-lite keeps its VMs' records."""
    home = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(home))
    return home


@pytest.fixture
def binder_lite(cache: Path) -> Run:
    def run(*args: str) -> Result:
        proc = subprocess.run(
            [sys.executable, "-m", "binder_lite", *args],
            capture_output=True,
            text=True,
            env={**os.environ, "XDG_CACHE_HOME": str(cache)},
            check=False,
            timeout=60,
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)

    return run


@pytest.fixture
def sleeper() -> Iterator[Callable[[], subprocess.Popen[bytes]]]:
    """Start `sleep` processes (unrelated to binder-lite); all are ended afterwards."""
    started: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(["sleep", "300"])
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()
        proc.wait()


def spec(cache: Path, name: str) -> qemu.VMSpec:
    run_dir = cache / "binder-lite" / "vms" / name
    run_dir.mkdir(parents=True, exist_ok=True)
    return qemu.VMSpec(
        name=name,
        image=cache / "demo.img",
        image_format="raw",
        boot=qemu.Boot(),
        run_dir=run_dir,
        ssh_port=2222,
        http_port=8888,
    )


def record(cache: Path, name: str, process: ProcessId) -> Path:
    """A VM record as `vm run` writes it, naming `process` as its QEMU."""
    vm = qemu.RunningVM(spec(cache, name), process, ["qemu-system-x86_64"])
    vm.save()
    return vm.spec.run_dir / "vm.json"


def identity(proc: subprocess.Popen[bytes]) -> ProcessId:
    found = ProcessId.of(proc.pid)
    assert found is not None
    return found


def test_a_reused_pid_is_never_signalled(cache: Path, sleeper: Callable, binder_lite: Run) -> None:
    """The record's PID now belongs to an unrelated process (same PID, other start time)."""
    unrelated = sleeper()
    real = identity(unrelated)
    reused = ProcessId(real.pid, real.started + 1, real.boot)
    state = record(cache, "old", reused)
    loaded = qemu.load(state.parent)
    assert isinstance(loaded, qemu.RunningVM) and not loaded.alive()
    loaded.stop(grace=0.1)
    assert unrelated.poll() is None
    state = record(cache, "old2", reused)
    result = binder_lite("vm", "stop", "old2")
    assert result.code == 2 and "no running VM named 'old2'" in result.err
    assert "Traceback" not in result.err
    assert unrelated.poll() is None
    assert not state.exists()  # the record named a process long gone: removed
    rebooted = ProcessId(real.pid, real.started, "another-boot")
    record(cache, "old3", rebooted)
    assert binder_lite("vm", "stop").err.strip() == "error: no VM is running (binder-lite vm list)"
    assert unrelated.poll() is None


def test_a_bare_pid_record_is_reported_removed_and_not_signalled(
    cache: Path, sleeper: Callable, binder_lite: Run
) -> None:
    """An earlier binder-lite recorded the PID alone; here it is a live process's."""
    alive = sleeper()
    state = record(cache, "legacy", identity(alive))
    data = json.loads(state.read_text())
    data["pid"] = data.pop("process")["pid"]
    state.write_text(json.dumps(data))
    result = binder_lite("vm", "stop", "legacy")
    assert result.code == 2
    assert f"recorded by its PID alone ({alive.pid})" in result.err
    assert "will not signal it" in result.err and "Traceback" not in result.err
    assert not state.exists() and alive.poll() is None
    state = record(cache, "legacy", identity(alive))
    state.write_text(json.dumps({**data, "spec": json.loads(state.read_text())["spec"]}))
    listed = binder_lite("vm", "list")
    assert listed.code == 0 and "no VMs are running" in listed.out
    assert "warning: VM legacy was recorded by its PID alone" in listed.err
    assert not state.exists() and alive.poll() is None


def test_damaged_records_are_reported_and_removed(cache: Path, binder_lite: Run) -> None:
    run_dir = cache / "binder-lite" / "vms"
    for name, text in (("torn", '{"spec": {"na'), ("odd", '{"process": {"pid": 1}}')):
        (run_dir / name).mkdir(parents=True)
        (run_dir / name / "vm.json").write_text(text)
    listed = binder_lite("vm", "list")
    assert listed.code == 0 and "Traceback" not in listed.err
    assert f"{run_dir / 'torn' / 'vm.json'} is damaged" in listed.err
    assert f"{run_dir / 'odd' / 'vm.json'} names no QEMU process" in listed.err
    assert not list(run_dir.glob("*/vm.json"))


def test_stop_without_a_name_stops_the_only_vm(
    cache: Path, sleeper: Callable, binder_lite: Run
) -> None:
    first, second = sleeper(), sleeper()
    record(cache, "one", identity(first))
    state = record(cache, "two", identity(second))
    several = binder_lite("vm", "stop")
    assert several.code == 2
    assert "2 VMs are running (one, two): say which" in several.err
    assert first.poll() is None and second.poll() is None
    assert binder_lite("vm", "stop", "one").out == "stopped one\n"
    assert first.wait(timeout=10) == -15  # SIGTERM, from the record's checked identity
    only = binder_lite("vm", "stop")
    assert only.code == 0 and only.out == "stopped two\n"
    assert second.wait(timeout=10) == -15 and not state.exists()
