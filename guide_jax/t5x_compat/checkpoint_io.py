"""t5x checkpoints in t5x's own orbax layout: find, check against a config, read in shards, write.

t5x.checkpoints.OrbaxCheckpointManagerInterface (what `t5x.train` uses) keeps an orbax
CheckpointManager with step_prefix='checkpoint' and one item 'state':
  <dir>/checkpoint_<step>/state/   orbax PyTree of TrainState.state_dict() =
      {'target': params, 'state': {'step': int32, 'param_states': {...}}}
t5x reads such a checkpoint with `t5x.utils.create_checkpoint_manager_and_restore` (as t5x.train
does; `TrainStateInitializer.from_checkpoint` cannot read orbax checkpoints). Legacy t5x
checkpoints (checkpoint_<step>/checkpoint msgpack + tensorstore arrays) are read through t5x's own
loader when t5x is importable, and refused with the re-save recipe (LEGACY_RECIPE) otherwise;
scanned and encoder-decoder checkpoints are refused naming why.
t5x itself restores a checkpoint of the wrong shapes without error and fails only at the first
forward pass, so everything written here is checked against the model config first.
"""
import os
import re

import jax
import numpy as np
from jax.experimental import multihost_utils

from guide_jax import model, sharding
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


LEGACY_RECIPE = """\
Re-save it once in t5x's orbax layout, on any machine where t5x is installed (pip install t5x), with
t5x's own reader and guide_jax's writer (the layout `t5x.train` reads; tests/t5x check it):
  import t5x.checkpoints
  from guide_jax import t5x_compat
  state = t5x.checkpoints.load_t5x_checkpoint('<legacy>/checkpoint_<step>')
  t5x_compat.write_t5x_checkpoint('<new model dir>', state['target'], <its ModelConfig>, step=<step>)
Or run guide_jax where t5x is importable: it then reads the legacy checkpoint through t5x's loader."""


def _legacy_dir(path: str) -> bool:
  return os.path.isfile(os.path.join(path, "checkpoint"))


def find_t5x_checkpoint(path: str) -> str:
  """The orbax 'state' directory, or the legacy checkpoint_<step> directory, of a t5x checkpoint.

  path: <dir>/checkpoint_<step> (its state/ item), a model dir (its latest checkpoint_<step>), or
  an orbax PyTree directory itself. A legacy t5x checkpoint (msgpack 'checkpoint' file +
  tensorstore arrays; every public T5X checkpoint, and t5x.train --gin.train.use_orbax=False) is
  returned as its checkpoint_<step> directory (is_legacy tells). Raises T5xCheckpointError
  (naming the path) otherwise.
  """
  path = os.path.abspath(path)
  if not os.path.isdir(path):
    raise T5xCheckpointError(f"t5x checkpoint {path!r} does not exist")
  state = os.path.join(path, STATE_ITEM)
  if os.path.isdir(state):
    if not os.path.exists(os.path.join(state, "_METADATA")):
      raise T5xCheckpointError(f"t5x checkpoint {state} is incomplete (no _METADATA)")
    return state
  if _legacy_dir(path) or os.path.exists(os.path.join(path, "_METADATA")):
    return path
  steps = sorted(int(m.group(1)) for m in map(_STEP_DIR.match, os.listdir(path)) if m)
  for step in reversed(steps):
    candidate = os.path.join(path, f"checkpoint_{step}")
    if os.path.isdir(os.path.join(candidate, STATE_ITEM)) or _legacy_dir(candidate):
      return find_t5x_checkpoint(candidate)
  raise T5xCheckpointError(f"no t5x checkpoint in {path!r} (expected checkpoint_<step>/state/)")


def is_legacy(found: str) -> bool:
  """Whether find_t5x_checkpoint's result is a legacy (msgpack + tensorstore) checkpoint."""
  return _legacy_dir(found)


def _t5x():
  """t5x.checkpoints, or None when t5x is not importable."""
  try:
    import t5x.checkpoints  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  return t5x.checkpoints


def _load_legacy(found: str, lazy: bool) -> dict:
  """A legacy checkpoint's state dict through t5x's own loader: {'target': numpy arrays, ...}, or
  with lazy=True t5x LazyArrays (shape and dtype; nothing read until .get())."""
  t5x_checkpoints = _t5x()
  if t5x_checkpoints is None:
    raise T5xCheckpointError(f"{found} is a legacy t5x checkpoint (msgpack 'checkpoint' file + tensorstore "
                             f"arrays), which only t5x's own loader reads, and t5x is not importable here. "
                             + LEGACY_RECIPE)
  try:
    return t5x_checkpoints.load_t5x_checkpoint(found, lazy_parameters=lazy)
  except Exception as e:
    raise T5xCheckpointError(f"t5x could not read the legacy checkpoint {found}: "
                             f"{type(e).__name__}: {str(e)[:300]}") from e


