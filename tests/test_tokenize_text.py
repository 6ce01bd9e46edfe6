"""guide_jax.data.hf_tokenizer + tokenize_text without transformers: a `tokenizers` BPE trained here
and the real SentencePiece models of MaxText's assets (Llama 2, Mistral v3)."""
import json
import os

import numpy as np
import pytest

from guide_jax.data import hf_tokenizer, prepare, prepared, tokenize_text

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ASSETS = next((p for p in (os.path.join(REPO, "..", "shared", "thirdparty", "maxtext", "src", "maxtext", "assets", "tokenizers"),
                           "/work/shared/thirdparty/maxtext/src/maxtext/assets/tokenizers") if os.path.isdir(p)), None)
DOCS = [f"Document {i}: the quick brown fox jumps over the lazy dog.\nLine two of {i}." for i in range(30)]


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory):
  """A byte-level BPE (Qwen-like: no BOS, <|endoftext|> ends documents) trained with `tokenizers`."""
  tokenizers = pytest.importorskip("tokenizers")
  tok = tokenizers.Tokenizer(tokenizers.models.BPE())
  tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = tokenizers.decoders.ByteLevel()
  trainer = tokenizers.trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                           initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(DOCS, trainer)
  path = tmp_path_factory.mktemp("bpe")
  tok.save(str(path / "tokenizer.json"))
  (path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))
  return str(path)


@pytest.fixture
def jsonl(tmp_path):
  path = tmp_path / "docs.jsonl"
  path.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS))
  return str(path)


def test_tokenizers_backend(bpe_dir, jsonl, tmp_path):
  tok = hf_tokenizer.load(bpe_dir)
  assert tok.kind == "tokenizers" and tok.bos_id is None and tok.eos_id == 0
  out = str(tmp_path / "p")
  manifest = tokenize_text.prepare_text(out, bpe_dir, inputs=[jsonl], validation_every=10)
  data = prepared.load_prepared(out, verify=True)
  assert manifest["dtype"] == "uint16" and manifest["vocab"]["file"] == "tokenizer.json"
  assert manifest["tokenizer"] == tok.fingerprint == hf_tokenizer.fingerprint(os.path.join(bpe_dir, "tokenizer.json"))
  import tokenizers
  raw = tokenizers.Tokenizer.from_file(os.path.join(bpe_dir, "tokenizer.json"))
  train = [d for i, d in enumerate(DOCS) if i % 10 != 9]
  want = np.concatenate([raw.encode(d).ids + [0] for d in train])
  np.testing.assert_array_equal(np.asarray(data.train), want)
  assert data.manifest["splits"]["validation"]["docs"] == 3


@pytest.mark.skipif(ASSETS is None, reason="no MaxText tokenizer assets")
@pytest.mark.parametrize("name,vocab", [("tokenizer.llama2", 32000), ("tokenizer.mistral-v3", 32768)])
def test_sentencepiece_backend(name, vocab, jsonl, tmp_path):
  import sentencepiece as spm
  path = os.path.join(ASSETS, name)
  sp = spm.SentencePieceProcessor(model_file=path)
  out = str(tmp_path / "p")
  manifest = tokenize_text.prepare_text(out, path, inputs=[jsonl], validation_inputs=[jsonl])
  data = prepared.load_prepared(out, verify=True)
  assert manifest["vocab_size"] == vocab and manifest["dtype"] == "uint16"
  assert manifest["tokenizer"]["bos_id"] == 1 and manifest["eos_id"] == 2
  want = np.concatenate([[1] + sp.encode(d) + [2] for d in DOCS])  # Llama 2 / Mistral: BOS doc EOS
  np.testing.assert_array_equal(np.asarray(data.train), want)
  np.testing.assert_array_equal(np.asarray(data.validation), want)


def test_int32_shards_and_vocab_size(bpe_dir, jsonl, tmp_path):
  manifest = tokenize_text.prepare_text(str(tmp_path / "p"), bpe_dir, inputs=[jsonl], vocab_size=70000,
                                        validation_every=10)
  assert manifest["dtype"] == "int32" and manifest["vocab_size"] == 70000
  with pytest.raises(ValueError, match="ids would not fit"):
    tokenize_text.prepare_text(str(tmp_path / "q"), bpe_dir, inputs=[jsonl], vocab_size=10)


