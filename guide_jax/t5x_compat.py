r"""GUIDE for t5x users: a restore-time state transformation and t5x checkpoint I/O.

Nothing here imports t5x, gin, seqio or TensorFlow; t5x is NOT required (nor tested against).

1. In a t5x run (the student's), GUIDE-initialize the student while t5x restores the TEACHER's
   checkpoint: `guide_state_transformation` has t5x's RestoreStateTransformationFn signature
   `fn(state_dict, target_state_dict, *, is_resuming=False) -> state_dict` (see
   gin/t5x/guide_restore.gin):

     from __gin__ import dynamic_registration
     from t5x import utils
     from guide_jax import t5x_compat
     utils.RestoreCheckpointConfig.path = %TEACHER_CHECKPOINT     # .../checkpoint_<step>
     utils.RestoreCheckpointConfig.mode = 'specific'
     utils.RestoreCheckpointConfig.fallback_to_scratch = True     # fresh optimizer state, step 0
     utils.RestoreCheckpointConfig.state_transformation_fns = [@t5x_compat.guide_state_transformation]
     t5x_compat.guide_state_transformation.teacher_config = ...   # ModelConfig / TransformerConfig
     t5x_compat.guide_state_transformation.student_config = @network.TransformerConfig()
     t5x_compat.guide_state_transformation.teacher_checkpoint = %TEACHER_CHECKPOINT

   How t5x calls it (t5x/checkpoints.py, read from its public source): the transformation runs
   BEFORE t5x reads any array, on the checkpoint's *structure* (tensorstore specs in legacy
   msgpack checkpoints, placeholders in orbax ones), and `target_state_dict` is the abstract
   (jax.ShapeDtypeStruct) state of the model being built. Any concrete numpy array the function
   returns is used as is. So when the teacher's leaves are not arrays, the teacher's target is read
   here from `teacher_checkpoint` (t5x orbax layout, see below); random student parts come from
   PRNGKey(seed); and 'state' is left out so that `fallback_to_scratch=True` fills in a fresh
   optimizer state (step 0). Given concrete arrays (e.g. state dicts loaded by hand, as in
   tests/test_t5x_compat.py) everything is used directly and 'state' comes from target_state_dict
   with step reset to 0.

2. Offline: `python -m guide_jax.convert --format=t5x ...` writes the GUIDE student as a t5x
   checkpoint (`write_t5x_checkpoint`), to start a t5x run from with
   RestoreCheckpointConfig(path=<out>/checkpoint_0, mode='specific', fallback_to_scratch=True,
   state_transformation_fns=[@t5x_compat.drop_optimizer_state]).

t5x checkpoint layout assumed (t5x.checkpoints.OrbaxCheckpointManagerInterface: an orbax
CheckpointManager with step_prefix='checkpoint' and one item 'state' saved by
PyTreeCheckpointHandler(use_ocdbt=False)):
  <dir>/checkpoint_<step>/state/   orbax PyTree of TrainState.state_dict() =
      {'target': params, 'state': {'step': int32, 'param_states': {...}}}
What is tested here is that layout written by orbax and read back by orbax and by this module;
whether a given t5x version restores it can only be checked with t5x. Legacy t5x checkpoints
(checkpoint_<step>/checkpoint msgpack + tensorstore arrays) are detected and rejected.

gin: `import guide_jax.t5x_compat` in a process that has already imported gin (as t5x has)
registers guide_state_transformation, drop_optimizer_state and model_config_from_t5x with gin;
`register_with_gin()` does it explicitly. With `from __gin__ import dynamic_registration`
(t5x's style) no registration is needed at all.
"""
import dataclasses
import os
import re
import sys
from collections.abc import Mapping
from typing import Any, Callable, Optional

from absl import logging
import jax
import numpy as np

from guide_jax import model
from guide_jax.config import ModelConfig
from guide_jax.transforms import guide as guide_lib
from guide_jax.transforms import validate
from guide_jax.transforms.select import LAYER_SELECTIONS, select_layers

STATE_ITEM = "state"  # t5x's orbax item name (t5x.checkpoints._STATE_KEY)
_STEP_DIR = re.compile(r"^checkpoint_(\d+)$")

