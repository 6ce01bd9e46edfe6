"""orbax checkpoints: params, optimizer state and run metadata, saved atomically, keep-N, checksummed.

Layout: <model_dir>/checkpoints/<step>/{params, opt_state, meta} (opt_state absent in a params-only
checkpoint, e.g. guide_jax.convert's output). orbax writes each step into a temporary directory
and renames it when complete, so after a kill -9 the latest *listed* step is always a whole
checkpoint. meta holds the step, the ModelConfig, the run's settings and a content checksum of
every array, verified on restore: a bit flipped on disk is an error naming the array and step.
"""
import dataclasses
import errno
import os
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from guide_jax.config import ModelConfig


class CheckpointError(ValueError):
  """A checkpoint that is missing, incomplete, unreadable or corrupt."""


def checkpoint_dir(model_dir: str) -> str:
  return os.path.join(os.path.abspath(model_dir), "checkpoints")


def manager(model_dir: str, *, keep: int = 2, create: bool = True,
            params_only: bool = False) -> ocp.CheckpointManager:
  """A CheckpointManager over <model_dir>/checkpoints keeping the last `keep` steps."""
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=create, enable_async_checkpointing=False)
  items = ("params", "meta") if params_only else ("params", "opt_state", "meta")
  return ocp.CheckpointManager(checkpoint_dir(model_dir), options=options, item_names=items)


@jax.jit
def _fingerprints(leaves):
  """uint32 content checksum per array: sum over elements of bits(x) * (2i + 1) mod 2^32.

  Integer addition mod 2^32 is associative, so the value is the same however the array is
  sharded (and across processes); any single changed element changes it.
  """
  out = []
  for x in leaves:
    bits = jax.lax.bitcast_convert_type(x, jnp.uint32) if x.dtype.itemsize == 4 else \
        jax.lax.bitcast_convert_type(x, jnp.uint16).astype(jnp.uint32)
    index = jnp.zeros(x.shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(x.ndim)):
      index = index + jax.lax.broadcasted_iota(jnp.uint32, x.shape, axis) * jnp.uint32(stride % 2 ** 32)
      stride *= x.shape[axis]
    out.append(jnp.sum(bits * (2 * index + 1), dtype=jnp.uint32))
  return jnp.stack(out) if out else jnp.zeros((0,), jnp.uint32)


