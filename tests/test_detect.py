"""Environment detection and manifest generation (no Guix needed)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from bounded import in_child
from conftest import CliResult

from binder_lite.errors import EnvironmentSpecError
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
        ("ruamel.yaml", "python-ruamel.yaml"),  # Guix keeps the dot
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
        "Flask[async, dotenv] (>=1,<2)",
        "attrs @ https://example.org/attrs.whl",
    ]
    env = detect(files(tmp_path, **{"requirements.txt": "\n".join(lines) + "\n"}))
    assert env.packages == (
        "python-numpy",
        "python-scipy",
        "python-pandas",
        "python-flask",
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
    assert sources == ["numpy==1.26", "scipy", "pandas>=2", "Flask[async,dotenv]>=1,<2", "attrs"]
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


# Near 1 MiB each, made to make regular expressions backtrack, and what detection makes
# of them; benchmarks/hostile.py times them against ordinary files of the same size.
HOSTILE = [
    (
        "requirements.txt",
        "numpy" + " " * (1 << 19) + "x\n",
        "requirements: ; requirements.txt:1 not understood (longer than 1000 characters)",
    ),
    (
        "requirements.txt",
        "numpy[a" + " " * 999 + "\n",
        "requirements: ; requirements.txt:1 not understood",
    ),
    ("requirements.txt", "\\\n" * (1 << 18), "requirements: "),
    (
        "requirements.txt",
        "a\t!\n" * (1 << 17),
        "refused: requirements.txt:1001: more than 1000 entries; binder-lite reads at most "
        "that many",
    ),
    (
        "DESCRIPTION",
        "Imports: " + "(" * (1 << 19),
        "R: r r-irkernel; DESCRIPTION:1 not understood",
    ),
    ("DESCRIPTION", "Imports: " + "ape," * (1 << 17), "R: r r-irkernel r-ape"),
    ("install.R", "install.packages(" * (1 << 15), "R: r r-irkernel"),
]


def outcome(repo: Path) -> str:
    """What detection makes of `repo`, in one line (it is sent from another process)."""
    try:
        env = detect(repo)
    except EnvironmentSpecError as e:
        return f"refused: {e}"
    skipped = "".join(f"; {s.where} {s.reason}" for s in env.skipped)
    return f"{env.kind}: {' '.join(env.packages)}{skipped}"


@pytest.mark.parametrize(
    ("name", "text", "expected"), HOSTILE, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(HOSTILE)]
)
def test_hostile_files_are_read_to_the_end(
    tmp_path: Path, name: str, text: str, expected: str
) -> None:
    """Backtracking without end would not return (in_child stops it then)."""
    assert in_child(outcome, files(tmp_path, **{name: text})) == expected


def test_install_r_comments_and_installers(tmp_path: Path) -> None:
    """Comment lines install nothing; remotes, devtools and BiocManager calls are read."""
    text = (
        '# install.packages("devtools")\n'
        'install.packages(c("dplyr", "ggplot2"), repos = "https://cran.r-project.org")\n'
        'remotes::install_github("tidyverse/readr@v2") # install.packages("zzz")\n'
        'devtools::install_version("knitr", version = "1.40")\n'
        'BiocManager::install(c("limma"), ask = FALSE)\n'
        'install.packages("not a name!")\n'
    )
    env = detect(files(tmp_path, **{"install.R": text}))
    assert env.packages == (
        "r",
        "r-irkernel",
        "r-dplyr",
        "r-ggplot2",
        "r-readr",
        "r-knitr",
        "r-limma",
    )
    assert "r-devtools" not in env.packages and "r-zzz" not in env.packages
    readr = next(r for r in env.requirements if r.source == "readr")
    assert readr.note == "from Github in install.R; Guix 1.5's package is used"
    assert [(s.where, s.reason) for s in env.skipped] == [("install.R:6", "not understood")]


def test_environment_yml_with_pip_and_r(tmp_path: Path) -> None:
    repo = files(
        tmp_path,
        **{
            "environment.yml": "channels: [conda-forge, 'https://user:pw@example.org/c']\n"
            "dependencies:\n  - python=3.10\n  - numpy>=1.2\n  - r-base\n  - r-dplyr\n"
            "  - compilers\n  - '%%'\n  - pip:\n    - -r extra.txt\n    - --pre\n    - seaborn\n",
            "extra.txt": "scipy\n",
            "requirements.txt": "pandas\n",
        },
    )
    env = detect(repo)
    assert env.kind == "conda"
    assert env.packages == (
        "python",
        "python-numpy",
        "r",
        "r-dplyr",
        "gcc-toolchain",
        "r-irkernel",
        "python-scipy",
        "python-seaborn",
    )
    assert {(s.where, s.reason) for s in env.skipped} == {
        ("environment.yml:1", "a channel given by URL: not shown"),
        ("environment.yml:8", "not understood"),
        ("environment.yml:11", "option --pre ignored (Guix packages are used)"),
        (
            "requirements.txt",
            "not read: environment.yml decides the environment, as in repo2docker",
        ),
    }
    assert "user:pw" not in env.manifest and "channels: conda-forge" in env.files[0].notes[0]


def test_pipfile_poetry_setup_cfg_and_apt(tmp_path: Path) -> None:
    pipenv = files(
        tmp_path / "p",
        **{
            "Pipfile": '[packages]\nrequests = "*"\nflask = {version = ">=2"}\n'
            'x = {git = "https://example.org/x.git"}\n[dev-packages]\npytest = "==8"\n'
            '[requires]\npython_version = "3.11"\n',
            "setup.py": "from setuptools import setup\nsetup(install_requires=['numpy'])\n",
        },
    )
    env = detect(pipenv)
    assert env.kind == "Pipfile"
    assert env.packages == ("python", "python-requests", "python-flask", "python-pytest")
    poetry = files(
        tmp_path / "q",
        **{
            "pyproject.toml": "[tool.poetry.dependencies]\npython = '^3.10'\n"
            "pandas = '^2.0'\nattrs = {version = '*'}\n",
            "apt.txt": "# tools\nbyacc\nlibsodium-dev\nno-such-debian-thing\n",
        },
    )
    env = detect(poetry)
    assert env.kind == "pyproject.toml"
    assert env.packages == ("python-pandas", "python-attrs", "byacc", "libsodium")
    assert env.unavailable[0].source == "no-such-debian-thing"
    cfg = files(
        tmp_path / "c",
        **{
            "setup.py": "from setuptools import setup\nsetup()\n",
            "setup.cfg": "[options]\ninstall_requires =\n    numpy>=1\n    scipy\n",
        },
    )
    assert detect(cfg).packages == ("python-numpy", "python-scipy")


def test_runtime_txt(tmp_path: Path) -> None:
    py2 = detect(files(tmp_path / "a", **{"runtime.txt": "python-2.7\n"}))
    assert "python2" in py2.packages
    assert any("Python 2 kernel" in s.reason for s in py2.skipped)
    r = detect(files(tmp_path / "b", **{"runtime.txt": "r-4.1-2022-01-01\n"}))
    assert r.kind == "R" and r.packages[:2] == ("r", "r-irkernel")
    bad = detect(files(tmp_path / "c", **{"runtime.txt": "whatever!\n"}))
    assert bad.skipped[0].where == "runtime.txt" and bad.skipped[0].reason.startswith("not und")


def test_unsupported_files_are_reported(tmp_path: Path) -> None:
    repo = files(
        tmp_path,
        **{"Dockerfile": "FROM x\n", "default.nix": "{}\n", "postBuild": "", "REQUIRE": ""},
    )
    env = detect(repo)
    assert env.kind == "default"
    reasons = {s.where: s.reason for s in env.skipped}
    assert reasons["Dockerfile"].startswith("not supported: binder-lite builds no Docker")
    assert reasons["default.nix"].startswith("not supported: Nix is not run")
    assert reasons["REQUIRE"].startswith("not supported: Julia's REQUIRE")
    assert "postBuild" not in reasons  # run without its executable bit, as repo2docker does
    (report,) = [f for f in env.files if f.name == "postBuild"]
    assert report.read


def test_manifest_explain(tmp_path: Path, cli: Callable[..., CliResult]) -> None:
    repo = files(tmp_path / "r", **{"binder__requirements.txt": "numpy\n-e .\n", "Dockerfile": ""})
    result = cli("manifest", repo, "--explain", "--no-check")
    assert result.code == 0, result.err
    assert result.out.splitlines()[1:] == [
        "binder/requirements.txt: read, pip requirements",
        "  numpy -> python-numpy",
        "  binder/requirements.txt:2: skipped, option -e ignored (Guix packages are used)",
        "Dockerfile: not read: the binder/ folder is used instead, as in repo2docker",
    ]
