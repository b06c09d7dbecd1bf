"""Environment detection and manifest generation (no Guix needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from binder_lite.launch.detect import JUPYTER, detect, with_checked_names
from binder_lite.launch.names import normalise_pypi, pypi_to_guix


def files(root: Path, **contents: str) -> Path:
    for name, text in contents.items():
        path = root / name.replace("__", "/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.mark.parametrize(
    ("name", "guix"),
    [("numpy", "python-numpy"), ("Scikit_Learn", "python-scikit-learn"),
     ("python-dateutil", "python-dateutil"), ("ruamel.yaml", "python-ruamel-yaml"),
     ("torch", "python-pytorch"), ("opencv-python", "opencv"), ("jupyterlab", None),
     ("PyYAML", "python-pyyaml"), ("jupyter", "jupyter")],
)  # fmt: skip
def test_pypi_names(name: str, guix: str | None) -> None:
    assert pypi_to_guix(name) == guix


def test_normalise() -> None:
    assert normalise_pypi("Foo__Bar..baz") == "foo-bar-baz"


def test_requirements_txt(tmp_path: Path) -> None:
    repo = files(
        tmp_path,
        **{
            "requirements.txt": "# data\nnumpy==1.26.4  # pinned\npandas>=2\n"
            "requests[security] ; python_version > '3'\n-r more.txt\n"
            "git+https://example.org/x.git\njupyterlab\n\n",
            "more.txt": "matplotlib\n",
        },
    )
    env = detect(repo)
    assert env.kind == "requirements"
    assert env.packages == ("python-numpy", "python-pandas", "python-requests",
                            "python-matplotlib")  # fmt: skip
    assert "==1.26.4 asked; Guix provides one version per channel" in env.manifest
    assert [r.source for r in env.unavailable] == ["git+https://example.org/x.git", "jupyterlab"]
    assert "JupyterLab is not packaged" in env.manifest
    for package in (*env.packages, *JUPYTER):
        assert f'"{package}"' in env.manifest


def test_binder_folder_takes_precedence(tmp_path: Path) -> None:
    repo = files(tmp_path, **{"requirements.txt": "numpy\n", "binder__requirements.txt": "scipy\n"})
    env = detect(repo)
    assert env.config_dir == repo / "binder" and env.packages == ("python-scipy",)
    dot = files(tmp_path / "b", **{".binder__manifest.scm": "(specifications->manifest '())",
                                   "requirements.txt": "numpy\n"})  # fmt: skip
    assert detect(dot).kind == "manifest"


def test_manifest_wins_and_is_wrapped(tmp_path: Path) -> None:
    repo = files(tmp_path, **{"manifest.scm": "(specifications->manifest '(\"python\"))",
                              "channels.scm": "(list)", "requirements.txt": "numpy\n"})  # fmt: skip
    env = detect(repo)
    assert env.kind == "manifest" and env.channels == repo / "channels.scm"
    assert f'(load "{repo / "manifest.scm"}")' in env.manifest
    assert '"jupyter" "python-ipykernel" "guix-jupyter"' in env.manifest


def test_setup_py_and_pyproject(tmp_path: Path) -> None:
    setup_py = (
        "from setuptools import setup\nsetup(name='x', install_requires=['numpy>=1', 'Scipy'])\n"
    )
    setup = files(tmp_path / "s", **{"setup.py": setup_py})
    assert detect(setup).packages == ("python-numpy", "python-scipy")
    pyproject = files(tmp_path / "p", **{"pyproject.toml": "[project]\nname='x'\n"
                                         "dependencies = ['pandas', 'seaborn<1']\n"})  # fmt: skip
    assert detect(pyproject).packages == ("python-pandas", "python-seaborn")


def test_r_and_julia(tmp_path: Path) -> None:
    r = files(tmp_path / "r", **{
        "DESCRIPTION": "Package: x\nDepends: R (>= 4.0), methods\n"
        "Imports: dplyr,\n  ggplot2 (>= 3)\n",
        "install.R": 'install.packages(c("data.table", "dplyr"))\n',
    })  # fmt: skip
    env = detect(r)
    assert env.kind == "R"
    assert env.packages == ("r", "r-irkernel", "r-dplyr", "r-ggplot2", "r-data-table")
    julia = files(tmp_path / "j", **{"Project.toml": '[deps]\nJSON = "682c06a0"\n'})
    assert detect(julia).packages == ("julia", "julia-json")


def test_default_environment(tmp_path: Path) -> None:
    env = detect(files(tmp_path, **{"README.md": "hi"}))
    assert env.kind == "default"
    assert "python-numpy" in env.packages and "python-matplotlib" in env.packages


def test_checked_names_drop_what_guix_lacks(tmp_path: Path) -> None:
    env = detect(files(tmp_path, **{"requirements.txt": "numpy\nnot-a-real-thing\n"}))
    checked = with_checked_names(env, lambda names: {"python-numpy"})
    assert checked.packages == ("python-numpy",)
    assert checked.unavailable[0].note == "python-not-a-real-thing is not a Guix package"
    assert '"python-not-a-real-thing"' not in checked.manifest
    assert "from requirements.txt." in checked.manifest.splitlines()[0]


def test_bad_files_are_located_errors(tmp_path: Path) -> None:
    from binder_lite.errors import EnvironmentSpecError

    with pytest.raises(EnvironmentSpecError, match=r"setup.py:1: cannot parse setup.py"):
        detect(files(tmp_path / "a", **{"setup.py": "setup(\n"}))
    with pytest.raises(EnvironmentSpecError, match="cannot parse pyproject.toml"):
        detect(files(tmp_path / "b", **{"pyproject.toml": "[project\n"}))