# t5x activation names (flax.linen / jax.nn) -> ModelConfig.mlp_activation.
_T5X_ACTIVATIONS = {"gelu": "gelu", "relu": "relu", "silu": "silu", "swish": "silu"}


class T5xCheckpointError(ValueError):
  """A t5x checkpoint that is missing, of an unsupported kind, or does not fit its config."""


# --------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------

def model_config_from_t5x(transformer_config=None, **fields) -> ModelConfig:
  """ModelConfig from t5x decoder-only `TransformerConfig` fields (an object, a dict, or kwargs).

  Uses vocab_size, emb_dim, num_heads, num_layers, head_dim, mlp_dim, mlp_activations,
  logits_via_embedding (and dtype); other fields (dropout_rate, ...) are ignored. t5x's
  decoder-only model uses T5 relative position biases (32 buckets, max distance 128), so the
  result has position_embedding='relpos'. Our MLP is gated, act(x wi_0) * (x wi_1): only
  mlp_activations = (act, 'linear') with act in gelu/relu/silu/swish is accepted; a single
  activation (t5x's non-gated 'wi' kernel) or any other combination raises ValueError.
  Defaults follow t5x's TransformerConfig: mlp_activations=('relu',) (hence an error unless
  given), logits_via_embedding=False.
  """
  values = {}
  if transformer_config is not None:
    if isinstance(transformer_config, Mapping):
      values.update(transformer_config)
    else:
      for name in ("vocab_size", "emb_dim", "num_heads", "num_layers", "head_dim", "mlp_dim",
                   "mlp_activations", "logits_via_embedding", "dtype"):
        if hasattr(transformer_config, name):
          values[name] = getattr(transformer_config, name)
  values.update(fields)
  missing = [k for k in ("vocab_size", "emb_dim", "num_heads", "num_layers", "head_dim", "mlp_dim")
             if values.get(k) is None]
  if missing:
    raise ValueError(f"t5x TransformerConfig is missing {', '.join(missing)}")
  acts = values.get("mlp_activations", ("relu",))
  acts = (acts,) if isinstance(acts, str) else tuple(acts)
  if len(acts) == 1:
    raise ValueError(f"t5x mlp_activations={acts!r} is a non-gated MLP (one 'wi' kernel); guide_jax's "
                     "model is gated (wi_0, wi_1), so it needs two activations such as ('gelu', 'linear')")
  if len(acts) != 2 or acts[1] != "linear" or acts[0] not in _T5X_ACTIVATIONS:
    raise ValueError(f"unsupported t5x mlp_activations={acts!r}: need (act, 'linear') with act one of "
                     f"{sorted(_T5X_ACTIVATIONS)} (guide_jax computes act(x wi_0) * (x wi_1))")
  dtype = values.get("dtype", "float32")
  dtype = "bfloat16" if "bfloat16" in str(getattr(dtype, "__name__", dtype)) else "float32"
  return ModelConfig(vocab_size=int(values["vocab_size"]), d_model=int(values["emb_dim"]),
                     n_layers=int(values["num_layers"]), n_heads=int(values["num_heads"]),
                     head_dim=int(values["head_dim"]), mlp_dim=int(values["mlp_dim"]),
                     tie_embeddings=bool(values.get("logits_via_embedding", False)),
                     position_embedding="relpos", relpos_buckets=32, relpos_max_distance=128,
                     mlp_activation=_T5X_ACTIVATIONS[acts[0]], dtype=dtype)


def as_model_config(config, name: str = "config") -> ModelConfig:
  """A ModelConfig from a ModelConfig, a dict of its fields, or a t5x TransformerConfig / dict."""
  if isinstance(config, ModelConfig):
    return config
  if config is None:
    raise ValueError(f"{name} is required (a guide_jax ModelConfig or a t5x TransformerConfig)")
  if isinstance(config, Mapping):
    if "d_model" in config:
      return ModelConfig(**config)
    if "emb_dim" in config:
      return model_config_from_t5x(config)
  elif hasattr(config, "emb_dim"):
    return model_config_from_t5x(config)
  raise ValueError(f"{name} must be a ModelConfig or a t5x TransformerConfig, got {type(config).__name__}")


