"""QEMU: find it, choose an accelerator that really works, compute the command line
(pure), and run a machine in the background with its ports and serial console.

/dev/kvm can exist and still be unusable (a nested or restricted host where KVM hangs
after the BIOS or aborts): `auto` proves KVM with a real, two-second boot of a tiny
boot sector before trusting it, and falls back to TCG, saying so.

A running machine is recorded in `<run dir>/vm.json` with its QEMU's `ProcessId`
(PID, start time, boot), checked before every signal: after a reboot or once the PID
is reused, a later `vm stop` must not hit whatever process has that number now.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from binder_lite import run
from binder_lite.errors import BootError, ToolNotFoundError
from binder_lite.imagemeta import Boot
from binder_lite.procs import ProcessId

OVMF_CANDIDATES = (
    "/usr/share/OVMF/OVMF_CODE_4M.fd",
    "/usr/share/OVMF/OVMF_CODE.fd",
    "/usr/share/ovmf/OVMF.fd",
    "/usr/share/qemu/OVMF.fd",
)
PROBE_MARKER = b"BLKVMOK"
T = TypeVar("T")


def find_qemu() -> str:
    found = shutil.which("qemu-system-x86_64")
    if found is None:
        raise ToolNotFoundError(
            "qemu-system-x86_64 not found: install QEMU (Debian: qemu-system-x86)"
        )
    return found


def find_ovmf() -> str:
    for candidate in OVMF_CANDIDATES:
        if Path(candidate).is_file():
            return candidate
    raise ToolNotFoundError("no OVMF firmware for EFI images: install it (Debian: ovmf)")


def _probe_sector() -> bytes:
    """A boot sector that writes PROBE_MARKER to the first serial port, then halts."""
    code = bytearray(b"\xba\xf8\x03")  # mov dx, 0x3f8
    for byte in PROBE_MARKER + b"\n":
        code += bytes([0xB0, byte, 0xEE])  # mov al, byte; out dx, al
    code += b"\xf4\xeb\xfd"  # hlt; jmp back to hlt
    return bytes(code).ljust(510, b"\0") + b"\x55\xaa"


def kvm_works(qemu: str, timeout: float = 5.0) -> tuple[bool, str]:
    """Boot the probe sector under KVM; (worked, why not)."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "/dev/kvm is missing or not accessible"
    with tempfile.TemporaryDirectory(prefix="binder-lite-kvm-") as tmp:
        disk, serial = Path(tmp) / "probe.img", Path(tmp) / "serial.log"
        disk.write_bytes(_probe_sector())
        argv = [
            qemu,
            "-accel",
            "kvm",
            "-m",
            "64",
            "-display",
            "none",
            "-no-reboot",
            "-drive",
            f"file={disk},format=raw,if=ide",
            "-serial",
            f"file:{serial}",
            "-monitor",
            "none",
            "-nodefaults",
        ]
        proc = run.spawn(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if serial.exists() and PROBE_MARKER in serial.read_bytes():
                    return True, ""
                if proc.poll() is not None:
                    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                    return False, f"QEMU with KVM exited: {err.strip()[-200:]}"
                time.sleep(0.05)
            return False, f"a KVM test boot printed nothing in {timeout:.0f} s"
        finally:
            proc.kill()
            proc.wait()


def choose_accel(requested: str, qemu: str) -> tuple[str, str | None]:
    """(accelerator, warning) for `requested` in auto | kvm | tcg."""
    if requested == "tcg":
        return "tcg", None
    works, why = kvm_works(qemu)
    if works:
        return "kvm", None
    if requested == "kvm":
        raise BootError(f"KVM was asked for but does not work here: {why}")
    return "tcg", f"KVM unusable ({why}); using TCG, which is slower"


@dataclass(frozen=True)
class VMSpec:
    name: str
    image: Path
    image_format: str  # raw | qcow2 | iso
    boot: Boot
    run_dir: Path
    ssh_port: int
    http_port: int
    guest_http_port: int = 8080
    memory_mib: int = 2048
    cpus: int = 2
    accel: str = "tcg"
    snapshot: bool = True
    restrict: bool = False  # QEMU's user network with restrict=on: no way out but the forwards
    disks: tuple[Path, ...] = ()  # more raw disks, written to (vdb, vdc, ...)

    @property
    def serial_log(self) -> Path:
        return self.run_dir / "serial.log"

    @property
    def qmp_socket(self) -> Path:
        return self.run_dir / "qmp.sock"


def qemu_argv(qemu: str, spec: VMSpec, ovmf: str | None = None) -> list[str]:
    """The QEMU command line for `spec` (pure: runs nothing)."""
    forwards = (
        f"hostfwd=tcp:127.0.0.1:{spec.ssh_port}-:22,"
        f"hostfwd=tcp:127.0.0.1:{spec.http_port}-:{spec.guest_http_port}"
    )
    if spec.image_format == "iso":
        drive = f"file={spec.image},format=raw,media=cdrom,readonly=on"
    else:
        drive = f"file={spec.image},format={spec.image_format},if=virtio"
        if spec.snapshot:
            drive += ",snapshot=on"  # writes go to an overlay: the image stays pristine
    argv = [
        qemu,
        "-name",
        spec.name,
        "-accel",
        spec.accel,
        "-m",
        str(spec.memory_mib),
        "-smp",
        str(spec.cpus),
        "-drive",
        drive,
        # virtio: Debian's cloud kernels lack e1000, QEMU's default card.
        "-nic",
        f"user,model=virtio-net-pci,{'restrict=on,' if spec.restrict else ''}{forwards}",
        "-display",
        "none",
        "-serial",
        f"file:{spec.serial_log}",
        "-qmp",
        f"unix:{spec.qmp_socket},server=on,wait=off",
        "-monitor",
        "none",
    ]
    for disk in spec.disks:
        # QEMU's option syntax: a comma in a value is written twice.
        argv += ["-drive", f"file={os.fspath(disk).replace(',', ',,')},format=raw,if=virtio"]
    if spec.accel == "kvm":
        # QEMU's default CPU model: "-cpu host" aborts on hosts that hide MSRs.
        argv += ["-cpu", "max"]
    if spec.boot.firmware == "efi":
        if ovmf is None:
            raise BootError("an EFI image needs OVMF firmware")
        argv += ["-bios", ovmf]
    if spec.boot.kernel:
        argv += ["-kernel", spec.boot.kernel]
        if spec.boot.initrd:
            argv += ["-initrd", spec.boot.initrd]
        argv += ["-append", spec.boot.append or "console=ttyS0"]
    return argv


STATE_FILE = "vm.json"


@dataclass(frozen=True)
class RunningVM:
    """A machine `start` booted, as its vm.json records it."""

    spec: VMSpec
    process: ProcessId  # QEMU's
    argv: list[str] = field(default_factory=list)
    warning: str | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.alive()

    def serial_tail(self, lines: int = 30) -> str:
        try:
            text = self.spec.serial_log.read_bytes().decode("utf-8", "replace")
        except OSError:
            return "(no serial output)"
        text = text.replace("\r", "")
        return "\n".join(text.splitlines()[-lines:]) or "(no serial output)"

    def stop(self, grace: float = 20.0) -> None:
        """Power the machine down (ACPI), then end QEMU if it is still there; forget it.
        Only the process recorded is ever signalled (`ProcessId` checks it each time)."""
        if self.alive() and not self.spec.snapshot:
            _qmp(self.spec.qmp_socket, "system_powerdown")
            deadline = time.monotonic() + grace
            while self.alive() and time.monotonic() < deadline:
                time.sleep(0.2)
        self.process.terminate(grace=5.0)
        (self.spec.run_dir / STATE_FILE).unlink(missing_ok=True)

    def save(self) -> None:
        data = {
            "spec": {
                **asdict(self.spec),
                "image": str(self.spec.image),
                "run_dir": str(self.spec.run_dir),
                "disks": [str(d) for d in self.spec.disks],
            },
            "process": self.process.to_json(),
            "argv": self.argv,
        }
        (self.spec.run_dir / STATE_FILE).write_text(json.dumps(data, indent=2))


@dataclass(frozen=True)
class StaleRecord:
    """A vm.json that names no process binder-lite may signal."""

    name: str
    path: Path
    reason: str  # for the user: what is wrong and what to do

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


def load(run_dir: Path) -> RunningVM | StaleRecord | None:
    """The machine recorded in `run_dir` (None: no record; it may have stopped since)."""
    path = run_dir / STATE_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        return StaleRecord(run_dir.name, path, f"{path} is damaged ({e}); removed it")
    if not isinstance(data, dict):
        return StaleRecord(run_dir.name, path, f"{path} is damaged; removed it")
    process = ProcessId.from_json(data.get("process"))
    if process is None:
        return StaleRecord(run_dir.name, path, _unsignalled(run_dir.name, path, data.get("pid")))
    try:
        spec = _spec(data["spec"])
    except (KeyError, TypeError, ValueError) as e:
        return StaleRecord(
            run_dir.name, path, f"{path} is damaged ({type(e).__name__}: {e}); removed it"
        )
    argv = data.get("argv")
    return RunningVM(spec, process, [str(a) for a in argv] if isinstance(argv, list) else [])


def _unsignalled(name: str, path: Path, pid: object) -> str:
    if type(pid) is not int:
        return f"{path} names no QEMU process; removed it"
    # Written by an earlier binder-lite: a bare PID may by now belong to anything.
    return (
        f"VM {name} was recorded by its PID alone ({pid}), which may now name another "
        f"process, so binder-lite will not signal it; removed {path}.  If that VM's QEMU "
        f"still runs (check: ps -o pid,args -p {pid}), stop it yourself"
    )


def _spec(data: object) -> VMSpec:
    if not isinstance(data, dict):
        raise TypeError("spec is not an object")
    boot = _typed(data, "boot", dict)
    return VMSpec(
        name=_typed(data, "name", str),
        image=Path(_typed(data, "image", str)),
        image_format=_typed(data, "image_format", str),
        boot=Boot(**boot),
        run_dir=Path(_typed(data, "run_dir", str)),
        ssh_port=_typed(data, "ssh_port", int),
        http_port=_typed(data, "http_port", int),
        guest_http_port=_typed(data, "guest_http_port", int),
        memory_mib=_typed(data, "memory_mib", int),
        cpus=_typed(data, "cpus", int),
        accel=_typed(data, "accel", str),
        snapshot=_typed(data, "snapshot", bool),
        restrict=bool(data.get("restrict", False)),  # absent from earlier records
        disks=tuple(Path(d) for d in data.get("disks", ()) if isinstance(d, str)),
    )


def _typed(data: dict[str, Any], key: str, kind: type[T]) -> T:
    value = data[key]
    if not isinstance(value, kind):
        raise TypeError(f"spec.{key} is not {kind.__name__}")
    return value


def start(spec: VMSpec, qemu: str, ovmf: str | None = None) -> RunningVM:
    """Start QEMU in the background (its own session: it outlives this command)."""
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    spec.serial_log.unlink(missing_ok=True)
    argv = qemu_argv(qemu, spec, ovmf)
    errors = spec.run_dir / "qemu.stderr"
    with open(errors, "wb") as err:
        proc = run.spawn(argv, stdout=subprocess.DEVNULL, stderr=err, new_session=True)
    # QEMU refuses a bad command line or image within moments; a bounded wait turns
    # that into an error here rather than a machine that never answers.
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=0.3)
    process = ProcessId.of(proc.pid) if proc.returncode is None else None
    if process is None:
        raise BootError(
            f"QEMU exited at once (status {proc.returncode}):\n"
            f"{errors.read_text(errors='replace').strip()[-2000:]}"
        )
    vm = RunningVM(spec, process, argv)
    vm.save()
    return vm


def _qmp(path: Path, command: str) -> None:
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(path))
            s.recv(4096)  # the greeting
            for execute in ("qmp_capabilities", command):
                s.sendall(json.dumps({"execute": execute}).encode() + b"\n")
                s.recv(4096)
    except OSError:
        pass  # the caller falls back to signals
