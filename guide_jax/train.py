r"""Pretrain a model (teacher or student), optionally GUIDE-initialized and/or distilled.

  python -m guide_jax.train --gin_file=gin/runs/pretrain.gin --gin_file=gin/models/tiny_student.gin \
      --gin.MODEL_DIR="'runs/student'" --gin.TRAIN_STEPS=300

Init order (the first that applies wins; t5x/train.py and MaxText's base.yml keep the same list):
  1. resume: MODEL_DIR holds a checkpoint -> its params, optimizer state and step.
  2. params only: CheckpointConfig.init_params_dir (INIT_PARAMS_DIR) -> its params, a fresh
     optimizer state, step 0 (guide_jax.convert's output works here).
  3. from the teacher: train.init = 'guide' (guide_init, compiled and sharded), or the comparison
     arms 'weight_selection' / 'prune' (GUIDE_SPEC.md section 7).
  4. random: model.init_params(PRNGKey(seed)).

Multi-process: set GUIDE_JAX_COORDINATOR=host:port, GUIDE_JAX_NUM_PROCESSES, GUIDE_JAX_PROCESS_ID
(CPU/GPU clusters), or GUIDE_JAX_DISTRIBUTED=1 on Cloud TPU pods; jax.distributed is initialized
before anything else. Each process feeds its slice of every global batch; orbax writes once.
"""
import contextlib
import dataclasses
import itertools
import json
import os
import signal
import sys
import threading
import time
from typing import Optional

from absl import app, flags, logging
import gin
import jax
import numpy as np
import optax
from jax.experimental import multihost_utils

from guide_jax import checkpoints, cli, gin_utils, metrics, runlock, sharding, trainer
from guide_jax.config import (CheckpointConfig, DataConfig, GuideConfig, ModelConfig, PruneConfig,
                              TeacherConfig)
from guide_jax.data import atomic
from guide_jax.transforms import check_dimensions, check_finite, guide_init, prune, weight_selection

INITS = ("random", "guide", "weight_selection", "prune")
TEACHER_INITS = ("guide", "weight_selection", "prune")  # starts made from the teacher
# Settings a resumed run must share with its checkpoint (CheckpointConfig.allow_changed_run waives).
RESUME_KEYS = ("data", "seq_len", "batch_size", "seed", "init", "kd_alpha", "kd_tau", "guide", "prune")


def maybe_initialize_distributed() -> None:
  """jax.distributed.initialize from GUIDE_JAX_* environment variables, when several processes run."""
  if os.environ.get("GUIDE_JAX_COORDINATOR"):
    if os.environ.get("JAX_PLATFORMS", "") == "cpu":  # CPU collectives across processes
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=os.environ["GUIDE_JAX_COORDINATOR"],
                               num_processes=int(os.environ["GUIDE_JAX_NUM_PROCESSES"]),
                               process_id=int(os.environ["GUIDE_JAX_PROCESS_ID"]))
  elif os.environ.get("GUIDE_JAX_DISTRIBUTED") == "1":
    jax.distributed.initialize()
  else:
    return
  logging.info("process %d of %d, %d global devices", jax.process_index(), jax.process_count(),
               jax.device_count())


def check_run_args(model: ModelConfig, optimizer, train_steps: int, init: str, guide: GuideConfig,
                   teacher: TeacherConfig, data: DataConfig, checkpoint: CheckpointConfig) -> None:
  """Every argument check that needs no file: one ValueError naming the problem."""
  for name, value, kind in (("model", model, ModelConfig), ("guide", guide, GuideConfig),
                            ("teacher", teacher, TeacherConfig), ("data", data, DataConfig),
                            ("checkpoint", checkpoint, CheckpointConfig)):
    if not isinstance(value, kind):
      raise ValueError(f"train.{name} must be a {kind.__name__} (bind train.{name} = @config.{kind.__name__}()), "
                       f"got {type(value).__name__}")
  if not isinstance(optimizer, optax.GradientTransformation):
    raise ValueError("train.optimizer must be an optax GradientTransformation "
                     "(bind train.optimizer = @optim.make_optimizer())")
  if not isinstance(train_steps, int) or train_steps < 1:
    raise ValueError(f"TRAIN_STEPS must be a positive int, got {train_steps!r}")
  if data.batch_size % jax.process_count():
    raise ValueError(f"BATCH_SIZE {data.batch_size} must divide by the process count {jax.process_count()}")
  if init not in INITS:
    raise ValueError(f"train.init must be one of {INITS}, got {init!r}")
  if init in TEACHER_INITS and checkpoint.init_params_dir:
    raise ValueError(f"train.init={init!r} and CheckpointConfig.init_params_dir are two starts: choose one")
  if (init in TEACHER_INITS or teacher.kd_alpha > 0) and not teacher.teacher_dir:
    raise ValueError(f"TeacherConfig.teacher_dir (TEACHER_DIR) is required for init={init!r} or kd_alpha > 0")


