"""Read a YAML file into a tree of raw nodes that remember where they came from.

Nothing here knows the site schema; it only guarantees that what comes out is a
tree of mappings with string keys, sequences and typed scalars, each with its
line and column, or a list of located problems.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import SafeConstructor

from binder_lite.errors import Problem

# A site file is a few kilobytes.  These bounds refuse alias bombs ("billion laughs")
# before anything is expanded: composing keeps aliases as shared references, so the
# node graph stays small and its expanded size can be counted without building it.
MAX_BYTES = 1 << 20
MAX_EXPANDED_NODES = 20_000


@dataclass(frozen=True)
class Mark:
    line: int  # 1-based
    column: int  # 1-based

    @staticmethod
    def of(node: yaml.Node) -> Mark:
        return Mark(node.start_mark.line + 1, node.start_mark.column + 1)


@dataclass(frozen=True)
class RawScalar:
    value: Any  # as YAML's safe constructor types it (str, int, bool, None, ...)
    text: str  # the scalar as written, for string fields given e.g. `no` or `1234`
    plain: bool  # unquoted, so YAML guessed the type
    mark: Mark


@dataclass(frozen=True)
class RawMap:
    items: dict[str, RawNode]
    keys: dict[str, Mark]  # where each key was written
    mark: Mark


@dataclass(frozen=True)
class RawSeq:
    items: list[RawNode] = field(default_factory=list)
    mark: Mark = Mark(1, 1)


RawNode = RawScalar | RawMap | RawSeq


def describe(node: RawNode) -> str:
    """How a node reads in an error message: 'a list', 'the text "x"', ..."""
    if isinstance(node, RawMap):
        return "a mapping"
    if isinstance(node, RawSeq):
        return "a list"
    if node.value is None:
        return "nothing (null)"
    if isinstance(node.value, bool):
        return f"the boolean {node.text}"
    if isinstance(node.value, int | float):
        return f"the number {node.text}"
    return f"the text {node.text!r}"


def load_yaml(path: Path) -> tuple[RawNode | None, list[Problem]]:
    """Parse `path`; return its root node, or None and the problems that stopped it."""
    name = str(path)
    problems: list[Problem] = []
    try:
        data = path.read_bytes()
    except OSError as e:
        return None, [Problem(name, 1, 1, "", f"cannot read the file: {e.strerror}")]
    if len(data) > MAX_BYTES:
        return None, [Problem(name, 1, 1, "", f"the file is larger than {MAX_BYTES} bytes")]
    text = _decode(name, data, problems)
    if text is None:
        return None, problems
    if not text.strip() or _only_comments(text):
        hint = "start from `binder-lite site init`"
        return None, [Problem(name, 1, 1, "", "the file is empty", hint)]
    try:
        documents = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.MarkedYAMLError as e:
        return None, [_syntax_problem(name, e)]
    except yaml.YAMLError as e:  # unmarked errors are rare (e.g. reader errors)
        return None, [Problem(name, 1, 1, "", f"not valid YAML: {e}")]
    documents = [d for d in documents if d is not None]
    if len(documents) != 1:
        m = documents[1].start_mark if len(documents) > 1 else None
        line, col = (m.line + 1, m.column + 1) if m else (1, 1)
        return None, [Problem(name, line, col, "", "expected exactly one YAML document")]
    root = documents[0]
    bomb = _expansion_problem(name, root)
    if bomb:
        return None, [bomb]
    raw = _convert(name, root, problems)
    return (None if problems else raw), problems


def load_json(path: Path) -> tuple[RawNode | None, list[Problem]]:
    """Parse the JSON file the binder-lite service type writes (Guile's JSON library
    escapes characters beyond U+FFFF as surrogate pairs, which YAML would not join).
    JSON keeps no positions: every node is at 1:1."""
    name = str(path)
    try:
        value = json.loads(path.read_bytes(), object_pairs_hook=_unique_keys)
    except OSError as e:
        return None, [Problem(name, 1, 1, "", f"cannot read the file: {e.strerror}")]
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, a key given twice
        return None, [Problem(name, 1, 1, "", f"not valid JSON: {e}")]
    return _from_json(value), []


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"a key is given twice in {keys}")
    return dict(pairs)


def _from_json(value: Any) -> RawNode:
    mark = Mark(1, 1)
    if isinstance(value, dict):
        items = {key: _from_json(item) for key, item in value.items()}
        return RawMap(items, dict.fromkeys(items, mark), mark)
    if isinstance(value, list):
        return RawSeq([_from_json(item) for item in value], mark)
    if isinstance(value, str):
        return RawScalar(value, value, False, mark)
    return RawScalar(value, json.dumps(value), True, mark)  # unquoted, as in YAML


def _decode(name: str, data: bytes, problems: list[Problem]) -> str | None:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        before = data[: e.start]
        line = before.count(b"\n") + 1
        column = e.start - (before.rfind(b"\n") + 1) + 1
        problems.append(
            Problem(
                name,
                line,
                column,
                "",
                f"byte 0x{data[e.start]:02x} is not valid UTF-8",
                "save the file as UTF-8",
            )
        )
        return None


def _only_comments(text: str) -> bool:
    lines = (ln.strip() for ln in text.splitlines())
    return all(not ln or ln.startswith("#") or ln in ("---", "...") for ln in lines)


def _syntax_problem(name: str, e: yaml.MarkedYAMLError) -> Problem:
    mark = e.problem_mark or e.context_mark
    line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    what = " ".join(p for p in (e.context, e.problem) if p)
    hint = None
    if e.problem and "found character '\\t'" in e.problem:
        hint = "YAML indents with spaces, not tabs"
    return Problem(name, line, col, "", f"YAML syntax error: {what}", hint)


def _expansion_problem(name: str, root: yaml.Node) -> Problem | None:
    """Count the nodes the document would have with every alias expanded."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise RecursionError
        active.add(key)
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        total = 1
        for child in children:
            total += size(child)
            if total > MAX_EXPANDED_NODES:
                break
        active.discard(key)
        sizes[key] = total
        return total

    try:
        total = size(root)
    except RecursionError:
        return Problem(name, 1, 1, "", "the document refers to itself through an alias")
    if total > MAX_EXPANDED_NODES:
        return Problem(
            name,
            1,
            1,
            "",
            f"the document expands to more than {MAX_EXPANDED_NODES} values through "
            "aliases (&anchor/*alias); refusing to expand it",
        )
    return None


