"""Nothing lost, nothing half-written, one clear error: checksums, the NaN guard, the run lock,
resume checks, teacher checks on every path, a full disk, unknown gin macros, sweep children.

Issue 26's cases, one test each (grep `case<NN>`): 01, 10, 11, 12, 15, 16 and 17 (gin) in
tests/test_checks.py; 05 in test_checks.py (optimizer settings); 07 and 17 (HF files) in
tests/test_importers.py; 08 in tests/test_tokenize_text.py; 13 in tests/test_convert.py; the others here.
"""
import errno
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from guide_jax import checkpoints, convert, metrics, model, runlock, teachers, train as train_lib
from guide_jax.config import ModelConfig
from guide_jax.transforms import guide_init
from test_train import MICRO, REPO, micro_bindings, run_train


def _meta_path(model_dir, step):
  return os.path.join(str(model_dir), "checkpoints", str(step), "meta", "metadata")


def test_case14_checksum_mismatch_names_array_and_step_and_older_step_restores(tmp_path):
  run_train(MICRO, micro_bindings(tmp_path, steps=20, **{"config.CheckpointConfig.save_every": 10,
                                                          "config.CheckpointConfig.keep": 3}))
  path = _meta_path(tmp_path, 20)
  meta = json.load(open(path))
  key = sorted(meta["checksums"]["params"])[3]
  meta["checksums"]["params"][key] = "deadbeef"  # what a flipped bit on disk looks like to restore
  json.dump(meta, open(path, "w"))
  with pytest.raises(ValueError, match=r"checkpoint step 20 .*params/.*does not match its saved checksum.*"
                                       r"restore an older step with --gin.config.CheckpointConfig.restore_step=10 "
                                       r"\(available: \[10\]\)"):
    run_train(MICRO, micro_bindings(tmp_path, steps=30))
  # A truncated array file and unreadable metadata name the same way out (before: no older-step hint).
  hint = r"restore an older step with --gin.config.CheckpointConfig.restore_step=10 \(available: \[10\]\)"
  manifest = tmp_path / "checkpoints" / "20" / "opt_state" / "manifest.ocdbt"
  manifest.write_bytes(manifest.read_bytes()[:manifest.stat().st_size // 2])
  with pytest.raises(checkpoints.CheckpointError, match=r"checkpoint step 20 .* is corrupt or incomplete.*" + hint):
    run_train(MICRO, micro_bindings(tmp_path, steps=30))
  with open(path, "w") as f:
    f.write("{not json")
  with pytest.raises(checkpoints.CheckpointError, match=r"checkpoint step 20 .* has unreadable metadata.*" + hint):
    run_train(MICRO, micro_bindings(tmp_path, steps=30))
  # The way out the messages name: resume from the older step.
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


def _lease(host="other-host", pid=4242, age=20.0, **extra):
  now = time.time()
  return json.dumps({"holder": "someone", "host": host, "pid": pid, "started": now - 3600, "beat": now - age,
                     **extra})


def test_run_lease_refuses_a_fresh_holder_saying_how_old_it_is(tmp_path):
  lock = tmp_path / runlock.LOCK_FILE
  lock.write_text(_lease(age=20))
  with pytest.raises(runlock.RunLockedError, match=r"in use by pid 4242 on other-host .*last heartbeat 2\d s "
                                                    r"ago, lease timeout 300 s"):
    with runlock.hold(str(tmp_path)):
      pass
  with pytest.raises(runlock.RunLockedError, match="in use by pid 4242"):
    run_train(MICRO, micro_bindings(tmp_path, steps=2))
  assert json.loads(lock.read_text())["holder"] == "someone"  # refused: left as it was


def test_run_lease_of_a_preempted_job_is_taken_over_after_the_timeout(tmp_path):
  """A rescheduled job (new VM, or the same host name in a new container whose pid 1 is alive) takes
  over a lease whose heartbeat stopped: no person has to delete .lock (the pid is not checked)."""
  lock = tmp_path / runlock.LOCK_FILE
  lock.write_text(_lease(host=socket.gethostname(), pid=1, age=400, pid_ns="pid:[1]", boot_id="other-boot"))
  with runlock.hold(str(tmp_path)):
    assert json.loads(lock.read_text())["pid"] == os.getpid()
  assert not lock.exists()
  lock.write_text(_lease(age=31))  # the timeout is a gin knob
  result = run_train(MICRO, micro_bindings(tmp_path, steps=2, **{"config.CheckpointConfig.lock_timeout_s": 30}))
  assert result["finished"] and not lock.exists()


def test_run_lease_of_a_dead_local_process_is_stale_at_once(tmp_path):
  dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                            text=True).stdout.strip())
  lease = runlock.Lease(str(tmp_path))
  mine = json.loads(_lease(host=socket.gethostname(), pid=dead, age=5, **runlock._namespace()))
  (tmp_path / runlock.LOCK_FILE).write_text(json.dumps(mine))
  lease.acquire()  # same host, boot and pid namespace, pid gone: no wait for the timeout
  lease.release()
  assert not (tmp_path / runlock.LOCK_FILE).exists()


