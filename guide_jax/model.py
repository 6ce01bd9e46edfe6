"""Decoder-only transformer with t5x's decoder-only parameter names and logical axes.

Parameter tree (exactly t5x/examples/decoder_only, so GUIDE transforms apply to t5x checkpoints):
  decoder/token_embedder/embedding                       [V, d]      ('vocab', 'embed')
  decoder/relpos_bias/rel_embedding                      [h, B]      ('heads', 'relpos_buckets')  relpos only
  decoder/layers_{i}/pre_self_attention_layer_norm/scale [d]         ('embed',)
  decoder/layers_{i}/self_attention/{query,key,value}/kernel [d, h*l] ('embed', 'joined_kv')
  decoder/layers_{i}/self_attention/out/kernel           [h*l, d]    ('joined_kv', 'embed')
  decoder/layers_{i}/pre_mlp_layer_norm/scale            [d]         ('embed',)
  decoder/layers_{i}/mlp/{wi_0,wi_1}/kernel              [d, f]      ('embed', 'mlp')
  decoder/layers_{i}/mlp/wo/kernel                       [f, d]      ('mlp', 'embed')
  decoder/decoder_norm/scale                             [d]         ('embed',)
  decoder/logits_dense/kernel                            [d, V]      ('embed', 'vocab')  untied only
As in t5x, attention kernels are stored 2-D and reshaped heads-major ([d, h*l] -> [d, h, l]) only
inside the forward pass; attention logits are q.k with no 1/sqrt(l): that factor lives in the query
kernel's init.

Options for the Hugging Face families (ModelConfig; all off by default, each adds or reshapes only
its own leaves; docs/gqa_and_families.md):
  n_kv_heads = k < h: self_attention/{key,value}/kernel [d, k*l]; query head j reads kv head
    j // (h // k) (transformers' repeat_kv; jax.nn.dot_product_attention's grouping).
  qkv_bias: self_attention/{query,key,value}/bias [h*l] / [k*l] ('joined_kv',); out_bias:
    self_attention/out/bias [d] ('embed',).
  qk_norm: self_attention/{query,key}_norm/scale [l] ('kv',) (per-head RMSNorm before RoPE).
  post_norms: layers_{i}/post_self_attention_layer_norm/scale, layers_{i}/post_mlp_layer_norm/scale [d].
Per-layer options (layer_pattern: sliding window mask, RoPE frequencies) reach a layer as call
arguments (mask, freqs), so every DecoderLayer is the same module.

scan_layers (ModelConfig, off by default): the forward runs the layers as one nn.scan over their
params stacked on a leading 'layers' axis (one compiled layer body, so compile time does not grow
with depth). The parameter tree stays t5x's layers_N everywhere (init, checkpoints, transforms,
exports): apply() stacks the layers inside the compiled program (stack_layers) and gradients come
back to the layers_N leaves; scanned and unrolled forwards give the same logits and gradients.

Activations carry logical sharding constraints (batch over the mesh's batch axes, embed unsplit;
guide_jax.sharding.LOGICAL_AXIS_RULES): no-ops unless a caller traces under
sharding.activation_rules(mesh), as the train step does, so with FSDP XLA gathers weights per layer
instead of moving activations.
"""
import functools
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from guide_jax.config import ModelConfig

Array = Any


def _dtype(name: str):
  return {"bfloat16": jnp.bfloat16, "float16": jnp.float16}.get(name, jnp.float32)


def _fan_in_init(fan_in: int, scale: float = 1.0):
  """Normal init with variance scale / fan_in (t5x's variance_scaling(1, 'fan_in'))."""
  stddev = math.sqrt(scale / fan_in)
  return lambda key, shape, dtype: stddev * jax.random.normal(key, shape, dtype)


# Logical axes of the residual stream [B, T, d] (guide_jax.sharding maps them to mesh axes).
ACTIVATION_AXES = ("activation_batch", "activation_length", "activation_embed")


def constrain_activations(x):
  """x [B, T, d] constrained to ACTIVATION_AXES (a no-op outside sharding.activation_rules)."""
  return nn.with_logical_constraint(x, ACTIVATION_AXES)