def test_bad_input_refused_before_work(bpe_dir, jsonl, tmp_path):
  out = str(tmp_path / "never")
  with pytest.raises(ValueError, match="matches no file"):
    tokenize_text.prepare_text(out, bpe_dir, inputs=[str(tmp_path / "*.none")])
  with pytest.raises(ValueError, match="no string field 'body'"):
    tokenize_text.prepare_text(out, bpe_dir, inputs=[jsonl], text_field="body")
  with pytest.raises(hf_tokenizer.TokenizerError, match="does not exist"):
    tokenize_text.prepare_text(out, str(tmp_path / "nothing"), inputs=[jsonl])
  with pytest.raises(hf_tokenizer.TokenizerError, match="not in"):
    tokenize_text.prepare_text(out, bpe_dir, inputs=[jsonl], eos_token="<none>")
  with pytest.raises(ValueError, match="need --tokenizer"):
    prepare.run(None, None, [], out, "cache", 8000, "train", "validation", text={"inputs": [jsonl]})
  assert not os.path.exists(out)


def test_check_same(bpe_dir):
  fp = hf_tokenizer.fingerprint(bpe_dir)
  hf_tokenizer.check_same(fp, fp, "data", "teacher")
  with pytest.raises(hf_tokenizer.TokenizerError, match="another tokenizer"):
    hf_tokenizer.check_same({**fp, "sha256": "0" * 64}, fp, "data", "teacher")
  with pytest.raises(hf_tokenizer.TokenizerError, match="records no tokenizer"):
    hf_tokenizer.check_same(None, fp, "data", "teacher")


def test_text_files_one_document_each(bpe_dir, tmp_path):
  for i in range(4):
    (tmp_path / f"doc{i}.txt").write_text(DOCS[i])
  files = tokenize_text.expand([str(tmp_path / "*.txt")])
  assert list(tokenize_text.file_documents(files)) == DOCS[:4]


def test_case08_prepare_on_an_existing_output_verifies_and_rebuilds_what_is_bad(bpe_dir, jsonl, tmp_path,
                                                                               monkeypatch):
  """Issue 26 case 8. Before: the data errors said "re-run prepare", but prepare on the same output
  printed "prepared ..." (a built-in corpus) or "already exists" and left the bad shard as it was."""
  out = str(tmp_path / "p")
  again = lambda: prepare.run(None, None, [], out, "cache", 8000, "train", "validation", tokenizer=bpe_dir,
                              text={"inputs": [jsonl], "validation_every": 10})
  again()
  shard = os.path.join(out, prepared.read_manifest(out)["splits"]["train"]["shards"][0]["file"])
  good = open(shard, "rb").read()
  for damage in (good[:len(good) // 2], good[:-1] + bytes([good[-1] ^ 1])):  # truncated; one byte changed
    open(shard, "wb").write(damage)
    with pytest.raises(prepared.PreparedDataError, match="re-run prepare"):
      prepared.load_prepared(out, verify=True)
    again()  # rebuilt
    assert open(shard, "rb").read() == good
    prepared.load_prepared(out, verify=True)
  with pytest.raises(FileExistsError, match="already exists"):  # intact: nothing to do
    again()
  # A built-in corpus' directory is verified the same way, and a damaged one built again.
  os.remove(shard)
  rebuilt = []
  monkeypatch.setattr(prepare, "prepare_task", lambda name, output_dir, **kw: rebuilt.append(output_dir))
  import sys, types  # pylint: disable=g-import-not-at-top,multiple-imports
  from guide_jax import corpora
  fake_tasks = types.SimpleNamespace(register_lm_task=lambda *a: "task")  # no TF / seqio: nothing is built
  monkeypatch.setitem(sys.modules, "guide_jax.corpora.tasks", fake_tasks)
  monkeypatch.setattr(corpora, "tasks", fake_tasks, raising=False)
  monkeypatch.setattr("guide_jax.corpora.corpus.load_complete", lambda d: {"stats_data": {"splits": {}}})
  monkeypatch.setattr("guide_jax.corpora.corpus.content_hash", lambda stats: "0")
  prepare.prepare_corpus("shakespeare", str(tmp_path), 2048, output_dir=out)
  assert rebuilt == [out] and not os.path.exists(out)
  # A directory that is not prepared data is never removed.
  os.makedirs(out)
  open(os.path.join(out, "mine.txt"), "w").write("x")
  with pytest.raises(FileExistsError, match="not a prepared-data directory"):
    again()
  assert os.listdir(out) == ["mine.txt"]
