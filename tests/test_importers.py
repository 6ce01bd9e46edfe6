"""Tests for guide_jax.importers without torch: config.json files written by real transformers
(tests/fixtures/hf, 4.57.6 and 5.24.0) next to random safetensors tensors made with numpy.

The logits against transformers' own forward are in tests/test_hf_transformers.py (tests/hf_tier.sh).
"""
import json
import math
import os

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file

from guide_jax import importers
from guide_jax.config import ModelConfig

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "hf")
VERSIONS = ("v4", "v5")


def fixture_config(name):
  """config.json written by transformers (name: 'v4/llama_gqa_theta', ...)."""
  with open(os.path.join(FIXTURES, name, "config.json")) as f:
    return json.load(f)


def dims(cfg):
  """(d, h, k, l, f, V, n, tied) of an HF config (transformers' defaults for absent keys)."""
  gemma = cfg["model_type"] == "gemma"
  d, h = cfg["hidden_size"], cfg["num_attention_heads"]
  return (d, h, cfg.get("num_key_value_heads") or h, cfg.get("head_dim") or d // h,
          cfg["intermediate_size"], cfg["vocab_size"], cfg["num_hidden_layers"],
          cfg.get("tie_word_embeddings", gemma))


def hf_tensors(cfg, seed=0):
  """Random HF-layout tensors ([out, in] Linear weights) for `cfg`."""
  rng = np.random.default_rng(seed)
  d, h, k, l, f, V, n, tied = dims(cfg)
  lin = lambda o, i: (rng.normal(size=(o, i)) / math.sqrt(i)).astype(np.float32)
  norm = lambda: (rng.normal(size=(d,)) * 0.1 + (0.0 if cfg["model_type"] == "gemma" else 1.0)
                  ).astype(np.float32)
  t = {"model.embed_tokens.weight": rng.normal(size=(V, d)).astype(np.float32) * 0.5,
       "model.norm.weight": norm()}
  for i in range(n):
    p = f"model.layers.{i}."
    t.update({p + "input_layernorm.weight": norm(), p + "post_attention_layernorm.weight": norm(),
              p + "self_attn.q_proj.weight": lin(h * l, d), p + "self_attn.k_proj.weight": lin(k * l, d),
              p + "self_attn.v_proj.weight": lin(k * l, d), p + "self_attn.o_proj.weight": lin(d, h * l),
              p + "mlp.gate_proj.weight": lin(f, d), p + "mlp.up_proj.weight": lin(f, d),
              p + "mlp.down_proj.weight": lin(d, f)})
  if not tied:
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


