"""seqio Task registration for the built-in language-modeling corpora (used by prepare.py).

A task reads one document per line (corpus file format, see corpus.py), yields
{"targets": int32 [doc_len + 1]} token ids ending in EOS (=1), with the corpus'
SentencePiece vocabulary. Registration is idempotent: registering the same name again
with the same files and vocabulary is a no-op; with different ones it replaces the task.
"""

from __future__ import annotations

import os

from absl import logging

from guide_jax.corpora import corpus as corpus_lib
from guide_jax.corpora import tf_setup
from guide_jax.corpora import vocab as vocab_lib

tf, seqio = tf_setup.import_tf_and_seqio()

# What this module registered under each name, to make re-registration a no-op.
_TASK_CONFIGS: dict[str, tuple] = {}


def task_name_for(corpus: str, vocab_model_path: str) -> str:
  """"guide_lm_<corpus>_<vocab file stem>", e.g. guide_lm_shakespeare_sp_bpe_8192_<hash>_v1."""
  stem = os.path.splitext(os.path.basename(vocab_model_path))[0]
  return f"guide_lm_{corpus}_{stem}"


@seqio.map_over_dataset
def parse_line(line: tf.Tensor) -> dict:
  """Corpus line (escaped document) -> {"targets": line}."""
  return {"targets": line}


def register_lm_task_from_files(name: str, split_files: dict[str, str],
                                vocab_model_path: str) -> str:
  """Registers (idempotently) LM task `name` over {split: corpus file}; returns `name`."""
  missing = [p for p in split_files.values() if not os.path.exists(p)]
  if missing:
    raise ValueError(f"task {name}: missing split files {missing}")
  split_files = {split: os.path.abspath(p) for split, p in split_files.items()}
  vocab_model_path = os.path.abspath(vocab_model_path)
  config = (tuple(sorted(split_files.items())), vocab_model_path)
  if name in seqio.TaskRegistry.names():
    if _TASK_CONFIGS.get(name) == config:
      return name
    logging.info("Re-registering seqio task %s with new files/vocabulary", name)
    seqio.TaskRegistry.remove(name)
  vocabulary = seqio.SentencePieceVocabulary(vocab_model_path)
  seqio.TaskRegistry.add(
      name,
      source=seqio.TextLineDataSource(split_files),
      preprocessors=[
          parse_line,
          seqio.preprocessors.tokenize,
          seqio.preprocessors.append_eos_after_trim,
      ],
      output_features={"targets": seqio.Feature(vocabulary, add_eos=True, dtype=tf.int32)},
  )
  _TASK_CONFIGS[name] = config
  return name


def register_lm_task(corpus: str, cache_dir: str, vocab_size: int) -> str:
  """Builds corpus + vocabulary (cached) and registers their LM task; returns the task name."""
  paths = corpus_lib.build_corpus(corpus, cache_dir)
  model_path = vocab_lib.train_vocab(paths["train"], vocab_size, cache_dir)
  split_files = {split: paths[split] for split in corpus_lib.SPLITS}
  return register_lm_task_from_files(task_name_for(corpus, model_path), split_files, model_path)
