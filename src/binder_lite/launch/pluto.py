"""Pluto notebooks in the guix runtime: Julia's packages installed at build time, and
Pluto served beside Jupyter.

Guix has julia but not Pluto.jl, so Julia's own package manager installs it: once per
commit, before the session starts, in the session's sandbox and Guix container (with
its network, limits and time bound, as a postBuild runs), into a Julia depot of its
own.  The repository's Julia project (Project.toml, or JuliaProject.toml, with its
Manifest.toml) is copied into that depot as the environment `binder`, Pluto is added
when the project does not name it, and the environment is instantiated and
precompiled.  The depot is kept in the cache under a key of the repository, commit,
environment and Guix, like postBuild's files, and sessions see it read-only (a depot
of their own, in the container's /tmp, is stacked in front for what a notebook adds).

Pluto's server listens on TCP only.  It listens on 127.0.0.1 of the session's own
network namespace (the sandbox's, or the container's own), which nothing outside the
session reaches, and socat relays a Unix socket in the session's run directory to it,
next to Jupyter's; the web service's front serves that socket at /s/<id>/pluto/ as it
serves a Shiny app, after its own authentication.  Pluto's secret is therefore off:
the front's check of the session's token is the one door, as for Jupyter.

Everything passed to Julia and to the shell is a constant of this module or a path of
a fixed name: Julia reads its arguments from ARGS, never from the text of its code.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath

from binder_lite.launch.sandbox import GUIX_STAGE, RUN_DIR, WORK_DIR
from binder_lite.launch.scripts import Script

SOCKET = "pluto.sock"  # in the session's run directory, next to Jupyter's
VIEW = "pluto/"  # where Pluto is, below the session's base URL
PORT = 1234  # Pluto's, on the loopback of the session's own network namespace
DEPOT = "/var/lib/binder-julia"  # the kept depot, in the container
DEPOT_STAGE = f"{GUIX_STAGE}/julia"  # ... and in the sandbox around Guix
ENVIRONMENT = f"{DEPOT}/environments/binder"  # the repository's project, instantiated
PACKAGES = ("julia", "git-minimal", "nss-certs", "socat")  # what the manifest needs
CACHE_FORMAT = 1  # part of the key: a change of what is kept makes new keys
NO_NETWORK = (
    "Pluto: Julia's packages (Pluto.jl among them) are installed from Julia's package "
    "servers on a commit's first launch, and this service's sessions have no network "
    "(binder.session_network: none)"
)

# What a build step's output lines and failures are prefixed with (see postbuild.run).
BUILD_LOG = "julia-build.log"  # its output, next to postbuild.log (not overwritten by it)
BUILD_STEP = Script("Julia packages (Pkg)", PurePosixPath("."), "")

# Pkg's environment variables and certificates, from the container's profile.
_JULIA_ENV = (
    'c="$GUIX_ENVIRONMENT/etc/ssl/certs/ca-certificates.crt"; '
    'export JULIA_SSL_CA_ROOTS_PATH="$c" SSL_CERT_FILE="$c" GIT_SSL_CAINFO="$c"; '
    'export JULIA_LOAD_PATH="@:@stdlib${JULIA_LOAD_PATH:+:$JULIA_LOAD_PATH}"; '
)

# `sh -c BUILD sh DEPOT CODE ENVIRONMENT [FROM TO]…`: the depot written, the project's
# files copied into its environment, which Pkg then completes.
_BUILD_SH = (
    _JULIA_ENV + 'export JULIA_DEPOT_PATH="$1"; code=$2; shift 2; exec julia -e "$code" "$@"'
)
_BUILD_JL = """\
import Pkg
env = ARGS[1]
mkpath(env)
for (from, to) in Iterators.partition(ARGS[2:end], 2)
    cp(from, joinpath(env, to); force = true, follow_symlinks = true)
