"""Nothing lost, nothing half-written, one clear error: checksums, the NaN guard, the run lock,
resume checks, teacher checks on every path, a full disk, unknown gin macros, sweep children."""
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from guide_jax import checkpoints, metrics, model, runlock
from guide_jax.config import ModelConfig
from guide_jax.transforms import guide_init
from test_train import MICRO, REPO, micro_bindings, run_train


def _meta_path(model_dir, step):
  return os.path.join(str(model_dir), "checkpoints", str(step), "meta", "metadata")


def test_checksum_mismatch_names_array_and_step_and_older_step_restores(tmp_path):
  run_train(MICRO, micro_bindings(tmp_path, steps=20, **{"config.CheckpointConfig.save_every": 10,
                                                          "config.CheckpointConfig.keep": 3}))
  path = _meta_path(tmp_path, 20)
  meta = json.load(open(path))
  key = sorted(meta["checksums"]["params"])[3]
  meta["checksums"]["params"][key] = "deadbeef"  # what a flipped bit on disk looks like to restore
  json.dump(meta, open(path, "w"))
  with pytest.raises(ValueError, match=r"checkpoint step 20 .*params/.*does not match its saved checksum.*"
                                       r"restore_step.*\[10\]"):
    run_train(MICRO, micro_bindings(tmp_path, steps=30))
  # The way out the message names: resume from the older step.
  result = run_train(MICRO, micro_bindings(tmp_path, steps=30, **{"config.CheckpointConfig.restore_step": 10}))
  assert result["finished"] and result["step"] == 30


def test_checksums_are_sharding_invariant_and_content_sensitive():
  params = model.init_params(ModelConfig(vocab_size=64, d_model=16, n_layers=1, n_heads=2, head_dim=8,
                                         mlp_dim=32), jax.random.PRNGKey(0))
  from guide_jax import sharding
  mesh = sharding.make_mesh(4)
  placed = jax.device_put(params, sharding.param_shardings(
      ModelConfig(vocab_size=64, d_model=16, n_layers=1, n_heads=2, head_dim=8, mlp_dim=32), mesh))
  assert checkpoints.checksums(params) == checkpoints.checksums(placed)
  params["decoder"]["layers_0"]["mlp"]["wo"]["kernel"] = params["decoder"]["layers_0"]["mlp"]["wo"]["kernel"].at[
      3, 5].add(1e-6)
  changed = [k for k, v in checkpoints.checksums(params).items() if checkpoints.checksums(placed)[k] != v]
  assert changed == ["['decoder']['layers_0']['mlp']['wo']['kernel']"]


def test_non_finite_run_stops_keeps_last_good_checkpoint_and_writes_valid_json(tmp_path):
  cmd = [sys.executable, "-m", "guide_jax.train"] + [f"--gin_file={f}" for f in MICRO] + [
      f"--gin_bindings={b}" for b in micro_bindings(tmp_path, steps=40, **{
          "config.CheckpointConfig.save_every": 5, "optim.make_optimizer.learning_rate": 1e4,
          "optim.make_optimizer.warmup_steps": 10, "optim.make_optimizer.clip_norm": 0.0})]
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0 and "non-finite" in proc.stderr, proc.stderr[-2000:]
  result = json.load(open(tmp_path / "results.json"))  # valid JSON, and not a success
  assert result["finished"] is False and "non-finite" in result["error"]
  good = result["last_good_step"]
  assert good is not None and good < result["step"]
  assert sorted(int(s) for s in os.listdir(tmp_path / "checkpoints"))[-1] == good  # the bad step never saved
  params, _ = checkpoints.load_params(str(tmp_path))
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves(params))


def test_kd_only_teacher_with_nan_fails_before_writing(tmp_path):
  teacher = tmp_path / "teacher"
  run_train(MICRO, micro_bindings(teacher, steps=2))
  params, config = checkpoints.load_params(str(teacher))
  params = jax.tree_util.tree_map(np.array, params)  # writable host copies
  params["decoder"]["layers_1"]["mlp"]["wi_0"]["kernel"][0, 0] = np.nan
  checkpoints.save(checkpoints.manager(str(teacher), params_only=True), 3, params, None, config, force=True)
  model_dir = tmp_path / "student"
  with pytest.raises(ValueError, match="NaN or Inf in: decoder/layers_1/mlp/wi_0/kernel"):
    run_train(MICRO + ["gin/kd.gin"], micro_bindings(model_dir, TEACHER_DIR=repr(str(teacher))))
  assert not model_dir.exists()


def test_int32_teacher_is_one_clear_error():
  cfg = ModelConfig(vocab_size=64, d_model=16, n_layers=2, n_heads=2, head_dim=8, mlp_dim=32)
  teacher = jax.tree_util.tree_map(lambda x: np.asarray(x).astype(np.int32),
                                   model.init_params(cfg, jax.random.PRNGKey(0)))
  with pytest.raises(ValueError, match="must hold float parameters.*dtype int32"):
    guide_init(teacher, cfg, cfg.replace(d_model=8))