def test_run_lease_heartbeat_and_takeover_detection(tmp_path):
  lock = tmp_path / runlock.LOCK_FILE
  with runlock.hold(str(tmp_path), timeout_s=5) as lease:
    first = json.loads(lock.read_text())["beat"]
    time.sleep(1.3)  # beats every timeout / 10 = 0.5 s
    assert json.loads(lock.read_text())["beat"] > first
    lease.check()
    with pytest.raises(runlock.RunLockedError, match="last heartbeat 0 s ago"):
      runlock.Lease(str(tmp_path), timeout_s=5).acquire()
    lock.write_text(_lease(age=0))  # another run took it over (e.g. this one hung past the timeout)
    time.sleep(1.0)
    with pytest.raises(runlock.LeaseLostError, match="taken over by another run"):
      lease.check()
  assert json.loads(lock.read_text())["holder"] == "someone"  # a lost lease is not deleted on exit


def test_resume_skips_incomplete_step_dirs_and_replayed_steps_replace_their_metrics(tmp_path, caplog):
  """Before: an empty step directory (an interrupted copy) crashed resume with an unclear trace, and
  metrics.jsonl held two records for every step replayed since the last checkpoint."""
  bindings = micro_bindings(tmp_path, steps=10, **{"config.CheckpointConfig.save_every": 4,
                                                   "config.CheckpointConfig.keep": 3})
  run_train(MICRO, bindings)
  ckpt = tmp_path / "checkpoints"
  shutil.rmtree(ckpt / "10")
  (ckpt / "10").mkdir()  # the last step, emptied (a copy interrupted before its files)
  (ckpt / "12" / "params").mkdir(parents=True)  # something else's half-written step
  (tmp_path / "results.json").unlink()
  with caplog.at_level("WARNING"):
    result = run_train(MICRO, bindings)
  assert result["finished"] and result["step"] == 10
  for step in ("10", "12"):
    assert f"skipping {ckpt / step}: not a complete checkpoint" in caplog.text
  assert sorted(n.split("-")[0] for n in os.listdir(tmp_path / "checkpoints-skipped")) == ["10", "12"]
  lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in lines if r["kind"] == "train"] == list(range(1, 11))  # 9, 10 replayed once
  assert [r["step"] for r in lines if r["kind"] == "eval"] == [0, 10]


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


