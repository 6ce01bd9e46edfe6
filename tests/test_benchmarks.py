"""benchmarks/pca.py and benchmarks/train.py: --smoke runs (as subprocesses, in parallel) print their
figures, ratios and goal lines, exit 0 and write the JSON they promise; plus the shared helpers."""
import json
import math
import os
import subprocess
import sys

import pytest

from benchmarks import common

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 240


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
  """Start both smoke benchmarks at once (2 XLA host devices, so the PCA mesh is really sharded)."""
  out = tmp_path_factory.mktemp("bench")
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
             XLA_FLAGS="--xla_force_host_platform_device_count=2")
  procs = {}
  for name in ("pca", "train"):
    json_path = str(out / f"{name}.json")
    cmd = [sys.executable, "-m", f"benchmarks.{name}", "--smoke", f"--json_out={json_path}"]
    procs[name] = (subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True), json_path)
  results = {}
  for name, (proc, json_path) in procs.items():
    try:
      stdout, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
      proc.kill()
      stdout, _ = proc.communicate()
    data = None
    if os.path.exists(json_path):
      with open(json_path) as f:
        data = json.load(f)
    results[name] = {"rc": proc.returncode, "stdout": stdout, "json": data, "dir": str(out)}
  return results


def _positive(x):
  return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_pca_smoke_prints_figures_and_goals(smoke_runs):
  run = smoke_runs["pca"]
  assert run["rc"] == 0, run["stdout"][-4000:]
  out = run["stdout"]
  for method in ("ours", "limit", "limit_full", "svd", "sklearn", "numpy"):
    assert f"  {method} " in out, f"no timing line for {method}:\n{out}"
  assert "TFLOP/s" in out and "2*V*d^2" in out and "9*d^3" in out and "2*V*d*k" in out
  assert "ours/limit=" in out and "sklearn/ours=" in out
  for goal in ("GOAL PCA ratio to limit", "GOAL PCA speedup vs sklearn", "GOAL guide_init seconds",
               "GOAL guide_init peak memory", "GOAL guide_init compiled per-device memory"):
    assert goal in out, f"missing {goal!r}:\n{out}"
  assert "guide_init tiny" in out and "peak memory" in out


def test_pca_smoke_json(smoke_runs):
  data = smoke_runs["pca"]["json"]
  assert data is not None, smoke_runs["pca"]["stdout"][-4000:]
  assert data["benchmark"] == "pca" and "CPU" in data["device"]
  assert "--smoke" in data["command"]
  for key in ("pca_ratio_to_limit", "pca_speedup_vs_sklearn", "guide_init_s", "guide_init_warm_s",
              "pca_ratio_to_limit_full"):
    assert _positive(data[key]), (key, data[key])
  assert _positive(data["guide_init_memory_ratio"])  # Linux: /proc/self/status
  size = data["sizes"][0]
  assert set(size["seconds"]) == {"ours", "limit", "limit_full", "svd", "sklearn", "numpy"}
  assert all(_positive(t) for t in size["tflops"].values())
  assert size["ratios"]["ours/limit"] == pytest.approx(data["pca_ratio_to_limit"])
  assert size["check_eigenvalue_max_rel_diff_vs_limit"] < 1e-3
  assert data["guide_init"]["explained_variance"] > 0
  assert len(data["goals"]) == 5
  gi = data["guide_init"]  # the compiled program's per-device memory against the bound
  assert 0 < gi["compiled_per_device_bytes"] <= gi["compiled_bound_bytes"]
  # Atomic write: nothing left behind but the two JSON files.
  assert sorted(os.listdir(smoke_runs["pca"]["dir"])) == ["pca.json", "train.json"]


def test_train_smoke_prints_figures(smoke_runs):
  run = smoke_runs["train"]
  assert run["rc"] == 0, run["stdout"][-4000:]
  out = run["stdout"]
  assert "tokens/s" in out and "MFU" in out and "6*N_matmul + 12*n*h*l*T" in out
  assert "peak" in out and "measured in this run" in out  # CPU: peak measured by a matmul
  assert "student  step" in out and "kd       step" in out
  assert "KD cost: measured step-time ratio" in out and "FLOP-predicted" in out


def test_train_smoke_json(smoke_runs):
  data = smoke_runs["train"]["json"]
  assert data is not None, smoke_runs["train"]["stdout"][-4000:]
  assert data["benchmark"] == "train" and "CPU" in data["device"]
  assert _positive(data["mfu"]) and _positive(data["mfu_kd"]) and _positive(data["peak_tflops"])
  assert _positive(data["kd_cost_ratio"]) and _positive(data["kd_cost_vs_predicted"])
  s_fpt, t_fpt = data["student_train_flops_per_token"], data["teacher_forward_flops_per_token"]
  assert data["kd_flops_ratio_predicted"] == pytest.approx((s_fpt + t_fpt) / s_fpt)
  for name in ("student", "kd"):
    rec = data["results"][name]
    assert rec["loss_finite"] and _positive(rec["tokens_per_s"]) and _positive(rec["step_s"])
    assert rec["tokens_per_s"] == pytest.approx(data["batch"] * data["seq"] / rec["step_s"])
  assert data["results"]["student"]["mfu"] == pytest.approx(
      data["results"]["student"]["tokens_per_s"] * s_fpt / (data["peak_tflops"] * 1e12))


