"""Multi-host: two CPU processes (jax.distributed, local coordinator) == one process, same global batch."""
import os
import socket
import subprocess

import numpy as np

from test_train import MICRO, REPO, losses, micro_bindings, run_train


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_match_one_process(tmp_path):
  bindings = micro_bindings(tmp_path / "two", steps=8, **{"train.train.num_devices": None})
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", PYTHONPATH=REPO,
             GUIDE_JAX_PYTHON=os.environ.get("GUIDE_JAX_PYTHON", __import__("sys").executable))
  cmd = ["bash", "launch/local_run.sh", "--num_processes", "2", "--port", str(_free_port()), "--"] + [
      f"--gin_file={f}" for f in MICRO] + [f"--gin_bindings={b}" for b in bindings]
  result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  assert "process 1 of 2, 2 global devices" in result.stdout + result.stderr
  run_train(MICRO, micro_bindings(tmp_path / "one", steps=8))
  two, one = losses(tmp_path / "two"), losses(tmp_path / "one")
  assert sorted(two) == sorted(one) == list(range(1, 9))
  np.testing.assert_allclose([two[s] for s in sorted(two)], [one[s] for s in sorted(one)], rtol=2e-5)
  # Checkpoints are written once, by the processes together: one complete step directory.
  assert sorted(os.listdir(tmp_path / "two" / "checkpoints")) == ["8"]


def test_two_process_guide_init_equals_one_process(tmp_path):
  """GUIDE on a mesh whose 'model' axis spans both processes == the same mesh in one process, and
  each process restores only its own shards of the teacher (about half of its bytes)."""
  teacher = _make_teacher(tmp_path / "teacher")
  extra = {"TEACHER_DIR": repr(str(teacher)), "train.train.model_parallel": 2}
  bindings = micro_bindings(tmp_path / "two", steps=4, **{"train.train.num_devices": None, **extra})
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", PYTHONPATH=REPO,
             GUIDE_JAX_PYTHON=os.environ.get("GUIDE_JAX_PYTHON", __import__("sys").executable))
  cmd = ["bash", "launch/local_run.sh", "--num_processes", "2", "--port", str(_free_port()), "--"] + [
      f"--gin_file={f}" for f in MICRO + ["gin/guide.gin"]] + [f"--gin_bindings={b}" for b in bindings]
  result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
  out = result.stdout + result.stderr
  assert result.returncode == 0, out[-4000:]
  import re
  held = [(int(p), int(m), int(t)) for p, m, t in
          re.findall(r"restored in shards: process (\d) holds (\d+) of (\d+) bytes", out)]
  assert sorted(p for p, _, _ in held) == [0, 1], out[-3000:]
  for _, mine, total in held:
    assert mine < 0.6 * total, held  # its shards (plus the small replicated norm scales), not all
  run_train(MICRO + ["gin/guide.gin"], micro_bindings(tmp_path / "one", steps=4, **{
      "train.train.num_devices": 2, **extra}))
  from guide_jax import metrics
  two = metrics.read_metrics(str(tmp_path / "two"), "eval")[0]["loss"]
  one = metrics.read_metrics(str(tmp_path / "one"), "eval")[0]["loss"]
  assert two == np.float32(one) or abs(two - one) <= 1e-5 * abs(one)  # the GUIDE start, compared
  np.testing.assert_allclose([losses(tmp_path / "two")[s] for s in range(1, 5)],
                             [losses(tmp_path / "one")[s] for s in range(1, 5)], rtol=2e-5)


def _make_teacher(model_dir):
  """A micro teacher (wider than the micro student, heads divisible by 2) trained for a few steps."""
  run_train(MICRO, micro_bindings(model_dir, steps=4, **{"config.ModelConfig.d_model": 48,
                                                          "config.ModelConfig.n_layers": 3}))
  return model_dir