# --------------------------------------------------------------------------------------------
# The restore-time transformation
# --------------------------------------------------------------------------------------------

def _is_concrete(x) -> bool:
  return isinstance(x, (np.ndarray, np.generic, jax.Array, int, float))


def _materialize(x):
  """Concrete value as numpy, or None. t5x LazyArrays (with .get()) are read."""
  if _is_concrete(x):
    return np.asarray(x)
  if callable(getattr(x, "get", None)) and hasattr(x, "shape") and not isinstance(x, Mapping):
    value = x.get()
    return np.asarray(value) if _is_concrete(value) else None
  return None


def _lookup(tree, path: str):
  node = tree
  for part in path.split("/"):
    if not isinstance(node, Mapping) or part not in node:
      return None
    node = node[part]
  return node


def _unflatten(flat: dict) -> dict:
  out = {}
  for path, value in flat.items():
    node = out
    parts = path.split("/")
    for part in parts[:-1]:
      node = node.setdefault(part, {})
    node[parts[-1]] = value
  return out


def _concrete_params(target, config: ModelConfig, name: str):
  """(params as numpy, None) when every parameter of `config` is a concrete array in `target`,
  else (None, reason). Raises when a parameter is missing or has the wrong shape."""
  if not isinstance(target, Mapping):
    raise ValueError(f"{name} must be a nested dict with a 'decoder' subtree, got {type(target).__name__}")
  expected = validate.flatten(model.param_shapes(config))
  missing = sorted(k for k in expected if _lookup(target, k) is None)
  if missing:
    more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
    raise ValueError(f"{name} is missing {len(missing)} parameter(s) of its config: "
                     f"{', '.join(missing[:5])}{more}")
  flat = {}
  for key, shape in expected.items():
    leaf = _lookup(target, key)
    value = _materialize(leaf)
    if value is None:
      return None, f"{key} is a {type(leaf).__name__}, not an array"
    if value.shape != shape.shape:
      raise ValueError(f"{name}: {key} has shape {value.shape}, its config expects {shape.shape}")
    flat[key] = value
  extra = sorted(set(validate.flatten(target)) - set(expected))
  if extra:
    raise ValueError(f"{name} has parameters its config does not ({', '.join(extra[:5])}); check "
                     "tie_embeddings / logits_via_embedding and position_embedding")
  return _unflatten(flat), None


def _check_abstract_shapes(target, config: ModelConfig, name: str) -> None:
  """Shapes of target_state_dict['target'] (arrays or ShapeDtypeStructs) against `config`."""
  expected = validate.flatten(model.param_shapes(config))
  for key, shape in expected.items():
    leaf = _lookup(target, key)
    if leaf is None:
      raise ValueError(f"{name} has no {key}: is student_config the model t5x is building?")
    if hasattr(leaf, "shape") and tuple(leaf.shape) != shape.shape:
      raise ValueError(f"{name}: {key} has shape {tuple(leaf.shape)} but student_config expects "
                       f"{shape.shape}: student_config is not the model t5x is building")


def _fresh_state(state):
  """target_state_dict['state'] with step 0, or None when any leaf is not a concrete array."""
  if not isinstance(state, Mapping):
    return None
  leaves = jax.tree_util.tree_leaves(state)
  if not all(_is_concrete(x) for x in leaves):
    return None
  out = dict(state)
  if "step" in out:
    out["step"] = np.zeros_like(np.asarray(out["step"]))
  return out


