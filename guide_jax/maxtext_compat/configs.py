"""MaxText settings <-> guide_jax ModelConfig, for MaxText's llama2-style decoder block.

A MaxText checkpoint stores arrays only; the model they belong to is MaxText's config: its base.yml,
a model .yml (configs/models/llama3.1-8b.yml) and KEY=VALUE overrides, merged in that order, as
MaxText's command line takes them. `parse` reads that form here without MaxText (PyYAML only);
`model_config` turns it into a ModelConfig (plus the RoPE pair layout, which a ModelConfig does not
record); `settings` does the reverse for a student.

Conventions, found by running MaxText (commit e591f30cb) on the same weights (tests/maxtext, and
docs/maxtext.md):
  * attention logits are q.k with no 1/sqrt(head_dim): as in t5x, the factor lives in the query
    kernel (ModelConfig.query_pre_attn_scalar = None);
  * RoPE: rope_type 'default' rotates halves (ours); rope_type 'llama3.1' rotates interleaved
    pairs (2i, 2i+1) and scales the frequencies as Llama 3.1 (factor 8, low 1, high 4, original
    8192: ModelConfig rope_scaling='llama3' with those factors; without the scaling when
    rope_use_scale=false). The pair layout is a relayout of the query/key kernels (layout.py);
  * RMSNorm with normalization_layer_epsilon, no offset; post_self_attention_layer_norm is the
    pre-MLP norm; no embedding scale;
  * logits_via_embedding=true: logits = y E^T / sqrt(d) ('t5x' embedding_style; y E^T, 'hf', with
    normalize_embedding_logits=false). MaxText rounds the table to bfloat16 for this product
    (not for the first residual) whatever its dtype, so a tied model's MaxText logits differ from
    guide_jax's by ~1e-3 (1.1e-3 in the tier) unless the table is bfloat16-representable;
  * mlp_activations [act, 'linear']: act(x wi_0) * (x wi_1) (run with silu); 'gelu' is mapped to
    the tanh approximation (not run).
"""
import os
import re
from typing import Any, Dict, Iterable, List, Mapping, NamedTuple, Optional, Tuple, Union

from guide_jax.config import ModelConfig

DECODER_BLOCKS = ("llama2", "mistral")  # the same tree and, as run, the same forward
# MaxText base.yml (e591f30cb) defaults of the keys read here.
BASE_DEFAULTS: Dict[str, Any] = {
    "model_name": "default", "decoder_block": "llama2", "global_parameter_scale": 1,
    "base_emb_dim": 2048, "base_num_query_heads": 16, "base_num_kv_heads": 16, "base_mlp_dim": 7168,
    "base_num_decoder_layers": 16, "head_dim": 128, "vocab_size": 32000,
    "mlp_activations": ["silu", "linear"], "logits_via_embedding": False, "normalize_embedding_logits": True,
    "normalization_layer_epsilon": 1e-5, "rope_type": "default", "rope_max_timescale": 10000,
    "rope_min_timescale": 1, "rope_linear_scaling_factor": 1.0, "rope_use_scale": True,
    "scan_layers": True, "param_scan_axis": 1, "weight_dtype": "float32",
}
# Architecture keys the llama2 block mapping does not implement: refused unless at base.yml's value.
FIXED: Dict[str, Any] = {
    "num_experts": 1, "shared_experts": 0, "mtp_num_layers": 0, "mlp_bias": False, "attention_bias": False,
    "attention_type": "global", "share_kv_projections": False, "attn_logits_soft_cap": 0.0,
    "final_logits_soft_cap": 0.0, "use_post_attn_norm": False, "use_post_ffw_norm": False, "fused_qkv": False,
    "fused_mlp": False, "use_qk_norm": False, "use_untrainable_positional_embedding": False,
    "trainable_position_size": -1, "use_mrope": False, "partial_rotary_factor": 1.0, "mhc_expansion_rate": 1,
    "engram_layers": [], "global_parameter_scale": 1, "param_scan_axis": 1, "rope_min_timescale": 1,
    "rope_linear_scaling_factor": 1.0, "model_name": "default",
}
# MaxText activation name -> ModelConfig.mlp_activation (MaxText's 'gelu' is the tanh form: as run).
_ACTIVATIONS = {"silu": "silu", "gelu": "gelu", "relu": "relu"}
# MaxText's Llama 3.1 RoPE scaling constants (LLaMARotaryEmbedding): ModelConfig's llama3 factors.
LLAMA31_ROPE = {"rope_scaling": "llama3", "rope_scaling_factor": 8.0, "rope_low_freq_factor": 1.0,
                "rope_high_freq_factor": 4.0, "rope_original_max_positions": 8192}
