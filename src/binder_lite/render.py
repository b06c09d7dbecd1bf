"""Stage 2: a validated `Site` → Guix Scheme files (pure; the writer is separate)."""

from __future__ import annotations

import dataclasses
import os
import re
import tempfile
from pathlib import Path

from binder_lite import __version__
from binder_lite.scheme import environment
from binder_lite.site import settings
from binder_lite.site.model import Firmware, ImageType, InstallFirmware, ServiceSpec, Site

TEMPLATES = {
    Firmware.BIOS: "images/bios.scm.j2",
    Firmware.EFI: "images/efi.scm.j2",
    Firmware.HYBRID: "images/iso9660.scm.j2",
}

SYSTEM_FILE = "system.scm"


def image_config_name(site: Site, image_type: ImageType) -> str:
    return f"{site.site.slug}-{image_type}.scm"


def install_firmware(site: Site) -> Firmware:
    """Firmware of the installed system (system.scm): the `install:` section's, else
    that of the first disk image."""
    if site.install is not None:
        return Firmware.EFI if site.install.firmware is InstallFirmware.UEFI else Firmware.BIOS
    disks = [i.type.firmware for i in site.images if i.type.firmware is not Firmware.HYBRID]
    return disks[0] if disks else Firmware.BIOS


def render_image_config(site: Site, image_type: ImageType) -> str:
    """The operating-system for `image_type` (its bootloader depends on the type)."""
    if image_type is ImageType.INSTALLER:
        from binder_lite import installer_image  # which renders its systems with this module

        return installer_image.render_installer(site)
    return _render(site, image_type.firmware, str(image_type))


def render_system(site: Site) -> str:
    """The operating-system to install or deploy (`guix system init/reconfigure/deploy`)."""
    firmware = install_firmware(site)
    if site.install is not None:  # BIOS GRUB goes where the installer ISO installs
        host = dataclasses.replace(site.host, disk=site.install.disk)
        site = dataclasses.replace(site, host=host)
    return _render(site, firmware, f"none (installed system, {firmware} boot)")


def render_all(site: Site) -> dict[str, str]:
    """Every file `binder-lite render` writes, by name."""
    files = {SYSTEM_FILE: render_system(site)}
    for image in site.images:
        files[image_config_name(site, image.type)] = render_image_config(site, image.type)
    return files


def _render(site: Site, firmware: Firmware, image_type: str) -> str:
    template = environment().get_template(TEMPLATES[firmware])
    return template.render(
        site=site,
        binder=site.binder,
        version=__version__,
        title=f"{site.site.name}: a binder-lite Guix System",
        image_type=image_type,
        firmware=str(firmware),
        menu_label=_menu_label(site),
        issue=issue_text(site),
        motd=motd_text(site),
        any_admin=any(u.admin for u in site.users),
        logo_store_name=logo_store_name(site),
        guix_fields=settings.guix_fields(site),
        svc_requirements=_requirements,
        svc_group=lambda svc: _group(site, svc),
        svc_environment=_environment,
    )


def _menu_label(site: Site) -> str:
    # Guix writes the label into grub.cfg as a Scheme string, which GRUB reads as
    # its own; a line break would show as "\n", so the menu gets a single line.
    return " ".join(site.site.name.split())


def issue_text(site: Site) -> str:
    if site.site.issue is not None:
        return site.site.issue
    lines = [site.site.name, site.site.tagline] if site.site.tagline else [site.site.name]
    return "\n".join(lines) + "\n\n"


def motd_text(site: Site) -> str:
    if site.site.motd is not None:
        return site.site.motd
    return (
        f"{site.site.name}\n"
        f"binder-lite listens on port {site.binder.port}; "
        "`sudo herd status binder-lite` shows the service.\n"
    )


def logo_store_name(site: Site) -> str:
    logo = site.site.logo
    suffix = re.sub(r"[^A-Za-z0-9.]", "", logo.suffix) if logo else ""
    return f"{site.site.slug}-logo{suffix}"


def _requirements(svc: ServiceSpec) -> list[str]:
    # Every daemon waits for user processes to be allowed (Guix's convention).
    return list(dict.fromkeys(["user-processes", *svc.requirement]))


def _group(site: Site, svc: ServiceSpec) -> str:
    if svc.user in ("root", site.binder.user):
        return svc.user
    return "users"


def _environment(svc: ServiceSpec) -> list[str]:
    env = dict(svc.environment)
    env.setdefault("PATH", "/run/current-system/profile/bin:/run/current-system/profile/sbin")
    return [f"{k}={v}" for k, v in env.items()]


def write_files(files: dict[str, str], out_dir: Path) -> list[Path]:
    """Write `files` into `out_dir`, each atomically, so a failure leaves no half file."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in files.items():
        target = out_dir / name
        fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        written.append(target)
    return written