def gathered(x, axes: Sequence[str], dtype=None):
  """A weight as a layer uses it: cast to `dtype` where it lies (on its shards), then made whole
  along its 'embed' axis: FSDP's per-layer all-gather, moving `dtype` bytes (the compute dtype for
  the layers' kernels, the stored dtype for the embedding table and norm scales). No-ops outside
  sharding.activation_rules, where XLA places the cast and the gather as it likes."""
  if dtype is not None and x.dtype != dtype:
    x = nn.with_logical_constraint(x.astype(dtype), tuple(axes))
  return nn.with_logical_constraint(x, tuple(None if a == "embed" else a for a in axes))


class RMSNorm(nn.Module):
  """T5 layer norm: x / sqrt(mean(x^2) + eps) * (offset + scale); param 'scale' [d] (axis,).

  offset 0 is t5x's / Llama's norm (scale starts at ones); offset 1 is Gemma's (scale starts at 0).
  """
  eps: float = 1e-6
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  offset: float = 0.0
  axis_name: str = "embed"

  @nn.compact
  def __call__(self, x):
    init = nn.initializers.constant(1.0 - self.offset)
    scale = gathered(self.param("scale", nn.with_logical_partitioning(init, (self.axis_name,)),
                                (x.shape[-1],), self.param_dtype), (self.axis_name,))
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (y * (self.offset + scale.astype(jnp.float32))).astype(self.dtype)


class Kernel(nn.Module):
  """A bias-free dense layer with an explicitly shaped kernel.

  Contracts the last `len(in_shape)` axes of x with the kernel [*in_shape, *out_shape].
  """
  in_shape: Sequence[int]
  out_shape: Sequence[int]
  axes: Sequence[str]
  init_scale: float = 1.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  use_bias: bool = False  # param 'bias' [*out_shape] (the output axes of `axes`), zeros at init

  @nn.compact
  def __call__(self, x):
    shape = tuple(self.in_shape) + tuple(self.out_shape)
    fan_in = int(np.prod(self.in_shape))
    kernel = self.param("kernel", nn.with_logical_partitioning(
        _fan_in_init(fan_in, self.init_scale), tuple(self.axes)), shape, self.param_dtype)
    n_in = len(self.in_shape)
    contract = (tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in)))
    kernel = gathered(kernel, self.axes, jnp.dtype(self.dtype))
    y = jax.lax.dot_general(x.astype(self.dtype), kernel, (contract, ((), ())))
    if self.use_bias:
      axes = tuple(self.axes)[n_in:]
      bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, axes),
                        tuple(self.out_shape), self.param_dtype)
      y = y + gathered(bias, axes, jnp.dtype(self.dtype))
    return y


def rope_frequencies(config: ModelConfig, local: bool = False) -> np.ndarray:
  """RoPE inverse frequencies [l/2] float32, as transformers' ROPE_INIT_FUNCTIONS compute them.

  local=True: the frequencies of a local ('L') layer: theta = rope_local_theta without scaling
  when the config sets it, else the global ones.

  Base: theta^(-2i/l), i < l/2. rope_scaling 'linear' divides them all by the factor; 'llama3'
  (Llama 3.1) keeps wavelengths 2 pi / freq below original / high_freq_factor, divides those above
  original / low_freq_factor by the factor and interpolates in between with
  s = (original / wavelength - low) / (high - low): (1 - s) freq / factor + s freq.
  Computed in float64 at trace time (a constant of the compiled program).
  """
  l = config.head_dim
  freqs = 1.0 / config.rope_theta ** (np.arange(0, l, 2, dtype=np.float64) / l)
  if local and config.rope_local_theta is not None:  # Gemma 3's local layers: their own theta, unscaled
    return (1.0 / config.rope_local_theta ** (np.arange(0, l, 2, dtype=np.float64) / l)).astype(np.float32)
  factor = float(config.rope_scaling_factor)
  if config.rope_scaling == "linear":
    freqs = freqs / factor
  elif config.rope_scaling == "llama3":
    low, high = float(config.rope_low_freq_factor), float(config.rope_high_freq_factor)
    original = float(config.rope_original_max_positions)
    wavelength = 2 * math.pi / freqs
    smooth = (original / wavelength - low) / (high - low)
    medium = (1 - smooth) * freqs / factor + smooth * freqs
    freqs = np.where(wavelength > original / low, freqs / factor,
                     np.where(wavelength < original / high, freqs, medium))
  return freqs.astype(np.float32)