def resume_step(model_dir: str, restore_step: Optional[int]) -> Optional[int]:
  """The step this run resumes from (None: a fresh run), the same on every process.

  Read from the checkpoint listing by process 0 and broadcast, so that every process makes the
  same choice (e.g. to load no teacher) and compiles the same collectives.
  """
  step = -1
  if (jax.process_index() == 0 and restore_step is not None
      and not os.path.isdir(checkpoints.checkpoint_dir(model_dir))):
    raise checkpoints.CheckpointError(f"CheckpointConfig.restore_step={restore_step}, but {model_dir} holds no "
                                      "checkpoints (a mistyped MODEL_DIR?)")
  if jax.process_index() == 0 and os.path.isdir(checkpoints.checkpoint_dir(model_dir)):
    mngr = checkpoints.manager(model_dir, create=False)
    steps = mngr.all_steps()
    if restore_step is not None:
      if restore_step not in steps:
        raise checkpoints.CheckpointError(f"CheckpointConfig.restore_step={restore_step} is not a checkpoint "
                                          f"of {model_dir} (have {sorted(steps)})")
      step = restore_step
    elif steps:
      step = max(steps)
  if jax.process_count() > 1:
    step = int(multihost_utils.broadcast_one_to_all(np.int32(step)))
  return None if step < 0 else step


def check_resume(model_dir: str, step: int, model: ModelConfig, run_meta: dict, allow_changed: bool) -> None:
  """Refuse to resume a checkpoint written by another model, or (unless allowed) other settings."""
  meta = checkpoints.read_meta(model_dir, step)
  defaults = {f.name: f.default for f in dataclasses.fields(ModelConfig)}
  saved_model = {**defaults, **meta.get("model_config", {})}  # fields added since: their defaults
  mine = dataclasses.asdict(model)
  diff = [f"{k}: checkpoint {saved_model.get(k)!r} != this run {mine[k]!r}" for k in mine
          if saved_model.get(k) != mine[k] and k in ModelConfig.__dataclass_fields__]
  shape_keys = ("vocab_size", "d_model", "n_layers", "n_heads", "head_dim", "mlp_dim", "tie_embeddings",
                "position_embedding", "relpos_buckets", "param_dtype")
  if any(saved_model.get(k) != mine[k] for k in shape_keys):
    raise ValueError(f"{model_dir} holds a checkpoint (step {step}) of another model: " + "; ".join(diff)
                     + ". Use a new MODEL_DIR for this model.")
  changed = [f"{k}: checkpoint {meta.get(k)!r} != this run {run_meta[k]!r}" for k in RESUME_KEYS
             if k in meta and meta.get(k) != run_meta[k]] + diff
  if changed and not allow_changed:
    raise ValueError(f"{model_dir} was started with other settings (step {step}): " + "; ".join(changed)
                     + ". Resume with the same settings, use a new MODEL_DIR, or set "
                     "CheckpointConfig.allow_changed_run = True to continue anyway.")
  if changed:
    logging.warning("resuming %s with changed settings: %s", model_dir, "; ".join(changed))


def load_teacher(teacher: TeacherConfig, model: ModelConfig, init: str, mesh):
  """(params on their shardings, ModelConfig) of the teacher, checked before anything is written."""
  teacher_config, _ = checkpoints.read_config(teacher.teacher_dir)
  if teacher_config.vocab_size != model.vocab_size:
    raise ValueError(f"teacher/student vocab mismatch: teacher vocab_size {teacher_config.vocab_size} != "
                     f"student {model.vocab_size}")
  if init in TEACHER_INITS:
    check_dimensions(teacher_config, model)
  params, _ = checkpoints.load_params(teacher.teacher_dir, sharding.param_shardings(teacher_config, mesh))
  check_finite(params, f"teacher params ({teacher.teacher_dir})")
  leaves = jax.tree_util.tree_leaves(params)
  mine = sum(s.data.nbytes for x in leaves for s in x.addressable_shards if s.replica_id == 0)
  logging.info("teacher restored in shards: process %d holds %d of %d bytes", jax.process_index(), mine,
               sum(x.nbytes for x in leaves))
  return params, teacher_config


