"""`binder-lite vm run | ssh | stop | list`: machines from built images, by name."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from binder_lite import net
from binder_lite.errors import BootError, UsageError
from binder_lite.vm import qemu, ssh


def vms_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "binder-lite" / "vms"


@dataclass(frozen=True)
class ImageInfo:
    path: Path
    format: str
    boot: qemu.Boot
    ssh_user: str | None
    guest_ssh_port: int
    guest_http_port: int


def image_info(image: Path) -> ImageInfo:
    """What `image`'s metadata file says about booting it."""
    meta_file = image.with_name(image.name + ".json")
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, ValueError):
        meta = {}
    if not image.is_file():
        raise UsageError(f"{image}: no such image (binder-lite image build makes them)")
    suffix = image.suffix.lstrip(".")
    fmt = str(meta.get("format") or {"qcow2": "qcow2", "iso": "iso"}.get(suffix, "raw"))
    boot = dict(meta.get("boot") or {})
    for key in ("kernel", "initrd"):  # paths relative to the image
        if boot.get(key):
            boot[key] = str((image.parent / str(boot[key])).resolve())
    return ImageInfo(
        image.resolve(),
        fmt,
        qemu.Boot(**boot),
        meta.get("ssh_user"),
        int(meta.get("ssh_port") or 22),
        int(meta.get("http_port") or 8080),
    )


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
) -> qemu.RunningVM:
    info = image_info(image)
    name = name or image.name.split(".")[0]
    run_dir = vms_dir() / name
    existing = qemu.RunningVM.load(run_dir)
    if existing is not None and existing.alive():
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
        vm.warning = (
            f"KVM could not run this guest ({str(e).splitlines()[-1].strip()}); "
            "booted with TCG, which is slower"
        )
        (run_dir / "ssh-user").write_text(info.ssh_user or "")
        return vm
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
    vm.warning = warning
    (run_dir / "ssh-user").write_text(info.ssh_user or "")
    return vm


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
    vm = qemu.RunningVM.load(vms_dir() / name)
    if vm is None or not vm.alive():
        raise UsageError(f"no running VM named {name!r} (binder-lite vm list)")
    return vm


def all_running() -> list[qemu.RunningVM]:
    found = []
    if vms_dir().is_dir():
        for run_dir in sorted(vms_dir().iterdir()):
            vm = qemu.RunningVM.load(run_dir)
            if vm is not None and vm.alive():
                found.append(vm)
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
