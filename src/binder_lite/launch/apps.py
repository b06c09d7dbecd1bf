"""What a session opens besides Python notebooks: R's kernel, a Shiny app, and the
page BinderHub's `urlpath` asks for.

A Shiny app is `app.R`, or `ui.R` with `server.R`, at the repository's root (where a
repository's content is; binder/ holds configuration), or in the folder a launch
URL's `urlpath=shiny/<folder>/` names.  It starts with the session, in the session's
sandbox, beside Jupyter and under the same limits, and listens on a Unix socket in
the session's run directory (`shiny.sock`, next to Jupyter's); the front serves it at
/s/<id>/shiny/.  On launch rather than on a first request: starting it later would
need a way for the front to start processes inside a sandbox, which nothing else
needs, and the app is ready when its page is first asked for.

`urlpath` values (BinderHub's) become a launch's target, `open_path`: a file inside
the repository (`lab/tree/x.ipynb`, `tree/x`, `notebooks/x.ipynb`…, as before), or a
view, spelled with a leading slash, which no file path inside a repository has:
`/lab`, `/tree`, `/shiny/<folder>/`, `/pluto/`, `/pluto/<notebook>.jl`.  What no
session here can serve (`rstudio`) is refused when the launch is asked for, with the
reason.

Pluto notebooks (`*.jl` at the root starting with Pluto's header), or a Julia project
whose [deps] name Pluto, make a Pluto repository: the guix runtime serves Pluto at
/s/<id>/pluto/ (see pluto.py); the local runtime has no Julia and says so, and a launch
whose urlpath asks for Pluto there fails with that reason.
"""

from __future__ import annotations

import importlib.util
import os
import re
import stat
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Protocol

from binder_lite.errors import (
    CommandError,
    EnvironmentSpecError,
    LaunchError,
    ToolNotFoundError,
)
from binder_lite.launch import guixpackages
from binder_lite.launch.repofiles import RepositoryFileError, RepoTree
from binder_lite.launch.runtime import local_flavour
from binder_lite.launch.sandbox import RUN_DIR, WORK_DIR
from binder_lite.run import run

R_KERNEL = "ir"  # IRkernel's kernel name, in Debian's r-cran-irkernel and Guix's r-irkernel
SHINY_SOCKET = "shiny.sock"
SHINY_VIEW = "shiny/"  # where the app is, below the session's base URL
PLUTO_HEADER = "### A Pluto.jl notebook ###"
MAX_SCANNED = 1000  # entries of the root looked at for Pluto notebooks
MAX_JL = 200  # of which `*.jl` files opened (each only for its first line)
# Notebook names repeated back (events, URLs): others are served, but not by name.
NOTEBOOK_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,200}\.jl")
JULIA_PROJECT_FILES = ("JuliaProject.toml", "Project.toml", "JuliaManifest.toml", "Manifest.toml")

_GUIX = f"Guix {guixpackages.GUIX_VERSION[:3]}"
PLUTO_REFUSED = (
    "Pluto notebooks are not served by the local runtime: Debian has no Julia "
    f"(the guix runtime serves them, with {_GUIX}'s julia "
    f"{guixpackages.version('julia') or '(none)'} and Pluto.jl from Julia's package servers)"
)
PLUTO_FRONTED = "Pluto is served by the web service's sessions (binder-lite serve) only"
RSTUDIO_REFUSED = (
    "RStudio is not served here: neither Guix nor Debian packages it; R notebooks open "
    "with IRkernel, and a Shiny app with urlpath=shiny/"
)
LOCAL_R = "apt-get install r-base-core r-cran-irkernel r-cran-shiny"

