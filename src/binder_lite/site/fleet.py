"""The `deploy:` list: the machines `binder-lite deploy` sends the site's system to.

Each machine's host key comes from the site file or, when deploying, from the
workstation's known_hosts; a machine with neither is refused, never trusted on
first use.  Guix 1.5 compares only `ssh-ed25519` and `ssh-rsa` host keys (its
`host-key->type+key` maps only `ssh-*` names to key types), so others are refused.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import re
from pathlib import Path

from binder_lite.site import checks
from binder_lite.site.model import DEPLOY_SYSTEM, DeployMachine, User
from binder_lite.site.reader import REQUIRED, Section

# What `(systems)` lists in Guix 1.5 (guix/platform.scm); Guix refuses anything else.
GUIX_SYSTEMS = (
    "x86_64-linux",
    "i686-linux",
    "aarch64-linux",
    "armhf-linux",
    "powerpc64le-linux",
    "powerpc-linux",
    "riscv64-linux",
    "mips64el-linux",
    "x86_64-gnu",
    "i586-gnu",
)
# Preferred first: libssh offers ed25519 first, so that is the key a server shows.
DEPLOY_KEY_TYPES = ("ssh-ed25519", "ssh-rsa")
KEY_HINT = (
    "read it on the machine itself (its console, not over the network): "
    "cat /etc/ssh/ssh_host_ed25519_key.pub"
)
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def host(value: str) -> None:
    """A DNS name (one or more labels) or an IP address, as `ssh` takes it."""
    try:
        ipaddress.ip_address(value)
        return
    except ValueError:
        pass
    labels = value.removesuffix(".").split(".")
    if len(value) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise checks.Invalid(
            f"{value!r} is not a host name or IP address",
            "e.g. binder1.example.org, 192.0.2.10 or 2001:db8::10",
        )


def host_key(value: str) -> str:
    """A public host key Guix can compare, as "TYPE BASE64" (the comment dropped)."""
    checks.ssh_public_key(value)
    kind, blob = value.split()[:2]
    if kind not in DEPLOY_KEY_TYPES:
        raise checks.Invalid(
            f"`guix deploy` (Guix 1.5) cannot check {kind} host keys",
            f"give the machine's {' or '.join(DEPLOY_KEY_TYPES)} key; {KEY_HINT}",
        )
    return f"{kind} {blob}"


def known_host_key(known_hosts: Path, name: str) -> str | None:
    """The best key `known_hosts` holds for `name` (`host` or `[host]:port`), as
    OpenSSH reads the file: hashed names, patterns and `!` negations match, `@revoked`
    keys never count, `@cert-authority` lines are not host keys, and a line it cannot
    read is skipped.  None when it has no key Guix can check.  Raises `Invalid` when
    the file cannot be read at all."""
    if not known_hosts.is_file():
        return None
    try:
        text = known_hosts.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise checks.Invalid(f"cannot read {known_hosts}: {e.strerror}") from None
    found: list[tuple[str, str]] = []
    revoked: set[str] = set()
    for line in text.splitlines():
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        marker = fields.pop(0) if fields[0].startswith("@") else None
        if len(fields) < 3 or not _is_key(fields[1], fields[2]):
            continue
        if marker == "@revoked":
            revoked.add(fields[2])
        elif marker is None and _names_match(fields[0], name):
            found.append((fields[1], fields[2]))
    usable = [(kind, blob) for kind, blob in found if blob not in revoked]
    for wanted in DEPLOY_KEY_TYPES:
        blob = next((blob for kind, blob in usable if kind == wanted), None)
        if blob is not None:
            return f"{wanted} {blob}"
    return None


def _is_key(kind: str, blob: str) -> bool:
    try:
        checks.ssh_public_key(f"{kind} {blob}")
    except checks.Invalid:
        return False
    return True


def _names_match(patterns: str, name: str) -> bool:
    """OpenSSH's rule for the first field: a negated pattern that matches wins."""
    matched = False
    for pattern in patterns.split(","):
        negated = pattern.startswith("!")
        if _name_matches(pattern.removeprefix("!"), name):
            if negated:
                return False
            matched = True
    return matched


