"""Training: loss goes down, KD alpha=0 == no KD, kill -9 + resume, 2 devices == 1, bad configs."""
import json
import os
import signal
import subprocess
import sys
import time

import gin
import numpy as np
import pytest

from guide_jax import gin_utils, metrics, train as train_lib

REPO = gin_utils.REPO_ROOT
CACHE = os.environ.get("GUIDE_JAX_CACHE", os.path.join(REPO, "cache"))
MICRO = ["gin/models/tiny_student.gin", "gin/runs/pretrain.gin"]


def micro_bindings(model_dir, steps=30, **extra):
  """A very small model and batch so each run takes seconds on 2 CPU cores."""
  b = {"MODEL_DIR": repr(str(model_dir)), "TRAIN_STEPS": steps, "BATCH_SIZE": 4, "SEQ_LEN": 32,
       "CACHE_DIR": repr(CACHE), "config.ModelConfig.d_model": 32, "config.ModelConfig.n_layers": 2,
       "config.ModelConfig.n_heads": 2, "config.ModelConfig.head_dim": 16, "config.ModelConfig.mlp_dim": 64,
       "config.DataConfig.eval_max_batches": 4, "train.train.log_every": 1, "train.train.eval_every": 10, "config.CheckpointConfig.save_every": 10,
       "train.train.num_devices": 1, "optim.make_optimizer.warmup_steps": 5,
       "optim.make_optimizer.learning_rate": 1e-2}
  b.update(extra)
  return [f"{k} = {v}" for k, v in b.items()]


def run_train(files, bindings):
  gin.clear_config()
  gin_utils.parse(files, bindings)
  try:
    return gin.get_configurable(train_lib.train)()
  finally:
    gin.clear_config()


def losses(model_dir):
  return {s: r["loss"] for s, r in metrics.read_metrics(str(model_dir), "train").items()}


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
  """A micro teacher (wider than the micro student) trained for a few steps."""
  d = tmp_path_factory.mktemp("teacher")
  run_train(MICRO, micro_bindings(d, steps=20, **{"config.ModelConfig.d_model": 48, "config.ModelConfig.n_layers": 3}))
  return d


def test_training_lowers_held_out_loss(tmp_path):
  result = run_train(MICRO, micro_bindings(tmp_path, steps=40, BATCH_SIZE=16, SEQ_LEN=64,
                                           **{"config.DataConfig.eval_max_batches": 8}))
  evals = metrics.read_metrics(str(tmp_path), "eval")
  assert result["finished"] and sorted(evals) == [0, 10, 20, 30, 40]
  assert evals[40]["loss"] < evals[0]["loss"] - 1.0, evals
  saved = json.load(open(tmp_path / "results.json"))
  assert saved["eval_ppl"] == pytest.approx(np.exp(evals[40]["loss"]))
  assert os.listdir(tmp_path / "tb"), "TensorBoard summaries written"


def test_kd_alpha_zero_is_bit_identical_to_no_kd(tmp_path, teacher_dir):
  run_train(MICRO, micro_bindings(tmp_path / "plain", steps=12))
  run_train(MICRO + ["gin/kd.gin"], micro_bindings(tmp_path / "kd0", steps=12, KD_ALPHA=0.0,
                                                   TEACHER_DIR=repr(str(teacher_dir))))
  run_train(MICRO + ["gin/kd.gin"], micro_bindings(tmp_path / "kd5", steps=12, KD_ALPHA=0.5,
                                                   TEACHER_DIR=repr(str(teacher_dir))))
  plain, kd0, kd5 = losses(tmp_path / "plain"), losses(tmp_path / "kd0"), losses(tmp_path / "kd5")
  assert plain == kd0 and len(plain) == 12
  assert plain != kd5  # the teacher does change training when alpha > 0


