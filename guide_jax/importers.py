"""Teachers from Hugging Face safetensors checkpoints (Llama 1-3.x, Mistral, Qwen 2/2.5, Qwen 3,
Gemma 1, Gemma 2, Gemma 3 text) and export back to Llama.

Files are read from disk (no hub access): `model.safetensors`, or sharded
`model-0000i-of-0000n.safetensors` + `model.safetensors.index.json`, next to `config.json`.
Notation: d hidden, h query heads, k kv heads, l head_dim, f mlp, V vocab.

Every tensor is a pure relayout of one checkpoint tensor (a copy or a transpose), so params keep
the checkpoint's dtype bit for bit (bf16 stays bf16: ModelConfig.param_dtype is the checkpoint's)
and each tensor is read once. With a mesh, each leaf is built on its target sharding
(guide_jax.sharding.param_shardings) by jax.make_array_from_callback: every process reads only
the slices its devices hold (safetensors get_slice), each slice once. The family conventions
live in ModelConfig options instead of rescaled weights (docs/gqa_and_families.md):
  * grouped-query attention kept (n_kv_heads = num_key_value_heads: key/value [d, k*l]);
  * query_pre_attn_scalar = head_dim (Gemma 2/3: theirs): the query kernel is q_proj.T unscaled;
  * embedding_style 'hf' (tied logits y E^T) or 'gemma' (x0 = sqrt(d) E[tok]); norm_offset 1 for
    Gemma's (1 + w) norms; biases, q/k norms, post-norms, soft-caps, sliding windows (layer_pattern
    from transformers' layer_types) and Gemma 3's local RoPE theta as the families define them.

config.json is read as transformers 5.x reads it (checked against transformers' PyTorch forwards in
tests/test_hf_*.py, run by tests/hf_tier.sh), in both formats:
  * RoPE: 5.x writes `rope_parameters` {rope_type, rope_theta, factor, ...} (Gemma 3: one per
    layer type); 4.x writes a top-level `rope_theta` and `rope_scaling`. As transformers 5.x does:
    the parameters are `rope_scaling or rope_parameters`; theta is theirs, else the top-level
    `rope_theta`, else the family's default; the type is `rope_type`, else `type`, else 'default'.
    Types 'default', 'linear' and 'llama3' are implemented.
  * Keys a config omits take the family config class's defaults (_FAMILIES).
  * Activation: ACT2FN of `hidden_act` (Llama, Mistral, Qwen, Gemma 1) or `hidden_activation`
    (Gemma 2/3); a Gemma 1 hidden_act 'gelu' is read as 'gelu_pytorch_tanh', as GemmaConfig 5.x does.
  * Tied output layer as transformers 5.x decides: tie_word_embeddings true ties, unless the
    checkpoint also holds an lm_head.weight that differs from the embedding: then it is used, untied.
  * Anything the model cannot represent (MLP biases, other RoPE types, partial rotary,
    bidirectional attention, quantized or integer weights, unknown activations, unknown layer
    types) is refused with one ValueError naming every such setting, before any tensor is read.

Conventions (checked against transformers' modeling_{llama,mistral,qwen2,qwen3,gemma,gemma2,gemma3}):
  * nn.Linear stores [out, in]: q_proj [h*l, d] -> query kernel [d, h*l] = W.T (heads-major);
    k/v [k*l, d] -> [d, k*l]; o_proj [d, h*l] -> out [h*l, d]; biases as they are.
  * HF Llama checkpoints are already in the rotate_half RoPE layout (their conversion script
    permutes Meta's q/k), so q/k are copied without any permutation.
  * gate_proj -> wi_0 (activated), up_proj -> wi_1, down_proj -> wo; input_layernorm ->
    pre_self_attention_layer_norm; post_attention_layernorm -> pre_mlp_layer_norm (Llama, Mistral,
    Qwen, Gemma 1) or post_self_attention_layer_norm (Gemma 2/3, whose pre_feedforward_layernorm ->
    pre_mlp_layer_norm, post_feedforward_layernorm -> post_mlp_layer_norm); q_norm/k_norm ->
    self_attention/{query,key}_norm; model.norm -> decoder_norm; lm_head [V, d] -> logits_dense [d, V].
  * Gemma multiplies the embeddings by sqrt(d) rounded to the activation dtype (45.25 for d=2048
    in bf16); ours uses the float32 value, i.e. transformers' float32 forward.
"""
import os
from typing import Any, Dict, List, Mapping, Optional, Tuple

