r"""Pretrain a model (teacher or student), optionally GUIDE-initialized and/or distilled.

  python -m guide_jax.train --gin_file=gin/runs/pretrain.gin --gin_file=gin/models/tiny_student.gin \
      --gin.MODEL_DIR="'runs/student'" --gin.TRAIN_STEPS=300

Multi-process: set GUIDE_JAX_COORDINATOR=host:port, GUIDE_JAX_NUM_PROCESSES, GUIDE_JAX_PROCESS_ID
(CPU/GPU clusters), or GUIDE_JAX_DISTRIBUTED=1 on Cloud TPU pods; jax.distributed is initialized
before anything else. Each process feeds its slice of every global batch; orbax writes once.
"""
import dataclasses
import itertools
import json
import os
import time
from typing import Optional

from absl import app, flags, logging
import gin
import jax
import numpy as np

from guide_jax import checkpoints, gin_utils, metrics, model as model_lib, sharding, trainer
from guide_jax.config import ModelConfig
from guide_jax.data import atomic
from guide_jax.transforms import BLOCKS, OTHER_BLOCKS, LAYER_SELECTIONS, check_dimensions, guide_init

INITS = ("random", "guide")



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


def check_run_args(model: ModelConfig, *, train_steps, batch_size, init, teacher_dir, kd_alpha, kd_tau,
                   blocks, other_blocks, layer_selection):
  """All argument checks that need no data: one ValueError naming the problem.

  Returns the teacher's ModelConfig (read from its checkpoint metadata) or None.
  """
  if not isinstance(model, ModelConfig):
    raise ValueError("train.model must be a ModelConfig (bind train.model = @ModelConfig())")
  if train_steps < 1 or batch_size < 1:
    raise ValueError(f"TRAIN_STEPS ({train_steps}) and BATCH_SIZE ({batch_size}) must be positive")
  if batch_size % jax.process_count():
    raise ValueError(f"BATCH_SIZE {batch_size} must divide by the process count {jax.process_count()}")
  if init not in INITS:
    raise ValueError(f"train.init must be one of {INITS}, got {init!r}")
  if not 0.0 <= kd_alpha <= 1.0 or kd_tau <= 0:
    raise ValueError(f"need 0 <= kd_alpha <= 1 and kd_tau > 0, got alpha={kd_alpha}, tau={kd_tau}")
  for name, value, choices in (("blocks", blocks, BLOCKS), ("other_blocks", other_blocks, OTHER_BLOCKS),
                               ("layer_selection", layer_selection, LAYER_SELECTIONS)):
    if value not in choices:
      raise ValueError(f"train.{name} must be one of {choices}, got {value!r}")
  if init != "guide" and kd_alpha == 0:
    return None
  if not teacher_dir:
    raise ValueError("train.teacher_dir is required for init='guide' or kd_alpha > 0")
  teacher, _ = checkpoints.read_config(teacher_dir)
  if teacher.vocab_size != model.vocab_size:
    raise ValueError(f"teacher/student vocab mismatch: teacher vocab_size {teacher.vocab_size} != "
                     f"student {model.vocab_size}")
  if init == "guide":
    check_dimensions(teacher, model)
  return teacher


