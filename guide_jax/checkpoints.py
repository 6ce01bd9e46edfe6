"""orbax checkpoints: params, optimizer state and run metadata, saved atomically, keep-N.

Layout: <model_dir>/checkpoints/<step>/{params, opt_state, meta}. orbax writes each step into a
temporary directory and renames it when complete, so after a kill -9 the latest *listed* step is
always a whole checkpoint. meta holds the step, the ModelConfig and the data position.
"""
import dataclasses
import os
from typing import Optional

import jax
import orbax.checkpoint as ocp

from guide_jax.config import ModelConfig


class CheckpointError(ValueError):
  """A checkpoint that is missing, incomplete or unreadable."""


def checkpoint_dir(model_dir: str) -> str:
  return os.path.join(os.path.abspath(model_dir), "checkpoints")


def manager(model_dir: str, *, keep: int = 2, save_every: Optional[int] = None,
            create: bool = True) -> ocp.CheckpointManager:
  """A CheckpointManager over <model_dir>/checkpoints keeping the last `keep` steps."""
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=save_every or 1,
                                         create=create, enable_async_checkpointing=False)
  return ocp.CheckpointManager(checkpoint_dir(model_dir), options=options,
                               item_names=("params", "opt_state", "meta"))


def save(mngr: ocp.CheckpointManager, step: int, params, opt_state, config: ModelConfig,
         extra: Optional[dict] = None, force: bool = False) -> bool:
  """Save one step (every process calls it; orbax writes each shard once). Returns whether saved."""
  meta = {"step": int(step), "model_config": dataclasses.asdict(config), **(extra or {})}
  saved = mngr.save(step, args=ocp.args.Composite(
      params=ocp.args.StandardSave(params), opt_state=ocp.args.StandardSave(opt_state),
      meta=ocp.args.JsonSave(meta)), force=force)
  mngr.wait_until_finished()
  return saved


def restore(mngr: ocp.CheckpointManager, step: int, abstract_params, abstract_opt_state=None):
  """Restore params (and opt_state when its abstract tree is given) onto their shardings."""
  items = {"params": ocp.args.StandardRestore(abstract_params), "meta": ocp.args.JsonRestore()}
  if abstract_opt_state is not None:
    items["opt_state"] = ocp.args.StandardRestore(abstract_opt_state)
  try:
    restored = mngr.restore(step, args=ocp.args.Composite(**items))
  except Exception as e:  # orbax raises many types for truncated / corrupt files
    raise CheckpointError(f"checkpoint step {step} in {mngr.directory} is corrupt or incomplete: "
                          f"{type(e).__name__}: {str(e)[:300]}") from e
  return restored


def read_config(model_dir: str, step: Optional[int] = None):
  """(ModelConfig, step) of a run's latest (or given) checkpoint, without loading any array."""
  directory = checkpoint_dir(model_dir)
  if not os.path.isdir(directory):
    raise CheckpointError(f"no checkpoints under {model_dir!r} (expected {directory})")
  mngr = manager(model_dir, create=False)
  step = mngr.latest_step() if step is None else step
  if step is None:
    raise CheckpointError(f"no complete checkpoint under {directory}")
  try:
    meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    return ModelConfig(**meta["model_config"]), step
  except Exception as e:
    raise CheckpointError(f"checkpoint step {step} in {directory} has unreadable metadata: "
                          f"{type(e).__name__}: {str(e)[:300]}") from e


def load_params(model_dir: str, shardings=None, step: Optional[int] = None):
  """(params, ModelConfig) of a finished run, e.g. a teacher. shardings: optional tree for placement."""
  from guide_jax import model  # local: keeps this module light for tools that only read metadata
  config, step = read_config(model_dir, step)
  shapes = model.param_shapes(config)
  if shardings is not None:
    shapes = jax.tree_util.tree_map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                                    shapes, shardings)
  restored = restore(manager(model_dir, create=False), step, shapes)
  return restored["params"], config
