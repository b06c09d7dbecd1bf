"""Environment detection and manifest generation (no Guix needed)."""

from __future__ import annotations

import contextlib
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
    [
        ("numpy", "python-numpy"),
        ("Scikit_Learn", "python-scikit-learn"),
        ("python-dateutil", "python-dateutil"),
        ("ruamel.yaml", "python-ruamel-yaml"),
        ("torch", "python-pytorch"),
        ("opencv-python", "opencv"),
        ("jupyterlab", None),
        ("PyYAML", "python-pyyaml"),
        ("jupyter", "jupyter"),
    ],
)
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
    assert env.packages == ("python-numpy", "python-pandas", "python-requests", "python-matplotlib")
    assert "==1.26.4 asked; Guix provides one version per channel" in env.manifest
    assert [r.source for r in env.unavailable] == ["jupyterlab"]
    # A URL is reported by its place, not repeated: it could carry a token.
    assert [(s.where, s.reason) for s in env.skipped] == [
        ("requirements.txt:6", "a URL or path, not a package name: skipped")
    ]
    assert "example.org" not in env.manifest and "requirements.txt:6: skipped" in env.manifest
    assert "JupyterLab is not packaged" in env.manifest
    for package in (*env.packages, *JUPYTER):
        assert f'"{package}"' in env.manifest


def test_binder_folder_takes_precedence(tmp_path: Path) -> None:
    repo = files(tmp_path, **{"requirements.txt": "numpy\n", "binder__requirements.txt": "scipy\n"})
    env = detect(repo)
    assert env.config_dir == repo / "binder" and env.packages == ("python-scipy",)
    dot = files(
        tmp_path / "b",
        **{
            ".binder__manifest.scm": "(specifications->manifest '())",
            "requirements.txt": "numpy\n",
        },
    )
    assert detect(dot).kind == "manifest"


def test_manifest_wins_and_is_wrapped(tmp_path: Path) -> None:
    repo = files(
        tmp_path,
        **{
            "manifest.scm": '(specifications->manifest \'("python"))',
            "channels.scm": "(list)",
            "requirements.txt": "numpy\n",
        },
    )
    env = detect(repo)
    assert env.kind == "manifest" and env.channels == repo / "channels.scm"
    assert env.channels_text == "(list)"
    assert f'(load "{repo / "manifest.scm"}")' in env.manifest
    assert '"jupyter" "python-ipykernel" "guix-jupyter"' in env.manifest


def test_setup_py_and_pyproject(tmp_path: Path) -> None:
    setup_py = (
        "from setuptools import setup\nsetup(name='x', install_requires=['numpy>=1', 'Scipy'])\n"
    )
    setup = files(tmp_path / "s", **{"setup.py": setup_py})
    assert detect(setup).packages == ("python-numpy", "python-scipy")
    pyproject = files(
        tmp_path / "p",
        **{"pyproject.toml": "[project]\nname='x'\ndependencies = ['pandas', 'seaborn<1']\n"},
    )
    assert detect(pyproject).packages == ("python-pandas", "python-seaborn")


def test_r_and_julia(tmp_path: Path) -> None:
    r = files(
        tmp_path / "r",
        **{
            "DESCRIPTION": "Package: x\nDepends: R (>= 4.0), methods\n"
            "Imports: dplyr,\n  ggplot2 (>= 3)\n",
            "install.R": 'install.packages(c("data.table", "dplyr"))\n',
        },
    )
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

    with pytest.raises(EnvironmentSpecError, match=r"^setup.py:1: cannot parse setup.py"):
        detect(files(tmp_path / "a", **{"setup.py": "setup(\n"}))
    with pytest.raises(EnvironmentSpecError, match="cannot parse pyproject.toml"):
        detect(files(tmp_path / "b", **{"pyproject.toml": "[project\n"}))


def test_pip_options_are_options_not_packages(tmp_path: Path) -> None:
    lines = [
        "-e .",
        "--pre",
        "-i https://user:pw@example.org/simple",
        "--index-url=https://example.org/simple",
        "--extra-index-url https://example.org/",
        "-f ./wheels",
        "--find-links=wheels",
        "numpy==1.26 --hash=sha256:abc",
        "--no-binary :all:",
        "--frobnicate",
        "not a requirement!!",
        "${SECRET}",
        "scipy ; python_version < '3.9'",
        "pandas \\",
        "  >=2",
        "Foo[bar, baz] (>=1,<2)",
        "attrs @ https://example.org/attrs.whl",
    ]
    env = detect(files(tmp_path, **{"requirements.txt": "\n".join(lines) + "\n"}))
    assert env.packages == (
        "python-numpy",
        "python-scipy",
        "python-pandas",
        "python-foo",
        "python-attrs",
    )
    assert env.unavailable == ()  # nothing above is "not in Guix"
    skipped = {s.where: s.reason for s in env.skipped}
    assert skipped == {
        "requirements.txt:1": "option -e ignored (Guix packages are used)",
        "requirements.txt:2": "option --pre ignored (Guix packages are used)",
        "requirements.txt:3": "option -i ignored (Guix packages are used)",
        "requirements.txt:4": "option --index-url ignored (Guix packages are used)",
        "requirements.txt:5": "option --extra-index-url ignored (Guix packages are used)",
        "requirements.txt:6": "option -f ignored (Guix packages are used)",
        "requirements.txt:7": "option --find-links ignored (Guix packages are used)",
        "requirements.txt:9": "option --no-binary ignored (Guix packages are used)",
        "requirements.txt:10": "not understood",
        "requirements.txt:11": "not understood",
        "requirements.txt:12": "not understood",
    }
    sources = [r.source for r in env.requirements]
    assert sources == ["numpy==1.26", "scipy", "pandas>=2", "Foo[bar,baz]>=1,<2", "attrs"]
    for secret in ("user:pw", "frobnicate", "requirement!!", "SECRET", "python_version", ":all:"):
        assert secret not in env.manifest


