"""A student written back as a Hugging Face model of its teacher's family.

    write_hf(params, config, teacher_dir, out_dir, dtype="bfloat16", max_shard_size="5GB")
    write_hf(params, config, None, out_dir, template={"model_type": "llama", ...})  # no teacher
                                                                                      # (importers.export_llama)
    check_representable(config, family)   # ValueError naming every setting the family lacks

out_dir gets what `transformers.AutoModelForCausalLM.from_pretrained` and
`AutoTokenizer.from_pretrained` read:
  config.json                    the teacher's config.json with the student's shape (hidden size,
                                 layers, heads, kv heads, head_dim, mlp width, norm eps, tying,
                                 RoPE and its scaling, dtype); every other key (architectures,
                                 bos/eos ids, max positions, ...) stays the teacher's
  model.safetensors              or model-0000i-of-0000n.safetensors + model.safetensors.index.json
                                 (huggingface_hub's sharding, max_shard_size per file), bf16 or f32
  tokenizer files, generation_config.json   copied from the teacher (the student shares its vocabulary)
The directory is built next to out_dir and renamed into place, so it is complete or absent; every
check (family, representable config, params tree, dtype, teacher files, out_dir free) runs first.

Families (the teacher's config.json model_type): 'llama', 'qwen3', 'gemma2'. Kernels are transposed
to nn.Linear's [out, in] (the inverse of guide_jax.importers) and every convention of ours that the
family computes differently is folded into the weights exactly, so transformers' float32 forward
equals guide_jax's: the attention scale (a 1/sqrt(l) folded into our query kernel, or our
query_pre_attn_scalar, becomes the family's: into q_proj, or into q_norm's weight when queries are
normalized; Gemma 2 writes its query_pre_attn_scalar), RMSNorm offsets (w_hf = scale + offset_ours -
offset_family), and t5x's tied output (y E^T / sqrt(d)) by scaling the residual stream by 1/sqrt(d)
(embedding, out / wo kernels and out bias / sqrt(d), eps / d; every RMSNorm output is unchanged).
What the family cannot compute (e.g. relative position biases, q/k norms in Llama, a Gemma 2
without post-norms, sliding windows outside Gemma 2) is refused by check_representable.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
from typing import Dict, Mapping, Optional

import numpy as np

from guide_jax import fileio
from guide_jax.config import ModelConfig
from guide_jax.data import hf_tokenizer

DTYPES = ("bfloat16", "float32")
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
GENERATION_CONFIG = "generation_config.json"
_HF_ACTS = {"silu": "silu", "gelu": "gelu_pytorch_tanh", "gelu_exact": "gelu", "relu": "relu"}
# ModelConfig fields that change only how guide_jax computes, not what the model is.
_RUNTIME_FIELDS = ("dtype", "param_dtype", "remat", "attention_impl")


@dataclasses.dataclass(frozen=True)
class _Family:
  """What a family's modeling file computes, as ModelConfig options.

  norm_offset: its RMSNorm multiplies by (norm_offset + w) (Gemma 1: w stored as scale - 1).
  gemma_embedding: x0 = sqrt(d) E[tok] (our embedding_style 'gemma'), else x0 = E[tok].
  qk_norm / post_norms: always present in the family (True) or never (False).
  own_attn_scale: config.json carries query_pre_attn_scalar (Gemma 2), else the scale is head_dim^-1/2.
  fields: the ModelConfig options it can express beyond the common shape/RoPE ones.
  """
  norm_offset: float = 0.0
  gemma_embedding: bool = False
  qk_norm: bool = False
  post_norms: bool = False
  own_attn_scale: bool = False
  fields: tuple = ()
  act_key: str = "hidden_act"


_FAMILIES = {
    "llama": _Family(),
    "qwen3": _Family(qk_norm=True),
    "gemma2": _Family(norm_offset=1.0, gemma_embedding=True, post_norms=True, own_attn_scale=True,
                      fields=("attn_logit_softcap", "final_logit_softcap", "layer_pattern", "sliding_window"),
                      act_key="hidden_activation"),
}
FAMILIES = tuple(sorted(_FAMILIES))
# Handled by every family's writer (shape, RoPE, tying, the conventions folded into the weights).
_COMMON_FIELDS = ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "mlp_dim",
                  "tie_embeddings", "position_embedding", "rope_theta", "mlp_activation", "norm_eps",
                  "rope_scaling", "rope_scaling_factor", "rope_low_freq_factor", "rope_high_freq_factor",
                  "rope_original_max_positions", "qkv_bias", "out_bias", "qk_norm", "post_norms",
                  "norm_offset", "query_pre_attn_scalar", "embedding_style")


def check_representable(config: ModelConfig, family: str) -> None:
  """Raises ValueError naming every setting of `config` a `family` config.json cannot express."""
  if family not in _FAMILIES:
    raise ValueError(f"cannot write a {family!r} model: supported families {FAMILIES}")
  fam = _FAMILIES[family]
  problems = []
  for field in dataclasses.fields(ModelConfig):
    if field.name in _COMMON_FIELDS + fam.fields + _RUNTIME_FIELDS:
      continue
    if getattr(config, field.name) != field.default:
      problems.append(f"{field.name}={getattr(config, field.name)!r}")
  if config.position_embedding != "rope":
    problems.append(f"position_embedding={config.position_embedding!r} ({family} uses RoPE)")
  if config.mlp_activation not in _HF_ACTS:
    problems.append(f"mlp_activation={config.mlp_activation!r}")
  if config.qkv_bias != config.out_bias:
    problems.append(f"qkv_bias={config.qkv_bias} with out_bias={config.out_bias} ({family}'s "
                    "attention_bias is on all four projections or none)")
  for name in ("qk_norm", "post_norms"):
    if getattr(config, name) != getattr(fam, name):
      problems.append(f"{name}={getattr(config, name)} ({family} {'always has' if getattr(fam, name) else 'has no'} them)")
  if fam.gemma_embedding != (config.embedding_style == "gemma"):
    problems.append(f"embedding_style={config.embedding_style!r} ({family} "
                    f"{'scales' if fam.gemma_embedding else 'does not scale'} its embeddings by sqrt(d))")
  if config.embedding_style == "t5x" and config.tie_embeddings and config.post_norms:
    problems.append("embedding_style='t5x' tied with post_norms (no exact rescaling)")
  if config.qk_norm and not fam.own_attn_scale and config.query_pre_attn_scalar is None:
    problems.append("qk_norm without query_pre_attn_scalar")
  if problems:
    raise ValueError(f"a {family} config.json cannot represent this student: " + "; ".join(problems))


# ----------------------------------------------------------------------------- tensors
def _leaf(dec, keys, shape):
  node = dec
  for key in keys:
    if not isinstance(node, Mapping) or key not in node:
      raise ValueError(f"params is missing decoder/{'/'.join(keys)}")
    node = node[key]
  if tuple(node.shape) != tuple(shape):
    raise ValueError(f"decoder/{'/'.join(keys)} has shape {tuple(node.shape)}, expected {tuple(shape)}")
  return node


def _attention_factor(config: ModelConfig, fam: _Family) -> float:
  """q_hf / q_ours: ours computes logits * (1 if the scale is folded into the query kernel, else
  s^-1/2); the family computes q.k * l^-1/2 (or, with own_attn_scale, * s^-1/2 as written)."""
  if fam.own_attn_scale and _written_scalar(config) == config.query_pre_attn_scalar:
    return 1.0  # config.json gets our s
  if config.query_pre_attn_scalar is None:
    return math.sqrt(config.head_dim)
  return math.sqrt(config.head_dim / config.query_pre_attn_scalar)


def _written_scalar(config: ModelConfig) -> int:
  """Gemma 2's query_pre_attn_scalar (an int in its config class): ours when integral, else head_dim
  (the rest folded into the query kernel)."""
  s = config.query_pre_attn_scalar
  return int(s) if s is not None and float(s).is_integer() else config.head_dim


def _tensors(dec, config: ModelConfig, family: str) -> Dict[str, tuple]:
  """HF tensor name -> (its shape, a function giving it as float32 numpy); every shape of the
  params tree is checked here, nothing is computed yet."""
  fam = _FAMILIES[family]
  d, n, h, l, f, V = (config.d_model, config.n_layers, config.n_heads, config.head_dim,
                      config.mlp_dim, config.vocab_size)
  kv = config.kv_heads * l
  # t5x's tied layout (logits y E^T / sqrt(d)): the residual stream scaled by 1/sqrt(d) is exact.
  rescale = config.tie_embeddings and config.embedding_style == "t5x"
  inv = 1.0 / math.sqrt(d) if rescale else 1.0
  q_factor = _attention_factor(config, fam)
  tensors = {}

  def add(name, keys, shape, transpose=False, factor=1.0, shift=0.0):
    leaf = _leaf(dec, keys, shape)

    def value():
      x = np.asarray(leaf, dtype=np.float32)
      return np.ascontiguousarray((x.T if transpose else x) * np.float32(factor) + np.float32(shift))
    tensors[name] = (tuple(shape[::-1]) if transpose else tuple(shape), value)

  norm = lambda name, keys, size=d, factor=1.0: add(
      name, keys, (size,), factor=factor, shift=config.norm_offset * factor - fam.norm_offset)
  add("model.embed_tokens.weight", ("token_embedder", "embedding"), (V, d), factor=inv)
  for i in range(n):
    lay, p = f"layers_{i}", f"model.layers.{i}."
    att = lambda m, part="kernel": (lay, "self_attention", m, part)
    norm(p + "input_layernorm.weight", (lay, "pre_self_attention_layer_norm", "scale"))
    q_kernel = 1.0 if config.qk_norm else q_factor  # with q/k norms the factor goes on q_norm
    add(p + "self_attn.q_proj.weight", att("query"), (d, h * l), True, q_kernel)
    add(p + "self_attn.k_proj.weight", att("key"), (d, kv), True)
    add(p + "self_attn.v_proj.weight", att("value"), (d, kv), True)
    add(p + "self_attn.o_proj.weight", att("out"), (h * l, d), True, inv)
    if config.qkv_bias:
      add(p + "self_attn.q_proj.bias", att("query", "bias"), (h * l,), factor=q_kernel)
      add(p + "self_attn.k_proj.bias", att("key", "bias"), (kv,))
      add(p + "self_attn.v_proj.bias", att("value", "bias"), (kv,))
    if config.out_bias:
      add(p + "self_attn.o_proj.bias", att("out", "bias"), (d,), factor=inv)
    if config.qk_norm:
      norm(p + "self_attn.q_norm.weight", att("query_norm", "scale"), l, q_factor)
      norm(p + "self_attn.k_norm.weight", att("key_norm", "scale"), l)
    if fam.post_norms:
      norm(p + "post_attention_layernorm.weight", (lay, "post_self_attention_layer_norm", "scale"))
      norm(p + "pre_feedforward_layernorm.weight", (lay, "pre_mlp_layer_norm", "scale"))
      norm(p + "post_feedforward_layernorm.weight", (lay, "post_mlp_layer_norm", "scale"))
    else:
      norm(p + "post_attention_layernorm.weight", (lay, "pre_mlp_layer_norm", "scale"))
    add(p + "mlp.gate_proj.weight", (lay, "mlp", "wi_0", "kernel"), (d, f), True)
    add(p + "mlp.up_proj.weight", (lay, "mlp", "wi_1", "kernel"), (d, f), True)
    add(p + "mlp.down_proj.weight", (lay, "mlp", "wo", "kernel"), (f, d), True, inv)
  norm("model.norm.weight", ("decoder_norm", "scale"))
  if not config.tie_embeddings:
    add("lm_head.weight", ("logits_dense", "kernel"), (d, V), True)
  return tensors


def _rope_keys(config: ModelConfig, teacher: Mapping) -> dict:
  """The student's RoPE in the teacher's config.json format (5.x rope_parameters or 4.x keys)."""
  params = {"rope_type": "default" if config.rope_scaling == "none" else config.rope_scaling}
  if config.rope_scaling in ("linear", "llama3"):
    params["factor"] = config.rope_scaling_factor
  if config.rope_scaling == "llama3":
    params.update(low_freq_factor=config.rope_low_freq_factor,
                  high_freq_factor=config.rope_high_freq_factor,
                  original_max_position_embeddings=config.rope_original_max_positions)
  if "rope_parameters" in teacher:
    return {"rope_parameters": {**params, "rope_theta": float(config.rope_theta)}}
  return {"rope_theta": float(config.rope_theta),
          "rope_scaling": None if config.rope_scaling == "none" else params}


def _hf_config(config: ModelConfig, teacher: Mapping, family: str, dtype: str) -> dict:
  """The teacher's config.json with the student's shape and options."""
  fam = _FAMILIES[family]
  d = config.d_model
  rescale = config.tie_embeddings and config.embedding_style == "t5x"
  dropped = ("rope_parameters", "rope_scaling", "rope_theta", "original_max_position_embeddings", "layer_types",
             "torch_dtype", "dtype")
  out = {key: value for key, value in teacher.items() if key not in dropped}
  out.update(vocab_size=config.vocab_size, hidden_size=d, intermediate_size=config.mlp_dim,
             num_hidden_layers=config.n_layers, num_attention_heads=config.n_heads,
             num_key_value_heads=config.kv_heads, head_dim=config.head_dim,
             rms_norm_eps=config.norm_eps / d if rescale else config.norm_eps,
             tie_word_embeddings=config.tie_embeddings, attention_bias=config.qkv_bias,
             **{fam.act_key: _HF_ACTS[config.mlp_activation]}, **_rope_keys(config, teacher))
  if family == "llama":
    out["mlp_bias"] = False
  if family == "qwen3":
    out.update(use_sliding_window=False, layer_types=["full_attention"] * config.n_layers)
  if family == "gemma2":
    out.update(query_pre_attn_scalar=_written_scalar(config),
               attn_logit_softcapping=config.attn_logit_softcap,
               final_logit_softcapping=config.final_logit_softcap,
               layer_types=["sliding_attention" if config.layer_kind(i) == "L" else "full_attention"
                            for i in range(config.n_layers)])
    if config.sliding_window is not None:
      out["sliding_window"] = config.sliding_window
  out["torch_dtype" if "torch_dtype" in teacher else "dtype"] = dtype
  return out


# ----------------------------------------------------------------------------- writing
def _np_dtype(dtype: str):
  if dtype == "float32":
    return np.float32
  import ml_dtypes  # pylint: disable=g-import-not-at-top (a jax dependency)

  return ml_dtypes.bfloat16


def write_hf(params, config: ModelConfig, teacher_dir: Optional[str], out_dir: str, *, dtype: str = "bfloat16",
             max_shard_size="5GB", overwrite: bool = False, extra_files: Optional[Mapping[str, dict]] = None,
             template: Optional[Mapping] = None) -> str:
  """Writes the student (params {'decoder': ...}, config) as a model of teacher_dir's family.

  teacher_dir None: no teacher (importers.export_llama): config.json starts from `template` (a
  config.json dict naming model_type) and no tokenizer files are copied.
  extra_files: {name: JSON object} also written into out_dir (e.g. convert's guide_info.json).
  Returns out_dir. Raises ValueError before writing anything when a check fails.
  """
  from huggingface_hub import split_state_dict_into_shards_factory  # pylint: disable=g-import-not-at-top
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top

  if dtype not in DTYPES:
    raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
  if not isinstance(config, ModelConfig):
    raise ValueError(f"config must be a ModelConfig, got {type(config).__name__}")
  if (teacher_dir is None) == (template is None):
    raise ValueError("write_hf needs exactly one of teacher_dir and template")
  teacher = dict(template) if teacher_dir is None else fileio.read_json_object(
      os.path.join(teacher_dir, "config.json"), "the teacher's config.json")
  family = teacher.get("model_type")
  check_representable(config, family)
  dec = params.get("decoder") if isinstance(params, Mapping) else None
  if dec is None:
    raise ValueError("params has no 'decoder' subtree")
  tensors = _tensors(dec, config, family)  # checks every shape; computes nothing yet
  hf_config = _hf_config(config, teacher, family, dtype)
  out_dir = os.path.abspath(os.fspath(out_dir))
  if os.path.exists(out_dir) and not (overwrite and os.path.isdir(out_dir)):
    raise ValueError(f"output directory {out_dir} already exists" + ("" if overwrite else
                     "; pass --overwrite to replace it"))
  copies = [name for name in (*hf_tokenizer.TOKENIZER_FILES, GENERATION_CONFIG)
            if teacher_dir is not None and os.path.isfile(os.path.join(teacher_dir, name))]
  if teacher_dir is not None and not any(name in copies for name in (hf_tokenizer.TOKENIZER_JSON,
                                                                     hf_tokenizer.SENTENCEPIECE_MODEL)):
    raise ValueError(f"the teacher {teacher_dir} has no tokenizer file ({hf_tokenizer.TOKENIZER_JSON} or "
                     f"{hf_tokenizer.SENTENCEPIECE_MODEL}) to give the student")

  np_dtype = _np_dtype(dtype)
  itemsize = np.dtype(np_dtype).itemsize
  sizes = {name: int(np.prod(shape)) * itemsize for name, (shape, _) in tensors.items()}
  split = split_state_dict_into_shards_factory(
      sizes, get_storage_size=lambda size: size, max_shard_size=max_shard_size,
      filename_pattern="model{suffix}.safetensors")  # transformers' names
  parent = os.path.dirname(out_dir)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.tmp-", dir=parent)
  try:
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    for file, names in split.filename_to_tensors.items():
      shard = {name: tensors[name][1]().astype(np_dtype) for name in names}
      for name, value in shard.items():
        if not np.isfinite(value.astype(np.float32)).all():
          raise ValueError(f"student tensor {name} is not finite; nothing written")
      save_file(shard, os.path.join(tmp, file), metadata={"format": "pt"})
      del shard
    if split.is_sharded:
      _write_json(os.path.join(tmp, INDEX_FILE),
                  {"metadata": {**split.metadata, "total_size": sum(sizes.values())},
                   "weight_map": dict(sorted(split.tensor_to_filename.items()))})
    _write_json(os.path.join(tmp, "config.json"), hf_config)
    for name in copies:
      shutil.copyfile(os.path.join(teacher_dir, name), os.path.join(tmp, name))
    for name, value in (extra_files or {}).items():
      _write_json(os.path.join(tmp, name), value)
    for name in os.listdir(tmp):  # safetensors writes 0600; give the usual mode
      os.chmod(os.path.join(tmp, name), 0o666 & ~umask)
    _replace_dir(tmp, out_dir)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return out_dir


def _write_json(path: str, value) -> None:
  with open(path, "w", encoding="utf-8") as f:
    json.dump(value, f, indent=2, sort_keys=True)
    f.write("\n")


def _replace_dir(tmp: str, out_dir: str) -> None:
  """Rename tmp to out_dir; an existing out_dir (overwrite) is moved aside first, then removed."""
  if not os.path.exists(out_dir):
    os.rename(tmp, out_dir)
    return
  old = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.old-", dir=os.path.dirname(out_dir))
  os.rename(out_dir, os.path.join(old, "dir"))
  os.rename(tmp, out_dir)
  shutil.rmtree(old, ignore_errors=True)
