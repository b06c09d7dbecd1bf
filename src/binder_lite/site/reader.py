"""Typed, located reading of raw YAML mappings, collecting every problem on the way."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from binder_lite.errors import Problem
from binder_lite.site.checks import Invalid, did_you_mean
from binder_lite.site.load import Mark, RawMap, RawNode, RawScalar, RawSeq, describe

T = TypeVar("T")

# Marks a key that must be present.
REQUIRED: Any = object()


class Problems:
    """Collects problems for one file."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.items: list[Problem] = []

    def add(self, mark: Mark, path: str, message: str, hint: str | None = None) -> None:
        self.items.append(Problem(self.file, mark.line, mark.column, path, message, hint))


class Section:
    """One mapping of the site file.

    Each accessor names a key once, with its type and default; the keys asked for
    are the keys the section knows, so `finish()` can report the rest as unknown.
    """

    def __init__(self, problems: Problems, node: RawNode | None, path: str, mark: Mark) -> None:
        self.problems = problems
        self.path = path
        self.mark = mark
        self.known: list[str] = []
        self.node: RawMap | None = None
        if isinstance(node, RawMap):
            self.node = node
        elif node is not None and not (isinstance(node, RawScalar) and node.value is None):
            where = self.path or "the file"
            problems.add(
                node.mark,
                path,
                f"expected a mapping of keys, got {describe(node)}",
                f"{where} is written as `key: value` lines",
            )

    # -- plumbing -----------------------------------------------------------------

    def key_path(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def present(self, key: str) -> bool:
        return self.node is not None and key in self.node.items

    def _take(self, key: str, default: Any) -> RawNode | None:
        """The raw node for `key`, or None when absent or null (then the default applies)."""
        self.known.append(key)
        node = self.node.items.get(key) if self.node else None
        if isinstance(node, RawScalar) and node.value is None:
            node = None
        if node is None and default is REQUIRED:
            # Point at the section's own key (`host:`), where the missing key belongs.
            self.problems.add(self.mark, self.key_path(key), "is required")
        return node

    def fail(self, node: RawNode | Mark, key: str, message: str, hint: str | None = None) -> None:
        mark = node if isinstance(node, Mark) else node.mark
        self.problems.add(mark, self.key_path(key), message, hint)

    def _wrong_type(self, node: RawNode, key: str, expected: str) -> None:
        self.fail(node, key, f"expected {expected}, got {describe(node)}")

    def _checked(self, node: RawNode, key: str, value: T, check: Callable[[T], Any] | None) -> T:
        if check is None:
            return value
        try:
            result = check(value)
        except Invalid as e:
            self.fail(node, key, e.message, e.hint)
            return value
        return value if result is None else result

    # -- typed accessors ----------------------------------------------------------

    def text(self, key: str, default: Any = None, check: Callable[[str], Any] | None = None) -> Any:
        node = self._take(key, default)
        absent = None if default is REQUIRED else default
        if node is None:
            return absent
        value = self.scalar_text(node, key)
        return absent if value is None else self._checked(node, key, value, check)

    def scalar_text(self, node: RawNode, key: str) -> str | None:
        if not isinstance(node, RawScalar):
            self._wrong_type(node, key, "text")
            return None
        if isinstance(node.value, str):
            return self._writable(node, key, node.value)
        if node.plain:
            # YAML guessed a type (`keyboard: no` is a boolean, `hostname: 1234` a number);
            # for a text field the text as written is what the user meant.
            return self._writable(node, key, node.text)
        self._wrong_type(node, key, "text")
        return None

    def _writable(self, node: RawNode, key: str, value: str) -> str | None:
        """`value`, if it can be written as UTF-8 (into Scheme files, JSON, HTML).  A
        `\\ud800` escape in a quoted scalar gives a lone surrogate, which is no character
        (PyYAML does not join a `\\ud83d\\ude00` pair either)."""
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            code = ord(value[e.start])
            self.fail(
                node,
                key,
                f"contains U+{code:04X}, a lone surrogate, which is not a "
                "character and cannot be written as UTF-8",
                "write the character itself, or \\U and 8 hex digits for one beyond "
                "U+FFFF (e.g. \\U0001F600)",
            )
            return None
        return value

    def integer(self, key: str, default: int, low: int, high: int) -> int:
        node = self._take(key, default)
        if node is None:
            return default
        if not isinstance(node, RawScalar) or type(node.value) is not int:
            self._wrong_type(node, key, "a whole number")
            return default
        if not low <= node.value <= high:
            self.fail(node, key, f"{node.value} is out of range", f"use {low} to {high}")
            return default
        return node.value

    def boolean(self, key: str, default: bool) -> bool:
        node = self._take(key, default)
        if node is None:
            return default
        if not isinstance(node, RawScalar) or not isinstance(node.value, bool):
            self._wrong_type(node, key, "true or false")
            return default
        return node.value

    def texts(
        self, key: str, default: tuple[str, ...] = (), check: Callable[[str], Any] | None = None
    ) -> tuple[str, ...]:
        node = self._take(key, default)
        if node is None:
            return default
        if not isinstance(node, RawSeq):
            self._wrong_type(node, key, "a list")
            return default
        values: list[str] = []
        for i, item in enumerate(node.items):
            text = self.scalar_text(item, f"{key}[{i}]")
            if text is not None:
                values.append(self._checked(item, f"{key}[{i}]", text, check))
        return tuple(values)

    def text_map(self, key: str) -> tuple[tuple[str, str], ...]:
        node = self._take(key, None)
        if node is None:
            return ()
        if not isinstance(node, RawMap):
            self._wrong_type(node, key, "a mapping of names to text")
            return ()
        pairs: list[tuple[str, str]] = []
        for name, value in node.items.items():
            text = self.scalar_text(value, f"{key}.{name}")
            if text is not None:
                pairs.append((name, text))
        return tuple(pairs)

    def section(self, key: str, default: Any = None) -> Section:
        node = self._take(key, default)
        mark = self.node.keys[key] if self.node and key in self.node.keys else self.mark
        return Section(self.problems, node, self.key_path(key), mark)

    def sections(self, key: str) -> Iterator[Section]:
        node = self._take(key, None)
        if node is None:
            return
        if not isinstance(node, RawSeq):
            self._wrong_type(node, key, "a list")
            return
        for i, item in enumerate(node.items):
            yield Section(self.problems, item, f"{self.key_path(key)}[{i}]", item.mark)

    def mark_of(self, key: str) -> Mark:
        if self.node and key in self.node.items:
            return self.node.items[key].mark
        return self.node.mark if self.node else self.mark

    def finish(self) -> None:
        """Report every key nobody asked for."""
        if self.node is None:
            return
        for key, mark in self.node.keys.items():
            if key in self.known:
                continue
            if f"{key}_file" in self.known:
                self.fail(
                    mark,
                    key,
                    "secrets may not be written in the site file",
                    f"the rendered system goes into the world-readable /gnu/store; put the "
                    f"secret in a file on the target (mode 0600) and give its path as "
                    f"`{key}_file: /etc/binder-lite/{key.replace('_', '-')}`",
                )
                continue
            hint = did_you_mean(key, self.known) or f"known keys: {', '.join(self.known)}"
            self.fail(mark, key, "unknown key", hint)
