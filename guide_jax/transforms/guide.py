"""GUIDE: map a teacher's parameters into a smaller student's PyTree (GUIDE_SPEC.md sections 1-3).

With M [d_T, d_S] the PCA components and x_T ~ x_S M^T, for a block whose pre-norm is RMSNorm:
  input-side kernels  (query, key, value, wi_0, wi_1): W_S = sqrt(d_T / d_S) * M^T diag(g_T) W_T
  output-side kernels (out, wo):                        W_S = W_T M
and the student's norm scales are ones, so RMSNorm_T(x_S M^T) W_T = RMSNorm_S(x_S) W_S exactly.
Heads, head dims and MLP width shrink by uniform selection first.
"""
import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax.core import unfreeze
from jax.sharding import Mesh

from guide_jax import model
from guide_jax.config import ModelConfig
from guide_jax.transforms import validate
from guide_jax.transforms.pca import HIGHEST, pca_embedding
from guide_jax.transforms.select import select_layers, uniform_select

BLOCKS = ("first", "all", "none")
OTHER_BLOCKS = ("uniform_selection", "random")


def _input_side(kernel, norm_scale, components, scale):
  """kernel [d_T, ...] -> scale * M^T diag(g) kernel  [d_S, ...]."""
  gk = kernel.astype(jnp.float32) * norm_scale.astype(jnp.float32).reshape((-1,) + (1,) * (kernel.ndim - 1))
  return scale * jnp.tensordot(components.T, gk, axes=1, precision=HIGHEST)


def _output_side(kernel, components):
  """kernel [..., d_T] -> kernel M  [..., d_S]."""
  return jnp.tensordot(kernel.astype(jnp.float32), components, axes=1, precision=HIGHEST)


def map_block(teacher_layer, components, student_config: ModelConfig):
  """One teacher decoder layer -> the student's layer in PCA coordinates (spec section 2).

  teacher_layer: t5x layer dict (pre_self_attention_layer_norm, self_attention, pre_mlp_layer_norm,
  mlp). components: M [d_T, d_S]. Heads, head dims and MLP width are uniformly selected first.
  """
  s = student_config
  d_t, d_s = components.shape
  rescale = math.sqrt(d_t / d_s)
  attn, mlp = teacher_layer["self_attention"], teacher_layer["mlp"]
  g_attn = teacher_layer["pre_self_attention_layer_norm"]["scale"]
  g_mlp = teacher_layer["pre_mlp_layer_norm"]["scale"]
  qkv_shape = (d_t, s.n_heads, s.head_dim)
  out = {name: {"kernel": _input_side(uniform_select(attn[name]["kernel"], qkv_shape), g_attn,
                                      components, rescale)}
         for name in ("query", "key", "value")}
  out["out"] = {"kernel": _output_side(uniform_select(attn["out"]["kernel"], (s.n_heads, s.head_dim, d_t)),
                                       components)}
  wi_shape = (d_t, s.mlp_dim)
  new_mlp = {name: {"kernel": _input_side(uniform_select(mlp[name]["kernel"], wi_shape), g_mlp,
                                          components, rescale)}
             for name in ("wi_0", "wi_1")}
  new_mlp["wo"] = {"kernel": _output_side(uniform_select(mlp["wo"]["kernel"], (s.mlp_dim, d_t)), components)}
  ones = jnp.ones((d_s,), jnp.float32)
  return {"pre_self_attention_layer_norm": {"scale": ones}, "self_attention": out,
          "pre_mlp_layer_norm": {"scale": ones}, "mlp": new_mlp}


def map_first_block(teacher_params, components, student_config: ModelConfig):
  """The paper's choice: teacher decoder/layers_0 mapped by map_block."""
  return map_block(teacher_params["decoder"]["layers_0"], components, student_config)


def select_block(teacher_layer, student_layer_shapes):
  """Weight Selection of a whole layer: every array uniformly selected to the student's shape."""
  return jax.tree_util.tree_map(lambda t, s: uniform_select(t, s.shape), teacher_layer, student_layer_shapes)


