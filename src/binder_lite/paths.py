"""Where binder-lite's Guile modules and templates are, installed or in a checkout."""

from __future__ import annotations

from functools import cache
from importlib import resources
from pathlib import Path

# Top-level folders of the checkout that an installed wheel carries under binder_lite/data.
DATA_FOLDERS = ("system", "services", "images")


@cache
def data_dir() -> Path:
    """The folder holding system/, services/ and images/.

    An installed wheel has them in binder_lite/data; an editable install or a plain
    checkout has them at the repository's top, two levels above this package.
    """
    installed = Path(str(resources.files("binder_lite"))) / "data"
    checkout = Path(__file__).resolve().parents[2]
    for candidate in (installed, checkout):
        if all((candidate / name).is_dir() for name in DATA_FOLDERS):
            return candidate
    raise RuntimeError(f"binder-lite data folders not found in {installed} or {checkout}")


def guile_load_path() -> Path:
    """The directory to pass to Guix with -L so (binder-lite services) is found."""
    return data_dir() / "services"