def rope(x: Array, positions: Array, freqs: Array) -> Array:
  """Rotate-half rotary embedding. x [B, T, h, l], positions [B, T], freqs [l/2] -> [B, T, h, l].

  freqs: rope_frequencies(config) (theta^(-2i/l) unless the config scales them).
  """
  angles = positions[..., None].astype(jnp.float32) * jnp.asarray(freqs, jnp.float32)  # [B, T, l/2]
  sin, cos = jnp.sin(angles)[:, :, None, :], jnp.cos(angles)[:, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


def relative_position_bucket(relative_position: Array, num_buckets: int, max_distance: int) -> Array:
  """T5's causal (unidirectional) relative-position bucket, as in t5x's RelativePositionBiases."""
  n = jnp.maximum(-relative_position, 0)
  max_exact = num_buckets // 2
  is_small = n < max_exact
  large = max_exact + (
      jnp.log(n.astype(jnp.float32) / max_exact + np.finfo(np.float32).eps)
      / math.log(max_distance / max_exact) * (num_buckets - max_exact)).astype(jnp.int32)
  return jnp.where(is_small, n, jnp.minimum(large, num_buckets - 1))


class RelativePositionBiases(nn.Module):
  """t5x relpos_bias: param 'rel_embedding' [h, buckets]; returns bias [1, h, T, T]."""
  num_heads: int
  num_buckets: int
  max_distance: int
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, length: int):
    table = self.param("rel_embedding", nn.with_logical_partitioning(
        nn.initializers.variance_scaling(1.0, "fan_avg", "uniform"), ("heads", "relpos_buckets")),
        (self.num_heads, self.num_buckets), self.param_dtype)
    pos = jnp.arange(length)
    buckets = relative_position_bucket(pos[None, :] - pos[:, None], self.num_buckets, self.max_distance)
    return jnp.take(table.astype(jnp.float32), buckets, axis=1)[None]  # [1, h, T, T]


