"""t5x decoder-only TransformerConfig -> guide_jax ModelConfig."""
from collections.abc import Mapping

from guide_jax.config import ModelConfig

# t5x activation names (flax.linen / jax.nn) -> ModelConfig.mlp_activation.
_T5X_ACTIVATIONS = {"gelu": "gelu", "relu": "relu", "silu": "silu", "swish": "silu"}


def model_config_from_t5x(transformer_config=None, **fields) -> ModelConfig:
  """ModelConfig from t5x decoder-only `TransformerConfig` fields (an object, a dict, or kwargs).

  Uses vocab_size, emb_dim, num_heads, num_layers, head_dim, mlp_dim, mlp_activations,
  logits_via_embedding (and dtype); other fields (dropout_rate, ...) are ignored. t5x's
  decoder-only model uses T5 relative position biases (32 buckets, max distance 128), so the
  result has position_embedding='relpos'. Our MLP is gated, act(x wi_0) * (x wi_1): only
  mlp_activations = (act, 'linear') with act in gelu/relu/silu/swish is accepted; a single
  activation (t5x's non-gated 'wi' kernel) or any other combination raises ValueError.
  Defaults follow t5x's TransformerConfig: mlp_activations=('relu',) (hence an error unless
  given), logits_via_embedding=False.
  """
  values = {}
  if transformer_config is not None:
    if isinstance(transformer_config, Mapping):
      values.update(transformer_config)
    else:
      for name in ("vocab_size", "emb_dim", "num_heads", "num_layers", "head_dim", "mlp_dim",
                   "mlp_activations", "logits_via_embedding", "dtype"):
        if hasattr(transformer_config, name):
          values[name] = getattr(transformer_config, name)
  values.update(fields)
  missing = [k for k in ("vocab_size", "emb_dim", "num_heads", "num_layers", "head_dim", "mlp_dim")
             if values.get(k) is None]
  if missing:
    raise ValueError(f"t5x TransformerConfig is missing {', '.join(missing)}")
  acts = values.get("mlp_activations", ("relu",))
  acts = (acts,) if isinstance(acts, str) else tuple(acts)
  if len(acts) == 1:
    raise ValueError(f"t5x mlp_activations={acts!r} is a non-gated MLP (one 'wi' kernel); guide_jax's "
                     "model is gated (wi_0, wi_1), so it needs two activations such as ('gelu', 'linear')")
  if len(acts) != 2 or acts[1] != "linear" or acts[0] not in _T5X_ACTIVATIONS:
    raise ValueError(f"unsupported t5x mlp_activations={acts!r}: need (act, 'linear') with act one of "
                     f"{sorted(_T5X_ACTIVATIONS)} (guide_jax computes act(x wi_0) * (x wi_1))")
  dtype = values.get("dtype", "float32")
  dtype = "bfloat16" if "bfloat16" in str(getattr(dtype, "__name__", dtype)) else "float32"
  return ModelConfig(vocab_size=int(values["vocab_size"]), d_model=int(values["emb_dim"]),
                     n_layers=int(values["num_layers"]), n_heads=int(values["num_heads"]),
                     head_dim=int(values["head_dim"]), mlp_dim=int(values["mlp_dim"]),
                     tie_embeddings=bool(values.get("logits_via_embedding", False)),
                     position_embedding="relpos", relpos_buckets=32, relpos_max_distance=128,
                     mlp_activation=_T5X_ACTIVATIONS[acts[0]], dtype=dtype)


def as_model_config(config, name: str = "config") -> ModelConfig:
  """A ModelConfig from a ModelConfig, a dict of its fields, or a t5x TransformerConfig / dict."""
  if isinstance(config, ModelConfig):
    return config
  if config is None:
    raise ValueError(f"{name} is required (a guide_jax ModelConfig or a t5x TransformerConfig)")
  if isinstance(config, Mapping):
    if "d_model" in config:
      return ModelConfig(**config)
    if "emb_dim" in config:
      return model_config_from_t5x(config)
  elif hasattr(config, "emb_dim"):
    return model_config_from_t5x(config)
  raise ValueError(f"{name} must be a ModelConfig or a t5x TransformerConfig, got {type(config).__name__}")