def train(model_dir: str = gin.REQUIRED, model: ModelConfig = gin.REQUIRED,
          optimizer: optax.GradientTransformation = gin.REQUIRED, train_steps: int = 1000,
          init: str = "random", guide: GuideConfig = GuideConfig(), prune_config: PruneConfig = PruneConfig(),
          teacher: TeacherConfig = TeacherConfig(),
          data: DataConfig = DataConfig(), checkpoint: CheckpointConfig = CheckpointConfig(), seed: int = 0,
          eval_every: int = 200, log_every: int = 20, model_parallel: int = 1,
          num_devices: Optional[int] = None, stop_after: Optional[int] = None) -> dict:
  """Train `model` for train_steps; returns (and writes model_dir/results.json) the final eval.

  stop_after: end (with a checkpoint) after that many steps of this process, leaving the run
  resumable (tests, preemptible jobs). A non-finite loss or parameter stops the run without
  saving: results.json then says finished=false with the error and the last good step.
  """
  # ----------------------------------------------------------------------------- checks
  check_run_args(model, optimizer, train_steps, init, guide, teacher, data, checkpoint)
  for name, value in (("eval_every", eval_every), ("log_every", log_every), ("model_parallel", model_parallel)):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
      raise ValueError(f"train.{name} must be a positive int, got {value!r}")
  if num_devices is not None and not 1 <= num_devices <= len(jax.devices()):
    raise ValueError(f"train.num_devices={num_devices!r}, but this host has {len(jax.devices())} "
                     f"{jax.devices()[0].platform} device(s)")
  mesh = sharding.make_mesh(model_parallel, jax.devices()[:num_devices] if num_devices else None)
  if data.batch_size % mesh.shape["data"]:
    raise ValueError(f"BATCH_SIZE {data.batch_size} must divide by the mesh's data axis ({mesh.shape['data']} "
                     f"= devices / model_parallel); set train.num_devices or train.model_parallel")
  run_meta = {"data": data.data_dir or data.corpus, "seq_len": data.seq_len, "batch_size": data.batch_size,
              "seed": seed, "init": "params" if checkpoint.init_params_dir else init,
              "kd_alpha": teacher.kd_alpha, "kd_tau": teacher.kd_tau,
              "guide": dataclasses.asdict(guide) if init in ("guide", "weight_selection") else None,
              "prune": dataclasses.asdict(prune_config) if init == "prune" else None}
  start = resume_step(model_dir, checkpoint.restore_step)
  if start is not None:
    check_resume(model_dir, start, model, run_meta, checkpoint.allow_changed_run)
  if checkpoint.init_params_dir and start is None:
    init_config, _ = checkpoints.read_config(checkpoint.init_params_dir)
    if init_config != model:
      raise ValueError(f"init_params_dir {checkpoint.init_params_dir} holds a {init_config} checkpoint, "
                       f"not this run's {model}")

  # ----------------------------------------------------------------------------- data
  from guide_jax.data import batches as batches_lib, prepared  # numpy + sentencepiece only
  data_dir = data.data_dir or prepared.ensure_prepared(data.corpus, data.cache_dir, data.vocab_size)
  tokens = prepared.load_prepared(data_dir)
  if tokens.vocab_size != model.vocab_size:
    raise ValueError(f"model vocab_size {model.vocab_size} != the data's vocabulary size {tokens.vocab_size} "
                     f"({data_dir}); bind VOCAB_SIZE = {tokens.vocab_size}")
  for split, stream in (("train", tokens.train), ("validation", tokens.validation)):
    if stream.size < data.seq_len + 1:
      raise ValueError(f"{data_dir} {split} has {stream.size} tokens, fewer than one row of {data.seq_len + 1}")
  batches = batches_lib.LMBatches(tokens.train, data.seq_len, data.batch_size, seed=seed)
  feed = sharding.data_slice(mesh)  # which rows of each global batch this process feeds
  eval_batches = lambda: itertools.islice(batches_lib.eval_batches(
      tokens.validation, data.seq_len, data.batch_size, *feed), data.eval_max_batches)

  # ----------------------------------------------------------------------------- teacher
  # Loaded only when this run will use it: KD, or a fresh GUIDE start (decided identically everywhere).
  teacher_params, teacher_config = None, None
  if teacher.kd_alpha > 0 or (init in TEACHER_INITS and start is None):
    teacher_params, teacher_config = load_teacher(teacher, model, init, mesh)

  # ----------------------------------------------------------------------------- state
  os.makedirs(model_dir, exist_ok=True)  # all checks passed: now we may write
  with runlock.hold(model_dir) if jax.process_index() == 0 else contextlib.nullcontext():
    state = trainer.abstract_state(model, optimizer, mesh)
    mngr = checkpoints.manager(model_dir, keep=checkpoint.keep)
    if start is not None:                                                 # 1. resume
      restored = checkpoints.restore(mngr, start, state.params, state.opt_state)
      params, opt_state = restored["params"], restored["opt_state"]
      for later in sorted(s for s in mngr.all_steps() if s > start):  # restore_step chose an older step
        logging.warning("deleting checkpoint step %d of %s: this run continues from step %d", later,
                        model_dir, start)
        mngr.delete(later)
      logging.info("resumed %s at step %d", model_dir, start)
    else:
      if checkpoint.init_params_dir:                                      # 2. params only
        params, _ = checkpoints.load_params(checkpoint.init_params_dir, state.param_shardings)
        logging.info("params from %s, fresh optimizer state", checkpoint.init_params_dir)
      elif init == "guide":                                               # 3. GUIDE
        params, info = guide_init(teacher_params, teacher_config, model, guide, mesh=mesh)
        logging.info("GUIDE init from %s: explained variance %.4f, teacher layers %s",
                     teacher.teacher_dir, info.explained_variance, list(info.teacher_layers))
      elif init == "weight_selection":                                    # 3'. other teacher starts
        params = weight_selection.weight_selection_init(teacher_params, teacher_config, model,
                                                        layer_selection=guide.layer_selection, mesh=mesh)
      elif init == "prune":
        calibration = np.concatenate([batches.batch(i)["decoder_input_tokens"]
                                      for i in range(prune_config.calibration_batches)])
        importance = prune.importance(teacher_params, teacher_config, calibration,
                                      aggregation=prune_config.aggregation, mesh=mesh)
        params = prune.prune_init(teacher_params, teacher_config, model, importance, depth=prune_config.depth,
                                  mesh=mesh)
      else:                                                               # 4. random
        params = trainer.init_random(state, model, jax.random.PRNGKey(seed))
      opt_state = trainer.init_opt_state(state, optimizer, params)
      start = 0
    if teacher.kd_alpha == 0:
      teacher_params = None  # no teacher forward is compiled
    return _loop(model_dir, model, optimizer, mesh, state, mngr, params, opt_state, teacher_params,
                 teacher_config, teacher, data, batches, eval_batches, feed, start, train_steps, stop_after,
                 eval_every, log_every, checkpoint.save_every, run_meta)