def attention(q, k, v, bias, mask, scale: float, softcap=None, implementation=None):
  """Grouped-query attention. q [B, T, h, l], k/v [B, S, k, l] (query head j reads kv head
  j // (h // k)), bias [1 | B, h, T, S] or None, mask [B, 1, T, S] bool -> [B, T, h, l].

  logits = scale * q.k (+ bias), soft-capped to softcap * tanh(logits / softcap) when softcap is
  set (Gemma 2); without a cap this is jax.nn.dot_product_attention (which groups heads the same way).
  """
  if softcap is None:
    return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, scale=scale,
                                        implementation=implementation)
  b, t, h, l = q.shape
  kv = k.shape[2]
  qg = q.reshape(b, t, kv, h // kv, l)
  logits = jnp.einsum("btkgl,bskl->bkgts", qg, k, preferred_element_type=jnp.float32) * scale
  if bias is not None:
    logits = logits + bias.astype(jnp.float32).reshape(bias.shape[0], kv, h // kv, t, -1)
  logits = softcap * jnp.tanh(logits / softcap)
  logits = jnp.where(mask[:, :, None], logits, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.einsum("bkgts,bskl->btkgl", probs, v).reshape(b, t, h, l)


class SelfAttention(nn.Module):
  """Causal (grouped-query) self-attention with t5x kernel names query/key/value/out."""
  config: ModelConfig

  @nn.compact
  def __call__(self, x, mask, bias, positions, freqs=None):
    cfg = self.config
    d, h, kv, l = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.head_dim
    dt, pdt = _dtype(cfg.dtype), _dtype(cfg.param_dtype)
    proj = functools.partial(Kernel, in_shape=(d,), axes=("embed", "joined_kv"), dtype=dt,
                             param_dtype=pdt, use_bias=cfg.qkv_bias)
    heads = lambda y, n: y.reshape(y.shape[:-1] + (n, l))  # heads-major, as t5x's DenseGeneral
    folded = cfg.query_pre_attn_scalar is None  # t5x: 1/sqrt(l) folded into the query kernel
    q = heads(proj(out_shape=(h * l,), name="query", init_scale=1.0 / l if folded else 1.0)(x), h)
    k = heads(proj(out_shape=(kv * l,), name="key")(x), kv)
    v = heads(proj(out_shape=(kv * l,), name="value")(x), kv)
    if cfg.qk_norm:
      norm = functools.partial(RMSNorm, eps=cfg.norm_eps, dtype=dt, param_dtype=pdt, offset=cfg.norm_offset,
                               axis_name="kv")
      q, k = norm(name="query_norm")(q), norm(name="key_norm")(k)
    if cfg.position_embedding == "rope":
      freqs = rope_frequencies(cfg) if freqs is None else freqs
      q, k = rope(q, positions, freqs), rope(k, positions, freqs)
    scale = 1.0 if folded else float(cfg.query_pre_attn_scalar) ** -0.5
    y = attention(q, k, v, bias, mask, scale, cfg.attn_logit_softcap,
                  cfg.attention_impl if cfg.attention_impl != "xla" else None)
    y = y.reshape(y.shape[:-2] + (h * l,))
    return Kernel(in_shape=(h * l,), out_shape=(d,), axes=("joined_kv", "embed"), dtype=dt,
                  param_dtype=pdt, use_bias=cfg.out_bias, name="out")(y)


# ModelConfig.mlp_activation -> function ('gelu' is t5x's tanh approximation, 'gelu_exact' the erf form).
ACTIVATIONS = {"gelu": functools.partial(jax.nn.gelu, approximate=True),
               "gelu_exact": functools.partial(jax.nn.gelu, approximate=False),
               "silu": jax.nn.silu, "relu": jax.nn.relu}


class MlpBlock(nn.Module):
  """Gated MLP: (act(x wi_0) * (x wi_1)) wo, t5x names wi_0, wi_1, wo."""
  config: ModelConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    d, f = cfg.d_model, cfg.mlp_dim
    dt, pdt = _dtype(cfg.dtype), _dtype(cfg.param_dtype)
    wi = functools.partial(Kernel, in_shape=(d,), out_shape=(f,), axes=("embed", "mlp"), dtype=dt,
                           param_dtype=pdt)
    act = ACTIVATIONS[cfg.mlp_activation]
    hidden = act(wi(name="wi_0")(x)) * wi(name="wi_1")(x)
    return Kernel(in_shape=(f,), out_shape=(d,), axes=("mlp", "embed"), dtype=dt, param_dtype=pdt,
                  name="wo")(hidden)


class DecoderLayer(nn.Module):
  """Pre-norm block: x + attn(norm(x)), then + mlp(norm(.)); with post_norms (Gemma 2/3)
  x + post_norm(attn(norm(x))), then + post_norm(mlp(norm(.))).

  mask [B, 1, T, T] and freqs [l/2] are this layer's (its layer_pattern kind), passed by the caller.
  """
  config: ModelConfig

  @nn.compact
  def __call__(self, x, mask, bias, positions, freqs=None):
    cfg = self.config
    norm = functools.partial(RMSNorm, eps=cfg.norm_eps, dtype=_dtype(cfg.dtype),
                             param_dtype=_dtype(cfg.param_dtype), offset=cfg.norm_offset)
    y = SelfAttention(cfg, name="self_attention")(
        norm(name="pre_self_attention_layer_norm")(x), mask, bias, positions, freqs)
    x = x + (norm(name="post_self_attention_layer_norm")(y) if cfg.post_norms else y)
    y = MlpBlock(cfg, name="mlp")(norm(name="pre_mlp_layer_norm")(x))
    return constrain_activations(x + (norm(name="post_mlp_layer_norm")(y) if cfg.post_norms else y))


# ModelConfig.remat -> what a layer's backward keeps from its forward (the rest is recomputed):
# 'full' keeps only the layer's input (per-layer activation memory bounded by one layer),
# 'dots' also the weight matmuls' outputs, 'offload' the same as 'dots' but in host memory
# (accelerators with pinned host memory; XLA's CPU compiler ignores the memory kind).
_REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
    "offload": jax.checkpoint_policies.offload_dot_with_no_batch_dims("device", "pinned_host"),
}


def embedding_scale(config: ModelConfig) -> float:
  """a: the first residual is a * E[tok] (sqrt(d) for embedding_style 'gemma', else 1)."""
  return math.sqrt(config.d_model) if config.embedding_style == "gemma" else 1.0


def tied_logits_scale(config: ModelConfig) -> float:
  """c: tied logits are c * y E^T (1 / sqrt(d) for embedding_style 't5x', else 1)."""
  return 1.0 / math.sqrt(config.d_model) if config.embedding_style == "t5x" else 1.0


def output_head(config: ModelConfig, params):
  """The params output_logits reads ({'decoder': {'token_embedder': ...} or {'logits_dense': ...}}),
  gathered (model.gathered, in their stored dtype): gather once, then apply to many slices."""
  dec = params["decoder"]
  if config.tie_embeddings:
    return {"decoder": {"token_embedder": {"embedding": gathered(dec["token_embedder"]["embedding"],
                                                                 ("vocab", "embed"))}}}
  return {"decoder": {"logits_dense": {"kernel": gathered(dec["logits_dense"]["kernel"], ("embed", "vocab"))}}}


def output_logits(config: ModelConfig, params, y):
  """The output layer, written once: final hidden states y [..., d] (decoder_norm's output) ->
  logits [..., V] float32. params: the model's tree ({'decoder': ...}; only output_head's part is read).

  Tied: c * y E^T (c = tied_logits_scale); untied: y K (logits_dense/kernel [d, V]); then
  final_logit_softcap * tanh(. / cap) when set. The chunked loss (guide_jax.losses) calls it on
  slices of y with output_head(params) gathered once, so that a whole [B, T, V] never exists.
  """
  dec = output_head(config, params)["decoder"]
  y = y.astype(jnp.float32)
  if config.tie_embeddings:
    logits = jnp.einsum("...d,vd->...v", y, dec["token_embedder"]["embedding"].astype(jnp.float32))
    if config.embedding_style == "t5x":  # t5x: y E^T / sqrt(d); transformers: y E^T
      logits = logits / jnp.sqrt(jnp.float32(config.d_model))
  else:
    logits = jnp.einsum("...d,dv->...v", y, dec["logits_dense"]["kernel"].astype(jnp.float32))
  if config.final_logit_softcap is not None:
    logits = config.final_logit_softcap * jnp.tanh(logits / config.final_logit_softcap)
  return logits


def _layer_class(config: ModelConfig):
  if config.remat == "none":
    return DecoderLayer
  return nn.remat(DecoderLayer, policy=_REMAT_POLICIES[config.remat], prevent_cse=not config.scan_layers)


class _ScanStep(nn.Module):
  """One step of the scanned layer stack: (x, is this layer local?) -> (x, None), the DecoderLayer
  (param scope 'layer') with its layer kind's mask and RoPE frequencies."""
  config: ModelConfig

  @nn.compact
  def __call__(self, x, local, masks, bias, positions, freqs):
    mask, f = masks["G"], freqs["G"]
    if "L" in masks:
      mask = jnp.where(local, masks["L"], masks["G"])
      if f is not None:
        f = jnp.where(local, jnp.asarray(freqs["L"]), jnp.asarray(f))
    return _layer_class(self.config)(self.config, name="layer")(x, mask, bias, positions, f), None


class Decoder(nn.Module):
  """Embedding -> n DecoderLayers (unrolled, or one nn.scan with scan_layers) -> RMSNorm -> logits
  (float32), or the normed hidden states [B, T, d] float32 with hidden=True."""
  config: ModelConfig

  @nn.compact
  def __call__(self, tokens, segment_ids=None, positions=None, hidden=False):
    cfg = self.config
    dt, pdt = _dtype(cfg.dtype), _dtype(cfg.param_dtype)
    b, t = tokens.shape
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(t), (b, t))
    mask = jnp.tril(jnp.ones((t, t), bool))[None, None]
    if segment_ids is not None:
      mask = mask & (segment_ids[:, None, :, None] == segment_ids[:, None, None, :])
    mask = jnp.broadcast_to(mask, (b, 1, t, t))
    masks = {"G": mask}
    if cfg.sliding_window is not None:  # local layers: key j visible from query i iff i - window < j <= i
      pos = jnp.arange(t)
      masks["L"] = mask & (pos[None, :] > pos[:, None] - cfg.sliding_window)[None, None]
    freqs = {"G": None, "L": None}
    if cfg.position_embedding == "rope":
      freqs = {"G": rope_frequencies(cfg), "L": rope_frequencies(cfg, local=True)}
    bias = None
    if cfg.position_embedding == "relpos":
      bias = RelativePositionBiases(cfg.n_heads, cfg.relpos_buckets, cfg.relpos_max_distance,
                                    param_dtype=pdt, name="relpos_bias")(t).astype(dt)
    table = TokenEmbedder(cfg.vocab_size, cfg.d_model, param_dtype=pdt, name="token_embedder")
    x = table(tokens)
    if cfg.embedding_style == "gemma":  # Gemma: x0 = sqrt(d) E[tok]
      x = x.astype(jnp.float32) * jnp.sqrt(jnp.float32(cfg.d_model))
    x = constrain_activations(x.astype(dt))
    if cfg.scan_layers:
      local = jnp.asarray([cfg.layer_kind(i) == "L" for i in range(cfg.n_layers)])
      scanned = nn.scan(_ScanStep, variable_axes={"params": 0}, split_rngs={"params": True},
                        in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
                        length=cfg.n_layers)
      x, _ = scanned(cfg, name="layers")(x, local, masks, bias, positions, freqs)
    else:
      layer_cls = _layer_class(cfg)
      for i in range(cfg.n_layers):
        kind = cfg.layer_kind(i)
        x = layer_cls(cfg, name=f"layers_{i}")(x, masks[kind], bias, positions, freqs[kind])
    y = RMSNorm(eps=cfg.norm_eps, dtype=jnp.float32, param_dtype=pdt, offset=cfg.norm_offset,
                name="decoder_norm")(x)
    if cfg.tie_embeddings:
      head = {"token_embedder": {"embedding": table.embedding}}
    else:
      head = {"logits_dense": {"kernel": Weight((cfg.d_model, cfg.vocab_size), ("embed", "vocab"),
                                                param_dtype=pdt, name="logits_dense")()}}
    return y if hidden else output_logits(cfg, {"decoder": head}, y)


class Weight(nn.Module):
  """A module holding one [fan_in, ...] param 'kernel' (Kernel's init) and returning it: the untied
  output layer's logits_dense/kernel, which output_logits applies."""
  shape: Sequence[int]
  axes: Sequence[str]
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self):
    return self.param("kernel", nn.with_logical_partitioning(_fan_in_init(self.shape[0]), tuple(self.axes)),
                      tuple(self.shape), self.param_dtype)


