"""Which environment a repository asks for, as a Guix manifest.

Detection follows repo2docker's buildpacks, in their order and with their
combinations.  A `binder/` or `.binder/` folder, when present, is the only place
looked at (files at the root are reported as not read); otherwise the root.  A
repository's own manifest.scm (with channels.scm) wins; then, as repo2docker:

- Julia: Project.toml (with requirements.txt and the Python package files);
- R: runtime.txt `r-[version-]date`, or DESCRIPTION at the root (with install.R,
  requirements.txt and the Python package files);
- conda: environment.yml / .yaml, its `pip:` list included (requirements.txt,
  Pipfile, setup.py and runtime.txt are then not read);
- Pipfile.lock, else Pipfile (requirements3.txt with Python 2; requirements.txt and
  setup.py only through a `{path = "."}` entry);
- Python: requirements.txt, plus at the root setup.py / setup.cfg / pyproject.toml;
- without any, a default scientific Python environment.

install.R alone, which repo2docker reads only with an R runtime.txt, gives an R
environment too.  apt.txt is read with every kind.  Dockerfile, default.nix and
REQUIRE are not supported and are reported, as is every file that another one took
precedence over.  postBuild and start are scripts, not packages: they are reported
(or refused, see scripts.py) here and run inside the session's sandbox.

Every file is read through `repofiles` (inside the checkout, regular, bounded, UTF-8),
and what is repeated back (events, provenance, manifest comments) is either a name
that passed a strict grammar or a file and line number with binder-lite's own words.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

from binder_lite.errors import EnvironmentSpecError
from binder_lite.launch import (
    apps,
    conda,
    guixpackages,
    names,
    pipfile,
    pluto,
    pypackage,
    rpkg,
    scripts,
    system,
)
from binder_lite.launch.repofiles import RepoFile, RepositoryFileError, RepoTree
from binder_lite.launch.requirements import (
    MAX_ENTRIES,
    PyPI,
    Skipped,
    read_pip_lines,
    read_requirements,
)
from binder_lite.scheme import scm_comment, scm_str

__all__ = [
    "Environment",
    "FileReport",
    "Requirement",
    "Skipped",
    "detect",
    "render_manifest",
    "with_checked_names",
    "wrap_manifest",
]

# What every session needs besides the repository's own packages.
JUPYTER = ("jupyter", "python-ipykernel", "guix-jupyter")
DEFAULT_PACKAGES = ("python", "python-numpy", "python-pandas", "python-matplotlib", "python-scipy")
R_KERNEL = ("r", "r-irkernel")
JULIA = ("julia",)

GUIX = f"Guix {guixpackages.GUIX_VERSION[:3]}"
UNSUPPORTED = {
    "Dockerfile": "not supported: binder-lite builds no Docker images; "
    "the environment comes from the other files here, or is the default",
    "default.nix": "not supported: Nix is not run; write a Guix manifest.scm instead; "
    "the environment comes from the other files here, or is the default",
    "REQUIRE": "not supported: Julia's REQUIRE is obsolete (repo2docker refuses it too); "
    "use Project.toml",
}
_JULIA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
JULIA_DEPS = "a Julia project's [deps]"
FROM_PKG = "not in Guix: installed with Julia's Pkg when the session is built (Pluto)"

# Files repo2docker reads, in the order they are reported.
CONFIG_FILES = (
    "Project.toml",
    "JuliaProject.toml",
    "Manifest.toml",
    "runtime.txt",
    "DESCRIPTION",
    "install.R",
    "environment.yml",
    "environment.yaml",
    "Pipfile.lock",
    "Pipfile",
    "requirements.txt",
    "requirements3.txt",
    "setup.py",
    "setup.cfg",
    "pyproject.toml",
    "apt.txt",
    *UNSUPPORTED,
    *scripts.NAMES,
)
# Read only at the root, and only without a binder/ folder (as repo2docker).
ROOT_ONLY = frozenset({"DESCRIPTION", "setup.py", "setup.cfg", "pyproject.toml"})


@dataclass(frozen=True)
class Requirement:
    source: str  # as understood, rebuilt from checked parts (e.g. "numpy==1.26"), never raw
    guix: str | None  # the Guix package, or None
    note: str = ""  # a pin, or why there is no package
    closest: tuple[str, ...] = ()  # Guix names like the one looked for, when none was found


@dataclass(frozen=True)
class FileReport:
    """One configuration file: what was read from it and what it became, or why it
    was not read."""

    name: str  # relative to the checkout, e.g. "binder/environment.yml"
    read: bool
    reason: str = ""  # what the file is, or why it was not read
    requirements: tuple[Requirement, ...] = ()
    skipped: tuple[Skipped, ...] = ()
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Environment:
    # manifest | conda | Pipfile | requirements | setup.py | pyproject.toml | R | Julia | default
    kind: str
    config_dir: Path  # where the configuration was found
    manifest: str  # Scheme text of the manifest a session runs with
    channels: Path | None = None  # channels.scm next to a manifest.scm (inside the checkout)
    requirements: tuple[Requirement, ...] = ()
    skipped: tuple[Skipped, ...] = ()  # lines, entries and files that gave no package
    channels_text: str | None = None  # channels.scm's text, as read through repofiles
    origin: str = ""  # what a generated manifest was made from
    files: tuple[FileReport, ...] = ()  # file by file, for `binder-lite manifest --explain`
    kernel: str | None = None  # the kernel preselected ("ir"); None: the runtime's default
    shiny: apps.ShinyApp | None = None  # the Shiny app at the root, started with a session
    pluto: apps.Pluto | None = None  # a Pluto repository: served by the guix runtime

    @property
    def packages(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(r.guix for r in self.requirements if r.guix))

    @property
    def unavailable(self) -> tuple[Requirement, ...]:
        return tuple(r for r in self.requirements if r.guix is None)


def find_config_dir(tree: RepoTree) -> PurePosixPath:
    """`binder/` or `.binder/` when one is a directory inside the checkout, else the root.
    A `binder` symlink leading out of the checkout is refused, not skipped."""
    for name in ("binder", ".binder"):
        real = tree.directory(name)
        if real is not None:
            return real
    return PurePosixPath(".")


def config_dir(repo: Path) -> Path:
    return repo / find_config_dir(RepoTree(repo))


def detect(repo: Path) -> Environment:
    """The environment `repo` asks for (its files are read, never changed)."""
    tree = RepoTree(repo)
    where = find_config_dir(tree)
    manifest = _user_manifest(tree, where)
    if manifest is not None:
        return _with_apps(tree, manifest)
    return _with_apps(tree, _Build(tree, where).environment())


def _with_apps(tree: RepoTree, env: Environment) -> Environment:
    """`env` with the kernel it preselects, its Shiny app (whose packages a generated
    manifest gets) and its Pluto notebooks, each reported."""
    kernel = apps.R_KERNEL if env.kind == "R" else None
    reports: list[FileReport] = []
    if kernel is not None:
        reports.append(
            FileReport("(kernel)", True, f"R's kernel, IRkernel ({kernel}), preselected")
        )
    shiny = apps.find_shiny(tree)
    if shiny is not None:
        reports.append(_shiny_report(shiny, env.kind == "manifest"))
    deps = {r.source for f in env.files if f.reason == JULIA_DEPS for r in f.requirements}
    deps -= {"julia", "IJulia"}  # Julia itself, and the kernel it lacks: not [deps]
    pluto = apps.find_pluto(tree, _relative(tree, env.config_dir), deps)
    if pluto is not None:
        reports += _pluto_reports(pluto, env.kind == "manifest")
        env = _from_pkg(env, deps)
    if not reports:
        return env
    env = replace(env, files=(*env.files, *reports), kernel=kernel, shiny=shiny, pluto=pluto)
    if env.kind == "manifest":
        return env
    reqs = (*env.requirements, *(r for f in reports for r in f.requirements))
    skipped = (*env.skipped, *(Skipped(f.name, f.reason) for f in reports if not f.read))
    return replace(
        env,
        requirements=reqs,
        skipped=skipped,
        manifest=render_manifest(reqs, env.origin, skipped),
    )


def _from_pkg(env: Environment, deps: set[str]) -> Environment:
    """A Pluto repository's Julia packages that Guix lacks come from Julia's Pkg."""

    def pkg(r: Requirement) -> Requirement:
        if r.guix is None and r.source in deps:
            return replace(r, note=FROM_PKG, closest=())
        return r

    files = tuple(
        replace(f, requirements=tuple(map(pkg, f.requirements))) if f.reason == JULIA_DEPS else f
        for f in env.files
    )
    return replace(env, files=files, requirements=tuple(map(pkg, env.requirements)))


def _relative(tree: RepoTree, where: Path) -> PurePosixPath:
    return PurePosixPath(where.relative_to(tree.root)) if where != tree.root else PurePosixPath(".")


def _pluto_reports(found: apps.Pluto, own_manifest: bool) -> list[FileReport]:
    """Pluto's notebooks, and what serving them needs: Guix's julia and what Julia's
    Pkg needs; Pluto.jl and the project's packages come from Pkg (pluto.py)."""
    served = (
        f"a Pluto notebook, served at {pluto.VIEW} by the guix runtime "
        "(Pluto.jl installed with Julia's Pkg when the session is built)"
    )
    reports = [FileReport(name, True, served) for name in found.notebooks]
    what = "Pluto, with Julia's Pkg: " + ("[deps] name Pluto" if found.named else "Pluto added")
    if own_manifest:
        needs = ", ".join(pluto.PACKAGES)
        return [
            *reports,
            FileReport("(Pluto)", True, what, notes=(f"the manifest must provide {needs}",)),
        ]
    reqs = tuple(Requirement(p, p, "for Pluto") for p in pluto.PACKAGES)
    return [*reports, FileReport("(Pluto)", True, what, reqs)]


