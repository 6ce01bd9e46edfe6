"""Hugging Face end to end (the hf tier, tests/hf_tier.sh): README's section run as written.

A tiny random Llama 3 teacher (GQA, llama3 RoPE, tied, the real Llama 3 tokenizer converted by
transformers from MaxText's tokenizer_llama3.tiktoken) saved by save_pretrained; README's
"From a Hugging Face teacher and some text" block runs in bash: prepare with the teacher's
tokenizer, convert (GUIDE, --student overrides), a few training steps, export --format=hf,
from_pretrained + generate. Then: transformers' float32 logits of the export equal guide_jax's
of the trained run within 1e-5; the prepared ids are transformers' tokenization of each document
+ EOS; data made with another tokenizer (same vocabulary size) is refused by train.
Skipped without torch/transformers, or without ../shared/thirdparty's MaxText tokenizer assets.
"""
import json
import math
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from guide_jax import checkpoints, hf_export, model  # noqa: E402
from guide_jax.config import ModelConfig  # noqa: E402
from guide_jax.data import hf_tokenizer, prepared, tokenize_text  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_ASSET_ROOTS = [os.path.join(REPO, "..", "shared", "thirdparty"), os.path.join(REPO, "..", "..", "shared", "thirdparty"),
                "/work/shared/thirdparty"]
ASSETS = next((os.path.join(r, "maxtext", "src", "maxtext", "assets", "tokenizers") for r in _ASSET_ROOTS
               if os.path.isdir(os.path.join(r, "maxtext", "src", "maxtext", "assets", "tokenizers"))), None)
needs_assets = pytest.mark.skipif(ASSETS is None, reason="no shared/thirdparty MaxText tokenizer assets")
RTOL = 1e-5


def readme_block() -> str:
  """The bash between README's hf-e2e markers (the fences stripped)."""
  with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
    text = f.read()
  m = re.search(r"<!-- hf-e2e:begin -->\n```bash\n(.*?)```\n<!-- hf-e2e:end -->", text, re.S)
  assert m, "README.md has no hf-e2e block"
  return m.group(1)


def documents(n=220):
  """n short English documents: paragraphs of this repository's own Markdown (no download)."""
  paragraphs = []
  for name in ("README.md", "WORKSPACE.md", os.path.join("reports", "data.md")):
    path = os.path.join(REPO, name)
    if os.path.isfile(path):
      with open(path, encoding="utf-8") as f:
        paragraphs += [p.strip() for p in f.read().split("\n\n") if len(p.strip()) > 40]
  assert paragraphs
  return [paragraphs[i % len(paragraphs)] + f"\n\nDocument {i}." for i in range(n)]


def randomize(hf_model, seed=0):
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in hf_model.named_parameters():
      noise = torch.randn(p.shape, generator=gen)
      if name.endswith("norm.weight"):
        p.copy_(1.0 + 0.1 * noise)
      elif "embed_tokens" in name:
        p.copy_(noise * 0.5)
      else:
        p.copy_(noise / math.sqrt(p.shape[-1]))
  return hf_model


@pytest.fixture(scope="module")
def llama3_tokenizer(tmp_path_factory):
  if ASSETS is None:
    pytest.skip("no MaxText tokenizer assets")
  return hf_tokenizer.llama3_from_tiktoken(os.path.join(ASSETS, "tokenizer_llama3.tiktoken"),
                                           str(tmp_path_factory.mktemp("llama3_tokenizer")))


@pytest.fixture(scope="module")
def llama3_teacher(tmp_path_factory, llama3_tokenizer):
  """Llama 3 shape in miniature: GQA (4 heads, 2 kv), llama3 RoPE, tied, vocabulary 128256."""
  config = transformers.LlamaConfig(
      vocab_size=128256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=True,
      max_position_embeddings=256, bos_token_id=128000, eos_token_id=128001,
      rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0,
                           high_freq_factor=4.0, original_max_position_embeddings=64))
  path = str(tmp_path_factory.mktemp("llama3_teacher"))
  randomize(transformers.AutoModelForCausalLM.from_config(config)).save_pretrained(path)
  transformers.AutoTokenizer.from_pretrained(llama3_tokenizer).save_pretrained(path)
  return path


