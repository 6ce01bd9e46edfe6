"""Scaffolding shared by the teacher -> student inits (guide, weight_selection, prune).

  check_configs      one check of the two ModelConfigs (every init calls it once)
  compile_init       a traced body (teacher tree, *extras) -> student tree, jitted on a mesh
  to_gains / from_gains  norm scales <-> the gains they apply (norm_offset + scale)
  cast_to_student    a student tree cast to the dtypes of a fresh student
  select_attention   uniform selection of one attention block, grouped-query heads kept
  select_block       uniform selection of one whole decoder layer (Weight Selection's, GUIDE's)
  student_logits_kernel  the untied student's output kernel
  check_student      the output check: the student tree finite (never another pass over the teacher)

Grouped-query heads (h heads read k kv heads, group size g = h / k; query head j reads kv head
j // g): a student keeps k_S whole kv groups of the teacher and g_S query heads inside each kept
group, so student query head a * g_S + b is teacher head G[a] * g_T + W[b] and reads student kv
head a, which is teacher kv head G[a]: the kv head its teacher head read. Needs k_S <= k_T and
g_S <= g_T (MHA is k = h, g = 1).
"""
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from guide_jax import model, sharding
from guide_jax.config import ModelConfig
from guide_jax.transforms import validate
from guide_jax.transforms.select import uniform_select

_STRUCTURE = ("qkv_bias", "out_bias", "qk_norm", "post_norms")


def check_configs(teacher_config: ModelConfig, student_config: ModelConfig) -> None:
  """Raise one ValueError if the student is not a smaller model of the teacher's structure."""
  if not isinstance(teacher_config, ModelConfig) or not isinstance(student_config, ModelConfig):
    raise ValueError(f"teacher_config and student_config must be ModelConfigs, got "
                     f"{type(teacher_config).__name__} and {type(student_config).__name__}")
  validate.check_dimensions(teacher_config, student_config)


def to_gains(tree, config: ModelConfig):
  """Every norm 'scale' leaf -> the gain it applies, norm_offset + scale (float32 when offset != 0)."""
  if not config.norm_offset:
    return tree
  return _map_scales(tree, lambda x: x.astype(jnp.float32) + jnp.float32(config.norm_offset))


def from_gains(tree, config: ModelConfig):
  """Inverse of to_gains for the student: gain -> gain - norm_offset."""
  if not config.norm_offset:
    return tree
  return _map_scales(tree, lambda x: x.astype(jnp.float32) - jnp.float32(config.norm_offset))


def _map_scales(tree, fn):
  return {k: fn(v) if k == "scale" else _map_scales(v, fn) if isinstance(v, dict) else v
          for k, v in tree.items()}


def cast_to_student(student_decoder, student_config: ModelConfig):
  """{'decoder': student_decoder} with norm gains turned into params and the dtypes of a fresh student."""
  shapes = model.param_shapes(student_config)
  tree = {"decoder": from_gains(student_decoder, student_config)}
  return jax.tree_util.tree_map(lambda new, ref: new.astype(ref.dtype), tree, shapes)


def query_rescale(teacher_config: ModelConfig, student_config: ModelConfig) -> float:
  """Factor on the student's queries that keeps the teacher's attention logit scale when the two
  place the softmax scale differently (query_pre_attn_scalar: None folds it into the kernel)."""
  scale = lambda c: 1.0 if c.query_pre_attn_scalar is None else float(c.query_pre_attn_scalar) ** -0.5
  return scale(teacher_config) / scale(student_config)


def select_attention(attn, t: ModelConfig, s: ModelConfig, d_in: int, d_out: int,
                     select_width: Optional[Callable] = None):
  """Uniform selection of one teacher self_attention dict (grouped-query heads kept; module docstring).

  Kernels go heads-major to [d, k, g, l] (query, out) or [d, k, l] (key, value) and every axis is
  uniformly selected: kv groups k_T -> k_S, heads in a group g_T -> g_S, head dims l_T -> l_S and the
  model width d_in -> d_out. Biases follow their kernels' output axes; q/k norm scales [l] their
  head dims. Queries (kernel and bias, or the query norm gain with qk_norm) are multiplied by
  query_rescale(t, s).
  """
  k_t, g_t, l_t = t.kv_heads, t.n_heads // t.kv_heads, t.head_dim
  k_s, g_s, l_s = s.kv_heads, s.n_heads // s.kv_heads, s.head_dim
  rescale = query_rescale(t, s)
  q_factor = 1.0 if s.qk_norm else rescale
  out = {}
  for name in ("query", "key", "value"):
    heads_t, heads_s = ((k_t, g_t), (k_s, g_s)) if name == "query" else ((k_t,), (k_s,))
    kernel = jnp.reshape(attn[name]["kernel"], (d_in,) + heads_t + (l_t,))
    kernel = uniform_select(kernel, (d_out,) + heads_s + (l_s,))
    new = {"kernel": jnp.reshape(kernel, (d_out, -1))}
    if "bias" in attn[name]:
      bias = uniform_select(jnp.reshape(attn[name]["bias"], heads_t + (l_t,)), heads_s + (l_s,))
      new["bias"] = jnp.reshape(bias, (-1,))
    if name == "query" and q_factor != 1.0:
      new = {key: value.astype(jnp.float32) * q_factor for key, value in new.items()}
    out[name] = new
  kernel = jnp.reshape(attn["out"]["kernel"], (k_t, g_t, l_t, d_in))
  out["out"] = {"kernel": jnp.reshape(uniform_select(kernel, (k_s, g_s, l_s, d_out)), (-1, d_out))}
  if "bias" in attn["out"]:
    out["out"]["bias"] = uniform_select(attn["out"]["bias"], (d_out,))
  for name in ("query_norm", "key_norm"):
    if name in attn:
      gain = uniform_select(attn[name]["scale"], (l_s,))
      if name == "query_norm" and rescale != 1.0:
        gain = gain.astype(jnp.float32) * rescale
      out[name] = {"scale": gain}
  return out


