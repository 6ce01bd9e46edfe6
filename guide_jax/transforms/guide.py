"""GUIDE: map a teacher's parameters into a smaller student's PyTree (GUIDE_SPEC.md sections 1-3).

With M [d_T, d_S] the PCA components and x_T ~ x_S M^T, for a block whose pre-norm is RMSNorm:
  input-side kernels  (query, key, value, wi_0, wi_1): W_S = sqrt(d_T / d_S) * M^T diag(g_T) W_T
  output-side kernels (out, wo):                        W_S = W_T M
and the student's norm scales are ones, so RMSNorm_T(x_S M^T) W_T = RMSNorm_S(x_S) W_S exactly.
Heads, head dims and MLP width shrink by uniform selection first (heads on the heads-major
reshape of t5x's joined [d, h*l] kernels; grouped-query teachers keep whole kv groups and the
query heads inside them: transforms/common.py). Biases, q/k norms, post-norms and the embedding
styles of the Hugging Face families: docs/gqa_and_families.md.

guide_init is one compiled program: with a mesh, the teacher goes in with the shardings of its
logical axes and the student comes out with its own, so no device holds more than its shards of
either tree (the covariance all-reduces a [d_T, d_T] partial; M is replicated).
"""
import functools
import math
from typing import Any, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from guide_jax import model
from guide_jax.config import GuideConfig, ModelConfig
from guide_jax.transforms import common, validate
from guide_jax.transforms.common import select_block
from guide_jax.transforms.pca import HIGHEST, pca_table
from guide_jax.transforms.select import select_layers, uniform_select

_QKV = ("query", "key", "value")


class GuideInfo(NamedTuple):
  """What guide_init found: explained_variance_ratio [d_S] of the kept PCA directions,
  components M [d_T, d_S], and the teacher layer feeding each student layer."""
  explained_variance_ratio: jax.Array
  components: jax.Array
  teacher_layers: Tuple[int, ...]

  @property
  def explained_variance(self) -> float:
    """Sum of the kept directions' variance ratios (1.0 = the student table loses nothing)."""
    return float(jnp.sum(self.explained_variance_ratio))


class GuideResult(NamedTuple):
  params: Any  # {'decoder': {...}}: the student's tree, dtypes and (with a mesh) shardings
  info: GuideInfo


def _input_side(kernel, norm_scale, components, scale):
  """kernel [d_T, ...] -> scale * M^T diag(g) kernel  [d_S, ...] (g folded into M: no kernel copy)."""
  left = (scale * components * norm_scale.astype(jnp.float32)[:, None]).T  # [d_S, d_T]
  return jnp.tensordot(left, kernel.astype(jnp.float32), axes=1, precision=HIGHEST)


def _output_side(kernel, components):
  """kernel [..., d_T] -> kernel M  [..., d_S]."""
  return jnp.tensordot(kernel.astype(jnp.float32), components, axes=1, precision=HIGHEST)


def map_block(teacher_layer, components, teacher_config: ModelConfig, student_config: ModelConfig):
  """One teacher decoder layer (norm scales as gains) -> the student's layer in PCA coordinates.

  teacher_layer: t5x layer dict (pre_self_attention_layer_norm, self_attention, pre_mlp_layer_norm,
  mlp; post norms with post_norms). components: M [d_T, d_S]. Kv groups, query heads, head dims
  and MLP width are uniformly selected first (common.select_block at width d_T). Then:
    input-side kernels: sqrt(d_T / d_S) M^T diag(g) W; their biases, q/k norm gains: unchanged;
    output-side kernels and the out bias: W M, b M;
    pre-norm gains: ones (the teacher's g went into the kernels);
    post-norm gains: sqrt(d_T / d_S) diag(M^T diag(g) M)  **approximate** (docs/gqa_and_families.md).
  """
  d_t, d_s = components.shape
  rescale = math.sqrt(d_t / d_s)
  g_attn = teacher_layer["pre_self_attention_layer_norm"]["scale"]
  g_mlp = teacher_layer["pre_mlp_layer_norm"]["scale"]
  narrow = select_block(teacher_layer, teacher_config, student_config, d_t)
  attn, mlp = narrow["self_attention"], narrow["mlp"]
  out = dict(attn)
  for name in _QKV:
    out[name] = {**attn[name], "kernel": _input_side(attn[name]["kernel"], g_attn, components, rescale)}
  out["out"] = {key: _output_side(value, components) for key, value in attn["out"].items()}
  new_mlp = {name: {"kernel": _input_side(mlp[name]["kernel"], g_mlp, components, rescale)}
             for name in ("wi_0", "wi_1")}
  new_mlp["wo"] = {"kernel": _output_side(mlp["wo"]["kernel"], components)}
  ones = jnp.ones((d_s,), jnp.float32)
  layer = {"pre_self_attention_layer_norm": {"scale": ones}, "self_attention": out,
           "pre_mlp_layer_norm": {"scale": ones}, "mlp": new_mlp}
  for name in ("post_self_attention_layer_norm", "post_mlp_layer_norm"):
    if name in narrow:
      g = narrow[name]["scale"].astype(jnp.float32)
      layer[name] = {"scale": rescale * jnp.einsum("ds,d->s", components ** 2, g, precision=HIGHEST)}
  return layer