def checkpoint(tmp_path, fixture="v4/llama_gqa_theta", name="ckpt", seed=0, shards=1, **changes):
  """A real config.json (with `changes`; None deletes a key) + random tensors -> (path, cfg, tensors)."""
  cfg = fixture_config(fixture)
  for key, value in changes.items():
    if value is None:
      cfg.pop(key, None)
    else:
      cfg[key] = value
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
  """Every leaf is one checkpoint tensor, copied or transposed (no scaling, kv heads kept)."""
  from guide_jax import model
  path, cfg, t = checkpoint(tmp_path, "v4/llama_mqa_tied_head_dim", tie_word_embeddings=False)
  d, h, k, l, f, V, n, _ = dims(cfg)
  assert l != d // h and k == 1
  params, config = importers.import_llama(path)
  assert config == ModelConfig(vocab_size=V, d_model=d, n_layers=n, n_heads=h, head_dim=l,
                               mlp_dim=f, tie_embeddings=False, norm_eps=1e-6, rope_theta=10000.0,
                               mlp_activation="silu", n_kv_heads=1, query_pre_attn_scalar=float(l),
                               embedding_style="hf")
  expected = {key: s.shape for key, s in flatten(model.param_shapes(config)).items()}
  got = flatten(params)
  assert {key: v.shape for key, v in got.items()} == expected
  assert all(v.dtype == np.float32 for v in got.values())
  dec, lay = params["decoder"], params["decoder"]["layers_1"]
  p = "model.layers.1."
  np.testing.assert_array_equal(dec["token_embedder"]["embedding"], t["model.embed_tokens.weight"])
  np.testing.assert_array_equal(lay["self_attention"]["query"]["kernel"], t[p + "self_attn.q_proj.weight"].T)
  np.testing.assert_array_equal(lay["self_attention"]["key"]["kernel"], t[p + "self_attn.k_proj.weight"].T)
  np.testing.assert_array_equal(lay["self_attention"]["value"]["kernel"], t[p + "self_attn.v_proj.weight"].T)
  np.testing.assert_array_equal(lay["self_attention"]["out"]["kernel"], t[p + "self_attn.o_proj.weight"].T)
  np.testing.assert_array_equal(lay["mlp"]["wi_0"]["kernel"], t[p + "mlp.gate_proj.weight"].T)
  np.testing.assert_array_equal(lay["mlp"]["wi_1"]["kernel"], t[p + "mlp.up_proj.weight"].T)
  np.testing.assert_array_equal(lay["mlp"]["wo"]["kernel"], t[p + "mlp.down_proj.weight"].T)
  np.testing.assert_array_equal(lay["pre_self_attention_layer_norm"]["scale"], t[p + "input_layernorm.weight"])
  np.testing.assert_array_equal(lay["pre_mlp_layer_norm"]["scale"], t[p + "post_attention_layernorm.weight"])
  np.testing.assert_array_equal(dec["decoder_norm"]["scale"], t["model.norm.weight"])
  np.testing.assert_array_equal(dec["logits_dense"]["kernel"], t["lm_head.weight"].T)


def test_gqa_is_kept(tmp_path):
  path, cfg, t = checkpoint(tmp_path, "v5/llama_gqa_theta")
  d, h, k, l = dims(cfg)[:4]
  assert (h, k) == (4, 2)
  params, config = importers.import_llama(path)
  assert config.n_kv_heads == 2 and config.kv_heads == 2
  key = params["decoder"]["layers_0"]["self_attention"]["key"]["kernel"]
  np.testing.assert_array_equal(key, t["model.layers.0.self_attn.k_proj.weight"].T)  # [d, k*l]


def test_bf16_stays_bf16_sharded_checkpoint_and_path_forms(tmp_path):
  cfg = fixture_config("v5/llama_gqa_theta")
  t16 = {key: v.astype(ml_dtypes.bfloat16) for key, v in hf_tensors(cfg).items()}
  sharded = write_checkpoint(str(tmp_path / "sharded"), cfg, t16, shards=3)
  single = write_checkpoint(str(tmp_path / "single"), cfg, t16)
  assert len([f for f in os.listdir(sharded) if f.endswith(".safetensors")]) == 3
  ref_params, ref_config = importers.import_llama(single)
  assert ref_config.param_dtype == "bfloat16"
  ref = flatten(ref_params)
  assert all(v.dtype == ml_dtypes.bfloat16 for v in ref.values())
  np.testing.assert_array_equal(ref["decoder/layers_0/self_attention/query/kernel"].view(np.uint16),
                                t16["model.layers.0.self_attn.q_proj.weight"].T.view(np.uint16))  # bit for bit
  for path in (sharded, os.path.join(sharded, "model.safetensors.index.json")):
    got = flatten(importers.import_llama(path)[0])
    assert got.keys() == ref.keys()
    for key in ref:
      np.testing.assert_array_equal(got[key], ref[key])
  got = flatten(importers.import_llama(os.path.join(single, "model.safetensors"))[0])
  np.testing.assert_array_equal(got["decoder/layers_0/mlp/wo/kernel"], ref["decoder/layers_0/mlp/wo/kernel"])