def make_guide_transformation(teacher_config, student_config, *, blocks: str = "first",
                              other_blocks: str = "uniform_selection", layer_selection: str = "first_n",
                              center: bool = False, seed: int = 0,
                              teacher_checkpoint: Optional[str] = None) -> Callable:
  """A t5x RestoreStateTransformationFn that GUIDE-initializes the student from the teacher.

  fn(state_dict, target_state_dict, *, is_resuming=False) -> state_dict
    state_dict: the restored TEACHER checkpoint, {'target': params, 'state': {...}}.
    target_state_dict: the STUDENT being built (t5x's TrainState.state_dict()).
    is_resuming=True (a student run restarting from its own checkpoint): state_dict is returned
      unchanged, so a resumed student is never re-initialized.
  Otherwise returns {'target': guide_init(teacher target) as numpy arrays, 'state': ...}:
    - teacher params: state_dict['target'] when its leaves are arrays; else (t5x hands the
      transformation the checkpoint's structure, not arrays) read from `teacher_checkpoint`.
    - random parts (other_blocks='random'): target_state_dict['target'] when its leaves are
      arrays, else model.init_params(student_config, PRNGKey(seed)).
    - 'state': target_state_dict['state'] with step 0 (the student's fresh optimizer state) when
      its leaves are arrays; otherwise omitted, and t5x's RestoreCheckpointConfig
      .fallback_to_scratch=True must fill it in (fresh optimizer state, step 0).
  teacher_config / student_config: ModelConfig, dict, or t5x TransformerConfig (as_model_config).
  blocks / other_blocks / layer_selection / center: as guide_init. All arguments are checked here,
  before t5x restores anything. fn.last_info holds guide_init's info (minus the components) after
  a call.
  """
  teacher = as_model_config(teacher_config, "teacher_config")
  student = as_model_config(student_config, "student_config")
  for arg, value, choices in (("blocks", blocks, guide_lib.BLOCKS),
                              ("other_blocks", other_blocks, guide_lib.OTHER_BLOCKS),
                              ("layer_selection", layer_selection, LAYER_SELECTIONS)):
    if value not in choices:
      raise ValueError(f"{arg} must be one of {choices}, got {value!r}")
  validate.check_dimensions(teacher, student)
  select_layers(teacher.n_layers, student.n_layers, layer_selection)

  def transform(state_dict, target_state_dict, *, is_resuming: bool = False):
    if is_resuming:
      return state_dict
    if not isinstance(state_dict, Mapping) or "target" not in state_dict:
      raise ValueError("state_dict must be a t5x state dict with a 'target' entry (the teacher's params)")
    if not isinstance(target_state_dict, Mapping) or "target" not in target_state_dict:
      raise ValueError("target_state_dict must be a t5x state dict with a 'target' entry (the student)")
    target = target_state_dict["target"]
    _check_abstract_shapes(target, student, "target_state_dict['target']")

    teacher_params, why = _concrete_params(state_dict["target"], teacher, "teacher state_dict['target']")
    if teacher_params is None:
      if not teacher_checkpoint:
        raise ValueError(f"the teacher state_dict holds no arrays ({why}), as when t5x calls a "
                         "transformation before reading the checkpoint: bind teacher_checkpoint to "
                         "the teacher's checkpoint path (the RestoreCheckpointConfig.path)")
      teacher_params = load_t5x_params(teacher_checkpoint, teacher)
    fresh, _ = _concrete_params(target, student, "target_state_dict['target']")
    if fresh is None:
      fresh = student_template(student, blocks=blocks, other_blocks=other_blocks, seed=seed)

    params, info = guide_lib.guide_init(teacher_params, teacher, student, student_params=fresh,
                                        blocks=blocks, other_blocks=other_blocks,
                                        layer_selection=layer_selection, center=center, return_info=True)
    logging.info("GUIDE (t5x restore): explained variance %.4f, teacher layers %s",
                 info["explained_variance"], info["teacher_layers"])
    transform.last_info = {k: v for k, v in info.items() if k != "components"}

    def to_numpy(new, ref):
      dtype = getattr(ref, "dtype", None)
      return np.asarray(new, dtype=dtype) if dtype is not None else np.asarray(new)

    out = {"target": jax.tree_util.tree_map(to_numpy, jax.device_get(params),
                                            _unflatten(dict(_ref_leaves(target, student))))}
    state = _fresh_state(target_state_dict.get("state"))
    if state is not None:
      out["state"] = state
    else:
      logging.info("GUIDE (t5x restore): no concrete student optimizer state; leaving 'state' to "
                   "RestoreCheckpointConfig.fallback_to_scratch")
    return out

  transform.last_info = None
  transform.teacher_config, transform.student_config = teacher, student
  return transform


