"""Tokenizes a built-in corpus or any registered seqio task/mixture into a prepared-data directory.

    python -m guide_jax.data.prepare --corpus=shakespeare [--vocab_size=8000] [--cache_dir=cache]
    python -m guide_jax.data.prepare --task_module=my.tasks --task=my_task --output_dir=DIR
        [--train_split=train] [--validation_split=validation]
    python -m guide_jax.data.prepare --tokenizer=TEACHER_DIR --input='text/*.jsonl' --output_dir=DIR
        [--text_field=text] [--validation_input=GLOB | --validation_every=100] [--eos_token=TOKEN]
        (or --tokenizer with --corpus / --task: their text, tokenized by the teacher's tokenizer)

With --tokenizer (a Hugging Face model directory, a tokenizer.json or a SentencePiece .model)
the documents are tokenized by that tokenizer, as its family pretrains (guide_jax.data.tokenize_text,
guide_jax.data.hf_tokenizer); the manifest records its fingerprint so that training can refuse
data made with another tokenizer than the teacher's.

A built-in corpus goes to prepared_dir_for(corpus, cache_dir, vocab_size) unless
--output_dir is given. A seqio task or mixture (after importing each --task_module, as
t5x's MIXTURE_OR_TASK_MODULE) contributes its "targets" feature, tokenized with the task's
own SentencePiece vocabulary, untrimmed and unshuffled (a mixture samples with seed 0 until
its first task runs out). The directory format is described in prepared.py; it is written
to a temporary directory and renamed into place, so it is either complete or absent.

This is the only module (with guide_jax.corpora.tasks, which it uses) that imports seqio and
TensorFlow, and only inside the functions that prepare (importing it loads neither): training
calls ensure_prepared, which returns an existing directory without them, and reads the result
with prepared.load_prepared (numpy only). Built-in corpora are built by guide_jax.corpora.
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys
from typing import Iterable, Iterator

import numpy as np
from absl import app, flags, logging

from guide_jax import fileio
from guide_jax.data import prepared

SHARD_TOKENS = 1 << 28  # a shard closes at the first document boundary past this many tokens


# ----------------------------------------------------------------------------- an existing output

def intact_output(output_dir: str) -> bool:
  """Whether output_dir holds intact prepared data (so prepare has nothing to do); False when absent.

  An existing prepared-data directory (it has a manifest) is verified as a run verifies it (every
  shard's size, dtype and SHA-256, the vocabulary's hash, the largest id); one that fails (a
  truncated or corrupt shard, a missing file, a malformed manifest) is removed with a warning
  naming what was wrong, so that prepare builds it again: that is what the data errors' "re-run
  prepare" does. A directory without a manifest is not prepared data (prepare writes it whole,
  by one rename) and is never removed: FileExistsError.
  """
  if not os.path.exists(output_dir):
    return False
  if not os.path.isfile(os.path.join(output_dir, prepared.MANIFEST)):
    raise FileExistsError(f"{output_dir} exists and is not a prepared-data directory (no {prepared.MANIFEST}); "
                          "remove it or choose another output directory")
  try:
    prepared.load_prepared(output_dir, verify=True)
    return True
  except prepared.PreparedDataError as e:
    logging.warning("%s is damaged, preparing it again: %s", output_dir, e)
    shutil.rmtree(output_dir)
    return False


# ----------------------------------------------------------------------------- writing

def _fix_documents(docs: Iterable[np.ndarray], eos_id: int) -> Iterator[np.ndarray]:
  """Each document as 1-D int64 ids ending in eos_id (appended when missing)."""
  for doc in docs:
    doc = np.asarray(doc, dtype=np.int64).reshape(-1)
    if doc.size == 0 or doc[-1] != eos_id:
      doc = np.append(doc, eos_id)
    yield doc


def write_split(docs: Iterable[np.ndarray], out_dir: str, split: str, vocab_size: int,
                eos_id: int, shard_tokens: int = SHARD_TOKENS) -> dict:
  """Writes documents (1-D int ids each) as <split>-<i>.npy shards of prepared.shard_dtype.

  Returns the split's manifest entry {"tokens", "docs", "max_id", "shards": [{"file", "tokens",
  "bytes", "sha256"}]} (max_id: the largest id, re-checked against vocab_size at every load).
  Raises ValueError for an id outside [0, vocab_size) or an empty split.
  """
  dtype = prepared.shard_dtype(vocab_size)
  shards, pending, pending_tokens, num_docs, largest = [], [], 0, 0, 0

  def flush():
    tokens = np.concatenate(pending).astype(dtype)
    name = prepared.shard_name(split, len(shards))
    path = os.path.join(out_dir, name)
    np.save(path, tokens, allow_pickle=False)
    shards.append({"file": name, "tokens": int(tokens.size), "bytes": os.path.getsize(path),
                   "sha256": fileio.sha256_file(path)})

  for doc in _fix_documents(docs, eos_id):
    if doc.min() < 0 or doc.max() >= vocab_size:
      raise ValueError(f"split {split!r} document {num_docs} has ids outside [0, {vocab_size}): "
                       f"min {doc.min()}, max {doc.max()}")
    pending.append(doc.astype(dtype))
    largest = max(largest, int(doc.max()))
    pending_tokens += doc.size
    num_docs += 1
    if pending_tokens >= shard_tokens:
      flush()
      pending, pending_tokens = [], 0
  if pending:
    flush()
  if not shards:
    raise ValueError(f"split {split!r} produced no documents")
  return {"tokens": sum(s["tokens"] for s in shards), "docs": num_docs, "max_id": largest, "shards": shards}


def write_prepared(output_dir: str, source: dict, vocab_model: bytes, vocab_size: int,
                   eos_id: int, split_docs: dict[str, tuple[str, Iterable[np.ndarray]]],
                   shard_tokens: int = SHARD_TOKENS, vocab_file: str = prepared.VOCAB_FILE,
                   extra: dict | None = None) -> dict:
  """Writes a complete prepared-data directory atomically; returns its manifest.

  split_docs: {"train"|"validation": (source split name, iterable of 1-D id arrays)}.
  vocab_file: the name vocab_model is stored under; extra: more manifest keys (e.g. "tokenizer").
  Raises FileExistsError if output_dir exists (checked first and again at the rename).
  """
  if sorted(split_docs) != sorted(prepared.SPLITS):
    raise ValueError(f"need documents for exactly {prepared.SPLITS}, got {sorted(split_docs)}")
  if os.path.exists(output_dir):
    raise FileExistsError(f"{output_dir} already exists")
  with fileio.atomic_directory(output_dir) as tmp:
    vocab_path = os.path.join(tmp, vocab_file)
    with open(vocab_path, "wb") as f:
      f.write(vocab_model)
    splits = {}
    for split in prepared.SPLITS:
      source_split, docs = split_docs[split]
      splits[split] = {"source_split": source_split,
                       **write_split(docs, tmp, split, vocab_size, eos_id, shard_tokens)}
      logging.info("Prepared %s (%s): %d docs, %d tokens", split, source_split,
                   splits[split]["docs"], splits[split]["tokens"])
    manifest = {"format_version": prepared.FORMAT_VERSION, "source": source,
                "vocab_size": int(vocab_size), "dtype": prepared.shard_dtype(vocab_size).name,
                "eos_id": int(eos_id),
                "vocab": {"file": vocab_file, "sha256": fileio.sha256_file(vocab_path)},
                "splits": splits, **(extra or {})}
    prepared.check_manifest(manifest)
    fileio.atomic_write_json(os.path.join(tmp, prepared.MANIFEST), manifest)
  return manifest


# ----------------------------------------------------------------------------- seqio

def import_task_modules(modules: Iterable[str]) -> None:
  """Imports each module (it registers seqio tasks/mixtures); ValueError naming the failed one."""
  for module in modules:
    try:
      importlib.import_module(module)
    except ImportError as e:
      raise ValueError(f"cannot import --task_module {module!r}: {e}") from e


def resolve_task(name: str, splits: dict[str, str]):
  """(seqio Task or Mixture, its targets SentencePieceVocabulary), checked before any work.

  splits: {"train"|"validation": the task's split name}. Raises ValueError for an unknown
  name, a missing "targets" feature, a non-SentencePiece vocabulary or a missing split.
  """
  from guide_jax.corpora import tasks  # pylint: disable=g-import-not-at-top (imports TF, seqio)

  seqio = tasks.seqio
  known = set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names())
  if name not in known:
    raise ValueError(f"unknown seqio task or mixture {name!r} ({len(known)} registered; "
                     "import the module that registers it with --task_module)")
  provider = seqio.get_mixture_or_task(name)
  feature = provider.output_features.get("targets")
  if feature is None:
    raise ValueError(f"{name} has no 'targets' output feature (features: {sorted(provider.output_features)})")
  vocabulary = feature.vocabulary
  if not isinstance(vocabulary, seqio.SentencePieceVocabulary):
    raise ValueError(f"{name}'s targets vocabulary is {type(vocabulary).__name__}; "
                     "prepared data needs a seqio.SentencePieceVocabulary")
  members = provider.tasks if isinstance(provider, seqio.Mixture) else [provider]
  for split in splits.values():
    for task in members:
      if split not in task.splits:
        raise ValueError(f"task {task.name} has no split {split!r}; its splits: {sorted(task.splits)}")
  return provider, vocabulary


def task_documents(provider, split: str) -> Iterator[np.ndarray]:
  """The "targets" of every example of `split`, in order (untrimmed, unshuffled, one epoch)."""
  ds = provider.get_dataset(sequence_length=None, split=split, shuffle=False, seed=0,
                            num_epochs=1, use_cached=False)
  ds = ds.map(lambda ex: ex["targets"])
  yield from ds.as_numpy_iterator()


def _take_tokens(docs: Iterable[np.ndarray], max_tokens: int | None) -> Iterator[np.ndarray]:
  """Whole documents, in order, until at least max_tokens tokens were given (None: all)."""
  total = 0
  for doc in docs:
    if max_tokens is not None and total >= max_tokens:
      return
    total += np.size(doc)
    yield doc


def prepare_task(name: str, output_dir: str, *, train_split: str = "train",
                 validation_split: str = "validation", task_modules: Iterable[str] = (),
                 source: dict | None = None, shard_tokens: int = SHARD_TOKENS,
                 max_train_tokens: int | None = None) -> dict:
  """Prepares seqio task/mixture `name` into output_dir; returns the manifest.

  Imports task_modules first. All checks (modules, name, feature, vocabulary, splits,
  output_dir absent) run before any tokenization. max_train_tokens: keep only the first whole
  training documents up to that many tokens (e.g. to carry a small prepared dir to a GPU host).
  """
  if max_train_tokens is not None and (not isinstance(max_train_tokens, int) or max_train_tokens < 1):
    raise ValueError(f"max_train_tokens must be a positive int, got {max_train_tokens!r}")
  task_modules = list(task_modules)
  if intact_output(output_dir):
    raise FileExistsError(f"output directory {output_dir} already exists")
  import_task_modules(task_modules)
  splits = {"train": train_split, "validation": validation_split}
  provider, vocabulary = resolve_task(name, splits)
  if source is None:
    source = {"kind": "seqio", "task": name, "task_modules": task_modules,
              "vocabulary_file": vocabulary.sentencepiece_model_file}
  eos_id = vocabulary.eos_id
  if eos_id is None:
    raise ValueError(f"{name}'s vocabulary has no EOS id; documents could not be separated")
  split_docs = {s: (splits[s], task_documents(provider, splits[s])) for s in prepared.SPLITS}
  if max_train_tokens is not None:
    source = {**source, "max_train_tokens": max_train_tokens}
    split_docs["train"] = (splits["train"], _take_tokens(split_docs["train"][1], max_train_tokens))
  return write_prepared(output_dir, source, vocabulary.sp_model, vocabulary.vocab_size, eos_id,
                        split_docs, shard_tokens)


def prepare_corpus(corpus: str, cache_dir: str, vocab_size: int, output_dir: str | None = None,
                   max_train_tokens: int | None = None) -> str:
  """Builds built-in `corpus` (cached), its vocabulary and seqio task, and prepares it.

  Returns the directory (default prepared_dir_for(corpus, cache_dir, vocab_size));
  an existing one is checked (manifest only) and reused.
  The manifest's source records the corpus files' SHA-256 (its content hash) and statistics.
  """
  from guide_jax.corpora import corpus as corpus_lib  # pylint: disable=g-import-not-at-top

  if corpus not in corpus_lib.CORPORA:
    raise ValueError(f"unknown corpus {corpus!r}; expected one of {corpus_lib.CORPORA}")
  output_dir = output_dir or prepared_dir_for(corpus, cache_dir, vocab_size)
  if intact_output(output_dir):  # verified; a damaged one is removed and built again below
    logging.info("Corpus %s is already prepared in %s (verified)", corpus, output_dir)
    return output_dir
  from guide_jax.corpora import tasks  # pylint: disable=g-import-not-at-top (imports TF, seqio)

  name = tasks.register_lm_task(corpus, cache_dir, vocab_size)
  stats = corpus_lib.load_complete(corpus_lib.corpus_dir(corpus, cache_dir))["stats_data"]
  source = {"kind": "corpus", "corpus": corpus, "task": name,
            "content_sha256": corpus_lib.content_hash(stats),
            "corpus_splits": stats["splits"], "corpus_sources": stats.get("sources", {}),
            "corpus_packages": stats.get("packages", {})}
  try:
    prepare_task(name, output_dir, source=source, max_train_tokens=max_train_tokens)
  except FileExistsError:
    if not os.path.isdir(output_dir):
      raise
    logging.info("%s was prepared concurrently; using it", output_dir)
  return output_dir


# ----------------------------------------------------------------------------- command line

def prepared_dir_for(corpus: str, cache_dir: str, vocab_size: int) -> str:
  """Deterministic location of built-in `corpus` prepared with a `vocab_size` vocabulary:
  <cache_dir>/prepared/<corpus>-v<vocab_size>-c<corpus format>-s<vocab model version>-f<format>,
  so a change of corpus text, vocabulary trainer or file format gets a new directory."""
  from guide_jax.corpora import corpus as corpus_lib, vocab as vocab_lib  # pylint: disable=g-import-not-at-top

  if not isinstance(corpus, str) or not corpus or os.sep in corpus:
    raise ValueError(f"corpus must be a plain name, got {corpus!r}")
  name = (f"{corpus}-v{int(vocab_size)}-c{corpus_lib.CORPUS_FORMAT_VERSION}"
          f"-s{vocab_lib.MODEL_VERSION}-f{prepared.FORMAT_VERSION}")
  return os.path.join(cache_dir, "prepared", name)


def ensure_prepared(corpus: str, cache_dir: str, vocab_size: int) -> str:
  """prepared_dir_for(corpus, cache_dir, vocab_size), preparing it first if it does not exist.

  Preparing (corpus download, vocabulary, tokenization) imports seqio and TensorFlow in
  this process; an existing directory is returned without them (a concurrent preparer
  that finishes first wins and its directory is used). Raises ValueError for an unknown
  corpus before any work.
  """
  from guide_jax.corpora import corpus as corpus_lib  # pylint: disable=g-import-not-at-top (no TF)

  if corpus not in corpus_lib.CORPORA:
    raise ValueError(f"unknown corpus {corpus!r}; expected one of {corpus_lib.CORPORA}")
  path = prepared_dir_for(corpus, cache_dir, vocab_size)
  if os.path.isdir(path):
    return path
  logging.info("No prepared data at %s: preparing corpus %s (imports seqio/TensorFlow)", path, corpus)
  prepare_corpus(corpus, cache_dir, vocab_size, path)
  return path


def _define_flags() -> None:
  flags.DEFINE_string("corpus", None, "built-in corpus: one of guide_jax.corpora.corpus.CORPORA")
  flags.DEFINE_string("task", None, "registered seqio task or mixture name")
  flags.DEFINE_multi_string("task_module", [], "module(s) to import first; they register --task")
  flags.DEFINE_string("output_dir", None, "prepared-data directory (required with --task)")
  flags.DEFINE_string("cache_dir", "cache", "corpus/vocabulary cache (with --corpus)")
  flags.DEFINE_integer("vocab_size", 8000, "SentencePiece vocabulary size (with --corpus)")
  flags.DEFINE_string("train_split", "train", "the task's split stored as 'train'")
  flags.DEFINE_string("validation_split", "validation", "the task's split stored as 'validation'")
  flags.DEFINE_integer("max_train_tokens", None, "keep the first whole training documents up to this many tokens")
  flags.DEFINE_string("tokenizer", None, "tokenize with this (the teacher's) tokenizer: a Hugging Face "
                      "model dir, tokenizer.json or SentencePiece .model (needs --output_dir)")
  flags.DEFINE_multi_string("input", [], "with --tokenizer: text files / globs (.jsonl: one JSON object a line)")
  flags.DEFINE_multi_string("validation_input", [], "with --input: validation files / globs")
  flags.DEFINE_string("text_field", "text", "with --tokenizer: the JSONL / seqio source field holding the text")
  flags.DEFINE_integer("validation_every", 100, "with --input and no --validation_input: every n-th document validates")
  flags.DEFINE_string("eos_token", None, "with --tokenizer: the token ending a document (default: tokenizer_config.json's)")


def run(corpus: str | None, task: str | None, task_modules: list[str], output_dir: str | None,
        cache_dir: str, vocab_size: int, train_split: str, validation_split: str,
        max_train_tokens: int | None = None, tokenizer: str | None = None,
        text: dict | None = None) -> str:
  """The command's work, from flag values; returns the prepared directory.

  tokenizer, text: --tokenizer and tokenize_text.prepare_text's other arguments (inputs,
  validation_inputs, text_field, validation_every, eos_token, vocab_size).
  """
  text = dict(text or {})
  if tokenizer is not None:
    if not output_dir:
      raise ValueError("--tokenizer needs --output_dir")
    from guide_jax.data import tokenize_text  # pylint: disable=g-import-not-at-top

    tokenize_text.prepare_text(output_dir, tokenizer, corpus=corpus, task=task, task_modules=task_modules,
                               train_split=train_split, validation_split=validation_split,
                               cache_dir=cache_dir, max_train_tokens=max_train_tokens, **text)
    return output_dir
  if text.get("inputs") or text.get("validation_inputs"):
    raise ValueError("--input / --validation_input need --tokenizer (the teacher's tokenizer)")
  if (corpus is None) == (task is None):
    raise ValueError("give exactly one of --corpus or --task")
  if corpus is not None:
    if task_modules:
      raise ValueError("--task_module goes with --task, not --corpus")
    if max_train_tokens is not None and not output_dir:
      raise ValueError("--max_train_tokens needs --output_dir (the default directory holds the whole corpus)")
    return prepare_corpus(corpus, cache_dir, vocab_size, output_dir, max_train_tokens)
  if not output_dir:
    raise ValueError("--task needs --output_dir")
  prepare_task(task, output_dir, train_split=train_split, validation_split=validation_split,
               task_modules=task_modules, max_train_tokens=max_train_tokens)
  return output_dir


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  f = flags.FLAGS
  try:
    path = run(f.corpus, f.task, f.task_module, f.output_dir, f.cache_dir, f.vocab_size,
               f.train_split, f.validation_split, f.max_train_tokens, f.tokenizer,
               dict(inputs=f.input, validation_inputs=f.validation_input, text_field=f.text_field,
                    validation_every=f.validation_every, eos_token=f.eos_token,
                    vocab_size=f.vocab_size if f["vocab_size"].present else None))
  except (ValueError, FileExistsError) as e:  # bad input: one clear line, no traceback
    sys.exit(f"guide_jax.data.prepare: error: {e}")
  manifest = prepared.read_manifest(path)
  print(f"prepared {path}: vocab_size {manifest['vocab_size']} ({manifest['dtype']}), "
        + ", ".join(f"{s} {manifest['splits'][s]['tokens']} tokens" for s in prepared.SPLITS))


if __name__ == "__main__":
  _define_flags()
  app.run(main)
