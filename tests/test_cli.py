"""The `binder-lite` command as users run it: exit codes, messages, files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click
import pytest
from conftest import EXAMPLES, MINIMAL_SITE, ROOT, SSH_KEY, CliResult

from binder_lite.cli import cli as cli_group

Cli = Callable[..., CliResult]
WriteSite = Callable[..., Path]


def every_command(group: click.Group = cli_group, path: tuple[str, ...] = ()) -> list[list[str]]:
    """The command lines of every group and command, as the CLI defines them now."""
    found = [list(path)]
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            found += every_command(command, (*path, name))
        else:
            found.append([*path, name])
    return found


COMMANDS = every_command()


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "top")
def test_help_everywhere(cli: Cli, command: list[str]) -> None:
    result = cli(*command, "--help")
    assert result.code == 0
    assert "Usage: binder-lite" in result.out
    assert len(result.out.splitlines()) > 4


def test_version(cli: Cli) -> None:
    assert cli("--version").out.strip() == "binder-lite, version 0.1.0"


def test_check_ok(cli: Cli) -> None:
    result = cli("site", "check", EXAMPLES / "genenetwork.yaml")
    assert result.code == 0
    assert "ok ('GeneNetwork Binder', images: iso9660, qcow2)" in result.out


def test_check_reports_located_errors_exit_2_no_traceback(cli: Cli, write_site: WriteSite) -> None:
    path = write_site(MINIMAL_SITE.replace("hostname: test", "hostname: -x-\n  timezon: UTC"))
    result = cli("site", "check", path)
    assert result.code == 2
    assert "Traceback" not in result.err
    lines = result.err.splitlines()
    assert lines[0] == f"error: {path}:6:13: host.hostname: '-x-' is not a valid host name"
    assert f"{path}:7:3: host.timezon: unknown key" in result.err
    assert "hint: did you mean `timezone`?" in result.err
    assert lines[-1] == "2 problems in the site file"


def test_missing_site_file(cli: Cli, tmp_path: Path) -> None:
    result = cli("site", "check", tmp_path / "nope.yaml")
    assert result.code == 2
    assert "nope.yaml:1:1: cannot read the file: No such file or directory" in result.err


def test_init_writes_a_site_that_checks(cli: Cli, tmp_path: Path) -> None:
    key = tmp_path / "id.pub"
    key.write_text(SSH_KEY + "\n")
    site = tmp_path / "site.yaml"
    result = cli("site", "init", site, "--name", "Lab Notebooks", "--ssh-key", key)
    assert result.code == 0, result.err
    text = site.read_text()
    assert "slug: lab-notebooks" in text and SSH_KEY in text
    checked = cli("site", "check", site)
    assert checked.code == 0, checked.err
    again = cli("site", "init", site, "--ssh-key", key)
    assert again.code == 2 and "exists; pass --force" in again.err
    assert site.read_text() == text  # nothing the user wrote is lost


def test_init_without_a_key_says_what_to_do(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `site init` looks in ~/.ssh, ~ being $HOME (Path.home()): a home with no keys here.
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home" / ".ssh").mkdir(parents=True)
    site = tmp_path / "site.yaml"
    result = cli("site", "init", site)
    assert result.code == 0, result.err
    assert "no SSH public key found: add one under users" in result.err
    checked = cli("site", "check", site)
    assert checked.code == 2 and "nobody can log into this machine" in checked.err


def test_init_takes_the_first_key_in_home(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ssh = tmp_path / "home" / ".ssh"
    ssh.mkdir(parents=True)
    other = SSH_KEY.replace("ssh-ed25519", "ssh-rsa").replace("you@laptop", "rsa@laptop")
    (ssh / "id_rsa.pub").write_text(other + "\n")
    (ssh / "id_ed25519.pub").write_text(SSH_KEY + "\n")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    site = tmp_path / "site.yaml"
    result = cli("site", "init", site)
    assert result.code == 0, result.err
    assert "no SSH public key" not in result.err
    text = site.read_text()
    assert SSH_KEY in text and "rsa@laptop" not in text  # ed25519 is looked for first
    checked = cli("site", "check", site)
    assert checked.code == 0, checked.err


def test_render_writes_and_prints(cli: Cli, tmp_path: Path) -> None:
    result = cli("render", EXAMPLES / "genenetwork.yaml", "-o", tmp_path / "out")
    assert result.code == 0, result.err
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["genenetwork-iso9660.scm", "genenetwork-qcow2.scm", "system.scm"]
    printed = cli("render", EXAMPLES / "genenetwork.yaml", "--print", "--type", "qcow2")
    assert printed.out == (tmp_path / "out/genenetwork-qcow2.scm").read_text()
    both = cli("render", EXAMPLES / "genenetwork.yaml", "--print", "-o", tmp_path)
    assert both.code == 2 and "exactly one of" in both.err


def test_render_of_a_bad_site_writes_nothing(
    cli: Cli, write_site: WriteSite, tmp_path: Path
) -> None:
    path = write_site(MINIMAL_SITE + "bogus: 1\n")
    result = cli("render", path, "-o", tmp_path / "out")
    assert result.code == 2
    assert not (tmp_path / "out").exists()


def test_dry_run_without_guix_is_a_clear_error(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BINDER_LITE_GUIX", str(tmp_path / "no-guix"))
    result = cli("image", "build", EXAMPLES / "demo.yaml", "--dry-run", "-w", tmp_path)
    assert result.code == 127
    assert "no-guix not found; is it installed and on PATH?" in result.err
    assert "Traceback" not in result.err


def test_image_build_refuses_bad_size(cli: Cli, tmp_path: Path) -> None:
    result = cli("image", "build", EXAMPLES / "demo.yaml", "--dry-run", "--size", "big")
    assert result.code == 2 and "--size: 'big' is not a size" in result.err


def test_readme_starts_with_the_two_commands() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    block = lines[lines.index("```sh") + 1 : lines.index("```sh") + 3]
    assert block[0].startswith("scripts/setup && ")
    assert block[1] == "scripts/test"


@pytest.mark.parametrize("command", [["site", "check"], ["render", "--print"]])
def test_lone_surrogate_is_a_located_error(
    cli: Cli, write_site: WriteSite, command: list[str]
) -> None:
    # `"\ud800"` is valid YAML, but no character: it cannot be written out as UTF-8.
    path = write_site(MINIMAL_SITE.replace("name: Test", 'name: "\\ud800"'))
    result = cli(*command, path)
    assert result.code == 2, result.err
    assert "Traceback" not in result.err
    assert result.err.splitlines()[0] == (
        f"error: {path}:3:9: site.name: contains U+D800, a lone surrogate, which is not a "
        "character and cannot be written as UTF-8"
    )
    assert result.out == ""