_constructor = SafeConstructor()


def _convert(name: str, node: yaml.Node, problems: list[Problem]) -> RawNode:
    mark = Mark.of(node)
    if isinstance(node, yaml.ScalarNode):
        value = _constructor.construct_object(node, deep=True)
        return RawScalar(value, str(node.value), node.style is None, mark)
    if isinstance(node, yaml.SequenceNode):
        return RawSeq([_convert(name, child, problems) for child in node.value], mark)
    assert isinstance(node, yaml.MappingNode)
    _constructor.flatten_mapping(node)  # resolve `<<: *base` merge keys
    items: dict[str, RawNode] = {}
    keys: dict[str, Mark] = {}
    for key_node, value_node in node.value:
        key_mark = Mark.of(key_node)
        if not isinstance(key_node, yaml.ScalarNode) or not isinstance(
            _constructor.construct_object(key_node), str
        ):
            problems.append(
                Problem(name, key_mark.line, key_mark.column, "", "keys must be plain names")
            )
            continue
        key = str(key_node.value)
        if key in items:
            first = keys[key]
            problems.append(
                Problem(
                    name,
                    key_mark.line,
                    key_mark.column,
                    key,
                    f"duplicate key (first given at line {first.line})",
                )
            )
            continue
        keys[key] = key_mark
        items[key] = _convert(name, value_node, problems)
    return RawMap(items, keys, mark)