import jax
import numpy as np
from safetensors import SafetensorError, safe_open

from guide_jax import fileio
from guide_jax.config import ModelConfig

Params = Dict[str, Any]
TIED_MODES = ("keep", "untie")
_INDEX = "model.safetensors.index.json"
_SINGLE = "model.safetensors"
# HF hidden_act (transformers' ACT2FN) -> our mlp_activation.
_ACTS = {"silu": "silu", "swish": "silu", "gelu": "gelu_exact", "gelu_pytorch_tanh": "gelu",
         "gelu_new": "gelu", "relu": "relu"}
_ROPE_TYPES = ("default", "linear", "llama3")
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
_FLOAT_DTYPES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}
_LAYER_TYPES = {"full_attention": "G", "sliding_attention": "L"}

# Each family: its config class's defaults (transformers 5.24) for keys a config.json may omit, and
# how its modeling file uses them. None for kv heads / head_dim: = heads / d // h.
_COMMON = {"num_key_value_heads": None, "head_dim": None, "rms_norm_eps": 1e-6,
           "tie_word_embeddings": False, "max_position_embeddings": 2048, "hidden_act": "silu"}
_FAMILIES = {
    "llama": dict(defaults={**_COMMON, "attention_bias": False, "mlp_bias": False}, bias="attention_bias"),
    "mistral": dict(defaults={**_COMMON, "num_key_value_heads": 8, "max_position_embeddings": 4096 * 32,
                              "sliding_window": 4096}, sliding="all"),
    "qwen2": dict(defaults={**_COMMON, "num_key_value_heads": 32, "max_position_embeddings": 32768,
                            "use_sliding_window": False, "sliding_window": 4096, "max_window_layers": 28},
                  bias="qkv", sliding="qwen"),
    "qwen3": dict(defaults={**_COMMON, "num_key_value_heads": 32, "head_dim": 128, "max_position_embeddings": 32768,
                            "attention_bias": False, "use_sliding_window": False, "sliding_window": 4096,
                            "max_window_layers": 28}, bias="attention_bias", sliding="qwen", qk_norm=True),
    "gemma": dict(defaults={**_COMMON, "num_key_value_heads": 16, "head_dim": 256, "hidden_act": "gelu_pytorch_tanh",
                            "tie_word_embeddings": True, "max_position_embeddings": 8192}, gemma=True),
    "gemma2": dict(defaults={**_COMMON, "num_key_value_heads": 4, "head_dim": 256,
                             "hidden_activation": "gelu_pytorch_tanh", "tie_word_embeddings": True,
                             "max_position_embeddings": 8192, "attention_bias": False, "query_pre_attn_scalar": 256,
                             "sliding_window": 4096, "final_logit_softcapping": 30.0, "attn_logit_softcapping": 50.0},
                   gemma=True, post_norms=True, bias="attention_bias", sliding="gemma2", act="hidden_activation"),
    "gemma3_text": dict(defaults={**_COMMON, "num_key_value_heads": 4, "head_dim": 256,
                                  "hidden_activation": "gelu_pytorch_tanh", "tie_word_embeddings": True,
                                  "max_position_embeddings": 131072, "attention_bias": False,
                                  "query_pre_attn_scalar": 256, "sliding_window": 4096,
                                  "final_logit_softcapping": None, "attn_logit_softcapping": None},
                        gemma=True, post_norms=True, qk_norm=True, bias="attention_bias", sliding="gemma3",
                        act="hidden_activation", theta={"global": 1_000_000.0, "local": 10_000.0}),
}
SUPPORTED = tuple(sorted(_FAMILIES))


# ----------------------------------------------------------------------------- reading files
def _safe_open(file: str):
  try:
    return safe_open(file, framework="np")
  except (SafetensorError, OSError) as e:
    raise ValueError(f"unreadable safetensors file {file} (truncated or corrupt?): {e}") from e


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
  return root, files


def _read_index(index_path: str) -> Dict[str, str]:
  weight_map = fileio.read_json_object(index_path, "checkpoint index").get("weight_map")
  if not isinstance(weight_map, dict) or not weight_map:
    raise ValueError(f"{index_path} has no 'weight_map'")
  root = os.path.dirname(index_path)
  return {name: os.path.join(root, file) for name, file in weight_map.items()}


