"""What "Push changes" writes back: the packages a session's notebooks installed, added
to the environment file the repository uses, shown as a diff before anything is
committed, and pushed to a real `git http-backend` forge as shown."""

from __future__ import annotations

import html
import json
import re
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT
from launchkit import NOTEBOOK, execute, git, make_repo
from webkit import Client, Server, git_http_server, headless_chromium, wait_for

from binder_lite.web import manifestedit
from binder_lite.web.additions import Ecosystem, read_notebooks
from binder_lite.web.writeback import NEW_MANIFEST, WriteBack, apply, propose

TOKEN = "push-token"
SHOTS = ROOT / "artifacts" / "screenshots"


def cell(source: str, count: int | None = 1, kind: str = "code") -> dict[str, object]:
    return {
        "cell_type": kind,
        "execution_count": count,
        "metadata": {},
        "outputs": [],
        "source": source.splitlines(keepends=True),
    }


def notebook(*cells: dict[str, object]) -> str:
    return json.dumps({**NOTEBOOK, "cells": list(cells)})


def checkout(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "checkout"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


RAN = notebook(
    cell("%pip install pyyaml 'numpy>=1.26' --quiet\n# %pip install commented-out\n"),
    cell("%pip install never-run", count=None),
    cell("!pip install --index-url https://example.org/simple requests && echo done\n"),
    cell("%pip install as-markdown", kind="markdown"),
)


# -- what the notebooks say -----------------------------------------------------------


def test_only_code_cells_that_ran_are_read_and_comments_install_nothing(tmp_path: Path) -> None:
    root = checkout(
        tmp_path,
        {
            "analysis.ipynb": RAN,
            "r.ipynb": notebook(
                cell('install.packages(c("ggplot2", "dplyr"))\n# install.packages("devtools")\n'),
                cell('BiocManager::install("limma")\nremotes::install_github("tidyverse/readr")'),
            ),
            "guix.ipynb": notebook(cell(";;guix environment e <- python-scipy glib@2.78:bin\n")),
            "conda.ipynb": notebook(cell("%conda install -c conda-forge xarray=2024.1 -y\n")),
            ".ipynb_checkpoints/analysis-checkpoint.ipynb": notebook(cell("%pip install old")),
        },
    )
    added = [(a.ecosystem, a.text, a.where) for a in read_notebooks(root).added]
    assert added == [
        (Ecosystem.PYPI, "pyyaml", "analysis.ipynb, cell 1"),
        (Ecosystem.PYPI, "numpy>=1.26", "analysis.ipynb, cell 1"),
        (Ecosystem.PYPI, "requests", "analysis.ipynb, cell 3"),
        (Ecosystem.CONDA, "xarray=2024.1", "conda.ipynb, cell 1"),
        (Ecosystem.GUIX, "python-scipy", "guix.ipynb, cell 1"),
        (Ecosystem.GUIX, "glib:bin", "guix.ipynb, cell 1"),
        (Ecosystem.R, "ggplot2", "r.ipynb, cell 1"),
        (Ecosystem.R, "dplyr", "r.ipynb, cell 1"),
        (Ecosystem.R, "limma", "r.ipynb, cell 2"),
        (Ecosystem.R, "readr", "r.ipynb, cell 2"),
    ]


# -- the file the repository uses ---------------------------------------------------


def test_a_requirements_file_gets_pypi_names_once(tmp_path: Path) -> None:
    root = checkout(
        tmp_path,
        {
            "analysis.ipynb": RAN,
            "requirements.txt": "# pinned\nNumPy==1.26\n-r more.txt",
            "more.txt": "PyYAML\n",
        },
    )
    offer = propose(root)
    ((change,),) = (offer.changes,)
    assert change.path == "requirements.txt"
    assert change.new == "# pinned\nNumPy==1.26\n-r more.txt\nrequests\n"
    assert offer.diff == (
        "--- a/requirements.txt\n+++ b/requirements.txt\n@@ -1,3 +1,4 @@\n # pinned\n"
        " NumPy==1.26\n--r more.txt\n\\ No newline at end of file\n+-r more.txt\n+requests\n"
    )
    apply(root, offer)
    assert (root / "requirements.txt").read_text() == change.new
    assert propose(root).changes == ()  # now there: nothing more to add


def test_a_manifest_gets_guix_names_in_the_users_layout(tmp_path: Path) -> None:
    manifest = """\
;; My environment (with a "string" and a paren ) in a comment)
(specifications->manifest
  '("python"     ; the interpreter
    "python-numpy"))
"""
    root = checkout(tmp_path, {"binder/manifest.scm": manifest, "analysis.ipynb": RAN})
    (change,) = propose(root).changes
    assert change.path == "binder/manifest.scm"
    assert change.new == manifest.replace(
        '"python-numpy"))', '"python-numpy"\n    "python-pyyaml"\n    "python-requests"))'
    )


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (
            '(specifications->manifest (list "python" "python-pyyaml"))',
            '(specifications->manifest (list "python" "python-pyyaml" "python-numpy"'
            ' "python-requests"))',
        ),
        (
            "(specifications->manifest '())",
            '(specifications->manifest \'("python-pyyaml" "python-numpy" "python-requests"))',
        ),
        (
            "(packages->manifest (list (@ (gnu packages python) python)))\n",
            "(concatenate-manifests\n (list "
            "(packages->manifest (list (@ (gnu packages python) python)))"
            '\n       (specifications->manifest\n        \'("python-pyyaml" "python-numpy" '
            '"python-requests"))))\n',
        ),
    ],
    ids=["list-inline", "empty", "no-specifications"],
)
def test_manifest_layouts(tmp_path: Path, before: str, after: str) -> None:
    root = checkout(
        tmp_path,
        {
            "manifest.scm": before,
            "a.ipynb": notebook(cell("%pip install PyYAML numpy requests")),
        },
    )
    (change,) = propose(root).changes
    assert change.new == after


