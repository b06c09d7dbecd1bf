"""Stage 5: smoke tests of a binder-lite machine over SSH (pytest + testinfra)."""