def _shiny_report(app: apps.ShinyApp, own_manifest: bool) -> FileReport:
    what = f"a Shiny app, started with the session and served at {apps.SHINY_VIEW}"
    if own_manifest:
        return FileReport(app.files[0], True, what, notes=("the manifest must provide r-shiny",))
    reqs = (
        Requirement("R", "r", "for the Shiny app"),
        Requirement("shiny", "r-shiny", "for the Shiny app"),
    )
    return FileReport(app.files[0], True, what, reqs)


def _user_manifest(tree: RepoTree, where: PurePosixPath) -> Environment | None:
    manifest = tree.read(where / "manifest.scm")
    if manifest is None:
        return None
    channels = tree.read(where / "channels.scm")
    return Environment(
        kind="manifest",
        config_dir=tree.root / where,
        manifest=wrap_manifest(manifest.path),
        channels=channels.path if channels else None,
        channels_text=channels.text if channels else None,
        files=(
            FileReport(manifest.name, True, "the repository's own Guix manifest"),
            *script_reports(tree, where),
        ),
    )


def script_reports(tree: RepoTree, where: PurePosixPath) -> list[FileReport]:
    """postBuild and start in `where`: what each does, or why it is refused."""
    reports = []
    for name in scripts.NAMES:
        try:
            found = scripts.check(tree, where / name)
        except RepositoryFileError as e:
            reports.append(FileReport(str(where / name), False, f"a script, refused: {e.reason}"))
            continue
        if found is not None:
            reports.append(FileReport(found.name, True, scripts.WHAT[name]))
    return reports


