"""Weight Selection (Xu et al. 2023, "Initializing Models with Larger Ones"; GUIDE_SPEC.md sections 3, 7).

Every student parameter, the embedding table included, is the teacher's uniformly selected along
every axis (select.uniform_indices, axis by axis); attention kernels select whole heads and head
dims on their heads-major reshape (select.select_heads); layers by select.select_layers. No PCA,
no mapping, no rescaling: the kernels are the teacher's entries, as in Xu et al.

Output layer (t5x: tied logits = y E^T / sqrt(d), untied logits = y K):
  tied student                : E_S = select(E_T) (an untied teacher's logits_dense is dropped).
  untied student, untied teacher: K_S = select(K_T) [d_S, V].
  untied student, tied teacher  : K_S = c_S E_S^T (c_S = 1 / sqrt(d_S) in t5x's layout, 1 in
    transformers' embedding styles; model.tied_logits_scale)  **[choice]**: the tied student's
    effective output layer, so a tied and an untied student start as the same function. The other
    candidate, select(E_T^T / sqrt(d_T)) (the teacher's effective kernel, selected), is that times
    sqrt(d_S / d_T). Neither keeps the teacher's logit scale: a dot product over d_S of the d_T
    channels is ~d_S / d_T of the teacher's, everywhere in a weight-selected model.

weight_selection_init is one compiled program; with a mesh the teacher goes in with its logical-axis
shardings and the student comes out with its own (as guide.guide_init).
"""
import functools
from typing import Optional, Tuple

from jax.sharding import Mesh

from guide_jax.config import ModelConfig
from guide_jax.transforms import common, validate
from guide_jax.transforms.select import select_layers, uniform_select


def _weight_selection(teacher_params, teacher_config: ModelConfig, student_config: ModelConfig,
                      teacher_layers: Tuple[int, ...]):
  """The traced body: teacher tree -> student tree (dtypes of a fresh student)."""
  t, s = teacher_config, student_config
  teacher = common.to_gains(teacher_params["decoder"], t)
  embedding = uniform_select(teacher["token_embedder"]["embedding"], (s.vocab_size, s.d_model))
  student = {"token_embedder": {"embedding": embedding}}
  for i, j in enumerate(teacher_layers):
    student[f"layers_{i}"] = common.select_block(teacher[f"layers_{j}"], t, s, s.d_model)
  if s.position_embedding == "relpos":
    student["relpos_bias"] = {"rel_embedding": uniform_select(common.select_heads_axis(
        teacher["relpos_bias"]["rel_embedding"], 0, t, s), (s.n_heads, s.relpos_buckets))}
  student["decoder_norm"] = {"scale": uniform_select(teacher["decoder_norm"]["scale"], (s.d_model,))}
  if not s.tie_embeddings:
    student["logits_dense"] = {"kernel": common.student_logits_kernel(
        teacher, t, s, embedding, lambda k: uniform_select(k, (s.d_model, s.vocab_size)))}
  return common.cast_to_student(student, s)


def _program(teacher_config: ModelConfig, student_config: ModelConfig, layer_selection: str,
             mesh: Optional[Mesh]):
  """(jitted teacher -> student params, teacher shardings or None)."""
  teacher_layers = tuple(int(j) for j in select_layers(teacher_config.n_layers, student_config.n_layers,
                                                       layer_selection))
  body = functools.partial(_weight_selection, teacher_config=teacher_config, student_config=student_config,
                           teacher_layers=teacher_layers)
  return common.compile_init(body, teacher_config, student_config, mesh)


def weight_selection_init(teacher_params, teacher_config: ModelConfig, student_config: ModelConfig, *,
                          layer_selection: str = "first_n", mesh: Optional[Mesh] = None):
  """Weight Selection initialization of a student from a teacher (t5x decoder-only parameter dicts).

  teacher_params: {'decoder': {...}} for teacher_config (numpy, jax, or sharded global arrays).
  layer_selection: which teacher layer feeds each student layer, 'first_n' (Xu et al.) or 'uniform'.
  mesh: run sharded: the teacher is placed with its logical-axis shardings, the student comes back
    with the student's.
  Returns the student's params {'decoder': {...}} with the structure, shapes and dtypes of
  model.param_shapes(student_config):
    token_embedder/embedding [V, d_S]     = E_T at uniform columns
    layers_i (teacher layer select_layers(n_T, n_S)[i]) = common.select_block(..., d_S)
      (grouped-query teachers: whole kv groups and the query heads inside them)
    relpos_bias/rel_embedding [h_S, buckets] = teacher rows at the selected heads
    decoder_norm/scale [d_S]; logits_dense/kernel [d_S, V] (untied student; module docstring).
  All inputs are checked (shapes, dtypes, dimensions) before any compute; a problem raises one
  ValueError naming it. The student that comes out is checked finite.
  """
  common.check_configs(teacher_config, student_config)
  select_layers(teacher_config.n_layers, student_config.n_layers, layer_selection)
  validate.check_tree(teacher_params, teacher_config, "teacher params")
  program, t_sh = _program(teacher_config, student_config, layer_selection, mesh)
  params = common.run_init(program, t_sh, teacher_params, teacher_config)
  common.check_student(params, "Weight Selection")
  return params