@pytest.fixture(scope="module")
def text(tmp_path_factory):
  path = tmp_path_factory.mktemp("text") / "docs.jsonl"
  with open(path, "w", encoding="utf-8") as f:
    for doc in documents():
      f.write(json.dumps({"text": doc}) + "\n")
  return str(path)


def run_bash(script, env, cwd=REPO):
  env = {**os.environ, **env, "PYTHONPATH": REPO,
         "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
  return subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=1200)


def _run_readme(work, teacher, text):
  env = {"TEACHER": teacher, "TEXT": text, "WORK": work, "STUDENT": "d_model=32 n_layers=1",
         "STEPS": "3", "BATCH_SIZE": "8", "SEQ_LEN": "16"}  # 8: conftest's 8 CPU devices
  proc = run_bash(readme_block(), env)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
  return work, proc.stdout


@pytest.fixture(scope="module")
def readme_run(tmp_path_factory, llama3_teacher, text):
  return _run_readme(str(tmp_path_factory.mktemp("work")), llama3_teacher, text)


@pytest.fixture(scope="module")
def qwen3_teacher(tmp_path_factory):
  """Qwen 3 in miniature (GQA, q/k norms, untied) with its own byte-level BPE tokenizer."""
  path = str(tmp_path_factory.mktemp("qwen3_teacher"))
  tok = _bpe_tokenizer_dir(path)
  vocab = transformers.AutoTokenizer.from_pretrained(tok).vocab_size
  config = transformers.Qwen3Config(vocab_size=vocab + 16, hidden_size=64, intermediate_size=96,
                                    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                    head_dim=16, tie_word_embeddings=False, eos_token_id=0)
  randomize(transformers.AutoModelForCausalLM.from_config(config)).save_pretrained(path)
  return path


@pytest.fixture(scope="module")
def gemma2_teacher(tmp_path_factory):
  """Gemma 2 in miniature (GQA, sliding/global layers, soft-caps, post-norms, tied) with a
  SentencePiece tokenizer (Llama 2's, converted by transformers) that adds BOS."""
  if ASSETS is None:
    pytest.skip("no MaxText tokenizer assets")
  path = str(tmp_path_factory.mktemp("gemma2_teacher"))
  src = str(tmp_path_factory.mktemp("sp"))
  import shutil
  shutil.copy(os.path.join(ASSETS, "tokenizer.llama2"), os.path.join(src, "tokenizer.model"))
  with open(os.path.join(src, "tokenizer_config.json"), "w") as f:
    json.dump({"tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "bos_token": "<s>",
               "eos_token": "</s>", "unk_token": "<unk>"}, f)
  transformers.AutoTokenizer.from_pretrained(src).save_pretrained(path)
  config = transformers.Gemma2Config(vocab_size=32000, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                     query_pre_attn_scalar=16, sliding_window=8, bos_token_id=1, eos_token_id=2,
                                     pad_token_id=0)
  model_ = transformers.AutoModelForCausalLM.from_config(config)
  gen = torch.Generator().manual_seed(0)
  with torch.no_grad():  # Gemma stores norm weights as scale - 1
    for name, p in model_.named_parameters():
      noise = torch.randn(p.shape, generator=gen)
      p.copy_(noise * 0.1 if name.endswith("norm.weight") else noise / math.sqrt(p.shape[-1]))
  model_.save_pretrained(path)
  return path