def wrap_manifest(manifest: Path) -> str:
    """The repository's manifest plus whichever of JUPYTER it lacks (by package name)."""
    return f""";; Generated by binder-lite: {scm_comment(manifest)} plus what Jupyter needs.
(use-modules (guix profiles) (gnu packages) (srfi srfi-1))

(define repository-manifest (load {scm_str(str(manifest.resolve()))}))

(define names (map manifest-entry-name (manifest-entries repository-manifest)))

(concatenate-manifests
 (list repository-manifest
       (specifications->manifest
        (remove (lambda (name) (member name names))
                (list {" ".join(scm_str(p) for p in JUPYTER)})))))
"""


def _requirement(source: str, found: names.Found, note: str = "") -> Requirement:
    """`source` as Guix has it, or why not, with the closest Guix names."""
    if found.guix:
        return Requirement(source, found.guix, note)
    if found.reason:
        return Requirement(source, None, found.reason)
    tried = found.tried
    missing = (
        f"{tried[0]} is not a Guix package"
        if len(tried) == 1
        else f"none of {', '.join(tried)} is a Guix package"
    )
    closest = dict.fromkeys(c for name in tried for c in guixpackages.closest(name))
    return Requirement(source, None, missing, tuple(closest)[:3])


def _pypi(p: PyPI, note: str = "") -> Requirement:
    notes = [note] if note else []
    if p.pin:
        notes.append(f"{p.pin} asked; Guix provides one version per channel")
    if p.url:
        notes.append("its URL is not used, Guix's package is")
    return _requirement(p.text, names.pypi(p.name), "; ".join(notes))


