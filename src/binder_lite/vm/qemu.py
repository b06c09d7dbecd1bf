"""QEMU: find it, choose an accelerator that really works, compute the command line
(pure), and run a machine in the background with its ports and serial console.

/dev/kvm can exist and still be unusable (a nested or restricted host where KVM hangs
after the BIOS or aborts): `auto` proves KVM with a real, two-second boot of a tiny
boot sector before trusting it, and falls back to TCG, saying so.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from binder_lite.errors import BootError, ToolNotFoundError

OVMF_CANDIDATES = (
    "/usr/share/OVMF/OVMF_CODE_4M.fd",
    "/usr/share/OVMF/OVMF_CODE.fd",
    "/usr/share/ovmf/OVMF.fd",
    "/usr/share/qemu/OVMF.fd",
)
PROBE_MARKER = b"BLKVMOK"


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
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
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
class Boot:
    """How an image boots: from its disk (firmware bios/efi), or a given kernel."""

    firmware: str = "bios"  # bios | efi
    kernel: str | None = None
    initrd: str | None = None
    append: str | None = None


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
        f"user,model=virtio-net-pci,{forwards}",
        "-display",
        "none",
        "-serial",
        f"file:{spec.serial_log}",
        "-qmp",
        f"unix:{spec.qmp_socket},server=on,wait=off",
        "-monitor",
        "none",
    ]
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


@dataclass
class RunningVM:
    spec: VMSpec
    pid: int
    argv: list[str] = field(default_factory=list)
    warning: str | None = None

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        try:
            state = Path(f"/proc/{self.pid}/stat").read_text().split(") ", 1)[1][:1]
        except (OSError, IndexError):
            return False
        return state != "Z"

    def serial_tail(self, lines: int = 30) -> str:
        try:
            text = self.spec.serial_log.read_bytes().decode("utf-8", "replace")
        except OSError:
            return "(no serial output)"
        text = text.replace("\r", "")
        return "\n".join(text.splitlines()[-lines:]) or "(no serial output)"

    def stop(self, grace: float = 20.0) -> None:
        """Power the machine down (ACPI), then kill QEMU if it is still there."""
        if self.alive() and not self.spec.snapshot:
            _qmp(self.spec.qmp_socket, "system_powerdown")
            deadline = time.monotonic() + grace
            while self.alive() and time.monotonic() < deadline:
                time.sleep(0.2)
        if self.alive():
            os.kill(self.pid, signal.SIGTERM)
            deadline = time.monotonic() + 5
            while self.alive() and time.monotonic() < deadline:
                time.sleep(0.05)
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
        with_state = self.spec.run_dir / "vm.json"
        with_state.unlink(missing_ok=True)

    def save(self) -> None:
        data = {
            "spec": {
                **asdict(self.spec),
                "image": str(self.spec.image),
                "run_dir": str(self.spec.run_dir),
            },
            "pid": self.pid,
            "argv": self.argv,
        }
        (self.spec.run_dir / "vm.json").write_text(json.dumps(data, indent=2))

    @staticmethod
    def load(run_dir: Path) -> RunningVM | None:
        try:
            data = json.loads((run_dir / "vm.json").read_text())
        except (OSError, ValueError):
            return None
        spec = data["spec"]
        spec["image"], spec["run_dir"] = Path(spec["image"]), Path(spec["run_dir"])
        spec["boot"] = Boot(**spec["boot"])
        return RunningVM(VMSpec(**spec), int(data["pid"]), list(data.get("argv", [])))


def start(spec: VMSpec, qemu: str, ovmf: str | None = None) -> RunningVM:
    """Start QEMU in the background (its own session: it outlives this command)."""
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    spec.serial_log.unlink(missing_ok=True)
    argv = qemu_argv(qemu, spec, ovmf)
    errors = spec.run_dir / "qemu.stderr"
    with open(errors, "wb") as err:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )
    vm = RunningVM(spec, proc.pid, argv)
    time.sleep(0.3)
    if proc.poll() is not None:
        raise BootError(
            f"QEMU exited at once (status {proc.returncode}):\n"
            f"{errors.read_text(errors='replace').strip()[-2000:]}"
        )
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