def test_sharded_placement_reads_only_each_devices_slices(tmp_path, monkeypatch):
  """With a mesh every leaf is built on its target sharding from slice reads, each slice once."""
  import jax
  from guide_jax import sharding
  path, cfg, t = checkpoint(tmp_path, "v5/llama_gqa_theta")
  reads = []
  real = importers._read_leaf
  monkeypatch.setattr(importers, "_read_leaf", lambda file, name, transposed, dtype, index:
                      reads.append((name, index)) or real(file, name, transposed, dtype, index))
  mesh = sharding.make_mesh(model_parallel=4)
  params, config = importers.import_llama(path, mesh=mesh)
  want = sharding.param_shardings(config, mesh)
  for leaf, sh in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(want)):
    assert leaf.sharding.is_equivalent_to(sh, leaf.ndim)
  q = [index for name, index in reads if name == "model.layers.0.self_attn.q_proj.weight"]
  assert len(q) == 4 and len(set(map(str, q))) == 4  # four model-parallel slices, each read once
  np.testing.assert_array_equal(np.asarray(params["decoder"]["layers_0"]["self_attention"]["query"]["kernel"]),
                                t["model.layers.0.self_attn.q_proj.weight"].T)


def test_tied_llama_keep_and_untie(tmp_path):
  path, cfg, t = checkpoint(tmp_path, "v5/llama_mqa_tied_head_dim")
  eps = cfg["rms_norm_eps"]
  e = t["model.embed_tokens.weight"]
  params, config = importers.import_llama(path)
  assert config.tie_embeddings and "logits_dense" not in params["decoder"]
  assert config.norm_eps == eps and config.embedding_style == "hf"
  np.testing.assert_array_equal(params["decoder"]["token_embedder"]["embedding"], e)
  params, config = importers.import_llama(path, tied_mode="untie")
  assert not config.tie_embeddings and config.norm_eps == eps
  np.testing.assert_array_equal(params["decoder"]["token_embedder"]["embedding"], e)
  np.testing.assert_array_equal(params["decoder"]["logits_dense"]["kernel"], e.T)


def test_tied_config_with_a_different_lm_head_is_untied_as_transformers_5(tmp_path):
  """tie_word_embeddings true + a present lm_head.weight that differs: transformers 5.x uses it
  untied (the old importer dropped it and tied: 114 % off); an equal one stays tied."""
  cfg = fixture_config("v5/llama_mqa_tied_head_dim")
  t = hf_tensors(cfg)
  head = np.random.default_rng(5).normal(size=t["model.embed_tokens.weight"].shape).astype(np.float32)
  path = write_checkpoint(str(tmp_path / "different"), cfg, {**t, "lm_head.weight": head})
  params, config = importers.import_llama(path)
  assert not config.tie_embeddings
  np.testing.assert_array_equal(params["decoder"]["logits_dense"]["kernel"], head.T)
  path = write_checkpoint(str(tmp_path / "same"), cfg, {**t, "lm_head.weight": t["model.embed_tokens.weight"]})
  params, config = importers.import_llama(path)
  assert config.tie_embeddings and "logits_dense" not in params["decoder"]


def test_gemma_conventions(tmp_path):
  path, cfg, t = checkpoint(tmp_path, "v5/gemma_hub_act")
  d = cfg["hidden_size"]
  params, config = importers.import_gemma(path)
  assert config.mlp_activation == "gelu" and config.tie_embeddings and config.norm_eps == 1e-6
  assert config.embedding_style == "gemma" and config.norm_offset == 1.0
  dec = params["decoder"]
  np.testing.assert_array_equal(dec["token_embedder"]["embedding"], t["model.embed_tokens.weight"])
  np.testing.assert_array_equal(dec["decoder_norm"]["scale"], t["model.norm.weight"])
  np.testing.assert_array_equal(dec["layers_0"]["pre_mlp_layer_norm"]["scale"],
                                t["model.layers.0.post_attention_layernorm.weight"])
  assert dec["layers_0"]["self_attention"]["value"]["kernel"].shape == (d, dims(cfg)[2] * 8)
  _, config2 = importers.import_hf(path)
  assert config2 == config