def student_template(config: ModelConfig, *, blocks: str, other_blocks: str, seed: int = 0):
  """The student tree guide_init fills in: fresh random params (PRNGKey(seed)) when some block
  starts at random (other_blocks='random' and blocks != 'all'), else zeros, since guide_init then
  uses only its shapes and dtypes (same output, without compiling the model's initializers)."""
  if other_blocks == "random" and blocks != "all":
    return init_student(config, seed)
  return jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), model.param_shapes(config))


def init_student(config: ModelConfig, seed: int = 0):
  """model.init_params(config, PRNGKey(seed)) as one jitted computation (eager init compiles every
  initializer separately, which dominates a small conversion's run time)."""
  init = jax.jit(lambda key: model.init_params(config, key))
  return jax.device_get(init(jax.random.PRNGKey(seed)))


def _ref_leaves(target, config: ModelConfig):
  """{path: the student's leaf (array or ShapeDtypeStruct)}, to take its dtype."""
  for key in validate.flatten(model.param_shapes(config)):
    yield key, _lookup(target, key)


def guide_state_transformation(state_dict, target_state_dict, *, is_resuming: bool = False,
                               teacher_config=None, student_config=None, blocks: str = "first",
                               other_blocks: str = "uniform_selection", layer_selection: str = "first_n",
                               center: bool = False, seed: int = 0,
                               teacher_checkpoint: Optional[str] = None):
  """gin-friendly form of make_guide_transformation (bind teacher_config, student_config, ...).

  Use in t5x gin: utils.RestoreCheckpointConfig.state_transformation_fns =
  [@t5x_compat.guide_state_transformation] (see gin/t5x/guide_restore.gin).
  """
  if is_resuming:
    return state_dict
  fn = make_guide_transformation(teacher_config, student_config, blocks=blocks, other_blocks=other_blocks,
                                 layer_selection=layer_selection, center=center, seed=seed,
                                 teacher_checkpoint=teacher_checkpoint)
  return fn(state_dict, target_state_dict, is_resuming=False)


def drop_optimizer_state(state_dict, target_state_dict, *, is_resuming: bool = False):
  """t5x RestoreStateTransformationFn keeping only 'target' (unless resuming).

  For starting a t5x run from a checkpoint written by write_t5x_checkpoint / guide_jax.convert
  (which hold no optimizer slots): with RestoreCheckpointConfig.fallback_to_scratch=True, t5x
  fills in a fresh optimizer state and step 0.
  """
  del target_state_dict
  if is_resuming:
    return state_dict
  return {"target": state_dict["target"]}


# --------------------------------------------------------------------------------------------
# t5x checkpoint I/O (orbax layout)
# --------------------------------------------------------------------------------------------

def t5x_checkpoint_dir(model_dir: str, step: int) -> str:
  return os.path.join(os.path.abspath(model_dir), f"checkpoint_{int(step)}")


def write_t5x_checkpoint(model_dir: str, params, *, step: int = 0, param_states=None) -> str:
  """Write `params` as a t5x checkpoint: <model_dir>/checkpoint_<step>/state/ (orbax, no OCDBT).

  The saved tree is {'target': params, 'state': {'step': int32(step)[, 'param_states': ...]}};
  without param_states, restore it in t5x with fallback_to_scratch=True and
  state_transformation_fns=[drop_optimizer_state] (fresh optimizer state). orbax writes into a
  temporary directory and renames it when complete. Returns the checkpoint_<step> path.
  Raises T5xCheckpointError when that checkpoint already exists.
  """
  import orbax.checkpoint as ocp
  path = t5x_checkpoint_dir(model_dir, step)
  if os.path.exists(path):
    raise T5xCheckpointError(f"{path} already exists")
  state = {"step": np.int32(step)}
  if param_states is not None:
    state["param_states"] = jax.device_get(param_states)
  tree = {"target": jax.tree_util.tree_map(np.asarray, jax.device_get(params)), "state": state}
  options = ocp.CheckpointManagerOptions(step_prefix="checkpoint", create=True,
                                         enable_async_checkpointing=False)
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


