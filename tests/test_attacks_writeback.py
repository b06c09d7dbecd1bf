"""Attacks on the write-back of "Push changes": notebooks and environment files are
written by whatever ran in the session.  Nothing they hold may crash the push, make
the service read a file outside the session, reach the manifest unquoted, or get
committed without the person having seen it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from launchkit import git, make_repo
from test_attacks_push import AUTHOR, CREDENTIAL, TOKEN, launch
from test_writeback import cell, checkout, notebook
from webkit import git_http_server

from binder_lite.web import additions, manifestedit
from binder_lite.web.push import Pushed, PushError, push_changes
from binder_lite.web.writeback import WriteBack, propose


def test_broken_and_oversized_notebooks_are_reported_not_read(tmp_path: Path) -> None:
    good = notebook(cell("%pip install pyyaml"))
    root = checkout(
        tmp_path,
        {
            "a-not-json.ipynb": '{"cells": [',
            "b-deep.ipynb": "[" * 100_000 + "]" * 100_000,
            "c-latin1.ipynb": "",
            "d-cells-not-a-list.ipynb": json.dumps({"cells": {"0": "%pip install x"}}),
            "e-huge-cell.ipynb": notebook(cell("%pip install huge\n" + "#" * 200_000)),
            "f-odd-cells.ipynb": json.dumps(
                {
                    "cells": [
                        7,
                        {"cell_type": "code", "execution_count": True, "source": "%pip install b"},
                        {"cell_type": "code", "execution_count": 1, "source": [1, 2]},
                        {"cell_type": "code", "execution_count": 1, "source": None},
                    ]
                }
            ),
            "g-good.ipynb": good,
            "requirements.txt": "numpy\n",
        },
    )
    (root / "c-latin1.ipynb").write_bytes(b'{"cells": ["\xe9"]}')
    (root / "h-huge.ipynb").write_bytes(b" " * (additions.MAX_NOTEBOOK_BYTES + 1))
    offer = propose(root)
    (change,) = offer.changes
    assert change.new == "numpy\npyyaml\n"  # the one good notebook still counts
    assert offer.notes == (
        "a-not-json.ipynb: not a notebook (not JSON): not read",
        "b-deep.ipynb: not a notebook (not JSON): not read",
        "c-latin1.ipynb: not a notebook (not JSON): not read",
        "d-cells-not-a-list.ipynb: not a notebook in nbformat 4: not read",
        "e-huge-cell.ipynb, cell 1: longer than 100000 characters: not read",
        "h-huge.ipynb: larger than 16 MiB: not read",
    )


def test_links_fifos_and_loops_are_not_read(tmp_path: Path) -> None:
    host = tmp_path / "host"
    host.mkdir()
    (host / "secret.ipynb").write_text(notebook(cell("%pip install from-the-host")))
    root = checkout(tmp_path, {"requirements.txt": "numpy\n"})
    (root / "linked.ipynb").symlink_to(host / "secret.ipynb")
    (root / "folder").symlink_to(host, target_is_directory=True)
    (root / "loop").symlink_to(root, target_is_directory=True)
    os.mkfifo(root / "waits.ipynb")  # a reader that opened it would wait forever
    assert propose(root) == WriteBack()


HOSTILE = [
    '%pip install \'evil";(system "touch /tmp/pwned")\'',
    "%pip install $(touch /tmp/pwned) `id` a\\b",
    '!pip install "x) (system \\"id\\")"',
    ';;guix environment e <- python")(system "id" hello #{x}# a\\b',
    'install.packages("a\\")(system(\\"id")',
    "%conda install 'x\n(system \"id\")'",
]


def test_hostile_names_never_reach_the_manifest(tmp_path: Path) -> None:
    manifest = '(specifications->manifest \'("python"))\n'
    root = checkout(
        tmp_path,
        {
            "manifest.scm": manifest,
            "a.ipynb": notebook(*(cell(source) for source in HOSTILE)),
        },
    )
    offer = propose(root)
    (change,) = offer.changes
    # Of all that, only `hello` is a package name; it is written as a Scheme string.
    assert change.new == '(specifications->manifest \'("python" "hello"))\n'
    assert {n.where for n in offer.not_written} <= {f"a.ipynb, cell {i}" for i in range(1, 7)}
    assert "system" not in "".join(offer.notes + tuple(n.text for n in offer.not_written))


@pytest.mark.parametrize(
    "spec",
    ['a"b', 'x") (system "id") ("', "back\\slash", "new\nline", "#{sym}#", "; comment", "é"],
)
def test_any_text_added_to_a_manifest_stays_one_string(spec: str) -> None:
    text = '(specifications->manifest (list "python"))  ; (a comment\n'
    added = manifestedit.add(text, [spec])
    root = manifestedit._read(added)
    (form,) = root.children
    strings = form.children[1].children[1:]
    assert [s.kind for s in strings] == ["string", "string"]
    assert added.endswith(")  ; (a comment\n")


def test_strings_comments_and_characters_do_not_move_the_insertion() -> None:
    text = """\
