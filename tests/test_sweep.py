"""CPU smoke test of the sweep: a micro teacher and two arms, results.json/.md/.png, and resume."""
import json
import os
import subprocess
import sys

import pytest

from guide_jax import sweep as sweep_lib
from test_train import CACHE, REPO

MICRO = ["'BATCH_SIZE = 4'", "'SEQ_LEN = 32'", f"'CACHE_DIR = \"{CACHE}\"'", "'config.DataConfig.eval_max_batches = 4'",
         "'train.train.eval_every = 5'", "'train.train.num_devices = 1'", "'train.train.log_every = 5'", "'config.ModelConfig.n_heads = 2'",
         "'config.ModelConfig.head_dim = 16'", "'config.ModelConfig.mlp_dim = 64'"]


def write_sweep_gin(path, output_dir):
  path.write_text(f"""
from __gin__ import dynamic_registration
from guide_jax import sweep
sweep.sweep.output_dir = '{output_dir}'
sweep.sweep.base = ['gin/runs/pretrain.gin', {', '.join(MICRO)}]
sweep.sweep.teacher = ['gin/models/tiny_student.gin', 'TRAIN_STEPS = 10', 'config.ModelConfig.d_model = 48',
                 'config.ModelConfig.n_layers = 2']
sweep.sweep.student = ['gin/models/tiny_student.gin', 'TRAIN_STEPS = 10', 'config.ModelConfig.d_model = 32',
                 'config.ModelConfig.n_layers = 1']
sweep.sweep.arms = {{'baseline': [], 'guide': ['gin/guide.gin']}}
sweep.sweep.seeds = [0]
""")


def run_sweep(gin_file):
  return subprocess.run([sys.executable, "-m", "guide_jax.sweep", f"--gin_file={gin_file}"], cwd=REPO,
                        env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True, timeout=600)


def test_sweep_smoke_and_resume(tmp_path):
  out = tmp_path / "sweep"
  gin_file = tmp_path / "smoke.gin"
  write_sweep_gin(gin_file, out)
  result = run_sweep(gin_file)
  assert result.returncode == 0, result.stderr[-3000:]
  # A quiet first screen: progress bars and results, no library noise (issue 14).
  screen = result.stdout + result.stderr
  for noise in ("cuInit", "Unable to initialize backend", "oneDNN", "TensorFlow", "tensorflow", "cuda_",
                "TPU", "absl::InitializeLog"):
    assert noise not in screen, (noise, screen[-3000:])
  assert "guide seed 0: eval ppl" in result.stdout and "step" in result.stderr  # a result line, a bar
  assert os.path.getsize(out / "guide" / "seed_0" / "train.log") > 0  # each run's log went to its dir
  summary = json.load(open(out / "results.json"))
  assert summary["teacher_ppl"] == json.load(open(out / "teacher" / "results.json"))["eval_ppl"]
  arms = {a["name"]: a for a in summary["arms"]}
  assert set(arms) == {"baseline", "guide"}
  expected = sweep_lib.gap_reduction(arms["baseline"]["ppl"], arms["guide"]["ppl"], summary["teacher_ppl"])
  if summary["teacher_below_baseline"] > 0:  # a 10-step teacher is usually, not surely, better
    assert arms["baseline"]["gap_reduction"] == 0.0
    assert arms["guide"]["gap_reduction"] == pytest.approx(expected)
  assert "| guide |" in (out / "results.md").read_text()
  assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  # A second invocation reuses every finished run.
  stamp = os.path.getmtime(out / "guide" / "seed_0" / "results.json")
  again = run_sweep(gin_file)
  assert again.returncode == 0 and again.stdout.count("finished already") == 3
  assert os.path.getmtime(out / "guide" / "seed_0" / "results.json") == stamp


def test_gap_reduction_formula_and_missing_baseline():
  assert sweep_lib.gap_reduction(100.0, 90.0, 60.0) == pytest.approx(0.25)
  assert sweep_lib.gap_reduction(100.0, 100.0, 60.0) == 0.0
  with pytest.raises(ValueError, match="baseline arm"):
    sweep_lib.sweep(output_dir="x", teacher=[], student=[], arms={"guide": []})


