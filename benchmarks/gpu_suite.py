r"""Everything GPU-scale on one accelerator, resumable across commands of <= 10 minutes.

  python -m benchmarks.gpu_suite --out=reports/gpu              # rerun until it prints "suite complete"
  python -m benchmarks.gpu_suite --out=/tmp/smoke --smoke       # CPU, about a minute (tests)

Stages, each skipped once its output exists in --out:
  1. pca     benchmarks.pca (sharded PCA vs its limit / SVD / sklearn; guide_init at 1B-from-7B)
  2. train   benchmarks.train (tokens/s, MFU, KD cost vs its FLOPs)
  3. report  benchmarks.report: both merged into benchmarks.json
  4. sweep   gin/sweeps/gpu_reproduction.gin: teacher, then baseline / kd / guide / guide_kd x 3
             seeds; results.{json,md,png} copied into --out
  5. longrun gin/sweeps/gpu_longrun.gin and gpu_longrun_quarter.gin (issue 25: 13 arms x 5 seeds x
             2 ratios, budgets to 20 tokens per parameter, warmup-stable-decay branches), then
             guide_jax.study: longrun.json, longrun_tables.md, longrun.png, longrun_flops.png in --out
             (several hours: the last stage, so the others finish first)
--budget_s bounds one command: no stage starts after it, and the sweep's running child is sent
SIGTERM at the deadline (it saves a checkpoint and exits), so the next command continues there.
Needs: a CUDA/TPU JAX image + gin-config (carry its wheel) + the prepared data directory named in
the sweep gin (python -m guide_jax.data.prepare --corpus=large --vocab_size=8192
--max_train_tokens=22000000 --output_dir=cache/prepared/gpu_suite-large-v8192; 46 MB).
"""
import argparse
import json
import os
import shutil
import sys
import time

if __package__ in (None, ""):  # `python benchmarks/gpu_suite.py`
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402

import gin  # noqa: E402

from guide_jax import gin_utils, sweep as sweep_lib  # noqa: E402

SWEEP_GIN = "gin/sweeps/gpu_reproduction.gin"
SWEEP_FILES = ("results.json", "results.md", "results.png")
LONGRUN_GINS = ("gin/sweeps/gpu_longrun.gin", "gin/sweeps/gpu_longrun_quarter.gin")


def smoke_bindings(out: str):
  """Tiny shapes and steps on the built-in corpus: the sweep stage on CPU in seconds."""
  cache = os.environ.get("GUIDE_JAX_CACHE", os.path.join(common.REPO_ROOT, "cache"))
  base = ["gin/runs/pretrain.gin", f"CACHE_DIR = {cache!r}", "BATCH_SIZE = 4", "SEQ_LEN = 32",
          "config.DataConfig.eval_max_batches = 2", "train.train.eval_every = 5", "train.train.log_every = 5",
          "train.train.num_devices = 1", "config.CheckpointConfig.save_every = 5"]
  small = ["config.ModelConfig.n_heads = 2", "config.ModelConfig.head_dim = 16", "config.ModelConfig.mlp_dim = 64"]
  return [f"sweep.sweep.output_dir = {os.path.join(out, 'runs')!r}", f"sweep.sweep.base = {base!r}",
          f"sweep.sweep.teacher = {['gin/models/tiny_student.gin', 'TRAIN_STEPS = 10', 'config.ModelConfig.d_model = 48'] + small!r}",
          f"sweep.sweep.student = {['gin/models/tiny_student.gin', 'TRAIN_STEPS = 10', 'config.ModelConfig.d_model = 32'] + small!r}",
          "sweep.sweep.seeds = [0]"]


def run_sweep(out: str, remaining_s: float, smoke: bool) -> bool:
  """The reproduction sweep within remaining_s; copies its results into out. True when complete."""
  gin.clear_config()
  gin_utils.parse([SWEEP_GIN], smoke_bindings(out) if smoke else [])
  output_dir = gin.query_parameter("sweep.sweep.output_dir")
  try:
    gin.get_configurable(sweep_lib.sweep)(time_budget_s=remaining_s)
  except sweep_lib.TimeBudgetReached as e:
    print(f"sweep: {e}; progress saved", flush=True)
    return False
  finally:
    gin.clear_config()
  for name in SWEEP_FILES:
    src = os.path.join(output_dir, name)
    if os.path.exists(src):
      shutil.copyfile(src, os.path.join(out, "reproduction_" + name))
  return True


