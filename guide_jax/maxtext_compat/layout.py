"""MaxText's llama2-block parameter tree <-> guide_jax's (t5x's decoder-only) tree: shapes and
relayouts, pure functions (numpy or jax arrays; jit-able).

MaxText's tree (under the checkpoint's params/params; d emb, h query heads, k kv heads, l head_dim,
f mlp, V vocab, L layers), as MaxText builds it (checked against MaxText's own models in
tests/maxtext/test_maxtext_teachers.py::test_shape_rule_is_maxtexts):
  token_embedder/embedding                                [V, d]     (top level, not under decoder)
  decoder/layers_{i}/pre_self_attention_layer_norm/scale  [d]        ours: pre_self_attention_layer_norm
  decoder/layers_{i}/post_self_attention_layer_norm/scale [d]        ours: pre_mlp_layer_norm
  decoder/layers_{i}/self_attention/query/kernel          [d, h, l]  ours [d, h*l] (heads-major)
  decoder/layers_{i}/self_attention/{key,value}/kernel    [d, k, l]  ours [d, k*l]
  decoder/layers_{i}/self_attention/out/kernel            [h, l, d]  ours [h*l, d]
  decoder/layers_{i}/mlp/{wi_0,wi_1}/kernel, wo/kernel    [d, f], [f, d]
  decoder/decoder_norm/scale                              [d]
  decoder/logits_dense/kernel                             [d, V]     (logits_via_embedding=false)
Scanned (scan_layers=true): decoder/layers/... with the layer axis inserted at position 1
(param_scan_axis=1): query [d, L, h, l], out [h, L, l, d], wi_0 [d, L, f], norm scales [d, L].
With interleaved RoPE pairs (rope_type=llama3.1) the query/key kernels' l axis holds pairs
(2i, 2i+1) where ours holds (i, i + l/2): INTERLEAVE permutes it.
"""
from typing import Dict, Iterator, Tuple

import numpy as np

from guide_jax.config import ModelConfig

# (ours within a layer, MaxText's within a layer, kind)
_LAYER_LEAVES = (
    ("pre_self_attention_layer_norm/scale", "pre_self_attention_layer_norm/scale", "norm"),
    ("pre_mlp_layer_norm/scale", "post_self_attention_layer_norm/scale", "norm"),
    ("self_attention/query/kernel", "self_attention/query/kernel", "query"),
    ("self_attention/key/kernel", "self_attention/key/kernel", "kv"),
    ("self_attention/value/kernel", "self_attention/value/kernel", "value"),
    ("self_attention/out/kernel", "self_attention/out/kernel", "out"),
    ("mlp/wi_0/kernel", "mlp/wi_0/kernel", "wi"),
    ("mlp/wi_1/kernel", "mlp/wi_1/kernel", "wi"),
    ("mlp/wo/kernel", "mlp/wo/kernel", "wo"),
)
SCAN_AXIS = 1  # MaxText's param_scan_axis


def interleave_permutation(head_dim: int) -> np.ndarray:
  """perm with ours[..., j] = maxtext[..., perm[j]] for interleaved RoPE: evens then odds."""
  return np.concatenate([np.arange(0, head_dim, 2), np.arange(1, head_dim, 2)])


def _layer_shapes(config: ModelConfig) -> Dict[str, Tuple[Tuple[int, ...], Tuple[str, ...]]]:
  """kind -> (MaxText per-layer shape, logical axes, ours' names)."""
  d, h, k, l, f = config.d_model, config.n_heads, config.kv_heads, config.head_dim, config.mlp_dim
  return {"norm": ((d,), ("embed",)), "query": ((d, h, l), ("embed", "heads", "kv")),
          "kv": ((d, k, l), ("embed", "heads", "kv")), "value": ((d, k, l), ("embed", "heads", "kv")),
          "out": ((h, l, d), ("heads", "kv", "embed")), "wi": ((d, f), ("embed", "mlp")),
          "wo": ((f, d), ("mlp", "embed"))}


