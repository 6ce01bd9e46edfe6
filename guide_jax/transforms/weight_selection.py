"""Weight Selection (Xu et al. 2023, "Initializing Models with Larger Ones"; docs/algorithm.md sections 3, 6).

Every student parameter, the embedding table included, is the teacher's uniformly selected along
every axis (select.uniform_indices, axis by axis); attention kernels select whole heads and head
dims on their heads-major reshape (select.select_heads); layers by select.select_layers. No PCA,
no mapping, no rescaling: the kernels are the teacher's entries, as in Xu et al.

Output layer (t5x: tied logits = y E^T / sqrt(d), untied logits = y K):
  tied student                : E_S = select(E_T) (an untied teacher's logits_dense is dropped).
  untied student, untied teacher: K_S = select(K_T) [d_S, V].
  untied student, tied teacher  : K_S = E_S^T / sqrt(d_S)  **[choice]**: the tied student's
    effective output layer, so a tied and an untied student start as the same function. The other
    candidate, select(E_T^T / sqrt(d_T)) (the teacher's effective kernel, selected), is that times
    sqrt(d_S / d_T). Neither keeps the teacher's logit scale: a dot product over d_S of the d_T
    channels is ~d_S / d_T of the teacher's, everywhere in a weight-selected model.

weight_selection_init is one compiled program; with a mesh the teacher goes in with its logical-axis
shardings and the student comes out with its own (as guide.guide_init).
"""
import functools
import math
from typing import Optional, Tuple

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from guide_jax import model, sharding
from guide_jax.config import ModelConfig
from guide_jax.transforms import validate
from guide_jax.transforms.guide import select_block
from guide_jax.transforms.select import select_layers, uniform_select


def check_student(teacher_config: ModelConfig, student_config: ModelConfig) -> None:
  """Raise one ValueError if the student is larger than the teacher along any dimension, or if
  the relative-position tables cannot be selected (different bucket counts)."""
  if not isinstance(teacher_config, ModelConfig) or not isinstance(student_config, ModelConfig):
    raise ValueError(f"teacher_config and student_config must be ModelConfigs, got "
                     f"{type(teacher_config).__name__} and {type(student_config).__name__}")
  validate.check_dimensions(teacher_config, student_config)  # includes the relpos bucket count


def student_logits_kernel(teacher_decoder, teacher_config: ModelConfig, student_embedding, select_rows):
  """The untied student's logits_dense/kernel [d_S, V].

  teacher_decoder: the teacher's 'decoder' dict. student_embedding: the student's table [V, d_S].
  select_rows: kernel [d_T, V] -> [d_S, V] (how this init shrinks the model width).
  Untied teacher: select_rows(K_T). Tied teacher: E_S^T / sqrt(d_S) (see the module docstring).
  """
  if teacher_config.tie_embeddings:
    d_s = student_embedding.shape[1]
    return student_embedding.astype(jnp.float32).T / math.sqrt(d_s)
  return select_rows(teacher_decoder["logits_dense"]["kernel"])


def _weight_selection(teacher_params, teacher_config: ModelConfig, student_config: ModelConfig,
                      teacher_layers: Tuple[int, ...]):
  """The traced body: teacher tree -> student tree (dtypes of a fresh student)."""
  t, s = teacher_config, student_config
  teacher = teacher_params["decoder"]
  embedding = uniform_select(teacher["token_embedder"]["embedding"], (s.vocab_size, s.d_model))
  student = {"token_embedder": {"embedding": embedding}}
  for i, j in enumerate(teacher_layers):
    student[f"layers_{i}"] = select_block(teacher[f"layers_{j}"], t, s, s.d_model)
  if s.position_embedding == "relpos":
    student["relpos_bias"] = {"rel_embedding": uniform_select(
        teacher["relpos_bias"]["rel_embedding"], (s.n_heads, s.relpos_buckets))}
  student["decoder_norm"] = {"scale": uniform_select(teacher["decoder_norm"]["scale"], (s.d_model,))}
  if not s.tie_embeddings:
    student["logits_dense"] = {"kernel": student_logits_kernel(
        teacher, t, embedding, lambda k: uniform_select(k, (s.d_model, s.vocab_size)))}
  shapes = model.param_shapes(s)
  return jax.tree_util.tree_map(lambda new, ref: new.astype(ref.dtype), {"decoder": student}, shapes)


def _program(teacher_config: ModelConfig, student_config: ModelConfig, layer_selection: str,
             mesh: Optional[Mesh]):
  """(jitted teacher -> student params, teacher shardings or None)."""
  teacher_layers = tuple(int(j) for j in select_layers(teacher_config.n_layers, student_config.n_layers,
                                                       layer_selection))
  body = functools.partial(_weight_selection, teacher_config=teacher_config, student_config=student_config,
                           teacher_layers=teacher_layers)
  if mesh is None:
    return jax.jit(body), None
  t_sh = sharding.param_shardings(teacher_config, mesh)
  s_sh = sharding.param_shardings(student_config, mesh)
  return jax.jit(body, in_shardings=(t_sh,), out_shardings=s_sh), t_sh


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
    layers_i (teacher layer select_layers(n_T, n_S)[i]) = select.select_block(..., d_S)
    relpos_bias/rel_embedding [h_S, buckets] = teacher rows at uniform heads
    decoder_norm/scale [d_S]; logits_dense/kernel [d_S, V] (untied student; module docstring).
  All inputs are checked before any compute; a problem raises one ValueError naming it.
  """
  check_student(teacher_config, student_config)
  select_layers(teacher_config.n_layers, student_config.n_layers, layer_selection)
  validate.check_tree(teacher_params, teacher_config, "teacher params")
  teacher = validate.restrict(teacher_params, teacher_config)
  program, t_sh = _program(teacher_config, student_config, layer_selection, mesh)
  if t_sh is not None:
    teacher = jax.device_put(teacher, t_sh)
  return program(teacher)
