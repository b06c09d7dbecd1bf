"""Checks for single values.  Each raises `Invalid` with what is wrong and a hint."""

from __future__ import annotations

import base64
import binascii
import difflib
import ipaddress
import re
import zoneinfo
from collections.abc import Callable, Iterable
from functools import cache


class Invalid(Exception):
    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


CheckFn = Callable[[str], None]


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean `{close[0]}`?" if close else None


def matches(pattern: str, what: str, hint: str | None = None) -> CheckFn:
    regex = re.compile(pattern)

    def check(value: str) -> None:
        if not regex.fullmatch(value):
            raise Invalid(f"{value!r} is not {what}", hint)

    return check


slug = matches(
    r"[a-z0-9-]{1,32}", "a valid slug", "use 1 to 32 lowercase letters, digits and dashes"
)
user_name = matches(
    r"[a-z_][a-z0-9_-]{0,31}",
    "a valid user name",
    "start with a lowercase letter or _, then up to 31 lowercase letters, digits, _ or -",
)
service_name = matches(
    r"[a-z][a-z0-9-]{0,62}",
    "a valid service name",
    "use lowercase letters, digits and dashes, starting with a letter",
)
color = matches(r"#(?:[0-9a-fA-F]{3}){1,2}", "a CSS hex colour", "write it like #0b6e4f")
locale = matches(
    r"[a-z]{2,3}(?:_[A-Z]{2})?(?:@[a-z]+)?\.(?:utf8|UTF-8)",
    "a UTF-8 locale name",
    "Guix locale names look like en_US.utf8",
)
keyboard = matches(r"[a-z][a-z0-9_-]{0,31}", "a keyboard layout name", "e.g. us, de, fr")
package = matches(
    r"[A-Za-z0-9][A-Za-z0-9+._-]*(?:@[A-Za-z0-9][A-Za-z0-9.+_-]*)?(?::[a-z0-9-]+)?",
    "a Guix package specification",
    "write NAME, NAME@VERSION or NAME:OUTPUT, as `guix install` takes them",
)
interface = matches(r"[A-Za-z0-9_.:-]{1,15}", "a network interface name", "e.g. eth0, eno1")
symbol = matches(
    r"[a-z][a-z0-9-]{0,62}", "a Shepherd service name", "e.g. networking, user-processes"
)
device = matches(r"/dev/[A-Za-z0-9/_.-]+", "a device file", "e.g. /dev/sda or /dev/nvme0n1")
env_name = matches(r"[A-Za-z_][A-Za-z0-9_]*", "an environment variable name")
email = matches(
    r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+",
    "an email address",
    "e.g. admin@example.org",
)


def hostname(value: str) -> None:
    if not re.fullmatch(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)", value):
        raise Invalid(
            f"{value!r} is not a valid host name",
            "use one RFC 1123 label: 1 to 63 letters, digits and dashes, "
            "not starting or ending with a dash",
        )


@cache
def _zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def timezone(value: str) -> None:
    zones = _zones()
    # Without a tz database here nothing can be looked up; Guix checks it when it builds.
    if zones and value not in zones:
        raise Invalid(f"{value!r} is not a known time zone", did_you_mean(value, zones))


SSH_KEY_TYPES = (
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
)


def ssh_public_key(value: str) -> None:
    if "PRIVATE KEY" in value:
        raise Invalid(
            "this is a private key; it must never leave your machine",
            "give the public key: the one line in the .pub file",
        )
    parts = value.split()
    if "\n" in value.strip() or len(parts) < 2:
        raise Invalid("not an SSH public key", "give one line like `ssh-ed25519 AAAA… you@host`")
    kind, blob = parts[0], parts[1]
    if kind not in SSH_KEY_TYPES:
        raise Invalid(f"unknown SSH key type {kind!r}", f"use one of {', '.join(SSH_KEY_TYPES)}")
    try:
        raw = base64.b64decode(blob, validate=True)
    except (binascii.Error, ValueError):
        raise Invalid("the key data is not valid base64", "copy the whole line again") from None
    length = int.from_bytes(raw[:4], "big")
    if raw[4 : 4 + length] != kind.encode():
        raise Invalid(f"the key data is not a {kind} key", "copy the whole line again")


def ip_interface(value: str) -> None:
    if "/" not in value:
        raise Invalid(f"{value!r} has no prefix length", f"write it as {value}/24 (or your prefix)")
    try:
        ipaddress.ip_interface(value)
    except ValueError:
        raise Invalid(f"{value!r} is not an IP address with prefix length") from None