def test_model_config_from_gin_files():
  tiny = common.model_config("tiny_student")
  assert (tiny.d_model, tiny.n_layers, tiny.n_heads, tiny.head_dim, tiny.mlp_dim, tiny.vocab_size) == (
      96, 2, 2, 48, 256, 2048)
  s400 = common.model_config("student_400m")
  assert s400.vocab_size == 32768 and s400.dtype == "bfloat16" and s400.remat == "dots"
  assert common.model_config("student_400m", remat="none", dtype=None).remat == "none"
  custom = common.model_config("tiny_teacher:n_layers=1,dtype=bfloat16", vocab_size=512)
  assert (custom.n_layers, custom.dtype, custom.vocab_size, custom.d_model) == (1, "bfloat16", 512, 192)
  explicit = common.model_config("d_model=8,n_layers=1,n_heads=2,head_dim=4,mlp_dim=16", vocab_size=64)
  assert explicit.d_model == 8 and explicit.vocab_size == 64
  quarter = common.scaled(common.model_config("teacher_7b"), 4)
  assert (quarter.d_model, quarter.n_layers, quarter.n_heads, quarter.head_dim, quarter.mlp_dim) == (
      1024, 8, 8, 128, 2752)
  with pytest.raises(ValueError, match="unknown model"):
    common.model_config("no_such_model")


def test_write_json_atomic(tmp_path):
  path = tmp_path / "sub" / "x.json"
  common.write_json_atomic(str(path), {"a": 1.5})
  common.write_json_atomic(str(path), {"a": 2})
  assert json.loads(path.read_text()) == {"a": 2}
  assert os.listdir(path.parent) == ["x.json"]


def test_report_merges_the_smoke_outputs(smoke_runs, tmp_path):
  from benchmarks import report
  pca, train = smoke_runs["pca"]["json"], smoke_runs["train"]["json"]
  merged = report.merge(pca, train)
  assert merged["device"] == pca["device"]
  assert merged["pca_ratio_to_limit"] == pca["pca_ratio_to_limit"]
  assert merged["pca_speedup_vs_sklearn"] == pca["pca_speedup_vs_sklearn"]
  assert merged["guide_init_s"] == pca["guide_init_s"]
  assert merged["mfu"] == train["mfu"] and merged["kd_cost_ratio"] == train["kd_cost_ratio"]
  assert "--smoke" in merged["commands"]["pca"] and "--smoke" in merged["commands"]["train"]
  with pytest.raises(ValueError, match="expected the JSON of benchmarks/train.py"):
    report.merge(pca, pca)
  with pytest.raises(ValueError, match="different devices"):
    report.merge(pca, dict(train, device="1 x NVIDIA H100"))


def test_gpu_suite_smoke_runs_every_stage_and_resumes(tmp_path):
  """The one-command GPU suite, in its CPU smoke mode: benchmarks, report, a reproduction sweep;
  a second command finds every stage done."""
  # A budget no loaded CI machine reaches: the default 540 s is the GPU command's, and a smoke run
  # stopped by it is a timing artifact, not a failure (the budget stops the sweep's child by SIGTERM,
  # whose save-and-resume tests/test_reliability.py covers).
  cmd = [sys.executable, "-m", "benchmarks.gpu_suite", f"--out={tmp_path}", "--smoke", "--budget_s=1700"]
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2")
  first = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
  assert first.returncode == 0 and "suite complete" in first.stdout, first.stdout[-3000:] + first.stderr[-3000:]
  for name in ("pca.json", "train.json", "benchmarks.json", "reproduction_results.json",
               "reproduction_results.md", "reproduction_results.png", "longrun.json", "longrun_tables.md"):
    assert (tmp_path / name).exists(), name
  assert set(json.load(open(tmp_path / "reproduction_results.json"))["arms"][0]) >= {"name", "ppl"}
  longrun = json.load(open(tmp_path / "longrun.json"))  # the longrun stage: branched budgets, one teacher
  assert {(a["arm"], a["budget"]) for a in longrun["arms"]} == {(n, b) for n in ("baseline", "guide") for b in ("s3", "s6")}
  assert "gap_reduction_loss_mean" in longrun["arms"][0]
  again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert again.returncode == 0 and again.stdout.count("done already") == 5, again.stdout[-2000:]