def test_budget_study_runs_the_comparison_arms_and_writes_study_json(tmp_path):
  """A budgets x arms study (gin/sweeps/beyond.gin's shape): weight selection and pruning arms
  train from the teacher, and study.json holds per budget the teacher / baseline ppl and per arm
  the gap reduction, step-0 ppl and FLOPs."""
  out = tmp_path / "study"
  gin_file = tmp_path / "study.gin"
  gin_file.write_text(f"""
from __gin__ import dynamic_registration
from guide_jax import sweep
sweep.sweep.output_dir = '{out}'
sweep.sweep.base = ['gin/runs/pretrain.gin', {', '.join(MICRO)}]
sweep.sweep.teacher = ['gin/models/tiny_student.gin', 'TRAIN_STEPS = 10', 'config.ModelConfig.d_model = 48',
                       'config.ModelConfig.n_layers = 2']
sweep.sweep.student = ['gin/models/tiny_student.gin', 'config.ModelConfig.d_model = 32', 'config.ModelConfig.n_layers = 1']
sweep.sweep.budgets = {{'short': ['TRAIN_STEPS = 3'], 'long': ['TRAIN_STEPS = 6']}}
sweep.sweep.arms = {{'baseline': [], 'ws': ['gin/weight_selection.gin'], 'prune_kd': ['gin/prune.gin', 'gin/kd.gin']}}
sweep.sweep.seeds = [0]
""")
  result = run_sweep(gin_file)
  assert result.returncode == 0, result.stderr[-3000:]
  study = json.load(open(out / "study.json"))
  assert study["budgets_tokens"] == {"short": 3 * 4 * 32, "long": 6 * 4 * 32}
  assert set(study["teacher_ppl"]) == set(study["baseline_ppl"]) == {"short", "long"}
  arms = {(a["name"], a["budget"]): a for a in study["arms"]}
  assert set(arms) == {(n, b) for n in ("baseline", "ws", "prune_kd") for b in ("short", "long")}
  for arm in arms.values():
    assert arm["train_flops"] > 0 and arm["step0_ppl_mean"] > 0 and arm["ppl_mean"] > 0
  # KD pays for the teacher's forward; a longer budget costs more.
  assert arms[("prune_kd", "short")]["train_flops"] > arms[("ws", "short")]["train_flops"]
  assert arms[("ws", "long")]["train_flops"] == 2 * arms[("ws", "short")]["train_flops"]
  # Different starts: weight selection and pruning do not start where the random baseline does.
  assert arms[("ws", "short")]["step0_ppl_mean"] != arms[("baseline", "short")]["step0_ppl_mean"]
  assert "## short" in (out / "results.md").read_text()


def test_sweep_refuses_runs_made_with_other_settings_and_reruns_them_by_choice(tmp_path):
  """Before: an edited sweep gin (steps changed) reused the finished runs of the old settings and
  mixed them into its table; and an output_dir with a single quote broke the generated gin."""
  out = tmp_path / "it's a sweep"
  gin_file = tmp_path / "s.gin"

  def write(student_steps):
    gin_file.write_text(f"""
from __gin__ import dynamic_registration
from guide_jax import sweep
sweep.sweep.output_dir = {str(out)!r}
sweep.sweep.base = ['gin/runs/pretrain.gin', {', '.join(MICRO)}]
sweep.sweep.teacher = ['gin/models/tiny_student.gin', 'TRAIN_STEPS = 3', 'config.ModelConfig.d_model = 32',
                       'config.ModelConfig.n_layers = 1']
sweep.sweep.student = ['gin/models/tiny_student.gin', 'TRAIN_STEPS = {student_steps}',
                       'config.ModelConfig.d_model = 32', 'config.ModelConfig.n_layers = 1']
sweep.sweep.arms = {{'baseline': []}}
""")
  write(3)
  first = run_sweep(gin_file)
  assert first.returncode == 0, first.stderr[-3000:]
  assert json.load(open(out / "results.json"))["arms"][0]["tokens_seen"] == 3 * 4 * 32
  write(5)
  refused = run_sweep(gin_file)
  assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr[-3000:]
  assert "made with other settings" in refused.stderr
  assert "binding 'TRAIN_STEPS = 3' dropped; binding 'TRAIN_STEPS = 5' added" in refused.stderr
  assert "teacher:" not in refused.stderr  # the teacher's settings did not change
  assert json.load(open(out / "baseline" / "seed_0" / "results.json"))["step"] == 3  # nothing was run
  rerun = subprocess.run([sys.executable, "-m", "guide_jax.sweep", f"--gin_file={gin_file}",
                          "--gin.sweep.sweep.rerun_changed=True"], cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO),
                         capture_output=True, text=True, timeout=600)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert "teacher: finished already" in rerun.stdout
  assert json.load(open(out / "results.json"))["arms"][0]["tokens_seen"] == 5 * 4 * 32