def test_absent_keys_take_transformers_defaults(tmp_path):
  # transformers 4.57 leaves tie_word_embeddings out of a Gemma config (it equals the default).
  assert "tie_word_embeddings" not in fixture_config("v4/gemma_hub_act")
  path, _, _ = checkpoint(tmp_path, "v4/gemma_hub_act", name="gemma")
  assert importers.import_gemma(path)[1].tie_embeddings  # GemmaConfig default: tied
  path, _, _ = checkpoint(tmp_path, "v4/llama_gqa_theta", name="llama", tie_word_embeddings=None,
                          num_key_value_heads=None, head_dim=None)
  config = importers.import_llama(path)[1]  # LlamaConfig: untied, k = h, l = d / h
  assert not config.tie_embeddings and config.head_dim == 8
  path, _, _ = checkpoint(tmp_path, "v5/llama_gqa_theta", name="no_rope", rope_parameters=None)
  assert importers.import_llama(path)[1].rope_theta == 10000.0


# ----------------------------------------------------------------------------- config reading
# fixture name -> ModelConfig fields import_hf must read from it, in both config formats.
EXPECTED = {
    # defect 1: a 5.x theta lives in rope_parameters (the old reader silently took 10000).
    "llama_gqa_theta": dict(rope_theta=500000.0, norm_eps=1e-5),
    # defect 2: 5.x llama3 scaling was accepted and ignored.
    "llama_llama3_scaling": dict(rope_theta=500000.0, rope_scaling="llama3", rope_scaling_factor=8.0,
                                 rope_low_freq_factor=1.0, rope_high_freq_factor=4.0,
                                 rope_original_max_positions=32),
    "llama_linear_scaling": dict(rope_scaling="linear", rope_scaling_factor=4.0),
    "llama_linear_scaling_type_key": dict(rope_scaling="linear", rope_scaling_factor=4.0),
    "llama_gelu": dict(mlp_activation="gelu_exact"),  # ACT2FN['gelu'] is the exact erf gelu
    # defect 3: GemmaMLP uses ACT2FN[hidden_act]; hidden_activation is ignored.
    "gemma_silu": dict(mlp_activation="silu"),
    "gemma_hub_act": dict(mlp_activation="gelu"),  # hidden_act 'gelu' in a Gemma config: tanh (5.x)
}
CASES = [f"{v}/{name}" for v in VERSIONS for name in EXPECTED
         if os.path.isdir(os.path.join(FIXTURES, v, name))]


@pytest.mark.parametrize("fixture", CASES)
def test_config_fields_follow_transformers(tmp_path, fixture):
  path, _, _ = checkpoint(tmp_path, fixture)
  _, config = importers.import_hf(path, **({} if "gemma" in fixture else {"tied_mode": "untie"}))
  fields = {key: getattr(config, key) for key in EXPECTED[fixture.split("/")[1]]}
  assert fields == EXPECTED[fixture.split("/")[1]]


@pytest.mark.parametrize("version", VERSIONS)
def test_llama3_original_positions_precedence(tmp_path, version):
  """transformers: a top-level original_max_position_embeddings, else the rope parameters', else
  max_position_embeddings."""
  cfg = fixture_config(f"{version}/llama_llama3_scaling")
  key = "rope_parameters" if version == "v5" else "rope_scaling"
  params = dict(cfg[key])
  del params["original_max_position_embeddings"]
  path, _, _ = checkpoint(tmp_path, f"{version}/llama_llama3_scaling", name="a", **{key: params},
                          max_position_embeddings=64)
  assert importers.import_llama(path)[1].rope_original_max_positions == 64
  path, _, _ = checkpoint(tmp_path, f"{version}/llama_llama3_scaling", name="b",
                          original_max_position_embeddings=16)
  assert importers.import_llama(path)[1].rope_original_max_positions == 16


@pytest.mark.parametrize("version", VERSIONS)
def test_unknown_rope_type_refused(tmp_path, version):
  path, _, _ = checkpoint(tmp_path, f"{version}/llama_dynamic_scaling")
  _expect(r"unsupported config.json: rope_type='dynamic' \(supported: default, linear, llama3\)",
          importers.import_hf, path)


