"""One writer per run directory: a lease <model_dir>/.lock with a heartbeat, on local disk or gs://.

    with runlock.hold(model_dir, timeout_s=300) as lease:   # RunLockedError if another holds it
      ...; lease.check()                                    # LeaseLostError if it was taken over

The lease is a JSON object {holder, host, pid, started, beat} created with a create-if-absent
precondition (O_EXCL locally; ifGenerationMatch=0 on GCS). While held, a thread rewrites `beat`
every timeout_s / 10 (on GCS with ifGenerationMatch=<its own last generation>, so a lease that
was taken over is never written again). A second run is refused while the lease's last beat is
younger than timeout_s; an older lease is stale (its holder was killed, preempted, or lost its
VM) and is taken over (again with a precondition, so of two takers exactly one wins). A holder on
this host, in this boot and PID namespace, whose pid is gone, is stale at once (a kill -9 on a
workstation needs no wait); a rescheduled job on a new VM or in a new container waits for the
timeout, whatever its pid.
"""
import contextlib
import json
import os
import socket
import threading
import time
import uuid
from typing import Iterator, Optional, Tuple

from absl import logging

from guide_jax import fileio

LOCK_FILE = ".lock"
DEFAULT_TIMEOUT_S = 300.0


class RunLockedError(RuntimeError):
  """Another run holds a fresh lease on the run directory."""


class LeaseLostError(RuntimeError):
  """This run's lease was taken over (its heartbeat stopped for longer than the timeout)."""


def _read_first(path: str) -> str:
  try:
    with open(path) as f:
      return f.read().strip()
  except OSError:
    return ""


def _namespace() -> dict:
  """Where a pid means something: boot id and PID namespace (a container has its own)."""
  pid_ns = ""
  with contextlib.suppress(OSError):
    pid_ns = os.readlink("/proc/self/ns/pid")
  return {"boot_id": _read_first("/proc/sys/kernel/random/boot_id"), "pid_ns": pid_ns}


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def _holder(data: Optional[bytes]) -> Optional[str]:
  try:
    lease = json.loads(data or b"{}")
  except ValueError:
    return None
  return lease.get("holder") if isinstance(lease, dict) else None


class _Store:
  """The lease object: read with a version token, create-if-absent, compare-and-swap, delete."""

  def __init__(self, path: str):
    self.path, self.remote = path, fileio.is_remote(path)

  def read(self) -> Tuple[Optional[dict], object]:
    if self.remote:
      from guide_jax import gcs  # pylint: disable=g-import-not-at-top
      data, token = gcs.read_with_generation(self.path)
    else:
      try:
        with open(self.path, "rb") as f:
          data = f.read()
      except FileNotFoundError:
        data = None
      token = data
    if data is None:
      return None, None
    try:
      lease = json.loads(data)
    except ValueError:  # torn by a crash mid-write (local) or not ours: treat as an ancient lease
      lease = {}
    return (lease if isinstance(lease, dict) else {}), token

  def create(self, lease: dict) -> object:
    data = json.dumps(lease).encode()
    if self.remote:
      from guide_jax import gcs  # pylint: disable=g-import-not-at-top
      return gcs.upload_if_generation(self.path, data, 0)
    return data if fileio.create_exclusive(self.path, data) else None

  def swap(self, lease: dict, token) -> object:
    """Replace the lease read with `token` by `lease`; the new token, or None if it changed."""
    data = json.dumps(lease).encode()
    if self.remote:
      from guide_jax import gcs  # pylint: disable=g-import-not-at-top
      return gcs.upload_if_generation(self.path, data, token)
    if _holder(token) == lease["holder"]:  # our own beat: never absent
      fileio.atomic_write_bytes(self.path, data)
      return data
    aside = f"{self.path}.{uuid.uuid4().hex}.old"  # a takeover
    try:
      os.rename(self.path, aside)  # of two swappers only one moves the file
    except FileNotFoundError:
      return None
    with open(aside, "rb") as f:
      moved = f.read()
    os.remove(aside)
    if moved != token:  # someone swapped in between our read and our rename: put theirs back
      fileio.create_exclusive(self.path, moved)
      return None
    return data if fileio.create_exclusive(self.path, data) else None

  def delete(self, token) -> None:
    if self.remote:
      from guide_jax import gcs  # pylint: disable=g-import-not-at-top
      gcs.delete_if_generation(self.path, token)
      return
    _, now = self.read()
    if now == token:
      fileio.remove(self.path)