def _headers(files: Mapping[Optional[str], str]) -> Dict[str, Tuple[str, Tuple[int, ...], str]]:
  """{tensor name: (file, shape, safetensors dtype)} from the headers only (no data read)."""
  out = {}
  for file in sorted(set(files.values())):
    with _safe_open(file) as f:
      for key in f.keys():
        sl = f.get_slice(key)
        out[key] = (file, tuple(sl.get_shape()), sl.get_dtype())
  if None not in files:
    for name, file in files.items():
      if name not in out or out[name][0] != file:
        raise ValueError(f"index maps tensor {name} to {file}, which does not contain it")
  return out


def _read(file: str, name: str, index=None) -> np.ndarray:
  """One tensor (or the slice `index` of it) as numpy in its stored dtype; the file is mapped only
  for this read (so host memory never holds a whole shard's mapping next to the arrays)."""
  try:
    with _safe_open(file) as f:
      sl = f.get_slice(name)
      return np.array(sl[index] if index is not None else sl[:], copy=True)  # not a view of the mapping
  except SafetensorError as e:
    raise ValueError(f"cannot read tensor {name} from {file} (truncated or corrupt?): {e}") from e


# ----------------------------------------------------------------------------- HF config
def read_config(hf: Mapping[str, Any]) -> Tuple[str, ModelConfig, Dict[str, Any]]:
  """config.json (4.x or 5.x format) -> (family, ModelConfig fields, dims {d, h, k, l, f, V, n}).

  Follows the family's transformers config class (module docstring). Every unsupported setting is
  collected and refused in one ValueError. param_dtype is filled in from the tensors later.
  """
  model_type = hf.get("model_type")
  if model_type == "gemma3":
    raise ValueError("unsupported model_type 'gemma3' (the multimodal Gemma 3): import the text model "
                     "(model_type 'gemma3_text', Gemma3ForCausalLM)")
  if model_type not in _FAMILIES:
    raise ValueError(f"unsupported model_type {model_type!r}; supported: {', '.join(SUPPORTED)}")
  fam = _FAMILIES[model_type]
  required = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
  missing = [key for key in required if hf.get(key) is None]
  if missing:
    raise ValueError(f"config.json is missing {', '.join(missing)}")
  get = lambda key: hf[key] if key in hf and (hf[key] is not None or key not in fam["defaults"]) \
      else fam["defaults"].get(key)
  d, h, n = int(hf["hidden_size"]), int(hf["num_attention_heads"]), int(hf["num_hidden_layers"])
  k = int(get("num_key_value_heads") or h)
  l = int(get("head_dim") or d // h)
  problems: List[str] = []
  if h % k:
    problems.append(f"num_attention_heads={h} is not a multiple of num_key_value_heads={k}")
  if hf.get("mlp_bias"):
    problems.append("mlp_bias=true (our MLP has no biases)")
  if fam.get("bias") != "attention_bias" and hf.get("attention_bias"):
    problems.append(f"attention_bias=true ({model_type} has no such option)")
  if hf.get("use_bidirectional_attention"):
    problems.append("use_bidirectional_attention=true (our attention is causal)")
  if hf.get("quantization_config") is not None:
    problems.append("quantization_config (only float checkpoints are read)")
  act_key = fam.get("act", "hidden_act")
  act = get(act_key)
  if model_type == "gemma" and act == "gelu":
    act = "gelu_pytorch_tanh"  # GemmaConfig 5.x: the legacy value means the tanh form
  if act not in _ACTS:
    problems.append(f"{act_key}={act!r} (supported: {sorted(_ACTS)})")
  fields: Dict[str, Any] = dict(
      vocab_size=int(hf["vocab_size"]), d_model=d, n_layers=n, n_heads=h, head_dim=l,
      mlp_dim=int(hf["intermediate_size"]), tie_embeddings=bool(get("tie_word_embeddings")),
      norm_eps=float(get("rms_norm_eps")), mlp_activation=_ACTS.get(act, "silu"), position_embedding="rope",
      n_kv_heads=None if k == h else k, embedding_style="gemma" if fam.get("gemma") else "hf",
      norm_offset=1.0 if fam.get("gemma") else 0.0, post_norms=bool(fam.get("post_norms")),
      qk_norm=bool(fam.get("qk_norm")),
      query_pre_attn_scalar=float(get("query_pre_attn_scalar") or l) if "query_pre_attn_scalar" in fam["defaults"]
      else float(l))
  if fam.get("bias") == "qkv":
    fields["qkv_bias"] = True
  elif fam.get("bias") == "attention_bias" and get("attention_bias"):
    fields.update(qkv_bias=True, out_bias=True)
  for ours, theirs in (("attn_logit_softcap", "attn_logit_softcapping"),
                       ("final_logit_softcap", "final_logit_softcapping")):
    if theirs in fam["defaults"] and get(theirs) is not None:
      fields[ours] = float(get(theirs))
  pattern, window = _layer_pattern(hf, fam, get, n, problems)
  if window is not None:
    fields.update(layer_pattern=pattern, sliding_window=window)
  max_positions = get("max_position_embeddings")
  rope = hf.get("rope_scaling") or hf.get("rope_parameters") or {}
  if fam.get("theta") and isinstance(rope, Mapping) and "full_attention" in rope:  # Gemma 3, 5.x
    fields.update(_read_rope(rope.get("full_attention") or {}, hf, max_positions, problems, fam["theta"]["global"]))
    local = rope.get("sliding_attention") or {}
    local_theta = local.get("rope_theta", fam["theta"]["local"])
    if local.get("rope_type", "default") != "default":
      problems.append(f"sliding_attention rope_type={local.get('rope_type')!r} (local layers: 'default' only)")
  elif fam.get("theta"):  # Gemma 3, 4.x: rope_theta + rope_local_base_freq (+ rope_scaling for global)
    fields.update(_read_rope(rope, hf, max_positions, problems, fam["theta"]["global"]))
    local_theta = hf.get("rope_local_base_freq", fam["theta"]["local"])
  else:
    fields.update(_read_rope(rope, hf, max_positions, problems, 10000.0))
    local_theta = None
  if local_theta is not None and "L" in fields.get("layer_pattern", ""):
    fields["rope_local_theta"] = float(local_theta)
  if problems:
    raise ValueError("unsupported config.json: " + "; ".join(problems))
  return model_type, fields, dict(d=d, h=h, k=k, l=l, f=fields["mlp_dim"], V=fields["vocab_size"], n=n)


def _layer_pattern(hf, fam, get, n: int, problems: List[str]):
  """(layer_pattern, sliding_window) as the family's modeling code applies windows; (.., None): none."""
  kind = fam.get("sliding")
  if kind is None:
    return "", None
  window = get("sliding_window")
  if kind == "all":  # Mistral: every layer, whenever sliding_window is set (layer_types ignored)
    return ("L", int(window)) if window is not None else ("", None)
  if kind == "qwen" and not get("use_sliding_window"):
    window = None  # Qwen2/3Config: sliding_window = sliding_window if use_sliding_window else None
  types = hf.get("layer_types")
  if types is None:
    if kind == "qwen":
      types = ["sliding_attention" if window is not None and i >= get("max_window_layers") else "full_attention"
               for i in range(n)]
    else:
      period = 2 if kind == "gemma2" else int(hf.get("sliding_window_pattern", 6))
      types = ["sliding_attention" if (i + 1) % period else "full_attention" for i in range(n)]
  unknown = sorted(set(types) - set(_LAYER_TYPES))
  if unknown or len(types) != n:
    problems.append(f"layer_types={types!r} (need {n} of {sorted(_LAYER_TYPES)})")
    return "", None
  pattern = "".join(_LAYER_TYPES[t] for t in types)
  if window is None or "L" not in pattern:
    return "", None
  return pattern, int(window)


def _read_rope(params, hf: Mapping[str, Any], max_positions, problems: List[str], default_theta: float):
  """RoPE settings (4.x `rope_theta` + `rope_scaling`, or 5.x `rope_parameters`) -> ModelConfig fields
  {rope_theta, rope_scaling, ...}; unsupported settings go to `problems`."""
  if not isinstance(params, Mapping):
    problems.append(f"rope parameters {params!r} (expected a dict)")
    return {}
  theta = params.get("rope_theta", hf.get("rope_theta"))
  fields: Dict[str, Any] = {"rope_theta": default_theta if theta is None else float(theta)}
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


# ----------------------------------------------------------------------------- tensor layout
def _layout(config: ModelConfig, family: str, untied: bool) -> Dict[Tuple[str, ...], Tuple[str, bool]]:
  """Our leaf path -> (HF tensor name, transposed?) for every leaf of config's tree."""
  gemma2 = _FAMILIES[family].get("post_norms", False)
  norms = {"input_layernorm": "pre_self_attention_layer_norm"}
  if gemma2:
    norms.update(post_attention_layernorm="post_self_attention_layer_norm",
                 pre_feedforward_layernorm="pre_mlp_layer_norm",
                 post_feedforward_layernorm="post_mlp_layer_norm")
  else:
    norms["post_attention_layernorm"] = "pre_mlp_layer_norm"
  out = {("token_embedder", "embedding"): ("model.embed_tokens.weight", False),
         ("decoder_norm", "scale"): ("model.norm.weight", False)}
  for i in range(config.n_layers):
    p, lay = f"model.layers.{i}.", f"layers_{i}"
    for theirs, ours in norms.items():
      out[(lay, ours, "scale")] = (p + theirs + ".weight", False)
    for ours, theirs in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj"), ("out", "o_proj")):
      out[(lay, "self_attention", ours, "kernel")] = (p + f"self_attn.{theirs}.weight", True)
      if config.qkv_bias and ours != "out" or config.out_bias and ours == "out":
        out[(lay, "self_attention", ours, "bias")] = (p + f"self_attn.{theirs}.bias", False)
    if config.qk_norm:
      out[(lay, "self_attention", "query_norm", "scale")] = (p + "self_attn.q_norm.weight", False)
      out[(lay, "self_attention", "key_norm", "scale")] = (p + "self_attn.k_norm.weight", False)
    for ours, theirs in (("wi_0", "gate_proj"), ("wi_1", "up_proj"), ("wo", "down_proj")):
      out[(lay, "mlp", ours, "kernel")] = (p + f"mlp.{theirs}.weight", True)
  if untied:
    out[("logits_dense", "kernel")] = ("lm_head.weight", True)
  return out


def _check_tensors(headers, layout, shapes, quantized: bool) -> None:
  """Names, shapes and dtypes of the checkpoint against the layout (headers only), one error each."""
  want = {name: shapes[path][::-1] if t else shapes[path] for path, (name, t) in layout.items()}
  missing = sorted(set(want) - set(headers))
  if missing:
    more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
    raise ValueError(f"checkpoint is missing tensor {', '.join(missing[:3])}{more}")
  allowed = set(want) | {"lm_head.weight"}
  unexpected = sorted(name for name in set(headers) - allowed if not name.endswith(_IGNORED_SUFFIXES))
  if unexpected:
    raise ValueError(f"unsupported checkpoint: unexpected tensor {', '.join(unexpected[:3])}")
  for name, shape in want.items():
    if headers[name][1] != shape:
      raise ValueError(f"tensor {name} has shape {headers[name][1]}, config implies {shape}")
  not_float = sorted(name for name in want if headers[name][2] not in _FLOAT_DTYPES)
  if not_float:
    hint = "" if quantized else " without a quantization_config (int8 weights are not float weights)"
    raise ValueError(f"unsupported checkpoint: tensor {not_float[0]} has dtype {headers[not_float[0]][2]}{hint}; "
                     "only float checkpoints (BF16, F16, F32) are read")


def _tied(config: ModelConfig, headers) -> bool:
  """transformers 5.x: tie_word_embeddings ties unless lm_head.weight is present and differs from
  the embedding (compared row block by row block, so no second [V, d] copy is ever held)."""
  if not config.tie_embeddings or "lm_head.weight" not in headers:
    return config.tie_embeddings
  (e_file, shape, _), (h_file, h_shape, _) = headers["model.embed_tokens.weight"], headers["lm_head.weight"]
  if h_shape != shape:
    return False
  rows = max(1, (64 << 20) // max(1, shape[1] * 4))
  for start in range(0, shape[0], rows):
    block = slice(start, min(start + rows, shape[0]))
    if not np.array_equal(_read(e_file, "model.embed_tokens.weight", (block,)),
                          _read(h_file, "lm_head.weight", (block,))):
      return False
  return True


def _aligned(shape, dtype, align: int = 64) -> np.ndarray:
  """An uninitialized C-contiguous array whose data is `align`-byte aligned (jax's CPU client then
  adopts it without a copy)."""
  nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
  raw = np.empty(nbytes + align, np.uint8)
  offset = (-raw.ctypes.data) % align
  return raw[offset:offset + nbytes].view(dtype).reshape(shape)


def _read_leaf(file: str, name: str, transposed: bool, dtype, index) -> np.ndarray:
  """Our leaf's slice `index` (a tuple of slices; transposed: of tensor.T), read in row blocks of
  ~16 MB straight into one aligned array of `dtype`: no whole-tensor temporary besides the result."""
  full = None
  try:
    with _safe_open(file) as f:
      sl = f.get_slice(name)
      full = tuple(sl.get_shape())
      ours = full[::-1] if transposed else full
      ranges = [range(*s.indices(n)) for s, n in zip(index, ours)]
      out = _aligned(tuple(len(r) for r in ranges), dtype)
      if out.size == 0:
        return out
      lead = ranges[1] if transposed else ranges[0]  # the checkpoint tensor's row axis
      row_bytes = max(1, out.size // len(lead)) * max(4, out.itemsize)
      step = max(1, (16 << 20) // row_bytes)
      for start in range(0, len(lead), step):
        rows = slice(lead.start + start, lead.start + min(start + step, len(lead)))
        if transposed:
          block = np.asarray(sl[rows, slice(ranges[0].start, ranges[0].stop)]).astype(dtype, copy=False)
          bits = np.dtype(f"u{block.dtype.itemsize}")  # bf16 would be copied elementwise by numpy
          out.view(bits)[:, start:start + block.shape[0]] = block.view(bits).T
        else:
          rest = tuple(slice(r.start, r.stop) for r in ranges[1:])
          out[start:start + (rows.stop - rows.start)] = np.asarray(sl[(rows,) + rest]).astype(dtype, copy=False)
      return out
  except SafetensorError as e:
    raise ValueError(f"cannot read tensor {name} from {file} (truncated or corrupt?): {e}") from e


def _build(file: str, name: str, transposed: bool, dtype, shape, sharding):
  """One leaf: numpy (sharding None) or a global jax.Array whose addressable shards are read as
  slices of the tensor, each distinct slice once."""
  if sharding is None:
    return _read_leaf(file, name, transposed, dtype, (slice(None),) * len(shape))
  cache: Dict[Any, np.ndarray] = {}

  def callback(index):
    key = tuple((s.start, s.stop, s.step) for s in index)
    if key not in cache:
      cache[key] = _read_leaf(file, name, transposed, dtype, tuple(index))
    return cache[key]
  return jax.make_array_from_callback(tuple(shape), sharding, callback)


def _plan(path_or_dir, tied_mode: str = "keep"):
  """Everything load() decides from config.json and the safetensors headers (no tensor read):
  (root, ModelConfig, layout {param path: (tensor name, transposed)}, shapes, headers)."""
  from guide_jax import model  # pylint: disable=g-import-not-at-top
  from guide_jax.transforms import validate  # pylint: disable=g-import-not-at-top
  if tied_mode not in TIED_MODES:
    raise ValueError(f"tied_mode must be one of {TIED_MODES}, got {tied_mode!r}")
  root, files = _locate(path_or_dir)
  hf = fileio.read_json_object(os.path.join(root, "config.json"), "config.json")
  family, fields, _ = read_config(hf)
  headers = _headers(files)
  embed = headers.get("model.embed_tokens.weight")
  fields["param_dtype"] = _FLOAT_DTYPES.get(embed[2], "float32") if embed else "float32"
  try:
    config = ModelConfig(**fields)
  except ValueError as e:
    raise ValueError(f"unsupported config.json: {e}") from e
  shapes = {path: leaf.shape for path, leaf in validate.flatten_paths(model.param_shapes(config)["decoder"])}
  provisional = _layout(config, family, untied=not config.tie_embeddings)
  _check_tensors(headers, provisional, shapes, hf.get("quantization_config") is not None)
  tied = _tied(config, headers)
  if tied != config.tie_embeddings:  # a present, different lm_head: used, untied (transformers 5.x)
    config = config.replace(tie_embeddings=False)
    shapes = {path: leaf.shape for path, leaf in validate.flatten_paths(model.param_shapes(config)["decoder"])}
  layout = _layout(config, family, untied=not config.tie_embeddings)
  untie = config.tie_embeddings and tied_mode == "untie"
  if untie:
    config = config.replace(tie_embeddings=False)
    layout[("logits_dense", "kernel")] = ("model.embed_tokens.weight", True)
    shapes[("logits_dense", "kernel")] = shapes[("token_embedder", "embedding")][::-1]
  return root, config, layout, shapes, headers


def describe(path_or_dir) -> ModelConfig:
  """The ModelConfig load() gives (tied as transformers 5.x decides), from metadata only: every
  check load() makes before reading a tensor."""
  return _plan(path_or_dir)[1]


def load(path_or_dir, *, mesh=None, tied_mode: str = "keep", check_finite: bool = True
         ) -> Tuple[Params, ModelConfig]:
  """Hugging Face checkpoint -> (params {'decoder': ...}, ModelConfig), the family from model_type.

  mesh: None -> numpy arrays; a Mesh -> jax.Arrays placed on sharding.param_shardings(config, mesh),
    each process reading only its devices' slices. Arrays keep the checkpoint's dtype
    (ModelConfig.param_dtype; a tensor stored in another float dtype than the embedding is cast to it).
  tied_mode (tied checkpoints only): 'keep' the output layer tied (y E^T), or 'untie' it (E^T
    copied into logits_dense).
  check_finite: the teacher's one finiteness pass (every leaf isfinite, on device), here where it
    is loaded; the transforms do not repeat it.
  Everything that can be checked from config.json and the safetensors headers is checked first.
  """
  from guide_jax import model, sharding as sharding_lib  # pylint: disable=g-import-not-at-top
  from guide_jax.transforms import validate  # pylint: disable=g-import-not-at-top
  root, config, layout, shapes, headers = _plan(path_or_dir, tied_mode)
  dtype = np.dtype(model._dtype(config.param_dtype))
  target = None
  if mesh is not None:
    target = dict(validate.flatten_paths(sharding_lib.param_shardings(config, mesh)["decoder"]))
  decoder: Dict[str, Any] = {}
  for path, (name, transposed) in layout.items():
    node = decoder
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = _build(headers[name][0], name, transposed, dtype, shapes[path],
                            None if target is None else target[path])
  params = {"decoder": decoder}
  if check_finite:
    validate.check_finite(params, f"teacher params ({root})")
  return params, config


def import_hf(path_or_dir, **kwargs) -> Tuple[Params, ModelConfig]:
  """load() for any supported model_type (llama, mistral, qwen2, qwen3, gemma, gemma2, gemma3_text)."""
  return load(path_or_dir, **kwargs)


def _import_family(path_or_dir, families, **kwargs):
  root, _ = _locate(path_or_dir)
  model_type = fileio.read_json_object(os.path.join(root, "config.json"), "config.json").get("model_type")
  if model_type not in families:
    raise ValueError(f"unsupported model_type {model_type!r} in config.json; expected {families[0]!r}")
  return load(path_or_dir, **kwargs)


def import_llama(path_or_dir, **kwargs) -> Tuple[Params, ModelConfig]:
  """load() of a Llama checkpoint (model_type 'llama' only)."""
  return _import_family(path_or_dir, ("llama",), **kwargs)


def import_gemma(path_or_dir, **kwargs) -> Tuple[Params, ModelConfig]:
  """load() of a Gemma 1 checkpoint (model_type 'gemma' only)."""
  return _import_family(path_or_dir, ("gemma",), **kwargs)


# ----------------------------------------------------------------------------- export
def export_llama(params: Params, config, out_dir, *, max_position_embeddings: int = 2048,
                 overwrite: bool = False) -> str:
  """A Llama-layout model as out_dir/{model.safetensors, config.json} (float32; GQA kept), with no
  teacher directory to take config.json and tokenizer files from: guide_jax.hf_export.write_hf (the
  one writer) from a base Llama config.json. An existing out_dir is refused unless overwrite, which
  replaces the whole directory (files written there before, e.g. a tokenizer, go with it).

  config: ModelConfig or a dict of its fields. What a llama config.json cannot express (q/k norms,
  post-norms, soft-caps, sliding windows, Gemma's embedding, biases on only some projections) is
  refused; every convention of ours Llama computes differently (t5x's tied output, the attention
  scale, norm offsets) is folded into the weights exactly (hf_export's docstring). config.json uses
  the 4.x keys `rope_theta` and `rope_scaling`, which transformers 5.x reads too.
  """
  from guide_jax import hf_export  # pylint: disable=g-import-not-at-top (huggingface_hub)

  if isinstance(config, Mapping):
    try:
      config = ModelConfig(**config)
    except TypeError as e:
      raise ValueError(f"config is not a ModelConfig's fields: {e}") from e
  template = {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
              "max_position_embeddings": int(max_position_embeddings), "torch_dtype": "float32"}
  return hf_export.write_hf(params, config, None, out_dir, dtype="float32", overwrite=overwrite, template=template)
