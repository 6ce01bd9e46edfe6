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
