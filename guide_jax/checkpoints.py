"""orbax checkpoints: params, optimizer state and run metadata, saved atomically, keep-N, checksummed.

Layout: <model_dir>/checkpoints/<step>/{params, opt_state, meta} (opt_state absent in a params-only
checkpoint, e.g. guide_jax.convert's output). orbax writes each step into a temporary directory
and renames it when complete, so after a kill -9 the latest *listed* step is always a whole
checkpoint. meta holds the step, the ModelConfig, the run's settings and a content checksum of
every array, verified on restore: a bit flipped on disk is an error naming the array and step.

A run holds ONE CheckpointManager (`manager`) for its MODEL_DIR. Resuming is two calls, as MaxText's
checkpointing.load_state_if_possible in two halves: `find` (the step every process agrees on,
restore_step as a one-shot rollback, its meta; no array read), whose Found.check compares the meta
with the run as each part of the run becomes known, then `resume` (the restore, checksums
verified, later steps of a rollback dropped, the history of rollbacks and changed settings).
"""
import dataclasses
import errno
import os
import time
from typing import Any, NamedTuple, Optional

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from guide_jax import fileio
from guide_jax.config import ModelConfig

# What a resumed run must share with its checkpoint's meta (CheckpointConfig.allow_changed_run
# waives), compared as each becomes known (Found.check): the settings before any teacher or data is
# read; the KD teacher's content fingerprint once it is read; the data's identity from its manifest
# (its tokenizer, every shard's hash) before the shards are hashed.
RESUME_KEYS = ("data", "seq_len", "batch_size", "seed", "init", "start", "kd_alpha", "kd_tau")
TEACHER_KEYS = ("kd_teacher",)
DATA_KEYS = ("tokenizer", "data_sha256")
# ModelConfig fields that fix the param tree's shapes: a checkpoint differing in one is another model.
SHAPE_KEYS = ("vocab_size", "d_model", "n_layers", "n_heads", "head_dim", "mlp_dim", "tie_embeddings",
              "position_embedding", "relpos_buckets", "param_dtype", "n_kv_heads", "qkv_bias", "out_bias",
              "qk_norm", "post_norms")


class CheckpointError(ValueError):
  """A checkpoint that is missing, incomplete, unreadable or corrupt."""


def checkpoint_dir(model_dir: str) -> str:
  return fileio.join(fileio.absolute(model_dir), "checkpoints")


def _is_complete_step(step_dir: str) -> bool:
  """A step directory orbax finished: its metadata file and our meta item (on an object store,
  where nothing is renamed, also orbax's commit_success.txt)."""
  names = set(fileio.listdir(step_dir))
  need = {"_CHECKPOINT_METADATA", "meta"} | ({"commit_success.txt"} if fileio.is_remote(step_dir) else set())
  return need <= names


def skip_incomplete_steps(model_dir: str) -> list:
  """Moves step directories that are not complete checkpoints (empty, an interrupted copy, another
  tool's) out of orbax's sight, with a warning naming each; returns their names.

  Locally they go to <model_dir>/checkpoints-skipped/ (nothing is deleted). On an object store,
  orbax already ignores a step without commit_success.txt; they are named and left in place.
  """
  directory = checkpoint_dir(model_dir)
  skipped = []
  for name in fileio.listdir(directory):
    step_dir = fileio.join(directory, name)
    if not name.isdigit() or not fileio.isdir(step_dir) or _is_complete_step(step_dir):
      continue
    skipped.append(name)
    if fileio.is_remote(directory):
      logging.warning("skipping %s: not a complete checkpoint (no commit_success.txt or metadata)", step_dir)
      continue
    aside = os.path.join(fileio.absolute(model_dir), "checkpoints-skipped", f"{name}-{int(time.time())}")
    os.makedirs(os.path.dirname(aside), exist_ok=True)
    os.rename(step_dir, aside)
    logging.warning("skipping %s: not a complete checkpoint (contents: %s); moved to %s", step_dir,
                    fileio.listdir(aside)[:5] or "empty", aside)
  return skipped


def manager(model_dir: str, *, keep: int = 2, params_only: bool = False) -> ocp.CheckpointManager:
  """A CheckpointManager over <model_dir>/checkpoints keeping the last `keep` steps.

  Creates nothing until the first save (reading a missing directory lists no steps).
  """
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=False, enable_async_checkpointing=False)
  items = ("params", "meta") if params_only else ("params", "opt_state", "meta")
  return ocp.CheckpointManager(checkpoint_dir(model_dir), options=options, item_names=items)