@gin.configurable(denylist=["rewrite_flags"])
def train(model_dir: str = gin.REQUIRED, model: ModelConfig = gin.REQUIRED, train_steps: int = 1000,
          batch_size: int = 32, seq_len: int = 128, corpus: str = "shakespeare", vocab_size: int = 8000,
          cache_dir: str = "cache", seed: int = 0, init: str = "random", teacher_dir: Optional[str] = None,
          blocks: str = "first", other_blocks: str = "uniform_selection", layer_selection: str = "first_n",
          center: bool = False, kd_alpha: float = 0.0, kd_tau: float = 1.0, model_parallel: int = 1,
          num_devices: Optional[int] = None,
          eval_every: int = 200, eval_max_batches: Optional[int] = None, save_every: int = 200,
          keep_checkpoints: int = 2, log_every: int = 20, stop_after: Optional[int] = None,
          rewrite_flags=None) -> dict:
  """Train `model` for train_steps on `corpus`; returns (and writes model_dir/results.json) the final eval.

  init='guide' builds the start from teacher_dir's checkpoint with guide_jax.transforms.guide_init;
  kd_alpha > 0 distills from the same teacher inside the step. Resumes from model_dir's latest
  complete checkpoint. stop_after: end (with a checkpoint) after that many steps of this process,
  leaving the run resumable (used by tests and preemptible jobs).
  """
  del rewrite_flags
  teacher_config = check_run_args(model, train_steps=train_steps, batch_size=batch_size, init=init,
                                  teacher_dir=teacher_dir, kd_alpha=kd_alpha, kd_tau=kd_tau,
                                  blocks=blocks, other_blocks=other_blocks, layer_selection=layer_selection)
  from guide_jax.data import batches as batches_lib, pipeline  # seqio / TF only for runs with data
  train_tokens, validation_tokens, vocab = pipeline.load_lm_data(corpus, cache_dir, vocab_size, seq_len)
  if vocab.vocab_size != model.vocab_size:
    raise ValueError(f"model vocab_size {model.vocab_size} != tokenizer vocab size {vocab.vocab_size} "
                     f"(bind ModelConfig.vocab_size = %VOCAB_SIZE)")
  batches = batches_lib.LMBatches(train_tokens, seq_len, batch_size, seed=seed)
  eval_batches = lambda: itertools.islice(batches_lib.eval_batches(
      validation_tokens, seq_len, batch_size, jax.process_index(), jax.process_count()), eval_max_batches)

  mesh = sharding.make_mesh(model_parallel, jax.devices()[:num_devices] if num_devices else None)
  if batch_size % mesh.shape["data"]:
    raise ValueError(f"BATCH_SIZE {batch_size} must divide by the mesh's data axis ({mesh.shape['data']} "
                     f"= devices / model_parallel); set train.num_devices or train.model_parallel")
  optimizer = gin_utils.make_optimizer(train_steps)
  teacher_params = None
  if teacher_config is not None:
    teacher_params, _ = checkpoints.load_params(
        teacher_dir, trainer.param_shardings(teacher_config, mesh) if kd_alpha > 0 else None)

  os.makedirs(model_dir, exist_ok=True)  # all checks passed: now we may write
  mngr = checkpoints.manager(model_dir, keep=keep_checkpoints)
  start = mngr.latest_step()
  if start is not None:
    p_sh = trainer.param_shardings(model, mesh)
    abstract = lambda tree, sh: jax.tree_util.tree_map(
        lambda s, x: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=x), tree, sh)
    abstract_params = abstract(model_lib.param_shapes(model), p_sh)
    abstract_opt = abstract(jax.eval_shape(optimizer.init, model_lib.param_shapes(model)),
                            trainer.opt_state_shardings(optimizer, model, mesh, p_sh))
    restored = checkpoints.restore(mngr, start, abstract_params, abstract_opt)
    params, opt_state = restored["params"], restored["opt_state"]
    logging.info("resumed %s at step %d", model_dir, start)
  else:
    start = 0
    rng = jax.random.PRNGKey(seed)
    params = trainer.init_random(model, rng, mesh)
    if init == "guide":
      host_teacher = jax.device_get(teacher_params)
      params, info = guide_init(host_teacher, teacher_config, model, student_params=jax.device_get(params),
                                blocks=blocks, other_blocks=other_blocks, layer_selection=layer_selection,
                                center=center, mesh=mesh, return_info=True)
      params = trainer.host_to_global(params, trainer.param_shardings(model, mesh))
      logging.info("GUIDE init from %s: explained variance %.4f, teacher layers %s",
                   teacher_dir, info["explained_variance"], info["teacher_layers"])
    opt_state = trainer.init_opt_state(optimizer, model, params, mesh)
  if kd_alpha == 0:
    teacher_params = None  # no teacher forward is compiled

  step_fn = trainer.make_train_step(model, optimizer, mesh, teacher_config=teacher_config, alpha=kd_alpha,
                                    tau=kd_tau)
  eval_fn = trainer.make_eval_step(model, mesh)
  run_meta = {"corpus": corpus, "seq_len": seq_len, "batch_size": batch_size, "init": init,
              "kd_alpha": kd_alpha, "seed": seed}
  writer = metrics.Writer(model_dir)
  tokens_per_step = batch_size * seq_len
  step, eval_result = start, None
  if start == 0:  # where each init starts: GUIDE's head start shows here
    writer.eval(0, trainer.evaluate(eval_fn, params, eval_batches(), mesh))
  last_log = (start, time.time())
  end = train_steps if stop_after is None else min(train_steps, start + stop_after)
  while step < end:
    local = batches.batch(step, jax.process_index(), jax.process_count())
    params, opt_state, m = step_fn(params, opt_state, trainer.global_batch(local, mesh), teacher_params)
    step += 1
    if step % log_every == 0 or step == end:
      m = {k: float(v) for k, v in jax.device_get(m).items()}
      now = time.time()
      step_time = (now - last_log[1]) / (step - last_log[0])
      m.update(step_time_s=step_time, tokens_per_s=tokens_per_step / step_time,
               eta_s=step_time * (train_steps - step))
      writer.train(step, m)
      last_log = (step, now)
    if step % eval_every == 0 or step == train_steps:
      eval_result = trainer.evaluate(eval_fn, params, eval_batches(), mesh)
      writer.eval(step, eval_result)
    if step % save_every == 0 or step == end:
      checkpoints.save(mngr, step, params, opt_state, model, extra=run_meta, force=True)
  writer.close()
  if step < train_steps:
    return {"step": step, "finished": False}
  if eval_result is None:  # resumed at the last step
    eval_result = trainer.evaluate(eval_fn, params, eval_batches(), mesh)
  result = {"step": step, "finished": True, "eval_loss": eval_result["loss"], "eval_ppl": eval_result["ppl"],
            "model_config": dataclasses.asdict(model), "tokens_seen": step * tokens_per_step, **run_meta}
  if jax.process_index() == 0:
    atomic.atomic_write_json(os.path.join(model_dir, "results.json"), result)
  return result


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  maybe_initialize_distributed()
  metrics.quiet_library_logs()
  gin_utils.parse(flags.FLAGS.gin_file, flags.FLAGS.gin_bindings)
  result = train()
  print(json.dumps(result))


def run():
  """Entry point with t5x-style --gin.KEY=VALUE rewriting."""
  import sys
  app.run(main, argv=gin_utils.rewrite_gin_args(sys.argv))


if __name__ == "__main__":
  run()
