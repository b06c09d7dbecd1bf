"""`binder-lite vm run | ssh | stop | list`: machines from built images, by name."""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path

from binder_lite import imagemeta, net
from binder_lite.errors import BootError, UsageError
from binder_lite.vm import qemu, ssh


def vms_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "binder-lite" / "vms"


@dataclass(frozen=True)
class ImageInfo:
    path: Path
    format: str
    boot: imagemeta.Boot
    ssh_user: str | None
    guest_ssh_port: int
    guest_http_port: int


def image_info(image: Path) -> ImageInfo:
    """What `image`'s metadata says about booting it (without metadata: guessed from
    its name, booted from its disk).  Damaged metadata is an error, not a guess."""
    if not image.is_file():
        raise UsageError(f"{image}: no such image (binder-lite image build makes them)")
    meta = imagemeta.read(image)
    if meta is None:
        fmt = {"qcow2": "qcow2", "iso": "iso"}.get(image.suffix.lstrip("."), "raw")
        return ImageInfo(image.resolve(), fmt, imagemeta.Boot(), None, 22, 8080)
    boot = dataclasses.replace(
        meta.boot,  # kernel and initrd may be relative to the image
        kernel=_beside(image, meta.boot.kernel),
        initrd=_beside(image, meta.boot.initrd),
    )
    return ImageInfo(
        image.resolve(), meta.format, boot, meta.ssh_user, meta.ssh_port, meta.http_port
    )


def _beside(image: Path, path: str | None) -> str | None:
    return str((image.parent / path).resolve()) if path else None


def run(
    image: Path,
    *,
    name: str | None = None,
    memory: int = 2048,
    cpus: int = 2,
    accel: str = "auto",
    snapshot: bool = True,
    ssh_port: int | None = None,
    http_port: int | None = None,
    restrict_network: bool = False,
    disks: tuple[Path, ...] = (),
) -> qemu.RunningVM:
    info = image_info(image)
    name = name or image.name.split(".")[0]
    run_dir = vms_dir() / name
    notes = []
    existing = qemu.load(run_dir)
    if isinstance(existing, qemu.StaleRecord):
        existing.discard()
        notes.append(existing.reason)
    elif existing is not None and existing.alive():
        raise UsageError(f"a VM named {name!r} is running; `binder-lite vm stop {name}` first")
    if info.guest_ssh_port != 22:
        raise UsageError(
            f"{image}: SSH listens on port {info.guest_ssh_port}; forwarding "
            "only port 22 is supported"
        )
    binary = qemu.find_qemu()
    chosen, warning = qemu.choose_accel(accel, binary)
    spec = qemu.VMSpec(
        name=name,
        image=info.path,
        image_format=info.format,
        boot=info.boot,
        run_dir=run_dir,
        ssh_port=ssh_port or net.free_port(),
        http_port=http_port or net.free_port(),
        guest_http_port=info.guest_http_port,
        memory_mib=memory,
        cpus=cpus,
        accel=chosen,
        snapshot=snapshot,
        restrict=restrict_network,
        disks=tuple(d.absolute() for d in disks),
    )
    ovmf = qemu.find_ovmf() if info.boot.firmware == "efi" else None
    try:
        vm = qemu.start(spec, binary, ovmf)
    except BootError as e:
        if not (chosen == "kvm" and accel == "auto"):
            raise
        # KVM ran the probe, yet QEMU aborted on this guest (seen: "failed to set MSR"):
        # boot again with TCG.
        spec = dataclasses.replace(spec, accel="tcg")
        vm = qemu.start(spec, binary, ovmf)
        warning = (
            f"KVM could not run this guest ({str(e).splitlines()[-1].strip()}); "
            "booted with TCG, which is slower"
        )
        (run_dir / "ssh-user").write_text(info.ssh_user or "")
        return dataclasses.replace(vm, warning=_joined([*notes, warning]))
    if chosen == "kvm" and accel == "auto" and not _shows_life(vm, LIFE_SIGN_SECONDS):
        # KVM ran the probe's boot sector, yet this guest printed nothing: on some
        # hosts KVM hangs once a guest leaves real mode.  Boot again with TCG.
        vm.stop()
        spec = dataclasses.replace(spec, accel="tcg")
        vm = qemu.start(spec, binary, ovmf)
        warning = (
            f"KVM started but the guest printed nothing in {LIFE_SIGN_SECONDS:.0f} s; "
            "booted again with TCG, which is slower"
        )
    (run_dir / "ssh-user").write_text(info.ssh_user or "")
    return dataclasses.replace(vm, warning=_joined([*notes, warning]))


