"""The installer ISO: the `install:` section, the rendered installer system, the
install-disk.sh steps (run for real, with --dry-run and against refusals), and, in
the Guix tier, the ISO lowered by the real Guix with the installed system inside."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import pytest
from conftest import MINIMAL_SITE, CliResult
from test_render import GUILE, datums

from binder_lite import installer_image, render
from binder_lite.errors import SiteError
from binder_lite.guix import ImageCommand
from binder_lite.imagemeta import Boot
from binder_lite.scheme import scm_str
from binder_lite.site import load_site
from binder_lite.site.model import ImageType, Install, InstallFirmware
from binder_lite.vm import qemu

WriteSite = Callable[..., Path]
Cli = Callable[..., CliResult]
SCRIPT = installer_image.script_path()


def problems(path: Path) -> list[str]:
    with pytest.raises(SiteError) as info:
        load_site(path)
    return [str(p) for p in info.value.problems]


def site_with(write_site: WriteSite, install: str, extra: str = "") -> Path:
    return write_site(MINIMAL_SITE + extra + install)


# -- the install: section -----------------------------------------------------------


def test_install_section_is_read_into_the_model(write_site: WriteSite) -> None:
    path = site_with(write_site, "install: {disk: /dev/nvme0n1, firmware: uefi, wipe: true}\n")
    site = load_site(path)
    assert site.install == Install("/dev/nvme0n1", InstallFirmware.UEFI, True)
    assert load_site(site_with(write_site, "")).install is None


def test_wipe_is_off_unless_the_site_says_so(write_site: WriteSite) -> None:
    site = load_site(site_with(write_site, "install: {disk: /dev/sda, firmware: bios}\n"))
    assert site.install == Install("/dev/sda", InstallFirmware.BIOS, False)


@pytest.mark.parametrize(
    ("install", "expected"),
    [
        ("install: {firmware: uefi}\n", r"site\.yaml:\d+:\d+: install\.disk: is required"),
        (
            "install: {disk: /dev/sda, firmware: efi}\n",
            r"site\.yaml:\d+:\d+: install\.firmware: 'efi' is not one of: uefi, bios",
        ),
        ("install: {disk: /dev/sda}\n", r"install\.firmware: is required"),
        ("install: {disk: sda, firmware: bios}\n", r"install\.disk: .*device file"),
        ("install: {disk: '/dev/sda; reboot', firmware: bios}\n", r"install\.disk: "),
        ("install: {disk: '/dev/$(id)', firmware: bios}\n", r"install\.disk: "),
        ("install: {disk: /dev/../etc/passwd, firmware: bios}\n", r"install\.disk: "),
        ("install: {disk: /dev/sda, firmware: bios, wipe: yes please}\n", r"install\.wipe: "),
        ("install: {disk: /dev/sda, firmware: bios, wip: true}\n", r"install\.wip: "),
        ("install: [/dev/sda]\n", r"install: expected a mapping"),
    ],
)
def test_bad_install_sections_are_located(
    write_site: WriteSite, install: str, expected: str
) -> None:
    found = problems(site_with(write_site, install))
    assert any(re.search(expected, p) for p in found), found


def test_install_disk_must_agree_with_host_disk(write_site: WriteSite) -> None:
    text = MINIMAL_SITE.replace("  hostname: test\n", "  hostname: test\n  disk: /dev/vda\n")
    found = problems(write_site(text + "install: {disk: /dev/sda, firmware: bios}\n"))
    assert len(found) == 1 and "install.disk: the system is installed on /dev/sda" in found[0]


# -- rendering ----------------------------------------------------------------------


def installer_text(write_site: WriteSite, install: str) -> str:
    return render.render_image_config(
        load_site(site_with(write_site, install)), ImageType.INSTALLER
    )


def test_wiping_installer_runs_the_script_with_the_site_values(write_site: WriteSite) -> None:
    text = installer_text(write_site, "install: {disk: /dev/sdb, firmware: bios, wipe: true}\n")
    args = '"--disk"\n\\s+"/dev/sdb"\n\\s+"--firmware"\n\\s+"bios"'
    assert re.search(args, text), text
    assert '"--wipe"' in text
    assert "(service gc-root-service-type %installed-closure)" in text
    assert f'(local-file "{SCRIPT}" "install-disk.sh")' in text


def test_installer_without_wipe_only_shows_the_command(write_site: WriteSite) -> None:
    text = installer_text(write_site, "install: {disk: /dev/sdb, firmware: uefi}\n")
    assert "system*" not in text
    command = (
        "sh /etc/binder-lite/installer/install-disk.sh --disk /dev/sdb --firmware uefi "
        "--system /etc/binder-lite/installer/system.scm "
        "--load-path /etc/binder-lite/installer/source/services --wipe"
    )
    # On the console at boot and in the motd (each a Scheme string; \\n escaped).
    assert text.count(command) >= 2, text


@pytest.mark.skipif(  # outside CI only: there it runs, and fails
    GUILE is None and not os.environ.get("CI"), reason="guile not installed (scripts/setup)"
)
def test_installer_reads_as_scheme(write_site: WriteSite, tmp_path: Path) -> None:
    for install in (
        "{disk: /dev/sdb, firmware: uefi, wipe: true}",
        "{disk: /dev/sdb, firmware: bios}",
    ):
        text = installer_text(write_site, f"install: {install}\n")
        path = render.write_files({"installer.scm": text}, tmp_path)[0]
        # use-modules, seven defines, the operating-system.
        assert datums(path) == 9, text


def test_installed_system_follows_the_install_firmware(write_site: WriteSite) -> None:
    uefi = load_site(site_with(write_site, "install: {disk: /dev/sdb, firmware: uefi}\n"))
    assert "(bootloader grub-efi-bootloader)" in render.render_system(uefi)
    bios = load_site(site_with(write_site, "install: {disk: /dev/sdb, firmware: bios}\n"))
    system = render.render_system(bios)
    assert "(bootloader grub-bootloader)" in system
    assert '(targets \'("/dev/sdb"))' in system  # GRUB goes on the installed disk


def test_site_without_install_gets_a_safe_default(write_site: WriteSite) -> None:
    site = load_site(site_with(write_site, ""))
    target = installer_image.install_target(site)
    assert target == Install("/dev/vda", InstallFirmware.BIOS, False)
    assert "system*" not in render.render_image_config(site, ImageType.INSTALLER)


def test_hostile_site_text_stays_inside_scheme_strings(
    write_site: WriteSite, tmp_path: Path
) -> None:
    text = MINIMAL_SITE.replace("name: Test", 'name: "x\\") (system* \\"rm\\") ;\\n#~ $(id)"')
    site = load_site(write_site(text + "install: {disk: /dev/sdb, firmware: uefi}\n"))
    rendered = render.render_image_config(site, ImageType.INSTALLER)
    # Outside comments (scm_comment's), the name appears only escaped, inside strings.
    code = "\n".join(x for x in rendered.splitlines() if not x.lstrip().startswith(";;"))
    assert '(system* "rm")' not in code
    assert '(system* \\"rm\\")' in code
    if GUILE is not None:  # and Guile's reader sees the same nine forms
        assert datums(render.write_files({"hostile.scm": rendered}, tmp_path)[0]) == 9


def test_installer_lowers_with_the_iso_type(write_site: WriteSite, tmp_path: Path) -> None:
    site = load_site(site_with(write_site, "install: {disk: /dev/sdb, firmware: uefi}\n"))
    argv = ImageCommand(site, ImageType.INSTALLER, tmp_path / "x.scm").argv(derivation=True)
    assert "--image-type=iso9660" in argv
    assert ImageType.INSTALLER.extension == "iso"


def test_vm_run_attaches_extra_disks_written_to(tmp_path: Path) -> None:
    """`vm run --disk`: each one a raw virtio drive after the image (vdb, vdc), never a
    snapshot (the test reads what the guest wrote); QEMU's doubled commas."""
    disks = (tmp_path / "a.img", tmp_path / "b,c.img")
    spec = qemu.VMSpec(
        name="x",
        image=tmp_path / "x.img",
        image_format="raw",
        boot=Boot(),
        run_dir=tmp_path,
        ssh_port=2222,
        http_port=8888,
        disks=disks,
    )
    argv = qemu.qemu_argv("qemu", spec)
    drives = [argv[i + 1] for i, a in enumerate(argv) if a == "-drive"]
    assert drives[1:] == [
        f"file={tmp_path}/a.img,format=raw,if=virtio",
        f"file={tmp_path}/b,,c.img,format=raw,if=virtio",
    ]
    assert "snapshot=on" in drives[0]
    # The record `vm stop` and `vm list` read keeps them.
    assert (
        qemu._spec(
            json.loads(
                json.dumps(
                    {**asdict(spec), "image": "x", "run_dir": "r", "disks": [str(d) for d in disks]}
                )
            )
        ).disks
        == disks
    )