def _pinned(guix: str, asked: str, what: str) -> str:
    have = guixpackages.version(guix)
    return f"{what} {asked} asked; {GUIX} has {have}" if asked else ""


@dataclass
class _Build:
    """The files of one configuration folder, read in repo2docker's way."""

    tree: RepoTree
    where: PurePosixPath
    reports: list[FileReport] = field(default_factory=list)
    kind: str = "default"

    @property
    def binder_dir(self) -> bool:
        return self.where != PurePosixPath(".")

    def path(self, name: str) -> PurePosixPath:
        return self.where / name

    def shown(self, name: str) -> str:
        return str(self.path(name))

    def exists(self, name: str) -> bool:
        if name in ROOT_ONLY and self.binder_dir:
            return False
        return _present(self.tree, self.path(name))

    def read(self, name: str) -> RepoFile | None:
        return None if name in ROOT_ONLY and self.binder_dir else self.tree.read(self.path(name))

    def done(self, name: str) -> bool:
        return any(r.name == self.shown(name) for r in self.reports)

    def report(self, report: FileReport) -> None:
        self.reports.append(report)

    def environment(self) -> Environment:
        runtime = self._runtime()
        for name in ("Dockerfile", "default.nix"):
            if self.exists(name):
                self.report(FileReport(self.shown(name), False, UNSUPPORTED[name]))
        python_runtime = runtime is None or runtime.name == "python"
        if self.exists("Project.toml") or self.exists("JuliaProject.toml"):
            self._julia()
            self._python(runtime)
        elif (runtime and runtime.name == "r" and runtime.date) or self.exists("DESCRIPTION"):
            self._r(runtime)
            self._python(runtime)
        elif self.exists("environment.yml") or self.exists("environment.yaml"):
            self._conda(runtime)
        elif python_runtime and (self.exists("Pipfile") or self.exists("Pipfile.lock")):
            self._pipfile(runtime)
        elif self.exists("install.R"):
            self._r(runtime)
            self._python(runtime)
        else:
            self._python(runtime)
        self._apt()
        self.reports += script_reports(self.tree, self.where)
        self._not_read()
        return self._environment()

    # runtime.txt

    def _runtime(self) -> system.RuntimeTxt | None:
        file = self.read("runtime.txt")
        if file is None:
            return None
        runtime = system.read_runtime(file)
        if isinstance(runtime, Skipped):
            self.report(FileReport(file.name, False, runtime.reason))
            return None
        return runtime

    def _runtime_report(self, runtime: system.RuntimeTxt | None, used: bool) -> None:
        if runtime is None or self.done("runtime.txt"):
            return
        name = self.shown("runtime.txt")
        if not used:
            self.report(FileReport(name, False, f"{runtime.text}: not used with this environment"))
        elif runtime.name == "python" and runtime.major == "2":
            self.report(
                FileReport(name, True, "Python 2", (_python2(runtime.text),), _py2_skipped(name))
            )
        elif runtime.name == "python":
            req = Requirement(runtime.text, "python", _pinned("python", runtime.version, "Python"))
            self.report(FileReport(name, True, "the Python version", (req,)))
        elif runtime.name == "r":
            notes = [_pinned("r", runtime.version, "R")] if runtime.version else []
            if runtime.date:
                notes.append(f"CRAN snapshot of {runtime.date} asked; {GUIX}'s R packages are used")
            req = Requirement(runtime.text, "r", "; ".join(notes))
            self.report(FileReport(name, True, "the R version", (req,)))
        else:
            self.report(FileReport(name, False, f"{runtime.name}: not a runtime repo2docker knows"))

    # Python buildpack: requirements.txt, the package files at the root

    def _python(self, runtime: system.RuntimeTxt | None) -> None:
        if self.kind == "default":
            self.kind = "requirements" if self.exists("requirements.txt") else self.kind
        self._requirements_txt("requirements.txt")
        if runtime and runtime.name == "python" and runtime.major == "2":
            self._requirements_txt("requirements3.txt", "for the notebook server")
        if not self.binder_dir:
            for declared in pypackage.read_package(self.tree, self.where):
                if self.kind == "default":
                    self.kind = declared.file.real.name
                self._declared(declared)
        self._runtime_report(runtime, used=runtime is None or runtime.name in ("python", "r"))

    def _requirements_txt(self, name: str, note: str = "") -> None:
        parsed = read_requirements(self.tree, self.shown(name))
        if parsed is None:
            return
        reqs = tuple(_pypi(p, note) for p in parsed.packages)
        self.report(
            FileReport(self.shown(name), True, "pip requirements", reqs, tuple(parsed.skipped))
        )

    def _declared(self, declared: pypackage.Declared, why: str = "") -> None:
        reqs = tuple(_pypi(e) for e in declared.entries if isinstance(e, PyPI))
        skipped = tuple(e for e in declared.entries if isinstance(e, Skipped))
        reason = f"the package's {declared.what}" + (f" ({why})" if why else "")
        if self.done(declared.file.name):
            return
        self.report(FileReport(declared.file.name, True, reason, reqs, skipped))

    # conda

    def _conda(self, runtime: system.RuntimeTxt | None) -> None:
        self.kind = "conda"
        file = self.read("environment.yml") or self.read("environment.yaml")
        assert file is not None
        env = conda.read_environment(file)
        reqs: list[Requirement] = []
        uses_r = False
        for dep in env.deps:
            if dep.name.lower() == "python" and dep.version.split(".")[0] == "2":
                reqs.append(_python2(dep.text))
            elif dep.name.lower() in ("python", "r-base"):
                what = "Python" if dep.name.lower() == "python" else "R"
                guix = "python" if what == "Python" else "r"
                reqs.append(Requirement(dep.text, guix, _pinned(guix, dep.version, what)))
            else:
                reqs.append(_conda_requirement(dep))
            uses_r = uses_r or dep.name.lower().startswith("r-")
        if uses_r:  # repo2docker adds R's kernel to a conda environment with R
            reqs.append(Requirement("r-irkernel", "r-irkernel", "R kernel, as repo2docker adds"))
            if not any(r.guix == "r" for r in reqs):
                reqs.append(Requirement("r-base", "r", "R itself, for its packages"))
        skipped = list(env.skipped)
        if env.pip:
            parsed = read_pip_lines(self.tree, file, list(env.pip))
            reqs += [_pypi(p, "from its pip: list") for p in parsed.packages]
            skipped += parsed.skipped
        notes = (
            (f"channels: {', '.join(env.channels)} (Guix's packages are used)",)
            if env.channels
            else ()
        )
        python2 = any(r.guix == "python2" for r in reqs)
        skipped += _py2_skipped(file.name) if python2 else ()
        self.report(
            FileReport(file.name, True, "a conda environment", tuple(reqs), tuple(skipped), notes)
        )
        for other in ("environment.yml", "environment.yaml"):
            if self.exists(other) and not self.done(other):
                self.report(FileReport(self.shown(other), False, f"not read: {file.name} is used"))
        self._runtime_report(runtime, used=False)

    # Pipfile

    def _pipfile(self, runtime: system.RuntimeTxt | None) -> None:
        self.kind = "Pipfile"
        lock = self.read("Pipfile.lock")
        file = lock or self.read("Pipfile")
        assert file is not None
        env = pipfile.read_lock(file) if lock else pipfile.read_pipfile(file)
        reqs: list[Requirement] = []
        skipped: list[Skipped] = []
        local: list[pypackage.Declared] = []
        for entry in env.entries:
            if isinstance(entry, PyPI):
                reqs.append(_pypi(entry))
            elif isinstance(entry, Skipped):
                skipped.append(entry)
            else:
                local += self._local_package(file, entry, skipped)
        python2 = env.python.split(".")[0] == "2" or bool(runtime and runtime.major == "2")
        if env.python and not python2:
            reqs.insert(
                0,
                Requirement(
                    f"python {env.python}", "python", _pinned("python", env.python, "Python")
                ),
            )
        if python2:
            version = env.python or (runtime.version if runtime else "")
            reqs.insert(0, _python2(f"python {version}"))
            skipped += _py2_skipped(file.name)
        what = (
            "Pipfile.lock (default and develop)"
            if lock
            else "Pipfile ([packages] and [dev-packages])"
        )
        self.report(FileReport(file.name, True, what, tuple(reqs), tuple(skipped)))
        for declared in local:
            self._declared(declared, f"through {file.name}'s path entry")
        if lock and self.exists("Pipfile"):
            self.report(
                FileReport(
                    self.shown("Pipfile"), False, "not read: Pipfile.lock is used, as pipenv does"
                )
            )
        if python2:
            self._requirements_txt("requirements3.txt", "for the notebook server")
        self._runtime_report(runtime, used=True)

    def _local_package(
        self, file: RepoFile, entry: pipfile.LocalPackage, skipped: list[Skipped]
    ) -> list[pypackage.Declared]:
        """A `{path = ...}` entry: that folder's package files (inside the checkout)."""
        folder = PurePosixPath(posixpath.normpath(file.real.parent / entry.path))
        declared = pypackage.read_package(self.tree, folder)
        if not declared:
            skipped.append(
                Skipped(entry.where, "a local package with no setup.py or pyproject.toml")
            )
        return declared

    # R

    def _r(self, runtime: system.RuntimeTxt | None) -> None:
        self.kind = "R"
        kernel = tuple(Requirement(p, p, "R kernel") for p in R_KERNEL)
        description = self.read("DESCRIPTION")
        install_r = self.read("install.R")
        for file, reader, what in (
            (
                description,
                rpkg.description_packages,
                "an R package's Depends, Imports and LinkingTo",
            ),
            (install_r, rpkg.install_r_packages, "R packages install.R installs"),
        ):
            if file is None:
                continue
            packages, skipped = reader(file)
            first: dict[str, rpkg.RPackage] = {}
            for package in packages:  # one requirement a name, however often it is named
                first.setdefault(package.name, package)
            packages = list(first.values())
            reqs = [*kernel, *(_r_requirement(p) for p in packages)]
            notes = (
                ("the package itself is not installed: load it with devtools::load_all()",)
                if file is description
                else ()
            )
            self.report(FileReport(file.name, True, what, tuple(reqs), tuple(skipped), notes))
            kernel = ()
        if kernel:  # an R runtime.txt alone
            self.report(
                FileReport("(R kernel)", True, "R's kernel, as repo2docker installs", kernel)
            )

    # Julia

    def _julia(self) -> None:
        self.kind = "Julia"
        file = self.read("JuliaProject.toml") or self.read("Project.toml")
        assert file is not None
        data = pypackage.load_toml(file)
        compat = data.get("compat")
        asked = compat.get("julia") if isinstance(compat, dict) else None
        version = asked.lstrip("=^~ ") if isinstance(asked, str) and _versionish(asked) else ""
        reqs = [Requirement("julia", "julia", _pinned("julia", version, "Julia") or "Julia")]
        ijulia = names.julia("IJulia")
        reqs.append(
            Requirement("IJulia", ijulia.guix, "Julia kernel")
            if ijulia.guix
            else Requirement(
                "IJulia", None, f"{GUIX} has no IJulia: no Julia kernel; julia runs in the terminal"
            )
        )
        skipped: list[Skipped] = []
        deps = data.get("deps", {})
        for i, name in enumerate(deps if isinstance(deps, dict) else (), start=1):
            if _JULIA_NAME.fullmatch(name):
                reqs.append(_requirement(name, names.julia(name)))
            else:
                skipped.append(Skipped(f"{file.name}: [deps] entry {i}", "not understood"))
        self.report(FileReport(file.name, True, JULIA_DEPS, tuple(reqs), tuple(skipped)))
        manifest = self.read("Manifest.toml")
        if manifest is not None:
            self.report(
                FileReport(
                    manifest.name,
                    False,
                    "its exact versions are not applied (Guix has one version per channel)",
                )
            )

    # apt.txt

    def _apt(self) -> None:
        file = self.read("apt.txt")
        if file is None:
            return
        packages, skipped = system.read_apt(file)
        reqs = tuple(_requirement(p.name, names.debian(p.name)) for p in packages)
        self.report(
            FileReport(file.name, True, "Debian packages, as Guix names", reqs, tuple(skipped))
        )

    # what was not read, and why

    def _not_read(self) -> None:
        main = next((r.name for r in self.reports if r.read), "")
        for name in CONFIG_FILES:
            if self.done(name) or not self.exists(name):
                continue
            if name in UNSUPPORTED:
                reason = UNSUPPORTED[name]
            elif name == "requirements3.txt":
                reason = "not read: only used with a Python 2 kernel, as in repo2docker"
            else:
                reason = f"not read: {main} decides the environment, as in repo2docker"
            self.report(FileReport(self.shown(name), False, reason))
        if self.binder_dir:
            for name in CONFIG_FILES:
                if not any(r.name == name for r in self.reports) and _present(self.tree, name):
                    reason = (
                        f"not read: the {self.where}/ folder is used instead, as in repo2docker"
                    )
                    self.report(FileReport(name, False, reason))

    def _environment(self) -> Environment:
        reqs = [r for report in self.reports for r in report.requirements]
        if self.kind == "default":
            packages = tuple(Requirement(p, p, "default environment") for p in DEFAULT_PACKAGES)
            default = FileReport("(no environment file)", True, "the default environment", packages)
            self.reports.insert(0, default)
            reqs = [*default.requirements, *reqs]
        skipped = [s for report in self.reports for s in report.skipped]
        skipped += [Skipped(r.name, r.reason) for r in self.reports if not r.read]
        read = [
            r.name
            for r in self.reports
            if r.read and not r.name.startswith("(") and r.reason not in scripts.WHAT.values()
        ]
        origin = ", ".join(read) or "no environment file found"
        if len(reqs) + len(skipped) > MAX_ENTRIES:
            raise EnvironmentSpecError(
                f"{read[0] if read else self.where}: more than {MAX_ENTRIES} "
                "entries; binder-lite reads at most that many"
            )
        return Environment(
            self.kind,
            self.tree.root / self.where,
            render_manifest(reqs, origin, skipped),
            requirements=tuple(reqs),
            skipped=tuple(skipped),
            origin=origin,
            files=tuple(self.reports),
        )