def ip_address(value: str) -> None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise Invalid(f"{value!r} is not an IP address") from None


def absolute_target_path(value: str) -> None:
    if not value.startswith("/") or "\n" in value:
        raise Invalid(
            f"{value!r} is not an absolute path on the target",
            "give the full path of the file on the installed machine, e.g. "
            "/etc/binder-lite/oauth-secret",
        )


def https_url(value: str) -> None:
    if not re.fullmatch(r"https://[^\s/]+(?:/\S*)?", value):
        raise Invalid(f"{value!r} is not an https:// URL")


def issuer_url(value: str) -> None:
    """https://, or http:// on this machine only (a provider under test or a tunnel)."""
    if re.fullmatch(r"http://(?:127\.0\.0\.1|localhost|\[::1\])(?::\d+)?(?:/\S*)?", value):
        return
    https_url(value)


def origin(value: str) -> None:
    """A web origin as a browser sends it in Origin: scheme://host[:port], lower case,
    no path and no default port (a listed origin is compared exactly)."""
    hint = "an origin is scheme://host[:port] as browsers send it, e.g. https://docs.example.org"
    m = re.fullmatch(
        r"(https?)://([a-z0-9](?:[a-z0-9.-]*[a-z0-9])?|\[[0-9a-f:.]+\])(?::(\d{1,5}))?", value
    )
    if m is None:
        raise Invalid(f"{value!r} is not an origin", hint)
    scheme, _, port = m.groups()
    if port is not None and (
        not 1 <= int(port) <= 65535 or port != str(int(port)) or int(port) == _PORTS[scheme]
    ):
        raise Invalid(f"{value!r} is not an origin: its port is wrong or the default", hint)


_PORTS = {"http": 80, "https": 443}


def repo_pattern(value: str) -> None:
    if not re.fullmatch(r"(?:https|git)://\S+", value):
        raise Invalid(
            f"{value!r} is not a repository URL pattern",
            "patterns start with https:// or git://, with * as a wildcard, e.g. "
            "https://github.com/genenetwork/*",
        )


_UNITS = {
    "": 1,
    "B": 1,
    "K": 1024,
    "KIB": 1024,
    "KB": 1000,
    "M": 1024**2,
    "MIB": 1024**2,
    "MB": 1000**2,
    "G": 1024**3,
    "GIB": 1024**3,
    "GB": 1000**3,
    "T": 1024**4,
    "TIB": 1024**4,
    "TB": 1000**4,
}

MIN_IMAGE_BYTES = 1024**3


def byte_size(value: str) -> int:
    """A size in bytes, from `512MiB`, `2G`, `1000000`..."""
    m = re.fullmatch(r"(\d+)\s*([A-Za-z]*)", value.strip())
    if not m or m.group(2).upper() not in _UNITS:
        raise Invalid(f"{value!r} is not a size", "write it like 2GiB, 512MiB or 1000000")
    return int(m.group(1)) * _UNITS[m.group(2).upper()]


def ip_network(value: str) -> None:
    """An address or a CIDR network (trusted proxies)."""
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise Invalid(
            f"{value!r} is not an IP address or network", "e.g. 10.0.0.5 or 10.0.0.0/24"
        ) from None


def public_url(value: str) -> None:
    """Where people reach the service: https://, or http:// on this machine."""
    if re.fullmatch(r"http://(?:127\.0\.0\.1|localhost|\[::1\])(?::\d+)?(?:/\S*)?", value):
        return
    https_url(value)


def domain(value: str) -> None:
    labels = value.split(".")
    if len(labels) < 2 or not all(_LABEL.fullmatch(label) for label in labels):
        raise Invalid(f"{value!r} is not a domain name", "e.g. sessions.binder.example.org")


_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


def image_size(value: str) -> str:
    """Normalise a size to what `--image-size` takes; refuse what cannot hold a system."""
    m = re.fullmatch(r"(\d+)\s*([A-Za-z]*)", value.strip())
    if not m or m.group(2).upper() not in _UNITS:
        raise Invalid(f"{value!r} is not a size", "write it like 20GiB, 8G or 4096MiB")
    number, unit = int(m.group(1)), m.group(2)
    if number * _UNITS[unit.upper()] < MIN_IMAGE_BYTES:
        raise Invalid(f"{value} is too small for a Guix System image", "give at least 1GiB")
    return f"{number}{unit}"