def test_unsupported_settings_in_one_error_before_tensors(tmp_path):
  """Every unsupported setting is named in one ValueError, raised before any tensor is checked."""
  yarn = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0,
          "original_max_position_embeddings": 32}
  path, _, _ = checkpoint(tmp_path, "v5/llama_gqa_theta", mlp_bias=True,
                          rope_parameters=yarn, hidden_act="gelu_python", num_hidden_layers=7)
  with pytest.raises(ValueError) as err:
    importers.import_llama(path)
  msg = str(err.value)
  assert msg.startswith("unsupported config.json: ") and "missing tensor" not in msg
  for part in ("mlp_bias=true", "rope_type='yarn'", "hidden_act='gelu_python'"):
    assert part in msg
  path, _, _ = checkpoint(tmp_path, "v5/gemma_hub_act", name="g", use_bidirectional_attention=True,
                          rope_parameters={"rope_type": "default", "partial_rotary_factor": 0.5})
  _expect("use_bidirectional_attention=true.*partial_rotary_factor=0.5", importers.import_gemma, path)
  path, _, _ = checkpoint(tmp_path, "v5/llama_llama3_scaling", name="l3",
                          rope_parameters={"rope_type": "llama3", "factor": 8.0})
  _expect("rope_type='llama3' without low_freq_factor, high_freq_factor", importers.import_llama, path)
  bad = dict(fixture_config("v5/llama_llama3_scaling")["rope_parameters"], low_freq_factor=4.0)
  path, _, _ = checkpoint(tmp_path, "v5/llama_llama3_scaling", name="lowhigh", rope_parameters=bad)
  _expect("unsupported config.json: ModelConfig.rope_low_freq_factor must be <", importers.import_llama, path)


# ----------------------------------------------------------------------------- RoPE frequencies
def _config(**kw):
  base = dict(vocab_size=8, d_model=16, n_layers=1, n_heads=1, head_dim=16, mlp_dim=8)
  return ModelConfig(**{**base, **kw})


def test_rope_frequencies():
  from guide_jax.model import rope_frequencies
  base = 10000.0 ** -(np.arange(0, 16, 2) / 16)
  np.testing.assert_allclose(rope_frequencies(_config()), base, rtol=1e-7)
  np.testing.assert_allclose(rope_frequencies(_config(rope_scaling="linear", rope_scaling_factor=4.0)),
                             base / 4, rtol=1e-7)
  got = rope_frequencies(_config(rope_scaling="llama3", rope_scaling_factor=8.0,
                                 rope_original_max_positions=32))
  wavelength = 2 * math.pi / base
  high, low = wavelength < 32 / 4, wavelength > 32 / 1  # kept; divided by the factor
  medium = ~high & ~low
  assert high.any() and low.any() and medium.any()  # all three regimes at head_dim 16
  np.testing.assert_allclose(got[high], base[high], rtol=1e-7)
  np.testing.assert_allclose(got[low], base[low] / 8, rtol=1e-7)
  assert np.all(got[medium] < base[medium]) and np.all(got[medium] > base[medium] / 8)


def test_rope_scaling_config_validation():
  with pytest.raises(ValueError, match="rope_scaling must be one of"):
    _config(rope_scaling="yarn")
  with pytest.raises(ValueError, match="rope_scaling_factor=8.0 is not used by rope_scaling='none'"):
    _config(rope_scaling_factor=8.0)
  with pytest.raises(ValueError, match="rope_original_max_positions=32 is not used by rope_scaling='linear'"):
    _config(rope_scaling="linear", rope_original_max_positions=32)
  with pytest.raises(ValueError, match="rope_scaling_factor must be a number > 0"):
    _config(rope_scaling="linear", rope_scaling_factor=0.0)
  with pytest.raises(ValueError, match="needs position_embedding='rope'"):
    _config(rope_scaling="linear", rope_scaling_factor=2.0, position_embedding="relpos")
  with pytest.raises(ValueError, match="rope_original_max_positions must be a positive int"):
    _config(rope_scaling="llama3", rope_original_max_positions=0)


