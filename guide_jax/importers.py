"""Teachers from Hugging Face safetensors checkpoints (LLaMA, Gemma 1) and export back to LLaMA.

Files are read from disk (no hub access): `model.safetensors`, or sharded
`model-0000i-of-0000n.safetensors` + `model.safetensors.index.json`, next to `config.json`.
Params come back as numpy float32 (bf16/f16 checkpoints are upcast) in guide_jax.model's t5x tree
({'decoder': {...}}) with a ModelConfig. Notation: d hidden, h query heads, k kv heads, l head_dim,
f mlp, V vocab.

config.json is read as transformers itself reads it (checked against transformers 4.57 and 5.x
PyTorch forwards in tests/test_hf_*.py, run by tests/hf_tier.sh), in both formats:
  * RoPE: 5.x writes `rope_parameters` {rope_type, rope_theta, factor, ...}; 4.x writes a top-level
    `rope_theta` and `rope_scaling` ({rope_type | type, factor, ...} or null). As transformers 5.x
    does: the parameters are `rope_scaling or rope_parameters`; theta is theirs, else the top-level
    `rope_theta`, else 10000; the type is `rope_type`, else `type`, else 'default'. Types 'default',
    'linear' and 'llama3' (Llama 3.1/3.2) are implemented (ModelConfig.rope_scaling,
    guide_jax.model.rope_frequencies); llama3's original_max_position_embeddings comes from a
    top-level key, else the parameters, else max_position_embeddings (transformers' precedence).
  * Keys a config omits take LlamaConfig's / GemmaConfig's defaults (kv heads = heads and head_dim =
    d / h for LLaMA, 16 and 256 for Gemma; tie_word_embeddings False for LLaMA, True for Gemma).
  * Activation: ACT2FN[hidden_act] in both models ('gelu' is the exact erf gelu -> 'gelu_exact',
    'gelu_pytorch_tanh' / 'gelu_new' the tanh form -> 'gelu', 'silu' / 'swish', 'relu'). Gemma's
    `hidden_activation` is ignored, as transformers ignores it; a Gemma hidden_act 'gelu' is read as
    'gelu_pytorch_tanh', as GemmaConfig 5.x converts it (the official releases meant the tanh form;
    transformers 4.x computed exact gelu there).
  * Anything else the model cannot represent (attention/MLP biases, other RoPE types, partial
    rotary, bidirectional attention, quantized weights, unknown activations) is refused with one
    ValueError naming every such setting, before any tensor is read.

Conventions (checked against transformers' modeling_llama / modeling_gemma):
  * nn.Linear stores [out, in]: q_proj [h*l, d] -> query kernel [d, h*l] = W.T (heads-major)
    / sqrt(l) (t5x folds the attention's 1/sqrt(l) into the query kernel); k/v likewise without
    the factor; o_proj [d, h*l] -> out kernel [h*l, d] = W.T.
  * GQA (k < h): our model has as many kv heads as query heads, so each kv head is repeated
    h/k times *consecutively* (np.repeat on the head axis): query head i reads kv head i // (h/k),
    exactly HF's repeat_kv. The forward pass is unchanged; only the parameter count grows.
  * RoPE: HF LLaMA checkpoints are already permuted to the rotate_half layout (their conversion
    script permutes Meta's interleaved q/k), and HF's inv_freq = theta^(-2i/l) on halves of l
    matches guide_jax.model.rope, so q/k are copied without any permutation.
  * gate_proj -> wi_0 (activated), up_proj -> wi_1, down_proj -> wo; norms: input_layernorm ->
    pre_self_attention_layer_norm, post_attention_layernorm -> pre_mlp_layer_norm, model.norm ->
    decoder_norm; lm_head [V, d] -> logits_dense kernel [d, V] (untied only).
  * Tied output layer: HF computes y E^T, ours y E^T / sqrt(d) (t5x). For tied LLaMA,
    tied_mode='rescale' (default) uses the exact reparametrization E' = sqrt(d) E, out and wo
    kernels * sqrt(d), norm_eps' = d * eps: the whole residual stream is sqrt(d) times HF's, every
    RMSNorm output is unchanged (x / sqrt(ms + eps) is invariant under x -> a x, eps -> a^2 eps)
    and the logits are y (sqrt(d) E)^T / sqrt(d) = y E^T. tied_mode='untie' instead copies E^T
    into logits_dense (tie_embeddings=False). export_llama inverts 'rescale' for tied models.
  * Gemma: RMSNorm weights are stored as w = scale - 1 (our scale = 1 + w); Gemma multiplies the
    embeddings by sqrt(d) and ties the output layer with no scale. Storing E' = sqrt(d) E is
    exact for both: input E'[tok] = sqrt(d) E[tok]; logits y E'^T / sqrt(d) = y E^T. (HF rounds
    the sqrt(d) normalizer to the activation dtype, e.g. 45.25 for d=2048 in bf16; we use the
    exact float32 value, i.e. HF's float32 forward.) Gemma 2/3 (soft-capping, extra norms) are
    rejected by model_type.
"""
import json
import math
import os
from typing import Any, Dict, List, Mapping, Tuple

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save as safetensors_bytes