def _name_matches(pattern: str, name: str) -> bool:
    if pattern.startswith("|1|"):  # HashKnownHosts: HMAC-SHA1 of the name, salted
        try:
            salt, digest = (base64.b64decode(part) for part in pattern[3:].split("|"))
        except (ValueError, binascii.Error):
            return False
        return hmac.compare_digest(hmac.new(salt, name.encode(), hashlib.sha1).digest(), digest)
    # OpenSSH's patterns know only * and ?: the brackets of [host]:port are literal.
    regex = "".join({"*": ".*", "?": "."}.get(c, re.escape(c)) for c in pattern.lower())
    return re.fullmatch(regex, name.lower()) is not None


def machines(
    root: Section, base: Path, users: tuple[User, ...], known_hosts: Path | None
) -> tuple[DeployMachine, ...]:
    """Read `deploy:`.  With `known_hosts` (a deployment from this workstation), keys
    not given are looked up there and identity files must exist."""
    found: list[DeployMachine] = []
    seen: dict[tuple[str, int], int] = {}
    for s in root.sections("deploy"):
        machine = _machine(s, base, users, known_hosts)
        if machine is None:
            continue
        where = (machine.host.lower(), machine.port)
        if where in seen:
            s.fail(
                s.mark_of("host"),
                "host",
                f"{machine.host} port {machine.port} is listed twice "
                f"(first as deploy[{seen[where]}])",
            )
        seen.setdefault(where, len(found))
        found.append(machine)
    return tuple(found)


def _machine(
    s: Section, base: Path, users: tuple[User, ...], known_hosts: Path | None
) -> DeployMachine | None:
    name = s.text("host", REQUIRED, host)
    port = s.integer("port", 22, 1, 65535)
    user = s.text("user", "root", checks.user_name)
    identity = _identity(s, base, known_hosts is not None)
    key = s.text("host_key", None, host_key)
    system = s.text("system", DEPLOY_SYSTEM)
    build_locally = s.boolean("build_locally", True)
    hostname = s.text("hostname", None, checks.hostname)
    s.finish()
    if system not in GUIX_SYSTEMS:
        s.fail(
            s.mark_of("system"),
            "system",
            f"{system!r} is not a system type Guix knows",
            checks.did_you_mean(system, GUIX_SYSTEMS) or f"use one of {', '.join(GUIX_SYSTEMS)}",
        )
    _check_user(s, user, users)
    if name is None:
        return None
    if key is None and known_hosts is not None:
        key = _key_from(s, known_hosts, name, port)
    return DeployMachine(name, key, port, user, identity, system, build_locally, hostname)


def _identity(s: Section, base: Path, must_exist: bool) -> Path | None:
    value = s.text("identity")
    if value is None:
        return None
    path = (base / Path(value).expanduser()).absolute()
    if path.suffix == ".pub":
        s.fail(
            s.mark_of("identity"),
            "identity",
            f"{value!r} is a public key",
            f"give the private key file it belongs to, e.g. {path.with_suffix('')}",
        )
    elif must_exist and not path.is_file():
        s.fail(
            s.mark_of("identity"),
            "identity",
            f"{value!r} does not exist (looked for {path})",
            "the private key file on this workstation; relative paths are relative "
            "to the site file",
        )
    return path


def _check_user(s: Section, user: str, users: tuple[User, ...]) -> None:
    """Guix logs in as `user` and, unless it is root, runs `sudo -n` on the machine:
    only the site's admins have sudo without a password."""
    if user == "root" or not s.present("user"):
        return
    if not any(u.name == user and u.admin for u in users):
        s.fail(
            s.mark_of("user"),
            "user",
            f"{user!r} is not an admin of this site; `guix deploy` runs `sudo -n` as it",
            "deploy as root, or as a user with `admin: true` under users",
        )


def _key_from(s: Section, known_hosts: Path, name: str, port: int) -> str | None:
    entry = name if port == 22 else f"[{name}]:{port}"
    try:
        key = known_host_key(known_hosts, entry)
    except checks.Invalid as e:
        s.fail(s.mark, "host_key", e.message)
        return None
    if key is None:
        s.fail(
            s.mark,
            "host_key",
            f"no host key for {entry}: not given here, and {known_hosts} has no "
            f"{' or '.join(DEPLOY_KEY_TYPES)} key for it",
            f"add `host_key: ssh-ed25519 AAAA…`; {KEY_HINT}. Accepting whatever key the "
            "network shows (trust on first use) is what this refuses",
        )
    return key