def array_checksum(x) -> jax.Array:
  """uint32 content checksum of one array (traceable): sum over elements of bits(x) * (2i + 1)
  mod 2^32, i the row-major index.

  Integer addition mod 2^32 is associative, so the value is the same however the array is
  sharded (and across processes); any single changed element changes it. One fused reduction:
  jit it with other per-array passes (teachers.read: with the finiteness check).
  """
  bits = jax.lax.bitcast_convert_type(x, jnp.uint32) if x.dtype.itemsize == 4 else \
      jax.lax.bitcast_convert_type(x, jnp.dtype(f"uint{8 * x.dtype.itemsize}")).astype(jnp.uint32)
  index = jnp.zeros(x.shape, jnp.uint32)
  stride = 1
  for axis in reversed(range(x.ndim)):
    index = index + jax.lax.broadcasted_iota(jnp.uint32, x.shape, axis) * jnp.uint32(stride % 2 ** 32)
    stride *= x.shape[axis]
  return jnp.sum(bits * (2 * index + 1), dtype=jnp.uint32)


@jax.jit
def _fingerprints(leaves):
  """array_checksum of every array, [n] uint32."""
  out = [array_checksum(x) for x in leaves]
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
      last = mngr.latest_step()
      resume = f"resume from step {last} (left intact)" if last is not None else "start again (no earlier checkpoint)"
      raise CheckpointError(f"disk full while writing checkpoint step {step} to {mngr.directory}: free "
                            f"space and rerun to {resume}") from e
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


def _read_meta(mngr: ocp.CheckpointManager, step: Optional[int], where: str) -> dict:
  """The meta dict of `mngr`'s latest (or given) step, without loading any array."""
  steps = mngr.all_steps()
  if not steps:
    raise CheckpointError(f"no checkpoints under {where!r} (expected {mngr.directory})")
  step = max(steps) if step is None else step
  if step not in steps:
    raise CheckpointError(f"no checkpoint step {step} under {mngr.directory} (have {sorted(steps)})")
  try:
    return mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
  except Exception as e:
    raise CheckpointError(f"checkpoint step {step} in {mngr.directory} has unreadable metadata "
                          f"({type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}); "
                          f"{older_step_hint(mngr, step)}") from e


def read_meta(model_dir: str, step: Optional[int] = None) -> dict:
  """The meta dict of a run's latest (or given) checkpoint, without loading any array."""
  return _read_meta(manager(model_dir), step, model_dir)


def config_from_meta(meta: dict, where: str):
  """(ModelConfig, step) of a checkpoint's meta dict."""
  try:
    return ModelConfig(**meta["model_config"]), int(meta["step"])
  except (KeyError, TypeError, ValueError) as e:
    raise CheckpointError(f"checkpoint in {where} has no valid model_config: {e}") from e


def read_config(model_dir: str, step: Optional[int] = None):
  """(ModelConfig, step) of a run's latest (or given) checkpoint, without loading any array."""
  return config_from_meta(read_meta(model_dir, step), model_dir)


def load_params(model_dir: str, mesh=None, step: Optional[int] = None):
  """(params, ModelConfig) of a run (e.g. a teacher or a params-only start), restored straight onto
  the config's shardings on `mesh` when given (each process then reads only its own shards)."""
  from guide_jax import sharding  # local: keeps this module light for tools that only read metadata
  mngr = manager(model_dir)
  config, step = config_from_meta(_read_meta(mngr, step, model_dir), model_dir)
  restored = restore(mngr, step, sharding.abstract_params(config, mesh))
  return restored["params"], config


# ----------------------------------------------------------------------------------------- resume
class Restored(NamedTuple):
  """A resumed run's state: the step it continues from, its params and optimizer state."""
  step: int
  params: Any
  opt_state: Any


@dataclasses.dataclass
class Found:
  """The checkpoint a run resumes from, chosen before any array is read (find()).

  step: the step restored. meta: its meta dict. drop: later steps a first rollback deletes
  (restore_step older than the latest). history: the run's record of rollbacks and changed
  settings, this resume's events appended (check(), resume()); every later checkpoint and
  results.json carry it. changed: {setting: [checkpoint's, this run's]} found by check().
  """
  step: int
  meta: dict
  where: str
  allow_changed: bool
  drop: list
  history: list
  changed: dict = dataclasses.field(default_factory=dict)

  def check(self, run_meta: dict, keys, model: Optional[ModelConfig] = None) -> None:
    """Refuse to resume a checkpoint of another model (when `model` is given) or, unless
    allow_changed, one whose `keys` of its meta differ from run_meta's (keys absent on either side,
    e.g. recorded only by newer versions, are not compared). Called once per group of keys, as
    each becomes known: settings before any teacher or data is read, the KD teacher's content
    fingerprint once it is read, the data's identity from its manifest before its shards are hashed."""
    diff = {}
    if model is not None:
      defaults = {f.name: f.default for f in dataclasses.fields(ModelConfig)}
      saved_model = {**defaults, **self.meta.get("model_config", {})}  # fields added since: their defaults
      mine = dataclasses.asdict(model)
      diff = {k: [saved_model.get(k), mine[k]] for k in mine if saved_model.get(k) != mine[k]}
      if any(k in diff for k in SHAPE_KEYS):
        raise ValueError(f"{self.where} holds a checkpoint (step {self.step}) of another model: "
                         + _describe_changes(diff) + ". Use a new MODEL_DIR for this model.")
    diff.update({k: [self.meta[k], run_meta[k]] for k in keys
                 if k in self.meta and k in run_meta and self.meta[k] != run_meta[k]})
    if diff and not self.allow_changed:
      raise ValueError(f"{self.where} was started with other settings (step {self.step}): "
                       + _describe_changes(diff) + ". Resume with the same settings, use a new MODEL_DIR, or "
                       "set --gin.config.CheckpointConfig.allow_changed_run=True to continue anyway.")
    if diff:
      logging.warning("resuming %s with changed settings: %s", self.where, _describe_changes(diff))
      self.changed.update(diff)


