"""Tests for guide_jax.importers: tiny random HF LLaMA / Gemma safetensors checkpoints on disk."""
import json
import math
import os

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file

from guide_jax import importers
from guide_jax.config import ModelConfig

D, H, L, F, V, N, THETA = 16, 4, 8, 24, 32, 2, 500.0


def hf_config(model_type="llama", kv_heads=H, tied=False, **extra):
  cfg = {"model_type": model_type, "vocab_size": V, "hidden_size": D, "intermediate_size": F,
         "num_hidden_layers": N, "num_attention_heads": H, "num_key_value_heads": kv_heads,
         "head_dim": L, "rms_norm_eps": 1e-5, "rope_theta": THETA, "tie_word_embeddings": tied,
         "hidden_act": "silu" if model_type == "llama" else "gelu"}
  if model_type == "gemma":
    cfg["hidden_activation"] = "gelu_pytorch_tanh"
  cfg.update(extra)
  return cfg


def hf_tensors(cfg, seed=0):
  """Random HF-layout tensors ([out, in] Linear weights) for `cfg`."""
  rng = np.random.default_rng(seed)
  d, h, k, l, f = (cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"],
                   cfg["head_dim"], cfg["intermediate_size"])
  lin = lambda o, i: (rng.normal(size=(o, i)) / math.sqrt(i)).astype(np.float32)
  norm = lambda: (rng.normal(size=(d,)) * 0.1 + (0.0 if cfg["model_type"] == "gemma" else 1.0)
                  ).astype(np.float32)
  t = {"model.embed_tokens.weight": rng.normal(size=(V, d)).astype(np.float32) * 0.5,
       "model.norm.weight": norm()}
  for i in range(cfg["num_hidden_layers"]):
    p = f"model.layers.{i}."
    t.update({p + "input_layernorm.weight": norm(), p + "post_attention_layernorm.weight": norm(),
              p + "self_attn.q_proj.weight": lin(h * l, d), p + "self_attn.k_proj.weight": lin(k * l, d),
              p + "self_attn.v_proj.weight": lin(k * l, d), p + "self_attn.o_proj.weight": lin(d, h * l),
              p + "mlp.gate_proj.weight": lin(f, d), p + "mlp.up_proj.weight": lin(f, d),
              p + "mlp.down_proj.weight": lin(d, f)})
  if not cfg["tie_word_embeddings"]:
    t["lm_head.weight"] = lin(V, d)
  return t


def write_checkpoint(path, cfg, tensors, shards=1):
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(cfg, f)
  if shards == 1:
    save_file(tensors, os.path.join(path, "model.safetensors"))
    return path
  names = sorted(tensors)
  weight_map = {}
  for s in range(shards):
    file = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
    part = names[s::shards]
    save_file({name: tensors[name] for name in part}, os.path.join(path, file))
    weight_map.update({name: file for name in part})
  with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
    json.dump({"metadata": {"total_size": 0}, "weight_map": weight_map}, f)
  return path


def checkpoint(tmp_path, name="ckpt", seed=0, shards=1, **cfg_kw):
  cfg = hf_config(**cfg_kw)
  tensors = hf_tensors(cfg, seed)
  return write_checkpoint(str(tmp_path / name), cfg, tensors, shards), cfg, tensors


def random_params(config, seed=0):
  """Random float32 numpy params with the model's tree (shapes only from the model, no init)."""
  from guide_jax import model
  import jax
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: (rng.normal(size=s.shape) / math.sqrt(s.shape[0])).astype(np.float32)
                      if len(s.shape) > 1 else (1 + 0.1 * rng.normal(size=s.shape)).astype(np.float32),
                      model.param_shapes(config))


def flatten(tree, prefix=""):
  if isinstance(tree, dict):
    out = {}
    for key, value in tree.items():
      out.update(flatten(value, f"{prefix}/{key}" if prefix else key))
    return out
  return {prefix: tree}