def _top(config: ModelConfig):
  d, v = config.d_model, config.vocab_size
  top = {"token_embedder/embedding": ((v, d), ("vocab", "embed"), "decoder/token_embedder/embedding"),
         "decoder/decoder_norm/scale": ((d,), ("embed",), "decoder/decoder_norm/scale")}
  if not config.tie_embeddings:
    top["decoder/logits_dense/kernel"] = ((d, v), ("embed", "vocab"), "decoder/logits_dense/kernel")
  return top


def _scanned(shape, axes, n_layers):
  return shape[:SCAN_AXIS] + (n_layers,) + shape[SCAN_AXIS:], axes[:SCAN_AXIS] + ("layers",) + axes[SCAN_AXIS:]


def leaves(config: ModelConfig, scan_layers: bool) -> Dict[str, Tuple[Tuple[int, ...], Tuple[str, ...]]]:
  """{MaxText path (under params/params): (shape, logical axes)} of `config`'s model as MaxText
  builds it with scan_layers. Logical axes use guide_jax's names ('layers' for the scan axis)."""
  out = {path: (shape, axes) for path, (shape, axes, _) in _top(config).items()}
  kinds = _layer_shapes(config)
  for _, theirs, kind in _LAYER_LEAVES:
    shape, axes = kinds[kind]
    if scan_layers:
      out[f"decoder/layers/{theirs}"] = _scanned(shape, axes, config.n_layers)
    else:
      for i in range(config.n_layers):
        out[f"decoder/layers_{i}/{theirs}"] = (shape, axes)
  return out


def param_shapes(config: ModelConfig, scan_layers: bool) -> Dict[str, Tuple[int, ...]]:
  """{MaxText path: shape}: what MaxText builds for `config` (see leaves)."""
  return {path: shape for path, (shape, _) in leaves(config, scan_layers).items()}


def groups(config: ModelConfig, scan_layers: bool) -> Iterator[Tuple[str, str, Tuple[str, ...]]]:
  """(MaxText path, kind, ours' paths): every MaxText leaf with the guide_jax leaves it holds (one,
  or for a scanned leaf one per layer, in layer order). kind: 'top' or a layer leaf's kind."""
  for path, (_, _, ours) in _top(config).items():
    yield path, "top", (ours,)
  for mine, theirs, kind in _LAYER_LEAVES:
    if scan_layers:
      yield (f"decoder/layers/{theirs}", kind,
             tuple(f"decoder/layers_{i}/{mine}" for i in range(config.n_layers)))
    else:
      for i in range(config.n_layers):
        yield f"decoder/layers_{i}/{theirs}", kind, (f"decoder/layers_{i}/{mine}",)


def to_ours(x, kind: str, interleaved: bool, xp=np):
  """One MaxText per-layer (or top) array -> ours. xp: numpy or jax.numpy."""
  if kind in ("query", "kv") and interleaved:
    x = xp.take(x, interleave_permutation(x.shape[-1]), axis=-1)
  if kind in ("query", "kv", "value"):
    return x.reshape(x.shape[0], -1)
  if kind == "out":
    return x.reshape(-1, x.shape[-1])
  return x


def from_ours(x, kind: str, config: ModelConfig, interleaved: bool, xp=np):
  """One guide_jax array -> MaxText's per-layer (or top) layout (to_ours' inverse)."""
  h, k, l = config.n_heads, config.kv_heads, config.head_dim
  if kind == "query":
    x = x.reshape(x.shape[0], h, l)
  elif kind in ("kv", "value"):
    x = x.reshape(x.shape[0], k, l)
  elif kind == "out":
    return x.reshape(h, l, x.shape[-1])
  if kind in ("query", "kv") and interleaved:
    x = xp.take(x, np.argsort(interleave_permutation(l)), axis=-1)
  return x


def split_layers(x, xp=np):
  """A scanned MaxText array -> its per-layer arrays (the scan axis removed)."""
  return [xp.take(x, i, axis=SCAN_AXIS) for i in range(x.shape[SCAN_AXIS])]


def stack_layers(xs, xp=np):
  """Per-layer MaxText arrays -> the scanned array (split_layers' inverse)."""
  return xp.stack(list(xs), axis=SCAN_AXIS)