def output_rescale(teacher_config: ModelConfig, student_config: ModelConfig, d_t: int, d_s: int) -> float:
  """r = c_T sqrt(d_T / d_S) a_S / (c_S a_T): the tied student's final-norm factor (a, c:
  model.embedding_scale, model.tied_logits_scale); 1 for t5x -> t5x and gemma -> gemma."""
  a_t, a_s = model.embedding_scale(teacher_config), model.embedding_scale(student_config)
  c_t, c_s = model.tied_logits_scale(teacher_config), model.tied_logits_scale(student_config)
  return c_t * math.sqrt(d_t / d_s) * a_s / (c_s * a_t)


def map_output(teacher_decoder, components, teacher_config: ModelConfig, student_config: ModelConfig):
  """decoder_norm (+ logits_dense when the student is untied) in the student's coordinates.

  Untied student: logits kernel maps like an input-side kernel and the final norm becomes ones
  (a tied teacher's kernel is c_T E_T^T, model.tied_logits_scale).
  Tied student: logits = c_S norm(y) g_S E_S^T; the best diagonal g_S with diag(g_S) M^T ~
  M^T diag(g_T) is g_S = r diag(M^T diag(g_T) M) (exact when g_T is uniform; r: output_rescale).
  The teacher's decoder_norm scale is a gain (common.to_gains).
  """
  d_t, d_s = components.shape
  g_t = teacher_decoder["decoder_norm"]["scale"].astype(jnp.float32)
  if student_config.tie_embeddings:
    r = output_rescale(teacher_config, student_config, d_t, d_s)
    return {"decoder_norm": {"scale": r * jnp.einsum("ds,d->s", components ** 2, g_t, precision=HIGHEST)}}
  if teacher_config.tie_embeddings:  # teacher logits = c_T norm(y) g E_T^T
    kernel_t = teacher_decoder["token_embedder"]["embedding"].astype(jnp.float32).T
    if teacher_config.embedding_style == "t5x":
      kernel_t = kernel_t / math.sqrt(d_t)
  else:
    kernel_t = teacher_decoder["logits_dense"]["kernel"]
  return {"decoder_norm": {"scale": jnp.ones((d_s,), jnp.float32)},
          "logits_dense": {"kernel": _input_side(kernel_t, g_t, components, math.sqrt(d_t / d_s))}}