def test_a_real_full_disk_ends_the_log_with_the_cause(tmp_path):
  """Before: orbax's pending coroutines, collected at shutdown, ended the log in an unrelated
  `ImportError: sys.meta_path is None` below the cause."""
  disk = tmp_path / "disk"
  disk.mkdir()
  if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)], capture_output=True).returncode:
    pytest.skip("cannot mount a small tmpfs here (needs root)")
  try:
    cmd = [sys.executable, "-m", "guide_jax.train"] + [f"--gin_file={f}" for f in MICRO] + [
        f"--gin_bindings={b}" for b in micro_bindings(disk / "run", steps=8, **{
            "config.CheckpointConfig.save_every": 4, "config.ModelConfig.d_model": 64})]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
  finally:
    subprocess.run(["umount", str(disk)], check=True)
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert re.match(r"guide_jax.train: error: disk full while writing checkpoint step \d+ to .*: free space and "
                  r"rerun to (resume from step \d+ \(left intact\)|start again)", lines[-1]), lines[-5:]
  assert "ImportError" not in proc.stderr


def _prepared_copy(tmp_path):
  from guide_jax.data import prepare, prepared
  from test_train import CACHE
  path = tmp_path / "data"
  shutil.copytree(prepare.prepared_dir_for("shakespeare", CACHE, 2048), path)
  return path, json.loads((path / prepared.MANIFEST).read_text())


def test_a_changed_shard_byte_is_refused_when_the_run_starts(tmp_path):
  """Before: one changed byte (size kept) trained to finished: true without a warning."""
  from guide_jax.data import prepared
  data, manifest = _prepared_copy(tmp_path)
  shard = data / manifest["splits"]["train"]["shards"][0]["file"]
  raw = bytearray(shard.read_bytes())
  raw[-2] ^= 0x01  # the high byte of the last token: ids stay < vocab_size, only the hash sees it
  shard.write_bytes(bytes(raw))
  with pytest.raises(prepared.PreparedDataError, match=f"shard {shard} has sha256 .* changed since prepare"):
    run_train(MICRO, micro_bindings(tmp_path / "run", steps=2, DATA_DIR=repr(str(data))))
  assert not (tmp_path / "run").exists()
  result = run_train(MICRO, micro_bindings(tmp_path / "run", steps=2, DATA_DIR=repr(str(data)),
                                           **{"config.DataConfig.verify_data": False}))
  assert result["finished"]  # the knob skips the hash check, at the risk its doc names


def test_token_ids_beyond_the_vocabulary_are_named_as_bad_data(tmp_path):
  """Before: ids >= vocab_size (or an edited manifest vocab_size) ended in 'non-finite loss ...
  lower the learning rate'."""
  from guide_jax.data import prepared
  data, manifest = _prepared_copy(tmp_path)
  # Old data (no recorded largest id) whose shard holds an id >= vocab_size, hash updated to match.
  entry = manifest["splits"]["train"]["shards"][0]
  tokens = np.load(data / entry["file"])
  tokens[5] = 2048 + 7
  np.save(data / entry["file"], tokens)
  entry["sha256"] = fileio_sha(data / entry["file"])
  for split in manifest["splits"].values():
    split.pop("max_id", None)
  (data / prepared.MANIFEST).write_text(json.dumps(manifest))
  with pytest.raises(prepared.PreparedDataError, match="has token id 2055 >= vocab_size 2048.*bad data, not a "
                                                       "training problem"):
    run_train(MICRO, micro_bindings(tmp_path / "run", steps=2, DATA_DIR=repr(str(data))))
  # A manifest whose vocab_size was edited below the largest id prepare recorded.
  manifest["splits"]["train"]["max_id"] = 2055
  manifest["vocab_size"] = 1024
  (data / prepared.MANIFEST).write_text(json.dumps(manifest))
  with pytest.raises(prepared.PreparedDataError, match=r"holds token id 2055, outside \[0, vocab_size=1024\)"):
    run_train(MICRO, micro_bindings(tmp_path / "run", steps=2, DATA_DIR=repr(str(data)), VOCAB_SIZE=1024))


