"""`binder-lite image build`: run Guix, copy the image out of the store, describe it.

Next to each image go `<image>.sha256` and `<image>.json` (binder_lite.imagemeta: the
site file's hash, the derivation, Guix's version and channels, type, size, build time,
how it boots).  When
the derivation is the one already built and the image is still there unchanged, the
build says so and returns without running Guix's build.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from binder_lite import guix, imagemeta, render, run
from binder_lite.errors import BuildError, GuixError
from binder_lite.imagemeta import BuildRecord, ImageMeta, MetadataError
from binder_lite.site.model import Firmware, ImageType, Site

Progress = Callable[[str], None]
_STORE_PATH = re.compile(r"^/gnu/store/[0-9a-z]{32}-\S+$")


@dataclass(frozen=True)
class Built:
    image: Path
    derivation: str
    up_to_date: bool
    seconds: float


def image_path(site: Site, image_type: ImageType, out_dir: Path) -> Path:
    return out_dir / f"{site.site.slug}-{image_type}.{image_type.extension}"


@dataclass(frozen=True)
class Listed:
    """An image `image build` made, as `image list` shows it."""

    path: Path
    meta: ImageMeta
    build: BuildRecord
    present: bool  # False: the metadata is there, the image file is not


@dataclass(frozen=True)
class Listing:
    images: list[Listed]
    unreadable: list[str]  # why each metadata-looking file was skipped


def build(
    site: Site,
    image_type: ImageType,
    out_dir: Path,
    work_dir: Path,
    *,
    size: str | None,
    grafts: bool,
    progress: Progress,
) -> Built:
    started = time.monotonic()
    config = work_dir / site.site.slug / render.image_config_name(site, image_type)
    render.write_files({config.name: render.render_image_config(site, image_type)}, config.parent)
    command = guix.ImageCommand(site, image_type, config, size=size, grafts=grafts)
    drv = guix.derivation(command)
    target = image_path(site, image_type, out_dir)
    if _up_to_date(target, drv):
        return Built(target, drv, True, time.monotonic() - started)
    progress(f"$ {command.shell()}")
    store_item = _run_build(command, progress, started)
    out_dir.mkdir(parents=True, exist_ok=True)
    digest = _copy_out(store_item, target)
    seconds = time.monotonic() - started
    _describe(site, image_type, target, drv, digest, size, seconds)
    return Built(target, drv, False, seconds)


def _up_to_date(target: Path, drv: str) -> bool:
    try:
        meta = imagemeta.read(target)
    except MetadataError:
        return False  # damaged or someone else's: build, which rewrites it
    built = meta.build if meta is not None else None
    if built is None or built.derivation != drv or not target.is_file():
        return False
    stat = target.stat()
    return built.nbytes == stat.st_size and built.mtime_ns == stat.st_mtime_ns


def _run_build(command: guix.ImageCommand, progress: Progress, started: float) -> str:
    last = ""
    try:
        for line in run.stream(command.argv(), error=GuixError):
            progress(f"[{time.monotonic() - started:6.0f} s] {line}")
            if _STORE_PATH.match(line.strip()):
                last = line.strip()
    except GuixError as e:
        raise BuildError(f"Guix could not build the image:\n{e.output}") from None
    if not last:
        raise BuildError("Guix finished without naming the image it built")
    return last


def _store_file(item: str) -> Path:
    """Where the store item is readable from here (a chrooted Guix keeps its own store)."""
    root = Path(guix.guix_program()).resolve().parent / "store-root"
    prefix = Path(root.read_text().strip()) if root.is_file() else Path("/")
    return prefix / item.lstrip("/")


def _copy_out(item: str, target: Path) -> str:
    """Copy the (read-only) store file to `target`, writable; return its SHA-256."""
    source = _store_file(item)
    if not source.is_file():
        raise BuildError(f"{item} is not a file")
    partial = target.with_name(f".{target.name}.partial")
    digest = hashlib.sha256()
    with open(source, "rb") as src, open(partial, "wb") as dst:
        while chunk := src.read(1 << 20):
            digest.update(chunk)
            dst.write(chunk)
    partial.chmod(0o644)
    os.replace(partial, target)
    return digest.hexdigest()


def _describe(
    site: Site,
    image_type: ImageType,
    target: Path,
    drv: str,
    digest: str,
    size: str | None,
    seconds: float,
) -> None:
    target.with_name(target.name + ".sha256").write_text(f"{digest}  {target.name}\n")
    channels = site.guix.channels.read_text() if site.guix.channels else None
    stat = target.stat()
    build = BuildRecord(
        sha256=digest,
        nbytes=stat.st_size,
        mtime_ns=stat.st_mtime_ns,
        size=size or site.image(image_type).size,
        derivation=drv,
        site=str(site.path),
        site_sha256=hashlib.sha256(site.path.read_bytes()).hexdigest(),
        guix_version=guix.version(),
        channels=channels,
        build_seconds=round(seconds, 1),
        built_at=time.time(),
    )
    meta = ImageMeta(
        image=target.name,
        type=str(image_type),
        format={"qcow2": "qcow2", "iso": "iso"}.get(image_type.extension, "raw"),
        boot=imagemeta.Boot(firmware="efi" if image_type.firmware is Firmware.EFI else "bios"),
        ssh_user=next((u.name for u in site.users if u.ssh_keys), None),
        ssh_port=site.ssh.port,
        http_port=site.binder.port,
        build=build,
    )
    imagemeta.write(target, meta)


def list_images(out_dir: Path) -> Listing:
    """The images `image build` wrote into `out_dir` (those without a build record,
    such as the test suite's stand-in, are not listed)."""
    images, unreadable = [], []
    for meta_file in sorted(out_dir.glob("*.json")):
        image = meta_file.with_name(meta_file.name.removesuffix(".json"))
        try:
            meta = imagemeta.read(image)
        except MetadataError as e:
            unreadable.append(str(e))
            continue
        if meta is not None and meta.build is not None:
            images.append(Listed(image, meta, meta.build, image.is_file()))
    return Listing(images, unreadable)
