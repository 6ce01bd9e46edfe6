"""Teachers from Hugging Face safetensors checkpoints (LLaMA, Gemma 1) and export back to LLaMA.

Files are read from disk (no hub access): `model.safetensors`, or sharded
`model-0000i-of-0000n.safetensors` + `model.safetensors.index.json`, next to `config.json`.
Params come back as numpy float32 in guide_jax.model's t5x tree ({'decoder': {...}}) with a
ModelConfig. Notation: d hidden, h query heads, k kv heads, l head_dim, f mlp, V vocab.

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
    `rope_scaling` (e.g. Llama 3.1's 'llama3') is not implemented by our model: rejected.
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
    exact float32 value, i.e. HF's float32 forward.) MLP activation is gelu tanh-approximation
    (`hidden_activation` gelu_pytorch_tanh). Gemma 2/3 (soft-capping, extra norms) are rejected.
"""
import json
import math
import os
import tempfile
from typing import Any, Dict, Mapping, Tuple

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from guide_jax.config import ModelConfig

Params = Dict[str, Any]
TIED_MODES = ("rescale", "untie")
_INDEX = "model.safetensors.index.json"
_SINGLE = "model.safetensors"
# HF hidden_act -> our mlp_activation. HF 'gelu' is the exact erf gelu: ours is tanh-approximate.
_ACTS = {"silu": "silu", "swish": "silu", "gelu_pytorch_tanh": "gelu", "gelu_new": "gelu",
         "relu": "relu"}
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
def _hf_dims(hf: Mapping[str, Any], model_type: str) -> Dict[str, Any]:
  """Validated HF config -> {d, h, k, l, f, V, n, eps, theta, tied}."""
  if hf.get("model_type") != model_type:
    raise ValueError(f"unsupported model_type {hf.get('model_type')!r} in config.json; "
                     f"expected {model_type!r}")
  required = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
              "num_attention_heads")
  missing = [key for key in required if hf.get(key) is None]
  if missing:
    raise ValueError(f"config.json is missing {', '.join(missing)}")
  if hf.get("rope_scaling"):
    raise ValueError(f"unsupported config: rope_scaling={hf['rope_scaling']!r} (our RoPE has no "
                     "frequency scaling)")
  for key in ("attention_bias", "mlp_bias"):
    if hf.get(key):
      raise ValueError(f"unsupported config: {key}=true (our model has no biases)")
  d, h = int(hf["hidden_size"]), int(hf["num_attention_heads"])
  k = int(hf.get("num_key_value_heads") or h)
  l = int(hf.get("head_dim") or d // h)
  # transformers' defaults: LlamaConfig ties nothing, GemmaConfig ties the output layer.
  if h % k:
    raise ValueError(f"num_attention_heads={h} is not a multiple of num_key_value_heads={k}")
  return dict(d=d, h=h, k=k, l=l, f=int(hf["intermediate_size"]), V=int(hf["vocab_size"]),
              n=int(hf["num_hidden_layers"]), theta=float(hf.get("rope_theta", 10000.0)),
              tied=bool(hf.get("tie_word_embeddings", model_type == "gemma")))


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
  """Validates config and tensor names/shapes (headers only) -> (hf config, dims, reader)."""
  root, names = _locate(path)
  with open(os.path.join(root, "config.json")) as f:
    hf = json.load(f)
  dims = _hf_dims(hf, model_type)
  _check_tensors(_shapes(names), dims)
  return hf, dims, _Reader(names)


def _activation(name, where):
  if name not in _ACTS:
    raise ValueError(f"unsupported config: {where}={name!r} (supported: {sorted(_ACTS)})")
  return _ACTS[name]


def import_llama(path_or_dir, *, tied_mode: str = "rescale") -> Tuple[Params, ModelConfig]:
  """LLaMA-HF checkpoint -> (params {'decoder': ...} float32 numpy, ModelConfig).

  tied_mode (tied checkpoints only): 'rescale' keeps the output layer tied via the exact
  sqrt(d) reparametrization (module docstring); 'untie' copies E^T into logits_dense.
  """
  if tied_mode not in TIED_MODES:
    raise ValueError(f"tied_mode must be one of {TIED_MODES}, got {tied_mode!r}")
  hf, dims, read = _load(path_or_dir, "llama")
  act = _activation(hf.get("hidden_act", "silu"), "hidden_act")
  eps = float(hf.get("rms_norm_eps", 1e-6))
  scale = 1.0
  if dims["tied"] and tied_mode == "rescale":
    scale, eps = math.sqrt(dims["d"]), eps * dims["d"]
  params = _convert(read, dims, norm_offset=0.0, embed_scale=scale, out_scale=scale)
  tied = dims["tied"]
  if tied and tied_mode == "untie":
    params["decoder"]["logits_dense"] = {
        "kernel": np.ascontiguousarray(params["decoder"]["token_embedder"]["embedding"].T)}
    tied = False
  return params, _model_config(dims, tied, eps, act)


def import_gemma(path_or_dir) -> Tuple[Params, ModelConfig]:
  """Gemma (1) HF checkpoint -> (params, ModelConfig); norms 1 + w, embedding * sqrt(d)."""
  hf, dims, read = _load(path_or_dir, "gemma")  # Gemma 2/3 ('gemma2', ...) fail the type check
  # transformers' Gemma uses `hidden_activation` (default gelu_pytorch_tanh) and ignores hidden_act.
  act = _activation(hf.get("hidden_activation") or "gelu_pytorch_tanh", "hidden_activation")
  params = _convert(read, dims, norm_offset=1.0, embed_scale=math.sqrt(dims["d"]), out_scale=1.0)
  return params, _model_config(dims, dims["tied"], float(hf.get("rms_norm_eps", 1e-6)), act)


def import_hf(path_or_dir, **kwargs) -> Tuple[Params, ModelConfig]:
  """Dispatch on config.json's model_type ('llama' | 'gemma')."""
  root, _ = _locate(path_or_dir)
  with open(os.path.join(root, "config.json")) as f:
    model_type = json.load(f).get("model_type")
  importers = {"llama": import_llama, "gemma": import_gemma}
  if model_type not in importers:
    raise ValueError(f"unsupported model_type {model_type!r}; supported: {sorted(importers)}")
  return importers[model_type](path_or_dir, **kwargs)


def _model_config(dims, tied, eps, act) -> ModelConfig:
  return ModelConfig(vocab_size=dims["V"], d_model=dims["d"], n_layers=dims["n"],
                     n_heads=dims["h"], head_dim=dims["l"], mlp_dim=dims["f"],
                     tie_embeddings=bool(tied), norm_eps=float(eps), rope_theta=dims["theta"],
                     mlp_activation=act, position_embedding="rope")


# ----------------------------------------------------------------------------- export
_HF_ACTS = {"silu": "silu", "gelu": "gelu_pytorch_tanh", "relu": "relu"}


def _cfg(config, key):
  return config[key] if isinstance(config, Mapping) else getattr(config, key)


def export_llama(params: Params, config, out_dir, *, max_position_embeddings: int = 2048) -> str:
  """Inverse of import_llama: writes out_dir/{model.safetensors, config.json} (float32, MHA).

  config: ModelConfig or dict with its fields. Tied models are written tied with the inverse
  of tied_mode='rescale' (E / sqrt(d), out and wo / sqrt(d), eps / d), so the HF forward equals
  ours. Each file is written to a temp file and os.replace'd; stale shards are not removed.
  """
  d, n, h, l, f, V = (int(_cfg(config, key)) for key in
                      ("d_model", "n_layers", "n_heads", "head_dim", "mlp_dim", "vocab_size"))
  tied = bool(_cfg(config, "tie_embeddings"))
  pos = _cfg(config, "position_embedding") if not isinstance(config, Mapping) else config.get(
      "position_embedding", "rope")
  if pos != "rope":
    raise ValueError(f"unsupported config: position_embedding={pos!r} (LLaMA uses rope)")
  act = _cfg(config, "mlp_activation")
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

  eps = float(_cfg(config, "norm_eps"))
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
      "rms_norm_eps": eps, "rope_theta": float(_cfg(config, "rope_theta")), "rope_scaling": None,
      "tie_word_embeddings": tied, "hidden_act": _HF_ACTS[act], "attention_bias": False,
      "mlp_bias": False, "max_position_embeddings": int(max_position_embeddings),
      "torch_dtype": "float32"}

  out_dir = os.fspath(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  tensors = {name: np.ascontiguousarray(value, dtype=np.float32) for name, value in tensors.items()}
  _atomic_write(out_dir, _SINGLE, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
  _atomic_write(out_dir, "config.json",
                lambda tmp: _write_text(tmp, json.dumps(hf_config, indent=2, sort_keys=True) + "\n"))
  return out_dir


def _write_text(path, text):
  with open(path, "w") as f:
    f.write(text)


def _atomic_write(out_dir, name, write):
  fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=out_dir)
  os.close(fd)
  try:
    write(tmp)
    os.replace(tmp, os.path.join(out_dir, name))
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
