"""Adding package names to a person's manifest.scm, keeping every byte they wrote.

The manifest is read with a small Scheme reader that knows only what decides where a
datum starts and ends (strings, comments, block and datum comments, characters,
`#{…}#` symbols, quote prefixes), so that a parenthesis in a string or a comment is
never taken for structure.  The names go into the first `(specifications->manifest
'("…" …))` (or `(list "…" …)`) whose list holds strings only, laid out like the
names already there; a manifest without one has its last form wrapped in
`(concatenate-manifests (list FORM (specifications->manifest '(…))))`.  Every name is
written with `scm_str`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from binder_lite.scheme import scm_str

MAX_NODES = 200_000  # data read in one manifest (it is at most 1 MiB)

_DELIMITERS = frozenset(" \t\n\r\f()[]\";'`,")


class ManifestSyntaxError(ValueError):
    """The manifest is not Scheme this reader can follow; it is left as it is."""


@dataclass
class _Node:
    kind: str  # "list", "string", "atom", "quote"
    start: int
    end: int = 0
    text: str = ""  # an atom's text, a string's raw contents
    children: list[_Node] = field(default_factory=list)


@dataclass
class _Frame:
    node: _Node
    prefixes: list[tuple[str, int]] = field(default_factory=list)  # ("quote" | "drop", start)


def present(text: str) -> set[str]:
    """Package names the manifest mentions in strings (`"glib:bin"` counts as glib)."""
    return {_spec_name(node.text) for node in _walk(_read(text)) if node.kind == "string"}


def add(text: str, specs: list[str]) -> str:
    """`text` with `specs` (package specifications) added; raises ManifestSyntaxError."""
    root = _read(text)
    items = [scm_str(spec) for spec in specs]
    for node in _walk(root):
        target = _spec_list(node)
        if target is not None:
            return _insert(text, *target, items)
    if not root.children:
        raise ManifestSyntaxError("it holds no Scheme form")
    last = root.children[-1]
    return (
        text[: last.start]
        + "(concatenate-manifests\n (list "
        + text[last.start : last.end]
        + "\n       (specifications->manifest\n        '("
        + " ".join(items)
        + "))))"
        + text[last.end :]
    )


def new_manifest(specs: list[str], why: str) -> str:
    """A manifest of `specs`, one per line, after a comment saying `why`."""
    lines = "\n   ".join(scm_str(spec) for spec in specs)
    return f"{why}\n(specifications->manifest\n '({lines}))\n"


def _spec_name(spec: str) -> str:
    return spec.split(":", 1)[0].split("@", 1)[0]


def _spec_list(node: _Node) -> tuple[_Node, list[_Node], int] | None:
    """For `(specifications->manifest '("a" …))` or `(… (list "a" …))`: the list that
    holds the names, the names, and where the first name may go."""
    parts = node.children
    if node.kind != "list" or len(parts) != 2 or parts[0].kind != "atom":
        return None
    if parts[0].text != "specifications->manifest":
        return None
    argument = parts[1]
    if argument.kind == "quote" and argument.children[0].kind == "list":
        names = argument.children[0]
        strings, after = names.children, names.start + 1
    elif argument.kind == "list" and argument.children and argument.children[0].kind == "atom":
        head = argument.children[0]
        if head.text == "list":
            names, strings, after = argument, argument.children[1:], head.end
        elif head.text == "quote" and len(argument.children) == 2:
            names = argument.children[1]
            if names.kind != "list":
                return None
            strings, after = names.children, names.start + 1
        else:
            return None
    else:
        return None
    if any(s.kind != "string" for s in strings):
        return None
    return names, strings, after


def _insert(text: str, names: _Node, strings: list[_Node], after: int, items: list[str]) -> str:
    if not strings:
        return text[:after] + " ".join(items) + text[after:]
    last = strings[-1]
    first_line = text.count("\n", names.start, strings[0].start) > 0
    one_per_line = text.count("\n", strings[0].start, last.start) > 0 or first_line
    if one_per_line:
        column = last.start - (text.rfind("\n", 0, last.start) + 1)
        indent = "".join(c if c == "\t" else " " for c in text[last.start - column : last.start])
        added = "".join(f"\n{indent}{item}" for item in items)
    else:
        added = "".join(f" {item}" for item in items)
    return text[: last.end] + added + text[last.end :]


def _walk(root: _Node) -> list[_Node]:
    """Every node, parents before children, in the order they are written."""
    out: list[_Node] = []
    todo = [root]
    while todo:
        node = todo.pop()
        out.append(node)
        todo.extend(reversed(node.children))
    return out


def _read(text: str) -> _Node:
    root = _Node("list", -1, len(text))
    stack = [_Frame(root)]
    count = 0
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        count += 1
        if count > MAX_NODES:
            raise ManifestSyntaxError(f"more than {MAX_NODES} data")
        if c in " \t\n\r\f":
            i += 1
        elif c == ";":
            end = text.find("\n", i)
            i = n if end < 0 else end
        elif text.startswith("#|", i):
            i = _block_comment(text, i)
        elif text.startswith("#;", i):
            stack[-1].prefixes.append(("drop", i))
            i += 2
        elif c in "([" or text.startswith("#(", i):
            stack.append(_Frame(_Node("list", i)))
            i += 2 if c == "#" else 1
        elif c in ")]":
            if len(stack) == 1 or stack[-1].prefixes:
                raise ManifestSyntaxError(
                    f"a closing parenthesis with nothing open, at {_at(text, i)}"
                )
            frame = stack.pop()
            frame.node.end = i + 1
            _complete(stack[-1], frame.node)
            i += 1
        elif c in "'`" or (c == "#" and i + 1 < n and text[i + 1] in "'`,~$"):
            width = 1 if c in "'`" else 2
            if text.startswith(",@", i + width - 1) or text.startswith("$@", i + 1):
                width += 1
            stack[-1].prefixes.append(("quote", i))
            i += width
        elif c == ",":
            stack[-1].prefixes.append(("quote", i))
            i += 2 if text.startswith(",@", i) else 1
        elif c == '"':
            end = _string_end(text, i)
            _complete(stack[-1], _Node("string", i, end, text[i + 1 : end - 1]))
            i = end
        else:
            end = _atom_end(text, i)
            _complete(stack[-1], _Node("atom", i, end, text[i:end]))
            i = end
    if len(stack) != 1 or stack[0].prefixes:
        raise ManifestSyntaxError("a parenthesis is not closed")
    return root


def _complete(frame: _Frame, node: _Node) -> None:
    """Put a finished datum in its list, inside the quotes before it, unless a `#;`
    comments it out."""
    while frame.prefixes:
        kind, start = frame.prefixes.pop()
        if kind == "drop":
            return
        node = _Node("quote", start, node.end, children=[node])
    frame.node.children.append(node)


def _block_comment(text: str, start: int) -> int:
    depth, i = 0, start
    while i < len(text):
        if text.startswith("#|", i):
            depth, i = depth + 1, i + 2
        elif text.startswith("|#", i):
            depth, i = depth - 1, i + 2
            if depth == 0:
                return i
        else:
            i += 1
    raise ManifestSyntaxError(f"a #| comment is not closed, from {_at(text, start)}")


def _string_end(text: str, start: int) -> int:
    i = start + 1
    while i < len(text):
        if text[i] == "\\":
            i += 2
        elif text[i] == '"':
            return i + 1
        else:
            i += 1
    raise ManifestSyntaxError(f"a string is not closed, from {_at(text, start)}")


def _atom_end(text: str, start: int) -> int:
    if text.startswith("#\\", start):  # a character: #\( is no parenthesis
        i = start + 3
    elif text.startswith("#{", start):  # a symbol written #{…}#
        end = text.find("}#", start + 2)
        if end < 0:
            raise ManifestSyntaxError(f"a #{{ symbol is not closed, from {_at(text, start)}")
        return end + 2
    else:
        i = start + 1
    while i < len(text) and text[i] not in _DELIMITERS:
        i += 1
    return i


def _at(text: str, offset: int) -> str:
    line = text.count("\n", 0, offset) + 1
    return f"line {line}"