# ----------------------------------------------------------------------------- structure/values
def test_llama_tree_shapes_and_values(tmp_path):
  from guide_jax import model
  path, cfg, t = checkpoint(tmp_path)
  params, config = importers.import_llama(path)
  assert isinstance(config, ModelConfig)
  assert config == ModelConfig(vocab_size=V, d_model=D, n_layers=N, n_heads=H, head_dim=L,
                               mlp_dim=F, tie_embeddings=False, norm_eps=1e-5, rope_theta=THETA,
                               mlp_activation="silu")
  expected = {k: v.shape for k, v in flatten(model.param_shapes(config)).items()}
  got = flatten(params)
  assert {k: v.shape for k, v in got.items()} == expected
  assert all(v.dtype == np.float32 for v in got.values())
  dec, lay = params["decoder"], params["decoder"]["layers_1"]
  p = "model.layers.1."
  np.testing.assert_array_equal(dec["token_embedder"]["embedding"], t["model.embed_tokens.weight"])
  np.testing.assert_allclose(lay["self_attention"]["query"]["kernel"],
                             t[p + "self_attn.q_proj.weight"].T.reshape(D, H, L) / math.sqrt(L), rtol=1e-6)
  np.testing.assert_array_equal(lay["self_attention"]["key"]["kernel"],
                                t[p + "self_attn.k_proj.weight"].T.reshape(D, H, L))
  np.testing.assert_array_equal(lay["self_attention"]["value"]["kernel"],
                                t[p + "self_attn.v_proj.weight"].T.reshape(D, H, L))
  np.testing.assert_array_equal(lay["self_attention"]["out"]["kernel"],
                                t[p + "self_attn.o_proj.weight"].T.reshape(H, L, D))
  np.testing.assert_array_equal(lay["mlp"]["wi_0"]["kernel"], t[p + "mlp.gate_proj.weight"].T)
  np.testing.assert_array_equal(lay["mlp"]["wi_1"]["kernel"], t[p + "mlp.up_proj.weight"].T)
  np.testing.assert_array_equal(lay["mlp"]["wo"]["kernel"], t[p + "mlp.down_proj.weight"].T)
  np.testing.assert_array_equal(lay["pre_self_attention_layer_norm"]["scale"], t[p + "input_layernorm.weight"])
  np.testing.assert_array_equal(lay["pre_mlp_layer_norm"]["scale"], t[p + "post_attention_layernorm.weight"])
  np.testing.assert_array_equal(dec["decoder_norm"]["scale"], t["model.norm.weight"])
  np.testing.assert_array_equal(dec["logits_dense"]["kernel"], t["lm_head.weight"].T)


