"""Every path a pod uses, on gs:// against a real GCS JSON API on loopback (fake-gcs-server, started
here; tests/gcs_emulator.py): train saves, is killed with SIGKILL and resumes step-exact; the run
lease on object storage; GUIDE from a gs:// teacher; prepared data read from gs://; an unwritable
MODEL_DIR fails before any compute; the sweep writes its tables there."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import gcs_emulator
from guide_jax import checkpoints, convert, fileio, metrics, runlock
from guide_jax.data import prepare, prepared
from test_train import CACHE, MICRO, REPO, losses, micro_bindings, run_train

pytest.importorskip("gcsfs")
pytest.importorskip("google.cloud.storage")


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
  """The emulator with bucket 'bkt'; every client of this process (and its children) pointed at it."""
  with gcs_emulator.running(["bkt"], log_dir=str(tmp_path_factory.mktemp("gcs"))) as env:
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
      yield env
    finally:
      for k, v in saved.items():
        if v is None:
          os.environ.pop(k, None)
        else:
          os.environ[k] = v


def _objects(prefix):
  """Object names under gs://bkt/<prefix>, listed by a fresh google-cloud-storage client."""
  from guide_jax import gcs as gcs_lib
  return sorted(b.name for b in gcs_lib._client(os.environ["STORAGE_EMULATOR_HOST"]).list_blobs(
      "bkt", prefix=prefix))


def _cli(bindings, extra_env=None):
  return [sys.executable, "-m", "guide_jax.train"] + [f"--gin_file={f}" for f in MICRO] + [
      f"--gin_bindings={b}" for b in bindings]


def test_train_into_gcs_is_killed_and_resumes_step_exact(gcs, tmp_path):
  steps = 30
  run_train(MICRO, micro_bindings(tmp_path / "reference", steps=steps))
  run = "gs://bkt/killed"
  cmd = _cli(micro_bindings(run, steps=steps))
  env = dict(os.environ, PYTHONPATH=REPO)
  proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while "killed/checkpoints/10/commit_success.txt" not in _objects("killed/checkpoints/10/"):
    assert proc.poll() is None, "run ended before it could be killed"
    assert time.time() < deadline
    time.sleep(0.2)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not any(n.endswith("results.json") for n in _objects("killed/")), "killed mid-run"
  assert not os.path.exists(os.path.join(REPO, "gs:")), "nothing written to a local ./gs:/ directory"
  result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "resumed gs://bkt/killed at step" in result.stderr
  assert losses(run) == losses(tmp_path / "reference")  # every step, bit for bit, no duplicates
  lines = fileio.read_text(f"{run}/metrics.jsonl").splitlines()
  train_steps = [json.loads(l)["step"] for l in lines if json.loads(l)["kind"] == "train"]
  assert train_steps == list(range(1, steps + 1))  # replayed steps replaced, not repeated
  saved = json.loads(fileio.read_text(f"{run}/results.json"))
  assert saved["finished"] and saved["eval_loss"] == json.load(open(tmp_path / "reference" / "results.json"))[
      "eval_loss"]
  assert any("/tb/events.out.tfevents" in n for n in _objects("killed/tb/"))
  assert _objects("killed/.lock") == []  # released at the end