def _present(tree: RepoTree, name: str | PurePosixPath) -> bool:
    """Whether something is at `name`.  A symlink leading out of the checkout counts:
    a file that is read is then refused by `read`, one that is only reported is reported."""
    try:
        return tree.resolve(name) is not None
    except RepositoryFileError:
        return True


def _python2(source: str) -> Requirement:
    return Requirement(
        source, "python2", f"{GUIX} has Python 2 but no Python 2 kernel: notebooks run on Python 3"
    )


def _py2_skipped(name: str) -> tuple[Skipped, ...]:
    return (
        Skipped(
            name,
            f"a Python 2 kernel: {GUIX} has none; notebooks run on Python 3 (python2 is installed)",
        ),
    )


def _conda_requirement(dep: conda.CondaDep) -> Requirement:
    note = f"{dep.spec} asked; Guix provides one version per channel" if dep.spec else ""
    return _requirement(dep.text, names.conda(dep.name), note)


def _r_requirement(p: rpkg.RPackage) -> Requirement:
    note = f"{p.how} in install.R; {GUIX}'s package is used" if p.how else ""
    return _requirement(p.name, names.r(p.name), note)


def _versionish(text: str) -> bool:
    return bool(re.fullmatch(r"[=^~ ]*\d+(?:\.\d+)*", text))


