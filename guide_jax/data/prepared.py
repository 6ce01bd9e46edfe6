"""Prepared data: tokenized splits on disk, read with numpy (memmap) only.

    load_prepared(path, *, verify=False, stage_root=None) -> Prepared(train, validation, vocab_size, vocab_path, ...)

A prepared-data directory (written by `python -m guide_jax.data.prepare`, all at once by
one directory rename) holds:
  manifest.json   {"format_version", "source" (what was tokenized), "vocab_size", "dtype",
                   "eos_id", "vocab": {"file", "sha256"},
                   "splits": {"train"|"validation": {"source_split", "tokens", "docs",
                              "shards": [{"file", "tokens", "bytes", "sha256"}]}}}
  vocab.model     the SentencePiece model the tokens were made with
  <split>-<i>.npy token shards: 1-D `dtype` arrays (uint16 when vocab_size <= 65535, else
                  int32); each split is its documents' token ids concatenated, every
                  document ending in EOS
This module imports neither TensorFlow nor seqio, nor the corpus builder or the preparation code
(prepare.py imports this one, never the reverse): a training host needs numpy only (and
sentencepiece to decode). Where a built-in corpus is prepared: prepare.prepared_dir_for /
prepare.ensure_prepared.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import os

import numpy as np
from absl import logging

from guide_jax import fileio

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
VOCAB_FILE = "vocab.model"
SPLITS = ("train", "validation")
UINT16_MAX_VOCAB = 65535  # ids 0..65534 fit in uint16 with room to spare


class PreparedDataError(ValueError):
  """A prepared-data directory is missing, incomplete, corrupt or inconsistent."""


@dataclasses.dataclass(frozen=True)
class Prepared:
  """A loaded prepared-data directory.

  train, validation: 1-D token streams [N], [M] (read-only np.memmap of uint16 or int32 when
  the split has one shard; an in-memory concatenation otherwise).
  """
  train: np.ndarray
  validation: np.ndarray
  vocab_size: int
  vocab_path: str
  manifest: dict
  path: str


def shard_dtype(vocab_size: int) -> np.dtype:
  """uint16 when every id < vocab_size fits (vocab_size <= 65535), else int32."""
  if not isinstance(vocab_size, (int, np.integer)) or vocab_size < 1:
    raise ValueError(f"vocab_size must be a positive int, got {vocab_size!r}")
  return np.dtype(np.uint16 if vocab_size <= UINT16_MAX_VOCAB else np.int32)


def shard_name(split: str, index: int) -> str:
  """"<split>-<index:05d>.npy"."""
  return f"{split}-{index:05d}.npy"


def read_manifest(path: str) -> dict:
  """The checked manifest of prepared directory `path` (local or gs://); PreparedDataError if
  missing or malformed."""
  manifest_path = fileio.join(path, MANIFEST)
  try:
    manifest = json.loads(fileio.read_text(manifest_path))
  except FileNotFoundError as e:
    if not fileio.isdir(path):
      raise PreparedDataError(f"prepared-data directory {path!r} does not exist "
                              "(create it with `python -m guide_jax.data.prepare`)") from e
    raise PreparedDataError(f"{path!r} has no {MANIFEST}: not a prepared-data directory") from e
  except (OSError, ValueError) as e:
    raise PreparedDataError(f"{manifest_path} is unreadable or not JSON: {e}") from e
  check_manifest(manifest, where=manifest_path)
  return manifest


def check_manifest(manifest: dict, where: str = MANIFEST) -> None:
  """Raises PreparedDataError unless `manifest` has the structure described in the module doc."""
  def fail(msg):
    raise PreparedDataError(f"{where}: {msg}")

  if not isinstance(manifest, dict):
    fail("not a JSON object")
  version = manifest.get("format_version")
  if version != FORMAT_VERSION:
    fail(f"format_version {version!r}, this reader understands {FORMAT_VERSION}; re-run prepare")
  vocab_size = manifest.get("vocab_size")
  if not isinstance(vocab_size, int) or vocab_size < 1:
    fail(f"bad vocab_size {vocab_size!r}")
  if manifest.get("dtype") != shard_dtype(vocab_size).name:
    fail(f"dtype {manifest.get('dtype')!r} does not match vocab_size {vocab_size} "
         f"(expected {shard_dtype(vocab_size).name})")
  vocab = manifest.get("vocab")
  if not isinstance(vocab, dict) or not isinstance(vocab.get("file"), str) or not isinstance(
      vocab.get("sha256"), str):
    fail("missing vocab {file, sha256}")
  splits = manifest.get("splits")
  if not isinstance(splits, dict) or sorted(splits) != sorted(SPLITS):
    fail(f"splits must be exactly {list(SPLITS)}, got {splits if not isinstance(splits, dict) else sorted(splits)}")
  for split in SPLITS:
    info = splits[split]
    shards = info.get("shards") if isinstance(info, dict) else None
    if not isinstance(shards, list) or not shards:
      fail(f"split {split!r} has no shards")
    for shard in shards:
      if not (isinstance(shard, dict) and isinstance(shard.get("file"), str)
              and isinstance(shard.get("tokens"), int) and isinstance(shard.get("bytes"), int)
              and isinstance(shard.get("sha256"), str)) or os.sep in shard["file"]:
        fail(f"split {split!r}: bad shard entry {shard!r}")
    if info.get("tokens") != sum(s["tokens"] for s in shards):
      fail(f"split {split!r}: tokens {info.get('tokens')!r} != sum over its shards")
    max_id = info.get("max_id")  # recorded by prepare since the id-range check (absent in older data)
    if max_id is not None and (not isinstance(max_id, int) or not 0 <= max_id < vocab_size):
      fail(f"split {split!r} holds token id {max_id!r}, outside [0, vocab_size={vocab_size}): the data "
           f"and its vocabulary do not match (was vocab_size edited, or the shards written with "
           f"another tokenizer?); re-run prepare")


# The tokenizer identity of data prepared with its own vocabulary file (a built-in corpus' or a seqio
# task's SentencePiece model, encoded as prepare encodes it): what the ids mean, so a teacher
# trained on it and the data a run feeds can be compared (hf_tokenizer.check_same).
VOCAB_FILE_KIND = "vocab_file"


def tokenizer_identity(manifest: dict) -> dict:
  """What the ids of prepared data mean: the fingerprint `prepare --tokenizer` recorded
  (hf_tokenizer.Tokenizer.fingerprint), else {"kind": "vocab_file", "sha256" of the vocabulary
  file, "vocab_size", "bos_id": None, "eos_id"}. Data with the same vocabulary size but another
  tokenizer (ids permuted) differs here."""
  if manifest.get("tokenizer"):
    return manifest["tokenizer"]
  return {"kind": VOCAB_FILE_KIND, "sha256": manifest["vocab"]["sha256"], "vocab_size": manifest["vocab_size"],
          "bos_id": None, "eos_id": manifest.get("eos_id")}


def manifest_sha256(manifest: dict) -> str:
  """The identity of prepared data: sha256 of its manifest (every shard's sha256, the vocabulary's,
  the source), as canonical JSON. Re-preparing the same source with the same tokenizer gives the
  same value; other text or another tokenizer at the same path does not."""
  return hashlib.sha256(json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


def _check_shard(path: str, shard: dict, verify: bool) -> None:
  """One local shard against its manifest entry: size always, SHA-256 if verify (the costly part,
  run for several shards at once)."""
  file = os.path.join(path, shard["file"])
  try:
    size = os.path.getsize(file)
  except OSError as e:
    raise PreparedDataError(f"shard {file} is missing: {e}") from e
  if size != shard["bytes"]:
    raise PreparedDataError(f"shard {file} has {size} bytes, the manifest says {shard['bytes']} "
                            "(truncated or replaced; re-run prepare)")
  if verify:
    _check_hash(file, shard["sha256"])


def _open_shard(path: str, shard: dict, dtype: np.dtype) -> np.ndarray:
  """Read-only memmap of one checked shard. Called from one thread at a time: np.load parses the
  .npy header with ast.literal_eval, and CPython 3.11.7 (this machine's) raised "SystemError: AST
  constructor recursion depth mismatch" in CI when two threads parsed at once (CPython gh-106905)."""
  file = os.path.join(path, shard["file"])
  try:
    tokens = np.load(file, mmap_mode="r", allow_pickle=False)
  except (OSError, ValueError) as e:
    raise PreparedDataError(f"shard {file} is not a readable .npy file: {e}") from e
  if tokens.dtype != dtype or tokens.shape != (shard["tokens"],):
    raise PreparedDataError(f"shard {file} holds {tokens.dtype}{list(tokens.shape)}, the manifest "
                            f"says {dtype.name}[{shard['tokens']}]")
  return tokens


def _check_hash(file: str, expected: str, digest: str | None = None) -> None:
  digest = digest or fileio.sha256_file(file)
  if digest != expected:
    raise PreparedDataError(f"shard {file} has sha256 {digest}, the manifest says {expected} (corrupted "
                            "or changed since prepare; re-run prepare)")


def max_id(tokens: np.ndarray, chunk: int = 1 << 26) -> int:
  """The largest id of a 1-D token stream, read in chunks (a memmap stays out of memory)."""
  return max(int(tokens[i:i + chunk].max()) for i in range(0, tokens.size, chunk))


def stage(path: str, local_root: str, verify: bool = True) -> str:
  """A local copy of remote prepared directory `path` (gs://...) under local_root, made once.

  Each file is streamed and hashed as it is copied and compared with the manifest (so the copy
  is hash-checked without a second read); a file already staged with the right size is kept
  (and hash-checked again when verify). The manifest is copied last: a staged directory with
  a manifest is complete. Returns the local directory.
  """
  manifest = read_manifest(path)
  bucket_and_key = path.split("://", 1)[1].strip("/")
  local = os.path.join(os.path.abspath(local_root), "staged", bucket_and_key)
  files = [(manifest["vocab"]["file"], None, manifest["vocab"]["sha256"])] + [
      (s["file"], s["bytes"], s["sha256"]) for split in SPLITS for s in manifest["splits"][split]["shards"]]
  os.makedirs(local, exist_ok=True)
  copied = 0
  for name, size, sha in files:
    dst = os.path.join(local, name)
    if os.path.exists(dst) and (size is None or os.path.getsize(dst) == size):
      if verify:
        _check_hash(dst, sha)
      continue
    digest = fileio.copy(fileio.join(path, name), dst)
    if verify:
      _check_hash(fileio.join(path, name), sha, digest)
    copied += 1
  fileio.atomic_write_json(os.path.join(local, MANIFEST), manifest)
  logging.info("prepared data %s staged in %s (%d of %d files copied)", path, local, copied, len(files))
  return local


def load_prepared(path: str, *, verify: bool = False, stage_root: str | None = None) -> Prepared:
  """Loads prepared directory `path` (numpy only; no TensorFlow, no seqio).

  Always checks the manifest's structure (including the recorded largest id < vocab_size) and
  every shard's byte size, dtype and length; with verify=True also the SHA-256 of every shard and
  of the vocabulary (streamed, one thread per file: about one read of the data; see
  reports/data_hash_cost.json), and, for data prepared before the largest id was recorded, that all
  ids are < vocab_size. A gs:// path is staged to local disk under stage_root first (stage()).
  Raises PreparedDataError on any mismatch.
  """
  if fileio.is_remote(path):
    if stage_root is None:
      raise PreparedDataError(f"{path} is on an object store: give a local stage_root to copy it to")
    path = stage(path, stage_root, verify=verify)
    verify = False  # stage() checked every byte it copied or kept
  manifest = read_manifest(path)
  dtype = np.dtype(manifest["dtype"])
  vocab_path = os.path.join(path, manifest["vocab"]["file"])
  if not os.path.isfile(vocab_path):
    raise PreparedDataError(f"vocabulary {vocab_path} is missing")
  if verify:
    digest = fileio.sha256_file(vocab_path)
    if digest != manifest["vocab"]["sha256"]:
      raise PreparedDataError(f"vocabulary {vocab_path} has sha256 {digest}, the manifest says "
                              f"{manifest['vocab']['sha256']}")
  entries = [(split, s) for split in SPLITS for s in manifest["splits"][split]["shards"]]
  with concurrent.futures.ThreadPoolExecutor(max(1, min(len(entries), os.cpu_count() or 1))) as pool:
    list(pool.map(lambda e: _check_shard(path, e[1], verify), entries))
  loaded = [_open_shard(path, shard, dtype) for _, shard in entries]
  streams = {}
  for split in SPLITS:
    shards = [t for (sp, _), t in zip(entries, loaded) if sp == split]
    tokens = shards[0] if len(shards) == 1 else np.concatenate(shards)
    if tokens.size == 0:
      raise PreparedDataError(f"{path}: split {split!r} has no tokens")
    recorded = manifest["splits"][split].get("max_id")
    if recorded is None or not verify:  # unrecorded, or the bytes were not checked against the hash
      largest = max_id(tokens)
      if largest >= manifest["vocab_size"]:
        raise PreparedDataError(f"{path}: split {split!r} has token id {largest} >= vocab_size "
                                f"{manifest['vocab_size']}: the data and its vocabulary do not match "
                                "(bad data, not a training problem); re-run prepare")
    streams[split] = tokens
  return Prepared(train=streams["train"], validation=streams["validation"],
                  vocab_size=manifest["vocab_size"], vocab_path=vocab_path, manifest=manifest,
                  path=os.path.abspath(path))