# ----------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("tied,extra", [
    (False, {}),
    (True, dict(mlp_activation="gelu_exact")),
    (False, dict(rope_scaling="llama3", rope_scaling_factor=8.0, rope_original_max_positions=64)),
    (True, dict(rope_scaling="linear", rope_scaling_factor=2.0, mlp_activation="gelu")),
])
def test_export_import_round_trip(tmp_path, tied, extra):
  config = ModelConfig(vocab_size=32, d_model=16, n_layers=2, n_heads=4, head_dim=8, mlp_dim=24,
                       tie_embeddings=tied, norm_eps=1e-6, rope_theta=500.0,
                       **{"mlp_activation": "silu", **extra})
  params = random_params(config)
  out = importers.export_llama(params, config, str(tmp_path / "out"))
  assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]  # no temp files left
  hf = json.load(open(os.path.join(out, "config.json")))
  assert hf["tie_word_embeddings"] == tied and hf["num_key_value_heads"] == 4
  params2, config2 = importers.import_llama(out)
  # transformers' layout: the softmax scale and (tied) the output scale are explicit, not in the weights
  assert config2 == config.replace(query_pre_attn_scalar=8.0, embedding_style="hf",
                                   norm_eps=1e-6 / 16 if tied else 1e-6)
  from guide_jax import model
  x = np.random.default_rng(0).integers(0, 32, size=(2, 9))
  np.testing.assert_allclose(model.apply(config2, params2, x), model.apply(config, params, x), rtol=1e-5, atol=1e-5)


def test_import_export_import_gqa(tmp_path):
  path, _, _ = checkpoint(tmp_path, "v5/llama_llama3_scaling")
  params, config = importers.import_llama(path)
  out = importers.export_llama(params, config, str(tmp_path / "out"))
  with pytest.raises(ValueError, match="already exists"):  # nothing already there is replaced unasked
    importers.export_llama(params, config, out)
  importers.export_llama(params, dict(vars(config)), out, overwrite=True)  # a dict of fields too
  assert json.load(open(os.path.join(out, "config.json")))["num_key_value_heads"] == config.kv_heads
  params2, config2 = importers.import_llama(out)
  assert config2 == config
  a, b = flatten(params), flatten(params2)
  for key in a:
    np.testing.assert_array_equal(b[key], a[key], err_msg=key)


# ----------------------------------------------------------------------------- errors
def _expect(match, fn, *args, **kw):
  with pytest.raises(ValueError, match=match):
    fn(*args, **kw)


def test_errors(tmp_path):
  _expect("checkpoint not found", importers.import_llama, str(tmp_path / "nope"))
  empty = tmp_path / "empty"
  empty.mkdir()
  _expect("no model.safetensors", importers.import_llama, str(empty))

  cfg = fixture_config("v4/llama_gqa_theta")
  t = hf_tensors(cfg)
  no_cfg = tmp_path / "no_cfg"
  no_cfg.mkdir()
  save_file(t, str(no_cfg / "model.safetensors"))
  _expect("missing config.json", importers.import_llama, str(no_cfg))

  def ckpt(name, tensors=t, shards=1, **changes):
    return write_checkpoint(str(tmp_path / name), {**cfg, **changes}, tensors, shards)

  missing = dict(t)
  del missing["model.layers.1.mlp.up_proj.weight"]
  _expect(r"missing tensor model\.layers\.1\.mlp\.up_proj\.weight", importers.import_llama,
          ckpt("missing", tensors=missing))
  _expect(r"missing tensor lm_head\.weight", importers.import_llama,
          ckpt("no_head", tensors={k: v for k, v in t.items() if k != "lm_head.weight"}))
  _expect(r"unexpected tensor model\.layers\.0\.self_attn\.q_proj\.bias", importers.import_llama,
          ckpt("bias", tensors={**t, "model.layers.0.self_attn.q_proj.bias": np.zeros(32, np.float32)}))
  _expect(r"q_proj\.weight has shape", importers.import_llama, ckpt("shape", head_dim=4))
  _expect("unsupported model_type 'mistral'", importers.import_llama, ckpt("mistral", model_type="mistral"))
  _expect("unsupported model_type 'gemma2'", importers.import_gemma, ckpt("gemma2", model_type="gemma2"))
  _expect("unsupported model_type 'falcon'; supported: gemma, gemma2", importers.import_hf,
          ckpt("falcon", model_type="falcon"))
  _expect("the multimodal Gemma 3", importers.import_hf, ckpt("gemma3mm", model_type="gemma3"))
  _expect("expected 'gemma'", importers.import_gemma, ckpt("llama_as_gemma"))
  _expect("hidden_act='tanh'", importers.import_llama, ckpt("act", hidden_act="tanh"))
  _expect("config.json is missing hidden_size", importers.import_llama, ckpt("cfg", hidden_size=None))
  _expect("not a multiple", importers.import_llama, ckpt("gqa", num_key_value_heads=3))
  _expect("tied_mode", importers.import_llama, ckpt("ok"), tied_mode="bogus")
  sharded = ckpt("sharded", shards=2)
  os.remove(os.path.join(sharded, "model-00002-of-00002.safetensors"))
  _expect("missing checkpoint shard .*model-00002-of-00002", importers.import_llama, sharded)


