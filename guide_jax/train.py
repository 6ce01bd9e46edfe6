r"""Pretrain a model (teacher or student), optionally GUIDE-initialized and/or distilled.

  python -m guide_jax.train --gin_file=gin/runs/pretrain.gin --gin_file=gin/models/tiny_student.gin \
      --gin.MODEL_DIR="'runs/student'" --gin.TRAIN_STEPS=300

train() reads: checks -> mesh -> resume or start (which) -> teachers -> data -> state -> loop, every
check before the work that follows it:
  which: checkpoints.find (metadata only): the step every process agrees on (restore_step a one-shot
    rollback), its model and settings compared with this run's.
  teachers: every teacher the run reads (KD's; a fresh run's start's), all metadata checks, then each
    read once with the one finiteness pass that also gives its content fingerprint (recorded; a
    resumed KD run's compared) -- before any data is downloaded, tokenized or hashed.
  data: the manifest first (vocabulary size, tokenizer identity against each teacher's and the
    checkpoint's, the data's identity), then the shards read and hashed.
  resume: MODEL_DIR holds a checkpoint -> its params, optimizer state, step and tokens seen
    (checkpoints.resume: the restore, checksums verified, a rollback's later steps dropped).
  start: otherwise train.start, a guide_jax.starts factory bound in gin (gin/runs/pretrain.gin:
    @starts.random(); gin/guide.gin: @starts.guide(); gin/weight_selection.gin, gin/prune.gin,
    gin/init_params.gin: @starts.params(), e.g. guide_jax.convert's output), with a fresh
    optimizer state at step 0. t5x/train.py and MaxText keep the same order.
The loop then takes one frozen Run (what it reads) and one TrainState (what it updates).

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
from typing import Any, Callable, NamedTuple, Optional, Sequence

from absl import app, flags, logging
import gin
import jax
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from guide_jax import checkpoints, cli, fileio, gin_utils, metrics, optim, runlock, sharding, starts, teachers, trainer
from guide_jax.config import CheckpointConfig, DataConfig, ModelConfig, TeacherConfig

# Exit status of a run that saved and stopped before TRAIN_STEPS (SIGTERM, stop_after) or found its
# MODEL_DIR leased by another run: rerun the same command (later). 75 is sysexits.h EX_TEMPFAIL;
# launch/tpu_run.sh --restart_on_preemption reruns on it. 0 means finished; others are errors.
EXIT_NOT_FINISHED = 75


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


def check_run_args(model: ModelConfig, optimizer, train_steps: int, start, teacher: TeacherConfig,
                   data: DataConfig, checkpoint: CheckpointConfig, eval_every: int, log_every: int,
                   model_parallel: int, num_devices: Optional[int], mesh_shape=None, grad_accum_steps: int = 1,
                   loss_chunk: Optional[int] = None, branches=()) -> None:
  """That every argument is of its kind (the configs checked their own fields when built)."""
  for name, value, kind in (("model", model, ModelConfig), ("teacher", teacher, TeacherConfig),
                            ("data", data, DataConfig), ("checkpoint", checkpoint, CheckpointConfig)):
    if not isinstance(value, kind):
      raise ValueError(f"train.{name} must be a {kind.__name__} (bind train.{name} = @config.{kind.__name__}()), "
                       f"got {type(value).__name__}")
  if not isinstance(optimizer, optax.GradientTransformation):
    raise ValueError("train.optimizer must be an optax GradientTransformation "
                     "(bind train.optimizer = @optim.make_optimizer())")
  if not isinstance(train_steps, int) or isinstance(train_steps, bool) or train_steps < 1:
    raise ValueError(f"TRAIN_STEPS must be a positive int, got {train_steps!r}")
  for name, value in (("eval_every", eval_every), ("log_every", log_every), ("model_parallel", model_parallel),
                      ("grad_accum_steps", grad_accum_steps)):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
      raise ValueError(f"train.{name} must be a positive int, got {value!r}")
  if loss_chunk is not None and (not isinstance(loss_chunk, int) or isinstance(loss_chunk, bool) or loss_chunk < 1):
    raise ValueError(f"train.loss_chunk must be None or a positive int, got {loss_chunk!r}")
  if mesh_shape is not None:
    sharding.resolve_mesh_shape(mesh_shape, num_devices or len(jax.devices()))
  if num_devices is not None and not 1 <= num_devices <= len(jax.devices()):
    raise ValueError(f"train.num_devices={num_devices!r}, but this host has {len(jax.devices())} "
                     f"{jax.devices()[0].platform} device(s)")
  if data.batch_size % jax.process_count():
    raise ValueError(f"BATCH_SIZE {data.batch_size} must divide by the process count {jax.process_count()}")
  starts.describe(start)  # made by a starts factory
  for branch in branches:
    if not isinstance(branch, optim.Branch):
      raise ValueError("train.branches must be optim.Branch values (bind train.train.branches = "
                       f"@optim.decay_branches(), gin/wsd.gin), got {branch!r}")
    if not 0 <= branch.start < branch.steps < train_steps:
      raise ValueError(f"a decay branch of {branch.steps} steps (decaying from step {branch.start}) must be "
                       f"shorter than TRAIN_STEPS = {train_steps}")


def check_data_tokenizer(data_tokenizer: dict, data_where: str, expected: dict) -> None:
  """Refuse data made with another tokenizer than the one each teacher or start records.

  expected: {what (a teacher, a start's checkpoint): the identity of its data's tokenizer, or None
  where it records none (a t5x checkpoint from t5x, a run from before tokenizers were recorded):
  then only the vocabulary size was compared, said in a warning}.
  """
  from guide_jax.data import hf_tokenizer  # pylint: disable=g-import-not-at-top

  for where, recorded in expected.items():
    if recorded:
      hf_tokenizer.check_same(data_tokenizer, recorded, f"data {data_where}", where)
    else:
      logging.warning("%s records no tokenizer identity: only its vocabulary size could be compared with "
                      "the data's (%s)", where, data_where)


class TrainState(NamedTuple):
  """What the loop updates (flax lm1b's TrainState): the step reached, params, optimizer state, and
  the tokens trained on up to `step` (the true count when a resume changed the batch)."""
  step: int
  params: Any
  opt_state: Any
  tokens_seen: int


@dataclasses.dataclass(frozen=True)
class Run:
  """What the loop reads, built once by train(): the compiled steps, the data, the checkpoint
  manager, the schedule of logs / evals / saves, and the metadata every checkpoint records."""
  model_dir: str
  model: ModelConfig
  mesh: Mesh
  mngr: Any                      # the run's one orbax CheckpointManager
  train_step: Callable           # (params, opt_state, batch, teacher_params) -> (params, opt_state, metrics)
  eval_step: Callable
  teacher_params: Any            # KD teacher on its shardings, or None (no teacher forward compiled)
  batches: Any                   # batches.LMBatches: batch(step, index, count) -> this process's rows
  eval_batches: Callable         # () -> iterable of this process's eval batches
  feed: tuple                    # (index, count): which rows of each global batch this process feeds
  train_steps: int
  stop_after: Optional[int]
  eval_every: int
  log_every: int
  save_every: int
  tokens_per_step: int
  run_meta: dict
  lease: Any = None              # process 0's runlock.Lease: checked before every save
  branches: tuple = ()           # optim.Branch values: shorter budgets branched off this run
  make_branch_step: Optional[Callable] = None  # optimizer -> a train_step like train_step's


@contextlib.contextmanager
def _run_dir(model_dir: str, lock_timeout_s: float):
  """Create model_dir and hold its lease (process 0; yields it, else None) for the block. On an
  error, a local model_dir this run created and left empty is removed: a run that fails its checks
  writes nothing (on an object store an empty directory does not exist)."""
  created = not fileio.is_remote(model_dir) and not os.path.exists(model_dir)
  fileio.makedirs(model_dir)
  try:
    with runlock.hold(model_dir, lock_timeout_s) if jax.process_index() == 0 else contextlib.nullcontext() as lease:
      yield lease
  except BaseException:
    if created and jax.process_index() == 0:
      with contextlib.suppress(OSError):
        os.rmdir(model_dir)  # only if empty
    raise


class _TeacherReader:
  """The teachers of one run: each source described (metadata checks) and read once (the finiteness
  pass + fingerprint), whether a start or KD asks for it. Called as load_teacher(source) -> Teacher."""

  def __init__(self, mesh: Mesh, vocab_size: int):
    self._mesh, self._vocab_size, self._read = mesh, vocab_size, {}

  def read_all(self, sources) -> list:
    """Every source's metadata checked before any is read; then each read. Returns the Teachers."""
    sources = [teachers.as_source(s) for s in sources]
    found = {s: teachers.describe(s, vocab_size=self._vocab_size) for s in sources if s not in self._read}
    for source, described in found.items():
      self._read[source] = teachers.read(described, self._mesh)
    return [self._read[s] for s in sources]

  def __call__(self, source) -> teachers.Teacher:
    return self.read_all([source])[0]


def train(model_dir: str = gin.REQUIRED, model: ModelConfig = gin.REQUIRED,
          optimizer: optax.GradientTransformation = gin.REQUIRED, train_steps: int = gin.REQUIRED,
          start: starts.Start = gin.REQUIRED, teacher: TeacherConfig = TeacherConfig(),
          data: DataConfig = DataConfig(), checkpoint: CheckpointConfig = CheckpointConfig(), seed: int = 0,
          eval_every: int = 100, log_every: int = 20, model_parallel: int = 1,
          num_devices: Optional[int] = None, mesh_shape: Optional[Sequence[int]] = None,
          grad_accum_steps: int = 1, loss_chunk: Optional[int] = None, stop_after: Optional[int] = None,
          branches=()) -> dict:
  """Train `model` for train_steps; returns (and writes model_dir/results.json) the final eval.

  start: how a fresh run's params start (a guide_jax.starts factory's function). seed: the data
  order (a random start has its own seed, starts.random.seed).
  stop_after: end (with a checkpoint) after that many steps of this process, leaving the run
  resumable (tests, preemptible jobs). A non-finite loss or parameter stops the run without
  saving: results.json then says finished=false with the error and the last good step.
  mesh_shape: (data, fsdp, model), one entry may be -1 (sharding.resolve_mesh_shape); None:
  sharding.default_mesh_shape (model_parallel on 'model', every other device on 'fsdp'); a
  mesh_shape overrides model_parallel.
  grad_accum_steps: the global batch as that many microbatches in one step (same update, less
  memory). loss_chunk: the loss over that many positions at a time (no whole [B, T, V] logits).
  model.scan_layers scans the KD teacher's layers too.
  branches: optim.Branch values (gin/wsd.gin: @optim.decay_branches()), for a run whose optimizer has
  a warmup-stable-decay schedule: at each branch's decay start the run saves a checkpoint, trains a
  copy of its state to the branch's steps with the branch's optimizer (the same data, step for step,
  as a separate run of that many steps), writes model_dir/branches/<steps>/results.json and
  metrics.jsonl, then continues. A branch interrupted is redone from that checkpoint on resume.
  """
  # ----------------------------------------------------------------------------- checks
  branches = tuple(branches)
  check_run_args(model, optimizer, train_steps, start, teacher, data, checkpoint, eval_every, log_every,
                 model_parallel, num_devices, mesh_shape, grad_accum_steps, loss_chunk, branches)
  init_name, init_options = starts.describe(start)
  # What every checkpoint and results.json record, and a resume compares (checkpoints.RESUME_KEYS now;
  # the KD teacher's fingerprint and the data's identity as they become known below).
  run_meta = {"data": data.data_dir or data.corpus, "seq_len": data.seq_len, "batch_size": data.batch_size,
              "seed": seed, "init": init_name, "start": init_options,
              "kd_alpha": teacher.kd_alpha, "kd_tau": teacher.kd_tau}

  if jax.process_index() == 0:  # an unwritable MODEL_DIR fails now, not at the first save
    fileio.probe_writable(model_dir, "MODEL_DIR")

  # ----------------------------------------------------------------------------- mesh
  devices = jax.devices()[:num_devices] if num_devices else jax.devices()
  mesh = sharding.make_mesh(devices=devices, shape=mesh_shape or sharding.default_mesh_shape(devices, model_parallel))
  trainer.check_batch(data.batch_size, mesh, grad_accum_steps)

  with _run_dir(model_dir, checkpoint.lock_timeout_s) as lease:
    # --------------------------------------------------------------------------- resume or start: which
    if jax.process_index() == 0:
      checkpoints.skip_incomplete_steps(model_dir)  # empty / interrupted step dirs: named, set aside
    mngr = checkpoints.manager(model_dir, keep=checkpoint.keep)
    found = checkpoints.find(mngr, restore_step=checkpoint.restore_step, allow_changed=checkpoint.allow_changed_run,
                             where=model_dir)  # metadata only
    if found is not None:  # the model and settings, before any teacher or data is read
      found.check(run_meta, checkpoints.RESUME_KEYS, model)

    # --------------------------------------------------------------------------- teachers, before any data work
    load_teacher = _TeacherReader(mesh, model.vocab_size)
    roles = {"kd": teacher.teacher_dir if teacher.kd_alpha > 0 else None,
             "start": starts.teacher_of(start) if found is None else None}  # a resume reads no start teacher
    roles = {role: source for role, source in roles.items() if source is not None}
    read = dict(zip(roles, load_teacher.read_all(roles.values())))  # all metadata, then each read once
    recorded = dict(found.meta.get("teachers", {})) if found is not None else {}
    recorded.update({role: t.identity for role, t in read.items()})
    if recorded:
      run_meta["teachers"] = recorded  # which teachers (content fingerprints): results.json and every checkpoint
    if "kd" in read:
      run_meta["kd_teacher"] = read["kd"].identity["fingerprint"]
      if found is not None:
        found.check(run_meta, checkpoints.TEACHER_KEYS)

    # --------------------------------------------------------------------------- data
    from guide_jax.data import batches as batches_lib, prepare, prepared  # numpy only (TF only to prepare)
    data_dir = data.data_dir or prepare.ensure_prepared(data.corpus, data.cache_dir, data.vocab_size)
    manifest = prepared.read_manifest(data_dir)  # the data's identity, before its shards are read and hashed
    if manifest["vocab_size"] != model.vocab_size:
      raise ValueError(f"model vocab_size {model.vocab_size} != the data's vocabulary size {manifest['vocab_size']} "
                       f"({data_dir}); bind VOCAB_SIZE = {manifest['vocab_size']}")
    run_meta["tokenizer"] = prepared.tokenizer_identity(manifest)  # checkpoints record it (starts, KD, export check it)
    run_meta["data_sha256"] = prepared.manifest_sha256(manifest)
    expected = {f"teacher {t.identity['path']}": t.identity["tokenizer"] for t in read.values()}
    params_start = start.keywords.get("model_dir") if found is None else None
    if params_start:
      expected[f"the start {params_start}"] = checkpoints.read_meta(params_start).get("tokenizer")
    check_data_tokenizer(run_meta["tokenizer"], data_dir, expected)
    if found is not None:
      found.check(run_meta, checkpoints.DATA_KEYS)
    tokens = prepared.load_prepared(data_dir, verify=data.verify_data,
                                    stage_root=data.cache_dir)  # a gs:// data_dir: staged once
    for split, stream in (("train", tokens.train), ("validation", tokens.validation)):
      if stream.size < data.seq_len + 1:
        raise ValueError(f"{data_dir} {split} has {stream.size} tokens, fewer than one row of {data.seq_len + 1}")
    batches = batches_lib.LMBatches(tokens.train, data.seq_len, data.batch_size, seed=seed)
    feed = sharding.data_slice(mesh)  # which rows of each global batch this process feeds
    eval_batches = lambda: itertools.islice(batches_lib.eval_batches(
        tokens.validation, data.seq_len, data.batch_size, *feed), data.eval_max_batches)

    # --------------------------------------------------------------------------- state: resume or start
    abstract = trainer.abstract_state(model, optimizer, mesh)
    tokens_per_step = data.batch_size * data.seq_len
    if found is not None:
      restored = checkpoints.resume(mngr, found, abstract)
      state = TrainState(restored.step, restored.params, restored.opt_state,
                         checkpoints.tokens_seen(found.meta, tokens_per_step))
      if found.history:
        run_meta["history"] = found.history  # rollbacks and changed settings, in every later checkpoint
    else:
      params = start(starts.Context(model, abstract, mesh, batches, load_teacher))
      state = TrainState(0, params, trainer.init_opt_state(abstract, optimizer, params), 0)
    kd = read.get("kd")
    del load_teacher, read  # the start's teacher (unless KD's) is freed here
    teacher_config = teacher_params = None
    if kd is not None:  # scanned with the student: stacked once, here (after the start read it)
      teacher_config = kd.config.replace(scan_layers=model.scan_layers)
      teacher_params = trainer.stack_teacher(teacher_config, kd.params, mesh)
    del kd

    # --------------------------------------------------------------------------- compile, loop
    run = Run(model_dir=model_dir, model=model, mesh=mesh, mngr=mngr,
              train_step=trainer.make_train_step(model, optimizer, mesh, abstract, teacher_config=teacher_config,
                                                 alpha=teacher.kd_alpha, tau=teacher.kd_tau,
                                                 accum_steps=grad_accum_steps, loss_chunk=loss_chunk),
              eval_step=trainer.make_eval_step(model, mesh, loss_chunk=loss_chunk), teacher_params=teacher_params,
              batches=batches, eval_batches=eval_batches, feed=feed, train_steps=train_steps,
              stop_after=stop_after, eval_every=eval_every, log_every=log_every, save_every=checkpoint.save_every,
              tokens_per_step=tokens_per_step, run_meta=run_meta, lease=lease, branches=branches,
              make_branch_step=lambda opt: trainer.make_train_step(
                  model, opt, mesh, abstract, teacher_config=teacher_config, alpha=teacher.kd_alpha,
                  tau=teacher.kd_tau, accum_steps=grad_accum_steps, loss_chunk=loss_chunk))
    return _loop(run, state)


class _Preemption:
  """SIGTERM (a preempted VM, a sweep's time budget, a killed sweep) or Ctrl-C (SIGINT) -> finish
  the step, save a checkpoint, return unfinished (exit 75): the same command resumes, at most the
  step under way is lost. A second Ctrl-C interrupts at once (KeyboardInterrupt, nothing saved).
  All processes stop at the same step."""
  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.requested, self._old = None, {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._old = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
    return self

  def _handle(self, signum, frame):
    del frame
    if self.requested == signal.SIGINT and signum == signal.SIGINT:  # asked twice: stop now
      signal.signal(signal.SIGINT, self._old.get(signal.SIGINT, signal.default_int_handler))
      raise KeyboardInterrupt
    self.requested = self.requested or signum

  def __exit__(self, *exc):
    for s, old in self._old.items():
      signal.signal(s, old)
    return False

  @property
  def name(self) -> str:
    return signal.Signals(self.requested).name if self.requested else "stop"

  def stop(self, step: int, every: int) -> bool:
    if jax.process_count() == 1:
      return bool(self.requested)
    if step % every:  # processes agree only at log steps (one tiny all-gather)
      return False
    return bool(np.max(multihost_utils.process_allgather(np.int32(bool(self.requested)))))


def _loop(run: Run, state: TrainState) -> dict:
  """The training loop: steps, logs, evals, checkpoints, the NaN guard, results.json."""
  mesh, params, opt_state, start = run.mesh, state.params, state.opt_state, state.step
  tokens_seen = lambda at: state.tokens_seen + (at - start) * run.tokens_per_step  # true across batch changes
  writer = metrics.Writer(run.model_dir, resume_step=start or None)  # replayed steps replace their records
  results_path = fileio.join(run.model_dir, "results.json")

  def fail(step, what):
    last = run.mngr.latest_step()
    where = (f"The last good checkpoint is step {last}: lower the learning rate or fix the data and "
             f"rerun to resume from it." if last is not None else
             "No checkpoint was saved before it: lower the learning rate or fix the data and rerun "
             "(the run starts again from step 0).")
    result = {"step": step, "finished": False, "last_good_step": last,
              "error": f"{what} at step {step}; stopped without saving it. {where}"}
    if jax.process_index() == 0:
      fileio.atomic_write_json(results_path, result)
    writer.close()
    logging.error(result["error"])
    return result

  pending = [b for b in run.branches if not fileio.exists(_branch_results(run.model_dir, b))]
  lost = [b.steps for b in pending if b.start < start]
  if lost:
    raise ValueError(f"{run.model_dir} resumed at step {start}, after the decay start of its branches "
                     f"{lost} whose results are missing; rerun it from scratch (new MODEL_DIR)")

  # ----------------------------------------------------------------------------- train
  step, eval_result = start, None
  if start == 0:  # where each init starts: GUIDE's head start shows here
    eval_result = trainer.evaluate(run.eval_step, params, run.eval_batches(), mesh)
    if not np.isfinite(eval_result["loss"]):
      return fail(0, "non-finite initial eval loss")
    writer.eval(0, eval_result)
  last_log = (start, time.time())
  train_steps = run.train_steps
  end = train_steps if run.stop_after is None else min(train_steps, start + run.stop_after)
  preemption = _Preemption()
  with preemption:
    while step < end or (pending and pending[0].start == step):
      if pending and pending[0].start == step:  # the state at a branch's decay start: branch off
        if step > 0 and run.mngr.latest_step() != step:
          writer.flush()
          checkpoints.save(run.mngr, step, params, opt_state, run.model, force=True,
                           extra={**run.run_meta, "tokens_seen": tokens_seen(step)})
        if not _branch(run, pending[0], params, opt_state, preemption, tokens_seen(step)):
          logging.warning("SIGTERM during the branch of %d steps: rerun the same command to redo it from "
                          "step %d", pending[0].steps, step)
          break
        pending.pop(0)
        continue
      local = run.batches.batch(step, *run.feed)
      params, opt_state, m = run.train_step(params, opt_state, trainer.global_batch(local, mesh),
                                            run.teacher_params)
      step += 1
      stopping = preemption.stop(step, run.log_every)
      saving = step % run.save_every == 0 or step == end or stopping
      if step % run.log_every == 0 or step == end or saving:
        m = {k: float(v) for k, v in jax.device_get(m).items()}
        if not m.pop("finite"):
          return fail(step, f"non-finite loss ({m['loss']}) or parameters")
        now = time.time()
        step_time = (now - last_log[1]) / (step - last_log[0])
        m.update(step_time_s=step_time, tokens_per_s=run.tokens_per_step / step_time,
                 eta_s=step_time * (train_steps - step))
        writer.train(step, m)
        last_log = (step, now)
      if step % run.eval_every == 0 or step == train_steps:
        eval_result = trainer.evaluate(run.eval_step, params, run.eval_batches(), mesh)
        if not np.isfinite(eval_result["loss"]):
          return fail(step, "non-finite eval loss")
        writer.eval(step, eval_result)
      if saving:
        if run.lease is not None:
          run.lease.check()  # taken over by another run: never overwrite its checkpoints
        writer.flush()
        checkpoints.save(run.mngr, step, params, opt_state, run.model, force=True,
                         extra={**run.run_meta, "tokens_seen": tokens_seen(step)})
      if stopping:
        logging.warning("%s: saved step %d of %s; rerun the same command to resume", preemption.name, step,
                        run.model_dir)
        break
  writer.close()

  # ----------------------------------------------------------------------------- results
  if step < train_steps or pending:
    return {"step": step, "finished": False}
  if eval_result is None:  # resumed at the last step
    eval_result = trainer.evaluate(run.eval_step, params, run.eval_batches(), mesh)
  result = {"step": step, "finished": True, "eval_loss": eval_result["loss"], "eval_ppl": eval_result["ppl"],
            "model_config": dataclasses.asdict(run.model), "tokens_seen": tokens_seen(step),
            **run.run_meta}
  if jax.process_index() == 0:
    fileio.atomic_write_json(results_path, result)
  return result


def _branch_results(model_dir: str, branch) -> str:
  return fileio.join(model_dir, "branches", str(branch.steps), "results.json")


def _branch(run: Run, branch, params, opt_state, preemption: _Preemption, tokens_at_start: int) -> bool:
  """Train a copy of (params, opt_state) at step branch.start to branch.steps with the branch's
  optimizer, evaluate, write <model_dir>/branches/<steps>/{results.json, metrics.jsonl}.
  Returns False (nothing written) when SIGTERM arrived; the run's own state is untouched."""
  branch_dir = fileio.join(run.model_dir, "branches", str(branch.steps))
  if jax.process_index() == 0:
    fileio.makedirs(branch_dir)
  writer = metrics.Writer(branch_dir, resume_step=branch.start)
  train_step = run.make_branch_step(branch.optimizer)
  copy = lambda tree: jax.tree_util.tree_map(lambda x: x.copy(), tree)  # the steps donate their inputs
  params, opt_state = copy(params), copy(opt_state)
  last_log = (branch.start, time.time())
  for step in range(branch.start, branch.steps):
    local = run.batches.batch(step, *run.feed)
    params, opt_state, m = train_step(params, opt_state, trainer.global_batch(local, run.mesh), run.teacher_params)
    if preemption.stop(step + 1, run.log_every):
      writer.close()
      return False
    if (step + 1) % run.log_every == 0 or step + 1 == branch.steps:
      m = {k: float(v) for k, v in jax.device_get(m).items()}
      if not m.pop("finite"):
        writer.close()
        raise FloatingPointError(f"non-finite loss ({m['loss']}) or parameters at step {step + 1} of the "
                                 f"branch of {branch.steps} steps of {run.model_dir}")
      now = time.time()
      step_time = (now - last_log[1]) / (step + 1 - last_log[0])
      m.update(step_time_s=step_time, tokens_per_s=run.tokens_per_step / step_time,
               eta_s=step_time * (branch.steps - step - 1))
      writer.train(step + 1, m)
      last_log = (step + 1, now)
  eval_result = trainer.evaluate(run.eval_step, params, run.eval_batches(), run.mesh)
  if not np.isfinite(eval_result["loss"]):
    writer.close()
    raise FloatingPointError(f"non-finite eval loss at the end of the branch of {branch.steps} steps of "
                             f"{run.model_dir}")
  writer.eval(branch.steps, eval_result)
  writer.close()
  result = {"step": branch.steps, "finished": True, "eval_loss": eval_result["loss"],
            "eval_ppl": eval_result["ppl"], "model_config": dataclasses.asdict(run.model),
            "tokens_seen": tokens_at_start + (branch.steps - branch.start) * run.tokens_per_step, "branch_of": run.model_dir,
            "decay_start": branch.start, **run.run_meta}
  if jax.process_index() == 0:
    fileio.atomic_write_json(fileio.join(branch_dir, "results.json"), result)
  logging.info("branch of %d steps (decay from step %d): eval ppl %.3f", branch.steps, branch.start,
               eval_result["ppl"])
  return True


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  maybe_initialize_distributed()
  metrics.quiet_library_logs()
  gin_utils.parse(flags.FLAGS.gin_file, flags.FLAGS.gin_bindings)
  try:
    result = gin.get_configurable(train)()  # registered by the gin files' dynamic_registration
  except runlock.RunLockedError as e:  # another run holds a fresh lease: try again later
    print(f"guide_jax.train: error: {cli.message(e)}", file=sys.stderr, flush=True)
    sys.exit(EXIT_NOT_FINISHED)
  except (checkpoints.CheckpointError, runlock.LeaseLostError) as e:
    # A failed save (a full disk) leaves orbax coroutines pending; collected at interpreter shutdown
    # they print ImportErrors below the cause. End the process with the cause as the last line.
    print(f"guide_jax.train: error: {cli.message(e)}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(1)
  print(json.dumps(result))
  if result.get("error"):
    sys.exit(f"guide_jax.train: error: {result['error']}")
  if not result.get("finished"):  # saved (SIGTERM, stop_after): the same command continues it
    sys.exit(EXIT_NOT_FINISHED)


def run():
  """Entry point with t5x-style --gin.KEY=VALUE rewriting (the only place train's flags exist)."""
  gin_utils.define_flags()
  app.run(lambda argv: cli.exit_on_error("guide_jax.train", main, argv), argv=gin_utils.rewrite_gin_args(sys.argv))


if __name__ == "__main__":
  # Run the importable module's train (the one gin files name as guide_jax.train.train), not __main__'s.
  from guide_jax import train as _train_module  # pylint: disable=import-self
  _train_module.run()
