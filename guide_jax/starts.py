"""How a run's parameters start, as injected factories (bound in gin like the optimizer):

  train.train.start = @starts.guide()          # gin/guide.gin
  starts.guide.teacher = %TEACHER_DIR

Each factory takes its own options, checks them at once, and returns one function
start(context) -> params, the student's params on their shardings (context: Context below).
A start that reads a teacher reads it once, through context.load_teacher (teachers.load: checked,
finiteness included), and passes it to one transform, which checks its own inputs.

  random(seed)                              model.init_params(PRNGKey(seed))
  params(model_dir)                         the params of a guide_jax run or guide_jax.convert output
  guide(teacher, guide=GuideConfig())       GUIDE (docs/algorithm.md); with guide.calibration_batches
                                            its output scale fitted to the run's first batches
  weight_selection(teacher, layer_selection) Weight Selection (Xu et al. 2023)
  prune(teacher, prune=PruneConfig())       Minitron-style pruning, calibrated on the run's first
                                            prune.calibration_batches training batches

A new start (a new init, a new teacher format's start) is one function here and one gin file:
train.py does not change. Anchors: big_vision's model_mod.load, t5x's state_transformation_fns.
describe(start) -> (name, options) is what a checkpoint records, and a resume compares.
"""
import dataclasses
import functools
from typing import Any, Callable, NamedTuple, Optional, Tuple, Union

from absl import logging
import jax
import numpy as np
from jax.sharding import Mesh

from guide_jax import checkpoints, teachers, trainer
from guide_jax.config import GuideConfig, ModelConfig, PruneConfig, WeightSelectionConfig

# The batch feature pruning calibrates on (the model's input tokens).
CALIBRATION_FEATURE = "decoder_input_tokens"


class Context(NamedTuple):
  """What a start gets. model: the student's ModelConfig. state: trainer.AbstractState (sharded
  ShapeDtypeStructs of the train state). mesh: the run's Mesh. batches: the run's training
  batches (batches.LMBatches: batch(step) -> dict of [B, T] arrays). load_teacher(source) ->
  teachers.Teacher(params, config, identity): the run's teacher reader (one read per source per
  run, shared with KD; train reads a fresh run's teachers before its data)."""
  model: ModelConfig
  state: trainer.AbstractState
  mesh: Mesh
  batches: Any
  load_teacher: Callable[[Union[str, teachers.Source]], teachers.Teacher]


Start = Callable[[Context], Any]


def _require_teacher(name: str, teacher) -> None:
  if not teacher:
    raise ValueError(f"starts.{name} needs a teacher (bind TEACHER_DIR, or starts.{name}.teacher)")
  teachers.as_source(teacher)


# --------------------------------------------------------------------------------------- starts
def _random(ctx: Context, *, seed: int):
  return trainer.init_random(ctx.state, ctx.model, jax.random.PRNGKey(seed))


def random(seed: int = 0) -> Start:
  """The student's own random init from PRNGKey(seed)."""
  if not isinstance(seed, int) or isinstance(seed, bool):
    raise ValueError(f"starts.random.seed must be an int, got {seed!r}")
  return functools.partial(_random, seed=seed)


def _params(ctx: Context, *, model_dir: str):
  config, _ = checkpoints.read_config(model_dir)
  if config != ctx.model:
    raise ValueError(f"starts.params: {model_dir} holds a {config} checkpoint, not this run's {ctx.model}")
  params, _ = checkpoints.load_params(model_dir, ctx.mesh)
  logging.info("params from %s, fresh optimizer state", model_dir)
  return params


def params(model_dir: Optional[str] = None) -> Start:
  """The params (not the optimizer state or step) of a guide_jax run or guide_jax.convert output."""
  if not model_dir:
    raise ValueError("starts.params needs model_dir (bind INIT_PARAMS_DIR)")
  return functools.partial(_params, model_dir=model_dir)