def test_guide_init_run_starts_ahead_of_random(tmp_path, teacher_dir):
  run_train(MICRO + ["gin/guide.gin"], micro_bindings(tmp_path / "guide", steps=10,
                                                      TEACHER_DIR=repr(str(teacher_dir))))
  run_train(MICRO, micro_bindings(tmp_path / "random", steps=10))
  guide0 = metrics.read_metrics(str(tmp_path / "guide"), "eval")[0]["loss"]
  random0 = metrics.read_metrics(str(tmp_path / "random"), "eval")[0]["loss"]
  assert guide0 < random0


def test_kill_9_then_resume_reproduces_losses(tmp_path):
  steps = 60
  reference = tmp_path / "reference"
  run_train(MICRO, micro_bindings(reference, steps=steps))
  killed = tmp_path / "killed"
  cmd = [sys.executable, "-m", "guide_jax.train"] + [f"--gin_file={f}" for f in MICRO] + [
      f"--gin_bindings={b}" for b in micro_bindings(killed, steps=steps)]
  env = dict(os.environ, PYTHONPATH=REPO)
  proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while not (killed / "checkpoints" / "20").exists():
    assert proc.poll() is None, "run ended before it could be killed"
    assert time.time() < deadline
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not (killed / "results.json").exists(), "killed mid-run"
  killed_at = max(losses(killed))
  assert killed_at < steps
  result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "resumed" in result.stderr
  assert losses(killed) == losses(reference)  # every step, bit for bit
  assert json.load(open(killed / "results.json"))["eval_loss"] == \
      json.load(open(reference / "results.json"))["eval_loss"]


def test_wsd_branches_equal_separate_runs_and_resume(tmp_path):
  """A warmup-stable-decay run of 20 steps branching 10 off (decay from step 8) gives the 10-step
  budget exactly what a separate 10-step run gives, and a run stopped before the branch point
  resumes to the same results."""
  wsd = MICRO + ["gin/wsd.gin"]
  extra = {"train.train.eval_every": 100, "config.CheckpointConfig.save_every": 100}
  separate = run_train(wsd, micro_bindings(tmp_path / "separate", steps=10, **extra))
  long_run = tmp_path / "long"
  run_train(wsd, micro_bindings(long_run, steps=20, BRANCH_STEPS=[10], **extra))
  branch = json.load(open(long_run / "branches" / "10" / "results.json"))
  assert branch["finished"] and branch["decay_start"] == 8 and branch["tokens_seen"] == separate["tokens_seen"]
  assert branch["eval_loss"] == pytest.approx(separate["eval_loss"], rel=1e-6)
  assert losses(long_run / "branches" / "10")[10] == pytest.approx(losses(tmp_path / "separate")[10], rel=1e-6)
  stopped = tmp_path / "stopped"
  first = run_train(wsd, micro_bindings(stopped, steps=20, BRANCH_STEPS=[10], **{"train.train.stop_after": 5}, **extra))
  assert not first["finished"] and not (stopped / "branches").exists()
  again = run_train(wsd, micro_bindings(stopped, steps=20, BRANCH_STEPS=[10], **extra))
  assert again["eval_loss"] == json.load(open(long_run / "results.json"))["eval_loss"]
  assert json.load(open(stopped / "branches" / "10" / "results.json"))["eval_loss"] == branch["eval_loss"]


def test_two_device_mesh_matches_one_device(tmp_path):
  run_train(MICRO, micro_bindings(tmp_path / "one", steps=10))
  run_train(MICRO, micro_bindings(tmp_path / "two", steps=10, **{"train.train.num_devices": 2}))
  one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
  np.testing.assert_allclose([two[s] for s in sorted(two)], [one[s] for s in sorted(one)], rtol=2e-5)


def _cli(model_dir, *args):
  cmd = [sys.executable, "-m", "guide_jax.train"] + [f"--gin_file={f}" for f in MICRO] + [
      f"--gin_bindings={b}" for b in micro_bindings(model_dir, steps=5)] + list(args)
  return subprocess.run(cmd, cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), capture_output=True,
                        text=True, timeout=300)


