"""binder-lite: reproducible notebooks on GNU Guix."""

__version__ = "0.1.0"