from guide_jax.config import ModelConfig
from guide_jax.data.atomic import atomic_write_bytes, atomic_write_json

Params = Dict[str, Any]
TIED_MODES = ("rescale", "untie")
_INDEX = "model.safetensors.index.json"
_SINGLE = "model.safetensors"
# HF hidden_act (transformers' ACT2FN) -> our mlp_activation.
_ACTS = {"silu": "silu", "swish": "silu", "gelu": "gelu_exact", "gelu_pytorch_tanh": "gelu",
         "gelu_new": "gelu", "relu": "relu"}
# transformers' LlamaConfig / GemmaConfig defaults for keys a config.json may omit (None: see _read_config).
_DEFAULTS = {
    "llama": {"num_key_value_heads": None, "head_dim": None, "hidden_act": "silu",
              "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "max_position_embeddings": 2048},
    "gemma": {"num_key_value_heads": 16, "head_dim": 256, "hidden_act": "gelu_pytorch_tanh",
              "rms_norm_eps": 1e-6, "tie_word_embeddings": True, "max_position_embeddings": 8192},
}
_ROPE_TYPES = ("default", "linear", "llama3")
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


# ----------------------------------------------------------------------------- reading files
def _locate(path: str) -> Tuple[str, Dict[str, str]]:
  """path (dir, .safetensors file or index json) -> (dir, {tensor name: file path})."""
  path = os.fspath(path)
  if os.path.isdir(path):
    root = path
    if os.path.isfile(os.path.join(root, _SINGLE)):
      files = {None: os.path.join(root, _SINGLE)}
    elif os.path.isfile(os.path.join(root, _INDEX)):
      files = _read_index(os.path.join(root, _INDEX))
    else:
      raise ValueError(f"no {_SINGLE} or {_INDEX} in {root}")
  elif os.path.isfile(path) and path.endswith(".json"):
    root, files = os.path.dirname(path), _read_index(path)
  elif os.path.isfile(path) and path.endswith(".safetensors"):
    root, files = os.path.dirname(path), {None: path}
  else:
    raise ValueError(f"checkpoint not found: {path} (expected a directory, a .safetensors file "
                     f"or a {_INDEX})")
  if not os.path.isfile(os.path.join(root, "config.json")):
    raise ValueError(f"missing config.json next to the checkpoint in {root}")
  for name, file in files.items():
    if not os.path.isfile(file):
      raise ValueError(f"missing checkpoint shard {file}" + (f" (holds {name})" if name else ""))
  keys = {}
  for file in sorted(set(files.values())):
    with safe_open(file, framework="np") as f:
      keys[file] = set(f.keys())
  if None in files:  # single file: every tensor in it
    return root, {key: files[None] for key in keys[files[None]]}
  for name, file in files.items():
    if name not in keys[file]:
      raise ValueError(f"index maps tensor {name} to {file}, which does not contain it")
  names = dict(files)
  return root, names


def _read_index(index_path: str) -> Dict[str, str]:
  with open(index_path) as f:
    weight_map = json.load(f).get("weight_map")
  if not isinstance(weight_map, dict) or not weight_map:
    raise ValueError(f"{index_path} has no 'weight_map'")
  root = os.path.dirname(index_path)
  return {name: os.path.join(root, file) for name, file in weight_map.items()}


def _shapes(names: Mapping[str, str]) -> Dict[str, Tuple[int, ...]]:
  """Tensor shapes from the safetensors headers (no data read)."""
  shapes = {}
  by_file: Dict[str, list] = {}
  for name, file in names.items():
    by_file.setdefault(file, []).append(name)
  for file, keys in by_file.items():
    with safe_open(file, framework="np") as f:
      for key in keys:
        shapes[key] = tuple(f.get_slice(key).get_shape())
  return shapes


class _Reader:
  """Reads tensors as float32 numpy, keeping each file open once."""

  def __init__(self, names: Mapping[str, str]):
    self._names, self._open = names, {}

  def __call__(self, name: str) -> np.ndarray:
    file = self._names[name]
    if file not in self._open:
      self._open[file] = safe_open(file, framework="np")
    return np.asarray(self._open[file].get_tensor(name), dtype=np.float32)


# ----------------------------------------------------------------------------- HF config
def _read_config(hf: Mapping[str, Any], model_type: str) -> Dict[str, Any]:
  """config.json (4.x or 5.x format) -> dims {d, h, k, l, f, V, n, tied} + ModelConfig fields.

  Follows transformers' LlamaConfig / GemmaConfig (module docstring). Every unsupported setting
  is collected and refused in one ValueError.
  """
  if hf.get("model_type") != model_type:
    raise ValueError(f"unsupported model_type {hf.get('model_type')!r} in config.json; "
                     f"expected {model_type!r}")
  required = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
              "num_attention_heads")
  missing = [key for key in required if hf.get(key) is None]
  if missing:
    raise ValueError(f"config.json is missing {', '.join(missing)}")
  get = lambda key: _DEFAULTS[model_type][key] if hf.get(key) is None else hf[key]
  d, h = int(hf["hidden_size"]), int(hf["num_attention_heads"])
  k = int(get("num_key_value_heads") or h)
  l = int(get("head_dim") or d // h)
  problems: List[str] = []
  if h % k:
    problems.append(f"num_attention_heads={h} is not a multiple of num_key_value_heads={k}")
  for key in ("attention_bias", "mlp_bias"):
    if hf.get(key):
      problems.append(f"{key}=true (our model has no biases)")
  if hf.get("use_bidirectional_attention"):
    problems.append("use_bidirectional_attention=true (our attention is causal)")
  if hf.get("quantization_config") is not None:
    problems.append("quantization_config (only float checkpoints are read)")
  act = get("hidden_act")
  if model_type == "gemma" and act == "gelu":
    act = "gelu_pytorch_tanh"  # GemmaConfig 5.x: the legacy value means the tanh form
  if act not in _ACTS:
    problems.append(f"hidden_act={act!r} (supported: {sorted(_ACTS)})")
  rope = _read_rope(hf, get("max_position_embeddings"), problems)
  if problems:
    raise ValueError("unsupported config.json: " + "; ".join(problems))
  fields = dict(vocab_size=int(hf["vocab_size"]), d_model=d, n_layers=int(hf["num_hidden_layers"]),
                n_heads=h, head_dim=l, mlp_dim=int(hf["intermediate_size"]),
                tie_embeddings=bool(get("tie_word_embeddings")), norm_eps=float(get("rms_norm_eps")),
                mlp_activation=_ACTS[act], position_embedding="rope", **rope)
  return dict(d=d, h=h, k=k, l=l, f=fields["mlp_dim"], V=fields["vocab_size"], n=fields["n_layers"],
              tied=fields["tie_embeddings"], fields=fields)


def _read_rope(hf: Mapping[str, Any], max_positions, problems: List[str]) -> Dict[str, Any]:
  """RoPE settings of config.json (4.x `rope_theta` + `rope_scaling`, or 5.x `rope_parameters`)
  -> ModelConfig fields {rope_theta, rope_scaling, ...}; unsupported settings go to `problems`."""
  params = hf.get("rope_scaling") or hf.get("rope_parameters") or {}
  if not isinstance(params, Mapping):
    problems.append(f"rope parameters {params!r} (expected a dict)")
    return {}
  theta = params.get("rope_theta", hf.get("rope_theta"))
  fields: Dict[str, Any] = {"rope_theta": 10000.0 if theta is None else float(theta)}
  partial = params.get("partial_rotary_factor", hf.get("partial_rotary_factor"))
  if partial is not None and float(partial) != 1.0:
    problems.append(f"partial_rotary_factor={partial} (our RoPE rotates the whole head)")
  rope_type = params.get("rope_type", params.get("type", "default"))
  if rope_type not in _ROPE_TYPES:
    problems.append(f"rope_type={rope_type!r} (supported: {', '.join(_ROPE_TYPES)})")
    return fields
  needs = {"default": (), "linear": ("factor",),
           "llama3": ("factor", "low_freq_factor", "high_freq_factor")}[rope_type]
  absent = [key for key in needs if params.get(key) is None]
  if absent:
    problems.append(f"rope_type={rope_type!r} without {', '.join(absent)}")
    return fields
  if rope_type == "linear":
    fields.update(rope_scaling="linear", rope_scaling_factor=float(params["factor"]))
  elif rope_type == "llama3":
    original = hf.get("original_max_position_embeddings",
                      params.get("original_max_position_embeddings", max_positions))
    fields.update(rope_scaling="llama3", rope_scaling_factor=float(params["factor"]),
                  rope_low_freq_factor=float(params["low_freq_factor"]),
                  rope_high_freq_factor=float(params["high_freq_factor"]),
                  rope_original_max_positions=int(original))
  return fields


def _expected(dims) -> Dict[str, Tuple[int, ...]]:
  """HF tensor name -> shape for a LLaMA-layout checkpoint."""
  d, h, k, l, f, V = (dims[key] for key in "dhklfV")
  shapes = {"model.embed_tokens.weight": (V, d), "model.norm.weight": (d,)}
  for i in range(dims["n"]):
    p = f"model.layers.{i}."
    shapes.update({
        p + "input_layernorm.weight": (d,), p + "post_attention_layernorm.weight": (d,),
        p + "self_attn.q_proj.weight": (h * l, d), p + "self_attn.k_proj.weight": (k * l, d),
        p + "self_attn.v_proj.weight": (k * l, d), p + "self_attn.o_proj.weight": (d, h * l),
        p + "mlp.gate_proj.weight": (f, d), p + "mlp.up_proj.weight": (f, d),
        p + "mlp.down_proj.weight": (d, f)})
  if not dims["tied"]:
    shapes["lm_head.weight"] = (V, d)
  return shapes


def _check_tensors(shapes: Mapping[str, tuple], dims) -> None:
  expected = _expected(dims)
  missing = sorted(set(expected) - set(shapes))
  if missing:
    more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
    raise ValueError(f"checkpoint is missing tensor {', '.join(missing[:3])}{more}")
  allowed = set(expected) | {"lm_head.weight"}
  unexpected = sorted(name for name in set(shapes) - allowed if not name.endswith(_IGNORED_SUFFIXES))
  if unexpected:
    raise ValueError(f"unsupported checkpoint: unexpected tensor {', '.join(unexpected[:3])}")
  for name, shape in expected.items():
    if tuple(shapes[name]) != shape:
      raise ValueError(f"tensor {name} has shape {tuple(shapes[name])}, config implies {shape}")


# ----------------------------------------------------------------------------- conversion
def _convert(read, dims, norm_offset: float, embed_scale: float, out_scale: float) -> Params:
  """HF LLaMA-layout tensors -> our tree. Norm scale = w + norm_offset; embedding *= embed_scale;
  out/wo kernels *= out_scale."""
  d, h, k, l, n = (dims[key] for key in "dhkln")
  rep = h // k

  def heads(name, num, scale=1.0):  # [num*l, d] -> [d, h*l] (heads-major; kv heads repeated for GQA)
    kernel = read(name).T.reshape(d, num, l) * np.float32(scale)
    return (np.repeat(kernel, rep, axis=1) if num != h else kernel).reshape(d, h * l)

  decoder = {"token_embedder": {"embedding": read("model.embed_tokens.weight") * np.float32(embed_scale)}}
  for i in range(n):
    p = f"model.layers.{i}."
    decoder[f"layers_{i}"] = {
        "pre_self_attention_layer_norm": {"scale": read(p + "input_layernorm.weight") + np.float32(norm_offset)},
        "self_attention": {
            "query": {"kernel": heads(p + "self_attn.q_proj.weight", h, 1.0 / math.sqrt(l))},
            "key": {"kernel": heads(p + "self_attn.k_proj.weight", k)},
            "value": {"kernel": heads(p + "self_attn.v_proj.weight", k)},
            "out": {"kernel": read(p + "self_attn.o_proj.weight").T * np.float32(out_scale)}},
        "pre_mlp_layer_norm": {"scale": read(p + "post_attention_layernorm.weight") + np.float32(norm_offset)},
        "mlp": {"wi_0": {"kernel": read(p + "mlp.gate_proj.weight").T},
                "wi_1": {"kernel": read(p + "mlp.up_proj.weight").T},
                "wo": {"kernel": read(p + "mlp.down_proj.weight").T * np.float32(out_scale)}}}
  decoder["decoder_norm"] = {"scale": read("model.norm.weight") + np.float32(norm_offset)}
  if not dims["tied"]:
    decoder["logits_dense"] = {"kernel": read("lm_head.weight").T}
  return {"decoder": _contiguous(decoder)}


def _contiguous(tree):
  if isinstance(tree, dict):
    return {key: _contiguous(value) for key, value in tree.items()}
  return np.ascontiguousarray(tree, dtype=np.float32)


def _load(path, model_type):
  """Validates config and tensor names/shapes (headers only) -> (dims, ModelConfig, reader)."""
  root, names = _locate(path)
  with open(os.path.join(root, "config.json")) as f:
    hf = json.load(f)
  dims = _read_config(hf, model_type)
  try:
    config = ModelConfig(**dims["fields"])
  except ValueError as e:
    raise ValueError(f"unsupported config.json: {e}") from e
  _check_tensors(_shapes(names), dims)
  return dims, config, _Reader(names)


def import_llama(path_or_dir, *, tied_mode: str = "rescale") -> Tuple[Params, ModelConfig]:
  """LLaMA-HF checkpoint -> (params {'decoder': ...} float32 numpy, ModelConfig).

  tied_mode (tied checkpoints only): 'rescale' keeps the output layer tied via the exact
  sqrt(d) reparametrization (module docstring); 'untie' copies E^T into logits_dense.
  """
  if tied_mode not in TIED_MODES:
    raise ValueError(f"tied_mode must be one of {TIED_MODES}, got {tied_mode!r}")
  dims, config, read = _load(path_or_dir, "llama")
  scale = 1.0
  if dims["tied"] and tied_mode == "rescale":
    scale = math.sqrt(dims["d"])
    config = config.replace(norm_eps=config.norm_eps * dims["d"])
  params = _convert(read, dims, norm_offset=0.0, embed_scale=scale, out_scale=scale)
  if dims["tied"] and tied_mode == "untie":
    params["decoder"]["logits_dense"] = {
        "kernel": np.ascontiguousarray(params["decoder"]["token_embedder"]["embedding"].T)}
    config = config.replace(tie_embeddings=False)
  return params, config


def import_gemma(path_or_dir) -> Tuple[Params, ModelConfig]:
  """Gemma (1) HF checkpoint -> (params, ModelConfig); norms 1 + w, embedding * sqrt(d)."""
  dims, config, read = _load(path_or_dir, "gemma")  # Gemma 2/3 ('gemma2', ...) fail the type check
  params = _convert(read, dims, norm_offset=1.0, embed_scale=math.sqrt(dims["d"]), out_scale=1.0)
  return params, config


def import_hf(path_or_dir, **kwargs) -> Tuple[Params, ModelConfig]:
  """Dispatch on config.json's model_type ('llama' | 'gemma')."""
  root, _ = _locate(path_or_dir)
  with open(os.path.join(root, "config.json")) as f:
    model_type = json.load(f).get("model_type")
  importers = {"llama": import_llama, "gemma": import_gemma}
  if model_type not in importers:
    raise ValueError(f"unsupported model_type {model_type!r}; supported: {sorted(importers)}")
  return importers[model_type](path_or_dir, **kwargs)


# ----------------------------------------------------------------------------- export
_HF_ACTS = {"silu": "silu", "gelu": "gelu_pytorch_tanh", "gelu_exact": "gelu", "relu": "relu"}


def _hf_rope_scaling(config: ModelConfig):
  """ModelConfig's RoPE scaling -> config.json's `rope_scaling` (4.x form, read by 5.x too)."""
  if config.rope_scaling == "linear":
    return {"rope_type": "linear", "factor": config.rope_scaling_factor}
  if config.rope_scaling == "llama3":
    return {"rope_type": "llama3", "factor": config.rope_scaling_factor,
            "low_freq_factor": config.rope_low_freq_factor,
            "high_freq_factor": config.rope_high_freq_factor,
            "original_max_position_embeddings": config.rope_original_max_positions}
  return None


def export_llama(params: Params, config, out_dir, *, max_position_embeddings: int = 2048) -> str:
  """Inverse of import_llama: writes out_dir/{model.safetensors, config.json} (float32, MHA).

  config: ModelConfig or a dict of its fields. Tied models are written tied with the inverse
  of tied_mode='rescale' (E / sqrt(d), out and wo / sqrt(d), eps / d), so the HF forward equals
  ours. config.json uses the 4.x keys `rope_theta` and `rope_scaling`, which transformers 5.x
  reads too. Each file is written atomically (guide_jax.data.atomic; the safetensors file is
  serialized in memory first); stale shards are not removed.
  """
  if isinstance(config, Mapping):
    try:
      config = ModelConfig(**config)
    except TypeError as e:
      raise ValueError(f"config is not a ModelConfig's fields: {e}") from e
  d, n, h, l, f, V = (config.d_model, config.n_layers, config.n_heads, config.head_dim,
                      config.mlp_dim, config.vocab_size)
  tied = config.tie_embeddings
  if config.position_embedding != "rope":
    raise ValueError(f"unsupported config: position_embedding={config.position_embedding!r} "
                     "(LLaMA uses rope)")
  act = config.mlp_activation
  if act not in _HF_ACTS:
    raise ValueError(f"unsupported config: mlp_activation={act!r}")
  dec = params.get("decoder") if isinstance(params, Mapping) else None
  if dec is None:
    raise ValueError("params has no 'decoder' subtree")
  expected = {("token_embedder", "embedding"): (V, d), ("decoder_norm", "scale"): (d,)}
  for i in range(n):
    lay = f"layers_{i}"
    expected.update({
        (lay, "pre_self_attention_layer_norm", "scale"): (d,),
        (lay, "pre_mlp_layer_norm", "scale"): (d,),
        **{(lay, "self_attention", m, "kernel"): (d, h * l) for m in ("query", "key", "value")},
        (lay, "self_attention", "out", "kernel"): (h * l, d),
        (lay, "mlp", "wi_0", "kernel"): (d, f), (lay, "mlp", "wi_1", "kernel"): (d, f),
        (lay, "mlp", "wo", "kernel"): (f, d)})
  if not tied:
    expected[("logits_dense", "kernel")] = (d, V)
  leaves = {}
  for keys, shape in expected.items():
    node = dec
    for key in keys:
      if not isinstance(node, Mapping) or key not in node:
        raise ValueError(f"params is missing decoder/{'/'.join(keys)}")
      node = node[key]
    leaves[keys] = np.asarray(node, dtype=np.float32)
    if leaves[keys].shape != shape:
      raise ValueError(f"decoder/{'/'.join(keys)} has shape {leaves[keys].shape}, expected {shape}")

  eps = float(config.norm_eps)
  scale = 1.0
  if tied:
    scale, eps = math.sqrt(d), eps / d
  get = lambda *keys: leaves[keys]
  inv = np.float32(1.0 / scale)
  tensors = {"model.embed_tokens.weight": get("token_embedder", "embedding") * inv,
             "model.norm.weight": get("decoder_norm", "scale")}
  for i in range(n):
    lay, p = f"layers_{i}", f"model.layers.{i}."
    att = lambda m: get(lay, "self_attention", m, "kernel").T
    tensors.update({
        p + "input_layernorm.weight": get(lay, "pre_self_attention_layer_norm", "scale"),
        p + "post_attention_layernorm.weight": get(lay, "pre_mlp_layer_norm", "scale"),
        p + "self_attn.q_proj.weight": att("query") * np.float32(math.sqrt(l)),
        p + "self_attn.k_proj.weight": att("key"),
        p + "self_attn.v_proj.weight": att("value"),
        p + "self_attn.o_proj.weight": get(lay, "self_attention", "out", "kernel").T * inv,
        p + "mlp.gate_proj.weight": get(lay, "mlp", "wi_0", "kernel").T,
        p + "mlp.up_proj.weight": get(lay, "mlp", "wi_1", "kernel").T,
        p + "mlp.down_proj.weight": get(lay, "mlp", "wo", "kernel").T * inv})
  if not tied:
    tensors["lm_head.weight"] = get("logits_dense", "kernel").T
  hf_config = {
      "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": V,
      "hidden_size": d, "intermediate_size": f, "num_hidden_layers": n,
      "num_attention_heads": h, "num_key_value_heads": h, "head_dim": l,
      "rms_norm_eps": eps, "rope_theta": float(config.rope_theta),
      "rope_scaling": _hf_rope_scaling(config),
      "tie_word_embeddings": tied, "hidden_act": _HF_ACTS[act], "attention_bias": False,
      "mlp_bias": False, "max_position_embeddings": int(max_position_embeddings),
      "torch_dtype": "float32"}

  out_dir = os.fspath(out_dir)
  tensors = {name: np.ascontiguousarray(value, dtype=np.float32) for name, value in tensors.items()}
  atomic_write_bytes(os.path.join(out_dir, _SINGLE), safetensors_bytes(tensors, metadata={"format": "pt"}))
  atomic_write_json(os.path.join(out_dir, "config.json"), hf_config)
  return out_dir