def _guide(teacher_params, teacher_config: ModelConfig, student_config: ModelConfig, guide: GuideConfig,
           teacher_layers: Tuple[int, ...]):
  """The traced body of guide_init: teacher tree -> (student tree, ratio [d_S], M [d_T, d_S])."""
  t, s = teacher_config, student_config
  teacher = common.to_gains(teacher_params["decoder"], t)
  table = teacher["token_embedder"]["embedding"]  # vocab-sharded as restored: local rows only
  pca = pca_table(table, s.d_model, table.shape[0], guide.center)
  m = pca.components
  fresh = None
  if guide.starts_random:  # only the used parts survive XLA's dead-code elimination
    fresh = common.to_gains(model.init_params(s, jax.random.PRNGKey(guide.seed))["decoder"], s)
  embedding = pca.embedding
  if model.embedding_scale(t) != model.embedding_scale(s):  # x_S0 = a_S E_S[tok] = x_T0 M
    embedding = embedding * (model.embedding_scale(t) / model.embedding_scale(s))
  student = {"token_embedder": {"embedding": embedding}}
  for i, j in enumerate(teacher_layers):
    layer = teacher[f"layers_{j}"]
    if guide.blocks == "all" or (guide.blocks == "first" and i == 0):
      student[f"layers_{i}"] = map_block(layer, m, t, s)
    elif guide.other_blocks == "uniform_selection":
      student[f"layers_{i}"] = select_block(layer, t, s, s.d_model)
    else:
      student[f"layers_{i}"] = fresh[f"layers_{i}"]
  if s.position_embedding == "relpos":
    student["relpos_bias"] = {"rel_embedding": uniform_select(common.select_heads_axis(
        teacher["relpos_bias"]["rel_embedding"], 0, t, s), (s.n_heads, s.relpos_buckets))}
  student.update(map_output(teacher, m, t, s))
  return common.cast_to_student(student, s), pca.explained_variance_ratio, m


def _program(teacher_config: ModelConfig, student_config: ModelConfig, guide: GuideConfig,
             mesh: Optional[Mesh]):
  """(jitted teacher -> (params, ratio, M), teacher shardings or None, teacher_layers)."""
  teacher_layers = tuple(int(j) for j in select_layers(teacher_config.n_layers, student_config.n_layers,
                                                       guide.layer_selection))
  body = functools.partial(_guide, teacher_config=teacher_config, student_config=student_config,
                           guide=guide, teacher_layers=teacher_layers)
  program, t_sh = common.compile_init(body, teacher_config, student_config, mesh, extra_outputs=2)
  return program, t_sh, teacher_layers


def _check(teacher_config: ModelConfig, student_config: ModelConfig, guide: GuideConfig) -> None:
  if not isinstance(guide, GuideConfig):
    raise ValueError(f"guide must be a GuideConfig, got {type(guide).__name__}")
  common.check_configs(teacher_config, student_config)
  select_layers(teacher_config.n_layers, student_config.n_layers, guide.layer_selection)


def guide_init(teacher_params, teacher_config: ModelConfig, student_config: ModelConfig,
               guide: GuideConfig = GuideConfig(), *, mesh: Optional[Mesh] = None) -> GuideResult:
  """GUIDE initialization of a student from a teacher (t5x decoder-only parameter dicts).

  teacher_params: {'decoder': {...}} for teacher_config (numpy, jax, or sharded global arrays).
  guide: GuideConfig (blocks, other_blocks, layer_selection, center, seed).
  mesh: run sharded: the teacher is placed with its logical-axis shardings (a no-op when it was
    restored that way), the student comes back with the student's, as training places it.
  Returns GuideResult(params, info): params has the structure, shapes and dtypes of a fresh
  student; parts that start at random come from model.init_params(student, PRNGKey(guide.seed)).
  All inputs are checked (shapes, dtypes, dimensions; not the teacher's values, which its loader
  checks once) before any compute; a problem raises one ValueError naming it. The student that
  comes out is checked finite.
  """
  _check(teacher_config, student_config, guide)
  validate.check_tree(teacher_params, teacher_config, "teacher params")
  program, t_sh, teacher_layers = _program(teacher_config, student_config, guide, mesh)
  params, ratio, m = common.run_init(program, t_sh, teacher_params, teacher_config)
  common.check_student(params, "GUIDE")
  return GuideResult(params, GuideInfo(ratio, m, teacher_layers))


def compiled_guide_init(teacher_config: ModelConfig, student_config: ModelConfig, mesh: Mesh,
                        guide: GuideConfig = GuideConfig(), teacher_dtype=jnp.float32):
  """guide_init's compiled program on `mesh`, from shapes only (for HLO and memory_analysis checks)."""
  _check(teacher_config, student_config, guide)
  program, _, _ = _program(teacher_config, student_config, guide, mesh)
  shapes = jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s.shape, teacher_dtype),
                                  model.param_shapes(teacher_config))
  return program.lower(shapes).compile()