# Runs the app, then Jupyter: `sh -c WRAPPER sh CODE FOLDER SOCKET jupyter…`.  The app
# goes without Jupyter's token (it is not Jupyter's to hold), and its output joins
# Jupyter's log.
_WRAPPER = '(unset JUPYTER_TOKEN; exec Rscript -e "$1" "$2" "$3") & shift 3; exec "$@"'
_RUN_APP = (
    "a <- commandArgs(TRUE); shiny::runApp(a[1], launch.browser = FALSE, "
    'port = structure(a[2], mask = strtoi("077", 8L)))'
)


@dataclass(frozen=True)
class ShinyApp:
    folder: str  # relative to the checkout: "." for its root
    files: tuple[str, ...]  # app.R, or ui.R and server.R, as found

    @property
    def inside(self) -> str:
        """The folder as the session sees it."""
        return WORK_DIR if self.folder == "." else f"{WORK_DIR}/{self.folder}"


def find_shiny(tree: RepoTree, folder: str = ".") -> ShinyApp | None:
    """The Shiny app in `folder`, when one is there.  Its files are read through
    repofiles: a symlink out of the checkout is refused, by name."""
    real = tree.directory(folder)
    if real is None:
        return None
    where = PurePosixPath(folder)
    if tree.read(where / "app.R") is not None:
        return ShinyApp(str(real), (str(where / "app.R"),))
    ui, server = tree.read(where / "ui.R"), tree.read(where / "server.R")
    if ui is not None and server is not None:
        return ShinyApp(str(real), (ui.name, server.name))
    return None


@dataclass(frozen=True)
class Pluto:
    """A Pluto repository: what made it one, and the Julia project Pkg completes."""

    notebooks: tuple[str, ...]  # Pluto notebooks at the root (names of NOTEBOOK_NAME)
    project: tuple[str, ...]  # the Julia project's files, relative to the checkout
    named: bool  # the project's [deps] name Pluto


def find_pluto(tree: RepoTree, where: PurePosixPath, deps: Iterable[str]) -> Pluto | None:
    """The Pluto repository `tree` is, if it is one: Pluto notebooks at its root, or
    `deps` (its Julia project's, read from `where`) naming Pluto."""
    notebooks = pluto_notebooks(tree)
    named = "Pluto" in deps
    if not notebooks and not named:
        return None
    project = tuple(str(where / n) for n in JULIA_PROJECT_FILES if _is_file(tree, where / n))
    return Pluto(notebooks, project, named)


def _is_file(tree: RepoTree, name: PurePosixPath) -> bool:
    try:
        real = tree.resolve(name)
    except RepositoryFileError:
        return False  # leading out: detection says so where it reads the file
    return real is not None and stat.S_ISREG(os.lstat(tree.root / real).st_mode)


def pluto_notebooks(tree: RepoTree) -> tuple[str, ...]:
    """The `*.jl` files at the root that start with Pluto's header: at most MAX_SCANNED
    entries looked at, MAX_JL files opened, regular files only (no symlink followed,
    no FIFO waited on), and only their first bytes read."""
    try:
        with os.scandir(tree.root) as entries:
            names = sorted(e.name for _, e in zip(range(MAX_SCANNED), entries, strict=False))
    except OSError:
        return ()
    candidates = [n for n in names if NOTEBOOK_NAME.fullmatch(n)][:MAX_JL]
    return tuple(n for n in candidates if _starts_with_header(tree.root / n))


def _starts_with_header(path: Path) -> bool:
    header = PLUTO_HEADER.encode()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return False
        return f.read(len(header) + 3).removeprefix(b"\xef\xbb\xbf").startswith(header)


# -- urlpath -----------------------------------------------------------------------

_FILE_PREFIXES = ("lab/tree/", "tree/", "notebooks/", "edit/", "doc/tree/")