# The overrides that describe a student, in the order they are printed.
DESCRIBING = ("decoder_block", "base_emb_dim", "base_num_query_heads", "base_num_kv_heads", "head_dim",
              "base_mlp_dim", "base_num_decoder_layers", "vocab_size", "logits_via_embedding",
              "normalize_embedding_logits", "mlp_activations", "normalization_layer_epsilon", "rope_type",
              "rope_max_timescale", "rope_use_scale")


class MaxTextConfigError(ValueError):
  """MaxText settings that are unreadable or describe a model guide_jax does not map."""


class Described(NamedTuple):
  """A MaxText model as guide_jax sees it: config; interleaved (RoPE pairs (2i, 2i+1): the
  query/key kernels' head_dim axis is permuted on the way in and out); settings: the MaxText
  overrides (DESCRIBING's keys, resolved) that build it."""
  config: ModelConfig
  interleaved: bool
  settings: Dict[str, Any]


# ------------------------------------------------------------------------------------ parsing
def _yaml():
  import yaml  # pylint: disable=g-import-not-at-top
  return yaml


def _loader():
  """PyYAML's SafeLoader reading 1e-5 as a float (YAML 1.1 wants 1.0e-5), as OmegaConf (MaxText's
  config reader) does."""
  yaml = _yaml()

  class Loader(yaml.SafeLoader):  # pylint: disable=too-many-ancestors
    pass
  Loader.add_implicit_resolver(
      "tag:yaml.org,2002:float",
      re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                    |\.[0-9_]+(?:[eE][-+][0-9]+)?
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN))$""", re.X), list("-+0123456789."))
  return Loader


def _load(text):
  return _yaml().load(text, Loader=_loader())


def _load_yml(path: str, seen: Tuple[str, ...] = ()) -> Dict[str, Any]:
  """A MaxText .yml and its base_config chain (MaxText's base.yml itself: BASE_DEFAULTS)."""
  path = os.path.abspath(os.path.expanduser(path))
  if path in seen:
    raise MaxTextConfigError(f"MaxText config {path}: base_config loops back to itself")
  try:
    with open(path, encoding="utf-8") as f:
      values = _load(f) or {}
  except OSError as e:
    raise MaxTextConfigError(f"MaxText config {path} is unreadable: {e}") from e
  except _yaml().YAMLError as e:
    raise MaxTextConfigError(f"MaxText config {path} is not valid YAML: {e}") from e
  if not isinstance(values, dict):
    raise MaxTextConfigError(f"MaxText config {path} is not a mapping")
  base = values.pop("base_config", None)
  if base and os.path.basename(base) != "base.yml":
    parent = base if os.path.isabs(base) else os.path.join(os.path.dirname(path), base)
    if not os.path.isfile(parent):
      raise MaxTextConfigError(f"MaxText config {path}: base_config {base!r} not found next to it")
    values = {**_load_yml(parent, seen + (path,)), **values}
  return values


def parse(spec: Union[None, str, Iterable[str], Mapping[str, Any]]) -> Dict[str, Any]:
  """MaxText settings from `spec`: a mapping, or words (a string split on whitespace, or a list)
  each a .yml/.yaml file or KEY=VALUE (the value read as YAML, as MaxText's command line does).
  Later words win. Returns only what was given (no defaults)."""
  if spec is None:
    return {}
  if isinstance(spec, Mapping):
    return dict(spec)
  words = spec.split() if isinstance(spec, str) else list(spec)
  values: Dict[str, Any] = {}
  for word in words:
    if not isinstance(word, str):
      raise MaxTextConfigError(f"MaxText settings must be strings, got {word!r}")
    if "=" in word:
      key, raw = word.split("=", 1)
      if not key.strip():
        raise MaxTextConfigError(f"MaxText setting {word!r} has no key")
      try:
        values[key.strip()] = _load(raw) if raw else ""
      except _yaml().YAMLError as e:
        raise MaxTextConfigError(f"MaxText setting {word!r}: unreadable value ({e})") from e
    elif word.endswith((".yml", ".yaml")):
      values.update(_load_yml(word))
    else:
      raise MaxTextConfigError(f"MaxText setting {word!r} is neither KEY=VALUE nor a .yml file")
  return values


def _resolved(values: Mapping[str, Any]) -> Dict[str, Any]:
  return {**BASE_DEFAULTS, **values}


def _int(values, key) -> int:
  value = values[key]
  if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
    raise MaxTextConfigError(f"MaxText {key} must be a positive int, got {value!r}")
  return value


def _float(values, key) -> float:
  value = values[key]
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
    raise MaxTextConfigError(f"MaxText {key} must be a number > 0, got {value!r}")
  return float(value)


def _bool(values, key) -> bool:
  value = values[key]
  if not isinstance(value, bool):
    raise MaxTextConfigError(f"MaxText {key} must be true or false, got {value!r}")
  return value


def _problems(values: Mapping[str, Any]) -> List[str]:
  """What in resolved settings guide_jax does not map (empty: a llama2-block model it reads)."""
  problems = []
  if values.get("model_name", "default") != "default":
    problems.append(f"model_name={values['model_name']!r} (give the model's .yml from MaxText's "
                    "configs/models/ instead: its settings are read from there)")
  if values["decoder_block"] not in DECODER_BLOCKS:
    problems.append(f"decoder_block={values['decoder_block']!r} (guide_jax maps the llama2-style blocks "
                    f"{DECODER_BLOCKS})")
  for key, default in FIXED.items():
    if key != "model_name" and key in values and values[key] != default:
      problems.append(f"{key}={values[key]!r} (only {default!r} is mapped)")
  acts = values["mlp_activations"]
  if (not isinstance(acts, (list, tuple)) or len(acts) != 2 or acts[1] != "linear"
      or acts[0] not in _ACTIVATIONS):
    problems.append(f"mlp_activations={acts!r} (a gated MLP [act, 'linear'] with act in {sorted(_ACTIVATIONS)})")
  if values["rope_type"] not in ("default", "llama3.1"):
    problems.append(f"rope_type={values['rope_type']!r} (mapped: 'default', 'llama3.1')")
  return problems


def model_config(spec, *, param_dtype: str = "float32") -> Described:
  """(ModelConfig, interleaved) of a llama2-block MaxText model given by its settings (parse's
  forms; unset keys take MaxText base.yml's defaults). Raises MaxTextConfigError naming every
  setting guide_jax does not map. param_dtype: the stored arrays' dtype."""
  given = parse(spec)
  values = _resolved(given)
  problems = _problems(values)
  if problems:
    raise MaxTextConfigError("MaxText model not mapped by guide_jax: " + "; ".join(problems))
  d, h = _int(values, "base_emb_dim"), _int(values, "base_num_query_heads")
  k = _int(values, "base_num_kv_heads")
  if h % k:
    raise MaxTextConfigError(f"MaxText base_num_kv_heads={k} must divide base_num_query_heads={h}")
  tied = _bool(values, "logits_via_embedding")
  style = "t5x" if (not tied or _bool(values, "normalize_embedding_logits")) else "hf"
  llama31 = values["rope_type"] == "llama3.1"
  rope = LLAMA31_ROPE if llama31 and _bool(values, "rope_use_scale") else {}
  try:
    config = ModelConfig(
        vocab_size=_int(values, "vocab_size"), d_model=d, n_layers=_int(values, "base_num_decoder_layers"),
        n_heads=h, head_dim=_int(values, "head_dim"), mlp_dim=_int(values, "base_mlp_dim"),
        n_kv_heads=None if k == h else k, tie_embeddings=tied, position_embedding="rope",
        rope_theta=_float(values, "rope_max_timescale"), mlp_activation=_ACTIVATIONS[values["mlp_activations"][0]],
        norm_eps=_float(values, "normalization_layer_epsilon"), embedding_style=style, param_dtype=param_dtype,
        **rope)
  except ValueError as e:
    raise MaxTextConfigError(f"MaxText settings give no valid model: {e}") from e
  return Described(config, llama31, {k: values[k] for k in DESCRIBING})


# ---------------------------------------------------------------------------------- the student
def incompatibilities(config: ModelConfig) -> List[str]:
  """The settings of `config` MaxText's llama2 block cannot represent (empty: writable)."""
  problems = []
  defaults = ModelConfig.__dataclass_fields__
  if config.position_embedding != "rope":
    problems.append(f"position_embedding={config.position_embedding!r} (MaxText's llama2 block uses RoPE)")
  for name in ("qkv_bias", "out_bias", "qk_norm", "post_norms", "norm_offset", "attn_logit_softcap",
               "final_logit_softcap", "query_pre_attn_scalar", "sliding_window", "rope_local_theta"):
    if getattr(config, name) != defaults[name].default:
      problems.append(f"{name}={getattr(config, name)!r}")
  if config.layer_pattern.replace("G", ""):
    problems.append(f"layer_pattern={config.layer_pattern!r}")
  if config.embedding_style == "gemma":
    problems.append("embedding_style='gemma' (MaxText's llama2 block does not scale the embeddings)")
  if config.mlp_activation not in _ACTIVATIONS.values():
    problems.append(f"mlp_activation={config.mlp_activation!r} (MaxText: silu, gelu (tanh), relu)")
  if config.rope_scaling == "llama3":
    got = {k: getattr(config, k) for k in LLAMA31_ROPE}
    if got != LLAMA31_ROPE:
      problems.append(f"llama3 RoPE scaling {got} (MaxText's rope_type=llama3.1 has {LLAMA31_ROPE})")
  elif config.rope_scaling != "none":
    problems.append(f"rope_scaling={config.rope_scaling!r} (MaxText: none, or llama3 as rope_type=llama3.1)")
  return problems


def settings(config: ModelConfig) -> Dict[str, Any]:
  """The MaxText overrides (DESCRIBING's keys) that build `config` with the llama2 block.
  Raises MaxTextConfigError naming what MaxText cannot represent."""
  problems = incompatibilities(config)
  if problems:
    raise MaxTextConfigError("MaxText's llama2 decoder block has no " + "; ".join(problems))
  llama31 = config.rope_scaling == "llama3"
  return {
      "decoder_block": "llama2", "base_emb_dim": config.d_model, "base_num_query_heads": config.n_heads,
      "base_num_kv_heads": config.kv_heads, "head_dim": config.head_dim, "base_mlp_dim": config.mlp_dim,
      "base_num_decoder_layers": config.n_layers, "vocab_size": config.vocab_size,
      "logits_via_embedding": config.tie_embeddings,
      "normalize_embedding_logits": config.embedding_style == "t5x" or not config.tie_embeddings,
      "mlp_activations": [config.mlp_activation, "linear"], "normalization_layer_epsilon": config.norm_eps,
      "rope_type": "llama3.1" if llama31 else "default", "rope_max_timescale": _number(config.rope_theta),
      "rope_use_scale": True,
  }


def _number(x: float):
  return int(x) if float(x).is_integer() else float(x)


def format_settings(values: Mapping[str, Any], shell: bool = True) -> str:
  """KEY=VALUE words as MaxText's command line (and parse) read them, lists as ['a','b']; shell:
  words with brackets or quotes single-word quoted for a shell."""
  words = []
  for key, value in values.items():
    if isinstance(value, bool):
      text = "true" if value else "false"
    elif isinstance(value, (list, tuple)):
      text = "[" + ",".join(f"'{v}'" for v in value) + "]"
    else:
      text = str(value)
    word = f"{key}={text}"
    if " " in word:
      raise MaxTextConfigError(f"MaxText setting {word!r} has a space: MaxText's command line splits it")
    words.append(f'"{word}"' if shell and any(c in word for c in "[]'") else word)
  return " ".join(words)
