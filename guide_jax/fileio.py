"""One path layer for every file a run reads or writes: local paths and gs:// (etils.epath).

    exists(p), isdir(p), listdir(p), makedirs(p), remove(p), rmtree(p), read_text(p), read_bytes(p)
    read_json_object(p, what, missing=None), json_object(text, where)  a JSON object, or one clear error
    atomic_open(p, "w"|"wb"), atomic_write_bytes/text/json(p, ...)   whole file or nothing
    create_exclusive(p, data) -> bool                                  create-if-absent
    probe_writable(directory, name)                                    write + read back, before compute
    sha256_file(p), copy(src, dst)

Paths are strings (or os.PathLike) everywhere; a string with a scheme (gs://bucket/key) goes to
epath's object-store backend (tf.io.gfile when TensorFlow is installed, else fsspec/gcsfs; the
environment variable EPATH_USE_TF=0 forces gcsfs), orbax and tensorstore read the same strings.

Atomic means what the store offers: locally a temporary file in the destination directory,
fsynced and renamed into place; on an object store the bytes are buffered and uploaded as one
object, which GCS makes visible only once complete (no rename needed, none exists). Directories
on an object store are key prefixes: makedirs is a no-op there and an empty "directory" does not
exist.

Pointing every client at a GCS emulator (tests, tests/gcs_emulator.py) takes four variables:
STORAGE_EMULATOR_HOST (gcsfs, google-cloud-storage, tensorboardX), TENSORSTORE_GCS_HTTP_URL and
GOOGLE_AUTH_TOKEN_FOR_TESTING (tensorstore, i.e. orbax's array data), EPATH_USE_TF=0 (TensorFlow's
gfile has no endpoint override).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import tempfile
import uuid
from typing import IO, Any, Iterator, List, Union

from etils import epath

FILE_MODE = 0o644  # written files: readable by all (like open() under the usual umask 022)
DIR_MODE = 0o755
PathLike = Union[str, os.PathLike]


class OutputLocationError(OSError):
  """An output location that cannot be written (and read back)."""


def is_remote(path: PathLike) -> bool:
  """True for a path with a URI scheme (gs://, s3://): an object store, not the local filesystem."""
  return "://" in os.fspath(path)


def as_path(path: PathLike) -> epath.Path:
  """The epath.Path of `path` (local paths made absolute)."""
  path = os.fspath(path)
  return epath.Path(path if is_remote(path) else os.path.abspath(path))


def absolute(path: PathLike) -> str:
  """`path` as an absolute string: os.path.abspath locally, unchanged on an object store."""
  path = os.fspath(path)
  return path if is_remote(path) else os.path.abspath(path)


def join(base: PathLike, *parts: str) -> str:
  """base/part/... as a string ('/'-joined on an object store, os.path.join locally)."""
  base = os.fspath(base)
  if is_remote(base):
    return "/".join([base.rstrip("/")] + [p.strip("/") for p in parts])
  return os.path.join(base, *parts)


def basename(path: PathLike) -> str:
  return os.fspath(path).rstrip("/").rsplit("/", 1)[-1]


def dirname(path: PathLike) -> str:
  path = os.fspath(path)
  if is_remote(path):
    return path.rstrip("/").rsplit("/", 1)[0]
  return os.path.dirname(os.path.abspath(path))


def exists(path: PathLike) -> bool:
  return as_path(path).exists()


def isdir(path: PathLike) -> bool:
  return as_path(path).is_dir()


def isfile(path: PathLike) -> bool:
  return as_path(path).is_file()


def listdir(path: PathLike) -> List[str]:
  """Names (not paths) of the entries of directory `path`, sorted; [] when it does not exist."""
  p = as_path(path)
  if not p.is_dir():
    return []
  return sorted(basename(os.fspath(c)) for c in p.iterdir())


def makedirs(path: PathLike) -> None:
  """mkdir -p (a no-op on an object store, where directories are key prefixes)."""
  if not is_remote(path):
    os.makedirs(os.fspath(path), exist_ok=True)


def remove(path: PathLike, missing_ok: bool = True) -> None:
  p = as_path(path)
  try:
    p.unlink()
  except FileNotFoundError:
    if not missing_ok:
      raise


def rmtree(path: PathLike) -> None:
  p = as_path(path)
  if p.exists():
    p.rmtree()


def getsize(path: PathLike) -> int:
  if not is_remote(path):
    return os.path.getsize(os.fspath(path))
  return int(as_path(path).stat().length)


def read_bytes(path: PathLike) -> bytes:
  return as_path(path).read_bytes()


def read_text(path: PathLike) -> str:
  return as_path(path).read_text(encoding="utf-8")


def read_json_object(path: PathLike, what: str, missing: dict | None = None,
                     error: type = ValueError) -> dict:
  """The JSON object in file `path` (local or remote). `what` names the file in errors.

  missing: returned (a copy) when the file does not exist; None: a missing file is an error.
  error: the ValueError subclass raised for a missing, unreadable, non-JSON or non-object file.
  """
  try:
    text = read_text(path)
  except FileNotFoundError as e:
    if missing is not None:
      return dict(missing)
    raise error(f"{what} {os.fspath(path)} does not exist") from e
  except (OSError, UnicodeDecodeError) as e:
    raise error(f"{what} {os.fspath(path)} is unreadable: {e}") from e
  return json_object(text, f"{what} {os.fspath(path)}", error)


def json_object(text: str, where: str, error: type = ValueError) -> dict:
  """The JSON object `text` holds; `where` (a file, a file:line) names it in the error."""
  try:
    value = json.loads(text)
  except ValueError as e:
    raise error(f"{where} is not valid JSON: {e}") from e
  if not isinstance(value, dict):
    raise error(f"{where} is not a JSON object")
  return value


def open_read(path: PathLike, mode: str = "rb") -> IO:
  """A readable file object (streamed from the store for a remote path)."""
  if not is_remote(path):
    return open(os.fspath(path), mode)
  return as_path(path).open(mode)


@contextlib.contextmanager
def atomic_open(path: PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
  """A file that appears at `path` complete on clean exit, or not at all.

  Locally: a temp file next to `path`, fsynced and renamed onto it. On an object store: an
  in-memory buffer uploaded as one object on clean exit (the upload is atomic). On an exception
  nothing is written and `path` is left untouched. `mode` is "w" (text, `encoding`) or "wb".
  """
  if mode not in ("w", "wb"):
    raise ValueError(f"atomic_open mode must be 'w' or 'wb', got {mode!r}")
  path = os.fspath(path)
  if is_remote(path):
    buffer = io.BytesIO()
    f = io.TextIOWrapper(buffer, encoding=encoding, newline="\n", write_through=True) if mode == "w" else buffer
    yield f
    f.flush()
    as_path(path).write_bytes(buffer.getvalue())
    return
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


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
  """Writes `data` to `path` atomically."""
  with atomic_open(path, "wb") as f:
    f.write(data)


def atomic_write_text(path: PathLike, text: str) -> None:
  """Writes UTF-8 `text` to `path` atomically."""
  with atomic_open(path, "w") as f:
    f.write(text)


def atomic_write_json(path: PathLike, obj: Any) -> None:
  """Writes `obj` as indented, key-sorted JSON to `path` atomically."""
  atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def sha256_file(path: PathLike, chunk_bytes: int = 1 << 22) -> str:
  """Hex SHA-256 of a file's bytes, streamed (hashlib releases the GIL: threads hash in parallel)."""
  h = hashlib.sha256()
  with open_read(path, "rb") as f:
    for chunk in iter(lambda: f.read(chunk_bytes), b""):
      h.update(chunk)
  return h.hexdigest()


def copy(src: PathLike, dst: PathLike, chunk_bytes: int = 1 << 22) -> str:
  """Copies src to dst atomically (either may be remote), streamed; returns the bytes' SHA-256."""
  h = hashlib.sha256()
  with open_read(src, "rb") as fin, atomic_open(dst, "wb") as fout:
    for chunk in iter(lambda: fin.read(chunk_bytes), b""):
      h.update(chunk)
      fout.write(chunk)
  return h.hexdigest()


def create_exclusive(path: PathLike, data: bytes) -> bool:
  """Creates `path` holding `data` only if it does not exist; False if it does.

  Locally O_CREAT|O_EXCL; on GCS an upload with the precondition ifGenerationMatch=0, so of two
  writers racing exactly one wins on either store.
  """
  path = os.fspath(path)
  if is_remote(path):
    from guide_jax import gcs  # pylint: disable=g-import-not-at-top (google-cloud-storage)
    return gcs.upload_if_generation(path, data, 0) is not None
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  try:
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, FILE_MODE)
  except FileExistsError:
    return False
  with os.fdopen(fd, "wb") as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  return True


def probe_writable(directory: PathLike, name: str) -> None:
  """Writes a small object in `directory`, reads it back and removes it, leaving nothing behind
  (local directories it had to create are removed again).

  Run before any compute, so an unreachable, missing or read-only output location fails in
  seconds with one line naming it (OutputLocationError), not at the first save hours later.
  """
  directory = absolute(directory)
  probe = join(directory, f".probe-{uuid.uuid4().hex}")
  payload = f"guide_jax write probe {uuid.uuid4().hex}".encode()
  created = []  # local directories made for the probe, innermost last
  if not is_remote(directory):
    d = directory
    while not os.path.exists(d) and os.path.dirname(d) != d:
      created.append(d)
      d = os.path.dirname(d)
  try:
    makedirs(directory)
    atomic_write_bytes(probe, payload)
    back = read_bytes(probe)
    remove(probe)
  except Exception as e:  # every store raises its own types: name the location and the cause
    first = str(e).splitlines()[0][:300] if str(e) else ""
    raise OutputLocationError(f"{name} {directory} is not writable: {type(e).__name__}: {first}") from e
  finally:
    for d in created:
      with contextlib.suppress(OSError):
        os.rmdir(d)
  if back != payload:
    raise OutputLocationError(f"{name} {directory}: a probe file read back different bytes")


@contextlib.contextmanager
def atomic_directory(path: str) -> Iterator[str]:
  """Yields a fresh temp directory next to local `path`; on clean exit renames it to `path`.

  Files written into the yielded directory appear at `path` all at once (one rename).
  On an exception the temp directory is removed and `path` is left untouched. Raises
  FileExistsError (and removes the temp directory) if `path` exists when the rename is
  attempted, e.g. because a concurrent builder finished first. Local paths only: an object
  store has no directory rename (write the files there with a commit marker written last).
  """
  if is_remote(path):
    raise ValueError(f"atomic_directory needs a local path, got {path!r}: write it locally, then copy it")
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
