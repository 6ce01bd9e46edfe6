"""SentencePiece vocabulary trained on a corpus' training split, cached by content.

    train_vocab(train_path, vocab_size, cache_dir) -> model path

Ids follow t5x/seqio: pad=0, eos=1, unk=2, no bos. The corpus writes line breaks inside
a document as the two characters backslash-n (see corpus.encode_document); that string
is a user-defined symbol, so a line break is always exactly one token. Byte fallback
is on, so no text maps to unk. Training text is the escaped documents cut into pieces
of <= SENTENCE_CHARS characters at line breaks, deterministically subsampled to at most
MAX_TRAIN_CHARS characters.
"""

from __future__ import annotations

import io
import os

import numpy as np
from absl import logging

from guide_jax.data import atomic

PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
NEWLINE_SYMBOL = "\\n"  # the two characters backslash + n
SENTENCE_CHARS = 2000
MAX_TRAIN_CHARS = 40_000_000
SUBSAMPLE_SEED = 0
MODEL_VERSION = 1  # bump when trainer settings change


def _training_sentences(train_path: str, max_chars: int = MAX_TRAIN_CHARS) -> list[str]:
  """Escaped documents cut at line breaks into pieces of <= SENTENCE_CHARS chars (longer
  single lines are cut at spaces); a fixed-seed random subset when over max_chars."""
  pieces = []
  with open(train_path, encoding="utf-8", newline="\n") as f:
    for doc in f:
      doc = doc.rstrip("\n")
      current = ""
      for part in doc.split(NEWLINE_SYMBOL):
        while len(part) > SENTENCE_CHARS:  # very long line: cut at a space
          cut = part.rfind(" ", 0, SENTENCE_CHARS)
          cut = SENTENCE_CHARS if cut <= 0 else cut
          if current:
            pieces.append(current)
            current = ""
          pieces.append(part[:cut])
          part = part[cut:]
        candidate = part if not current else current + NEWLINE_SYMBOL + part
        if len(candidate) > SENTENCE_CHARS:
          pieces.append(current)
          candidate = NEWLINE_SYMBOL + part
        current = candidate
      if current:
        pieces.append(current)
  total = sum(len(p) for p in pieces)
  if total > max_chars:
    order = np.random.default_rng(SUBSAMPLE_SEED).permutation(len(pieces))
    lengths = np.array([len(p) for p in pieces])[order]
    keep = np.sort(order[np.cumsum(lengths) <= max_chars])
    logging.info("Vocab: subsampled %d of %d training pieces (%d chars cap)",
                 len(keep), len(pieces), max_chars)
    pieces = [pieces[i] for i in keep]
  return [p for p in pieces if p.strip()]


def vocab_path(train_path: str, vocab_size: int, cache_dir: str) -> str:
  """<cache_dir>/vocab/sp_bpe_<vocab_size>_<sha256(train file)[:16]>_v<MODEL_VERSION>.model"""
  digest = atomic.sha256_file(train_path)[:16]
  return os.path.join(cache_dir, "vocab", f"sp_bpe_{vocab_size}_{digest}_v{MODEL_VERSION}.model")


def train_vocab(train_path: str, vocab_size: int, cache_dir: str) -> str:
  """Trains (or reuses) a SentencePiece BPE model on `train_path`; returns the .model path."""
  if not isinstance(vocab_size, (int, np.integer)) or vocab_size < 300:
    raise ValueError(f"vocab_size must be an int >= 300 (256 byte pieces + specials), got {vocab_size!r}")
  if not os.path.exists(train_path):
    raise ValueError(f"training file {train_path!r} does not exist")
  path = vocab_path(train_path, int(vocab_size), cache_dir)
  if os.path.exists(path):
    return path
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top

  sentences = _training_sentences(train_path)
  if not sentences:
    raise ValueError(f"training file {train_path!r} has no text")
  logging.info("Training SentencePiece BPE (vocab %d) on %d pieces of %s",
               vocab_size, len(sentences), train_path)
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(sentences),
      model_writer=model,
      model_type="bpe",
      vocab_size=int(vocab_size),
      pad_id=PAD_ID, eos_id=EOS_ID, unk_id=UNK_ID, bos_id=-1,
      user_defined_symbols=[NEWLINE_SYMBOL],
      byte_fallback=True,
      character_coverage=0.99995,
      split_digits=True,
      max_sentence_length=4 * SENTENCE_CHARS + 16,
      input_sentence_size=0,  # subsampling is done above, deterministically
      num_threads=max(1, os.cpu_count() or 1),
      minloglevel=2,
  )
  atomic.atomic_write_bytes(path, model.getvalue())
  return path
