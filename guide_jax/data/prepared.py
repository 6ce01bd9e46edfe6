"""Prepared data: tokenized splits on disk, read with numpy (memmap) only.

    load_prepared(path, *, verify=False) -> Prepared(train, validation, vocab_size, vocab_path, ...)

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

import dataclasses
import json
import os

import numpy as np

from guide_jax.data import atomic

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
  """The checked manifest of prepared directory `path`; PreparedDataError if missing or malformed."""
  manifest_path = os.path.join(path, MANIFEST)
  if not os.path.isdir(path):
    raise PreparedDataError(f"prepared-data directory {path!r} does not exist "
                            "(create it with `python -m guide_jax.data.prepare`)")
  try:
    with open(manifest_path, encoding="utf-8") as f:
      manifest = json.load(f)
  except FileNotFoundError as e:
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


def _load_shard(path: str, shard: dict, dtype: np.dtype, verify: bool) -> np.ndarray:
  """Read-only memmap of one shard, checked against its manifest entry (size always, hash if verify)."""
  file = os.path.join(path, shard["file"])
  try:
    size = os.path.getsize(file)
  except OSError as e:
    raise PreparedDataError(f"shard {file} is missing: {e}") from e
  if size != shard["bytes"]:
    raise PreparedDataError(f"shard {file} has {size} bytes, the manifest says {shard['bytes']} "
                            "(truncated or replaced; re-run prepare)")
  if verify:
    digest = atomic.sha256_file(file)
    if digest != shard["sha256"]:
      raise PreparedDataError(f"shard {file} has sha256 {digest}, the manifest says "
                              f"{shard['sha256']} (corrupted; re-run prepare)")
  try:
    tokens = np.load(file, mmap_mode="r", allow_pickle=False)
  except (OSError, ValueError) as e:
    raise PreparedDataError(f"shard {file} is not a readable .npy file: {e}") from e
  if tokens.dtype != dtype or tokens.shape != (shard["tokens"],):
    raise PreparedDataError(f"shard {file} holds {tokens.dtype}{list(tokens.shape)}, the manifest "
                            f"says {dtype.name}[{shard['tokens']}]")
  return tokens


def load_prepared(path: str, *, verify: bool = False) -> Prepared:
  """Loads prepared directory `path` (numpy only; no TensorFlow, no seqio).

  Always checks the manifest's structure and every shard's byte size, dtype and length;
  with verify=True also the SHA-256 of every shard and of the vocabulary, and that all ids
  are < vocab_size (reads everything once). Raises PreparedDataError on any mismatch.
  """
  manifest = read_manifest(path)
  dtype = np.dtype(manifest["dtype"])
  vocab_path = os.path.join(path, manifest["vocab"]["file"])
  if not os.path.isfile(vocab_path):
    raise PreparedDataError(f"vocabulary {vocab_path} is missing")
  if verify:
    digest = atomic.sha256_file(vocab_path)
    if digest != manifest["vocab"]["sha256"]:
      raise PreparedDataError(f"vocabulary {vocab_path} has sha256 {digest}, the manifest says "
                              f"{manifest['vocab']['sha256']}")
  streams = {}
  for split in SPLITS:
    shards = [_load_shard(path, s, dtype, verify) for s in manifest["splits"][split]["shards"]]
    tokens = shards[0] if len(shards) == 1 else np.concatenate(shards)
    if tokens.size == 0:
      raise PreparedDataError(f"{path}: split {split!r} has no tokens")
    if verify and int(tokens.max()) >= manifest["vocab_size"]:
      raise PreparedDataError(f"{path}: split {split!r} has id {int(tokens.max())} >= vocab_size "
                              f"{manifest['vocab_size']}")
    streams[split] = tokens
  return Prepared(train=streams["train"], validation=streams["validation"],
                  vocab_size=manifest["vocab_size"], vocab_path=vocab_path, manifest=manifest,
                  path=os.path.abspath(path))
