"""Atomic file writes (data caches, results.json, sweep tables and plots, benchmark JSON) and hashing.

Every file is written to a temporary file in the destination directory
and then moved into place with ``os.replace``, so readers (and concurrent
builders on a shared filesystem) see either the old complete file or the new
complete file, never a partial one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from typing import IO, Any, Iterator

FILE_MODE = 0o644  # written files: readable by all (like open() under the usual umask 022)
DIR_MODE = 0o755


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
  """Opens a temp file next to `path`; on clean exit fsyncs and renames it to `path`.

  On an exception the temp file is removed and `path` is left untouched.
  `mode` is "w" (text, `encoding`) or "wb" (binary).
  """
  if mode not in ("w", "wb"):
    raise ValueError(f"atomic_open mode must be 'w' or 'wb', got {mode!r}")
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
  try:
    os.chmod(tmp, FILE_MODE)  # mkstemp makes 0600 files; the final file is readable by others
    if mode == "w":
      f = os.fdopen(fd, "w", encoding=encoding, newline="\n")
    else:
      f = os.fdopen(fd, "wb")
    with f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
    raise


def atomic_write_bytes(path: str, data: bytes) -> None:
  """Writes `data` to `path` atomically."""
  with atomic_open(path, "wb") as f:
    f.write(data)


def atomic_write_text(path: str, text: str) -> None:
  """Writes UTF-8 `text` to `path` atomically."""
  with atomic_open(path, "w") as f:
    f.write(text)


def atomic_write_json(path: str, obj: Any) -> None:
  """Writes `obj` as indented, key-sorted JSON to `path` atomically."""
  atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def sha256_file(path: str, chunk_bytes: int = 1 << 20) -> str:
  """Hex SHA-256 of a file's bytes."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(chunk_bytes), b""):
      h.update(chunk)
  return h.hexdigest()


@contextlib.contextmanager
def atomic_directory(path: str) -> Iterator[str]:
  """Yields a fresh temp directory next to `path`; on clean exit renames it to `path`.

  Files written into the yielded directory appear at `path` all at once (one rename).
  On an exception the temp directory is removed and `path` is left untouched. Raises
  FileExistsError (and removes the temp directory) if `path` exists when the rename is
  attempted, e.g. because a concurrent builder finished first.
  """
  path = os.path.abspath(path)
  parent = os.path.dirname(path)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=parent)
  try:
    os.chmod(tmp, DIR_MODE)  # mkdtemp makes 0700 directories
    yield tmp
    for name in os.listdir(tmp):  # flush the contents before they become visible
      fd = os.open(os.path.join(tmp, name), os.O_RDONLY)
      try:
        os.fsync(fd)
      finally:
        os.close(fd)
    if os.path.exists(path):
      raise FileExistsError(f"{path} already exists")
    os.rename(tmp, path)  # fails (does not replace) when a non-empty `path` appeared meanwhile
  except BaseException as e:
    shutil.rmtree(tmp, ignore_errors=True)
    if isinstance(e, OSError) and not isinstance(e, FileExistsError) and os.path.isdir(path):
      raise FileExistsError(f"{path} already exists") from e
    raise
