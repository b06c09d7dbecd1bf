"""Launching notebook sessions from git repositories (guix-notebook-launcher)."""

from binder_lite.launch.session import Event, Phase, Provenance, Session, launch

__all__ = ["Event", "Phase", "Provenance", "Session", "launch"]