def t5x_target_shapes(path: str) -> dict:
  """{'decoder/...': shape} of a t5x checkpoint's 'target', from metadata only (no array read)."""
  import orbax.checkpoint as ocp
  state_dir = find_t5x_checkpoint(path)
  try:
    meta = ocp.PyTreeCheckpointer().metadata(state_dir).item_metadata
  except Exception as e:
    raise T5xCheckpointError(f"unreadable t5x checkpoint metadata in {state_dir}: "
                             f"{type(e).__name__}: {str(e)[:300]}") from e
  tree = dict(getattr(meta, "tree", meta))
  if "target" not in tree:
    raise T5xCheckpointError(f"{state_dir} holds no 'target' (keys: {sorted(tree)})")
  return {k: tuple(v.shape) for k, v in validate.flatten(tree["target"]).items()}


def check_t5x_checkpoint(path: str, config: ModelConfig) -> None:
  """Raise T5xCheckpointError when the checkpoint's target does not fit `config` (metadata only)."""
  got = t5x_target_shapes(path)
  expected = {k: v.shape for k, v in validate.flatten(model.param_shapes(config)).items()}
  problems = [f"missing {k}" for k in sorted(set(expected) - set(got))]
  problems += [f"unexpected {k}" for k in sorted(set(got) - set(expected))]
  problems += [f"{k}: {got[k]} != config {expected[k]}" for k in sorted(set(got) & set(expected))
               if got[k] != expected[k]]
  if problems:
    raise T5xCheckpointError(f"t5x checkpoint {path} does not match its config: "
                             + "; ".join(problems[:6]) + (" ..." if len(problems) > 6 else ""))


def read_t5x_checkpoint(path: str, *, target_only: bool = False) -> dict:
  """A t5x checkpoint's state dict as numpy arrays ({'target': ..., 'state': ...}).

  target_only=True reads only 'target' (orbax partial restore), skipping optimizer slots.
  """
  import orbax.checkpoint as ocp
  state_dir = find_t5x_checkpoint(path)
  checkpointer = ocp.PyTreeCheckpointer()
  try:
    if not target_only:
      return jax.tree_util.tree_map(np.asarray, checkpointer.restore(state_dir))
    meta = dict(getattr(checkpointer.metadata(state_dir).item_metadata, "tree", None) or {})
    if "target" not in meta:
      raise T5xCheckpointError(f"{state_dir} holds no 'target'")
    item = {"target": jax.tree_util.tree_map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), meta["target"])}
    restore_args = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
    restored = checkpointer.restore(state_dir, args=ocp.args.PyTreeRestore(
        item=item, restore_args=restore_args, partial_restore=True))
    return {"target": jax.tree_util.tree_map(np.asarray, restored["target"])}
  except T5xCheckpointError:
    raise
  except Exception as e:  # orbax raises many types for truncated / corrupt files
    raise T5xCheckpointError(f"t5x checkpoint {state_dir} is corrupt or incomplete: "
                             f"{type(e).__name__}: {str(e)[:300]}") from e


def load_t5x_params(path: str, config: Optional[ModelConfig] = None):
  """The 'target' params of a t5x checkpoint (numpy), checked against `config` when given."""
  if config is not None:
    check_t5x_checkpoint(path, config)
  return read_t5x_checkpoint(path, target_only=True)["target"]


# --------------------------------------------------------------------------------------------
# gin
# --------------------------------------------------------------------------------------------

def register_with_gin() -> None:
  """Register guide_state_transformation, drop_optimizer_state and model_config_from_t5x with gin
  (as guide_jax.t5x_compat.*). Imports gin. ModelConfig is registered by guide_jax.gin_utils."""
  import gin
  for fn in (guide_state_transformation, drop_optimizer_state, model_config_from_t5x):
    try:
      gin.external_configurable(fn, module="guide_jax.t5x_compat")
    except ValueError:  # already registered in this process
      pass


if "gin" in sys.modules:  # e.g. imported from a t5x gin file: gin is loaded already, never by us
  register_with_gin()