def fileio_sha(path):
  from guide_jax import fileio
  return fileio.sha256_file(str(path))


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


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_case18_sigterm_or_ctrl_c_saves_exits_75_and_the_same_command_resumes(tmp_path, sig):
  """A preempted VM or a sweep's time budget (SIGTERM), or Ctrl-C (SIGINT; before: a traceback,
  nothing saved): the step finishes, is saved, exit 75 (EX_TEMPFAIL: saved, not finished;
  launch/tpu_run.sh --restart_on_preemption reruns on it)."""
  bindings = micro_bindings(tmp_path, steps=100000, **{"config.CheckpointConfig.save_every": 100000})
  cmd = [sys.executable, "-m", "guide_jax.train"] + [f"--gin_file={f}" for f in MICRO] + [
      f"--gin_bindings={b}" for b in bindings]
  proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 120
  while time.time() < deadline and len(metrics.read_metrics(str(tmp_path), "train")) < 3:
    time.sleep(0.3)
  proc.send_signal(sig)
  _, err = proc.communicate(timeout=60)
  assert proc.returncode == train_lib.EXIT_NOT_FINISHED == 75, err[-2000:]
  saved = sorted(int(s) for s in os.listdir(tmp_path / "checkpoints"))
  assert len(saved) == 1 and saved[0] >= 3 and f"{sig.name}: saved step" in err
  assert not (tmp_path / "results.json").exists()
  result = run_train(MICRO, micro_bindings(tmp_path, steps=saved[0] + 2))
  assert result["finished"] and result["step"] == saved[0] + 2


# ------------------------------------------------------------------------------ issue 26, cases 2-9
@pytest.fixture(scope="module")
def micro_teacher(tmp_path_factory):
  """A teacher of the micro student's own shape, trained 2 steps on the built-in data."""
  path = tmp_path_factory.mktemp("micro_teacher")
  run_train(MICRO, micro_bindings(path, steps=2))
  return path


def _other_tokenizer(path):
  """Re-prepares prepared dir `path` in place as another tokenizer of the same vocabulary size would:
  the vocabulary's normal pieces permuted (vocab.model rewritten) and every id mapped to match, so
  the text is the same and the ids are not. Hashes and the manifest updated: intact, other data."""
  from guide_jax import fileio
  from guide_jax.data import prepared
  from sentencepiece import sentencepiece_model_pb2
  manifest = json.loads((path / prepared.MANIFEST).read_text())
  vocab = path / manifest["vocab"]["file"]
  proto = sentencepiece_model_pb2.ModelProto()
  proto.ParseFromString(vocab.read_bytes())
  normal = np.array([i for i, p in enumerate(proto.pieces) if p.type == p.NORMAL])
  perm = np.arange(len(proto.pieces))  # the new id of old id i
  perm[normal] = np.random.default_rng(0).permutation(normal)
  old = [type(p)() for p in proto.pieces]
  for copy, piece in zip(old, proto.pieces):
    copy.CopyFrom(piece)
  for i, piece in enumerate(old):
    proto.pieces[int(perm[i])].CopyFrom(piece)
  vocab.write_bytes(proto.SerializeToString())
  manifest["vocab"]["sha256"] = fileio.sha256_file(str(vocab))
  for split in manifest["splits"].values():
    for shard in split["shards"]:
      file = path / shard["file"]
      np.save(file, perm[np.load(file)].astype(np.load(file, mmap_mode="r").dtype))
      shard.update(sha256=fileio.sha256_file(str(file)), bytes=file.stat().st_size)
    split["max_id"] = int(perm.max())
  (path / prepared.MANIFEST).write_text(json.dumps(manifest))