def map_output(teacher_decoder, components, teacher_config: ModelConfig, student_config: ModelConfig):
  """decoder_norm (+ logits_dense when the student is untied) in the student's coordinates.

  Untied student: logits kernel maps like an input-side kernel and the final norm becomes ones.
  Tied student: logits = norm(y) g E_S^T / sqrt(d_S); the best diagonal g_S with
  diag(g_S) M^T ~ M^T diag(g_T) is g_S = diag(M^T diag(g_T) M) (exact when g_T is uniform).
  """
  d_t, d_s = components.shape
  g_t = teacher_decoder["decoder_norm"]["scale"].astype(jnp.float32)
  if student_config.tie_embeddings:
    return {"decoder_norm": {"scale": jnp.einsum("ds,d->s", components ** 2, g_t, precision=HIGHEST)}}
  if teacher_config.tie_embeddings:  # teacher logits = norm(y) g E_T^T / sqrt(d_T)
    kernel_t = teacher_decoder["token_embedder"]["embedding"].astype(jnp.float32).T / math.sqrt(d_t)
  else:
    kernel_t = teacher_decoder["logits_dense"]["kernel"]
  return {"decoder_norm": {"scale": jnp.ones((d_s,), jnp.float32)},
          "logits_dense": {"kernel": _input_side(kernel_t, g_t, components, math.sqrt(d_t / d_s))}}


def guide_init(teacher_params, teacher_config: ModelConfig, student_config: ModelConfig, *,
               rng: Optional[jax.Array] = None, student_params=None, blocks: str = "first",
               other_blocks: str = "uniform_selection", layer_selection: str = "first_n",
               center: bool = False, mesh: Optional[Mesh] = None, return_info: bool = False):
  """GUIDE initialization of a student from a teacher (t5x decoder-only parameter dicts).

  teacher_params: {'decoder': {...}} for teacher_config. student_params: a fresh student tree used
  for the parts that start at random (made from `rng` when not given).
  blocks: which student blocks get the PCA mapping ('first' as in the paper, 'all', 'none').
  other_blocks: how the rest start ('uniform_selection' of teacher weights, or 'random').
  layer_selection: which teacher layer feeds each student layer ('first_n' or 'uniform').
  center: student table (E_T - mu) M instead of E_T M. mesh: shard the PCA's vocab axis.
  Returns the student tree (same structure, shapes and dtypes as a fresh student), and with
  return_info=True also a dict: explained_variance (sum of ratios), teacher_layers, components.
  All inputs are checked before any compute; a problem raises one ValueError naming it.
  """
  if blocks not in BLOCKS:
    raise ValueError(f"blocks must be one of {BLOCKS}, got {blocks!r}")
  if other_blocks not in OTHER_BLOCKS:
    raise ValueError(f"other_blocks must be one of {OTHER_BLOCKS}, got {other_blocks!r}")
  validate.check_dimensions(teacher_config, student_config)
  teacher_layers = select_layers(teacher_config.n_layers, student_config.n_layers, layer_selection)
  validate.check_tree(teacher_params, teacher_config, "teacher params")
  if student_params is not None:
    validate.check_tree(student_params, student_config, "student params")
  elif rng is None:
    raise ValueError("guide_init needs rng or student_params for the parts that start at random")
  validate.check_finite(teacher_params, "teacher params")

  teacher = unfreeze(teacher_params)["decoder"]
  fresh = unfreeze(student_params if student_params is not None
                   else model.init_params(student_config, rng))["decoder"]
  pca = pca_embedding(teacher["token_embedder"]["embedding"], student_config.d_model, mesh=mesh,
                      center=center)
  m = pca.components
  student = {"token_embedder": {"embedding": pca.embedding}}
  for i, j in enumerate(teacher_layers):
    name = f"layers_{i}"
    if blocks == "all" or (blocks == "first" and i == 0):
      student[name] = map_block(teacher[f"layers_{j}"], m, student_config)
    elif other_blocks == "uniform_selection":
      student[name] = select_block(teacher[f"layers_{j}"], fresh[name])
    else:
      student[name] = fresh[name]
  if "relpos_bias" in fresh:
    student["relpos_bias"] = select_block(teacher["relpos_bias"], fresh["relpos_bias"])
  student.update(map_output(teacher, m, teacher_config, student_config))
  # Same dtypes (and placement-agnostic values) as a fresh student.
  result = {"decoder": jax.tree_util.tree_map(lambda new, ref: jnp.asarray(new, ref.dtype), student, fresh)}
  if not return_info:
    return result
  info = {"explained_variance": float(jnp.sum(pca.explained_variance_ratio)),
          "teacher_layers": [int(j) for j in np.asarray(teacher_layers)], "components": m,
          "blocks": blocks, "other_blocks": other_blocks, "layer_selection": layer_selection,
          "center": center}
  return result, info