class Lease:
  """A held lease; `check()` raises LeaseLostError once a heartbeat found it taken over."""

  def __init__(self, model_dir: str, timeout_s: float = DEFAULT_TIMEOUT_S):
    if not timeout_s > 0:
      raise ValueError(f"run lock timeout must be > 0 seconds, got {timeout_s!r}")
    self.path = fileio.join(fileio.absolute(model_dir), LOCK_FILE)
    self.model_dir, self.timeout_s = model_dir, float(timeout_s)
    self._store, self._token, self._lost = _Store(self.path), None, threading.Event()
    now = time.time()
    self._me = {"holder": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(),
                "started": now, "beat": now, **_namespace()}

  def _stale(self, lease: dict, now: float) -> Tuple[bool, float]:
    age = now - float(lease.get("beat", 0) or 0)
    same_place = all(lease.get(k) == self._me[k] for k in ("host", "boot_id", "pid_ns")) and lease.get("boot_id")
    if same_place and isinstance(lease.get("pid"), int) and not _alive(lease["pid"]):
      return True, age  # its process is gone, here
    return age > self.timeout_s, age

  def acquire(self) -> None:
    me = {**self._me, "beat": time.time()}
    self._token = self._store.create(me)
    if self._token is not None:
      return
    lease, token = self._store.read()
    if lease is None:  # released between our two calls
      self._token = self._store.create(me)
    else:
      stale, age = self._stale(lease, time.time())
      if not stale:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(lease.get("started", 0) or 0)))
        raise RunLockedError(
            f"{self.model_dir} is in use by pid {lease.get('pid')} on {lease.get('host')} (holding it since "
            f"{started} UTC; last heartbeat {age:.0f} s ago, lease timeout {self.timeout_s:.0f} s; {self.path}): "
            f"two runs must not write one directory. If that run is gone, rerun in "
            f"{max(0.0, self.timeout_s - age):.0f} s and the lease is taken over.")
      logging.warning("taking over the stale run lease %s of pid %s on %s (last heartbeat %.0f s ago, "
                      "timeout %.0f s)", self.path, lease.get("pid"), lease.get("host"), age, self.timeout_s)
      self._token = self._store.swap(me, token)
    if self._token is None:
      raise RunLockedError(f"{self.model_dir} was just taken by another run ({self.path})")

  def beat(self) -> None:
    """Refresh the heartbeat; marks the lease lost if another run took it over."""
    if self._lost.is_set():
      return
    lease, token = self._store.read()
    if lease is None or lease.get("holder") != self._me["holder"]:
      self._lost.set()
      logging.error("run lease %s was taken over by pid %s on %s: this run must stop writing", self.path,
                    (lease or {}).get("pid"), (lease or {}).get("host"))
      return
    new = self._store.swap({**self._me, "beat": time.time()}, token)
    if new is None:
      self._lost.set()
    else:
      self._token = new

  def check(self) -> None:
    if self._lost.is_set():
      raise LeaseLostError(f"the run lease {self.path} was taken over by another run (this run's heartbeat "
                           f"stopped for more than {self.timeout_s:.0f} s); stopped without saving")

  def release(self) -> None:
    if self._token is not None and not self._lost.is_set():
      self._store.delete(self._token)
    self._token = None


@contextlib.contextmanager
def hold(model_dir: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[Lease]:
  """Hold <model_dir>/.lock for the block, beating every timeout_s / 10 from a daemon thread."""
  lease = Lease(model_dir, timeout_s)
  lease.acquire()
  stop = threading.Event()

  def heartbeat():
    while not stop.wait(max(0.5, lease.timeout_s / 10)):
      try:
        lease.beat()
      except Exception as e:  # a transient store error: the next beat retries (the timeout is 10 beats)
        logging.warning("run lease heartbeat failed: %s: %s", type(e).__name__, e)

  thread = threading.Thread(target=heartbeat, name="run-lease-heartbeat", daemon=True)
  thread.start()
  try:
    yield lease
  finally:
    stop.set()
    thread.join()
    lease.release()