class TokenEmbedder(nn.Module):
  """t5x Embed: param 'embedding' [V, d] ('vocab', 'embed'), init N(0, 1)."""
  num_embeddings: int
  features: int
  param_dtype: Any = jnp.float32

  def setup(self):
    self.embedding = self.param("embedding", nn.with_logical_partitioning(
        nn.initializers.normal(stddev=1.0), ("vocab", "embed")),
        (self.num_embeddings, self.features), self.param_dtype)

  def __call__(self, tokens):
    return jnp.take(gathered(self.embedding, ("vocab", "embed")), tokens, axis=0)


class Transformer(nn.Module):
  """Wrapper that gives the outer 'decoder/' scope, like t5x's DecoderWrapper.

  __call__(tokens [B, T] int32, segment_ids [B, T] | None, positions [B, T] | None, hidden=False)
    -> logits [B, T, V] float32 (hidden=True: the normed hidden states [B, T, d] float32).
  With config.scan_layers the params it applies are stack_layers' tree (apply() stacks them).
  """
  config: ModelConfig

  def setup(self):
    self.decoder = Decoder(self.config)

  def __call__(self, tokens, segment_ids=None, positions=None, hidden=False):
    return self.decoder(tokens, segment_ids, positions, hidden)


def init_params(config: ModelConfig, rng: Array, *, boxed: bool = False):
  """Fresh parameters {'decoder': {...}} (t5x's layers_N tree, whatever scan_layers says: the same
  values either way); boxed=True keeps flax's Partitioned metadata."""
  variables = Transformer(config.replace(scan_layers=False)).init(rng, jnp.zeros((1, 1), jnp.int32))
  params = variables["params"]
  return params if boxed else nn.unbox(params)


