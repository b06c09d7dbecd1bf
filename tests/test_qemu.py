"""QEMU command lines and host-key handling (pure parts; the VM tests boot for real)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import EXAMPLES, MINIMAL_SITE, SSH_KEY

from binder_lite.errors import UsageError
from binder_lite.guix import ImageCommand
from binder_lite.launch import runtime
from binder_lite.site import load_site
from binder_lite.site.model import ImageType
from binder_lite.vm import qemu, ssh


def spec(tmp_path: Path, **changes: object) -> qemu.VMSpec:
    values: dict[str, object] = {
        "name": "demo",
        "image": tmp_path / "demo.qcow2",
        "image_format": "qcow2",
        "boot": qemu.Boot(),
        "run_dir": tmp_path / "run",
        "ssh_port": 2222,
        "http_port": 8888,
        "guest_http_port": 8080,
    }
    values.update(changes)
    return qemu.VMSpec(**values)  # type: ignore[arg-type]


def test_disk_image_command_line(tmp_path: Path) -> None:
    argv = qemu.qemu_argv("qemu-system-x86_64", spec(tmp_path))
    drive = argv[argv.index("-drive") + 1]
    assert drive == f"file={tmp_path}/demo.qcow2,format=qcow2,if=virtio,snapshot=on"
    nic = argv[argv.index("-nic") + 1]
    assert nic == (
        "user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:2222-:22,hostfwd=tcp:127.0.0.1:8888-:8080"
    )
    assert argv[argv.index("-serial") + 1] == f"file:{tmp_path}/run/serial.log"
    assert argv[argv.index("-accel") + 1] == "tcg" and "-bios" not in argv


def test_persistent_efi_kvm_and_kernel_boot(tmp_path: Path) -> None:
    efi = spec(tmp_path, boot=qemu.Boot(firmware="efi"), snapshot=False, accel="kvm")
    argv = qemu.qemu_argv("qemu", efi, ovmf="/usr/share/OVMF/OVMF_CODE.fd")
    assert "snapshot=on" not in argv[argv.index("-drive") + 1]
    assert argv[argv.index("-bios") + 1] == "/usr/share/OVMF/OVMF_CODE.fd"
    assert argv[argv.index("-cpu") + 1] == "max"
    with pytest.raises(Exception, match="needs OVMF"):
        qemu.qemu_argv("qemu", efi)
    direct = spec(
        tmp_path,
        image_format="raw",
        boot=qemu.Boot(kernel="/k", initrd="/i", append="root=/dev/vda"),
    )
    argv = qemu.qemu_argv("qemu", direct)
    assert argv[-6:] == ["-kernel", "/k", "-initrd", "/i", "-append", "root=/dev/vda"]
    iso = qemu.qemu_argv("qemu", spec(tmp_path, image_format="iso"))
    assert "media=cdrom,readonly=on" in iso[iso.index("-drive") + 1]


def test_probe_sector_is_a_boot_sector() -> None:
    sector = qemu._probe_sector()
    assert len(sector) == 512 and sector.endswith(b"\x55\xaa")
    assert sector.startswith(b"\xba\xf8\x03")  # mov dx, 0x3f8: the first serial port


def test_host_keys_from_the_serial_console() -> None:
    console = (
        "noise\r\n-----BEGIN SSH HOST KEY KEYS-----\r\n"
        "ssh-ed25519 AAAAC3Nz root@x\r\nssh-mldsa44-ed25519 AAAA root@x\r\n"
        "ecdsa-sha2-nistp256 AAAAE2 root@x\r\n-----END SSH HOST KEY KEYS-----\r\nlogin:"
    )
    assert ssh.serial_host_keys(console) == ["ssh-ed25519 AAAAC3Nz", "ecdsa-sha2-nistp256 AAAAE2"]
    assert ssh.serial_host_keys("no markers") == []


def test_targets_and_given_keys() -> None:
    target = ssh.parse_target("ssh://ops@gn.example.org:2222")
    assert (target.user, target.host, target.port) == ("ops", "gn.example.org", 2222)
    assert target.key_name == "[gn.example.org]:2222"
    assert ssh.parse_target("ops@host").key_name == "host"
    with pytest.raises(UsageError):
        ssh.parse_target("https://host")
    keys = ssh.host_keys_for(target, [], [SSH_KEY])
    assert keys.lookup("[gn.example.org]:2222") is not None
    with pytest.raises(UsageError, match="not a usable public key"):
        ssh.host_keys_for(target, [], ["ssh-ed25519 bm90IGEga2V5"])


def test_pinned_channels_go_through_time_machine(tmp_path: Path) -> None:
    (tmp_path / "channels.scm").write_text("(list)")
    site_file = tmp_path / "site.yaml"
    site_file.write_text(MINIMAL_SITE + "guix:\n  channels: channels.scm\n")
    site = load_site(site_file)
    argv = ImageCommand(site, ImageType.QCOW2, tmp_path / "os.scm").argv(derivation=True)
    assert argv[1:5] == ["time-machine", "-C", str(tmp_path / "channels.scm"), "--"]
    assert argv[5:7] == ["system", "image"]
    assert argv[-2:] == ["--derivation", str(tmp_path / "os.scm")]
    server = runtime.ServerSpec(port=1, base_url="/", kernel="guix", root_dir="/notebooks")
    paths = runtime.GuixPaths(
        tmp_path, tmp_path / "m.scm", tmp_path / "channels.scm", None, network=True
    )
    shell = runtime.guix_argv(server, paths)
    assert shell[1:4] == ["time-machine", f"--channels={tmp_path / 'channels.scm'}", "--"]


def test_iso_gets_the_site_label() -> None:
    site = load_site(EXAMPLES / "genenetwork.yaml")
    argv = ImageCommand(site, ImageType.ISO9660, Path("/x.scm")).argv()
    assert "--label=genenetwork" in argv and not any(a.startswith("--image-size") for a in argv)
