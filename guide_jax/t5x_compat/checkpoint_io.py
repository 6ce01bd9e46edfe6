"""t5x checkpoints in t5x's own orbax layout: find, check against a config, read in shards, write.

t5x.checkpoints.OrbaxCheckpointManagerInterface (what `t5x.train` uses) keeps an orbax
CheckpointManager with step_prefix='checkpoint' and one item 'state':
  <dir>/checkpoint_<step>/state/   orbax PyTree of TrainState.state_dict() =
      {'target': params, 'state': {'step': int32, 'param_states': {...}}}
t5x reads such a checkpoint with `t5x.utils.create_checkpoint_manager_and_restore` (as t5x.train
does; `TrainStateInitializer.from_checkpoint` cannot read orbax checkpoints). Legacy t5x
checkpoints (checkpoint_<step>/checkpoint msgpack + tensorstore arrays) are detected and rejected.
t5x itself restores a checkpoint of the wrong shapes without error and fails only at the first
forward pass, so everything written here is checked against the model config first.
"""
import os
import re

import jax
import numpy as np
from jax.experimental import multihost_utils

from guide_jax import model
from guide_jax.config import ModelConfig
from guide_jax.transforms import validate

STATE_ITEM = "state"  # t5x's orbax item name (t5x.checkpoints._STATE_KEY)
_STEP_DIR = re.compile(r"^checkpoint_(\d+)$")


class T5xCheckpointError(ValueError):
  """A t5x checkpoint that is missing, of an unsupported kind, or does not fit its config."""


def t5x_checkpoint_dir(model_dir: str, step: int) -> str:
  return os.path.join(os.path.abspath(model_dir), f"checkpoint_{int(step)}")


def _shape_problems(got: dict, config: ModelConfig) -> list:
  expected = {k: v.shape for k, v in validate.flatten(model.param_shapes(config)).items()}
  problems = [f"missing {k}" for k in sorted(set(expected) - set(got))]
  problems += [f"unexpected {k}" for k in sorted(set(got) - set(expected))]
  problems += [f"{k}: {got[k]} != config {expected[k]}" for k in sorted(set(got) & set(expected))
               if tuple(got[k]) != expected[k]]
  return problems


