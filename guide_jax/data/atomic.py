"""Atomic file writes and hashing: moved to guide_jax.fileio (local paths and gs://); re-exported
here for the modules that import them from guide_jax.data."""
from guide_jax.fileio import (atomic_directory, atomic_open, atomic_write_bytes, atomic_write_json,
                              atomic_write_text, sha256_file)

__all__ = ["atomic_directory", "atomic_open", "atomic_write_bytes", "atomic_write_json", "atomic_write_text",
           "sha256_file"]
