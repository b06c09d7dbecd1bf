"""The installer ISO (`image build SITE --type installer`): a live binder-lite system that
installs the site's system on a blank machine's disk when it boots.

The ISO (system/installer.scm.j2) is the site's iso9660 system plus:
- /etc/binder-lite/installer: system/install-disk.sh (the steps, POSIX sh), the system
  to install as `system.scm` (rendered as `binder-lite render` does, its logo moved next
  to it) and binder-lite's source (for `-L`, as (binder-lite packages) builds it);
- a garbage-collector root on the installed operating-system, its GRUB configuration and
  bootloader package, so that their closures are in the ISO's store and
  `guix system init` finds them there, as Guix's own installer keeps bare-bones.tmpl's;
- a one-shot Shepherd service that, with `install.wipe`, runs install-disk.sh with the
  site's `install:` values, its output on the console; without it, shows the command.
Pure: renders text; the Guix build is build.py's, as for every image type.
"""

from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path

from binder_lite import __version__, render
from binder_lite.paths import data_dir
from binder_lite.scheme import environment
from binder_lite.site.model import Firmware, ImageType, Install, InstallFirmware, Site

TEMPLATE = "system/installer.scm.j2"
# Where the ISO keeps what it installs from (an /etc entry, so a path that always exists).
INSTALL_DIR = "/etc/binder-lite/installer"
SCRIPT_NAME = "install-disk.sh"
SYSTEM_NAME = "system.scm"
# binder-lite's source in the ISO, whose services/ folder holds (binder-lite services).
LOAD_PATH = f"{INSTALL_DIR}/source/services"


def script_path() -> Path:
    """install-disk.sh as shipped (a checkout's system/ or a wheel's data/system/)."""
    return data_dir() / "system" / SCRIPT_NAME


def install_target(site: Site) -> Install:
    """The site's `install:`; without one, its host.disk and the installed system's
    firmware, and no wipe: the ISO then only shows the command."""
    if site.install is not None:
        return site.install
    efi = render.install_firmware(site) is Firmware.EFI
    return Install(site.host.disk, InstallFirmware.UEFI if efi else InstallFirmware.BIOS)


def script_arguments(target: Install) -> list[str]:
    """install-disk.sh's arguments for `target` (values checked by the site's validation)."""
    return [
        "--disk",
        target.disk,
        "--firmware",
        str(target.firmware),
        "--system",
        f"{INSTALL_DIR}/{SYSTEM_NAME}",
        "--load-path",
        LOAD_PATH,
        "--wipe",
    ]


def install_command(target: Install) -> str:
    """The command a person types on the ISO's console to install (it erases the disk)."""
    return shlex.join(["sh", f"{INSTALL_DIR}/{SCRIPT_NAME}", *script_arguments(target)])


def console_message(site: Site, target: Install) -> str:
    """What the ISO shows when it does not install by itself (console and motd)."""
    return (
        f"This is the installer of {' '.join(site.site.name.split())}.  To install it on "
        f"{target.disk}, erasing everything there, run as root:\n"
        f"  {install_command(target)}\n"
        "(binder-lite installs by itself at boot when the site file says install: wipe: true.)\n"
    )


def system_on_iso(site: Site) -> str:
    """The installed system's file as the ISO holds it (/etc/binder-lite/installer/
    system.scm): what `render` writes, its logo the copy next to it, whose name and
    content, hence store item, are the same."""
    installed = dataclasses.replace(site, install=install_target(site))
    if site.site.logo is None:
        return render.render_system(installed)
    moved = Path(INSTALL_DIR) / render.logo_store_name(site)
    return render.render_system(
        dataclasses.replace(installed, site=dataclasses.replace(site.site, logo=moved))
    )


def render_installer(site: Site) -> str:
    """The installer ISO's operating-system file (for `guix system image -t iso9660`)."""
    target = install_target(site)
    installed = dataclasses.replace(site, install=target)
    message = console_message(site, target)
    live = dataclasses.replace(
        site, site=dataclasses.replace(site.site, motd=render.motd_text(site) + "\n" + message)
    )
    template = environment().get_template(TEMPLATE)
    return template.render(
        site=site,
        version=__version__,
        title=f"{site.site.name}: the binder-lite installer ISO",
        target=target,
        # The ISO boots the site's iso9660 system (Guix gives it grub-mkrescue).
        live=render.render_image_config(live, ImageType.ISO9660),
        installed=render.render_system(installed),
        installed_on_iso=system_on_iso(site),
        script=str(script_path()),
        logo=str(site.site.logo) if site.site.logo else None,
        logo_name=render.logo_store_name(site),
        arguments=script_arguments(target),
        message=message,
        install_dir=INSTALL_DIR,
    )
