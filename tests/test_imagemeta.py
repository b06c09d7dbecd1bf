"""`<image>.json`: one record, written and read back by one writer and one reader, and
what each command does with a file that is damaged or not binder-lite's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from binder_lite import build, imagemeta
from binder_lite.imagemeta import Boot, BuildRecord, ImageMeta, MetadataError

BUILD = BuildRecord(
    sha256="ab" * 32,
    nbytes=4,
    mtime_ns=0,
    size="8GiB",
    derivation="/gnu/store/00000000000000000000000000000000-image.qcow2.drv",
    site="/sites/demo.yaml",
    site_sha256="cd" * 32,
    guix_version="guix (GNU Guix) 1.5.0",
    channels=None,
    build_seconds=12.5,
    built_at=1_700_000_000.0,
)
META = ImageMeta(
    image="demo-qcow2.qcow2",
    type="qcow2",
    format="qcow2",
    boot=Boot(firmware="efi"),
    ssh_user="demo",
    ssh_port=22,
    http_port=8080,
    build=BUILD,
)


def built_image(directory: Path, name: str = "demo-qcow2.qcow2") -> Path:
    """An image file with the metadata `image build` writes for it."""
    directory.mkdir(parents=True, exist_ok=True)
    image = directory / name
    image.write_bytes(b"QFI\xfb")
    stat = image.stat()
    build_record = BuildRecord(**{**vars(BUILD), "mtime_ns": stat.st_mtime_ns})
    imagemeta.write(image, ImageMeta(**{**vars(META), "image": name, "build": build_record}))
    return image


def binder_lite(*args: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "binder_lite", *map(os.fspath, args)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_round_trip_and_the_flat_file(tmp_path: Path) -> None:
    image = tmp_path / "demo-qcow2.qcow2"
    imagemeta.write(image, META)
    assert imagemeta.read(image) == META
    on_disk = json.loads((tmp_path / "demo-qcow2.qcow2.json").read_text())
    # The build's fields sit beside the others, as earlier versions wrote them.
    assert on_disk["derivation"] == BUILD.derivation and on_disk["bytes"] == 4
    assert on_disk["boot"] == {"firmware": "efi"}
    standin = ImageMeta("x.img", "standin", "raw", Boot(kernel="vmlinuz"), "tester")
    imagemeta.write(tmp_path / "x.img", standin)
    assert imagemeta.read(tmp_path / "x.img") == standin
    assert "derivation" not in json.loads((tmp_path / "x.img.json").read_text())
    assert imagemeta.read(tmp_path / "absent.img") is None


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ('{"image": "demo', "Unterminated string"),
        ("[1, 2]", "the file is not a JSON object"),
        ('{"name": "something else"}', "image is missing"),
        ('{"image": "a", "type": "qcow2", "format": "vmdk"}', "format is 'vmdk', not one of"),
        ('{"image": "a", "type": "t", "format": "raw", "boot": []}', "boot is [], not an object"),
        ('{"image": "a", "type": "t", "format": "raw", "ssh_port": "22"}', 'ssh_port is "22"'),
        ('{"image": "a", "type": "t", "format": "raw", "ssh_port": 0}', "ssh_port is 0, not a"),
        (
            '{"image": "a", "type": "t", "format": "raw", "boot": {"kernel": 7}}',
            "boot.kernel is 7, not a string",
        ),
        ('{"image": "a", "type": "t", "format": "raw", "derivation": "/d"}', "sha256 is missing"),
    ],
)
def test_damaged_or_foreign_metadata_is_a_clear_error(tmp_path: Path, text: str, why: str) -> None:
    (tmp_path / "a.img.json").write_text(text)
    with pytest.raises(MetadataError) as raised:
        imagemeta.read(tmp_path / "a.img")
    message = str(raised.value)
    assert message.startswith(f"{tmp_path / 'a.img.json'}: not binder-lite image metadata (")
    assert why in message and "rebuild the image or remove the file" in message


def test_a_boolean_is_not_a_size(tmp_path: Path) -> None:
    data = imagemeta.to_json(META) | {"bytes": True}
    (tmp_path / "a.img.json").write_text(json.dumps(data))
    with pytest.raises(MetadataError, match="bytes is true, not an integer"):
        imagemeta.read(tmp_path / "a.img")


def test_a_damaged_file_means_build_again(tmp_path: Path) -> None:
    image = built_image(tmp_path)
    assert build._up_to_date(image, BUILD.derivation)
    assert not build._up_to_date(image, BUILD.derivation.replace("0", "1"))
    (tmp_path / "demo-qcow2.qcow2.json").write_text("{")
    assert not build._up_to_date(image, BUILD.derivation)


def test_image_list_skips_what_it_cannot_read(tmp_path: Path) -> None:
    images = tmp_path / "images"
    good = built_image(images)
    (images / "torn.qcow2.json").write_text('{"image": ')
    (images / "package.json").write_text('{"name": "web", "version": "1.0.0"}')
    imagemeta.write(images / "x.img", ImageMeta("x.img", "standin", "raw", Boot(), None))
    result = binder_lite("image", "list", "-o", images)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{good}  qcow2  0 MiB  ")
    assert BUILD.derivation in result.stdout and len(result.stdout.splitlines()) == 1
    skipped = result.stderr.splitlines()
    assert skipped == [
        f"skipped {images / 'package.json'}: not binder-lite image metadata "
        "(image is missing); rebuild the image or remove the file",
        f"skipped {images / 'torn.qcow2.json'}: not binder-lite image metadata "
        "(Expecting value: line 1 column 11 (char 10)); rebuild the image or remove the file",
    ]


def test_vm_run_refuses_damaged_metadata(tmp_path: Path) -> None:
    image = tmp_path / "demo.img"
    image.write_bytes(b"\0" * 512)
    (tmp_path / "demo.img.json").write_text(
        '{"image": "demo.img", "type": "t", "format": "raw", "boot": {"firmware": 1}}'
    )
    result = binder_lite("vm", "run", image, "--no-wait")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        f"error: {tmp_path / 'demo.img.json'}: not binder-lite image metadata "
        "(boot.firmware is 1, not a string); rebuild the image or remove the file"
    )
