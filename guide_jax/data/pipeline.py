"""Training input: corpus -> vocabulary -> seqio task -> cached int32 token streams.

    load_lm_data(corpus, cache_dir, vocab_size, seq_len) -> (train [N], validation [M], vocab)
    token_stream(task_name, split, cache_dir) -> int32 [N]

A split is tokenized once with seqio (task.get_dataset, shuffle=False, no trimming), its
documents (each ending in EOS=1) concatenated in file order and saved atomically to
<cache_dir>/tokens/<task>/<split>-<split file sha256[:12]>-<vocab sha256[:12]>.npy.
Batching lives in batches.py (LMBatches / eval_batches, re-exported here); TF and seqio
are imported only when a stream has to be built.
"""

from __future__ import annotations

import os

import numpy as np
from absl import logging

from guide_jax.data import atomic
from guide_jax.data.batches import LMBatches, eval_batches, make_batch, num_eval_batches  # noqa: F401 (re-exports)


def _token_cache_path(task_name: str, split: str, split_file: str, vocab_file: str,
                      cache_dir: str) -> str:
  key = f"{split}-{atomic.sha256_file(split_file)[:12]}-{atomic.sha256_file(vocab_file)[:12]}"
  return os.path.join(cache_dir, "tokens", task_name, f"{key}.npy")


def token_stream(task_name: str, split: str, cache_dir: str) -> np.ndarray:
  """int32 [N]: all documents of `split` of seqio task `task_name`, tokenized and concatenated."""
  from guide_jax.data import tasks  # pylint: disable=g-import-not-at-top (imports TF)

  config = tasks.task_config(task_name)
  if config is None:
    raise ValueError(f"{task_name!r} was not registered by guide_jax.data.tasks")
  split_files, vocab_file = dict(config[0]), config[1]
  if split not in split_files:
    raise ValueError(f"task {task_name} has no split {split!r}; splits: {sorted(split_files)}")
  path = _token_cache_path(task_name, split, split_files[split], vocab_file, cache_dir)
  if os.path.exists(path):
    return np.load(path)
  task = tasks.seqio.get_mixture_or_task(task_name)
  ds = task.get_dataset(sequence_length=None, split=split, shuffle=False, num_epochs=1,
                        use_cached=False)
  pieces = [ex["targets"] for ex in ds.map(lambda ex: {"targets": ex["targets"]}).as_numpy_iterator()]
  if not pieces:
    raise ValueError(f"task {task_name} split {split} produced no documents")
  tokens = np.concatenate(pieces).astype(np.int32)
  with atomic.atomic_open(path, "wb") as f:
    np.save(f, tokens)
  logging.info("Tokenized %s/%s: %d docs, %d tokens -> %s", task_name, split, len(pieces),
               tokens.size, path)
  return tokens


def load_lm_data(corpus: str, cache_dir: str, vocab_size: int, seq_len: int):
  """(train int32 [N], validation int32 [M], seqio.SentencePieceVocabulary) for `corpus`.

  Builds/reuses the corpus, the SentencePiece model, the seqio task and the token caches.
  seq_len is only checked: each split must hold at least one row of seq_len + 1 tokens.
  Raises ValueError for an unknown corpus (before any work) or too-short splits.
  """
  from guide_jax.data import corpus as corpus_lib  # pylint: disable=g-import-not-at-top

  if corpus not in corpus_lib.CORPORA:
    raise ValueError(f"unknown corpus {corpus!r}; expected one of {corpus_lib.CORPORA}")
  if not isinstance(seq_len, (int, np.integer)) or seq_len < 1:
    raise ValueError(f"seq_len must be a positive int, got {seq_len!r}")
  from guide_jax.data import tasks  # pylint: disable=g-import-not-at-top

  task_name = tasks.register_lm_task(corpus, cache_dir, vocab_size)
  train = token_stream(task_name, "train", cache_dir)
  validation = token_stream(task_name, "validation", cache_dir)
  for split, tokens in (("train", train), ("validation", validation)):
    if tokens.size < seq_len + 1:
      raise ValueError(f"{corpus}/{split} has {tokens.size} tokens, fewer than one row of {seq_len + 1}")
  vocab = tasks.seqio.get_mixture_or_task(task_name).output_features["targets"].vocabulary
  return train, validation, vocab