#| a block comment (with a paren |# nested? no |#
#;(specifications->manifest '("commented-out"))
(define note ")(")  ; a comment (
(define open #\\()
(specifications->manifest
 (list "python"   ; one )
       "python-numpy"))
"""
    assert manifestedit.add(text, ["hello"]) == text.replace(
        '"python-numpy"))', '"python-numpy"\n       "hello"))'
    )
    assert manifestedit.present(text) == {")(", "python", "python-numpy"}


@pytest.mark.parametrize(
    "manifest",
    ['(specifications->manifest \'("python"', '"unterminated', "#| open", "(a))", ""],
)
def test_a_manifest_that_cannot_be_read_is_left_alone(tmp_path: Path, manifest: str) -> None:
    root = checkout(
        tmp_path, {"manifest.scm": manifest, "a.ipynb": notebook(cell("%pip install pyyaml"))}
    )
    offer = propose(root)
    assert offer.changes == ()
    assert offer.notes[0].startswith("manifest.scm: not updated: ")


def test_an_environment_file_is_not_written_through_a_link(tmp_path: Path) -> None:
    host = tmp_path / "host-requirements.txt"
    host.write_text("host-secret\n")
    nb = notebook(cell("%pip install pyyaml"))
    outside = checkout(tmp_path / "out", {"a.ipynb": nb})
    (outside / "requirements.txt").symlink_to(host)
    inside = checkout(tmp_path / "in", {"a.ipynb": nb, "real.txt": "numpy\n"})
    (inside / "requirements.txt").symlink_to("real.txt")
    for root, why in (
        (outside, "requirements.txt: a symlink that leaves the repository is not followed"),
        (inside, "requirements.txt is a symlink; it is not written through"),
    ):
        offer = propose(root)
        assert offer.changes == ()
        assert offer.notes == (f"the environment file is not updated: {why}",)
    assert host.read_text() == "host-secret\n"


def test_a_flow_style_environment_yml_is_not_rewritten(tmp_path: Path) -> None:
    root = checkout(
        tmp_path,
        {
            "environment.yml": "dependencies: [python, numpy]\n",
            "a.ipynb": notebook(cell("%conda install xarray")),
        },
    )
    offer = propose(root)
    assert offer.changes == ()
    assert offer.notes == ("environment.yml: not updated: its layout is not one binder-lite edits",)


def test_reading_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(additions, "MAX_NOTEBOOKS", 3)
    monkeypatch.setattr(additions, "MAX_ADDED", 4)
    names = " ".join(f"p{i}" for i in range(10))
    root = checkout(
        tmp_path, {f"n{i}.ipynb": notebook(cell(f"%pip install {names}")) for i in range(5)}
    )
    reading = additions.read_notebooks(root)
    assert [a.name for a in reading.added] == ["p0", "p1", "p2", "p3"]
    assert [s.reason for s in reading.skipped] == [
        "more than 3 notebooks: the rest not read",
        "more than 4 packages: not read",
    ]


def test_what_is_reported_and_read_in_all_is_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(additions, "MAX_REPORTED", 2)
    bad = notebook(*(cell("%pip install 'not;a|name'") for _ in range(10)))
    monkeypatch.setattr(additions, "MAX_TOTAL_BYTES", len(bad) + 10)
    root = checkout(
        tmp_path,
        {"a.ipynb": bad, "b.ipynb": notebook(cell("%pip install x")), "c.ipynb": "{}"},
    )
    reading = additions.read_notebooks(root)
    assert reading.added == ()  # a.ipynb took the budget: b.ipynb is not read
    assert [(s.where, s.reason) for s in reading.skipped] == [
        ("a.ipynb, cell 1", "not understood"),
        ("a.ipynb, cell 2", "not understood"),
        ("...", "10 more lines or cells not read"),  # 8 cells of a, then b and c
    ]


def test_only_the_change_shown_is_committed(tmp_path: Path) -> None:
    """An answer names the exact change it accepts: a notebook changed between the
    offer and the answer (by code in the session), or a made-up digest, pushes nothing."""
    root = tmp_path / "forge"
    root.mkdir()
    source_repo = make_repo(tmp_path / "source", {"requirements.txt": "numpy\n"})
    git(tmp_path, "clone", "-q", "--bare", str(source_repo), str(root / "project.git"))
    git(root / "project.git", "config", "http.receivepack", "true")
    with git_http_server(root, "u", lambda p: p == TOKEN) as url:
        source = launch(f"{url}/project.git", tmp_path / "state")
        nb = source.files / "index.ipynb"
        nb.write_text(notebook(cell("%pip install pyyaml")))
        state = tmp_path / "state"
        offer = push_changes(source, AUTHOR, CREDENTIAL, state, offer=True)
        assert isinstance(offer, WriteBack) and offer.changes
        nb.write_text(notebook(cell("%pip install pyyaml something-else")))
        for digest in (offer.digest, "0" * 64):
            with pytest.raises(PushError) as refused:
                push_changes(source, AUTHOR, CREDENTIAL, state, write_back=digest)
            assert "no longer the one shown" in str(refused.value)
        assert "binder-lite/" not in git(root / "project.git", "branch", "--list")
        fresh = push_changes(source, AUTHOR, CREDENTIAL, state, offer=True)
        assert isinstance(fresh, WriteBack)
        pushed = push_changes(source, AUTHOR, CREDENTIAL, state, write_back=fresh.digest)
    assert isinstance(pushed, Pushed) and pushed.updated == ("requirements.txt",)
    shown = git(root / "project.git", "show", f"{pushed.branch}:requirements.txt")
    assert shown == "numpy\npyyaml\nsomething-else"