def _target_metadata(found: str) -> dict:
  """The 'target' tree of a checkpoint, as objects with .shape and .dtype (no array read for orbax)."""
  if is_legacy(found):
    return _load_legacy(found, lazy=True)["target"]
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  try:
    meta = ocp.PyTreeCheckpointer().metadata(found).item_metadata
  except Exception as e:
    raise T5xCheckpointError(f"unreadable t5x checkpoint metadata in {found}: "
                             f"{type(e).__name__}: {str(e)[:300]}") from e
  tree = dict(getattr(meta, "tree", None) or meta)
  if "target" not in tree:
    raise T5xCheckpointError(f"{found} holds no 'target' (keys: {sorted(tree)})")
  return tree["target"]


def _kind_problem(got: dict) -> str:
  """Why a checkpoint's target is not a t5x decoder-only unscanned model ('' when it is)."""
  tops = {k.split("/")[0] for k in got}
  if "encoder" in tops:
    return ("an encoder-decoder (T5-style) checkpoint: it has an 'encoder' subtree; guide_jax maps "
            "decoder-only models (t5x/examples/decoder_only) only")
  if any(k.startswith("decoder/layers/") for k in got):
    return ("a scanned checkpoint (t5x scan_layers=True: every layer stacked in decoder/layers/...); "
            "guide_jax reads unscanned layers (decoder/layers_<i>/...): re-save it unscanned with t5x")
  return ""


def check_t5x_checkpoint(path: str, config: ModelConfig) -> str:
  """Raise T5xCheckpointError when the checkpoint's target does not fit `config` (metadata only;
  a legacy checkpoint is read through t5x). Returns find_t5x_checkpoint(path)."""
  found = find_t5x_checkpoint(path)
  got = {k: tuple(v.shape) for k, v in validate.flatten(_target_metadata(found)).items()}
  kind = _kind_problem(got)
  if kind:
    raise T5xCheckpointError(f"t5x checkpoint {path} is {kind}")
  problems = _shape_problems(got, config)
  if problems:
    raise T5xCheckpointError(f"t5x checkpoint {path} does not match its config: "
                             + "; ".join(problems[:6]) + (" ..." if len(problems) > 6 else ""))
  return found


def read_t5x_params(found: str, config: ModelConfig, mesh=None):
  """The 'target' params of a checked checkpoint (check_t5x_checkpoint's result), at their stored
  dtypes: on `mesh` each array is restored straight onto its logical-axis sharding (every process
  reads only its own shards); without a mesh, numpy arrays. Optimizer slots are never read (orbax
  partial restore). A legacy checkpoint is read whole on the host by t5x, then placed."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  if is_legacy(found):
    target = validate.restrict(_load_legacy(found, lazy=False)["target"], config)
    target = jax.tree_util.tree_map(np.asarray, target)
    return target if mesh is None else jax.device_put(target, sharding.param_shardings(config, mesh))
  meta = _target_metadata(found)
  dtypes = jax.tree_util.tree_map(lambda m: m.dtype, validate.restrict(meta, config))
  item = sharding.abstract_params(config, mesh, dtypes)
  if mesh is None:
    args = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
  else:
    args = jax.tree_util.tree_map(lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding, global_shape=x.shape,
                                                                 dtype=x.dtype), item)
  try:
    restored = ocp.PyTreeCheckpointer().restore(found, args=ocp.args.PyTreeRestore(
        item={"target": item}, restore_args={"target": args}, partial_restore=True))
  except Exception as e:  # orbax raises many types for truncated / corrupt files
    raise T5xCheckpointError(f"t5x checkpoint {found} is corrupt or incomplete: "
                             f"{type(e).__name__}: {str(e)[:300]}") from e
  return restored["target"]


def load_t5x_params(path: str, config: ModelConfig, mesh=None):
  """The 'target' params of a t5x checkpoint, checked against `config` first (metadata only).

  mesh: restore each array straight onto its sharding (see read_t5x_params); without: numpy.
  """
  return read_t5x_params(check_t5x_checkpoint(path, config), config, mesh)