def select_heads_axis(array, axis: int, t: ModelConfig, s: ModelConfig):
  """`array` with its query-heads axis (size h_T) uniformly selected to the student's h_S heads,
  group-major (kv groups k_T -> k_S, heads in a group g_T -> g_S), e.g. relpos tables [h, buckets]."""
  k_t, g_t, k_s, g_s = t.kv_heads, t.n_heads // t.kv_heads, s.kv_heads, s.n_heads // s.kv_heads
  shape = array.shape
  split = jnp.reshape(array, shape[:axis] + (k_t, g_t) + shape[axis + 1:])
  out = uniform_select(split, shape[:axis] + (k_s, g_s) + shape[axis + 1:])
  return jnp.reshape(out, shape[:axis] + (k_s * g_s,) + shape[axis + 1:])


def select_block(teacher_layer, teacher_config: ModelConfig, student_config: ModelConfig, d_out: int):
  """Uniform selection of every array of one teacher layer (norm scales as gains: to_gains), the
  model width shrunk to d_out.

  Attention: select_attention (whole kv groups, the query heads inside them, head dims). MLP:
  wi_0/wi_1 [d, f] and wo [f, d] on both axes; norm gains [d] on d. d_out = d_S gives Weight
  Selection of the whole layer; d_out = d_T keeps the teacher's width for GUIDE's PCA mapping.
  """
  t, s = teacher_config, student_config
  d_t = t.d_model
  mlp = teacher_layer["mlp"]
  new_mlp = {name: {"kernel": uniform_select(mlp[name]["kernel"], (d_out, s.mlp_dim))} for name in ("wi_0", "wi_1")}
  new_mlp["wo"] = {"kernel": uniform_select(mlp["wo"]["kernel"], (s.mlp_dim, d_out))}
  norms = {name: {"scale": uniform_select(value["scale"], (d_out,))}
           for name, value in teacher_layer.items() if name.endswith("layer_norm")}
  return {**norms, "self_attention": select_attention(teacher_layer["self_attention"], t, s, d_t, d_out),
          "mlp": new_mlp}


def student_logits_kernel(teacher_decoder, teacher_config: ModelConfig, student_config: ModelConfig,
                          student_embedding, select_rows):
  """The untied student's logits_dense/kernel [d_S, V].

  teacher_decoder: the teacher's 'decoder' dict. student_embedding: the student's table [V, d_S].
  select_rows: kernel [d_T, V] -> [d_S, V] (how this init shrinks the model width).
  Untied teacher: select_rows(K_T). Tied teacher: c_S E_S^T, the output layer the student would
  have tied (c = model.tied_logits_scale: 1 / sqrt(d_S) for t5x's layout, 1 for transformers').
  """
  if teacher_config.tie_embeddings:
    return student_embedding.astype(jnp.float32).T * model.tied_logits_scale(student_config)
  return select_rows(teacher_decoder["logits_dense"]["kernel"])


def compile_init(body: Callable, teacher_config: ModelConfig, student_config: ModelConfig,
                 mesh: Optional[Mesh], extra_shardings: Sequence = (), extra_outputs: int = 0):
  """(jitted body, teacher shardings or None). body(teacher, *extras) -> student tree (then
  `extra_outputs` replicated outputs). On a mesh the teacher goes in with its logical-axis
  shardings and the student comes out with its own, so no device holds more than its shards."""
  if mesh is None:
    return jax.jit(body), None
  t_sh = sharding.param_shardings(teacher_config, mesh)
  s_sh = sharding.param_shardings(student_config, mesh)
  rep = sharding.replicated(mesh)
  extras = tuple(rep if e is None else e for e in extra_shardings)
  out = (s_sh,) + (rep,) * extra_outputs if extra_outputs else s_sh
  return jax.jit(body, in_shardings=(t_sh,) + extras, out_shardings=out), t_sh


def run_init(program, t_sh, teacher_params, teacher_config: ModelConfig, *extras):
  """The teacher restricted to its config's tree, placed on t_sh (a no-op when it already is), run."""
  teacher = validate.restrict(teacher_params, teacher_config)
  if t_sh is not None:
    teacher = jax.device_put(teacher, t_sh)
  return program(teacher, *extras)


def check_inputs(teacher_params, teacher_config: ModelConfig, student_config: ModelConfig) -> None:
  """The cheap input checks every init runs once: configs, and the teacher tree's keys, shapes and
  dtypes (no pass over the values: the teacher's finiteness is checked where it is loaded)."""
  check_configs(teacher_config, student_config)
  validate.check_tree(teacher_params, teacher_config, "teacher params")


def check_student(params, what: str) -> None:
  """The output check: raise ValueError if the student `what` made holds NaN or Inf."""
  validate.check_finite(params, f"the student {what} made (from a non-finite teacher?)")