def longrun_smoke_bindings(out: str):
  """The longrun stage on CPU: the reproduction smoke's teacher, one tiny ratio, two arms, one seed,
  two branched budgets."""
  small = ["config.ModelConfig.n_heads = 2", "config.ModelConfig.head_dim = 16", "config.ModelConfig.mlp_dim = 64"]
  return smoke_bindings(out) + [
      f"sweep.sweep.output_dir = {os.path.join(out, 'runs', 'longrun')!r}",
      f"sweep.sweep.teacher_dir = {os.path.join(out, 'runs', 'teacher')!r}",
      f"sweep.sweep.student = {['gin/models/tiny_student.gin', 'gin/wsd.gin', 'config.ModelConfig.d_model = 32', 'optim.make_optimizer.warmup_steps = 1'] + small!r}",
      "sweep.sweep.branches = {'s3': 3, 's6': 6}", "sweep.sweep.arms = {'baseline': [], 'guide': ['gin/guide.gin']}"]


def run_longrun(out: str, remaining_s: float, smoke: bool) -> bool:
  """Both longrun sweeps within remaining_s, then guide_jax.study into out. True when complete."""
  from guide_jax import study  # pylint: disable=g-import-not-at-top
  deadline = time.time() + remaining_s
  dirs = []
  for gin_file in LONGRUN_GINS[:1] if smoke else LONGRUN_GINS:
    gin.clear_config()
    gin_utils.parse([gin_file], longrun_smoke_bindings(out) if smoke else [])
    dirs.append(gin.query_parameter("sweep.sweep.output_dir"))
    try:
      gin.get_configurable(sweep_lib.sweep)(time_budget_s=deadline - time.time())
    except sweep_lib.TimeBudgetReached as e:
      print(f"longrun: {e}; progress saved", flush=True)
      return False
    finally:
      gin.clear_config()
  result = study.build(dirs, command="python -m benchmarks.gpu_suite (stage longrun)")
  prefix = os.path.join(out, "longrun")
  with open(prefix + "_tables.md", "w") as f:
    f.write(study.tables(result))
  try:
    study.plot(result, prefix + ".png")
    study.plot(result, prefix + "_flops.png", x_key="train_flops")
  except ImportError:
    pass
  with open(prefix + ".json", "w") as f:  # last: its presence marks the stage done
    json.dump(result, f, indent=1)
  return True


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", required=True, help="where the figures go (reports/gpu on the device)")
  p.add_argument("--budget_s", type=float, default=540, help="stop (resumably) after this long")
  p.add_argument("--smoke", action="store_true", help="tiny everything on CPU (what the tests run)")
  args = p.parse_args(argv)
  start = time.time()
  os.makedirs(args.out, exist_ok=True)
  smoke = ["--smoke"] if args.smoke else []
  stages = [
      ("pca", os.path.join(args.out, "pca.json"),
       lambda: __import__("benchmarks.pca", fromlist=["main"]).main(
           smoke + ["--json_out", os.path.join(args.out, "pca.json")])),
      ("train", os.path.join(args.out, "train.json"),
       lambda: __import__("benchmarks.train", fromlist=["main"]).main(
           smoke + ["--json_out", os.path.join(args.out, "train.json")])),
      ("report", os.path.join(args.out, "benchmarks.json"),
       lambda: __import__("benchmarks.report", fromlist=["main"]).main(
           [os.path.join(args.out, "pca.json"), os.path.join(args.out, "train.json"),
            "--json_out", os.path.join(args.out, "benchmarks.json")])),
      ("sweep", os.path.join(args.out, "reproduction_results.json"),
       lambda: run_sweep(args.out, args.budget_s - (time.time() - start), args.smoke)),
      ("longrun", os.path.join(args.out, "longrun.json"),
       lambda: run_longrun(args.out, args.budget_s - (time.time() - start), args.smoke)),
  ]
  for name, output, run in stages:
    if os.path.exists(output):
      print(f"stage {name}: done already ({output})", flush=True)
      continue
    if time.time() - start > args.budget_s:
      print(f"stage {name}: not started, the budget of {args.budget_s:.0f} s is spent; rerun to continue")
      return 1
    print(f"stage {name}: running", flush=True)
    if run() is False:
      print("rerun the same command to continue")
      return 1
  print(f"suite complete: {args.out} ({time.time() - start:.0f} s this command)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