def from_urlpath(urlpath: str | None) -> str | None:
    """BinderHub's `urlpath` as a launch's target (see the module's docstring); None
    for the default page.  Raises LaunchError for what cannot be served here."""
    if not urlpath:
        return None
    path = urlpath.split("?", 1)[0].split("#", 1)[0].lstrip("/")
    first = path.split("/", 1)[0]
    if first == "pluto":
        return pluto_target(path[len("pluto") :].strip("/"))
    if first == "rstudio":
        raise LaunchError(f"urlpath={first}: {RSTUDIO_REFUSED}")
    if first == "shiny":
        return shiny_target(path[len("shiny") :].strip("/"))
    if path.rstrip("/") in ("lab", "tree"):
        return "/" + path.rstrip("/")
    for prefix in _FILE_PREFIXES:
        if path.startswith(prefix):
            return path[len(prefix) :] or None
    return None


def shiny_target(folder: str) -> str:
    return "/shiny/" + (_checked_folder(folder) + "/" if folder else "")


def pluto_target(notebook: str) -> str:
    """`/pluto/`, or `/pluto/<notebook>.jl` for a notebook at the root, by a name of
    NOTEBOOK_NAME (which no path, query or control character passes)."""
    if not notebook:
        return "/pluto/"
    if not NOTEBOOK_NAME.fullmatch(notebook):
        raise LaunchError(
            f"pluto/{notebook[:100]!r}: the notebook must be a .jl file at the repository's "
            "root, named with letters, digits and _.+-"
        )
    return f"/pluto/{notebook}"


def _checked_folder(folder: str) -> str:
    pure = PurePosixPath(folder)
    if (
        pure.is_absolute()
        or ".." in pure.parts
        or "\\" in folder
        or any(ord(c) < 0x20 for c in folder)
    ):
        raise LaunchError(f"shiny/{folder}: the app's folder must be a path inside the repository")
    return str(pure)


def is_view(target: str | None) -> bool:
    return target is not None and target.startswith("/")


def normalise_view(target: str) -> str:
    """A view target, checked again (it may come from the API or the store)."""
    if target in ("/lab", "/tree"):
        return target
    if target.startswith("/shiny/"):
        return shiny_target(target[len("/shiny/") :].strip("/"))
    if target.startswith("/pluto/"):
        return pluto_target(target[len("/pluto/") :])
    raise LaunchError(
        f"{target!r}: the file to open must be a path inside the repository "
        "(or one of the pages /lab, /tree, /shiny/…, /pluto/…)"
    )


def view_path(target: str) -> str:
    """The URL path, below the session's base URL, of a view target.  A notebook's,
    `pluto/<notebook>.jl`, is Pluto's `open?path=` for the front (web/proxy.py)."""
    if target.startswith("/shiny/"):
        return SHINY_VIEW
    return target.lstrip("/")


def pluto_notebook(target: str | None) -> str | None:
    """The notebook a `/pluto/<notebook>.jl` target names, else None."""
    if target is None or not target.startswith("/pluto/"):
        return None
    return target[len("/pluto/") :] or None


def shiny_folder(target: str | None) -> str | None:
    """The app folder a `/shiny/…` target names ("." for the root), else None."""
    if target is None or not target.startswith("/shiny/"):
        return None
    return target[len("/shiny/") :].strip("/") or "."


# -- what a session runs --------------------------------------------------------------


def chosen_app(tree: RepoTree, found: ShinyApp | None, target: str | None) -> ShinyApp | None:
    """The app a session runs: the one urlpath names (it must be there), else the one
    at the root, if any."""
    folder = shiny_folder(target)
    if folder is None:
        return found
    app = find_shiny(tree, folder)
    if app is None:
        raise EnvironmentSpecError(
            f"urlpath=shiny/{'' if folder == '.' else folder + '/'}: no Shiny app there "
            "(app.R, or ui.R and server.R)"
        )
    return app


