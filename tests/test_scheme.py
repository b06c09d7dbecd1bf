"""The Scheme quoting filters, checked against Guile's own reader."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import jinja2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from binder_lite.scheme import environment, scm_comment, scm_str, scm_strs, scm_sym

GUILE = shutil.which("guile") or shutil.which("guile-3.0")
# Outside CI a machine without Guile skips these; in CI they run, and fail.
needs_guile = pytest.mark.skipif(
    GUILE is None and not os.environ.get("CI"), reason="guile not installed (scripts/setup)"
)

PRELUDE = """;; -*- coding: utf-8 -*-
(use-modules (rnrs bytevectors))
(define (hex string)
  (apply string-append
         (map (lambda (b) (string-append (if (< b 16) "0" "") (number->string b 16)))
              (bytevector->u8-list (string->utf8 string)))))
"""


def guile_lines(tmp: Path, body: str) -> list[str]:
    """Run a Scheme program after PRELUDE (as a UTF-8 file) and return its output lines."""
    assert GUILE is not None, "guile is required in CI (scripts/setup installs it)"
    program = tmp / "prog.scm"
    program.write_text(PRELUDE + body, encoding="utf-8")
    proc = subprocess.run(
        [GUILE, "--no-auto-compile", str(program)],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
        env={"LANG": "C", "PATH": "/usr/bin:/bin"},  # a locale that is not UTF-8 on purpose
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


# tmp_path is shared by the examples of one test; each example overwrites its file.
FIXTURES_OK = [HealthCheck.function_scoped_fixture]

# What a site file's values can hold: any character, but no lone surrogate (which
# validation refuses, see test_site_load.py, and which scm_str refuses too, below).
hard_text = st.text(
    alphabet=st.one_of(
        st.sampled_from(list("\"\\()#~$;|\n\r\t\x00\x01\x7f\x85\u2028 é€😀𝄞{}[]`',@")),
        st.characters(codec="utf-8"),
    ),
    max_size=60,
)


@needs_guile
@settings(max_examples=150, deadline=None, suppress_health_check=FIXTURES_OK)
@given(values=st.lists(hard_text, min_size=1, max_size=8))
def test_strings_round_trip_through_guile(tmp_path: Path, values: list[str]) -> None:
    body = "(for-each (lambda (s) (display (hex s)) (newline)) (list {}))\n".format(
        " ".join(scm_str(v) for v in values)
    )
    assert guile_lines(tmp_path, body) == [v.encode("utf-8").hex() for v in values]


@needs_guile
@settings(max_examples=100, deadline=None, suppress_health_check=FIXTURES_OK)
@given(name=hard_text.filter(bool))
def test_symbols_round_trip_through_guile(tmp_path: Path, name: str) -> None:
    body = f"(display (hex (symbol->string '{scm_sym(name)}))) (newline)\n"
    assert guile_lines(tmp_path, body) == [name.encode("utf-8").hex()]


@needs_guile
@settings(max_examples=100, deadline=None, suppress_health_check=FIXTURES_OK)
@given(text=hard_text)
def test_comments_cannot_escape(tmp_path: Path, text: str) -> None:
    body = f';; {scm_comment(text)}\n(display "only this") (newline)\n'
    assert guile_lines(tmp_path, body) == ["only this"]


def test_known_literals() -> None:
    assert scm_str('say "hi" \\ #~(x) $HOME\n') == r'"say \"hi\" \\ #~(x) $HOME\n"'
    assert scm_str("\x01é") == '"\\x01é"'
    assert scm_sym("user-processes") == "user-processes"
    assert scm_sym("two words") == "#{two\\x20;words}#"
    assert scm_strs(["a", 'b"']) == '\'("a" "b\\"")'


@pytest.mark.parametrize("bad", [1, None, b"x"])
def test_scm_str_refuses_non_text(bad: object) -> None:
    with pytest.raises(TypeError):
        scm_str(bad)


@settings(max_examples=100)
@given(before=hard_text, surrogate=st.characters(categories=["Cs"]), after=hard_text)
def test_lone_surrogates_are_refused(before: str, surrogate: str, after: str) -> None:
    with pytest.raises(ValueError, match="surrogate"):
        scm_str(before + surrogate + after)


def test_environment_is_strict() -> None:
    template = environment().from_string("(host-name {{ site.host | scm_str }})")
    with pytest.raises(jinja2.UndefinedError):
        template.render()