def param_shapes(config: ModelConfig):
  """The parameter tree of `config` as jax.ShapeDtypeStruct leaves (no compute, no memory)."""
  return jax.eval_shape(lambda: init_params(config, jax.random.PRNGKey(0)))


def logical_axes(config: ModelConfig):
  """Tree of PartitionSpecs with logical axis names ('vocab', 'embed', 'heads', ...)."""
  boxed = jax.eval_shape(lambda: init_params(config, jax.random.PRNGKey(0), boxed=True))
  return nn.get_partition_spec(boxed)


def layer_names(config: ModelConfig):
  """The layers' keys in the param tree: layers_0 .. layers_{n-1}."""
  return [f"layers_{i}" for i in range(config.n_layers)]


def restack(config: ModelConfig, tree, combine):
  """A tree shaped like the params (arrays, shardings, ShapeDtypeStructs) with decoder/layers_i/...
  replaced by decoder/layers/layer/..., each leaf combine([the n layers' leaves]): the tree the
  scanned forward applies (stack_layers)."""
  dec = dict(tree["decoder"])
  layers = [dec.pop(name) for name in layer_names(config)]
  stacked = jax.tree_util.tree_map(lambda *xs: combine(xs), *layers)
  return {**tree, "decoder": {**dec, "layers": {"layer": stacked}}}