def checksums(tree) -> dict:
  """{"['path']['to']['array']": 'xxxxxxxx'} content checksums of a tree of (possibly sharded) arrays."""
  flat = {jax.tree_util.keystr(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}
  keys = sorted(flat)
  values = np.asarray(_fingerprints([jnp.asarray(flat[k]) if not isinstance(flat[k], jax.Array) else flat[k]
                                     for k in keys]))
  return {k: f"{int(v):08x}" for k, v in zip(keys, values)}


def save(mngr: ocp.CheckpointManager, step: int, params, opt_state, config: ModelConfig,
         extra: Optional[dict] = None, force: bool = False) -> bool:
  """Save one step (every process calls it; orbax writes each shard once). Returns whether saved.

  opt_state=None writes a params-only checkpoint. A full disk raises CheckpointError saying so
  (the previous checkpoints are untouched: orbax renames a step only once it is complete).
  """
  sums = {"params": checksums(params)}
  if opt_state is not None:
    sums["opt_state"] = checksums(opt_state)
  meta = {"step": int(step), "model_config": dataclasses.asdict(config), "checksums": sums, **(extra or {})}
  items = {"params": ocp.args.StandardSave(params), "meta": ocp.args.JsonSave(meta)}
  if opt_state is not None:
    items["opt_state"] = ocp.args.StandardSave(opt_state)
  try:
    saved = mngr.save(step, args=ocp.args.Composite(**items), force=force)
    mngr.wait_until_finished()
  except Exception as e:  # orbax wraps the OSError of a full disk in its own exceptions
    if _is_disk_full(e):
      raise CheckpointError(f"disk full while writing checkpoint step {step} to {mngr.directory}: free "
                            f"space and rerun to resume from step {mngr.latest_step()} (left intact)") from e
    raise
  return saved


def _is_disk_full(e: BaseException) -> bool:
  while e is not None:
    if isinstance(e, OSError) and e.errno == errno.ENOSPC or "No space left on device" in str(e):
      return True
    e = e.__cause__ or e.__context__
  return False


def older_step_hint(mngr: ocp.CheckpointManager, step: int) -> str:
  """How to resume from an older step than a bad `step` (the command-line spelling that works)."""
  older = sorted(s for s in mngr.all_steps() if s < step)
  return (f"restore an older step with --gin.config.CheckpointConfig.restore_step={older[-1]} "
          f"(available: {older})" if older else "no older step is available")


def _verify(tree, expected: Optional[dict], item: str, step: int, mngr: ocp.CheckpointManager) -> None:
  if expected is None:
    return
  got = checksums(tree)
  bad = sorted(k for k in expected if got.get(k) != expected[k])
  directory = mngr.directory
  if bad:
    hint = older_step_hint(mngr, step)
    raise CheckpointError(f"checkpoint step {step} in {directory}: {item}/{bad[0]} does not match its saved "
                          f"checksum ({len(bad)} array(s) corrupt on disk); {hint}")


def restore(mngr: ocp.CheckpointManager, step: int, abstract_params, abstract_opt_state=None):
  """Restore params (and opt_state when its abstract tree is given) onto their shardings.

  Every array is checked against the checksum saved with it; CheckpointError names a mismatch.
  """
  items = {"params": ocp.args.StandardRestore(abstract_params), "meta": ocp.args.JsonRestore()}
  if abstract_opt_state is not None:
    items["opt_state"] = ocp.args.StandardRestore(abstract_opt_state)
  try:
    restored = mngr.restore(step, args=ocp.args.Composite(**items))
  except Exception as e:  # orbax raises many types for truncated / corrupt files
    raise CheckpointError(f"checkpoint step {step} in {mngr.directory} is corrupt or incomplete, or of "
                          f"another model ({type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}); "
                          f"{older_step_hint(mngr, step)}") from e
  sums = restored["meta"].get("checksums", {})
  _verify(restored["params"], sums.get("params"), "params", step, mngr)
  if abstract_opt_state is not None:
    _verify(restored["opt_state"], sums.get("opt_state"), "opt_state", step, mngr)
  return restored


def read_meta(model_dir: str, step: Optional[int] = None) -> dict:
  """The meta dict of a run's latest (or given) checkpoint, without loading any array."""
  directory = checkpoint_dir(model_dir)
  if not os.path.isdir(directory):
    raise CheckpointError(f"no checkpoints under {model_dir!r} (expected {directory})")
  mngr = manager(model_dir, create=False)
  step = mngr.latest_step() if step is None else step
  if step is None:
    raise CheckpointError(f"no complete checkpoint under {directory}")
  if step not in mngr.all_steps():
    raise CheckpointError(f"no checkpoint step {step} under {directory} (have {sorted(mngr.all_steps())})")
  try:
    return mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
  except Exception as e:
    raise CheckpointError(f"checkpoint step {step} in {directory} has unreadable metadata "
                          f"({type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}); "
                          f"{older_step_hint(mngr, step)}") from e


def read_config(model_dir: str, step: Optional[int] = None):
  """(ModelConfig, step) of a run's latest (or given) checkpoint, without loading any array."""
  meta = read_meta(model_dir, step)
  try:
    return ModelConfig(**meta["model_config"]), int(meta["step"])
  except (KeyError, TypeError, ValueError) as e:
    raise CheckpointError(f"checkpoint in {model_dir} has no valid model_config: {e}") from e


def load_params(model_dir: str, shardings=None, step: Optional[int] = None):
  """(params, ModelConfig) of a run (e.g. a teacher), restored straight onto `shardings` when given
  (each process then reads only the bytes of its own shards)."""
  from guide_jax import model  # local: keeps this module light for tools that only read metadata
  config, step = read_config(model_dir, step)
  shapes = model.param_shapes(config)
  if shardings is not None:
    shapes = jax.tree_util.tree_map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                                    shapes, shardings)
  mngr = manager(model_dir, create=False)
  restored = restore(mngr, step, shapes)
  return restored["params"], config
