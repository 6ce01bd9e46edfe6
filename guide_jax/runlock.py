"""One writer per run directory: <model_dir>/.lock names its holder (host, pid, start time).

A second run on the same directory fails at once with the holder's name. A lock left by a dead
process on the same host is stale and taken over; a holder on another host cannot be checked,
so the error says which file to delete once that run is known to be gone.
"""
import contextlib
import json
import os
import socket
import time
from typing import Iterator

LOCK_FILE = ".lock"


class RunLockedError(RuntimeError):
  """Another live process holds the run directory."""


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def _try_create(path: str, holder: dict) -> bool:
  try:
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
  except FileExistsError:
    return False
  with os.fdopen(fd, "w") as f:
    json.dump(holder, f)
  return True


@contextlib.contextmanager
def hold(model_dir: str) -> Iterator[None]:
  """Hold <model_dir>/.lock for the duration of the block (model_dir must exist)."""
  path = os.path.join(model_dir, LOCK_FILE)
  me = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
  if not _try_create(path, me):
    try:
      with open(path) as f:
        holder = json.load(f)
    except (OSError, ValueError):
      holder = {}
    same_host = holder.get("host") == me["host"]
    if same_host and isinstance(holder.get("pid"), int) and not _alive(holder["pid"]):
      os.remove(path)  # stale: its process is gone
      if not _try_create(path, me):
        raise RunLockedError(f"{model_dir} was just taken by another process ({path})")
    else:
      raise RunLockedError(
          f"{model_dir} is in use by pid {holder.get('pid')} on {holder.get('host')} since "
          f"{holder.get('started')} ({path}); two runs must not write one directory. If that run is "
          f"gone (e.g. another host's job was killed), delete {path} and rerun.")
  try:
    yield
  finally:
    with contextlib.suppress(FileNotFoundError):
      os.remove(path)