def write_t5x_checkpoint(model_dir: str, params, config: ModelConfig, *, step: int = 0) -> str:
  """Write `params` (of `config`) as a t5x checkpoint: <model_dir>/checkpoint_<step>/state/.

  The tree is {'target': params, 'state': {'step': int32(step)}} (no optimizer slots): restore it
  in t5x with fallback_to_scratch=True and state_transformation_fns=[drop_optimizer_state].
  Shapes are checked against t5x's layout for `config` before anything is written; orbax writes
  into a temporary directory and renames it when complete. Returns the checkpoint_<step> path.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  unrepresentable = config.t5x_incompatibilities()
  if unrepresentable:
    raise T5xCheckpointError("refusing to write a t5x checkpoint: t5x's decoder-only network has no "
                             f"{', '.join(unrepresentable)} (grouped-query attention and the Hugging Face "
                             "family options are guide_jax-only; export those to Hugging Face instead)")
  got = {k: tuple(np.shape(v)) for k, v in validate.flatten(params).items()}
  problems = _shape_problems(got, config)
  if problems:
    raise T5xCheckpointError("refusing to write a t5x checkpoint that t5x would restore and then fail on: "
                             + "; ".join(problems[:6]))
  path = t5x_checkpoint_dir(model_dir, step)
  if os.path.exists(path):
    raise T5xCheckpointError(f"{path} already exists")
  host = multihost_utils.process_allgather(params, tiled=True) if jax.process_count() > 1 else jax.device_get(params)
  tree = {"target": jax.tree_util.tree_map(np.asarray, host), "state": {"step": np.int32(step)}}
  options = ocp.CheckpointManagerOptions(step_prefix="checkpoint", create=True, enable_async_checkpointing=False)
  mngr = ocp.CheckpointManager(os.path.abspath(model_dir), options=options,
                               item_handlers={STATE_ITEM: ocp.PyTreeCheckpointHandler(use_ocdbt=False)})
  try:
    mngr.save(int(step), args=ocp.args.Composite(**{STATE_ITEM: ocp.args.PyTreeSave(tree)}), force=True)
    mngr.wait_until_finished()
  finally:
    mngr.close()
  return path


def find_t5x_checkpoint(path: str) -> str:
  """The orbax 'state' directory of a t5x checkpoint.

  path: <dir>/checkpoint_<step> (its state/ item), a model dir (its latest checkpoint_<step>), or
  an orbax PyTree directory itself. Raises T5xCheckpointError (naming the path) otherwise,
  including for legacy msgpack + tensorstore t5x checkpoints, which are not supported.
  """
  path = os.path.abspath(path)
  if not os.path.isdir(path):
    raise T5xCheckpointError(f"t5x checkpoint {path!r} does not exist")
  state = os.path.join(path, STATE_ITEM)
  if os.path.isdir(state):
    if not os.path.exists(os.path.join(state, "_METADATA")):
      raise T5xCheckpointError(f"t5x checkpoint {state} is incomplete (no _METADATA)")
    return state
  if os.path.isfile(os.path.join(path, "checkpoint")):
    raise T5xCheckpointError(f"{path} is a legacy t5x checkpoint (msgpack 'checkpoint' file + "
                             "tensorstore arrays), which guide_jax cannot read; re-save it with t5x's "
                             "orbax checkpointer")
  if os.path.exists(os.path.join(path, "_METADATA")):
    return path
  steps = sorted(int(m.group(1)) for m in map(_STEP_DIR.match, os.listdir(path)) if m)
  for step in reversed(steps):
    candidate = os.path.join(path, f"checkpoint_{step}")
    if os.path.isdir(os.path.join(candidate, STATE_ITEM)) or os.path.isfile(os.path.join(candidate, "checkpoint")):
      return find_t5x_checkpoint(candidate)
  raise T5xCheckpointError(f"no t5x checkpoint in {path!r} (expected checkpoint_<step>/state/)")


def _target_metadata(state_dir: str) -> dict:
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  try:
    meta = ocp.PyTreeCheckpointer().metadata(state_dir).item_metadata
  except Exception as e:
    raise T5xCheckpointError(f"unreadable t5x checkpoint metadata in {state_dir}: "
                             f"{type(e).__name__}: {str(e)[:300]}") from e
  tree = dict(getattr(meta, "tree", None) or meta)
  if "target" not in tree:
    raise T5xCheckpointError(f"{state_dir} holds no 'target' (keys: {sorted(tree)})")
  return tree["target"]


def check_t5x_checkpoint(path: str, config: ModelConfig) -> None:
  """Raise T5xCheckpointError when the checkpoint's target does not fit `config` (metadata only)."""
  got = {k: tuple(v.shape) for k, v in validate.flatten(_target_metadata(find_t5x_checkpoint(path))).items()}
  problems = _shape_problems(got, config)
  if problems:
    raise T5xCheckpointError(f"t5x checkpoint {path} does not match its config: "
                             + "; ".join(problems[:6]) + (" ..." if len(problems) > 6 else ""))


def load_t5x_params(path: str, config: ModelConfig, shardings=None):
  """The 'target' params of a t5x checkpoint, checked against `config` first (metadata only).

  shardings: a tree of jax Shardings (e.g. sharding.param_shardings(config, mesh)): each array is
  restored straight onto it, so every process reads only its own shards. Without: numpy arrays.
  Optimizer slots are never read (orbax partial restore of 'target').
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  check_t5x_checkpoint(path, config)
  state_dir = find_t5x_checkpoint(path)
  shapes = model.param_shapes(config)
  meta = _target_metadata(state_dir)
  dtypes = jax.tree_util.tree_map(lambda m: m.dtype, {k: meta[k] for k in shapes})
  if shardings is None:
    item = jax.tree_util.tree_map(lambda s, d: jax.ShapeDtypeStruct(s.shape, d), shapes, dtypes)
    args = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
  else:
    item = jax.tree_util.tree_map(lambda s, d, sh: jax.ShapeDtypeStruct(s.shape, d, sharding=sh),
                                  shapes, dtypes, shardings)
    args = jax.tree_util.tree_map(lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding, global_shape=x.shape,
                                                                 dtype=x.dtype), item)
  try:
    restored = ocp.PyTreeCheckpointer().restore(state_dir, args=ocp.args.PyTreeRestore(
        item={"target": item}, restore_args={"target": args}, partial_restore=True))
  except Exception as e:  # orbax raises many types for truncated / corrupt files
    raise T5xCheckpointError(f"t5x checkpoint {state_dir} is corrupt or incomplete: "
                             f"{type(e).__name__}: {str(e)[:300]}") from e
  return restored["target"]
