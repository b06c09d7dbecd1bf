"""Turning other ecosystems' package names into Guix package names."""

from __future__ import annotations

import re

# PyPI names whose Guix package is not simply python-<normalised name>.
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
    "jupyterlab": None,
    "tensorflow": None,
    "pip": None,
    "setuptools": None,
    "wheel": None,
}

PYPI_REASONS = {
    "jupyterlab": "JupyterLab is not packaged in Guix 1.5; the classic notebook is used",
    "tensorflow": "TensorFlow is not packaged in Guix 1.5",
    "pip": "packaging tool, not needed in a Guix environment",
    "setuptools": "packaging tool, not needed in a Guix environment",
    "wheel": "packaging tool, not needed in a Guix environment",
}

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


def normalise_pypi(name: str) -> str:
    """PEP 503 normalisation: lowercase, runs of -_. become one dash."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pypi_to_guix(name: str) -> str | None:
    """The Guix package for a PyPI project name (None: not available, see PYPI_REASONS)."""
    normal = normalise_pypi(name)
    if normal in PYPI_EXCEPTIONS:
        return PYPI_EXCEPTIONS[normal]
    if normal.startswith("python-"):  # python-dateutil is python-dateutil in Guix too
        return normal
    return f"python-{normal}"


def r_to_guix(name: str) -> str | None:
    if name in R_BASE:
        return None
    return "r-" + name.lower().replace(".", "-")


def julia_to_guix(name: str) -> str:
    return "julia-" + name.lower()
