"""Transitional: train.py's current entry point, now backed by prepared data (no TF when cached).

    load_lm_data(corpus, cache_dir, vocab_size, seq_len) -> (train [N], validation [M], Prepared)

Delete this module once train.py calls prepared.ensure_prepared / prepared.load_prepared
itself. The third value is a prepared.Prepared; callers use only its `vocab_size`.
"""

from __future__ import annotations

import numpy as np

from guide_jax.data import prepared


def load_lm_data(corpus: str, cache_dir: str, vocab_size: int, seq_len: int):
  """(train [N], validation [M] token memmaps, prepared.Prepared) for built-in `corpus`.

  Prepares <cache_dir>/prepared/... first if missing (imports seqio/TF only then). Raises
  ValueError for an unknown corpus (before any work), a bad seq_len or too-short splits.
  """
  if not isinstance(seq_len, (int, np.integer)) or seq_len < 1:
    raise ValueError(f"seq_len must be a positive int, got {seq_len!r}")
  data = prepared.load_prepared(prepared.ensure_prepared(corpus, cache_dir, vocab_size))
  for split, tokens in (("train", data.train), ("validation", data.validation)):
    if tokens.size < seq_len + 1:
      raise ValueError(f"{corpus}/{split} has {tokens.size} tokens, fewer than one row of {seq_len + 1}")
  return data.train, data.validation, data
