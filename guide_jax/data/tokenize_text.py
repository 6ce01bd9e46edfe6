"""Prepared data from text, tokenized with a given (the teacher's) tokenizer.

    prepare_text(output_dir, tokenizer_path, inputs=["data/*.jsonl"], text_field="text",
                 validation_inputs=None, validation_every=100)
    prepare_text(output_dir, tokenizer_path, corpus="shakespeare", cache_dir="cache")

Documents:
  * files named by paths or globs (sorted, each pattern must match): a `.jsonl` / `.json` file
    holds one JSON object per line and `text_field` of each is a document; any other file is one
    document (UTF-8);
  * or a built-in corpus (guide_jax.data.corpus: its train and validation splits);
  * or a seqio task's source (its raw `text_field`, or the line itself for a source of lines such
    as seqio.TextLineDataSource, before the task's own preprocessors and tokenization).
Validation: `validation_inputs`, the corpus' / task's validation split, or else every
`validation_every`-th document of the inputs (documents validation_every-1, 2*validation_every-1, ...).
Each document is encoded by guide_jax.data.hf_tokenizer (BOS/EOS as the family pretrains); a
batch of documents (BATCH_CHARS characters) is encoded on every core while the previous one is
written. The manifest (prepared.py) records the tokenizer's fingerprint under "tokenizer" and the
tokenizer file itself as its vocabulary; vocab_size is the teacher's embedding rows (config.json's
vocab_size in a model directory) when given, else the tokenizer's own size.
"""

from __future__ import annotations

import concurrent.futures
import glob
import os
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np

from guide_jax import fileio
from guide_jax.data import hf_tokenizer

BATCH_CHARS = 1 << 22  # characters encoded per tokenizer call (~1M tokens)
JSON_SUFFIXES = (".jsonl", ".json")


def expand(patterns: Sequence[str]) -> list[str]:
  """Paths/globs -> files, each pattern's matches sorted, in pattern order, no duplicates.

  Raises ValueError for a pattern that matches no file.
  """
  files, seen = [], set()
  for pattern in patterns:
    matches = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
    if not matches:
      raise ValueError(f"input {pattern!r} matches no file")
    for path in matches:
      if path not in seen:
        seen.add(path)
        files.append(path)
  return files


def check_json_field(files: Sequence[str], text_field: str) -> None:
  """Cheap early check: the first record of every JSON-lines file has a string `text_field`."""
  for path in files:
    if not path.endswith(JSON_SUFFIXES):
      continue
    with open(path, encoding="utf-8") as f:
      line = next((l for l in f if l.strip()), None)
    if line is None:
      continue
    record = _record(line, path, 1)
    if not isinstance(record.get(text_field), str):
      raise ValueError(f"{path}: first record has no string field {text_field!r} "
                       f"(fields: {sorted(record)}); pass --text_field")


def _record(line: str, path: str, number: int) -> dict:
  return fileio.json_object(line, f"{path}:{number}")


def file_documents(files: Sequence[str], text_field: str = "text") -> Iterator[str]:
  """The documents of `files` (module docstring), in order."""
  for path in files:
    if path.endswith(JSON_SUFFIXES):
      with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
          if not line.strip():
            continue
          text = _record(line, path, number).get(text_field)
          if not isinstance(text, str):
            raise ValueError(f"{path}:{number}: no string field {text_field!r}")
          yield text
    else:
      with open(path, encoding="utf-8") as f:
        yield f.read()


def every_nth(docs: Iterable[str], every: int, keep: bool) -> Iterator[str]:
  """Documents with index % every == every - 1 (keep=True) or all the others (keep=False)."""
  for i, doc in enumerate(docs):
    if (i % every == every - 1) == keep:
      yield doc


def _batches(docs: Iterable[str], batch_chars: int) -> Iterator[list[str]]:
  batch, chars = [], 0
  for doc in docs:
    batch.append(doc)
    chars += len(doc)
    if chars >= batch_chars:
      yield batch
      batch, chars = [], 0
  if batch:
    yield batch


def encode_documents(tok: hf_tokenizer.Tokenizer, docs: Iterable[str],
                     batch_chars: int = BATCH_CHARS) -> Iterator[np.ndarray]:
  """tok.encode over `docs`, one batch ahead in a thread (the tokenizer releases the GIL)."""
  with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
    pending = None
    for batch in _batches(docs, batch_chars):
      submitted = pool.submit(tok.encode, batch)
      if pending is not None:
        yield from pending.result()
      pending = submitted
    if pending is not None:
      yield from pending.result()


def _model_vocab_size(tokenizer_path: str) -> Optional[int]:
  """config.json's vocab_size in a model directory (the teacher's embedding rows), else None."""
  config = os.path.join(tokenizer_path, "config.json")
  if not os.path.isdir(tokenizer_path) or not os.path.isfile(config):
    return None
  value = fileio.read_json_object(config, "config.json").get("vocab_size")
  return int(value) if isinstance(value, int) else None