# -- install-disk.sh ----------------------------------------------------------------


def script(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", os.fspath(SCRIPT), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env=env,
    )


def test_the_script_is_posix_sh() -> None:
    subprocess.run(["dash", "-n", SCRIPT], check=True)
    for tool, argv in (
        ("shellcheck", ["shellcheck", "-s", "sh", SCRIPT]),
        ("checkbashisms", ["checkbashisms", SCRIPT]),
    ):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (scripts/setup installs it)")
        found = subprocess.run(argv, capture_output=True, text=True, check=False)
        assert found.returncode == 0, found.stdout + found.stderr


BASE = ["--system", "/etc/x/system.scm", "--load-path", "/etc/x/services"]


def test_script_dry_run_uefi_lists_every_step() -> None:
    proc = script("--disk", "/dev/nvme0n1", "--firmware", "uefi", *BASE, "--wipe", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    steps = re.findall(r"step (\d)/6: (\w+)", proc.stdout)
    assert steps == [
        (str(i), s)
        for i, s in enumerate(["check", "partition", "format", "mount", "init", "reboot"], 1)
    ]
    out = proc.stdout
    assert "label: gpt" in out and "type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B" in out
    assert "+ mkfs.fat -F 32 -n GNU-ESP /dev/nvme0n1p1" in out  # the kernel's nvme names
    assert "+ mkfs.ext4 -F -q -L binder-root /dev/nvme0n1p2" in out
    assert "+ mount /dev/nvme0n1p1 /mnt/boot/efi" in out
    assert "+ guix system init --load-path=/etc/x/services /etc/x/system.scm /mnt" in out


def test_script_dry_run_bios_has_a_bios_boot_partition_and_no_esp() -> None:
    proc = script("--disk", "/dev/sdb", "--firmware", "bios", *BASE, "--wipe", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "type=21686148-6449-6E6F-744E-656564454649" in proc.stdout
    assert "mkfs.fat" not in proc.stdout and "/boot/efi" not in proc.stdout
    assert "+ mkfs.ext4 -F -q -L binder-root /dev/sdb2" in proc.stdout


def test_script_stops_before_init_when_asked() -> None:
    proc = script(
        "--disk",
        "/dev/sdb",
        "--firmware",
        "bios",
        *BASE,
        "--wipe",
        "--dry-run",
        "--stop-before",
        "init",
    )
    assert proc.returncode == 0, proc.stderr
    assert "stopping before init" in proc.stdout
    assert "guix system init" not in proc.stdout and "step 4/6: mount" in proc.stdout


def test_script_without_wipe_erases_nothing() -> None:
    proc = script("--disk", "/dev/sdb", "--firmware", "bios", *BASE, "--dry-run")
    assert proc.returncode == 2
    assert "run again with --wipe" in proc.stdout
    assert "step 2/6" not in proc.stdout


def test_script_reports_the_failing_step() -> None:
    # Not a block device: the check step fails, naming itself.
    proc = script("--disk", "/dev/binder-lite-no-such-disk", "--firmware", "bios", *BASE, "--wipe")
    assert proc.returncode == 1
    assert "failed: step 1/6: check: /dev/binder-lite-no-such-disk" in proc.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["--disk", "/dev/sd$(touch PWNED)", "--firmware", "bios"],
        ["--disk", "/dev/sda;touch PWNED", "--firmware", "bios"],
        ["--disk", "/dev/../tmp/PWNED", "--firmware", "bios"],
        ["--disk", "sda", "--firmware", "bios"],
        ["--disk", "/dev/sda", "--firmware", "bios;touch PWNED"],
        ["--disk", "/dev/sda", "--firmware", "bios", "--stop-before", "init partition"],
        ["--disk", "/dev/sda", "--firmware", "bios", "--target", "relative"],
        ["--disk", "/dev/sda", "--firmware", "bios", "--bogus"],
        ["--disk", "/dev/sda"],
    ],
)
def test_script_refuses_bad_arguments(args: list[str], tmp_path: Path) -> None:
    proc = subprocess.run(
        ["sh", os.fspath(SCRIPT), *args, *BASE, "--wipe", "--dry-run"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stdout
    assert "binder-lite install: error:" in proc.stderr
    assert "step 1/6" not in proc.stdout
    assert not (tmp_path / "PWNED").exists()


# -- the Guix tier ------------------------------------------------------------------


def guix_out(guix: str, *args: str | os.PathLike[str]) -> str:
    proc = subprocess.run(
        [guix, *map(os.fspath, args)], capture_output=True, text=True, check=False, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.guix
@pytest.mark.parametrize(("firmware", "logo"), [("uefi", False), ("bios", True)])
def test_installer_iso_lowers_and_holds_the_installed_system(
    guix: str, cli: Cli, write_site: WriteSite, tmp_path: Path, firmware: str, logo: bool
) -> None:
    text = MINIMAL_SITE
    if logo:
        (tmp_path / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
        text = text.replace("  slug: test\n", "  slug: test\n  logo: logo.png\n")
    path = write_site(text + f"install: {{disk: /dev/sda, firmware: {firmware}, wipe: true}}\n")
    work = tmp_path / "build"
    result = cli(
        "image",
        "build",
        path,
        "--type",
        "installer",
        "--dry-run",
        "--no-grafts",
        "--work-dir",
        work,
    )
    assert result.code == 0, result.err
    assert "guix system image --image-type=iso9660 " in result.out
    iso_drv = re.search(r"derivation: (/gnu/store/\S+-image\.iso\.drv)", result.out)
    assert iso_drv, result.out
    # The system `guix system init` installs, as `binder-lite render` writes it ...
    site = load_site(path)
    system = render.write_files({"system.scm": render.render_system(site)}, tmp_path)[0]
    load_path = f"--load-path={installer_image.data_dir() / 'services'}"
    system_drv = guix_out(guix, "system", "build", "-d", "--no-grafts", load_path, system).strip()
    # ... is in the ISO's closure (its gc root), with binder-lite's source.
    closure = guix_out(guix, "gc", "--requisites", iso_drv.group(1)).split()
    assert system_drv in closure
    source = [p for p in closure if p.endswith("-binder-lite-checkout")]
    assert len(source) == 1, source
    on_iso_text = installer_image.system_on_iso(site)
    assert scm_str(on_iso_text) in render.render_image_config(site, ImageType.INSTALLER)
    if logo:
        # The ISO's copy next to system.scm is the store item the installed system uses.
        assert '"/etc/binder-lite/installer/test-logo.png"' in on_iso_text
        assert any(p.endswith("-test-logo.png") for p in closure)
        return  # /etc/binder-lite/installer is the ISO's, not this machine's
    # The system.scm the ISO holds, loaded with the ISO's -L (that source's services/),
    # is that same system: `guix system init` finds its closure in the store.
    on_iso = render.write_files({"on-iso.scm": on_iso_text}, tmp_path)[0]
    iso_load_path = f"--load-path={source[0]}/services"
    same = guix_out(guix, "system", "build", "-d", "--no-grafts", iso_load_path, on_iso)
    assert same.strip() == system_drv


# -- the VM tier: the disk steps on a real (virtual) disk -----------------------------

STANDIN_SITE = """\
version: 1
site: {{name: "Installer test", slug: standin}}
host: {{hostname: standin}}
users:
  - name: tester
    admin: true
    ssh_keys: ["{key}"]
"""
# A whole disk, sparse: the ESP takes 512 MiB.
BLANK_DISK_BYTES = 2 << 30


def _vm_tools_missing() -> list[str]:
    tools = ["qemu-system-x86_64", "debootstrap", "mkfs.ext4", "ssh-keygen", "sfdisk", "blkid"]
    missing = [t for t in tools if shutil.which(t) is None]
    return missing + (["root (to build the stand-in image)"] if os.geteuid() != 0 else [])


def _binder_lite(env: dict[str, str], *args: str | os.PathLike[str]) -> CliResult:
    proc = subprocess.run(
        [sys.executable, "-m", "binder_lite", *map(os.fspath, args)],
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
        env=env,
    )
    return CliResult(proc)


def _partitions(image: Path) -> list[dict[str, object]]:
    table = json.loads(
        subprocess.run(
            ["sfdisk", "--json", image], capture_output=True, text=True, check=True, timeout=60
        ).stdout
    )["partitiontable"]
    assert table["label"] == "gpt", table
    return list(table["partitions"])


def _probe(image: Path, partition: dict[str, object]) -> dict[str, str]:
    """blkid's low-level probe of the file system at the partition's offset."""
    offset = int(partition["start"]) * 512  # type: ignore[call-overload]
    out = subprocess.run(
        ["blkid", "-p", "-o", "export", "-O", str(offset), image],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


@pytest.mark.vm
def test_disk_steps_on_blank_disks_of_a_vm(tmp_path: Path) -> None:
    """install-disk.sh, up to `guix system init` (which needs the ISO's store, absent
    from the Debian stand-in), on two blank disks of a VM `vm run --disk` booted: one
    for UEFI, one for BIOS; then each disk image is read from here with sfdisk/blkid."""
    missing = _vm_tools_missing()
    if missing:
        reason = f"cannot build or boot the stand-in VM: missing {', '.join(missing)}"
        if os.environ.get("CI"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    import standin as builder

    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
    site = tmp_path / "site.yaml"
    site.write_text(STANDIN_SITE.format(key=key.with_suffix(".pub").read_text().strip()))
    image = builder.build(load_site(site), tmp_path / "image", "unused-" + uuid.uuid4().hex)
    disks = {"uefi": tmp_path / "uefi.img", "bios": tmp_path / "bios.img"}
    for disk in disks.values():
        with open(disk, "wb") as f:
            f.truncate(BLANK_DISK_BYTES)
    # The VM's record (and QMP socket, under 108 bytes) out of the user's cache.
    home = Path(tempfile.mkdtemp(prefix="bl-"))
    env = {**os.environ, "XDG_CACHE_HOME": os.fspath(home)}
    name = f"inst-{uuid.uuid4().hex[:8]}"
    booted = _binder_lite(
        env,
        "vm",
        "run",
        image,
        "--name",
        name,
        "--timeout",
        "600",
        "--disk",
        disks["uefi"],
        "--disk",
        disks["bios"],
    )
    try:
        assert booted.code == 0, booted.out + booted.err
        encoded = base64.b64encode(SCRIPT.read_bytes()).decode()
        for firmware, device in (("uefi", "/dev/vdb"), ("bios", "/dev/vdc")):
            command = (
                f"echo {encoded} | base64 -d > /tmp/install-disk.sh && "
                f"sudo -n sh /tmp/install-disk.sh --disk {device} --firmware {firmware} "
                "--system /nonexistent/system.scm --load-path /nonexistent --wipe "
                "--target /mnt --stop-before init && sudo -n umount -R /mnt && sync"
            )
            ran = _binder_lite(env, "vm", "ssh", name, "-i", key, "-l", "tester", "--", command)
            assert ran.code == 0, ran.out + ran.err
            assert "step 4/6: mount" in ran.out, ran.out
            assert "stopping before init" in ran.out  # guix system init: not run here
        # Booting the ISO again must not install again: that disk is left alone.
        again = _binder_lite(env, "vm", "ssh", name, "-i", key, "-l", "tester", "--", command)
        assert again.code == 2, again.out + again.err
        assert "/dev/vdc already holds a binder-lite system" in again.out
    finally:
        stopped = _binder_lite(env, "vm", "stop", name)
        shutil.rmtree(home, ignore_errors=True)
    assert stopped.code == 0, stopped.out + stopped.err
    uefi = _partitions(disks["uefi"])
    assert [(p["type"], p["name"]) for p in uefi] == [
        ("C12A7328-F81F-11D2-BA4B-00A0C93EC93B", "GNU-ESP"),
        ("0FC63DAF-8483-4772-8E79-3D69D8477DE4", "binder-root"),
    ]
    assert uefi[0]["size"] == 512 * 2048  # 512 MiB in sectors
    esp, root = _probe(disks["uefi"], uefi[0]), _probe(disks["uefi"], uefi[1])
    assert (esp["TYPE"], esp["LABEL"]) == ("vfat", "GNU-ESP"), esp
    assert (root["TYPE"], root["LABEL"]) == ("ext4", "binder-root"), root
    bios = _partitions(disks["bios"])
    assert [(p["type"], p["name"]) for p in bios] == [
        ("21686148-6449-6E6F-744E-656564454649", "bios-boot"),
        ("0FC63DAF-8483-4772-8E79-3D69D8477DE4", "binder-root"),
    ]
    root = _probe(disks["bios"], bios[1])
    assert (root["TYPE"], root["LABEL"]) == ("ext4", "binder-root"), root
