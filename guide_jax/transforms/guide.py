"""GUIDE: map a teacher's parameters into a smaller student's PyTree (docs/algorithm.md sections 1-3).

With M [d_T, d_S] the PCA components and x_T ~ x_S M^T, for a block whose pre-norm is RMSNorm:
  input-side kernels  (query, key, value, wi_0, wi_1): W_S = sqrt(d_T / d_S) * M^T diag(g_T) W_T
  output-side kernels (out, wo):                        W_S = W_T M
and the student's norm scales are ones, so RMSNorm_T(x_S M^T) W_T = RMSNorm_S(x_S) W_S exactly.
Heads, head dims and MLP width shrink by uniform selection first (heads on the heads-major
reshape of t5x's joined [d, h*l] kernels).

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

from guide_jax import model, sharding
from guide_jax.config import GuideConfig, ModelConfig
from guide_jax.transforms import validate
from guide_jax.transforms.pca import HIGHEST, pca_table
from guide_jax.transforms.select import select_heads, select_layers, uniform_select

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


def select_block(teacher_layer, teacher_config: ModelConfig, student_config: ModelConfig, d_out: int):
  """Uniform selection of every array of one teacher layer, the model width shrunk to d_out.

  Attention kernels select whole heads on their heads-major reshape ([d, h*l] -> [d, h, l]).
  d_out = d_S gives Weight Selection of the whole layer; d_out = d_T keeps the teacher's width
  for map_block's PCA mapping.
  """
  t, s = teacher_config, student_config
  heads, head_dim = (t.n_heads, s.n_heads), (t.head_dim, s.head_dim)
  attn, mlp = teacher_layer["self_attention"], teacher_layer["mlp"]
  d_t = t.d_model
  new_attn = {name: {"kernel": select_heads(attn[name]["kernel"], 1, heads, head_dim, (d_t, d_out))}
              for name in _QKV}
  new_attn["out"] = {"kernel": select_heads(attn["out"]["kernel"], 0, heads, head_dim, (d_t, d_out))}
  new_mlp = {name: {"kernel": uniform_select(mlp[name]["kernel"], (d_out, s.mlp_dim))} for name in ("wi_0", "wi_1")}
  new_mlp["wo"] = {"kernel": uniform_select(mlp["wo"]["kernel"], (s.mlp_dim, d_out))}
  norms = {name: {"scale": uniform_select(teacher_layer[name]["scale"], (d_out,))}
           for name in ("pre_self_attention_layer_norm", "pre_mlp_layer_norm")}
  return {**norms, "self_attention": new_attn, "mlp": new_mlp}


def map_block(teacher_layer, components, teacher_config: ModelConfig, student_config: ModelConfig):
  """One teacher decoder layer -> the student's layer in PCA coordinates (spec section 2).

  teacher_layer: t5x layer dict (pre_self_attention_layer_norm, self_attention, pre_mlp_layer_norm,
  mlp). components: M [d_T, d_S]. Heads, head dims and MLP width are uniformly selected first.
  """
  d_t, d_s = components.shape
  rescale = math.sqrt(d_t / d_s)
  g_attn = teacher_layer["pre_self_attention_layer_norm"]["scale"]
  g_mlp = teacher_layer["pre_mlp_layer_norm"]["scale"]
  narrow = select_block(teacher_layer, teacher_config, student_config, d_t)
  attn, mlp = narrow["self_attention"], narrow["mlp"]
  out = {name: {"kernel": _input_side(attn[name]["kernel"], g_attn, components, rescale)} for name in _QKV}
  out["out"] = {"kernel": _output_side(attn["out"]["kernel"], components)}
  new_mlp = {name: {"kernel": _input_side(mlp[name]["kernel"], g_mlp, components, rescale)}
             for name in ("wi_0", "wi_1")}
  new_mlp["wo"] = {"kernel": _output_side(mlp["wo"]["kernel"], components)}
  ones = jnp.ones((d_s,), jnp.float32)
  return {"pre_self_attention_layer_norm": {"scale": ones}, "self_attention": out,
          "pre_mlp_layer_norm": {"scale": ones}, "mlp": new_mlp}


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


def _guide(teacher_params, teacher_config: ModelConfig, student_config: ModelConfig, guide: GuideConfig,
           teacher_layers: Tuple[int, ...]):
  """The traced body of guide_init: teacher tree -> (student tree, ratio [d_S], M [d_T, d_S])."""
  teacher = teacher_params["decoder"]
  table = teacher["token_embedder"]["embedding"]  # vocab-sharded as restored: local rows only
  pca = pca_table(table, student_config.d_model, table.shape[0], guide.center)
  m = pca.components
  fresh = None
  if guide.starts_random:  # only the used parts survive XLA's dead-code elimination
    fresh = model.init_params(student_config, jax.random.PRNGKey(guide.seed))["decoder"]
  student = {"token_embedder": {"embedding": pca.embedding}}
  for i, j in enumerate(teacher_layers):
    layer = teacher[f"layers_{j}"]
    if guide.blocks == "all" or (guide.blocks == "first" and i == 0):
      student[f"layers_{i}"] = map_block(layer, m, teacher_config, student_config)
    elif guide.other_blocks == "uniform_selection":
      student[f"layers_{i}"] = select_block(layer, teacher_config, student_config, student_config.d_model)
    else:
      student[f"layers_{i}"] = fresh[f"layers_{i}"]
  if student_config.position_embedding == "relpos":
    student["relpos_bias"] = {"rel_embedding": uniform_select(
        teacher["relpos_bias"]["rel_embedding"], (student_config.n_heads, student_config.relpos_buckets))}
  student.update(map_output(teacher, m, teacher_config, student_config))
  shapes = model.param_shapes(student_config)
  params = jax.tree_util.tree_map(lambda new, ref: new.astype(ref.dtype), {"decoder": student}, shapes)
  return params, pca.explained_variance_ratio, m


def _program(teacher_config: ModelConfig, student_config: ModelConfig, guide: GuideConfig,
             mesh: Optional[Mesh]):
  """(jitted teacher -> (params, ratio, M), teacher shardings or None, teacher_layers)."""
  teacher_layers = tuple(int(j) for j in select_layers(teacher_config.n_layers, student_config.n_layers,
                                                       guide.layer_selection))
  body = functools.partial(_guide, teacher_config=teacher_config, student_config=student_config,
                           guide=guide, teacher_layers=teacher_layers)
  if mesh is None:
    return jax.jit(body), None, teacher_layers
  t_sh = sharding.param_shardings(teacher_config, mesh)
  s_sh = sharding.param_shardings(student_config, mesh)
  rep = sharding.replicated(mesh)
  return jax.jit(body, in_shardings=(t_sh,), out_shardings=(s_sh, rep, rep)), t_sh, teacher_layers


def _check(teacher_config: ModelConfig, student_config: ModelConfig, guide: GuideConfig) -> None:
  if not isinstance(guide, GuideConfig):
    raise ValueError(f"guide must be a GuideConfig, got {type(guide).__name__}")
  validate.check_dimensions(teacher_config, student_config)
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
  All inputs are checked before any compute; a problem raises one ValueError naming it.
  """
  _check(teacher_config, student_config, guide)
  validate.check_tree(teacher_params, teacher_config, "teacher params")
  teacher = validate.restrict(teacher_params, teacher_config)
  program, t_sh, teacher_layers = _program(teacher_config, student_config, guide, mesh)
  if t_sh is not None:
    teacher = jax.device_put(teacher, t_sh)
  params, ratio, m = program(teacher)
  return GuideResult(params, GuideInfo(ratio, m, teacher_layers))


def compiled_guide_init(teacher_config: ModelConfig, student_config: ModelConfig, mesh: Mesh,
                        guide: GuideConfig = GuideConfig(), teacher_dtype=jnp.float32):
  """guide_init's compiled program on `mesh`, from shapes only (for HLO and memory_analysis checks)."""
  _check(teacher_config, student_config, guide)
  program, _, _ = _program(teacher_config, student_config, guide, mesh)
  shapes = jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s.shape, teacher_dtype),
                                  model.param_shapes(teacher_config))
  return program.lower(shapes).compile()
