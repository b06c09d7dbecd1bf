"""How a session's Jupyter runs: in a Guix container, or from this Python."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from binder_lite.errors import JupyterError
from binder_lite.guix import guix_program
from binder_lite.launch.sandbox import RUN_DIR, WORK_DIR

# Inside the container the repository is always here, whatever its host path.
CONTAINER_WORK_DIR = WORK_DIR
GUIX_DAEMON_SOCKET = "/var/guix/daemon-socket"


@dataclass(frozen=True)
class ServerSpec:
    """What a Jupyter server is asked to do, independent of where it runs."""

    port: int | None  # on 127.0.0.1, or None for a server on a Unix socket
    base_url: str  # "/" or "/s/<id>/"
    kernel: str
    root_dir: str  # as the server sees it
    socket: str | None = None  # the Unix socket it listens on, as the server sees it

    @property
    def origin(self) -> str:
        """Where the server answers, on the host (the host part is what Jupyter is sent
        as Host over a Unix socket too: it only serves local host names)."""
        return f"http://127.0.0.1:{self.port or 80}{self.base_url}"


def jupyter_options(spec: ServerSpec, flavour: str) -> list[str]:
    """Command-line options for Notebook 6 ("classic") or Jupyter Server 2 ("server").

    The token is not among them: it is passed as $JUPYTER_TOKEN, which both read,
    so it never shows in `ps`.
    """
    app = "NotebookApp" if flavour == "classic" else "ServerApp"
    if spec.socket is not None:
        # Sandboxed: no address on any network, only a socket the front connects to.
        listen = [f"--{app}.sock={spec.socket}"]
    else:
        listen = ["--ip=127.0.0.1", f"--port={spec.port}", f"--{app}.port_retries=0"]
    options = [
        "--no-browser",
        *listen,
        f"--{app}.base_url={spec.base_url}",
        f"--{app}.{'notebook_dir' if flavour == 'classic' else 'root_dir'}={spec.root_dir}",
        f"--MultiKernelManager.default_kernel_name={spec.kernel}",
    ]
    # Jupyter refuses to run as root without it; in a sandbox, root is the sandbox's own.
    if os.geteuid() == 0 or spec.socket is not None:
        options.append("--allow-root")
    return options


def local_flavour() -> tuple[str, list[str]]:
    """The Jupyter installed with this Python: (flavour, argv prefix)."""
    if importlib.util.find_spec("notebook") is not None:
        major = int(importlib.metadata.version("notebook").split(".")[0])
        return ("server" if major >= 7 else "classic"), [sys.executable, "-m", "notebook"]
    if importlib.util.find_spec("jupyter_server") is not None:
        # The API and kernels work; there is no notebook page without `notebook`.
        return "server", [sys.executable, "-m", "jupyter_server"]
    raise JupyterError(
        "no Jupyter in this Python environment: pip install notebook, or use --runtime guix"
    )


def local_argv(spec: ServerSpec) -> list[str]:
    flavour, prefix = local_flavour()
    return [*prefix, *jupyter_options(spec, flavour)]


@dataclass(frozen=True)
class GuixPaths:
    """Where `guix shell` finds the session's files: host paths when it runs on the
    host, the sandbox's (sandbox.GUIX_STAGE) when it runs inside one."""

    repo: Path
    manifest: Path
    channels: Path | None
    run_dir: Path | None  # sandboxed: the socket's folder; None: Jupyter on a TCP port
    network: bool  # share the network namespace guix runs in


def guix_argv(
    spec: ServerSpec,
    paths: GuixPaths,
    program: str | None = None,
    before: Sequence[str] = (),
    command: Sequence[str] | None = None,
    options: Sequence[str] = (),
) -> list[str]:
    """`guix shell --container …` running the classic notebook of Guix 1.5, after
    `before` (apps.app_prefix: a Shiny app started beside it, in the container; a
    repository's start script), or `command` instead (a repository's postBuild);
    `options`: more of `guix shell`'s (pluto.guix_options: a Julia depot).

    Sandboxed (`paths.run_dir`), Jupyter listens on a socket in `run_dir`, and the
    container shares the sandbox's network only when the session may go out; otherwise
    it has a network namespace of its own."""
    prefix = [program or guix_program()]
    if paths.channels is not None:
        prefix += ["time-machine", f"--channels={paths.channels}", "--"]
    shares = [f"--share={paths.run_dir}={RUN_DIR}"] if paths.run_dir is not None else []
    return [
        *prefix,
        "shell",
        "--container",
        *(["--network"] if paths.network else []),
        "--no-cwd",
        f"--share={paths.repo}={CONTAINER_WORK_DIR}",
        *shares,
        # The Guix kernel builds each notebook's environment through the daemon.
        f"--expose={GUIX_DAEMON_SOCKET}",
        "--preserve=^JUPYTER_TOKEN$",
        *options,
        f"--manifest={paths.manifest}",
        "--",
        *(
            command
            if command is not None
            else [*before, "jupyter", "notebook", *jupyter_options(spec, "classic")]
        ),
    ]


def guix_available() -> bool:
    program = guix_program()
    return shutil.which(program) is not None or Path(program).exists()