def _check_export(work, teacher):
  """The exported student: the teacher's family and files; transformers' logits == guide_jax's."""
  data = prepared.load_prepared(os.path.join(work, "data"), verify=True)
  assert data.manifest["tokenizer"] == hf_tokenizer.fingerprint(teacher)
  out = os.path.join(work, "student_hf")
  hf_config = json.load(open(os.path.join(out, "config.json")))
  teacher_config = json.load(open(os.path.join(teacher, "config.json")))
  assert hf_config["model_type"] == teacher_config["model_type"]
  assert (hf_config["hidden_size"], hf_config["num_hidden_layers"]) == (32, 1)
  for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
    assert open(os.path.join(out, name), "rb").read() == open(os.path.join(teacher, name), "rb").read()
  V = teacher_config["vocab_size"]
  tokens = np.random.default_rng(0).integers(0, V, size=(2, 24))
  hf_model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
  with torch.no_grad():
    want = hf_model(torch.as_tensor(tokens)).logits.numpy()
  params, config = checkpoints.load_params(os.path.join(work, "student"))
  assert checkpoints.read_config(os.path.join(work, "student"))[1] == 3  # the trained step
  got = np.asarray(model.apply(config, params, tokens.astype(np.int32)))
  assert np.abs(want).max() > 1.0
  assert np.abs(got - want).max() / np.abs(want).max() <= RTOL
  np.testing.assert_array_equal(got.argmax(-1), want.argmax(-1))
  return data, hf_config


def test_readme_section_llama3(readme_run, llama3_teacher):
  work, stdout = readme_run
  assert stdout.strip().splitlines()[-1].startswith("<|begin_of_text|>The meaning of life is")
  data, hf_config = _check_export(work, llama3_teacher)
  assert data.manifest["dtype"] == "int32" and data.vocab_size == 128256
  assert hf_config["rope_parameters"]["rope_type"] == "llama3"
  assert hf_config["num_key_value_heads"] == 1  # the teacher's 2 query heads per kv head kept


@pytest.mark.parametrize("family", ["qwen3", "gemma2"])
def test_readme_section_other_families(family, request, text, tmp_path):
  teacher = request.getfixturevalue(f"{family}_teacher")
  work, stdout = _run_readme(str(tmp_path / "work"), teacher, text)
  assert "The meaning of life is" in stdout  # generate()d text, decoded by its tokenizer
  data, hf_config = _check_export(work, teacher)
  if family == "gemma2":
    assert hf_config["layer_types"] == ["sliding_attention"] and hf_config["final_logit_softcapping"] == 30.0
    assert data.manifest["tokenizer"]["bos_id"] == 1
  else:
    assert data.manifest["tokenizer"]["bos_id"] is None and hf_config["tie_word_embeddings"] is False


def test_prepared_ids_are_transformers_tokenization(readme_run, llama3_teacher, text):
  work, _ = readme_run
  data = prepared.load_prepared(os.path.join(work, "data"))
  tok = transformers.AutoTokenizer.from_pretrained(llama3_teacher)
  docs = list(tokenize_text.file_documents([text]))
  train = [d for i, d in enumerate(docs) if i % 100 != 99]
  want = np.concatenate([tok(d).input_ids + [tok.eos_token_id] for d in train])
  assert want[0] == 128000
  np.testing.assert_array_equal(np.asarray(data.train), want)


def test_train_refuses_data_of_another_tokenizer(readme_run, text, tmp_path):
  """Mistral v3's SentencePiece ids padded to Llama 3's vocabulary size: the sizes agree, the
  fingerprints do not, and train refuses before writing anything."""
  work, _ = readme_run
  other = str(tmp_path / "other")
  tokenize_text.prepare_text(other, os.path.join(ASSETS, "tokenizer.mistral-v3"), inputs=[text],
                             vocab_size=128256)
  model_dir = str(tmp_path / "refused")
  proc = run_bash(
      f"python -m guide_jax.train --gin_file=gin/runs/pretrain.gin --gin_file=gin/init_params.gin --gin_file={work}/init/model.gin "
      f"--gin.MODEL_DIR=\"'{model_dir}'\" --gin.DATA_DIR=\"'{other}'\" "
      f"--gin.INIT_PARAMS_DIR=\"'{work}/init'\" --gin.TRAIN_STEPS=1", {})
  assert proc.returncode != 0
  assert "tokenized by another tokenizer" in proc.stderr, proc.stderr[-3000:]
  assert not os.path.exists(model_dir)


