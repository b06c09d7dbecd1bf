"""Turning other ecosystems' package names into Guix package names.

A name becomes a Guix package only when the pinned Guix has it (guixpackages'
snapshot): the usual spellings are tried in order, then the tables below, which hold
what no rule finds.  A name that maps to nothing says which names were looked for, so
that the closest Guix names can be offered.  Every name in these tables is checked
against the snapshot by the tests.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from binder_lite.launch.guixpackages import has

PACKAGING = "packaging tool, not needed in a Guix environment"
NO_JUPYTERLAB = "JupyterLab is not packaged in Guix 1.5; the classic notebook is used"

# PyPI names whose Guix package is not python-<normalised name>.
# None: not packaged in Guix 1.5 (or not needed there); the reason is reported.
PYPI_EXCEPTIONS: dict[str, str | None] = {
    "jupyter": "jupyter",
    "sklearn": "python-scikit-learn",
    "opencv-python": "opencv",
    "opencv-python-headless": "opencv",
    "opencv-contrib-python": "opencv",
    "torch": "python-pytorch",
    "pytorch": "python-pytorch",
    "psycopg2-binary": "python-psycopg2",
    "beautifulsoup": "python-beautifulsoup4",
    "jupyterlab": None,
    "tensorflow": None,
    "pip": None,
    "setuptools": None,
    "wheel": None,
    "pipenv": None,
}

PYPI_REASONS = {
    "jupyterlab": NO_JUPYTERLAB,
    "tensorflow": "TensorFlow is not packaged in Guix 1.5",
    "pip": PACKAGING,
    "setuptools": PACKAGING,
    "wheel": PACKAGING,
    "pipenv": PACKAGING,
}

# conda package names (conda-forge, defaults) whose Guix package no rule finds.
CONDA_ALIASES: dict[str, str | None] = {
    "python": "python",
    "r-base": "r",
    "r-essentials": None,
    "r-recommended": None,
    "compilers": "gcc-toolchain",
    "c-compiler": "gcc-toolchain",
    "cxx-compiler": "gcc-toolchain",
    "gcc": "gcc-toolchain",
    "gxx": "gcc-toolchain",
    "fortran-compiler": "gfortran-toolchain",
    "gfortran": "gfortran-toolchain",
    "libgfortran": "gfortran-toolchain",
    "libgfortran5": "gfortran-toolchain",
    "nodejs": "node",
    "openjdk": "openjdk",
    "matplotlib-base": "python-matplotlib",
    "pytorch": "python-pytorch",
    "pytorch-cpu": "python-pytorch",
    "py-xgboost": "python-xgboost",
    "graphviz": "graphviz",
    "python-graphviz": "python-graphviz",
    "libnetcdf": "netcdf",
    "hdf5": "hdf5",
    "gdal": "gdal",
    "proj": "proj",
    "geos": "geos",
    "pandoc": "pandoc",
    "git": "git",
    "cmake": "cmake",
    "make": "make",
    "jupyterlab": None,
    "tensorflow": None,
    "pip": None,
    "setuptools": None,
    "wheel": None,
    "conda": None,
    "mamba": None,
    "nb_conda_kernels": None,
}

CONDA_REASONS = {
    "r-essentials": "a conda bundle of R packages; list the R packages wanted",
    "r-recommended": "a conda bundle of R packages; list the R packages wanted",
    "jupyterlab": NO_JUPYTERLAB,
    "tensorflow": "TensorFlow is not packaged in Guix 1.5",
    "pip": PACKAGING,
    "setuptools": PACKAGING,
    "wheel": PACKAGING,
    "conda": PACKAGING,
    "mamba": PACKAGING,
    "nb_conda_kernels": "conda's kernel discovery, not needed: the session's kernels are Guix's",
}

# Debian package names (apt.txt) whose Guix package no rule finds.
DEBIAN_ALIASES: dict[str, str | None] = {
    "build-essential": "gcc-toolchain",
    "gcc": "gcc-toolchain",
    "g++": "gcc-toolchain",
    "gfortran": "gfortran-toolchain",
    "nodejs": "node",
    "npm": "node",
    "default-jdk": "openjdk",
    "default-jre": "openjdk",
    "python3": "python",
    "python3-pip": None,
    "python3-dev": "python",
    "r-base": "r",
    "r-base-core": "r",
    "r-base-dev": "r",
    "libssl-dev": "openssl",
    "libcurl4-openssl-dev": "curl",
    "libcurl4-gnutls-dev": "curl",
    "zlib1g-dev": "zlib",
    "libgl1": "mesa",
    "libgl1-mesa-glx": "mesa",
    "libgl1-mesa-dev": "mesa",
    "libglib2.0-0": "glib",
    "libglib2.0-dev": "glib",
    "libsm6": "libsm",
    "libxext6": "libxext",
    "libxrender1": "libxrender",
    "libudunits2-dev": "udunits",
    "libmagick++-dev": "imagemagick",
    "libmagickwand-dev": "imagemagick",
    "libpq-dev": "postgresql",
    "libsqlite3-dev": "sqlite",
    "libfftw3-dev": "fftw",
    "libopenblas-dev": "openblas",
    "libblas-dev": "openblas",
    "liblapack-dev": "lapack",
    "libzmq3-dev": "zeromq",
    "libboost-all-dev": "boost",
    "libeigen3-dev": "eigen",
    "libhdf5-dev": "hdf5",
    "libnetcdf-dev": "netcdf",
    "poppler-utils": "poppler",
    "texlive": "texlive-scheme-basic",
    "texlive-latex-base": "texlive-scheme-basic",
    "texlive-latex-extra": "texlive-collection-latexextra",
    "texlive-xetex": "texlive-xetex",
}

DEBIAN_REASONS = {"python3-pip": PACKAGING}

# R packages that come with R itself.
R_BASE = frozenset(
    {
        "R",
        "base",
        "compiler",
        "datasets",
        "graphics",
        "grDevices",
        "grid",
        "methods",
        "parallel",
        "splines",
        "stats",
        "stats4",
        "tcltk",
        "tools",
        "utils",
    }
)
PART_OF_R = "part of R itself"


@dataclass(frozen=True)
class Found:
    """What a name became: a Guix package, or None with why (`reason`: deliberately
    nothing; else `tried`: the Guix names looked for, none of which Guix has)."""

    guix: str | None
    tried: tuple[str, ...] = ()
    reason: str = ""


def _first(candidates: list[str]) -> Found:
    tried = tuple(dict.fromkeys(candidates))
    for name in tried:
        if has(name):
            return Found(name)
    return Found(None, tried)


def normalise_pypi(name: str) -> str:
    """PEP 503 normalisation: lowercase, runs of -_. become one dash."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pypi(name: str) -> Found:
    """The Guix package for a PyPI project: python-<name> as PEP 503 normalises it,
    or with its dots kept (python-ruamel.yaml), or the name itself if it already
    starts with python- (python-dateutil)."""
    normal = normalise_pypi(name)
    if normal in PYPI_EXCEPTIONS:
        guix = PYPI_EXCEPTIONS[normal]
        return Found(guix, reason="" if guix else PYPI_REASONS.get(normal, "not in Guix"))
    dotted = re.sub(r"[-_]+", "-", name).lower()
    candidates = [f"python-{normal}", f"python-{dotted}"]
    if normal.startswith("python-"):
        candidates.insert(0, normal)
    return _first(candidates)