def render_manifest(
    reqs: Iterable[Requirement], origin: str, skipped: Iterable[Skipped] = ()
) -> str:
    """A manifest for `reqs` plus JUPYTER; pins, missing packages and skipped lines
    become comments."""
    reqs = tuple(reqs)
    lines = [f";; Generated by binder-lite from {scm_comment(origin)}.", ";;"]
    for r in reqs:
        target = r.guix or "(nothing)"
        note = f": {r.note}" if r.note else ""
        if r.closest:
            note += f" (closest: {', '.join(r.closest)})"
        lines.append(f";;   {scm_comment(r.source)} -> {scm_comment(target)}{scm_comment(note)}")
    lines += [f";;   {scm_comment(s.where)}: skipped, {scm_comment(s.reason)}" for s in skipped]
    packages = list(dict.fromkeys([*(r.guix for r in reqs if r.guix), *JUPYTER]))
    body = "\n".join(f"  {scm_str(p)}" for p in packages)
    return "\n".join(lines) + f"\n(specifications->manifest\n (list\n{body}))\n"


def with_checked_names(env: Environment, available: Callable[[list[str]], set[str]]) -> Environment:
    """`env` with packages Guix lacks turned into reported notes (generated manifests only)."""
    if env.kind == "manifest":
        return env
    known = available([r.guix for r in env.requirements if r.guix])

    def checked(r: Requirement) -> Requirement:
        if r.guix is None or r.guix in known:
            return r
        return Requirement(r.source, None, f"{r.guix} is not a Guix package")

    reqs = tuple(checked(r) for r in env.requirements)
    files = tuple(
        replace(f, requirements=tuple(checked(r) for r in f.requirements)) for f in env.files
    )
    return replace(
        env,
        manifest=render_manifest(reqs, env.origin, env.skipped),
        requirements=reqs,
        files=files,
    )
