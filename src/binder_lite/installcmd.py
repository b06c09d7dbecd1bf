"""`binder-lite install` and `binder-lite bundle` (arguments only; the work is in
install.py and bundle.py, imported when a command runs)."""

from __future__ import annotations

from pathlib import Path

import click

from binder_lite.errors import UsageError
from binder_lite.vm.commands import host_key_options, identity_option


@click.command("bundle")
@click.option(
    "--for",
    "release_name",
    required=True,
    metavar="RELEASE",
    help="The server's release, as its /etc/os-release says: debian-12 or ubuntu-24.04.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("bundle.tar"),
    show_default=True,
)
@click.option("--with-guix", is_flag=True, help="Also Guix's packages (sites with runtime guix).")
@click.option(
    "--wheel",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="binder-lite's wheel [default: built from this installation's sources].",
)
def bundle_command(release_name: str, output: Path, with_guix: bool, wheel: Path | None) -> None:
    """Pack what `installer/bootstrap.sh --bundle` needs on a server with no network:
    binder-lite's wheels and the distribution's .deb files a minimal system lacks."""
    from binder_lite import bundle

    made = bundle.make(
        release_name,
        output,
        with_guix=with_guix,
        wheel=wheel,
        progress=lambda line: click.echo(line, err=True),
    )
    click.echo(f"{made}: {made.stat().st_size / 2**20:,.0f} MiB for {release_name}")


@click.command("install")
@click.argument(
    "site_file", metavar="SITE", type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option(
    "--target", required=True, help="ssh://root@host[:port] (another user needs sudo -n)."
)
@click.option(
    "--bundle",
    "bundle_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A `binder-lite bundle` for the server: install with no network there.",
)
@click.option(
    "--wheel",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="binder-lite's wheel, without a bundle [default: built from this installation].",
)
@identity_option
@host_key_options("server")
@click.option("--serve-arg", "serve_args", multiple=True, help="One more `serve` argument.")
@click.option("--roll-back", is_flag=True, help="Go back to the installation before.")
@click.option("--uninstall", is_flag=True, help="Remove the installation (not its state).")
@click.option("--purge", is_flag=True, help="With --uninstall: its state and account too.")
def install_command(
    site_file: Path,
    target: str,
    bundle_file: Path | None,
    wheel: Path | None,
    identity: Path | None,
    host_keys: tuple[str, ...],
    known_hosts: Path | None,
    serve_args: tuple[str, ...],
    roll_back: bool,
    uninstall: bool,
    purge: bool,
) -> None:
    """Install binder-lite for SITE on an existing Debian server over SSH (run again to
    upgrade): installer/bootstrap.sh runs there and its steps are shown here.  The
    host key is checked, never trusted on first use."""
    import functools
    import tempfile

    from binder_lite import bundle, install
    from binder_lite.site import load_site
    from binder_lite.vm import ssh

    if purge and not uninstall:
        raise UsageError("--purge goes with --uninstall")
    if roll_back and uninstall:
        raise UsageError("give one of --roll-back and --uninstall")
    load_site(site_file, for_service=True)  # refused here, before anything is copied
    spec = ssh.parse_target(target)
    keys = ssh.known_host_keys(spec, known_hosts, list(host_keys), UsageError)
    argv_for = functools.partial(
        install.bootstrap_argv,
        roll_back=roll_back,
        uninstall=uninstall,
        purge=purge,
        serve_args=serve_args,
    )
    with tempfile.TemporaryDirectory(prefix="binder-lite-install-") as tmp:
        needs_wheel = bundle_file is None and wheel is None and not (roll_back or uninstall)
        if needs_wheel:
            click.echo("building binder-lite's wheel", err=True)
            wheel = bundle.own_wheel(Path(tmp))
        payload = install.Payload(site_file, bundle_file, wheel)
        outcome = install.install(
            spec,
            keys,
            identity,
            payload,
            lambda d: argv_for(d, payload),
            progress=click.echo,
        )
    click.echo(f"{spec}: done ({outcome.steps} steps)")
