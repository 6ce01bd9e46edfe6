"""Settings that were silently accepted or failed late (issue 26): each refused up front, in one
line naming the setting, and the fix for the messages a user could not act on. Each test names the
issue's case(s) it covers (`case<NN>`); tests/test_reliability.py's docstring lists where the others are."""
import os
import subprocess
import sys

import gin
import pytest

from guide_jax import cli, gin_utils, optim
from guide_jax.config import CheckpointConfig, DataConfig, TeacherConfig
from test_train import MICRO, REPO, micro_bindings, run_train


@pytest.mark.parametrize("kwargs, match", [
    ({"keep": 0}, "CheckpointConfig.keep must be a positive int"),
    ({"keep": -1}, "CheckpointConfig.keep must be a positive int"),
    ({"save_every": 0}, "CheckpointConfig.save_every must be a positive int"),
    ({"restore_step": -1}, "CheckpointConfig.restore_step must be a step number"),
    ({"allow_changed_run": "yes"}, "allow_changed_run must be a bool"),
])
def test_case01_case10_checkpoint_settings_are_refused_at_construction(kwargs, match):
  with pytest.raises(ValueError, match=match):
    CheckpointConfig(**kwargs)


def test_case10_data_and_teacher_settings_are_refused_at_construction():
  with pytest.raises(ValueError, match="eval_max_batches must be a positive int"):
    DataConfig(eval_max_batches=0)
  with pytest.raises(ValueError, match="kd_alpha must be a number"):
    TeacherConfig(kd_alpha=float("nan"))


@pytest.mark.parametrize("kwargs, match", [
    ({"learning_rate": -1e-3}, "learning_rate must be a finite number > 0"),
    ({"learning_rate": 0.0}, "learning_rate must be a finite number > 0"),
    ({"learning_rate": float("nan")}, "learning_rate must be a finite number > 0"),
    ({"warmup_steps": -1}, "warmup_steps must be an int >= 0"),
    ({"weight_decay": -0.1}, "weight_decay must be a finite number >= 0"),
    ({"b2": 1.0}, r"b2 must be in \[0, 1\)"),
    ({"total_steps": 0}, "total_steps must be a positive int"),
])
def test_case05_optimizer_settings_are_refused(kwargs, match):
  with pytest.raises(ValueError, match=match):
    optim.make_optimizer(**{"total_steps": 10, **kwargs})


@pytest.mark.parametrize("binding, suggestion", [("train_steps = 3", "TRAIN_STEPS"),
                                                 ("Train_Steps = 3", "TRAIN_STEPS"),
                                                 ("TRAIN_STPES = 3", "TRAIN_STEPS")])
def test_case12_case_variant_and_misspelled_macros_on_the_command_line_are_refused(binding, suggestion):
  with pytest.raises(ValueError, match=rf"unknown gin macro.*did you mean {suggestion}\?"):
    gin_utils.parse(MICRO, [binding])
  gin.clear_config()


def test_case12_macro_typo_inside_a_users_gin_file_is_refused(tmp_path):
  user = tmp_path / "mine.gin"
  user.write_text("TRAIN_STPES = 3\n")
  with pytest.raises(ValueError, match=r"gin macro TRAIN_STPES is set in .*mine.gin but nothing uses "
                                       r"%TRAIN_STPES \(did you mean TRAIN_STEPS\?\)"):
    gin_utils.parse(MICRO + [str(user)], [])
  user.write_text("TRAIN_STEPS = 3\n")  # the right spelling parses
  gin_utils.parse(MICRO + [str(user)], ["MODEL_DIR = '/tmp/x'"])
  gin.clear_config()


def test_case17_unclosed_bracket_names_the_file_and_line(tmp_path):
  bad = tmp_path / "bad.gin"
  bad.write_text("from __gin__ import dynamic_registration\nfrom guide_jax import optim\n"
                 "optim.make_optimizer.name = ('adamw'\n")
  with pytest.raises(ValueError, match=r"bad gin file .*bad.gin: the bracket opened at line 3 is never closed"):
    gin_utils.parse(MICRO + [str(bad)], [])


def test_case15_cli_message_drops_gins_context_lines():
  error = ValueError("CheckpointConfig.keep must be a positive int, got 0\n  In call to configurable "
                     "'CheckpointConfig' (<class 'guide_jax.config.CheckpointConfig'>)")
  assert cli.message(error) == "CheckpointConfig.keep must be a positive int, got 0"
  with pytest.raises(SystemExit, match="^prog: error: no$"):
    cli.exit_on_error("prog", lambda argv: (_ for _ in ()).throw(ValueError("no")), [])


def test_case15_case01_train_refusal_is_one_last_line_and_writes_nothing(tmp_path):
  model_dir = tmp_path / "run"
  cmd = [sys.executable, "-m", "guide_jax.train"] + [f"--gin_file={f}" for f in MICRO] + [
      f"--gin_bindings={b}" for b in micro_bindings(model_dir, steps=2, **{"config.CheckpointConfig.keep": 0})]
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
  last = proc.stderr.strip().splitlines()[-1]
  assert proc.returncode == 1, proc.stderr[-2000:]
  assert last == "guide_jax.train: error: CheckpointConfig.keep must be a positive int (the number of " \
                 "recent steps kept; >= 1), got 0", proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr and not model_dir.exists()


@pytest.mark.parametrize("extra, match", [
    ({"train.train.eval_every": 0}, "train.eval_every must be a positive int"),
    ({"train.train.log_every": 0}, "train.log_every must be a positive int"),
    ({"train.train.num_devices": 64}, r"train.num_devices=64, but this host has 8 cpu device\(s\)"),
    ({"config.CheckpointConfig.restore_step": 40}, "restore_step=40, but .* holds no checkpoints"),
])
def test_case10_case11_run_settings_are_refused_before_anything_is_written(tmp_path, extra, match):
  model_dir = tmp_path / "run"
  with pytest.raises(ValueError, match=match):
    run_train(MICRO, micro_bindings(model_dir, steps=2, **extra))
  assert not model_dir.exists()


def test_case16_non_finite_before_any_checkpoint_says_so(tmp_path):
  result = run_train(MICRO, micro_bindings(tmp_path, steps=20, **{
      "config.CheckpointConfig.save_every": 100, "optim.make_optimizer.learning_rate": 1e6,
      "optim.make_optimizer.warmup_steps": 0, "optim.make_optimizer.clip_norm": 0.0}))
  assert result["finished"] is False and result["last_good_step"] is None
  assert "No checkpoint was saved before it" in result["error"] and "step None" not in result["error"]
