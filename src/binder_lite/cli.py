"""The `binder-lite` command.  It only parses arguments, calls the stages and turns
typed errors into messages and exit codes, once, here."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from binder_lite import __version__
from binder_lite.errors import BinderLiteError, UsageError

if TYPE_CHECKING:  # the stages are imported when a command runs: start-up stays fast
    from binder_lite.guix import ImageCommand
    from binder_lite.site.model import ImageType, Site

IMAGE_TYPES = (
    "iso9660",
    "uncompressed-iso9660",
    "qcow2",
    "qcow2-gpt",
    "mbr-raw",
    "mbr-hybrid-raw",
    "efi-raw",
    "installer",  # an iso9660 image that installs the site (installer_image.py)
)

site_argument = click.argument(
    "site_file", metavar="SITE", type=click.Path(dir_okay=False, path_type=Path)
)


def _images_dir_option(help_text: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """-o/--output-dir: where `image build` copies images and `image list` finds them."""
    return click.option(
        "-o",
        "--output-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=Path("images"),
        show_default=True,
        help=help_text,
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="binder-lite")
@click.option("--debug", is_flag=True, help="Log every command run and show tracebacks.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """binder-lite: reproducible notebooks on GNU Guix.

    Describe a binder-lite machine in one YAML site file, check it, render it
    into a Guix operating-system and build branded images from it.
    """
    ctx.obj = {"debug": debug}
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(message)s")


@cli.group()
def site() -> None:
    """Create and check site files."""


@site.command("init")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path), default="site.yaml")
@click.option("--name", default="binder-lite", show_default=True, help="The site's name.")
@click.option(
    "--ssh-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Public key for the administrator [default: the first of ~/.ssh/id_*.pub].",
)
@click.option("--force", is_flag=True, help="Replace PATH if it exists.")
def site_init(path: Path, name: str, ssh_key: Path | None, force: bool) -> None:
    """Write an annotated starter site file to PATH (default site.yaml)."""
    from binder_lite.render import write_files
    from binder_lite.starter import find_public_key, render_starter

    if path.exists() and not force:
        raise UsageError(f"{path} exists; pass --force to replace it")
    key = ssh_key.read_text(encoding="utf-8").strip() if ssh_key else find_public_key(Path.home())
    write_files({path.name: render_starter(path, name, key)}, path.parent)
    click.echo(f"wrote {path}")
    if key is None:
        click.echo("no SSH public key found: add one under users before building", err=True)
    click.echo(f"next: edit it, then `binder-lite site check {path}`")


@site.command("check")
@site_argument
@click.option(
    "--guix",
    "with_guix",
    is_flag=True,
    help="Also have the real Guix lower every image type to a derivation.",
)
def site_check(site_file: Path, with_guix: bool) -> None:
    """Validate SITE and report every problem with its line and column."""
    site = _load(site_file)
    types = ", ".join(str(i.type) for i in site.images)
    if with_guix:
        for image in site.images:
            drv = _derivation(site, image.type, grafts=False)
            click.echo(f"{image.type}: {drv}")
    click.echo(f"{site_file}: ok ({site.site.name!r}, images: {types})")


@cli.command()
@site_argument
@click.option(
    "-o",
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write system.scm and one <slug>-<type>.scm per image type here.",
)
@click.option("--print", "print_", is_flag=True, help="Print the result instead of writing it.")
@click.option(
    "--type",
    "image_type",
    type=click.Choice(IMAGE_TYPES),
    help="With --print: the configuration for this image type [default: system.scm].",
)
def render(site_file: Path, output: Path | None, print_: bool, image_type: str | None) -> None:
    """Render SITE into Guix operating-system files."""
    from binder_lite import render as r
    from binder_lite.site.model import ImageType

    if print_ == (output is not None):
        raise UsageError("give exactly one of -o/--output DIR and --print")
    site = _load(site_file)
    if print_:
        text = (
            r.render_image_config(site, ImageType(image_type))
            if image_type
            else r.render_system(site)
        )
        click.echo(text, nl=False)
        return
    assert output is not None
    for path in r.write_files(r.render_all(site), output):
        click.echo(path)


@cli.group()
def image() -> None:
    """Build Guix System images from a site file."""


@image.command("build")
@site_argument
@click.option(
    "-t",
    "--type",
    "types",
    multiple=True,
    type=click.Choice(IMAGE_TYPES),
    help="Image type to build; repeatable [default: the site's images].",
)
@click.option("--size", help="Image size, e.g. 20GiB [default: the site's, else Guix's guess].")
@click.option(
    "-n",
    "--dry-run",
    is_flag=True,
    help="Print the Guix command and the derivation Guix returns; build nothing.",
)
@click.option(
    "--grafts/--no-grafts",
    default=True,
    show_default=True,
    help="Apply security grafts (turn off only for tests and offline checks).",
)
@click.option(
    "-w",
    "--work-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("build"),
    show_default=True,
    help="Where rendered files go.",
)
@_images_dir_option("Where images are copied to.")
def image_build(
    site_file: Path,
    types: tuple[str, ...],
    size: str | None,
    dry_run: bool,
    grafts: bool,
    work_dir: Path,
    output_dir: Path,
) -> None:
    """Build the images SITE describes with `guix system image`, copy each out of the
    store to OUTPUT_DIR/<slug>-<type>.<ext> with .sha256 and .json files beside it."""
    from binder_lite.site.checks import Invalid, image_size
    from binder_lite.site.model import ImageType

    site = _load(site_file)
    if size is not None:
        try:
            size = image_size(size)
        except Invalid as e:
            raise UsageError(f"--size: {e.message}") from None
    wanted = [ImageType(t) for t in types] or [i.type for i in site.images]
    for image_type in wanted:
        if dry_run:
            _dry_run(site, image_type, work_dir, size=size, grafts=grafts)
        else:
            _build(site, image_type, work_dir, output_dir, size=size, grafts=grafts)


def _dry_run(
    site: Site, image_type: ImageType, work_dir: Path, *, size: str | None, grafts: bool
) -> None:
    from binder_lite import guix

    command = _image_command(site, image_type, work_dir, size=size, grafts=grafts)
    click.echo(f"{image_type}: would run:\n  {command.shell()}")
    sys.stdout.flush()  # before Guix writes to stderr
    started = time.monotonic()
    drv = guix.derivation(command)
    click.echo(f"  derivation: {drv} ({time.monotonic() - started:.1f} s)")


def _build(
    site: Site,
    image_type: ImageType,
    work_dir: Path,
    output_dir: Path,
    *,
    size: str | None,
    grafts: bool,
) -> None:
    from binder_lite import build

    def progress(line: str) -> None:
        click.echo(line, err=True)

    built = build.build(
        site, image_type, output_dir, work_dir, size=size, grafts=grafts, progress=progress
    )
    if built.up_to_date:
        click.echo(f"{built.image}: up to date (derivation {built.derivation} unchanged)")
    else:
        click.echo(f"{built.image}: built in {built.seconds:.0f} s")


@image.command("list")
@_images_dir_option("Where images were copied to.")
def image_list(output_dir: Path) -> None:
    """Show the images built into OUTPUT_DIR."""
    import datetime

    from binder_lite import build

    listing = build.list_images(output_dir)
    for problem in listing.unreadable:
        click.echo(f"skipped {problem}", err=True)
    if not listing.images:
        click.echo(f"no images in {output_dir}")
        return
    for found in listing.images:
        when = datetime.datetime.fromtimestamp(found.build.built_at)
        state = "" if found.present else "  (missing)"
        click.echo(
            f"{found.path}  {found.meta.type}  {found.build.nbytes / 2**20:,.0f} MiB  "
            f"{when:%Y-%m-%d %H:%M}  {found.build.derivation}{state}"
        )


def _work_dir_option(f: Callable[..., None]) -> Callable[..., None]:
    return click.option(
        "-w",
        "--work-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=Path("build"),
        show_default=True,
        help="Where rendered files go (WORK_DIR/<slug>/).",
    )(f)


@cli.command()
@site_argument
@click.option(
    "-n",
    "--dry-run",
    is_flag=True,
    help="Guix's own dry run: load the machines and list them; send nothing.",
)
@click.option(
    "-r", "--roll-back", is_flag=True, help="Switch every machine back to its previous system."
)
@click.option(
    "--known-hosts",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Host keys the site file does not give [default: ~/.ssh/known_hosts].",
)
@_work_dir_option
def deploy(
    site_file: Path, dry_run: bool, roll_back: bool, known_hosts: Path | None, work_dir: Path
) -> None:
    """Send SITE's system to the machines of its `deploy:` list with `guix deploy`
    (through `guix time-machine` when the site pins channels)."""
    from binder_lite import deploy as d
    from binder_lite.site import load_site

    known = known_hosts or Path.home() / ".ssh" / "known_hosts"
    site = load_site(site_file, known_hosts=known)
    command = d.DeployCommand(site, d.write_deploy(site, work_dir), dry_run, roll_back)
    click.echo(f"$ {command.shell()}")
    sys.stdout.flush()  # before Guix writes
    d.execute(command.argv(), "guix deploy", lambda line: click.echo(line, err=True))


@cli.command()
@site_argument
@click.option(
    "-n", "--dry-run", is_flag=True, help="Show what Guix would build and change; change nothing."
)
@_work_dir_option
def reconfigure(site_file: Path, dry_run: bool, work_dir: Path) -> None:
    """Switch this machine, a Guix System, to SITE's system with
    `guix system reconfigure` (through `guix time-machine` when the site pins channels)."""
    from binder_lite import deploy as d

    d.check_guix_system()
    site = _load(site_file)
    command = d.ReconfigureCommand(site, d.write_system(site, work_dir), dry_run)
    click.echo(f"$ {command.shell()}")
    sys.stdout.flush()
    d.execute(command.argv(), "guix system reconfigure", lambda line: click.echo(line, err=True))


RUNTIMES = ("guix", "local")


def _launch_options(f: Callable[..., None]) -> Callable[..., None]:
    """The options `guix-notebook-launcher` and `binder-lite launch` share."""
    options = [
        click.argument("source"),
        click.option("--ref", help="Branch, tag or commit [default: the remote's HEAD]."),
        click.option(
            "--open",
            "open_path",
            metavar="PATH",
            help="Notebook or file to show [default: index.ipynb, else the first].",
        ),
        click.option(
            "--runtime",
            type=click.Choice(RUNTIMES),
            default="guix",
            show_default=True,
            help="guix: Jupyter in a Guix container; local: this Python's Jupyter.",
        ),
        click.option("--kernel", help="Kernel to preselect [default: guix, or python3 locally]."),
        click.option(
            "--port", type=click.IntRange(1, 65535), help="Port on 127.0.0.1 [default: a free one]."
        ),
        click.option("--no-browser", is_flag=True, help="Do not open a browser."),
        click.option("--timeout", type=float, help="Seconds to wait for Jupyter."),
        click.option(
            "--cache-dir",
            type=click.Path(file_okay=False, path_type=Path),
            help="Repository cache [default: ~/.cache/binder-lite].",
        ),
        click.option("-q", "--quiet", is_flag=True, help="Print only the URLs."),
        click.option(
            "--network",
            type=click.Choice(("outbound", "none")),
            default="outbound",
            show_default=True,
            help="What the session may reach: the internet (never this machine's "
            "loopback or private networks), or nothing.",
        ),
        click.option(
            "--no-sandbox",
            "unsandboxed",
            is_flag=True,
            help="Run Jupyter unconfined, as you, on this machine's network (for "
            "repositories you trust).",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


@cli.command("launch")
@_launch_options
def launch_command(**options: Any) -> None:
    """Run the notebooks of a git repository (SOURCE: a path, file://, https:// or
    git:// URL) in Jupyter, with its environment from manifest.scm, requirements.txt,
    ...; print the URLs and serve until Ctrl-C, which stops everything it started."""
    from binder_lite.launch.cli import run_launcher

    run_launcher(**options)


@cli.command("manifest")
@click.argument("repo", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--write", is_flag=True, help="Write manifest.scm into the repository.")
@click.option(
    "--check/--no-check",
    default=True,
    show_default=True,
    help="Check every name against the Guix at hand, when there is one.",
)
@click.option(
    "--explain",
    is_flag=True,
    help="Print, file by file, what was read, what it became, and what was skipped and why.",
)
def manifest_command(repo: Path, write: bool, check: bool, explain: bool) -> None:
    """Print the Guix manifest for REPO's environment (the files repo2docker reads:
    environment.yml, Pipfile, requirements.txt, setup.py, pyproject.toml, runtime.txt,
    apt.txt, DESCRIPTION, install.R, Project.toml), or --write it."""
    from binder_lite.launch.cli import run_manifest

    run_manifest(repo, write=write, check=check, explain=explain)


@cli.command()
@site_argument
@click.option("--port", type=click.IntRange(1, 65535), help="[default: the site's binder.port]")
@click.option("--address", default="0.0.0.0", show_default=True, help="Address to listen on.")
@click.option(
    "--runtime",
    type=click.Choice((*RUNTIMES, "slurm")),
    help="Where sessions run [default: the site's binder.runtime].",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Its sessions, caches, database [default: binder.state_dir].",
)
@click.option(
    "--allow-local-repos",
    is_flag=True,
    help="Development only: admit file:// URLs, loopback and private hosts.",
)
@click.option("--max-sessions", type=click.IntRange(1), help="[default: binder.max_sessions]")
@click.option(
    "--idle-timeout",
    type=click.IntRange(1),
    help="Idle seconds before stopping [default: binder.idle_timeout].",
)
@click.option(
    "--cull-interval",
    type=float,
    default=60.0,
    show_default=True,
    help="Seconds between checks for idle sessions.",
)
@click.option(
    "--secure-cookies/--no-secure-cookies",
    default=False,
    show_default=True,
    help="Mark cookies Secure (when served over HTTPS).",
)
@click.option(
    "--no-sandbox",
    "unsandboxed",
    is_flag=True,
    help="Development only: sessions run unconfined, as this user, on the "
    "host's network (refused with logins or more than one session).",
)
def serve(
    site_file: Path,
    port: int | None,
    address: str,
    runtime: str | None,
    state_dir: Path | None,
    allow_local_repos: bool,
    max_sessions: int | None,
    idle_timeout: int | None,
    cull_interval: float,
    secure_cookies: bool,
    unsandboxed: bool,
) -> None:
    """Run the binder-lite web service for SITE (a site file, or the file the
    binder-lite service type writes): a page to launch repositories, BinderHub's
    API, and a proxy to every session."""
    import asyncio
    import dataclasses

    from binder_lite.site import load_site
    from binder_lite.site.model import Runtime
    from binder_lite.web.app import ServeOptions
    from binder_lite.web.app import serve as run_service
    from binder_lite.web.auth import public_url_for

    logging.getLogger("binder_lite").setLevel(logging.INFO)
    site = load_site(site_file, for_service=True)
    binder = dataclasses.replace(
        site.binder,
        max_sessions=max_sessions or site.binder.max_sessions,
        idle_timeout=idle_timeout or site.binder.idle_timeout,
    )
    site = dataclasses.replace(site, binder=binder)
    options = ServeOptions(
        port=port or site.binder.port,
        address=address,
        runtime=Runtime(runtime) if runtime else site.binder.runtime,
        state_dir=(state_dir or Path(site.binder.state_dir)).absolute(),
        allow_local_repos=allow_local_repos,
        cull_interval=cull_interval,
        secure_cookies=secure_cookies,
        sandboxed=not unsandboxed,
    )
    if unsandboxed:
        _check_unsandboxed(site)
    # OAuth redirects come from binder.public_url, never from a request's Host header;
    # without it, logins work only on a loopback-only service (or serve refuses).
    public_url = public_url_for(site.binder, options.address, options.port)
    site = dataclasses.replace(site, binder=dataclasses.replace(site.binder, public_url=public_url))
    asyncio.run(run_service(site, options))


def _check_unsandboxed(site: Site) -> None:
    """An unconfined session can read the service's secrets and every other session:
    acceptable for one developer on their own machine, never for other people."""
    if site.binder.auth.provider.value != "none":
        raise UsageError(
            "--no-sandbox cannot be used with logins (binder.auth): "
            "sessions would reach everyone's sessions and the secrets"
        )
    if site.binder.max_sessions > 1:
        raise UsageError(
            "--no-sandbox runs one session at most: add --max-sessions 1 "
            "(unconfined sessions can reach each other)"
        )


def _register_stage_commands() -> None:
    from binder_lite.installcmd import bundle_command, install_command
    from binder_lite.remote import remote
    from binder_lite.smoke.command import smoke
    from binder_lite.vm.commands import vm

    cli.add_command(vm)
    cli.add_command(smoke)
    cli.add_command(remote)
    cli.add_command(install_command)
    cli.add_command(bundle_command)


_register_stage_commands()


def _load(site_file: Path) -> Site:
    from binder_lite.site import load_site

    return load_site(site_file)


def _image_command(
    site: Site, image_type: ImageType, work_dir: Path, *, size: str | None, grafts: bool
) -> ImageCommand:
    from binder_lite import guix, render

    config = work_dir.absolute() / site.site.slug / render.image_config_name(site, image_type)
    render.write_files({config.name: render.render_image_config(site, image_type)}, config.parent)
    return guix.ImageCommand(site, image_type, config, size=size, grafts=grafts)


def _derivation(site: Site, image_type: ImageType, *, grafts: bool) -> str:
    from binder_lite import guix

    command = _image_command(site, image_type, Path("build"), size=None, grafts=grafts)
    return guix.derivation(command)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: run the CLI; report binder-lite's errors without a traceback."""
    _main(cli, "binder-lite", argv)


def launcher_main(argv: Sequence[str] | None = None) -> None:
    """Entry point of `guix-notebook-launcher`: `binder-lite launch` on its own."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    _main(launch_command, "guix-notebook-launcher", argv)


def _main(command: click.Command, name: str, argv: Sequence[str] | None) -> None:
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    try:
        code = command.main(args=argv, prog_name=name, standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except BinderLiteError as e:
        if debug:
            raise
        click.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(141)
    if isinstance(code, int) and code:
        sys.exit(code)