def _joined(warnings: list[str | None]) -> str | None:
    return "\n".join(w for w in warnings if w) or None


LIFE_SIGN_SECONDS = 20.0


def _shows_life(vm: qemu.RunningVM, seconds: float) -> bool:
    """Did the guest write anything to its serial console within `seconds`?"""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and vm.alive():
        if vm.spec.serial_log.exists() and vm.spec.serial_log.stat().st_size > 0:
            return True
        time.sleep(0.2)
    return False


def running(name: str) -> qemu.RunningVM:
    """The running VM `name`; a record naming no process we may signal is removed
    and reported as the error."""
    found = _look(vms_dir() / name)
    if isinstance(found, qemu.StaleRecord):
        raise UsageError(found.reason)
    if found is None:
        raise UsageError(f"no running VM named {name!r} (binder-lite vm list)")
    return found


@dataclass(frozen=True)
class Survey:
    running: list[qemu.RunningVM]
    stale: list[qemu.StaleRecord]  # removed; each says why, for the user


def survey() -> Survey:
    """Every running VM; stale records are removed and returned for reporting."""
    running, stale = [], []
    if vms_dir().is_dir():
        for run_dir in sorted(vms_dir().iterdir()):
            found = _look(run_dir)
            if isinstance(found, qemu.StaleRecord):
                stale.append(found)
            elif found is not None:
                running.append(found)
    return Survey(running, stale)


def only_running(found: Survey) -> qemu.RunningVM:
    """The one running VM, for commands whose NAME may be left out."""
    if len(found.running) == 1:
        return found.running[0]
    if not found.running:
        raise UsageError("no VM is running (binder-lite vm list)")
    names = ", ".join(vm.spec.name for vm in found.running)
    raise UsageError(f"{len(found.running)} VMs are running ({names}): say which")


def _look(run_dir: Path) -> qemu.RunningVM | qemu.StaleRecord | None:
    """The record in `run_dir` if its QEMU runs; stale and finished records are removed."""
    found = qemu.load(run_dir)
    if isinstance(found, qemu.StaleRecord):
        found.discard()
        return found
    if found is not None and not found.alive():
        # QEMU has gone (powered off, killed, or a reboot since): the record is history.
        (run_dir / qemu.STATE_FILE).unlink(missing_ok=True)
        return None
    return found


def wait_for_ssh(vm: qemu.RunningVM, timeout: float) -> list[str]:
    """Wait for the guest's SSH server and its host keys on the serial console."""
    deadline = time.monotonic() + timeout
    ssh.require_banner("127.0.0.1", vm.spec.ssh_port, timeout, vm.serial_tail)
    while time.monotonic() < deadline:
        keys = ssh.serial_host_keys(_serial(vm))
        if keys:
            (vm.spec.run_dir / "host-keys").write_text("\n".join(keys) + "\n")
            return keys
        if not vm.alive():
            break
        time.sleep(0.5)
    raise BootError(
        "SSH answers, but the guest printed no host keys on its serial console, so they "
        f"cannot be checked; the end of the console:\n{vm.serial_tail()}"
    )


def _serial(vm: qemu.RunningVM) -> str:
    try:
        return vm.spec.serial_log.read_bytes().decode("utf-8", "replace")
    except OSError:
        return ""


def ssh_user(vm: qemu.RunningVM) -> str | None:
    try:
        return (vm.spec.run_dir / "ssh-user").read_text().strip() or None
    except OSError:
        return None