def _error_lines(stderr):
  return [l for l in stderr.splitlines() if "Error" in l and not l.startswith(" ")]


@pytest.mark.parametrize("args,message", [
    (["--gin.train.no_such_knob=3"], "no_such_knob"),
    (["--gin_file=gin/guide.gin", "--gin.TEACHER_DIR='/nonexistent/teacher'"], "no checkpoints under"),
    (["--gin_file=gin/weight_selection.gin", "--gin.TEACHER_DIR='/nonexistent/teacher'",
      "--gin.starts.weight_selection.layer_selection='magic'"], "layer_selection must be one of"),
    (["--gin_file=gin/guide.gin"], "starts.guide needs a teacher"),
])
def test_bad_configs_fail_clearly_and_write_nothing(tmp_path, args, message):
  model_dir = tmp_path / "run"
  result = _cli(model_dir, *args)
  assert result.returncode != 0
  assert message in result.stderr
  assert not model_dir.exists()


def test_teacher_vocab_mismatch_fails_before_writing(tmp_path, teacher_dir):
  model_dir = tmp_path / "run"
  with pytest.raises(ValueError, match="teacher/student vocab mismatch: teacher vocab_size 2048 != student 1024"):
    run_train(MICRO + ["gin/guide.gin"], micro_bindings(model_dir, TEACHER_DIR=repr(str(teacher_dir)),
                                                        VOCAB_SIZE=1024))
  assert not model_dir.exists()


def test_corrupt_checkpoint_fails_clearly(tmp_path, teacher_dir):
  import shutil
  bad_teacher = tmp_path / "bad_teacher"
  shutil.copytree(teacher_dir, bad_teacher)
  step_dir = bad_teacher / "checkpoints" / "20" / "params"
  for root, _, files in os.walk(step_dir):
    for name in files:
      with open(os.path.join(root, name), "wb") as f:
        f.write(b"garbage")
  model_dir = tmp_path / "run"
  with pytest.raises(ValueError, match="corrupt or incomplete"):
    run_train(MICRO + ["gin/guide.gin"], micro_bindings(model_dir, TEACHER_DIR=repr(str(bad_teacher))))
  assert not model_dir.exists()


def test_importing_the_entry_points_defines_no_absl_flag():
  """Flags exist only where a CLI runs (run()): importing guide_jax, e.g. inside a t5x process that
  defines its own --gin_file, adds none."""
  code = ("from absl import app, flags, logging; import orbax.checkpoint; before = set(flags.FLAGS); "
          "import guide_jax.train, guide_jax.convert, guide_jax.sweep, guide_jax.t5x_compat, guide_jax.starts, "
          "guide_jax.teachers; print(sorted(set(flags.FLAGS) - before))")
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO),
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip().splitlines()[-1] == "[]"


def test_guide_output_calibration_fits_a_temperature_that_lowers_the_step0_loss(tmp_path, teacher_dir):
  """GuideConfig.calibration_batches: the start's final norm scale is rescaled by the grid value
  with the lowest loss on the run's first batches; step-0 held-out loss is no worse than without."""
  guide = MICRO + ["gin/guide.gin"]
  common = {"TEACHER_DIR": repr(str(teacher_dir)), "train.train.eval_every": 100}
  plain = run_train(guide, micro_bindings(tmp_path / "plain", steps=1, **common))
  calibrated = run_train(guide, micro_bindings(tmp_path / "calibrated", steps=1, **common,
                                               **{"config.GuideConfig.calibration_batches": 2}))
  assert plain["finished"] and calibrated["finished"]
  assert calibrated["start"]["guide"]["calibration_batches"] == 2
  step0 = lambda d: metrics.read_metrics(str(d), "eval")[0]["loss"]
  assert step0(tmp_path / "calibrated") <= step0(tmp_path / "plain") + 0.05