def test_an_environment_yml_gets_conda_names_and_a_pip_list(tmp_path: Path) -> None:
    environment = """\
name: example  # a comment kept
channels:
  - conda-forge
dependencies:
  - python=3.11
  - numpy
  - pip:
      - requests
  - r-base
"""
    root = checkout(
        tmp_path,
        {
            "environment.yml": environment,
            "a.ipynb": notebook(
                cell("%pip install requests pyyaml\n%conda install xarray numpy"),
                cell('install.packages("ggplot2")'),
            ),
        },
    )
    (change,) = propose(root).changes
    assert change.new == environment.replace(
        "      - requests\n", "      - requests\n      - pyyaml\n"
    ).replace("  - r-base\n", "  - r-base\n  - xarray\n  - r-ggplot2\n")


def test_install_r_gets_install_packages_lines(tmp_path: Path) -> None:
    root = checkout(
        tmp_path,
        {
            "install.R": 'install.packages("dplyr")\n# install.packages("ggplot2")\n',
            "runtime.txt": "r-2024-01-01\n",
            "a.ipynb": notebook(
                cell('install.packages(c("dplyr", "ggplot2"))\n%pip install x'),
                cell('BiocManager::install("limma")\nremotes::install_github("tidyverse/readr")'),
            ),
        },
    )
    offer = propose(root)
    (change,) = offer.changes
    assert change.new == (
        'install.packages("dplyr")\n# install.packages("ggplot2")\n'
        'install.packages("ggplot2")\nBiocManager::install("limma")\n'
    )
    assert [(n.text, n.reason) for n in offer.not_written] == [
        ("x", "install.R does not list PyPI packages"),
        ("readr", "installed from Github: binder-lite does not write that call to install.R"),
    ]


def test_an_install_r_without_any_call_is_read(tmp_path: Path) -> None:
    root = checkout(
        tmp_path,
        {
            "install.R": "# nothing yet\n",
            "runtime.txt": "r-2024-01-01\n",
            "a.ipynb": notebook(cell('install.packages("ggplot2")')),
        },
    )
    (change,) = propose(root).changes
    assert change.new == '# nothing yet\ninstall.packages("ggplot2")\n'


def test_files_binder_lite_does_not_update_are_named(tmp_path: Path) -> None:
    root = checkout(
        tmp_path,
        {"Pipfile": '[packages]\nnumpy = "*"\n', "a.ipynb": notebook(cell("%pip install pyyaml"))},
    )
    offer = propose(root)
    assert offer.changes == ()
    assert offer.notes == (
        "Pipfile: not updated; binder-lite writes packages into manifest.scm, "
        "requirements.txt, environment.yml, install.R only",
    )
    assert [n.reason for n in offer.not_written] == ["no environment file is updated"]


def test_without_an_environment_file_a_manifest_keeps_the_default_environment(
    tmp_path: Path,
) -> None:
    root = checkout(tmp_path, {"a.ipynb": notebook(cell("%pip install pyyaml numpy"))})
    (change,) = propose(root).changes
    assert change.old is None and change.path == "manifest.scm"
    assert change.new == (
        f"{NEW_MANIFEST}\n(specifications->manifest\n '("
        '"python"\n   "python-numpy"\n   "python-pandas"\n   "python-matplotlib"\n'
        '   "python-scipy"\n   "python-pyyaml"))\n'
    )
    assert change.diff.startswith("--- /dev/null\n+++ b/manifest.scm\n")


