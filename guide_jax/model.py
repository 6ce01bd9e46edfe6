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
  return jnp.bfloat16 if name == "bfloat16" else jnp.float32


def _fan_in_init(fan_in: int, scale: float = 1.0):
  """Normal init with variance scale / fan_in (t5x's variance_scaling(1, 'fan_in'))."""
  stddev = math.sqrt(scale / fan_in)
  return lambda key, shape, dtype: stddev * jax.random.normal(key, shape, dtype)


class RMSNorm(nn.Module):
  """T5 layer norm: x / sqrt(mean(x^2) + eps) * scale; param 'scale' [d] ('embed',)."""
  eps: float = 1e-6
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                       (x.shape[-1],), self.param_dtype)
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (y * scale.astype(jnp.float32)).astype(self.dtype)


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

  @nn.compact
  def __call__(self, x):
    shape = tuple(self.in_shape) + tuple(self.out_shape)
    fan_in = int(np.prod(self.in_shape))
    kernel = self.param("kernel", nn.with_logical_partitioning(
        _fan_in_init(fan_in, self.init_scale), tuple(self.axes)), shape, self.param_dtype)
    n_in = len(self.in_shape)
    contract = (tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in)))
    return jax.lax.dot_general(x.astype(self.dtype), kernel.astype(self.dtype), (contract, ((), ())))


def rope_frequencies(config: ModelConfig) -> np.ndarray:
  """RoPE inverse frequencies [l/2] float32, as transformers' ROPE_INIT_FUNCTIONS compute them.

  Base: theta^(-2i/l), i < l/2. rope_scaling 'linear' divides them all by the factor; 'llama3'
  (Llama 3.1) keeps wavelengths 2 pi / freq below original / high_freq_factor, divides those above
  original / low_freq_factor by the factor and interpolates in between with
  s = (original / wavelength - low) / (high - low): (1 - s) freq / factor + s freq.
  Computed in float64 at trace time (a constant of the compiled program).
  """
  l = config.head_dim
  freqs = 1.0 / config.rope_theta ** (np.arange(0, l, 2, dtype=np.float64) / l)
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


class SelfAttention(nn.Module):
  """Causal multi-head self-attention with t5x kernel names query/key/value/out."""
  config: ModelConfig

  @nn.compact
  def __call__(self, x, mask, bias, positions):
    cfg = self.config
    d, h, l = cfg.d_model, cfg.n_heads, cfg.head_dim
    dt, pdt = _dtype(cfg.dtype), _dtype(cfg.param_dtype)
    proj = functools.partial(Kernel, in_shape=(d,), out_shape=(h * l,), axes=("embed", "joined_kv"),
                             dtype=dt, param_dtype=pdt)
    heads = lambda y: y.reshape(y.shape[:-1] + (h, l))  # heads-major, as t5x's DenseGeneral
    q = heads(proj(name="query", init_scale=1.0 / l)(x))  # 1/sqrt(l) folded into the query kernel
    k = heads(proj(name="key")(x))
    v = heads(proj(name="value")(x))
    if cfg.position_embedding == "rope":
      freqs = rope_frequencies(cfg)
      q, k = rope(q, positions, freqs), rope(k, positions, freqs)
    y = jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, scale=1.0,
                                     implementation=cfg.attention_impl if cfg.attention_impl != "xla" else None)
    y = y.reshape(y.shape[:-2] + (h * l,))
    return Kernel(in_shape=(h * l,), out_shape=(d,), axes=("joined_kv", "embed"), dtype=dt,
                  param_dtype=pdt, name="out")(y)


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
  """Pre-norm block: x + attn(norm(x)), then + mlp(norm(.))."""
  config: ModelConfig

  @nn.compact
  def __call__(self, x, mask, bias, positions):
    cfg = self.config
    norm = functools.partial(RMSNorm, eps=cfg.norm_eps, dtype=_dtype(cfg.dtype),
                             param_dtype=_dtype(cfg.param_dtype))
    x = x + SelfAttention(cfg, name="self_attention")(
        norm(name="pre_self_attention_layer_norm")(x), mask, bias, positions)
    return x + MlpBlock(cfg, name="mlp")(norm(name="pre_mlp_layer_norm")(x))


_REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


class Decoder(nn.Module):
  """Embedding -> n DecoderLayers -> RMSNorm -> logits (float32)."""
  config: ModelConfig

  @nn.compact
  def __call__(self, tokens, segment_ids=None, positions=None):
    cfg = self.config
    dt, pdt = _dtype(cfg.dtype), _dtype(cfg.param_dtype)
    b, t = tokens.shape
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(t), (b, t))
    mask = jnp.tril(jnp.ones((t, t), bool))[None, None]
    if segment_ids is not None:
      mask = mask & (segment_ids[:, None, :, None] == segment_ids[:, None, None, :])
    mask = jnp.broadcast_to(mask, (b, 1, t, t))
    bias = None
    if cfg.position_embedding == "relpos":
      bias = RelativePositionBiases(cfg.n_heads, cfg.relpos_buckets, cfg.relpos_max_distance,
                                    param_dtype=pdt, name="relpos_bias")(t).astype(dt)
    table = TokenEmbedder(cfg.vocab_size, cfg.d_model, param_dtype=pdt, name="token_embedder")
    x = table(tokens).astype(dt)
    layer_cls = DecoderLayer
    if cfg.remat != "none":
      layer_cls = nn.remat(DecoderLayer, policy=_REMAT_POLICIES[cfg.remat])
    for i in range(cfg.n_layers):
      x = layer_cls(cfg, name=f"layers_{i}")(x, mask, bias, positions)
    y = RMSNorm(eps=cfg.norm_eps, dtype=jnp.float32, param_dtype=pdt, name="decoder_norm")(x)
    if cfg.tie_embeddings:
      logits = table.attend(y) / jnp.sqrt(jnp.float32(cfg.d_model))
    else:
      logits = Kernel(in_shape=(cfg.d_model,), out_shape=(cfg.vocab_size,), axes=("embed", "vocab"),
                      dtype=jnp.float32, param_dtype=pdt, name="logits_dense")(y)
    return logits


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
    return jnp.take(self.embedding, tokens, axis=0)

  def attend(self, y):
    """y [..., d] -> y E^T [..., V] in float32."""
    return jnp.einsum("...d,vd->...v", y.astype(jnp.float32), self.embedding.astype(jnp.float32))


class Transformer(nn.Module):
  """Wrapper that gives the outer 'decoder/' scope, like t5x's DecoderWrapper.

  __call__(tokens [B, T] int32, segment_ids [B, T] | None, positions [B, T] | None)
    -> logits [B, T, V] float32.
  """
  config: ModelConfig

  def setup(self):
    self.decoder = Decoder(self.config)

  def __call__(self, tokens, segment_ids=None, positions=None):
    return self.decoder(tokens, segment_ids, positions)


def init_params(config: ModelConfig, rng: Array, *, boxed: bool = False):
  """Fresh parameters {'decoder': {...}}; boxed=True keeps flax's Partitioned metadata."""
  variables = Transformer(config).init(rng, jnp.zeros((1, 1), jnp.int32))
  params = variables["params"]
  return params if boxed else nn.unbox(params)


def param_shapes(config: ModelConfig):
  """The parameter tree of `config` as jax.ShapeDtypeStruct leaves (no compute, no memory)."""
  return jax.eval_shape(lambda: init_params(config, jax.random.PRNGKey(0)))


def logical_axes(config: ModelConfig):
  """Tree of PartitionSpecs with logical axis names ('vocab', 'embed', 'heads', ...)."""
  boxed = jax.eval_shape(lambda: init_params(config, jax.random.PRNGKey(0), boxed=True))
  return nn.get_partition_spec(boxed)


def apply(config: ModelConfig, params, tokens, segment_ids=None, positions=None, **kw):
  """Functional forward: logits [B, T, V] float32."""
  return Transformer(config).apply({"params": params}, tokens, segment_ids, positions, **kw)
