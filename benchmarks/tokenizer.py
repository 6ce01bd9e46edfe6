"""Tokenizer throughput of `python -m guide_jax.data.prepare --tokenizer=...` vs the libraries' own batch encode.

  python -m benchmarks.tokenizer [--input=FILE.jsonl] [--tokenizer=PATH ...] [--repeats=3] \
      [--json_out=reports/tokenizer.json]

Documents: --input (JSON lines, field "text"), default the built-in shakespeare corpus' train
split (GUIDE_JAX_CACHE or ./cache; written to a temporary .jsonl once). Tokenizers: each --tokenizer
(a model dir, tokenizer.json or SentencePiece .model), default Llama 3's (tokenizer.json converted by
transformers from MaxText's tokenizer_llama3.tiktoken), Llama 2's and Mistral v3's SentencePiece
models from MaxText's assets. Per tokenizer, median of --repeats (after one untimed warm-up):
  limit    the library's batch encode over all documents held in memory, ids not even read:
           tokenizers.Tokenizer.encode_batch_fast(docs) / SentencePieceProcessor.encode(docs,
           num_threads=cores): the most the tokenizer gives on this machine
  encode   tokenize_text.encode_documents over the file: JSON parsing, batching, BOS/EOS, int32
           arrays (what prepare does per document)
  prepare  tokenize_text.prepare_text end to end (train + validation): the tokenizer loaded and
           fingerprinted (load_s, a fixed cost), encode, shards written and hashed, manifest
Rates are tokens/s of the ids produced (BOS/EOS included for ours); ratio = ours / limit (goal >= 0.8).
"""
import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

if __package__ in (None, ""):  # `python benchmarks/tokenizer.py`
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ASSETS = "/work/shared/thirdparty/maxtext/src/maxtext/assets/tokenizers"


def _thirdparty_assets():
  for root in (os.path.join(REPO_ROOT, "..", "shared", "thirdparty"), "/work/shared/thirdparty"):
    path = os.path.join(root, "maxtext", "src", "maxtext", "assets", "tokenizers")
    if os.path.isdir(path):
      return path
  return ASSETS


def _median_time(fn, repeats):
  fn()  # warm-up (thread pools, page cache)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    result = fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times), result


def bench(tokenizer_path, jsonl, repeats, workdir):
  from guide_jax.data import hf_tokenizer, tokenize_text

  start = time.perf_counter()
  tok = hf_tokenizer.load(tokenizer_path)
  load_s = time.perf_counter() - start  # read + fingerprint: once per prepare, not per token
  docs = list(tokenize_text.file_documents([jsonl]))
  if tok.kind == "tokenizers":
    import tokenizers
    raw = tokenizers.Tokenizer.from_file(tok.file)
    limit_fn = lambda: len(raw.encode_batch_fast(docs, add_special_tokens=True))
  else:
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=tok.file)
    limit_fn = lambda: len(sp.encode(docs, out_type=int, num_threads=os.cpu_count()))
  limit_s, _ = _median_time(limit_fn, repeats)
  ours_fn = lambda: sum(a.size for a in tokenize_text.encode_documents(
      tok, tokenize_text.file_documents([jsonl])))
  encode_s, tokens = _median_time(ours_fn, repeats)
  counter = iter(range(10**6))

  def prepare_fn():
    out = os.path.join(workdir, f"prepared-{next(counter)}")
    manifest = tokenize_text.prepare_text(out, tokenizer_path, inputs=[jsonl])
    shutil.rmtree(out)
    return sum(manifest["splits"][split]["tokens"] for split in ("train", "validation"))

  prepare_s, prepared_tokens = _median_time(prepare_fn, repeats)
  limit_tokens = tokens - len(docs) * (1 if tok.bos_id is None else 0)  # the limit adds no EOS
  row = {"tokenizer": os.path.abspath(tokenizer_path), "kind": tok.kind, "vocab_size": tok.vocab_size,
         "docs": len(docs), "chars": sum(map(len, docs)), "tokens": int(tokens),
         "limit_tokens_per_s": limit_tokens / limit_s, "encode_tokens_per_s": tokens / encode_s,
         "prepare_tokens_per_s": prepared_tokens / prepare_s, "load_s": load_s}
  row["encode_ratio"] = row["encode_tokens_per_s"] / row["limit_tokens_per_s"]
  row["prepare_ratio"] = row["prepare_tokens_per_s"] / row["limit_tokens_per_s"]
  print(f"{os.path.basename(tokenizer_path.rstrip('/'))}: {tok.kind}, {tokens} tokens: limit "
        f"{row['limit_tokens_per_s'] / 1e6:.2f} M/s, encode {row['encode_tokens_per_s'] / 1e6:.2f} M/s "
        f"({row['encode_ratio']:.2f}x), prepare {row['prepare_tokens_per_s'] / 1e6:.2f} M/s "
        f"({row['prepare_ratio']:.2f}x; includes loading the tokenizer, {load_s:.2f} s)", flush=True)
  return row


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--input", default=None)
  parser.add_argument("--tokenizer", action="append", default=None)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--json_out", default=None)
  args = parser.parse_args()
  from guide_jax.corpora import corpus
  from guide_jax.data import hf_tokenizer

  with tempfile.TemporaryDirectory() as workdir:
    jsonl = args.input
    if jsonl is None:
      cache = os.environ.get("GUIDE_JAX_CACHE", "cache")
      built = corpus.build_corpus("shakespeare", cache)
      jsonl = os.path.join(workdir, "shakespeare-train.jsonl")
      with open(jsonl, "w", encoding="utf-8") as f:
        for doc in corpus.read_documents(built["train"]):
          f.write(json.dumps({"text": doc}) + "\n")
    tokenizers_ = args.tokenizer
    if not tokenizers_:
      assets = _thirdparty_assets()
      llama3 = hf_tokenizer.llama3_from_tiktoken(os.path.join(assets, "tokenizer_llama3.tiktoken"),
                                                 os.path.join(workdir, "llama3"))
      tokenizers_ = [llama3, os.path.join(assets, "tokenizer.llama2"),
                     os.path.join(assets, "tokenizer.mistral-v3")]
    rows = [bench(path, jsonl, args.repeats, workdir) for path in tokenizers_]
  result = {"cpu_count": os.cpu_count(), "input": args.input or "shakespeare train split",
            "repeats": args.repeats, "rows": rows}
  if args.json_out:
    from guide_jax.data import atomic
    atomic.atomic_write_json(args.json_out, result)


if __name__ == "__main__":
  main()