def _seqio_texts(task: str, split: str, text_field: str) -> Iterator[str]:
  from guide_jax.corpora import tasks  # pylint: disable=g-import-not-at-top (imports TF, seqio)

  provider = tasks.seqio.get_mixture_or_task(task)
  if not hasattr(provider, "source"):
    raise ValueError(f"{task} is a mixture; name one of its tasks ({[t.name for t in provider.tasks]})")
  ds = provider.source.get_dataset(split=split, shuffle=False, seed=0)
  for example in ds.as_numpy_iterator():
    value = example  # a source of plain lines (seqio.TextLineDataSource) yields strings
    if isinstance(example, dict):
      value = example.get(text_field)
      if value is None:
        raise ValueError(f"{task}'s source has no field {text_field!r} (fields: {sorted(example)})")
    yield value.decode("utf-8") if isinstance(value, bytes) else str(value)


def prepare_text(output_dir: str, tokenizer_path: str, *, inputs: Sequence[str] = (),
                 validation_inputs: Sequence[str] = (), corpus: Optional[str] = None,
                 task: Optional[str] = None, task_modules: Sequence[str] = (),
                 train_split: str = "train", validation_split: str = "validation",
                 cache_dir: str = "cache", text_field: str = "text", validation_every: int = 100,
                 eos_token: Optional[str] = None, vocab_size: Optional[int] = None,
                 max_train_tokens: Optional[int] = None, shard_tokens: Optional[int] = None) -> dict:
  """Tokenizes documents (module docstring) with the tokenizer at tokenizer_path; returns the manifest.

  Every check (one source of documents, inputs present, JSON field, tokenizer readable with an
  EOS, vocab_size >= the tokenizer's, output_dir absent) runs before any tokenization.
  """
  from guide_jax.data import prepare  # pylint: disable=g-import-not-at-top (circular at import time)

  if sum(map(bool, (inputs, corpus, task))) != 1:
    raise ValueError("give exactly one source of documents: --input, --corpus or --task")
  if validation_inputs and not inputs:
    raise ValueError("--validation_input goes with --input")
  if not isinstance(validation_every, int) or validation_every < 2:
    raise ValueError(f"validation_every must be an int >= 2, got {validation_every!r}")
  if prepare.intact_output(output_dir):  # a damaged one is removed and built again
    raise FileExistsError(f"output directory {output_dir} already exists")
  tok = hf_tokenizer.load(tokenizer_path, eos_token)
  model_vocab = vocab_size or _model_vocab_size(tokenizer_path) or tok.vocab_size
  if model_vocab < tok.vocab_size:
    raise ValueError(f"vocab_size {model_vocab} < the tokenizer's {tok.vocab_size} ids "
                     f"({tok.file}): its ids would not fit the teacher's embedding")

  source = {"kind": "text", "tokenizer": os.path.abspath(tokenizer_path), "text_field": text_field}
  if inputs:
    files = expand(inputs)
    val_files = expand(validation_inputs) if validation_inputs else []
    check_json_field(files + val_files, text_field)
    source.update(inputs=[os.path.abspath(p) for p in files])
    if val_files:
      source.update(validation_inputs=[os.path.abspath(p) for p in val_files])
      train_docs = lambda: file_documents(files, text_field)
      val_docs = lambda: file_documents(val_files, text_field)
    else:
      source.update(validation_every=validation_every)
      train_docs = lambda: every_nth(file_documents(files, text_field), validation_every, keep=False)
      val_docs = lambda: every_nth(file_documents(files, text_field), validation_every, keep=True)
    splits = ("train", "validation")
  elif corpus:
    from guide_jax.corpora import corpus as corpus_lib  # pylint: disable=g-import-not-at-top

    if corpus not in corpus_lib.CORPORA:
      raise ValueError(f"unknown corpus {corpus!r}; expected one of {corpus_lib.CORPORA}")
    built = corpus_lib.build_corpus(corpus, cache_dir)
    source.update(corpus=corpus, content_sha256=corpus_lib.content_hash(built["stats_data"]))
    train_docs = lambda: corpus_lib.read_documents(built["train"])
    val_docs = lambda: corpus_lib.read_documents(built["validation"])
    splits = ("train", "validation")
  else:
    prepare.import_task_modules(task_modules)
    source.update(task=task, task_modules=list(task_modules))
    train_docs = lambda: _seqio_texts(task, train_split, text_field)
    val_docs = lambda: _seqio_texts(task, validation_split, text_field)
    splits = (train_split, validation_split)

  train = encode_documents(tok, train_docs())
  if max_train_tokens is not None:
    source["max_train_tokens"] = max_train_tokens
    train = prepare._take_tokens(train, max_train_tokens)  # pylint: disable=protected-access
  with open(tok.file, "rb") as f:
    vocab_bytes = f.read()
  kwargs = {} if shard_tokens is None else {"shard_tokens": shard_tokens}
  return prepare.write_prepared(
      output_dir, source, vocab_bytes, model_vocab, tok.eos_id,
      {"train": (splits[0], train), "validation": (splits[1], encode_documents(tok, val_docs()))},
      vocab_file=os.path.basename(tok.file), extra={"tokenizer": tok.fingerprint}, **kwargs)