def test_includes_relative_to_the_including_file(tmp_path: Path) -> None:
    repo = files(
        tmp_path,
        **{
            "binder__requirements.txt": (
                "-r ../reqs/base.txt\n--constraint=../reqs/pins.txt\nscipy\n"
            ),
            "reqs__base.txt": "--requirement base2.txt\n",
            "reqs__base2.txt": "numpy\n",
            "reqs__pins.txt": "numpy==1.26\npandas<2\nbad line here\n",
        },
    )
    env = detect(repo)
    assert env.packages == ("python-numpy", "python-scipy")  # constraints add nothing
    assert [(s.where, s.reason) for s in env.skipped] == [
        (
            "binder/requirements.txt:2",
            "constraints in reqs/pins.txt not applied (Guix has one version per channel)",
        ),
        ("reqs/pins.txt:3", "not understood"),
    ]


@pytest.mark.parametrize(
    ("contents", "message"),
    [
        (
            {"requirements.txt": "-r requirements.txt\n"},
            r"^requirements.txt:1: -r: requirements.txt includes itself \(a cycle\)$",
        ),
        (
            {"requirements.txt": "numpy\n-r a.txt\n", "a.txt": "-c requirements.txt\n"},
            r"^a.txt:1: -c: requirements.txt includes itself \(a cycle\)$",
        ),
        (
            {
                "requirements.txt": "-r 0.txt\n",
                **{f"{i}.txt": f"-r {i + 1}.txt\n" for i in range(9)},
            },
            r"^4.txt:1: -r: includes nested more than 5 deep$",
        ),
        (
            {
                "requirements.txt": "".join(f"-r {i}.txt\n" for i in range(30)),
                **{f"{i}.txt": "numpy\n" for i in range(30)},
            },
            r"^requirements.txt:20: -r: more than 20 requirements files$",
        ),
        (
            {"requirements.txt": "\n\n-r missing.txt\n"},
            r"^requirements.txt:3: -r: no such file in the repository$",
        ),
        (
            {"requirements.txt": "-r https://example.org/r.txt\n"},
            r"^requirements.txt:1: -r: a URL is not fetched",
        ),
        ({"requirements.txt": "numpy\n" * 1001}, r"more than 1000 entries"),
    ],
)
def test_includes_are_bounded(tmp_path: Path, contents: dict[str, str], message: str) -> None:
    from binder_lite.errors import EnvironmentSpecError

    with pytest.raises(EnvironmentSpecError, match=message):
        detect(files(tmp_path, **contents))


def test_r_and_julia_names_are_checked(tmp_path: Path) -> None:
    r = files(
        tmp_path / "r",
        **{
            "DESCRIPTION": "Package: x\nImports: dplyr (>=\n  1.0),\n  no such thing!,\n  ggplot2\n"
        },
    )
    env = detect(r)
    assert env.packages == ("r", "r-irkernel", "r-dplyr", "r-ggplot2")
    assert [(s.where, s.reason) for s in env.skipped] == [("DESCRIPTION:4", "not understood")]
    julia = files(tmp_path / "j", **{"Project.toml": '[deps]\nJSON = "1"\n"a b/c" = "2"\n'})
    env = detect(julia)
    assert env.packages == ("julia", "julia-json")
    assert [s.where for s in env.skipped] == ["Project.toml: [deps] entry 2"]
    assert "a b/c" not in env.manifest


def test_setup_py_entries_located(tmp_path: Path) -> None:
    setup = files(
        tmp_path,
        **{
            "setup.py": "from setuptools import setup\nsetup(\n"
            "  install_requires=['numpy',\n    f'{x}', 'git+https://h/x'])\n"
        },
    )
    env = detect(setup)
    assert env.packages == ("python-numpy",)
    assert [(s.where, s.reason) for s in env.skipped] == [
        ("setup.py:4", "not understood"),
        ("setup.py:4", "a URL or path, not a package name: skipped"),
    ]


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("requirements.txt", "numpy" + " " * (1 << 19) + "x\n"),
        ("requirements.txt", "numpy[a" + " " * 999 + "\n"),
        ("requirements.txt", "\\\n" * (1 << 18)),
        ("requirements.txt", "a\t!\n" * (1 << 17)),
        ("DESCRIPTION", "Imports: " + "(" * (1 << 19)),
        ("DESCRIPTION", "Imports: " + "a," * (1 << 18)),
        ("install.R", "install.packages(" * (1 << 15)),
    ],
)
def test_hostile_files_are_read_quickly(tmp_path: Path, name: str, text: str) -> None:
    """Near 1 MiB made to make regular expressions backtrack: read in well under a
    second each here; the bound is generous for a loaded machine."""
    import time

    from binder_lite.errors import EnvironmentSpecError

    start = time.monotonic()
    with contextlib.suppress(EnvironmentSpecError):  # "more than 1000 entries" is fine
        detect(files(tmp_path, **{name: text}))
    assert time.monotonic() - start < 10
