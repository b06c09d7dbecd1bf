"""Stage 1: the site file → a validated, frozen model."""

from binder_lite.site.model import Site
from binder_lite.site.validate import load_site

__all__ = ["Site", "load_site"]
