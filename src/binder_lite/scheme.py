"""The one Jinja environment, with filters that write Scheme literals for any input.

Templates never build Scheme literals by hand: every value from a site file goes
through `scm_str`, `scm_sym` and friends, so quotes, backslashes, `#~`, `$`,
parentheses and newlines in users' text reach Guix as the exact same text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import cache

import jinja2

from binder_lite.paths import data_dir

# Escapes Guile's reader understands inside strings.  Everything else is written
# as itself (the generated files declare UTF-8), except control characters.
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r"}

# Symbols written bare: a subset of R7RS identifiers that no reader confuses with
# numbers or syntax.  Anything else is written with Guile's #{…}# syntax.
_PLAIN_SYMBOL = re.compile(r"[a-z][a-z0-9-]*|[a-z][a-z0-9-]*[?!]")


def _escape_char(ch: str) -> str:
    if ch in _ESCAPES:
        return _ESCAPES[ch]
    code = ord(ch)
    if 0xD800 <= code <= 0xDFFF:
        raise ValueError(f"lone surrogate U+{code:04X} cannot be written to a Scheme file")
    if code < 0x20 or 0x7F <= code < 0xA0:
        return f"\\x{code:02x}"
    return ch


def scm_str(value: object) -> str:
    """A Scheme string literal whose value is `value` (which must be text)."""
    if not isinstance(value, str):
        raise TypeError(f"scm_str expects text, got {type(value).__name__}")
    return '"' + "".join(map(_escape_char, value)) + '"'


def scm_sym(value: object) -> str:
    """A Scheme symbol (unquoted) whose name is `value`."""
    if not isinstance(value, str) or not value:
        raise TypeError(f"scm_sym expects non-empty text, got {value!r}")
    if _PLAIN_SYMBOL.fullmatch(value):
        return value
    body = "".join(
        f"\\x{ord(c):x};" if c in "}#\\|" or ord(c) < 0x20 or c.isspace() else c for c in value
    )
    return "#{" + body + "}#"


def scm_strs(values: Iterable[object]) -> str:
    """A quoted list of strings: '("a" "b")."""
    return "'(" + " ".join(scm_str(v) for v in values) + ")"


def scm_syms(values: Iterable[object]) -> str:
    """A quoted list of symbols: '(a b)."""
    return "'(" + " ".join(scm_sym(v) for v in values) + ")"


def scm_comment(value: object) -> str:
    """Text for a `;;` comment: line breaks and control characters become spaces, so
    nothing a user wrote can end the comment and be read as code."""
    return "".join(
        " " if ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 or c in "\u2028\u2029\x85" else c
        for c in str(value)
    )


def scm_bool(value: object) -> str:
    if not isinstance(value, bool):
        raise TypeError(f"scm_bool expects a boolean, got {value!r}")
    return "#t" if value else "#f"


def scm_int(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"scm_int expects an integer, got {value!r}")
    return str(value)


@cache
def environment() -> jinja2.Environment:
    """The strict environment every template is rendered with."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(data_dir()),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        scm_str=scm_str,
        scm_sym=scm_sym,
        scm_strs=scm_strs,
        scm_syms=scm_syms,
        scm_bool=scm_bool,
        scm_comment=scm_comment,
        scm_int=scm_int,
    )
    return env
