"""conda's environment.yml, read as data.

As with requirements files, only what passed a strict grammar is repeated (a package
name and its version spec, a channel name); anything else is reported by file and line.
The YAML is composed, not constructed: nodes carry their line numbers, and nothing
but strings, lists and mappings is looked at.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import yaml

from binder_lite.errors import EnvironmentSpecError
from binder_lite.launch.repofiles import RepoFile
from binder_lite.launch.requirements import MAX_ENTRIES, MAX_LINE, Skipped

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_V = r"[0-9*][A-Za-z0-9_.*+!-]*"
# A version spec, then a build string (after white space or a second "=").
_SPEC = re.compile(
    rf" ?(?P<spec>(?:[=<>!~]{{1,2}} ?)?{_V}(?: ?[,|] ?(?:[=<>!~]{{1,2}} ?)?{_V})*)?"
    r"(?:[ =][A-Za-z0-9_.*+-]+)?"
)
_CHANNEL = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_VERSION = re.compile(r"[=<>!~ ]*(\d+(?:\.\d+)*)")


@dataclass(frozen=True)
class CondaDep:
    name: str
    spec: str = ""  # e.g. "=3.9" or ">=1.2,<2" (white space removed)
    where: str = ""

    @property
    def text(self) -> str:
        return f"{self.name}{self.spec}"

    @property
    def version(self) -> str:
        """The version its spec starts with ("3.9" of "=3.9"), or ""."""
        m = _VERSION.match(self.spec)
        return m[1] if m else ""


@dataclass(frozen=True)
class CondaEnvironment:
    deps: tuple[CondaDep, ...] = ()
    pip: tuple[tuple[str, str], ...] = ()  # (where, line) of the `pip:` list
    channels: tuple[str, ...] = ()
    skipped: tuple[Skipped, ...] = ()


def parse_dependency(text: str, where: str) -> CondaDep | Skipped:
    """`[channel::]name[ spec[ build]]` as conda reads a match spec (a common subset)."""
    if len(text) > MAX_LINE:
        return Skipped(where, f"not understood (longer than {MAX_LINE} characters)")
    _, _, rest = " ".join(text.split()).rpartition("::")
    m = _NAME.match(rest)
    spec = _SPEC.fullmatch(rest, m.end()) if m else None
    if m is None or spec is None:
        return Skipped(where, "not understood")
    version = (spec["spec"] or "").replace(" ", "")
    if version and version[0] not in "=<>!~":
        version = f"={version}"  # "numpy 1.26" means numpy=1.26
    return CondaDep(m[0], version, where)


def read_environment(file: RepoFile) -> CondaEnvironment:
    try:
        root = yaml.compose(file.text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f"{file.name}:{mark.line + 1}" if mark else file.name
        raise EnvironmentSpecError(
            f"{at}: cannot parse {file.real.name} (not valid YAML)"
        ) from None
    if root is None:
        return CondaEnvironment()
    if not isinstance(root, yaml.MappingNode):
        raise EnvironmentSpecError(f"{file.name}: a mapping (dependencies:, channels:) expected")
    fields = {k.value: v for k, v in root.value if isinstance(k, yaml.ScalarNode)}
    deps: list[CondaDep] = []
    pip: list[tuple[str, str]] = []
    skipped: list[Skipped] = []
    for node in _items(fields.get("dependencies"), file):
        where = _where(file, node)
        if isinstance(node, yaml.ScalarNode):
            entry = parse_dependency(str(node.value), where)
            (deps if isinstance(entry, CondaDep) else skipped).append(entry)  # type: ignore[arg-type]
        elif isinstance(node, yaml.MappingNode) and _pip_list(node):
            pip += [(_where(file, n), str(n.value)) for n in _items(_pip_list(node), file)]
        else:
            skipped.append(Skipped(where, "not understood"))
    channels: list[str] = []
    for node in _items(fields.get("channels"), file):
        value = str(node.value) if isinstance(node, yaml.ScalarNode) else ""
        if _CHANNEL.fullmatch(value):
            channels.append(value)
        else:  # a URL may carry a token: not repeated
            skipped.append(Skipped(_where(file, node), "a channel given by URL: not shown"))
    return CondaEnvironment(tuple(deps), tuple(pip), tuple(channels), tuple(skipped))


def _pip_list(node: yaml.MappingNode) -> yaml.Node | None:
    for key, value in node.value:
        if isinstance(key, yaml.ScalarNode) and key.value == "pip":
            return value  # type: ignore[no-any-return]
    return None


def _items(node: yaml.Node | None, file: RepoFile) -> list[yaml.Node]:
    if not isinstance(node, yaml.SequenceNode):
        return []
    if len(node.value) > MAX_ENTRIES:
        raise EnvironmentSpecError(
            f"{_where(file, node)}: more than {MAX_ENTRIES} entries; "
            "binder-lite reads at most that many"
        )
    return list(node.value)


def _where(file: RepoFile, node: yaml.Node) -> str:
    return f"{file.name}:{node.start_mark.line + 1}"