def test_case02_restore_step_is_a_one_shot_rollback(tmp_path):
  """Before: restore_step=10 left in a preemptible job's command rolled back to 10 on every rerun,
  deleting the steps it had made since (a job that never got past it)."""
  run_train(MICRO, micro_bindings(tmp_path, steps=15, **{"config.CheckpointConfig.save_every": 5,
                                                         "config.CheckpointConfig.keep": 5}))
  (tmp_path / "results.json").unlink()
  rollback = micro_bindings(tmp_path, steps=30, **{"config.CheckpointConfig.save_every": 5, "train.train.stop_after": 4,
                                                   "config.CheckpointConfig.restore_step": 10})
  steps = lambda: sorted(int(s) for s in os.listdir(tmp_path / "checkpoints"))
  assert run_train(MICRO, rollback)["step"] == 14  # rolled back to 10 (step 15 dropped), 4 steps, preempted
  assert steps() == [10, 14]  # keep=2
  assert run_train(MICRO, rollback)["step"] == 18  # the same command again: continues from its own step 14
  assert steps() == [15, 18]
  assert run_train(MICRO, rollback)["step"] == 22  # and again, with step 10 itself gone (keep)
  history = checkpoints.read_meta(str(tmp_path))["history"]
  assert history == [{"event": "rollback", "step": 10, "dropped": [15]}]


def test_case03_resuming_kd_with_another_teacher_or_retokenized_data_is_refused(tmp_path, micro_teacher):
  """Before: another TEACHER_DIR (same shape, other weights) or DATA_DIR re-prepared with another
  tokenizer at the same path resumed without a word, and results.json named no teacher."""
  other = tmp_path / "other_teacher"  # the same shape, other weights
  shutil.copytree(micro_teacher, other)
  params, config = checkpoints.load_params(str(other))
  checkpoints.save(checkpoints.manager(str(other), params_only=True), 3,
                   jax.tree_util.tree_map(lambda x: np.asarray(x) * 1.01, params), None, config, force=True,
                   extra={"tokenizer": checkpoints.read_meta(str(micro_teacher))["tokenizer"]})
  kd = lambda teacher, **extra: run_train(MICRO + ["gin/kd.gin"], micro_bindings(
      tmp_path / "kd", steps=4, TEACHER_DIR=repr(str(teacher)), **extra))
  kd(micro_teacher, **{"train.train.stop_after": 2})
  with pytest.raises(ValueError, match=r"started with other settings \(step 2\): kd_teacher: checkpoint "
                                       r"'[0-9a-f]{64}' != this run '[0-9a-f]{64}'"):
    kd(other)
  result = kd(other, **{"config.CheckpointConfig.allow_changed_run": True})
  fingerprint = teachers.load(str(other), None).identity["fingerprint"]
  assert result["finished"] and result["teachers"]["kd"]["fingerprint"] == result["kd_teacher"] == fingerprint
  assert result["history"][0]["settings"]["kd_teacher"][1] == fingerprint
  assert json.loads((tmp_path / "kd" / "results.json").read_text())["data_sha256"] == result["data_sha256"]

  data, _ = _prepared_copy(tmp_path)
  plain = lambda **extra: run_train(MICRO, micro_bindings(tmp_path / "plain", steps=4, DATA_DIR=repr(str(data)),
                                                          **extra))
  plain(**{"train.train.stop_after": 2})
  _other_tokenizer(data)  # re-prepared at the same path with another tokenizer of the same size
  with pytest.raises(ValueError, match=r"started with other settings \(step 2\): tokenizer: checkpoint .*"
                                       r"'sha256': '[0-9a-f]{64}'.* != this run .*data_sha256"):
    plain()