def pypi_to_guix(name: str) -> str | None:
    """The Guix package for a PyPI project name, None when Guix has none."""
    return pypi(name).guix


def conda(name: str) -> Found:
    """The Guix package for a conda package: the alias table, R's r-*, then the PyPI
    rule (most conda names are PyPI names), then the name itself (C libraries, tools)."""
    lower = name.lower()
    if lower in CONDA_ALIASES:
        guix = CONDA_ALIASES[lower]
        return Found(guix, reason="" if guix else CONDA_REASONS.get(lower, "not in Guix"))
    if lower.startswith("r-"):
        return _first([lower])
    python = pypi(lower)
    if python.guix or python.reason:
        return python
    return _first([*python.tried, lower])


def debian(name: str) -> Found:
    """The Guix package for a Debian package (apt.txt): the alias table, then the name
    itself, python3-x as python-x, r-cran-x as r-x, and libx-dev as libx or x."""
    if name in DEBIAN_ALIASES:
        guix = DEBIAN_ALIASES[name]
        return Found(guix, reason="" if guix else DEBIAN_REASONS.get(name, "not in Guix"))
    candidates = [name]
    for prefix, guix_prefix in (("python3-", "python-"), ("r-cran-", "r-"), ("r-bioc-", "r-")):
        if name.startswith(prefix):
            candidates.insert(0, guix_prefix + name.removeprefix(prefix))
    stem = re.sub(r"-(dev|bin|utils|tools)$", "", name)
    candidates += [stem, re.sub(r"[0-9.]+$", "", stem)]
    if stem.startswith("lib"):
        candidates += [stem.removeprefix("lib"), re.sub(r"[0-9.]+$", "", stem.removeprefix("lib"))]
    return _first([c for c in candidates if c])


def r(name: str) -> Found:
    if name in R_BASE:
        return Found(None, reason=PART_OF_R)
    return _first(["r-" + name.lower().replace(".", "-"), "r-" + name.lower()])


def r_to_guix(name: str) -> str | None:
    found = r(name)
    return found.guix or (found.tried[0] if found.tried else None)


def julia(name: str) -> Found:
    return _first(["julia-" + name.lower()])


def julia_to_guix(name: str) -> str:
    return "julia-" + name.lower()
