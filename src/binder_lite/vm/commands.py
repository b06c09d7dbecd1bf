"""The `binder-lite vm …` commands (arguments only; the work is in vm.machine, vm.ssh
and, for `vm smoke`, smoke.command, imported when a command runs)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from binder_lite.errors import UsageError
from binder_lite.run import replace_with

if TYPE_CHECKING:
    from binder_lite.vm.machine import Survey

F = TypeVar("F", bound=Callable[..., Any])

identity_option = click.option(
    "-i",
    "--identity",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Private key to log in with [default: the usual ~/.ssh keys and agent].",
)


def host_key_options(what: str) -> Callable[[F], F]:
    """--host-key (repeatable) and --known-hosts, for commands that reach `what`."""

    def decorate(command: F) -> F:
        command = click.option(
            "--known-hosts",
            type=click.Path(dir_okay=False, path_type=Path),
            help="A known_hosts file [default: ~/.ssh/known_hosts].",
        )(command)
        return click.option(
            "--host-key",
            "host_keys",
            multiple=True,
            help=f"The {what}'s public host key ('ssh-ed25519 AAAA…'); repeatable.",
        )(command)

    return decorate


@click.group()
def vm() -> None:
    """Boot images in QEMU, reach them, stop them."""


@vm.command("run")
@click.argument(
    "source", metavar="IMAGE|SITE", type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option("-t", "--type", "image_type", help="With a SITE: which of its images.")
@click.option("--name", help="Name of the VM [default: from the image].")
@click.option(
    "--memory", type=click.IntRange(256), default=2048, show_default=True, help="MiB of memory."
)
@click.option("--cpus", type=click.IntRange(1), default=2, show_default=True)
@click.option(
    "--accel",
    type=click.Choice(["auto", "kvm", "tcg"]),
    default="auto",
    show_default=True,
    help="auto: KVM if a test boot works, else TCG.",
)
@click.option("--persistent", is_flag=True, help="Write to the image (default: a snapshot).")
@click.option(
    "--no-network",
    is_flag=True,
    help="The guest reaches nothing outside (QEMU's restrict=on); the forwards still work.",
)
@click.option(
    "--disk",
    "disks",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Attach this raw disk image too, written to (vdb, vdc, ...); repeatable.",
)
@click.option(
    "--wait/--no-wait",
    default=True,
    show_default=True,
    help="Wait until SSH answers and the host keys are known.",
)
@click.option(
    "--timeout", type=float, default=600, show_default=True, help="Seconds to wait for SSH."
)
def vm_run(
    source: Path,
    image_type: str | None,
    name: str | None,
    memory: int,
    cpus: int,
    accel: str,
    persistent: bool,
    no_network: bool,
    disks: tuple[Path, ...],
    wait: bool,
    timeout: float,
) -> None:
    """Boot IMAGE (or SITE's built image) in QEMU, in the background: SSH and the
    binder-lite port are forwarded to free local ports, the serial console goes to a
    log file."""
    from binder_lite.vm import machine

    image = _image_of(source, image_type)
    running = machine.run(
        image,
        name=name,
        memory=memory,
        cpus=cpus,
        accel=accel,
        snapshot=not persistent,
        restrict_network=no_network,
        disks=disks,
    )
    if running.warning:
        click.echo(f"warning: {running.warning}", err=True)
    spec = running.spec
    click.echo(f"VM {spec.name}: QEMU pid {running.pid}, accelerator {spec.accel}")
    click.echo(f"  ssh:         127.0.0.1:{spec.ssh_port}  (binder-lite vm ssh {spec.name})")
    click.echo(f"  binder-lite: http://127.0.0.1:{spec.http_port}/")
    click.echo(f"  serial log:  {spec.serial_log}")
    if wait:
        try:
            keys = machine.wait_for_ssh(running, timeout)
        except BaseException:
            running.stop()
            raise
        click.echo(f"  SSH is up; host keys from the serial console: {len(keys)}")
    click.echo(f"stop it with: binder-lite vm stop {spec.name}")


def _image_of(source: Path, image_type: str | None) -> Path:
    """An image file, or the built image of a site file."""
    if source.suffix not in (".yaml", ".yml", ".json"):
        return source
    from binder_lite.build import image_path
    from binder_lite.site import load_site
    from binder_lite.site.model import ImageType

    site = load_site(source)
    disks = [i.type for i in site.images]
    chosen = ImageType(image_type) if image_type else (disks[0] if disks else None)
    if chosen is None:
        raise UsageError(f"{source} lists no images")
    image = image_path(site, chosen, Path("images"))
    if not image.is_file():
        raise UsageError(
            f"{image} is not built yet: binder-lite image build {source} --type {chosen}"
        )
    return image


@vm.command("ssh")
@click.argument("name")
@identity_option
@click.option("-l", "--user", help="User to log in as [default: the site's first with a key].")
@click.argument("command", nargs=-1)
def vm_ssh(name: str, identity: Path | None, user: str | None, command: tuple[str, ...]) -> None:
    """Log into the running VM NAME (or run COMMAND there), checking its host key."""
    from binder_lite.vm import machine

    running = machine.running(name)
    known = running.spec.run_dir / "known_hosts"
    keys_file = running.spec.run_dir / "host-keys"
    if not keys_file.is_file():
        raise UsageError(f"the host keys of {name} are not known yet (still booting?)")
    known.write_text(
        "".join(
            f"[127.0.0.1]:{running.spec.ssh_port} {k}\n"
            for k in keys_file.read_text().split("\n")
            if k
        )
    )
    login = user or machine.ssh_user(running)
    if not login:
        raise UsageError("which user? give --user")
    argv = [
        "ssh",
        "-p",
        str(running.spec.ssh_port),
        "-o",
        f"UserKnownHostsFile={known}",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "GlobalKnownHostsFile=/dev/null",
    ]
    if identity:
        argv += ["-i", str(identity)]
    argv += [f"{login}@127.0.0.1", *command]
    replace_with(argv)


@vm.command("stop")
@click.argument("name", required=False)
def vm_stop(name: str | None) -> None:
    """Stop the running VM NAME [default: the only one running]."""
    from binder_lite.vm import machine

    running = machine.running(name) if name else machine.only_running(_reported(machine.survey()))
    running.stop()
    click.echo(f"stopped {running.spec.name}")


def _reported(survey: Survey) -> Survey:
    """`survey` after telling the user about the stale records it removed."""
    for stale in survey.stale:
        click.echo(f"warning: {stale.reason}", err=True)
    return survey


@vm.command("list")
def vm_list() -> None:
    """Show the running VMs."""
    from binder_lite.vm import machine

    found = _reported(machine.survey()).running
    if not found:
        click.echo("no VMs are running")
    for running in found:
        s = running.spec
        click.echo(
            f"{s.name}  pid {running.pid}  ssh 127.0.0.1:{s.ssh_port}  "
            f"http 127.0.0.1:{s.http_port}  {s.accel}  {s.image}"
        )


@vm.command("smoke")
@click.argument(
    "site_file", metavar="SITE", type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option(
    "-t", "--type", "image_type", help="Which of the site's images [default: the first disk image]."
)
@click.option(
    "--image",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Use this built image instead of building one.",
)
@click.option(
    "--accel", type=click.Choice(["auto", "kvm", "tcg"]), default="auto", show_default=True
)
@click.option(
    "--timeout", type=float, default=900, show_default=True, help="Seconds to wait for SSH."
)
@click.option("--keep", is_flag=True, help="Leave the VM running afterwards.")
@identity_option
@click.option("--repo", help="A repository the machine may launch.")
@click.option("--junit-xml", type=click.Path(dir_okay=False, path_type=Path))
def vm_smoke(
    site_file: Path,
    image_type: str | None,
    image: Path | None,
    accel: str,
    timeout: float,
    keep: bool,
    identity: Path | None,
    repo: str | None,
    junit_xml: Path | None,
) -> None:
    """Build SITE's image, boot it, wait for SSH, run the smoke tests, shut it down."""
    from binder_lite.site import load_site
    from binder_lite.site.model import Firmware, ImageType
    from binder_lite.smoke.command import run_smoke
    from binder_lite.vm import machine
    from binder_lite.vm import ssh as vmssh

    if image is None:
        from binder_lite import build

        site = load_site(site_file)
        disks = [i.type for i in site.images if i.type.firmware is not Firmware.HYBRID]
        chosen = ImageType(image_type) if image_type else (disks or [site.images[0].type])[0]
        built = build.build(
            site,
            chosen,
            Path("images"),
            Path("build"),
            size=None,
            grafts=True,
            progress=lambda line: click.echo(line, err=True),
        )
        image = built.image
    running = machine.run(image, accel=accel)
    if running.warning:
        click.echo(f"warning: {running.warning}", err=True)
    click.echo(f"booting {image} as {running.spec.name} ({running.spec.accel})…", err=True)
    try:
        keys = machine.wait_for_ssh(running, timeout)
        user = machine.ssh_user(running) or ""
        target = vmssh.Target("127.0.0.1", running.spec.ssh_port, user)
        host_keys = vmssh.host_keys_for(target, [], keys)
        run_smoke(target, site_file, identity, host_keys, repo=repo, junit_xml=junit_xml)
    finally:
        if not keep:
            running.stop()
            click.echo(f"stopped {running.spec.name}", err=True)
