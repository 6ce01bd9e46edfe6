"""guide_jax.study: paired statistics, bootstrap intervals, trends and equal FLOPs on synthetic sweep
results (no training), and the sweep's per-budget results of a branched run."""
import json

import numpy as np
import pytest

from guide_jax import study, sweep as sweep_lib

STUDENT = {"vocab_size": 64, "d_model": 16, "n_layers": 1, "n_heads": 1, "head_dim": 16, "mlp_dim": 32}
TEACHER = {"vocab_size": 64, "d_model": 32, "n_layers": 2, "n_heads": 2, "head_dim": 16, "mlp_dim": 64}


def run(seed, steps, loss, init="random", kd=0.0):
  return {"seed": seed, "step": steps, "finished": True, "eval_loss": loss, "eval_ppl": float(np.exp(loss)),
          "tokens_seen": steps * 64, "seq_len": 16, "batch_size": 4, "model_config": STUDENT, "kd_alpha": kd,
          "init": init, "start": {"prune": {"calibration_batches": 2}} if init == "prune" else {}}


def fake_results(gain_by_steps):
  """Baseline loss 4 - log(steps)/4 (+ seed noise); 'guide' closes gain_by_steps[steps] of the gap."""
  teacher = {"eval_ppl": float(np.exp(2.0)), "eval_loss": 2.0, "tokens_seen": 10 ** 5, "model_config": TEACHER}
  budgets = {}
  for steps, gain in gain_by_steps.items():
    arms = {"baseline": [], "guide": [], "prune": []}
    for seed in range(5):
      base = 4.0 - np.log(steps) / 4 + 0.01 * seed
      arms["baseline"].append(run(seed, steps, base))
      arms["guide"].append(run(seed, steps, base - gain * (base - 2.0) + 0.002 * (-1) ** seed))
      arms["prune"].append(run(seed, steps, base - 0.001 * (-1) ** seed, init="prune"))
    budgets[f"s{steps}"] = sweep_lib.summarize(teacher, arms, "baseline")
  return {"budgets": budgets}


def test_describe_bootstrap_is_fixed_and_finding_needs_an_interval_excluding_zero():
  clear = study.describe([0.30, 0.31, 0.29, 0.30, 0.32])
  assert clear["finding"] and clear["ci95"][0] > 0.28 and clear["ci95"] == study.describe(clear["per_seed"])["ci95"]
  assert clear["std"] == pytest.approx(np.std(clear["per_seed"], ddof=1))
  noise = study.describe([0.01, -0.02, 0.015, -0.01, 0.0])
  assert not noise["finding"] and noise["ci95"][0] < 0 < noise["ci95"][1]
  assert noise["ci95_t"][0] < noise["ci95"][0]  # the t interval is the wider one here


def test_analyze_sweep_gap_reduction_trend_comparisons_and_equal_flops():
  out = study.analyze_sweep(fake_results({10: 0.5, 40: 0.3, 160: 0.1}))
  guide = out["arms"]["guide"]["budgets"]
  assert guide["s10"]["gap_reduction_loss_mean"] == pytest.approx(0.5, abs=0.01)
  assert guide["s160"]["gap_reduction_loss_mean"] == pytest.approx(0.1, abs=0.01)
  assert guide["s10"]["ci95"][0] < 0.5 < guide["s10"]["ci95"][1]
  assert guide["s10"]["gap_reduction_ppl_mean"] > guide["s10"]["gap_reduction_loss_mean"]  # ppl is convex in loss
  assert guide["s40"]["tokens_per_param"] == pytest.approx(40 * 64 / out["student"]["num_params"])
  t = out["arms"]["guide"]["trend_loss"]
  assert t["slope_per_decade"] == pytest.approx(-0.4 / np.log10(16), abs=0.02)
  assert t["slope_ci95"][1] < 0
  # pruning pays for its calibration: 2 batches x 4 x 16 tokens of teacher forward
  assert out["arms"]["prune"]["budgets"]["s10"]["train_flops"] > out["arms"]["guide"]["budgets"]["s10"]["train_flops"]
  prune_vs_guide = [c for c in out["comparisons"] if (c["a"], c["b"], c["budget"]) == ("guide", "prune", "s10")]
  assert prune_vs_guide and prune_vs_guide[0]["gap_reduction_loss_difference"]["finding"]
  # equal FLOPs: the baseline against itself is 0; outside the baseline's FLOPs range: None
  assert out["arms"]["baseline"]["budgets"]["s40"]["equal_flops_gap_reduction_loss"] == pytest.approx(0.0, abs=1e-9)
  assert out["arms"]["prune"]["budgets"]["s160"]["equal_flops_gap_reduction_loss"] is None


def test_sweep_reads_every_branch_budget_of_a_finished_run(tmp_path):
  run_dir = tmp_path / "guide" / "seed_0"
  (run_dir / "branches" / "4").mkdir(parents=True)
  (run_dir / "branches" / "4" / "results.json").write_text(json.dumps(run(0, 4, 3.0)))
  got = sweep_lib._budget_results(str(run_dir), run(0, 8, 2.5), None, {"short": 4, "long": 8})
  assert [(name, r["step"]) for name, r, _ in got] == [("short", 4), ("long", 8)]
  with pytest.raises(RuntimeError, match="branch of 2 steps"):
    sweep_lib._budget_results(str(run_dir), run(0, 8, 2.5), None, {"short": 2, "long": 8})