def _guide(ctx: Context, *, teacher, guide: GuideConfig):
  from guide_jax.transforms import guide_init  # pylint: disable=g-import-not-at-top
  teacher_params, teacher_config, _ = ctx.load_teacher(teacher)
  out, info = guide_init(teacher_params, teacher_config, ctx.model, guide, mesh=ctx.mesh)
  logging.info("GUIDE init from %s: explained variance %.4f, teacher layers %s", teachers.as_source(teacher).path,
               info.explained_variance, list(info.teacher_layers))
  if guide.calibration_batches:
    from guide_jax.transforms import calibrate  # pylint: disable=g-import-not-at-top
    batches = [ctx.batches.batch(i) for i in range(guide.calibration_batches)]
    stack = lambda key: np.concatenate([b[key] for b in batches])
    shardings = jax.tree_util.tree_map(lambda x: x.sharding, out)
    out, scale = calibrate.calibrate_output(out, ctx.model, stack(CALIBRATION_FEATURE), stack("decoder_target_tokens"),
                                            stack("decoder_loss_weights"))
    out = jax.device_put(out, shardings)
    logging.info("GUIDE output calibrated on %d batches: final norm scale x %.4g", guide.calibration_batches, scale)
  return out


def guide(teacher=None, guide: GuideConfig = GuideConfig()) -> Start:  # pylint: disable=redefined-outer-name
  """GUIDE from `teacher` (a path or teachers.Source) with the GuideConfig knobs."""
  _require_teacher("guide", teacher)
  if not isinstance(guide, GuideConfig):
    raise ValueError(f"starts.guide.guide must be a GuideConfig, got {type(guide).__name__}")
  return functools.partial(_guide, teacher=teacher, guide=guide)


def _weight_selection(ctx: Context, *, teacher, options: WeightSelectionConfig):
  from guide_jax.transforms import weight_selection as ws  # pylint: disable=g-import-not-at-top
  teacher_params, teacher_config, _ = ctx.load_teacher(teacher)
  return ws.weight_selection_init(teacher_params, teacher_config, ctx.model,
                                  layer_selection=options.layer_selection, mesh=ctx.mesh)


def weight_selection(teacher=None, layer_selection: str = "first_n") -> Start:
  """Weight Selection from `teacher`: every parameter uniformly selected; layer_selection picks
  the teacher layer of each student layer ('first_n', Xu et al., or 'uniform')."""
  _require_teacher("weight_selection", teacher)
  return functools.partial(_weight_selection, teacher=teacher,
                           options=WeightSelectionConfig(layer_selection=layer_selection))


def _prune(ctx: Context, *, teacher, prune: PruneConfig):
  from guide_jax.transforms import prune as prune_lib  # pylint: disable=g-import-not-at-top
  teacher_params, teacher_config, _ = ctx.load_teacher(teacher)
  calibration = np.concatenate([ctx.batches.batch(i)[CALIBRATION_FEATURE]
                                for i in range(prune.calibration_batches)])
  importance = prune_lib.importance(teacher_params, teacher_config, calibration,
                                    aggregation=prune.aggregation, mesh=ctx.mesh)
  return prune_lib.prune_init(teacher_params, teacher_config, ctx.model, importance, depth=prune.depth,
                              mesh=ctx.mesh)


def prune(teacher=None, prune: PruneConfig = PruneConfig()) -> Start:  # pylint: disable=redefined-outer-name
  """Minitron-style pruning of `teacher` by activation importance (PruneConfig's options)."""
  _require_teacher("prune", teacher)
  if not isinstance(prune, PruneConfig):
    raise ValueError(f"starts.prune.prune must be a PruneConfig, got {type(prune).__name__}")
  return functools.partial(_prune, teacher=teacher, prune=prune)


# ------------------------------------------------------------------------------------- describe
def describe(start: Start) -> Tuple[str, dict]:
  """(name, options) of a start made here: what a checkpoint records and a resume compares.
  Where the teacher is read from is not an option (a moved teacher resumes)."""
  if not isinstance(start, functools.partial) or start.func.__module__ != __name__:
    raise ValueError(f"train.start must be made by a guide_jax.starts factory (e.g. @starts.guide()), "
                     f"got {start!r}")
  options = {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v
             for k, v in start.keywords.items() if k not in ("teacher", "model_dir")}
  return start.func.__name__.lstrip("_"), options


def teacher_of(start: Start):
  """The teacher source a start reads, or None."""
  return start.keywords.get("teacher") if isinstance(start, functools.partial) else None