end
Pkg.activate(env)
haskey(Pkg.project().dependencies, "Pluto") || Pkg.add("Pluto")
Pkg.instantiate()
Pkg.precompile()
"""

# `sh -c SERVE sh DEPOT ENVIRONMENT PORT SOCKET CODE jupyter…`: socat and Pluto start
# beside Jupyter (neither gets Jupyter's token), whose command follows.
_SERVE_SH = (
    "d=$1 e=$2 port=$3 sock=$4 code=$5; shift 5; "
    '(unset JUPYTER_TOKEN; exec socat "UNIX-LISTEN:$sock,fork,unlink-early,mode=600" '
    '"TCP4:127.0.0.1:$port") & '
    f"(unset JUPYTER_TOKEN; {_JULIA_ENV}"
    'export JULIA_DEPOT_PATH="${TMPDIR:-/tmp}/julia:$d" JULIA_PROJECT="$e"; '
    f'cd {WORK_DIR} && exec julia -e "$code" "$port") & '
    'exec "$@"'
)
_SERVE_JL = """\
import Pluto
Pluto.run(; host = "127.0.0.1", port = parse(Int, ARGS[1]), launch_browser = false,
          require_secret_for_access = false, require_secret_for_open_links = false,
          dismiss_update_notification = true)
"""

_PROJECT_NAMES = {
    "JuliaProject.toml": "Project.toml",
    "Project.toml": "Project.toml",
    "JuliaManifest.toml": "Manifest.toml",
    "Manifest.toml": "Manifest.toml",
}

Say = Callable[[str], None]


def project_files(names: tuple[str, ...]) -> list[str]:
    """The (from, to) pairs of the build's arguments: each of the repository's Julia
    project files (relative to the checkout, fixed names) as the container sees it,
    and its name in the depot's environment.  JuliaProject.toml wins over
    Project.toml, as in Pkg."""
    pairs: dict[str, str] = {}
    for name in sorted(names, key=lambda n: not PurePosixPath(n).name.startswith("Julia")):
        to = _PROJECT_NAMES[PurePosixPath(name).name]
        pairs.setdefault(to, f"{WORK_DIR}/{name}")
    return [word for to, frm in pairs.items() for word in (frm, to)]


def build_command(project: tuple[str, ...]) -> list[str]:
    """What the build step runs in the container (instead of Jupyter)."""
    return [
        "/bin/sh",
        "-c",
        _BUILD_SH,
        "sh",
        DEPOT,
        _BUILD_JL,
        ENVIRONMENT,
        *project_files(project),
    ]


def server_prefix() -> list[str]:
    """What goes before Jupyter's command so that Pluto starts beside it."""
    return [
        "/bin/sh",
        "-c",
        _SERVE_SH,
        "sh",
        DEPOT,
        ENVIRONMENT,
        str(PORT),
        f"{RUN_DIR}/{SOCKET}",
        _SERVE_JL,
    ]


def guix_options(writable: bool) -> list[str]:
    """`guix shell` options giving the container the depot: to write, for the build."""
    return [f"--{'share' if writable else 'expose'}={DEPOT_STAGE}={DEPOT}"]


def bwrap_binds(depot: Path, writable: bool) -> list[str]:
    """bubblewrap options putting the depot where `guix shell` takes it from."""
    return ["--bind" if writable else "--ro-bind", str(depot), DEPOT_STAGE]


# What of a session's provenance the depot depends on.
IDENTITY = ("repository", "commit", "manifest", "channels", "guix_version", "runtime")


def depot_dir(cache: Path, provenance: Mapping[str, object]) -> Path:
    """Where the depot of a session with this provenance is kept."""
    return cache / "julia" / cache_key({k: _text(provenance.get(k)) for k in IDENTITY})


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def cache_key(identity: dict[str, str | None]) -> str:
    """The key a depot is kept under: `identity` (repository, commit, manifest,
    channels, Guix, runtime)."""
    data = json.dumps({"format": CACHE_FORMAT, "what": "julia-depot", **identity}, sort_keys=True)
    return hashlib.sha256(data.encode()).hexdigest()


def ensure(kept: Path, build: Callable[[Path], None], say: Say) -> None:
    """The depot at `kept`: there already, or `build` into a new folder, kept when it
    succeeds (a failure raises, and nothing is kept)."""
    if kept.is_dir():
        os.utime(kept)  # used now: the cache's trimming takes it last
        say("Pluto: Julia's packages already installed for this commit")
        return
    partial = kept.parent / f".{kept.name}.{secrets.token_hex(4)}"
    partial.mkdir(mode=0o700, parents=True)
    try:
        say("Pluto: installing Julia's packages with Pkg (from Julia's package servers)")
        build(partial)
        with contextlib.suppress(OSError):  # another launch kept the same already
            partial.rename(kept)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