def test_gqa_repeats_kv_heads_consecutively(tmp_path):
  path, _, t = checkpoint(tmp_path, kv_heads=2)
  params, config = importers.import_llama(path)
  assert config.n_heads == H
  key = params["decoder"]["layers_0"]["self_attention"]["key"]["kernel"]
  src = t["model.layers.0.self_attn.k_proj.weight"].T.reshape(D, 2, L)
  assert key.shape == (D, H, L)
  for i in range(H):  # HF repeat_kv: query head i reads kv head i // (H / kv_heads)
    np.testing.assert_array_equal(key[:, i], src[:, i // 2])


def test_sharded_bf16_checkpoint_and_path_forms(tmp_path):
  cfg = hf_config()
  t32 = hf_tensors(cfg)
  t16 = {k: v.astype(ml_dtypes.bfloat16) for k, v in t32.items()}
  sharded = write_checkpoint(str(tmp_path / "sharded"), cfg, t16, shards=3)
  single = write_checkpoint(str(tmp_path / "single"), cfg,
                            {k: v.astype(np.float32) for k, v in t16.items()})
  assert len([f for f in os.listdir(sharded) if f.endswith(".safetensors")]) == 3
  ref = flatten(importers.import_llama(single)[0])
  for path in (sharded, os.path.join(sharded, "model.safetensors.index.json")):
    got = flatten(importers.import_llama(path)[0])
    assert got.keys() == ref.keys()
    for k in ref:
      np.testing.assert_array_equal(got[k], ref[k])
  got = flatten(importers.import_llama(os.path.join(single, "model.safetensors"))[0])
  np.testing.assert_array_equal(got["decoder/layers_0/mlp/wo/kernel"],
                                ref["decoder/layers_0/mlp/wo/kernel"])


def test_tied_llama_rescale_and_untie(tmp_path):
  path, _, t = checkpoint(tmp_path, tied=True)
  e = t["model.embed_tokens.weight"]
  params, config = importers.import_llama(path)
  assert config.tie_embeddings and "logits_dense" not in params["decoder"]
  assert config.norm_eps == pytest.approx(1e-5 * D)
  np.testing.assert_allclose(params["decoder"]["token_embedder"]["embedding"], e * math.sqrt(D), rtol=1e-6)
  np.testing.assert_allclose(params["decoder"]["layers_0"]["mlp"]["wo"]["kernel"],
                             t["model.layers.0.mlp.down_proj.weight"].T * math.sqrt(D), rtol=1e-6)
  params, config = importers.import_llama(path, tied_mode="untie")
  assert not config.tie_embeddings and config.norm_eps == 1e-5
  np.testing.assert_array_equal(params["decoder"]["token_embedder"]["embedding"], e)
  np.testing.assert_array_equal(params["decoder"]["logits_dense"]["kernel"], e.T)


def test_gemma_conventions(tmp_path):
  path, _, t = checkpoint(tmp_path, model_type="gemma", tied=True, kv_heads=1)
  params, config = importers.import_gemma(path)
  assert config.mlp_activation == "gelu" and config.tie_embeddings and config.norm_eps == 1e-5
  dec = params["decoder"]
  np.testing.assert_allclose(dec["token_embedder"]["embedding"],
                             t["model.embed_tokens.weight"] * math.sqrt(D), rtol=1e-6)
  np.testing.assert_allclose(dec["decoder_norm"]["scale"], 1.0 + t["model.norm.weight"])
  np.testing.assert_allclose(dec["layers_0"]["pre_mlp_layer_norm"]["scale"],
                             1.0 + t["model.layers.0.post_attention_layernorm.weight"])
  assert dec["layers_0"]["self_attention"]["value"]["kernel"].shape == (D, H, L)
  _, config2 = importers.import_hf(path)
  assert config2 == config


def test_tie_word_embeddings_defaults_follow_transformers(tmp_path):
  cfg = hf_config(tied=False)
  del cfg["tie_word_embeddings"]  # LlamaConfig default: untied
  path = write_checkpoint(str(tmp_path / "llama"), cfg, hf_tensors(hf_config(tied=False)))
  assert not importers.import_llama(path)[1].tie_embeddings
  cfg = hf_config(model_type="gemma", tied=True)
  del cfg["tie_word_embeddings"]  # GemmaConfig default: tied
  path = write_checkpoint(str(tmp_path / "gemma"), cfg, hf_tensors(hf_config(model_type="gemma", tied=True)))
  assert importers.import_gemma(path)[1].tie_embeddings


# ----------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("tied", [False, True])
def test_export_import_round_trip(tmp_path, tied):
  config = ModelConfig(vocab_size=V, d_model=D, n_layers=N, n_heads=H, head_dim=L, mlp_dim=F,
                       tie_embeddings=tied, norm_eps=1e-6, rope_theta=THETA, mlp_activation="silu")
  params = random_params(config)
  out = importers.export_llama(params, config, str(tmp_path / "out"))
  assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]  # no temp files left
  hf = json.load(open(os.path.join(out, "config.json")))
  assert hf["tie_word_embeddings"] == tied and hf["num_key_value_heads"] == H
  params2, config2 = importers.import_llama(out)
  assert config2.replace(norm_eps=1e-6) == config and config2.norm_eps == pytest.approx(1e-6)
  a, b = flatten(params), flatten(params2)
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_allclose(b[k], a[k], rtol=1e-6, atol=1e-7, err_msg=k)


def test_import_export_import_gqa(tmp_path):
  path, _, _ = checkpoint(tmp_path, kv_heads=2)
  params, config = importers.import_llama(path)
  out = importers.export_llama(params, config, str(tmp_path / "out"))
  importers.export_llama(params, config, out)  # overwriting is fine
  params2, config2 = importers.import_llama(out)
  assert config2 == config
  a, b = flatten(params), flatten(params2)
  for k in a:
    np.testing.assert_allclose(b[k], a[k], rtol=1e-6, err_msg=k)


# ----------------------------------------------------------------------------- errors
def _expect(match, fn, *args, **kw):
  with pytest.raises(ValueError, match=match):
    fn(*args, **kw)


def test_errors(tmp_path):
  _expect("checkpoint not found", importers.import_llama, str(tmp_path / "nope"))
  empty = tmp_path / "empty"
  empty.mkdir()
  _expect("no model.safetensors", importers.import_llama, str(empty))

  cfg = hf_config()
  t = hf_tensors(cfg)
  no_cfg = tmp_path / "no_cfg"
  no_cfg.mkdir()
  save_file(t, str(no_cfg / "model.safetensors"))
  _expect("missing config.json", importers.import_llama, str(no_cfg))

  def ckpt(name, cfg=cfg, tensors=t, shards=1):
    return write_checkpoint(str(tmp_path / name), cfg, tensors, shards)

  missing = dict(t)
  del missing["model.layers.1.mlp.up_proj.weight"]
  _expect(r"missing tensor model\.layers\.1\.mlp\.up_proj\.weight", importers.import_llama,
          ckpt("missing", tensors=missing))
  _expect(r"missing tensor lm_head\.weight", importers.import_llama,
          ckpt("no_head", tensors={k: v for k, v in t.items() if k != "lm_head.weight"}))
  _expect(r"unexpected tensor model\.layers\.0\.self_attn\.q_proj\.bias", importers.import_llama,
          ckpt("bias", tensors={**t, "model.layers.0.self_attn.q_proj.bias": np.zeros(H * L, np.float32)}))
  _expect(r"q_proj\.weight has shape", importers.import_llama,
          ckpt("shape", cfg=hf_config(head_dim=4)))
  _expect("unsupported model_type 'mistral'", importers.import_llama,
          ckpt("mistral", cfg=hf_config(model_type="mistral")))
  _expect("unsupported model_type 'gemma2'", importers.import_gemma,
          ckpt("gemma2", cfg=hf_config(model_type="gemma2")))
  _expect("unsupported model_type 'gemma2'", importers.import_hf, str(tmp_path / "gemma2"))
  _expect("expected 'gemma'", importers.import_gemma, ckpt("llama_as_gemma"))
  _expect("rope_scaling", importers.import_llama,
          ckpt("rope", cfg=hf_config(rope_scaling={"rope_type": "llama3", "factor": 8.0})))
  _expect("hidden_act='gelu'", importers.import_llama, ckpt("act", cfg=hf_config(hidden_act="gelu")))
  _expect("config.json is missing hidden_size", importers.import_llama,
          ckpt("cfg", cfg={k: v for k, v in cfg.items() if k != "hidden_size"}))
  _expect("not a multiple", importers.import_llama, ckpt("gqa", cfg=hf_config(kv_heads=3)))
  _expect("tied_mode", importers.import_llama, ckpt("ok"), tied_mode="bogus")
  sharded = ckpt("sharded", shards=2)
  os.remove(os.path.join(sharded, "model-00002-of-00002.safetensors"))
  _expect("missing checkpoint shard .*model-00002-of-00002", importers.import_llama, sharded)


def test_export_errors(tmp_path):
  path, _, _ = checkpoint(tmp_path)
  params, config = importers.import_llama(path)
  out = str(tmp_path / "out")
  _expect("relpos", importers.export_llama, params, config.replace(position_embedding="relpos"), out)
  broken = {"decoder": {k: v for k, v in params["decoder"].items() if k != "layers_1"}}
  _expect("missing decoder/layers_1/", importers.export_llama, broken, config, out)
  _expect("has shape", importers.export_llama, params, config.replace(mlp_dim=F + 1), out)
  assert not os.path.exists(os.path.join(out, "model.safetensors"))


# ----------------------------------------------------------------------------- numerics
def hf_forward(t, cfg, tokens):
  """Pure-numpy (float64) HF LLaMA / Gemma forward from HF-layout tensors: [T] -> logits [T, V]."""
  gemma = cfg["model_type"] == "gemma"
  d, h, k, l = (cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"],
                cfg["head_dim"])
  eps, T = cfg["rms_norm_eps"], len(tokens)
  w = lambda name: t[name].astype(np.float64)

  def norm(x, name):
    scale = 1.0 + w(name) if gemma else w(name)
    return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps) * scale

  def rope(x):  # [T, heads, l], HF rotate_half
    inv_freq = 1.0 / cfg["rope_theta"] ** (np.arange(0, l, 2) / l)
    ang = np.arange(T)[:, None] * inv_freq[None]
    emb = np.concatenate([ang, ang], -1)[:, None, :]
    rot = np.concatenate([-x[..., l // 2:], x[..., :l // 2]], -1)
    return x * np.cos(emb) + rot * np.sin(emb)

  if (cfg.get("hidden_activation") if gemma else cfg["hidden_act"]) == "gelu_pytorch_tanh":
    act = lambda x: 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
  else:
    act = lambda x: x / (1 + np.exp(-x))
  x = w("model.embed_tokens.weight")[tokens] * (math.sqrt(d) if gemma else 1.0)
  causal = np.tril(np.ones((T, T), bool))
  for i in range(cfg["num_hidden_layers"]):
    p = f"model.layers.{i}."
    y = norm(x, p + "input_layernorm.weight")
    q = rope((y @ w(p + "self_attn.q_proj.weight").T).reshape(T, h, l))
    kk = rope((y @ w(p + "self_attn.k_proj.weight").T).reshape(T, k, l))
    v = (y @ w(p + "self_attn.v_proj.weight").T).reshape(T, k, l)
    kk, v = np.repeat(kk, h // k, axis=1), np.repeat(v, h // k, axis=1)
    s = np.einsum("qhl,khl->hqk", q, kk) / math.sqrt(l)
    s = np.where(causal[None], s, -np.inf)
    a = np.exp(s - s.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    o = np.einsum("hqk,khl->qhl", a, v).reshape(T, h * l)
    x = x + o @ w(p + "self_attn.o_proj.weight").T
    y = norm(x, p + "post_attention_layernorm.weight")
    x = x + (act(y @ w(p + "mlp.gate_proj.weight").T) * (y @ w(p + "mlp.up_proj.weight").T)) @ w(
        p + "mlp.down_proj.weight").T
  y = norm(x, "model.norm.weight")
  head = "model.embed_tokens.weight" if cfg["tie_word_embeddings"] else "lm_head.weight"
  return y @ w(head).T


TOKENS = np.array([3, 17, 0, 31, 8, 8, 22, 5, 1, 30], np.int32)


@pytest.mark.parametrize("kind,kw", [
    ("llama", dict(kv_heads=2)),
    ("llama", dict(tied=True)),
    ("llama", dict(tied=True, tied_mode="untie")),
    ("gemma", dict(model_type="gemma", tied=True, kv_heads=1)),
])
def test_logits_match_numpy_hf_forward(tmp_path, kind, kw):
  from guide_jax import model
  kw = dict(kw)
  tied_mode = kw.pop("tied_mode", "rescale")
  path, cfg, t = checkpoint(tmp_path, **kw)
  if kind == "llama":
    params, config = importers.import_llama(path, tied_mode=tied_mode)
  else:
    params, config = importers.import_gemma(path)
  want = hf_forward(t, cfg, TOKENS)
  got = np.asarray(model.apply(config, params, TOKENS[None]))[0]
  assert np.abs(want).max() > 0.5  # the check is not vacuous
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def test_exported_checkpoint_matches_our_forward(tmp_path):
  """export_llama of a tied model (inverse rescale) gives an HF checkpoint with our logits."""
  from guide_jax import model
  config = ModelConfig(vocab_size=V, d_model=D, n_layers=N, n_heads=H, head_dim=L, mlp_dim=F,
                       tie_embeddings=True, norm_eps=1e-6, rope_theta=THETA, mlp_activation="gelu")
  params = random_params(config, seed=1)
  out = importers.export_llama(params, config, str(tmp_path / "out"))
  from safetensors.numpy import load_file
  t = load_file(os.path.join(out, "model.safetensors"))
  cfg = json.load(open(os.path.join(out, "config.json")))
  assert cfg["hidden_act"] == "gelu_pytorch_tanh" and cfg["tie_word_embeddings"]
  want = hf_forward(t, cfg, TOKENS)
  got = np.asarray(model.apply(config, params, TOKENS[None]))[0]
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