def is_stacked(params) -> bool:
  """Whether params are stack_layers' tree (decoder/layers/layer) rather than t5x's layers_N."""
  return "layers" in params["decoder"]


def stack_layers(config: ModelConfig, params):
  """t5x's tree -> the tree the scanned forward applies (restack): every layer leaf stacked on a new
  leading axis [n, ...] (logical axis 'layers'). Inside a compiled program this is one concatenation
  per leaf, sharded as its leaves (constrained under sharding.activation_rules)."""
  stacked = restack(config, params, jnp.stack)
  axes = _layer_axes(config)
  layer = jax.tree_util.tree_map(lambda a, x: nn.with_logical_constraint(x, ("layers",) + tuple(a)), axes,
                                 stacked["decoder"]["layers"]["layer"],
                                 is_leaf=lambda a: isinstance(a, jax.sharding.PartitionSpec))
  return {**stacked, "decoder": {**stacked["decoder"], "layers": {"layer": layer}}}


@functools.lru_cache(maxsize=64)
def _layer_axes(config: ModelConfig):
  """Logical axes (PartitionSpecs) of one layer's leaves (those of layers_0)."""
  return logical_axes(config.replace(scan_layers=False))["decoder"]["layers_0"]


def apply(config: ModelConfig, params, tokens, segment_ids=None, positions=None, hidden: bool = False, **kw):
  """Functional forward on t5x's tree: logits [B, T, V] float32 (hidden=True: the normed hidden
  states [B, T, d] float32, for output_logits). scan_layers: the layers stacked first (stack_layers),
  unless params already are (a KD teacher stacked once: trainer.stack_teacher)."""
  if config.scan_layers and not is_stacked(params):
    params = stack_layers(config, params)
  return Transformer(config).apply({"params": params}, tokens, segment_ids, positions, hidden, **kw)