def test_case04_a_teacher_of_another_tokenizer_with_the_same_vocab_size_is_refused(tmp_path, micro_teacher):
  """Before: only vocab_size was compared, so GUIDE / KD from a teacher whose ids mean other tokens
  trained on. Every teacher checkpoint carries its data's tokenizer identity (a guide_jax run, and
  what convert writes from it: guide_jax and t5x), compared with the run's data."""
  from guide_jax.data import hf_tokenizer
  data, _ = _prepared_copy(tmp_path)
  _other_tokenizer(data)
  recorded = checkpoints.read_meta(str(micro_teacher))["tokenizer"]
  assert recorded["kind"] == "vocab_file" and recorded["vocab_size"] == 2048
  model_dir = tmp_path / "run"
  for files in (["gin/guide.gin"], ["gin/kd.gin"]):
    with pytest.raises(hf_tokenizer.TokenizerError, match=f"data {data} was tokenized by another tokenizer than "
                                                          f"teacher .*{micro_teacher}.*sha256"):
      run_train(MICRO + files, micro_bindings(model_dir, steps=2, TEACHER_DIR=repr(str(micro_teacher)),
                                              DATA_DIR=repr(str(data))))
    assert not model_dir.exists()
  config = checkpoints.read_config(str(micro_teacher))[0]
  for fmt in ("guide_jax", "t5x"):
    out = convert.convert(str(micro_teacher), config, str(tmp_path / fmt), output_format=fmt)["output_dir"]
    found = teachers.describe(teachers.Source(out, config=config if fmt == "t5x" else None))
    assert teachers.tokenizer(found) == recorded
  with pytest.raises(hf_tokenizer.TokenizerError, match=f"another tokenizer than the start {tmp_path / 'guide_jax'}"):
    run_train(MICRO + ["gin/init_params.gin"], micro_bindings(model_dir, steps=2, DATA_DIR=repr(str(data)),
                                                              INIT_PARAMS_DIR=repr(str(tmp_path / "guide_jax"))))


def test_case06_a_changed_batch_counts_true_tokens_and_records_the_change(tmp_path):
  """Before: BATCH_SIZE 4 -> 2 at step 4 (allow_changed_run) reported 8 x 2 x 32 tokens seen."""
  run_train(MICRO, micro_bindings(tmp_path, steps=8, **{"train.train.stop_after": 4}))
  result = run_train(MICRO, micro_bindings(tmp_path, steps=8, BATCH_SIZE=2, **{
      "config.CheckpointConfig.allow_changed_run": True}))
  assert result["finished"] and result["tokens_seen"] == 4 * 4 * 32 + 4 * 2 * 32
  history = [{"event": "changed", "step": 4, "settings": {"batch_size": [4, 2]}}]
  assert result["history"] == history
  meta = checkpoints.read_meta(str(tmp_path))
  assert (meta["step"], meta["tokens_seen"], meta["history"]) == (8, result["tokens_seen"], history)


def test_case09_every_teacher_check_comes_before_any_data_work(tmp_path, micro_teacher, monkeypatch):
  """Before: a NaN or wrong-vocabulary teacher was refused only after the corpus was downloaded,
  tokenized and hashed. Now the data code is never reached."""
  from guide_jax.data import prepare, prepared

  def data_work(*args, **kwargs):
    raise AssertionError("data work before the teacher checks")
  for module, name in ((prepare, "ensure_prepared"), (prepared, "read_manifest"), (prepared, "load_prepared")):
    monkeypatch.setattr(module, name, data_work)
  nan = tmp_path / "nan"
  params, config = checkpoints.load_params(str(micro_teacher))
  params = jax.tree_util.tree_map(np.array, params)
  params["decoder"]["layers_0"]["mlp"]["wo"]["kernel"][1, 2] = np.nan
  checkpoints.save(checkpoints.manager(str(nan), params_only=True), 0, params, None, config, force=True)
  wide = tmp_path / "wide"  # another vocabulary
  wide_config = config.replace(vocab_size=4096)
  checkpoints.save(checkpoints.manager(str(wide), params_only=True), 0,
                   model.init_params(wide_config, jax.random.PRNGKey(0)), None, wide_config, force=True)
  for files, teacher, match in ((["gin/guide.gin"], nan, "NaN or Inf in: decoder/layers_0/mlp/wo/kernel"),
                                (["gin/kd.gin"], nan, "NaN or Inf"),
                                (["gin/guide.gin", "gin/kd.gin"], wide, "teacher vocab_size 4096 != student 2048")):
    with pytest.raises(ValueError, match=match):
      run_train(MICRO + files, micro_bindings(tmp_path / "run", steps=2, TEACHER_DIR=repr(str(teacher))))
    assert not (tmp_path / "run").exists()
