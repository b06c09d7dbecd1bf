"""`binder-lite site init`: an annotated starter site file."""

from __future__ import annotations

import getpass
import json
import re
from pathlib import Path

from binder_lite.scheme import environment
from binder_lite.site.model import ImageType
from binder_lite.site.settings import BY_KEY, file_value, starter_section

_KEY_FILES = ("id_ed25519.pub", "id_ecdsa.pub", "id_rsa.pub")


def find_public_key(home: Path) -> str | None:
    """The user's first SSH public key, so the starter can be logged into as it is."""
    for name in _KEY_FILES:
        path = home / ".ssh" / name
        if path.is_file():
            return path.read_text(encoding="utf-8").strip()
    return None


def render_starter(path: Path, name: str, ssh_key: str | None) -> str:
    slug = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:32] or "binder"
    user = re.sub(r"[^a-z0-9_-]", "", getpass.getuser().lower()) or "admin"
    if user == "root" or not re.match(r"[a-z_]", user):
        user = "admin"
    env = environment().overlay()
    # A JSON string is also a YAML double-quoted scalar.
    env.filters["yaml_str"] = lambda text: json.dumps(text, ensure_ascii=False)
    return env.get_template("system/site.yaml.j2").render(
        file_name=path.name,
        name=name,
        slug=slug,
        user=user,
        ssh_key=ssh_key,
        image_types=" | ".join(t.value for t in ImageType),
        binder_section=starter_section("binder"),
        primary_color=file_value(BY_KEY["site.primary_color"]),
    )
