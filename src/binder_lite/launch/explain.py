"""`binder-lite manifest REPO --explain`: file by file, what was read, what it became,
and what was skipped and why.  Only checked text is shown (see detect)."""

from __future__ import annotations

from binder_lite.launch.detect import Environment, FileReport, Requirement


def explain(env: Environment) -> str:
    lines = [f"environment: {env.kind} (from {env.config_dir})"]
    for report in env.files:
        lines += _file(report)
    if env.kind == "manifest":
        lines.append("  the manifest is used as it is, plus what Jupyter needs")
    return "\n".join(lines) + "\n"


def _file(report: FileReport) -> list[str]:
    if not report.read:
        return [f"{report.name}: {report.reason}"]
    lines = [f"{report.name}: read, {report.reason}"]
    lines += [f"  {_requirement(r)}" for r in report.requirements]
    lines += [f"  {s.where}: skipped, {s.reason}" for s in report.skipped]
    lines += [f"  note: {n}" for n in report.notes]
    return lines


def _requirement(r: Requirement) -> str:
    target = r.guix or "nothing"
    note = f" ({r.note})" if r.note else ""
    closest = f"; closest Guix names: {', '.join(r.closest)}" if r.closest else ""
    return f"{r.source} -> {target}{note}{closest}"