class _Preemption:
  """SIGTERM (a preempted VM, a sweep's time budget, a killed sweep) -> finish the step, save a
  checkpoint, return unfinished: the same command resumes. All processes stop at the same step."""

  def __init__(self):
    self.requested, self._old = False, None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._old = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def __exit__(self, *exc):
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old)
    return False

  def stop(self, step: int, every: int) -> bool:
    if jax.process_count() == 1:
      return self.requested
    if step % every:  # processes agree only at log steps (one tiny all-gather)
      return False
    return bool(np.max(multihost_utils.process_allgather(np.int32(self.requested))))


def _loop(model_dir, model, optimizer, mesh, state, mngr, params, opt_state, teacher_params, teacher_config,
          teacher, data, batches, eval_batches, feed, start, train_steps, stop_after, eval_every, log_every,
          save_every, run_meta) -> dict:
  """The training loop: steps, logs, evals, checkpoints, the NaN guard, results.json."""
  # ----------------------------------------------------------------------------- compile
  step_fn = trainer.make_train_step(model, optimizer, mesh, state, teacher_config=teacher_config,
                                    alpha=teacher.kd_alpha, tau=teacher.kd_tau)
  eval_fn = trainer.make_eval_step(model, mesh)
  writer = metrics.Writer(model_dir)
  tokens_per_step = data.batch_size * data.seq_len
  results_path = os.path.join(model_dir, "results.json")

  def fail(step, what):
    last = mngr.latest_step()
    where = (f"The last good checkpoint is step {last}: lower the learning rate or fix the data and "
             f"rerun to resume from it." if last is not None else
             "No checkpoint was saved before it: lower the learning rate or fix the data and rerun "
             "(the run starts again from step 0).")
    result = {"step": step, "finished": False, "last_good_step": last,
              "error": f"{what} at step {step}; stopped without saving it. {where}"}
    if jax.process_index() == 0:
      atomic.atomic_write_json(results_path, result)
    writer.close()
    logging.error(result["error"])
    return result

  # ----------------------------------------------------------------------------- train
  step, eval_result = start, None
  if start == 0:  # where each init starts: GUIDE's head start shows here
    eval_result = trainer.evaluate(eval_fn, params, eval_batches(), mesh)
    if not np.isfinite(eval_result["loss"]):
      return fail(0, "non-finite initial eval loss")
    writer.eval(0, eval_result)
  last_log = (start, time.time())
  end = train_steps if stop_after is None else min(train_steps, start + stop_after)
  preemption = _Preemption()
  with preemption:
    while step < end:
      local = batches.batch(step, *feed)
      params, opt_state, m = step_fn(params, opt_state, trainer.global_batch(local, mesh), teacher_params)
      step += 1
      stopping = preemption.stop(step, log_every)
      saving = step % save_every == 0 or step == end or stopping
      if step % log_every == 0 or step == end or saving:
        m = {k: float(v) for k, v in jax.device_get(m).items()}
        if not m.pop("finite"):
          return fail(step, f"non-finite loss ({m['loss']}) or parameters")
        now = time.time()
        step_time = (now - last_log[1]) / (step - last_log[0])
        m.update(step_time_s=step_time, tokens_per_s=tokens_per_step / step_time,
                 eta_s=step_time * (train_steps - step))
        writer.train(step, m)
        last_log = (step, now)
      if step % eval_every == 0 or step == train_steps:
        eval_result = trainer.evaluate(eval_fn, params, eval_batches(), mesh)
        if not np.isfinite(eval_result["loss"]):
          return fail(step, "non-finite eval loss")
        writer.eval(step, eval_result)
      if saving:
        checkpoints.save(mngr, step, params, opt_state, model, extra=run_meta, force=True)
      if stopping:
        logging.warning("SIGTERM: saved step %d of %s; rerun the same command to resume", step, model_dir)
        break
  writer.close()

  # ----------------------------------------------------------------------------- results
  if step < train_steps:
    return {"step": step, "finished": False}
  if eval_result is None:  # resumed at the last step
    eval_result = trainer.evaluate(eval_fn, params, eval_batches(), mesh)
  result = {"step": step, "finished": True, "eval_loss": eval_result["loss"], "eval_ppl": eval_result["ppl"],
            "model_config": dataclasses.asdict(model), "tokens_seen": step * tokens_per_step, **run_meta}
  if jax.process_index() == 0:
    atomic.atomic_write_json(results_path, result)
  return result


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  maybe_initialize_distributed()
  metrics.quiet_library_logs()
  gin_utils.parse(flags.FLAGS.gin_file, flags.FLAGS.gin_bindings)
  result = gin.get_configurable(train)()  # registered by the gin files' dynamic_registration
  print(json.dumps(result))
  if result.get("error"):
    sys.exit(f"guide_jax.train: error: {result['error']}")


def run():
  """Entry point with t5x-style --gin.KEY=VALUE rewriting."""
  app.run(lambda argv: cli.exit_on_error("guide_jax.train", main, argv), argv=gin_utils.rewrite_gin_args(sys.argv))


if __name__ == "__main__":
  # Run the importable module's train (the one gin files name as guide_jax.train.train), not __main__'s.
  from guide_jax import train as _train_module  # pylint: disable=import-self
  _train_module.run()
