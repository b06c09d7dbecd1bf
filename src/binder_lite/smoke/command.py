"""`binder-lite smoke` (arguments only; the checks run in smoke.runner, imported when
the command runs).  `vm smoke` runs the same through `run_smoke`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from binder_lite.errors import SmokeError, UsageError
from binder_lite.vm.commands import host_key_options, identity_option

if TYPE_CHECKING:
    import paramiko

    from binder_lite.vm.qemu import RunningVM
    from binder_lite.vm.ssh import Target

SERVICE_TIMEOUT = 180.0


@click.command("smoke")
@click.argument("target", metavar="TARGET")
@click.option(
    "--site",
    "site_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The site file the target was built from.",
)
@identity_option
@host_key_options("target")
@click.option(
    "--repo",
    help="A repository the target may launch [default: one made "
    "on the target, which needs file:// allowed there].",
)
@click.option(
    "--service-timeout",
    type=click.FloatRange(0),
    default=SERVICE_TIMEOUT,
    show_default=True,
    help="Seconds to wait, once, for binder-lite to answer (a machine may still be booting).",
)
@click.option(
    "--junit-xml",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the results as JUnit XML here.",
)
@click.option("-v", "--verbose", is_flag=True, help="Show pytest's own report too.")
def smoke(
    target: str,
    site_file: Path | None,
    identity: Path | None,
    host_keys: tuple[str, ...],
    known_hosts: Path | None,
    repo: str | None,
    service_timeout: float,
    junit_xml: Path | None,
    verbose: bool,
) -> None:
    """Check over SSH that TARGET (ssh://user@host:port, or the name of a running VM)
    is a working binder-lite machine for SITE.  Host keys are checked, never trusted.
    Commands that need root run directly when the target user is root, else with sudo."""
    from binder_lite.vm import machine
    from binder_lite.vm import ssh as vmssh

    running = None
    if "://" not in target and "@" not in target:
        running = machine.running(target)
    if site_file is None:
        raise UsageError("give --site: the site file the target was built from")
    if running is not None:
        keys = list(host_keys) or _serial_keys(running)
        user = machine.ssh_user(running)
        spec = vmssh.Target("127.0.0.1", running.spec.ssh_port, user or "")
        if not spec.user:
            raise UsageError("the VM's image does not say which user logs in")
    else:
        spec = vmssh.parse_target(target)
        keys = list(host_keys)
    run_smoke(
        spec,
        site_file,
        identity,
        vmssh.known_host_keys(spec, known_hosts, keys, SmokeError),
        repo=repo,
        junit_xml=junit_xml,
        verbose=verbose,
        service_timeout=service_timeout,
    )


def _serial_keys(running: RunningVM) -> list[str]:
    keys_file = running.spec.run_dir / "host-keys"
    if not keys_file.is_file():
        raise UsageError("the VM's host keys are not known yet (binder-lite vm run waits)")
    return [k for k in keys_file.read_text().splitlines() if k]


def run_smoke(
    target: Target,
    site_file: Path,
    identity: Path | None,
    host_keys: paramiko.HostKeys,
    *,
    repo: str | None,
    junit_xml: Path | None,
    verbose: bool = False,
    service_timeout: float = SERVICE_TIMEOUT,
) -> None:
    """Run the checks against `target`, print the summary; SmokeError if any failed."""
    from binder_lite.site import load_site
    from binder_lite.smoke.runner import SmokeContext, run, summary
    from binder_lite.vm import ssh as vmssh

    # One connection first: a refused host key or login is one clear error, not seven.
    vmssh.connect(target, host_keys, identity).close()
    context = SmokeContext(
        target,
        host_keys,
        identity,
        # The service's part is all a server installed with bootstrap.sh needs; a
        # Guix System's file has its host and users too, and the checks use them.
        load_site(site_file, for_service=True),
        repo=repo,
        service_timeout=service_timeout,
    )
    status = run(context, junit_xml, verbose)
    click.echo(summary(context))
    if status != 0:
        raise SmokeError(
            f"smoke tests failed against {target}"
            + (f"; details in {junit_xml}" if junit_xml else "")
        )