def test_convert_format_hf_sharded_bf16(llama3_teacher, tmp_path):
  """convert --format=hf: the step-0 student in bf16, sharded with an index, loads and generates;
  its logits are the guide_jax student's to bf16 precision."""
  out = str(tmp_path / "student0_hf")
  env = {"TEACHER": llama3_teacher, "OUT": out}
  proc = run_bash('python -m guide_jax.convert --teacher_dir="$TEACHER" --teacher_format=hf '
                  '--student_params=5e6 --format=hf --output_dir="$OUT"', env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "student: d_model=" in proc.stdout
  files = sorted(os.listdir(out))
  assert "model.safetensors" in files or "model.safetensors.index.json" in files
  hf_model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
  assert next(hf_model.parameters()).dtype == torch.bfloat16
  tok = transformers.AutoTokenizer.from_pretrained(out)
  ids = tok("Hello", return_tensors="pt").input_ids
  assert hf_model.generate(ids, max_new_tokens=3, do_sample=False).shape == (1, ids.shape[1] + 3)
  info = json.load(open(os.path.join(out, "guide_info.json")))
  assert info["tokenizer"] == hf_tokenizer.fingerprint(llama3_teacher)


def test_write_hf_sharded_index_and_refusals(llama3_teacher, tmp_path):
  """Sharding by huggingface_hub's convention; unrepresentable students and existing outputs are
  refused before anything is written."""
  config = ModelConfig(vocab_size=128256, d_model=16, n_layers=2, n_heads=2, head_dim=8, mlp_dim=32,
                       mlp_activation="silu", tie_embeddings=False)
  params = model.init_params(config, jax.random.PRNGKey(0))
  out = str(tmp_path / "sharded")
  hf_export.write_hf(params, config, llama3_teacher, out, dtype="float32", max_shard_size="2MB")
  index = json.load(open(os.path.join(out, "model.safetensors.index.json")))
  assert len(set(index["weight_map"].values())) > 1 and "lm_head.weight" in index["weight_map"]
  tokens = np.random.default_rng(1).integers(0, 128256, size=(1, 16))
  hf_model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
  with torch.no_grad():
    want = hf_model(torch.as_tensor(tokens)).logits.numpy()
  got = np.asarray(model.apply(config, params, tokens.astype(np.int32)))
  assert np.abs(got - want).max() / np.abs(want).max() <= RTOL
  with pytest.raises(ValueError, match="already exists"):
    hf_export.write_hf(params, config, llama3_teacher, out)
  relpos = config.replace(position_embedding="relpos")
  with pytest.raises(ValueError, match="cannot represent"):
    hf_export.write_hf(params, relpos, llama3_teacher, str(tmp_path / "never"))
  assert not os.path.exists(tmp_path / "never")
  assert sorted(os.listdir(tmp_path)) == ["sharded"]  # no temporary directory left behind


# ----------------------------------------------------------------------------- every family's writer
def _bpe_tokenizer_dir(path):
  """A small byte-level BPE saved by transformers (the family templates need some tokenizer)."""
  import tokenizers
  tok = tokenizers.Tokenizer(tokenizers.models.BPE())
  tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = tokenizers.decoders.ByteLevel()
  trainer = tokenizers.trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                           initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(documents(50), trainer)
  transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>").save_pretrained(path)
  return path


V_SMALL = 320
_HF_SMALL = dict(vocab_size=V_SMALL, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=16)
_OURS_SMALL = dict(vocab_size=V_SMALL, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, mlp_dim=48)
# (family config, our student config): each of our conventions the writer must fold into the family's.
WRITER_CASES = {
    "llama-t5x-tied": (lambda: transformers.LlamaConfig(**_HF_SMALL), dict(mlp_activation="silu")),
    "llama-hf-untied-bias": (lambda: transformers.LlamaConfig(**_HF_SMALL),
                             dict(mlp_activation="silu", embedding_style="hf", tie_embeddings=False,
                                  query_pre_attn_scalar=16.0, qkv_bias=True, out_bias=True,
                                  rope_scaling="llama3", rope_scaling_factor=8.0, rope_original_max_positions=16)),
    "qwen3": (lambda: transformers.Qwen3Config(**_HF_SMALL),
              dict(mlp_activation="silu", embedding_style="hf", qk_norm=True, query_pre_attn_scalar=16.0,
                   rope_theta=1e6)),
    "qwen3-other-scale": (lambda: transformers.Qwen3Config(**_HF_SMALL),
                          dict(mlp_activation="silu", embedding_style="hf", qk_norm=True, query_pre_attn_scalar=9.0)),
    "gemma2": (lambda: transformers.Gemma2Config(**_HF_SMALL, sliding_window=8, query_pre_attn_scalar=24),
               dict(mlp_activation="gelu", embedding_style="gemma", norm_offset=1.0, post_norms=True,
                    attn_logit_softcap=50.0, final_logit_softcap=30.0, layer_pattern="LG", sliding_window=8,
                    query_pre_attn_scalar=24.0)),
    "gemma2-offset0-folded": (lambda: transformers.Gemma2Config(**_HF_SMALL, sliding_window=8),
                              dict(mlp_activation="gelu", embedding_style="gemma", post_norms=True,
                                   layer_pattern="LG", sliding_window=8, final_logit_softcap=30.0)),
}


@pytest.mark.parametrize("case", sorted(WRITER_CASES))
def test_writer_matches_transformers(case, tmp_path):
  """A random guide_jax model with the family's options, written by hf_export.write_hf into the
  family of a transformers-saved template: transformers' float32 logits == ours (1e-5)."""
  hf_config_fn, ours = WRITER_CASES[case]
  template = str(tmp_path / "template")
  hf_model = transformers.AutoModelForCausalLM.from_config(hf_config_fn())
  hf_model.save_pretrained(template)
  _bpe_tokenizer_dir(template)
  config = ModelConfig(**_OURS_SMALL, **ours)
  rng = np.random.default_rng(0)
  params = jax.tree_util.tree_map(lambda x: np.asarray(x) + rng.normal(0, 0.3, x.shape).astype(np.float32),
                                  model.init_params(config, jax.random.PRNGKey(0)))
  out = hf_export.write_hf(params, config, template, str(tmp_path / "out"), dtype="float32")
  tokens = rng.integers(0, V_SMALL, size=(2, 24))  # longer than the sliding window
  loaded = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
  assert type(loaded) is type(hf_model)
  with torch.no_grad():
    want = loaded(torch.as_tensor(tokens)).logits.numpy()
  got = np.asarray(model.apply(config, params, tokens.astype(np.int32)))
  assert np.abs(want).max() > 1.0
  assert np.abs(got - want).max() / np.abs(want).max() <= RTOL, np.abs(got - want).max() / np.abs(want).max()


@pytest.mark.parametrize("family,ours,message", [
    ("llama", dict(qk_norm=True, query_pre_attn_scalar=16.0), "qk_norm"),
    ("qwen3", dict(), "qk_norm=False"),
    ("gemma2", dict(embedding_style="gemma", norm_offset=1.0), "post_norms=False"),
    ("llama", dict(layer_pattern="LG", sliding_window=8), "layer_pattern"),
    ("llama", dict(position_embedding="relpos"), "relpos"),
    ("mistral", dict(), "supported families"),
])
def test_unrepresentable_refused(family, ours, message):
  config = ModelConfig(**_OURS_SMALL, **ours)
  with pytest.raises(ValueError, match=message):
    hf_export.check_representable(config, family)