def test_unwritable_model_dir_fails_before_any_compute(gcs, tmp_path):
  """Before: two steps trained, then a crash at the first save (or a local ./gs:/ directory)."""
  blocker = tmp_path / "file"
  blocker.write_text("x")
  for model_dir, name in (("gs://no-such-bucket/run", "gs://no-such-bucket/run"),
                          (str(blocker / "run"), str(blocker / "run"))):
    result = subprocess.run(_cli(micro_bindings(model_dir, steps=2)), cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr[-2000:]
    errors = [l for l in result.stderr.splitlines() if "error" in l.lower() and not l.startswith(" ")]
    assert errors == [f"guide_jax.train: error: MODEL_DIR {name} is not writable: " + errors[0].split(
        "is not writable: ")[1]], result.stderr[-2000:]
    assert "step 1 |" not in result.stderr and "Traceback" not in result.stderr
  assert not os.path.exists(os.path.join(REPO, "gs:"))


def test_gcs_lease_refuses_a_second_writer_and_takes_over_a_stale_one(gcs):
  d = "gs://bkt/leased"
  first = runlock.Lease(d, timeout_s=60)
  first.acquire()
  with pytest.raises(runlock.RunLockedError, match=r"in use by pid \d+ on .*last heartbeat 0 s ago"):
    runlock.Lease(d, timeout_s=60).acquire()
  first.beat()
  first.check()
  # The holder's VM is gone: its heartbeat stops. A run with a short timeout sees it stale.
  time.sleep(1.2)
  taker = runlock.Lease(d, timeout_s=1)
  taker.acquire()
  assert json.loads(fileio.read_text(f"{d}/.lock"))["holder"] == taker._me["holder"]
  first.beat()  # the old holder wakes up: its precondition fails, it must stop writing
  with pytest.raises(runlock.LeaseLostError):
    first.check()
  first.release()  # a lost lease is not deleted
  assert json.loads(fileio.read_text(f"{d}/.lock"))["holder"] == taker._me["holder"]
  # Two takers of one stale lease: the create-if-absent / generation precondition lets one win.
  store = runlock._Store(f"{d}/.lock")
  _, token = store.read()
  assert store.swap({"holder": "a", "beat": 0}, token) is not None
  assert store.swap({"holder": "b", "beat": 0}, token) is None
  assert store.create({"holder": "c"}) is None  # exists: create-if-absent refuses


def test_guide_from_a_gcs_teacher_and_prepared_data_from_gcs(gcs, tmp_path):
  teacher = {"config.ModelConfig.d_model": 48, "config.ModelConfig.n_layers": 3}
  run_train(MICRO, micro_bindings("gs://bkt/teacher", steps=4, **teacher))
  run_train(MICRO, micro_bindings(tmp_path / "teacher", steps=4, **teacher))
  assert losses("gs://bkt/teacher") == losses(tmp_path / "teacher")
  # The prepared data the micro runs use, uploaded to the bucket.
  local_data = prepare.prepared_dir_for("shakespeare", CACHE, 2048)
  for name in os.listdir(local_data):
    fileio.copy(os.path.join(local_data, name), f"gs://bkt/data/{name}")
  stage = tmp_path / "cache"
  bindings = dict(DATA_DIR=repr("gs://bkt/data"), CACHE_DIR=repr(str(stage)))
  run_train(MICRO + ["gin/guide.gin"], micro_bindings("gs://bkt/student", steps=4, TEACHER_DIR=repr(
      "gs://bkt/teacher"), **bindings))
  run_train(MICRO + ["gin/guide.gin"], micro_bindings(tmp_path / "student", steps=4, TEACHER_DIR=repr(
      str(tmp_path / "teacher"))))
  assert losses("gs://bkt/student") == losses(tmp_path / "student")
  # convert: a gs:// teacher to a gs:// student checkpoint, equal to the local conversion.
  teacher_config, _ = checkpoints.read_config("gs://bkt/teacher")
  student = teacher_config.replace(d_model=32, n_layers=2)
  convert.convert("gs://bkt/teacher", student, "gs://bkt/converted")
  convert.convert(str(tmp_path / "teacher"), student, str(tmp_path / "converted"))
  remote, _ = checkpoints.load_params("gs://bkt/converted")
  local, _ = checkpoints.load_params(str(tmp_path / "converted"))
  assert checkpoints.checksums(remote) == checkpoints.checksums(local)
  assert "converted/guide_info.json" in _objects("converted/")
  with pytest.raises(ValueError, match="already holds checkpoints"):
    convert.convert("gs://bkt/teacher", student, "gs://bkt/converted")
  staged = stage / "staged" / "bkt" / "data"
  assert sorted(os.listdir(staged)) == sorted(os.listdir(local_data))  # staged once, locally
  # A byte changed on the bucket (size kept): the hash check at the start names the shard.
  shard = prepared.shard_name("train", 0)
  raw = bytearray(open(os.path.join(local_data, shard), "rb").read())
  raw[-3] ^= 0xFF
  fileio.atomic_write_bytes(f"gs://bkt/bad/{shard}", bytes(raw))
  for name in os.listdir(local_data):
    if name != shard:
      fileio.copy(os.path.join(local_data, name), f"gs://bkt/bad/{name}")
  with pytest.raises(prepared.PreparedDataError, match=f"shard gs://bkt/bad/{shard} has sha256 .* changed"):
    prepared.load_prepared("gs://bkt/bad", verify=True, stage_root=str(tmp_path / "cache2"))


def test_sweep_writes_its_runs_and_tables_to_gcs(gcs, tmp_path):
  gin_file = tmp_path / "s.gin"
  gin_file.write_text(f"""
from __gin__ import dynamic_registration
from guide_jax import sweep
sweep.sweep.output_dir = 'gs://bkt/sweep'
sweep.sweep.base = ['gin/runs/pretrain.gin', 'BATCH_SIZE = 4', 'SEQ_LEN = 32', "CACHE_DIR = '{CACHE}'",
                    'config.DataConfig.eval_max_batches = 2', 'train.train.num_devices = 1']
sweep.sweep.teacher = ['gin/models/tiny_student.gin', 'TRAIN_STEPS = 3']
sweep.sweep.student = ['gin/models/tiny_student.gin', 'TRAIN_STEPS = 3']
sweep.sweep.arms = {{'baseline': []}}
""")
  result = subprocess.run([sys.executable, "-m", "guide_jax.sweep", f"--gin_file={gin_file}"], cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True, timeout=500)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
  names = _objects("sweep/")
  for name in ("sweep/results.json", "sweep/results.md", "sweep/results.png", "sweep/teacher/results.json",
               "sweep/baseline/seed_0/results.json", "sweep/baseline/seed_0/train.log"):
    assert name in names, names
  summary = json.loads(fileio.read_text("gs://bkt/sweep/results.json"))
  assert summary["arms"][0]["tokens_seen"] == 3 * 4 * 32
  assert np.isfinite(summary["teacher_ppl"])
  assert metrics.read_metrics("gs://bkt/sweep/baseline/seed_0", "eval")
