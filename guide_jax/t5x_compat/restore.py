"""GUIDE as a t5x RestoreStateTransformationFn: the student is initialized while t5x restores the
teacher's checkpoint (gin/t5x/guide_restore.gin).

t5x calls `fn(state_dict, target_state_dict, *, is_resuming=False) -> state_dict` before it
reads any array of an orbax checkpoint: `state_dict` is the TEACHER checkpoint's structure
(placeholders, or concrete arrays when a caller loaded them), `target_state_dict` the abstract
state of the STUDENT t5x is building. The teacher is then read here from `teacher_checkpoint`
by guide_jax.teachers.load (in shards onto a mesh over all devices: each process reads only its
shards; a legacy msgpack checkpoint through t5x's own loader), mapped by
the compiled guide_init, and handed back to t5x as numpy ('target'); 'state' is left out unless
the student's optimizer state is concrete, so RestoreCheckpointConfig.fallback_to_scratch=True
gives a fresh optimizer state at step 0. is_resuming=True returns state_dict unchanged.
"""
from collections.abc import Mapping
from typing import Optional

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from guide_jax import model, sharding, teachers
from guide_jax.config import GuideConfig
from guide_jax.t5x_compat.configs import as_model_config
from guide_jax.transforms import guide_init, validate


def _concrete(x) -> Optional[np.ndarray]:
  """x as numpy if it is a concrete array (t5x LazyArrays are read), else None."""
  if isinstance(x, (np.ndarray, np.generic, jax.Array)):
    return np.asarray(x)
  if callable(getattr(x, "get", None)) and hasattr(x, "shape") and not isinstance(x, Mapping):
    value = x.get()
    return np.asarray(value) if isinstance(value, (np.ndarray, np.generic, jax.Array)) else None
  return None


def _concrete_tree(tree, config):
  """{'decoder': ...} of numpy arrays when every param of `config` is concrete in `tree`, else None."""
  flat = validate.flatten(tree) if isinstance(tree, Mapping) else {}
  values = {k: _concrete(flat.get(k)) for k in validate.flatten(model.param_shapes(config))}
  if any(v is None for v in values.values()):
    return None
  from flax.traverse_util import unflatten_dict  # pylint: disable=g-import-not-at-top
  return unflatten_dict(values, sep="/")


def _check_student(target, student) -> None:
  flat = validate.flatten(target) if isinstance(target, Mapping) else {}
  for key, shape in validate.flatten(model.param_shapes(student)).items():
    leaf = flat.get(key)
    if leaf is None:
      raise ValueError(f"target_state_dict['target'] has no {key}: is student_config the model t5x is building?")
    if hasattr(leaf, "shape") and tuple(leaf.shape) != shape.shape:
      raise ValueError(f"target_state_dict['target']: {key} has shape {tuple(leaf.shape)} but student_config "
                       f"expects {shape.shape}: student_config is not the model t5x is building")


def guide_state_transformation(state_dict, target_state_dict, *, is_resuming: bool = False,
                               teacher_config=None, student_config=None, guide: GuideConfig = GuideConfig(),
                               teacher_checkpoint: Optional[str] = None):
  """t5x RestoreStateTransformationFn: GUIDE-initialize the student from the teacher's checkpoint.

  teacher_config / student_config: t5x TransformerConfig (or ModelConfig / dict), see
  configs.as_model_config. guide: GuideConfig. teacher_checkpoint: the teacher's
  checkpoint_<step> path (RestoreCheckpointConfig.path), read when state_dict holds no arrays.
  Returns {'target': the student's params (numpy, the target's dtypes)[, 'state': fresh]}.
  """
  if is_resuming:
    return state_dict
  teacher = as_model_config(teacher_config, "teacher_config")
  student = as_model_config(student_config, "student_config")
  if not isinstance(state_dict, Mapping) or "target" not in state_dict:
    raise ValueError("state_dict must be a t5x state dict with a 'target' entry (the teacher's params)")
  if not isinstance(target_state_dict, Mapping) or "target" not in target_state_dict:
    raise ValueError("target_state_dict must be a t5x state dict with a 'target' entry (the student)")
  _check_student(target_state_dict["target"], student)

  mesh = sharding.make_mesh(model_parallel=jax.device_count())
  teacher_params = _concrete_tree(state_dict["target"], teacher)
  if teacher_params is None:
    if not teacher_checkpoint:
      raise ValueError("the teacher state_dict holds no arrays, as when t5x calls a transformation before "
                       "reading the checkpoint: bind teacher_checkpoint to the teacher's checkpoint path "
                       "(the RestoreCheckpointConfig.path)")
    teacher_params = teachers.load(teachers.Source(teacher_checkpoint, format="t5x", config=teacher), mesh).params
  else:  # arrays t5x already read: the one finiteness pass (teachers.load runs it for a read)
    validate.check_finite(teacher_params, "teacher params (t5x state_dict)")
  params, info = guide_init(teacher_params, teacher, student, guide, mesh=mesh)
  logging.info("GUIDE (t5x restore): explained variance %.4f, teacher layers %s",
               info.explained_variance, list(info.teacher_layers))
  host = multihost_utils.process_allgather(params, tiled=True) if jax.process_count() > 1 else jax.device_get(params)
  targets = validate.flatten(target_state_dict["target"])
  flat = {k: np.asarray(v, dtype=getattr(targets[k], "dtype", None) or np.asarray(v).dtype)
          for k, v in validate.flatten(host).items()}
  from flax.traverse_util import unflatten_dict  # pylint: disable=g-import-not-at-top
  out = {"target": unflatten_dict(flat, sep="/")}
  state = target_state_dict.get("state")
  leaves = jax.tree_util.tree_leaves(state) if isinstance(state, Mapping) else [None]
  if all(_concrete(x) is not None for x in leaves):
    out["state"] = dict(state, step=np.zeros_like(np.asarray(state["step"]))) if "step" in state else dict(state)
  return out


def drop_optimizer_state(state_dict, target_state_dict, *, is_resuming: bool = False):
  """t5x RestoreStateTransformationFn keeping only 'target' (unless resuming).

  For starting a t5x run from write_t5x_checkpoint / guide_jax.convert output (no optimizer
  slots): with RestoreCheckpointConfig.fallback_to_scratch=True, t5x fills in a fresh optimizer
  state and step 0.
  """
  del target_state_dict
  if is_resuming:
    return state_dict
  return {"target": state_dict["target"]}