def test_nothing_installed_offers_nothing(tmp_path: Path) -> None:
    root = checkout(tmp_path, {"a.ipynb": notebook(cell("6 * 7")), "requirements.txt": "numpy\n"})
    assert propose(root) == WriteBack()


# -- the real Guix accepts what was written ------------------------------------------


@pytest.mark.guix
@pytest.mark.parametrize(
    "manifest",
    [
        ';; mine\n(specifications->manifest\n  \'("python"   ; comment\n    "python-numpy"))\n',
        "(use-modules (gnu packages python))\n(packages->manifest (list python))\n",
        None,
    ],
    ids=["specifications", "packages", "new"],
)
def test_guix_accepts_the_updated_manifest(guix: str, tmp_path: Path, manifest: str | None) -> None:
    files = {
        "a.ipynb": notebook(
            cell("%pip install pyyaml\n;;guix environment e <- glib:bin hello"),
            cell('install.packages("ggplot2")'),
        )
    }
    if manifest is not None:
        files["manifest.scm"] = manifest
    root = checkout(tmp_path, files)
    offer = propose(root)
    apply(root, offer)
    text = (root / "manifest.scm").read_text()
    assert manifestedit.present(text) >= {"python-pyyaml", "glib", "hello", "r-ggplot2"}
    shown = subprocess.run(
        [guix, "shell", "-n", "-m", str(root / "manifest.scm")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert shown.returncode == 0, shown.stderr


# -- through the service, to a real forge ---------------------------------------------


SITE = "version: 1\nsite: {{name: x, slug: x}}\nbinder: {{push_credential_file: {file}}}\n"


@pytest.fixture
def forge(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    root = tmp_path / "forge"
    root.mkdir()
    source = make_repo(tmp_path / "source", {"requirements.txt": "numpy\n"})
    git(tmp_path, "clone", "-q", "--bare", str(source), str(root / "project.git"))
    git(root / "project.git", "config", "http.receivepack", "true")
    with git_http_server(root, "u", lambda p: p == TOKEN) as url:
        yield root / "project.git", f"{url}/project.git"


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Server]:
    credential = tmp_path / "push-credential"
    credential.write_text(f"u:{TOKEN}\n")
    credential.chmod(0o600)
    (tmp_path / "site.yaml").write_text(SITE.format(file=credential))
    srv = Server(tmp_path / "site.yaml", tmp_path / "state", ("--allow-local-repos",)).start()
    try:
        yield srv
    finally:
        srv.stop()


def launch(client: Client, repo: str) -> str:
    location = client.post("/launch", {"repo": repo}).headers["Location"]
    sid = location.split("/")[2]
    assert client.events(f"/sessions/{sid}/events")[-1]["phase"] == "ready"
    return sid


def save_ran(srv: Server, sid: str, code: str) -> None:
    """Run `code` in the session's kernel, then save index.ipynb through its Jupyter
    with it as a cell that ran, as JupyterLab does when the person saves."""
    base, token = f"{srv.url}/s/{sid}/", srv.session_field(sid, "token")
    # The last line makes a result to wait for; a failing cell raises here.
    assert execute(base, token, f"{code}\n'ran'") == "'ran'"
    saved = {"type": "notebook", "format": "json", "content": json.loads(notebook(cell(code)))}
    request = urllib.request.Request(
        f"{base}api/contents/index.ipynb",
        data=json.dumps(saved).encode(),
        method="PUT",
        headers={"Authorization": f"token {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as answer:
        assert answer.status == 200


def shown_diff(page: str) -> str:
    m = re.search(r'<pre class="diff" id="write-back-diff">(.*?)</pre>', page, re.DOTALL)
    assert m, page
    return html.unescape(re.sub(r"<[^>]+>", "", m[1]))


def test_the_write_back_is_pushed_as_shown(forge: tuple[Path, str], service: Server) -> None:
    bare, url = forge
    client = Client(service.url)
    sid = launch(client, url)
    save_ran(service, sid, "%pip install pyyaml\n")
    offered = client.post(f"/sessions/{sid}/push")
    assert offered.status == 200, offered.text
    diff = shown_diff(offered.text)
    assert diff == (
        "--- a/requirements.txt\n+++ b/requirements.txt\n@@ -1 +1,2 @@\n numpy\n+pyyaml\n"
    )
    assert f"binder-lite/{sid}" not in git(bare, "branch", "--list")  # nothing yet
    (digest,) = re.findall(r'name="write_back" value="([0-9a-f]{64})"', offered.text)
    pushed = client.post(f"/sessions/{sid}/push", {"write_back": digest})
    assert pushed.status == 200, pushed.text
    assert "<code>requirements.txt</code> with the packages" in pushed.text
    branch = f"binder-lite/{sid}"
    # Jupyter's save made a checkpoint too: its bookkeeping is not pushed.
    assert Path(service.session_field(sid, "work_dir"), ".ipynb_checkpoints").is_dir()
    assert git(bare, "diff", "--name-only", f"{branch}^", branch).split() == [
        "index.ipynb",
        "requirements.txt",
    ]
    assert git(bare, "diff", f"{branch}^", branch, "--", "requirements.txt").endswith(
        diff.split("\n", 2)[2].rstrip("\n")
    )
    cells = json.loads(git(bare, "show", f"{branch}:index.ipynb"))["cells"]
    assert cells[0]["source"] == ["%pip install pyyaml\n"] and cells[0]["execution_count"] == 1


def test_an_accepted_write_back_stays_on_later_pushes(
    forge: tuple[Path, str], service: Server
) -> None:
    """The session's own requirements.txt never gets the update; the next push must
    neither offer it again nor take it out of the branch."""
    bare, url = forge
    client = Client(service.url)
    sid = launch(client, url)
    work = Path(service.session_field(sid, "work_dir"))
    (work / "index.ipynb").write_text(notebook(cell("%pip install pyyaml")))
    offered = client.post(f"/sessions/{sid}/push")
    (digest,) = re.findall(r'name="write_back" value="([0-9a-f]{64})"', offered.text)
    assert client.post(f"/sessions/{sid}/push", {"write_back": digest}).status == 200
    (work / "notes.md").write_text("more work\n")
    again = client.post(f"/sessions/{sid}/push")
    assert again.status == 200, again.text
    assert "write-back-diff" not in again.text  # pushed at once, nothing offered
    branch = f"binder-lite/{sid}"
    assert git(bare, "show", f"{branch}:requirements.txt").split() == ["numpy", "pyyaml"]
    assert "notes.md" in git(bare, "diff", "--name-only", f"{branch}^", branch).split()
    # A person who edits the file in the session decides again.
    (work / "requirements.txt").write_text("numpy\nscipy\n")
    (work / "notes.md").write_text("even more\n")
    offered = client.post(f"/sessions/{sid}/push")
    assert "+pyyaml" in shown_diff(offered.text)


def test_the_write_back_may_be_declined(forge: tuple[Path, str], service: Server) -> None:
    bare, url = forge
    client = Client(service.url)
    sid = launch(client, url)
    Path(service.session_field(sid, "work_dir"), "index.ipynb").write_text(
        notebook(cell("%pip install pyyaml"))
    )
    assert "write-back-diff" in client.post(f"/sessions/{sid}/push").text
    pushed = client.post(f"/sessions/{sid}/push", {"write_back": "none"})
    assert pushed.status == 200, pushed.text
    branch = f"binder-lite/{sid}"
    assert git(bare, "diff", "--name-only", f"{branch}^", branch).split() == ["index.ipynb"]
    assert git(bare, "show", f"{branch}:requirements.txt") == "numpy"


@pytest.mark.browser
def test_the_person_sees_the_diff_and_pushes_it_in_chromium(
    forge: tuple[Path, str], service: Server
) -> None:
    from selenium.webdriver.common.by import By

    bare, url = forge
    with headless_chromium("--window-size=1280,900") as driver:  # a screenshot people read
        driver.get(service.url)
        driver.find_element(By.ID, "repo").send_keys(url)
        driver.find_element(By.ID, "launch").click()
        wait_for(lambda: "/notebooks/" in driver.current_url or "/lab" in driver.current_url, 90)
        sid = re.findall(r"/s/([0-9a-f]+)/", driver.current_url)[0]
        Path(service.session_field(sid, "work_dir"), "index.ipynb").write_text(
            notebook(cell("%pip install pyyaml requests"))
        )
        driver.get(f"{service.url}/sessions/{sid}")
        driver.find_element(By.XPATH, "//button[text()='Push changes']").click()
        shown = wait_for(lambda: driver.find_element(By.ID, "write-back-diff").text)
        assert shown.splitlines()[-2:] == ["+pyyaml", "+requests"]
        SHOTS.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(SHOTS / "5-write-back.png"))
        driver.find_element(By.ID, "push-with-update").click()
        status = wait_for(lambda: driver.find_element(By.CSS_SELECTOR, "[role=status]").text)
        assert "It updates requirements.txt" in status
    assert git(bare, "show", f"binder-lite/{sid}:requirements.txt") == "numpy\npyyaml\nrequests"
