"""`<image>.json`: what binder-lite knows about an image file, beside it.

One record (`ImageMeta`), one writer (`write`), one reader (`read`).  `image build`
writes it with a `BuildRecord` (what the image was built from); `image list`, the
no-op-build check and `vm run` read it back.  An image made some other way (the test
suite's stand-in) has the same record without the build part.  On disk the record is
one flat JSON object, the build's fields beside the others, as earlier versions wrote.

A file that is not JSON, or not this record (damaged, or some other tool's), raises
`MetadataError`, which says which file and what is wrong; callers decide whether that
stops them (`vm run`) or counts as no metadata (a build, which rewrites it).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from binder_lite.errors import BinderLiteError

FORMATS = ("raw", "qcow2", "iso")
FIRMWARES = ("bios", "efi")


class MetadataError(BinderLiteError):
    """An image's metadata file exists but cannot be read as binder-lite's."""


@dataclass(frozen=True)
class Boot:
    """How an image boots: from its disk (firmware bios/efi), or a given kernel.
    `kernel` and `initrd` may be relative to the image's directory."""

    firmware: str = "bios"
    kernel: str | None = None
    initrd: str | None = None
    append: str | None = None


@dataclass(frozen=True)
class BuildRecord:
    """What `image build` made the image from, and the file it wrote."""

    sha256: str
    nbytes: int  # the image file's size and mtime when written: a changed file is rebuilt
    mtime_ns: int
    size: str | None  # the size asked for (--size or the site's), None for Guix's guess
    derivation: str
    site: str
    site_sha256: str
    guix_version: str
    channels: str | None  # the pinned channels file's text
    build_seconds: float
    built_at: float  # seconds since the epoch


@dataclass(frozen=True)
class ImageMeta:
    image: str  # the image's file name
    type: str  # an ImageType, or what made it ("standin")
    format: str  # one of FORMATS: how QEMU reads it
    boot: Boot
    ssh_user: str | None  # who logs in with a key; None: ask
    ssh_port: int = 22
    http_port: int = 8080
    build: BuildRecord | None = None


def metadata_path(image: Path) -> Path:
    return image.with_name(image.name + ".json")


def write(image: Path, meta: ImageMeta) -> None:
    """Write `meta` beside `image` (atomically: a reader never sees half a file)."""
    target = metadata_path(image)
    partial = target.with_name(f".{target.name}.partial")
    partial.write_text(json.dumps(to_json(meta), indent=2) + "\n")
    os.replace(partial, target)


def read(image: Path) -> ImageMeta | None:
    """The metadata beside `image`; None if there is none.  Raises `MetadataError`."""
    path = metadata_path(image)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        raise MetadataError(f"{path}: cannot be read: {e}") from None
    try:
        return from_json(json.loads(text))
    except ValueError as e:  # json.JSONDecodeError and _Invalid are ValueErrors
        raise MetadataError(
            f"{path}: not binder-lite image metadata ({e}); rebuild the image or remove the file"
        ) from None


def to_json(meta: ImageMeta) -> dict[str, Any]:
    data: dict[str, Any] = {
        "image": meta.image,
        "type": meta.type,
        "format": meta.format,
        "boot": {k: v for k, v in vars(meta.boot).items() if v is not None},
        "ssh_user": meta.ssh_user,
        "ssh_port": meta.ssh_port,
        "http_port": meta.http_port,
    }
    if meta.build is not None:
        b = meta.build
        data |= {
            "sha256": b.sha256,
            "bytes": b.nbytes,
            "mtime_ns": b.mtime_ns,
            "size": b.size,
            "derivation": b.derivation,
            "site": b.site,
            "site_sha256": b.site_sha256,
            "guix_version": b.guix_version,
            "channels": b.channels,
            "build_seconds": b.build_seconds,
            "built_at": b.built_at,
        }
    return data


def from_json(data: object) -> ImageMeta:
    """The record `to_json` wrote; ValueError naming the first field that is wrong."""
    fields = _Fields(data)
    boot = _Fields(fields.get("boot", dict, {}), "boot.")
    return ImageMeta(
        image=fields.string("image"),
        type=fields.string("type"),
        format=fields.choice("format", FORMATS),
        boot=Boot(
            firmware=boot.choice("firmware", FIRMWARES, "bios"),
            kernel=boot.optional_string("kernel"),
            initrd=boot.optional_string("initrd"),
            append=boot.optional_string("append"),
        ),
        ssh_user=fields.optional_string("ssh_user"),
        ssh_port=fields.port("ssh_port", 22),
        http_port=fields.port("http_port", 8080),
        # Written by `image build` only; earlier versions wrote the same flat keys.
        build=_build_record(fields) if "derivation" in fields.data else None,
    )


def _build_record(fields: _Fields) -> BuildRecord:
    return BuildRecord(
        sha256=fields.string("sha256"),
        nbytes=fields.get("bytes", int),
        mtime_ns=fields.get("mtime_ns", int),
        size=fields.optional_string("size"),
        derivation=fields.string("derivation"),
        site=fields.string("site"),
        site_sha256=fields.string("site_sha256"),
        guix_version=fields.string("guix_version"),
        channels=fields.optional_string("channels"),
        build_seconds=float(fields.get("build_seconds", (int, float))),
        built_at=float(fields.get("built_at", (int, float))),
    )


class _Invalid(ValueError):
    pass


_MISSING: Any = object()


class _Fields:
    """Typed access to one JSON object's fields; wrong or missing ones raise _Invalid."""

    def __init__(self, data: object, prefix: str = "") -> None:
        if not isinstance(data, dict):
            raise _Invalid(f"{prefix.rstrip('.') or 'the file'} is not a JSON object")
        self.data: dict[str, Any] = data
        self.prefix = prefix  # where this object is, for messages: "boot."

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = _MISSING) -> Any:
        if key not in self.data:
            if default is _MISSING:
                raise _Invalid(f"{self.prefix}{key} is missing")
            return default
        value = self.data[key]
        # JSON's true/false would pass as the integers 1/0.
        if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
            raise _Invalid(f"{self.prefix}{key} is {json.dumps(value)[:40]}, not {_name(kind)}")
        return value

    def string(self, key: str) -> str:
        value: str = self.get(key, str)
        return value

    def optional_string(self, key: str) -> str | None:
        value = self.data.get(key)
        return None if value is None else self.string(key)

    def choice(self, key: str, allowed: tuple[str, ...], default: str | None = None) -> str:
        value: str = self.get(key, str, _MISSING if default is None else default)
        if value not in allowed:
            raise _Invalid(f"{self.prefix}{key} is {value!r}, not one of {', '.join(allowed)}")
        return value

    def port(self, key: str, default: int) -> int:
        value: int = self.get(key, int, default)
        if not 0 < value < 65536:
            raise _Invalid(f"{self.prefix}{key} is {value}, not a port")
        return value


def _name(kind: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", dict: "an object"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)