def test_case07_case17_int8_truncated_and_non_json_name_the_problem_and_path(tmp_path):
  cfg = fixture_config("v4/llama_gqa_theta")
  t = hf_tensors(cfg)
  int8 = dict(t, **{"model.layers.0.mlp.down_proj.weight": t["model.layers.0.mlp.down_proj.weight"].astype(np.int8)})
  path = write_checkpoint(str(tmp_path / "int8"), cfg, int8)
  _expect(r"tensor model\.layers\.0\.mlp\.down_proj\.weight has dtype I8 without a quantization_config",
          importers.import_llama, path)
  path = write_checkpoint(str(tmp_path / "trunc"), cfg, t)
  file = os.path.join(path, "model.safetensors")
  data = open(file, "rb").read()
  open(file, "wb").write(data[: len(data) // 2])
  _expect(f"unreadable safetensors file {file}", importers.import_llama, path)
  path = write_checkpoint(str(tmp_path / "json"), cfg, t)
  open(os.path.join(path, "config.json"), "w").write("{not json")
  _expect(f"config.json {os.path.join(path, 'config.json')} is not valid JSON", importers.import_llama, path)


def test_teacher_finiteness_checked_once_at_load(tmp_path, monkeypatch):
  from guide_jax.transforms import validate
  cfg = fixture_config("v4/llama_gqa_theta")
  t = hf_tensors(cfg)
  t["model.layers.1.mlp.up_proj.weight"][0, 0] = np.nan
  path = write_checkpoint(str(tmp_path / "nan"), cfg, t)
  calls = []
  real = validate.check_finite
  monkeypatch.setattr(validate, "check_finite", lambda *a, **k: calls.append(1) or real(*a, **k))
  _expect(r"NaN or Inf in: decoder/layers_1/mlp/wi_1/kernel", importers.import_llama, path)
  assert len(calls) == 1


def test_export_errors(tmp_path):
  path, _, _ = checkpoint(tmp_path)
  params, config = importers.import_llama(path)
  out = str(tmp_path / "out")
  _expect("relpos", importers.export_llama, params, config.replace(position_embedding="relpos"), out)
  broken = {"decoder": {k: v for k, v in params["decoder"].items() if k != "layers_1"}}
  _expect("missing decoder/layers_1/", importers.export_llama, broken, config, out)
  _expect("has shape", importers.export_llama, params, config.replace(mlp_dim=config.mlp_dim + 1), out)
  _expect("not a ModelConfig's fields", importers.export_llama, params, {**vars(config), "bogus": 1}, out)
  assert not os.path.exists(os.path.join(out, "model.safetensors"))
