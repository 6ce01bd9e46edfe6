"""GCS object operations with generation preconditions (google-cloud-storage), for the run lease.

    read_with_generation("gs://b/k") -> (bytes, generation) | (None, None)
    upload_if_generation("gs://b/k", data, generation) -> new generation | None (precondition failed)
    delete_if_generation("gs://b/k", generation) -> bool

generation 0 means "only if the object does not exist" (create-if-absent). The client honours
STORAGE_EMULATOR_HOST (then anonymous credentials), like gcsfs and tensorboardX.
"""
import os
from typing import Optional, Tuple


def _split(path: str) -> Tuple[str, str]:
  if not path.startswith("gs://"):
    raise ValueError(f"not a gs:// path: {path!r}")
  bucket, _, key = path[len("gs://"):].partition("/")
  return bucket, key


def _client(emulator: str):
  """A storage client (made per call: the lease touches GCS about once a minute)."""
  try:
    from google.cloud import storage  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("gs:// run locks need google-cloud-storage: pip install 'guide_jax[gcs]'") from e
  if emulator:
    from google.auth.credentials import AnonymousCredentials  # pylint: disable=g-import-not-at-top
    return storage.Client(project="emulator", credentials=AnonymousCredentials())
  return storage.Client()


def _blob(path: str):
  bucket, key = _split(path)
  return _client(os.environ.get("STORAGE_EMULATOR_HOST", "")).bucket(bucket).blob(key)


def read_with_generation(path: str) -> Tuple[Optional[bytes], Optional[int]]:
  from google.api_core import exceptions  # pylint: disable=g-import-not-at-top
  blob = _blob(path)
  try:
    data = blob.download_as_bytes()
  except exceptions.NotFound:
    return None, None
  return data, int(blob.generation)


def upload_if_generation(path: str, data: bytes, generation: int) -> Optional[int]:
  from google.api_core import exceptions  # pylint: disable=g-import-not-at-top
  blob = _blob(path)
  try:
    blob.upload_from_string(data, if_generation_match=generation)
  except exceptions.PreconditionFailed:
    return None
  return int(blob.generation)


def delete_if_generation(path: str, generation: int) -> bool:
  from google.api_core import exceptions  # pylint: disable=g-import-not-at-top
  try:
    _blob(path).delete(if_generation_match=generation)
  except (exceptions.PreconditionFailed, exceptions.NotFound):
    return False
  return True