def _describe_changes(diff: dict) -> str:
  return "; ".join(f"{k}: checkpoint {old!r} != this run {new!r}" for k, (old, new) in diff.items())


def _rollback_done(mngr: ocp.CheckpointManager, latest: int, restore_step: int) -> bool:
  """Whether the run whose latest checkpoint is `latest` already rolled back to restore_step (its
  later steps are then that run's own, made after the rollback). An unreadable latest meta (the
  reason to roll back, maybe) counts as not done."""
  try:
    meta = _read_meta(mngr, latest, mngr.directory)
  except CheckpointError:
    return False
  return any(e.get("event") == "rollback" and e.get("step") == restore_step for e in meta.get("history", ()))


def agreed_step(mngr: ocp.CheckpointManager, restore_step: Optional[int] = None) -> Optional[int]:
  """The step this run resumes from (None: a fresh run), the same on every process.

  restore_step is one-shot: once a run rolled back to it (recorded in its checkpoints' history),
  a rerun of the same command (after a preemption) continues from the latest step instead of
  rolling back again. Read from the listing by process 0 and broadcast, so that every process
  makes the same choice (e.g. to load no teacher) and compiles the same collectives.
  """
  step = -1
  if jax.process_index() == 0:
    steps = mngr.all_steps()
    if restore_step is not None and not steps:
      raise CheckpointError(f"CheckpointConfig.restore_step={restore_step}, but {os.path.dirname(mngr.directory)} "
                            "holds no checkpoints (a mistyped MODEL_DIR?)")
    latest = max(steps) if steps else -1
    if restore_step is not None and latest != restore_step and _rollback_done(mngr, latest, restore_step):
      logging.warning("CheckpointConfig.restore_step=%d was already applied (recorded in step %d's history): "
                      "continuing from step %d; drop restore_step from the command", restore_step, latest, latest)
      step = latest
    elif restore_step is not None:
      if restore_step not in steps:
        raise CheckpointError(f"CheckpointConfig.restore_step={restore_step} is not a checkpoint "
                              f"of {mngr.directory} (have {sorted(steps)})")
      step = restore_step
    else:
      step = latest
  if jax.process_count() > 1:
    step = int(multihost_utils.broadcast_one_to_all(np.int32(step)))
  return None if step < 0 else step


def find(mngr: ocp.CheckpointManager, *, restore_step: Optional[int] = None, allow_changed: bool = False,
         where: str = "MODEL_DIR") -> Optional[Found]:
  """The checkpoint this run resumes from (agreed_step: restore_step, else the latest; the same on
  every process) and its meta, or None when `mngr` holds none (a fresh run). Reads no array."""
  step = agreed_step(mngr, restore_step)
  if step is None:
    return None
  meta = _read_meta(mngr, step, where)
  drop = sorted(s for s in mngr.all_steps() if s > step)
  history = list(meta.get("history", []))
  if drop:
    history.append({"event": "rollback", "step": step, "dropped": drop})
  return Found(step, meta, where, allow_changed, drop, history)


def tokens_seen(meta: dict, tokens_per_step: int) -> int:
  """Tokens trained on up to a checkpoint: its recorded count (the true one when a resume changed
  the batch); for a checkpoint from before it was recorded, step * its own batch_size * seq_len
  (else this run's tokens_per_step)."""
  if "tokens_seen" in meta:
    return int(meta["tokens_seen"])
  per_step = meta["batch_size"] * meta["seq_len"] if "batch_size" in meta and "seq_len" in meta else tokens_per_step
  return int(meta["step"]) * int(per_step)


def resume(mngr: ocp.CheckpointManager, found: Found, state) -> Restored:
  """Restore `found` (find(), its settings checked with found.check) onto the shardings of `state`
  (trainer.AbstractState: sharded ShapeDtypeStructs of params and opt_state), checksums verified;
  a rollback (restore_step older than the latest) then deletes the later steps, and any settings
  changed (allow_changed_run) are appended to found.history: this run continues from there."""
  restored = restore(mngr, found.step, state.params, state.opt_state)
  if found.changed:
    found.history.append({"event": "changed", "step": found.step, "settings": found.changed})
  for later in found.drop:
    logging.warning("deleting checkpoint step %d of %s: this run rolls back to step %d (restore_step; once: "
                    "a rerun continues from this run's own later steps)", later, found.where, found.step)
    mngr.delete(later)
  logging.info("resumed %s at step %d", found.where, found.step)
  return Restored(found.step, restored["params"], restored["opt_state"])