def test_run_lock_names_holder_and_recovers_stale(tmp_path):
  lock = tmp_path / runlock.LOCK_FILE
  lock.write_text(json.dumps({"host": "other-host", "pid": 4242, "started": "2026-11-25T10:00:00"}))
  with pytest.raises(runlock.RunLockedError, match="in use by pid 4242 on other-host"):
    with runlock.hold(str(tmp_path)):
      pass
  with pytest.raises(runlock.RunLockedError, match="in use by pid 4242"):
    run_train(MICRO, micro_bindings(tmp_path, steps=2))
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                        text=True).stdout.strip()
  lock.write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead), "started": "x"}))
  with runlock.hold(str(tmp_path)):  # its process is gone: stale, taken over
    assert json.load(open(lock))["pid"] == os.getpid()
  assert not lock.exists()


def test_resume_refuses_other_settings_and_other_models(tmp_path):
  run_train(MICRO, micro_bindings(tmp_path, steps=10, **{"train.train.stop_after": 4}))
  with pytest.raises(ValueError, match="started with other settings.*batch_size: checkpoint 4 != this run 8"):
    run_train(MICRO, micro_bindings(tmp_path, steps=10, BATCH_SIZE=8))
  with pytest.raises(ValueError, match=r"holds a checkpoint \(step 4\) of another model.*d_model: checkpoint 32 "
                                       r"!= this run 48"):
    run_train(MICRO, micro_bindings(tmp_path, steps=10, **{"config.ModelConfig.d_model": 48}))
  result = run_train(MICRO, micro_bindings(tmp_path, steps=10, SEED=3, **{
      "config.CheckpointConfig.allow_changed_run": True}))
  assert result["finished"]


def test_disk_full_is_named(tmp_path, monkeypatch):
  import orbax.checkpoint as ocp

  def full(self, *a, **k):
    raise RuntimeError("save failed") from OSError(errno.ENOSPC, "No space left on device")
  monkeypatch.setattr(ocp.CheckpointManager, "save", full)
  with pytest.raises(checkpoints.CheckpointError, match="disk full while writing checkpoint step 10"):
    run_train(MICRO, micro_bindings(tmp_path, steps=10))


def test_unknown_gin_macro_on_the_command_line_is_rejected(tmp_path):
  cmd = [sys.executable, "-m", "guide_jax.train"] + [f"--gin_file={f}" for f in MICRO] + [
      f"--gin.MODEL_DIR='{tmp_path}/run'", "--gin.TRAIN_STPES=5"]
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0 and "unknown gin macro(s) ['TRAIN_STPES']" in proc.stderr, proc.stderr[-2000:]
  assert not (tmp_path / "run").exists()


def test_sweep_children_die_with_the_sweep(tmp_path):
  out = tmp_path / "sweep"
  gin_file = tmp_path / "s.gin"
  gin_file.write_text(f"""
from __gin__ import dynamic_registration
from guide_jax import sweep
sweep.sweep.output_dir = '{out}'
sweep.sweep.base = ['gin/runs/pretrain.gin', 'BATCH_SIZE = 4', 'SEQ_LEN = 32', 'CACHE_DIR = "{os.path.join(REPO, 'cache')}"']
sweep.sweep.teacher = ['gin/models/tiny_student.gin', 'TRAIN_STEPS = 100000']
sweep.sweep.student = ['gin/models/tiny_student.gin']
sweep.sweep.arms = {{'baseline': []}}
""")
  parent = subprocess.Popen([sys.executable, "-m", "guide_jax.sweep", f"--gin_file={gin_file}"], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  marker = str(out / "teacher")
  deadline = time.time() + 120
  child = None
  while time.time() < deadline and child is None:
    time.sleep(0.5)
    ps = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout.split()
    child = next((int(p) for p in ps if int(p) != parent.pid), None)
  assert child is not None, "the sweep never started its teacher run"
  parent.send_signal(signal.SIGKILL)
  parent.wait()
  deadline = time.time() + 30
  while time.time() < deadline:
    try:
      os.kill(child, 0)
    except ProcessLookupError:
      break
    time.sleep(0.2)
  else:
    os.kill(child, signal.SIGKILL)
    pytest.fail("the training child outlived its killed sweep")


def test_sigterm_saves_and_the_same_command_resumes(tmp_path):
  """A preempted VM or a sweep's time budget: SIGTERM -> the step finishes, is saved, exit 0."""
  bindings = micro_bindings(tmp_path, steps=100000, **{"config.CheckpointConfig.save_every": 100000})
  cmd = [sys.executable, "-m", "guide_jax.train"] + [f"--gin_file={f}" for f in MICRO] + [
      f"--gin_bindings={b}" for b in bindings]
  proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 120
  while time.time() < deadline and len(metrics.read_metrics(str(tmp_path), "train")) < 3:
    time.sleep(0.3)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=60)
  assert proc.returncode == 0, err[-2000:]
  saved = sorted(int(s) for s in os.listdir(tmp_path / "checkpoints"))
  assert len(saved) == 1 and saved[0] >= 3 and "SIGTERM: saved step" in err
  assert not (tmp_path / "results.json").exists()
  result = run_train(MICRO, micro_bindings(tmp_path, steps=saved[0] + 2))
  assert result["finished"] and result["step"] == saved[0] + 2