def served_pluto(
    found: Pluto | None, target: str | None, local: bool, fronted: bool, say: Callable[[str], None]
) -> Pluto | None:
    """The Pluto a session serves: the repository's, in a fronted session of the guix
    runtime.  A urlpath asking for Pluto where it cannot be served fails with the
    reason; a Pluto repository launched there says the reason in the progress."""
    asked = target is not None and target.startswith("/pluto/")
    reason = PLUTO_REFUSED if local else None if fronted else PLUTO_FRONTED
    if asked and reason is not None:
        raise LaunchError(f"urlpath={target.lstrip('/') if target else ''}: {reason}")
    if asked and found is None:
        raise EnvironmentSpecError(
            "urlpath=pluto: this repository has no Pluto notebook at its root, and no "
            "Project.toml whose [deps] name Pluto"
        )
    notebook = pluto_notebook(target)
    if found is not None and notebook is not None and notebook not in found.notebooks:
        raise EnvironmentSpecError(
            f"urlpath=pluto/{notebook}: no Pluto notebook of that name at the repository's root"
        )
    if found is not None and reason is not None:
        for name in found.notebooks or ("Project.toml",):
            say(f"{name}: {reason}")
        return None
    return found


def app_prefix(app: ShinyApp | None) -> list[str]:
    """What goes before Jupyter's command so that the app starts beside it."""
    if app is None:
        return []
    return ["/bin/sh", "-c", _WRAPPER, "sh", _RUN_APP, app.inside, f"{RUN_DIR}/{SHINY_SOCKET}"]


def for_launch(
    repo: Path,
    env: Launchable,
    target: str | None,
    local: bool,
    fronted: bool,
    say: Callable[[str], None],
) -> tuple[str | None, ShinyApp | None, str | None]:
    """The kernel a session preselects, the app it starts and the target it opens,
    checked: the app urlpath names must be there; the local runtime must have R where R
    is asked for.  Apps run only in a sandbox whose run directory the web service's
    front connects to (`fronted`): the launcher relays Jupyter alone.
    A JupyterLab where there is none (Guix has only the classic notebook) opens the
    tree instead, and `say`s so."""
    app = chosen_app(RepoTree(repo), env.shiny, target)
    if not fronted:
        if shiny_folder(target) is not None:
            raise LaunchError(
                "Shiny apps are served by the web service's sessions (binder-lite serve) only"
            )
        app = None
    if local:
        check_local(env.kernel, app)
    if target == "/lab" and not _has_lab(local):
        say("urlpath=lab: this session's Jupyter has no JupyterLab; the tree opens instead")
        target = "/tree"
    return env.kernel, app, target


class Launchable(Protocol):
    """What `for_launch` reads of a detected environment (detect.Environment)."""

    @property
    def kernel(self) -> str | None: ...

    @property
    def shiny(self) -> ShinyApp | None: ...


def _has_lab(local: bool) -> bool:
    if not local:
        return False
    try:
        flavour, _ = local_flavour()
    except LaunchError:
        return False
    return flavour == "server" and importlib.util.find_spec("jupyterlab") is not None


def check_local(kernel: str | None, app: ShinyApp | None) -> None:
    """The local runtime runs the host's R: say plainly what is missing."""
    if kernel == R_KERNEL and not any(
        (Path(d) / "kernels" / R_KERNEL / "kernel.json").is_file() for d in _jupyter_data_dirs()
    ):
        raise EnvironmentSpecError(
            f"an R repository: this machine has no IRkernel for Jupyter ({LOCAL_R})"
        )
    if app is not None and not _has_shiny():
        raise EnvironmentSpecError(
            f"{app.files[0]}: a Shiny app, and this machine has no R with shiny ({LOCAL_R})"
        )


def _jupyter_data_dirs() -> list[str]:
    """Where the sandboxed Jupyter looks for kernels: this Python's prefix and the
    system's folders (a user's own folders are not in the sandbox)."""
    return [f"{sys.prefix}/share/jupyter", "/usr/local/share/jupyter", "/usr/share/jupyter"]


def _has_shiny() -> bool:
    try:
        found = run(["Rscript", "-e", 'cat(nzchar(system.file(package = "shiny")))'], timeout=60)
    except (ToolNotFoundError, CommandError):
        return False
    return found.strip() == "TRUE"
