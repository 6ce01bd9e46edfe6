r"""Statistics of budget studies (guide_jax.sweep with budgets or branches): paired per-seed
differences, bootstrap intervals, trends in tokens per parameter, equal-FLOPs comparisons, plots.

  python -m guide_jax.study --sweep=runs/longrun/r2 --sweep=runs/longrun/r4 \
      --step0=reports/longrun_step0_r2.json --step0=reports/longrun_step0_r4.json --output=reports/longrun

reads each sweep's results.json (one summary per budget) and writes <output>.json, <output>_tables.md
and <output>.png / <output>_flops.png. Every figure is computed from the runs' held-out loss and
perplexity; a "seed" pairs every arm with the baseline run of the same seed (same data order).

  gap reduction (loss)  (L_base - L_arm) / (L_base - L_teacher), per seed; (ppl) the same in perplexity
  ci95                  percentile bootstrap of the mean over seeds (BOOTSTRAP resamples, numpy
                        Generator(PCG64(0)): the same intervals every time); ci95_t: Student-t
                        interval, ddof=1 (wider with 5 seeds; reported alongside)
  finding               the interval (bootstrap) of a paired difference excludes zero
  trend                 per arm, gap reduction (loss) = a + b log10(tokens per parameter), least
                        squares over every seed x budget; b's interval and the prediction at 20 and
                        100 tokens per parameter from a bootstrap over seeds
  equal FLOPs           an arm's held-out loss against the baseline's at the same training FLOPs
                        (baseline loss interpolated linearly in log FLOPs between its budgets, the
                        KD teacher's forward and pruning's calibration counted); null outside the
                        baseline's range
"""
import json
import math
import sys
from typing import Dict, List, Optional, Sequence

from absl import app, flags
import numpy as np

from guide_jax import cli, fileio
from guide_jax.config import ModelConfig

BOOTSTRAP = 10000
# Paired comparisons reported between arms (a, b): a - b in gap reduction (loss), when both exist.
COMPARISONS = (
    ("guide", "guide_literal"), ("guide_all_blocks", "guide"), ("guide_uniform_layers", "guide"),
    ("guide_centered", "guide"), ("guide_all_uniform", "guide"), ("guide_calibrated", "guide"),
    ("guide", "ws"), ("guide", "prune"), ("guide_all_uniform", "ws"), ("guide_all_uniform", "prune"),
    ("prune", "ws"), ("guide_all_uniform_kd", "guide_all_uniform"), ("prune_kd", "prune"),
    ("guide_all_uniform_kd", "prune_kd"), ("guide_all_uniform_kd", "kd"), ("prune_kd", "kd"),
)


def bootstrap_ci(values: Sequence[float], n: int = BOOTSTRAP, seed: int = 0) -> List[float]:
  """95 % percentile bootstrap interval of the mean of `values` (fixed PRNG)."""
  x = np.asarray(values, np.float64)
  if x.size < 2:
    return [float("nan"), float("nan")]
  rng = np.random.Generator(np.random.PCG64(seed))
  means = x[rng.integers(0, x.size, (n, x.size))].mean(axis=1)
  return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def t_ci(values: Sequence[float]) -> List[float]:
  """95 % Student-t interval of the mean (ddof=1)."""
  from scipy import stats  # pylint: disable=g-import-not-at-top
  x = np.asarray(values, np.float64)
  if x.size < 2:
    return [float("nan"), float("nan")]
  half = stats.t.ppf(0.975, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)
  return [float(x.mean() - half), float(x.mean() + half)]


def describe(values: Sequence[float]) -> dict:
  """mean, std (ddof=1), bootstrap and t intervals, and whether the bootstrap interval excludes 0."""
  x = [float(v) for v in values]
  ci = bootstrap_ci(x)
  return {"mean": float(np.mean(x)), "std": float(np.std(x, ddof=1)) if len(x) > 1 else 0.0, "n": len(x),
          "ci95": ci, "ci95_t": t_ci(x), "finding": bool(ci[0] > 0 or ci[1] < 0), "per_seed": x}


def _seed_map(arm: dict, key: str) -> Dict[int, float]:
  return dict(zip(arm["seeds"], arm[key]))


def paired(a: Dict[int, float], b: Dict[int, float]) -> Optional[dict]:
  """describe(a[s] - b[s]) over the seeds both have (None when fewer than 2)."""
  seeds = sorted(set(a) & set(b))
  return describe([a[s] - b[s] for s in seeds]) if len(seeds) >= 2 else None


def _interp_log(x: float, xs: Sequence[float], ys: Sequence[float]) -> Optional[float]:
  order = np.argsort(xs)
  lx, ly = np.log(np.asarray(xs, np.float64)[order]), np.asarray(ys, np.float64)[order]
  if not lx[0] - 1e-9 <= math.log(x) <= lx[-1] + 1e-9:
    return None
  return float(np.interp(math.log(x), lx, ly))


def trend(points: List[tuple]) -> Optional[dict]:
  """points [(seed, tokens_per_param, gap)]: gap = a + b log10(tpp); bootstrap over seeds."""
  seeds = sorted({p[0] for p in points})
  if len(seeds) < 2 or len({p[1] for p in points}) < 2:
    return None

  def fit(pts):
    x = np.log10([p[1] for p in pts])
    y = np.asarray([p[2] for p in pts])
    b, a = np.polyfit(x, y, 1)
    return a, b

  a, b = fit(points)
  rng = np.random.Generator(np.random.PCG64(0))
  by_seed = {s: [p for p in points if p[0] == s] for s in seeds}
  boots = []
  for _ in range(2000):
    pick = rng.integers(0, len(seeds), len(seeds))
    pts = [p for i in pick for p in by_seed[seeds[i]]]
    boots.append(fit(pts))
  boots = np.asarray(boots)
  out = {"intercept": float(a), "slope_per_decade": float(b),
         "slope_ci95": [float(np.percentile(boots[:, 1], 2.5)), float(np.percentile(boots[:, 1], 97.5))]}
  for tpp in (20, 100):
    pred = boots[:, 0] + boots[:, 1] * math.log10(tpp)
    out[f"at_{tpp}_tokens_per_param"] = float(a + b * math.log10(tpp))
    out[f"at_{tpp}_tokens_per_param_ci95"] = [float(np.percentile(pred, 2.5)), float(np.percentile(pred, 97.5))]
  return out


def analyze_sweep(results: dict, step0: Optional[dict] = None) -> dict:
  """One sweep's results.json (with budgets) -> the study of that student shape."""
  summaries = results["budgets"]
  budgets = sorted(summaries, key=lambda b: summaries[b]["arms"][0]["tokens_seen"])
  first = summaries[budgets[0]]
  student = ModelConfig(**_model_config(first))
  n_params = student.num_params
  teacher_cfg = ModelConfig(**first["teacher"]["model_config"])
  out = {"student": {"num_params": n_params, "d_model": student.d_model, "n_heads": student.n_heads,
                     "mlp_dim": student.mlp_dim, "n_layers": student.n_layers, "vocab_size": student.vocab_size},
         "teacher": {"num_params": teacher_cfg.num_params, "d_model": teacher_cfg.d_model,
                     "eval_ppl": first["teacher"]["eval_ppl"], "eval_loss": first["teacher"]["eval_loss"],
                     "tokens_seen": first["teacher"]["tokens_seen"]},
         "ratio": student.d_model / teacher_cfg.d_model, "budgets": [], "arms": {}, "comparisons": []}
  base_name = first["baseline"]
  for budget in budgets:
    s = summaries[budget]
    arms = {a["name"]: a for a in s["arms"]}
    base = arms[base_name]
    tokens = base["tokens_seen"]
    out["budgets"].append({"name": budget, "tokens": tokens, "tokens_per_param": tokens / n_params,
                           "teacher_ppl": s["teacher_ppl"], "teacher_loss": s["teacher_loss"],
                           "baseline_ppl": s["baseline_ppl"], "baseline_loss": s["baseline_loss"],
                           "teacher_below_baseline_ppl": s["teacher_below_baseline"],
                           "baseline_train_flops": base["train_flops"]})
    for name, arm in arms.items():
      entry = out["arms"].setdefault(name, {"budgets": {}})
      gl = describe(arm["gap_reduction_loss_per_seed"])
      gp = describe(arm["gap_reduction_per_seed"])
      d_loss = paired(_seed_map(arm, "loss_per_seed"), _seed_map(base, "loss_per_seed"))
      entry["budgets"][budget] = {
          "tokens": tokens, "tokens_per_param": tokens / n_params, "seeds": arm["seeds"],
          "gap_reduction_loss_mean": gl["mean"], "ci95": gl["ci95"], "ci95_t": gl["ci95_t"],
          "gap_reduction_loss_std": gl["std"], "gap_reduction_loss_per_seed": gl["per_seed"],
          "gap_reduction_ppl_mean": gp["mean"], "gap_reduction_ppl_ci95": gp["ci95"],
          "gap_reduction_ppl_per_seed": gp["per_seed"],
          "loss_mean": float(np.mean(arm["loss_per_seed"])), "ppl_mean": arm["ppl"],
          "loss_minus_baseline": d_loss, "step0_ppl": arm.get("step0_ppl"),
          "train_flops": arm["train_flops"],
      }
  # Equal FLOPs: each arm's loss against the baseline's curve at the same FLOPs.
  base_curve = [(out["arms"][base_name]["budgets"][b]["train_flops"], out["arms"][base_name]["budgets"][b]["loss_mean"])
                for b in budgets]
  for name, entry in out["arms"].items():
    for budget, e in entry["budgets"].items():
      at = _interp_log(e["train_flops"], [c[0] for c in base_curve], [c[1] for c in base_curve])
      teacher_loss = summaries[budget]["teacher_loss"]
      e["baseline_loss_at_equal_flops"] = at
      e["equal_flops_gap_reduction_loss"] = (None if at is None or at <= teacher_loss
                                             else (at - e["loss_mean"]) / (at - teacher_loss))
    pts = [(s, e["tokens_per_param"], g) for e in entry["budgets"].values()
           for s, g in zip(e["seeds"], e["gap_reduction_loss_per_seed"])]
    entry["trend_loss"] = trend(pts) if name != base_name else None
  for a, b in COMPARISONS:
    if a not in out["arms"] or b not in out["arms"]:
      continue
    for budget in budgets:
      ea, eb = out["arms"][a]["budgets"].get(budget), out["arms"][b]["budgets"].get(budget)
      if ea is None or eb is None:
        continue
      d = paired(dict(zip(ea["seeds"], ea["gap_reduction_loss_per_seed"])),
                 dict(zip(eb["seeds"], eb["gap_reduction_loss_per_seed"])))
      if d is not None:
        out["comparisons"].append({"a": a, "b": b, "budget": budget, "tokens_per_param": ea["tokens_per_param"],
                                   "gap_reduction_loss_difference": d})
  if step0:
    out["step0"] = step0
  return out


def _model_config(summary: dict) -> dict:
  for arm in summary["arms"]:
    if arm.get("model_config"):
      return arm["model_config"]
  return summary["student_model_config"]


def tables(study: dict) -> str:
  """Markdown: per ratio, gap reduction (loss) mean [ci95] per arm x budget, then (ppl), FLOPs."""
  lines = []
  for ratio_name, r in study["ratios_detail"].items():
    budgets = [b["name"] for b in r["budgets"]]
    tpp = {b["name"]: b["tokens_per_param"] for b in r["budgets"]}
    lines += [f"### d_S/d_T = {r['ratio']:g} ({ratio_name}: student {r['student']['num_params']:,} parameters)", "",
              "Gap reduction in loss, mean over seeds [95 % bootstrap interval]:", "",
              "| arm | " + " | ".join(f"{tpp[b]:.3g} tok/param" for b in budgets) + " |",
              "|---|" + "---|" * len(budgets)]
    for name, entry in r["arms"].items():
      cells = []
      for b in budgets:
        e = entry["budgets"].get(b)
        cells.append("" if e is None else f"{100 * e['gap_reduction_loss_mean']:.1f} [{100 * e['ci95'][0]:.1f}, {100 * e['ci95'][1]:.1f}]")
      lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Gap reduction in perplexity (mean), and train TFLOPs at the largest budget:", "",
              "| arm | " + " | ".join(f"{tpp[b]:.1f}" for b in budgets) + " | TFLOPs |",
              "|---|" + "---|" * (len(budgets) + 1)]
    for name, entry in r["arms"].items():
      cells = [("" if b not in entry["budgets"] else f"{100 * entry['budgets'][b]['gap_reduction_ppl_mean']:.1f}")
               for b in budgets]
      flops = entry["budgets"][budgets[-1]]["train_flops"] / 1e12 if budgets[-1] in entry["budgets"] else float("nan")
      lines.append(f"| {name} | " + " | ".join(cells) + f" | {flops:.2f} |")
    lines += ["", "| budget | tokens/param | teacher ppl | baseline ppl | teacher below baseline |", "|---|---|---|---|---|"]
    for b in r["budgets"]:
      lines.append(f"| {b['name']} | {b['tokens_per_param']:.1f} | {b['teacher_ppl']:.2f} | {b['baseline_ppl']:.2f} | "
                   f"{100 * b['teacher_below_baseline_ppl']:.1f} % |")
    lines += ["", "Paired differences in gap reduction (loss points, a - b) [95 % bootstrap]; * = interval excludes 0:", "",
              "| a - b | " + " | ".join(f"{tpp[b]:.1f}" for b in budgets) + " |", "|---|" + "---|" * len(budgets)]
    pairs = []
    for c in r["comparisons"]:
      if (c["a"], c["b"]) not in pairs:
        pairs.append((c["a"], c["b"]))
    for a, b_ in pairs:
      cells = []
      for b in budgets:
        c = next((c for c in r["comparisons"] if (c["a"], c["b"], c["budget"]) == (a, b_, b)), None)
        if c is None:
          cells.append("")
          continue
        d = c["gap_reduction_loss_difference"]
        cells.append(f"{100 * d['mean']:+.1f} [{100 * d['ci95'][0]:+.1f}, {100 * d['ci95'][1]:+.1f}]{'*' if d['finding'] else ''}")
      lines.append(f"| {a} - {b_} | " + " | ".join(cells) + " |")
    lines += ["", "Trend: gap reduction (loss) = a + b log10(tokens/param); b per decade [95 %]; predicted at 20 and 100 tokens/param:", "",
              "| arm | b (points/decade) | at 20 | at 100 |", "|---|---|---|---|"]
    for name, entry in r["arms"].items():
      t = entry.get("trend_loss")
      if not t:
        continue
      lines.append(f"| {name} | {100 * t['slope_per_decade']:+.1f} [{100 * t['slope_ci95'][0]:+.1f}, {100 * t['slope_ci95'][1]:+.1f}] | "
                   f"{100 * t['at_20_tokens_per_param']:.1f} [{100 * t['at_20_tokens_per_param_ci95'][0]:.1f}, "
                   f"{100 * t['at_20_tokens_per_param_ci95'][1]:.1f}] | {100 * t['at_100_tokens_per_param']:.1f} "
                   f"[{100 * t['at_100_tokens_per_param_ci95'][0]:.1f}, {100 * t['at_100_tokens_per_param_ci95'][1]:.1f}] |")
    lines += ["", "Equal FLOPs: gap reduction (loss) against the baseline interpolated to the same training FLOPs "
              "(empty: outside the baseline's FLOPs range):", "",
              "| arm | " + " | ".join(f"{tpp[b]:.1f}" for b in budgets) + " |", "|---|" + "---|" * len(budgets)]
    for name, entry in r["arms"].items():
      cells = []
      for b in budgets:
        e = entry["budgets"].get(b)
        g = None if e is None else e["equal_flops_gap_reduction_loss"]
        cells.append("" if g is None else f"{100 * g:.1f}")
      lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if r.get("step0"):
      from guide_jax import diagnose  # pylint: disable=g-import-not-at-top
      lines += ["", f"Step 0 (guide_jax.diagnose, seeds {r['step0']['seeds']}, {r['step0']['batches']} held-out batches):", "",
                diagnose.markdown(r["step0"]["rows"])]
    lines.append("")
  return "\n".join(lines)


def plot(study: dict, path: str, x_key: str = "tokens_per_param") -> None:
  """Gap reduction (loss) vs tokens per parameter (or train FLOPs) per arm, one panel per ratio."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  ratios = study["ratios_detail"]
  fig, axes = plt.subplots(1, len(ratios), figsize=(7.5 * len(ratios), 5.5), squeeze=False)
  for ax, (ratio_name, r) in zip(axes[0], ratios.items()):
    for name, entry in r["arms"].items():
      if name == "baseline":
        continue
      bs = [e for e in sorted(entry["budgets"].values(), key=lambda e: e["tokens"])
            if np.isfinite(e["gap_reduction_loss_mean"])]  # nan: a teacher no better than the baseline
      if not bs:
        continue
      x = [e[x_key] for e in bs]
      y = [100 * e["gap_reduction_loss_mean"] for e in bs]
      err = np.nan_to_num([[100 * (e["gap_reduction_loss_mean"] - e["ci95"][0]) for e in bs],
                           [100 * (e["ci95"][1] - e["gap_reduction_loss_mean"]) for e in bs]])  # 1 seed: none
      style = "--" if name.endswith("kd") else "-"
      ax.errorbar(x, y, yerr=err, marker="o", linestyle=style, capsize=3, label=name, markersize=4)
    ax.axhline(0, color="k", linewidth=0.8)
    ax.set(xscale="log" if ax.has_data() and len(ax.lines) > 1 else "linear", xlabel="tokens per student parameter" if x_key == "tokens_per_param" else "training FLOPs",
           ylabel="gap reduction in held-out loss (%)",
           title=f"d_S/d_T = {r['ratio']:g} ({r['student']['num_params']:,} params); 95 % bootstrap over seeds")
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=7, ncol=2)
  fig.tight_layout()
  with fileio.atomic_open(path, "wb") as f:
    fig.savefig(f, format="png", dpi=110)
  plt.close(fig)


def build(sweeps: Sequence[str], step0_paths: Sequence[str] = (), command: str = "") -> dict:
  """The whole study (reports/longrun.json) from sweep dirs; step0_paths: guide_jax.diagnose
  outputs, each attached to the sweep whose output_dir it names."""
  step0 = [json.loads(fileio.read_text(p)) for p in step0_paths]
  detail = {}
  for sweep_dir in sweeps:
    results = json.loads(fileio.read_text(fileio.join(sweep_dir, "results.json")))
    name = sweep_dir.rstrip("/").split("/")[-1]
    mine = [d for d in step0 if fileio.absolute(d.get("output_dir") or "") == fileio.absolute(sweep_dir)]
    detail[name] = analyze_sweep(results, mine[0] if mine else None)
  seeds = sorted({s for r in detail.values() for e in r["arms"].values() for b in e["budgets"].values() for s in b["seeds"]})
  flat = []  # the flat table the issue asks for: arm x budget x ratio
  for r in detail.values():
    for name, entry in r["arms"].items():
      for budget, e in entry["budgets"].items():
        flat.append({"ratio": r["ratio"], "arm": name, "budget": budget, **{k: e[k] for k in (
            "tokens", "tokens_per_param", "gap_reduction_loss_mean", "ci95", "ci95_t", "gap_reduction_ppl_mean",
            "gap_reduction_ppl_ci95", "loss_mean", "ppl_mean", "train_flops", "step0_ppl",
            "equal_flops_gap_reduction_loss")}})
  return {"command": command, "sweeps": list(sweeps), "ratios": [r["ratio"] for r in detail.values()],
          "seeds": seeds, "tokens_per_param": {n: [b["tokens_per_param"] for b in r["budgets"]] for n, r in detail.items()},
          "arms": flat, "ratios_detail": detail,
          "statistics": {"bootstrap_resamples": BOOTSTRAP, "bootstrap_seed": 0, "std_ddof": 1,
                         "finding_rule": "the 95 % bootstrap interval of the paired per-seed difference excludes 0"}}


def recheck(legacy: dict, pairs: Sequence[tuple] = (("prune", "guide_all_uniform"), ("guide_all_uniform", "guide"),
                                                     ("guide", "ws"), ("prune", "guide"))) -> str:
  """A budgets study.json written before per-seed losses were kept (reports/beyond.json): its
  stds with ddof=1, the paired differences with t and bootstrap intervals, the gap in loss from the
  mean perplexities (an approximation: the mean of ppl, not per seed), and equal-FLOPs pairs."""
  arms = {(a["name"], a["budget"]): a for a in legacy["arms"]}
  budgets = list(legacy["budgets_tokens"])
  lines = ["| arm | budget | gap (ppl) mean | std ddof=0 | std ddof=1 | gap in loss (from mean ppl) |",
           "|---|---|---|---|---|---|"]
  for (name, budget), a in arms.items():
    g = a["gap_reduction_per_seed"]
    pb, pt = legacy["baseline_ppl"][budget], legacy["teacher_ppl"][budget]
    loss_gap = (math.log(pb) - math.log(a["ppl_mean"])) / (math.log(pb) - math.log(pt))
    lines.append(f"| {name} | {budget} | {100 * np.mean(g):.1f} % | {100 * np.std(g):.2f} | "
                 f"{100 * np.std(g, ddof=1):.2f} | {100 * loss_gap:.1f} % |")
  lines += ["", "| a - b (gap, ppl points) | budget | mean | 95 % t interval | 95 % bootstrap | 3 x larger std (ddof=1) |",
            "|---|---|---|---|---|---|"]
  for a, b in pairs:
    for budget in budgets:
      if (a, budget) not in arms or (b, budget) not in arms:
        continue
      ga = dict(zip(arms[a, budget]["seeds"], arms[a, budget]["gap_reduction_per_seed"]))
      gb = dict(zip(arms[b, budget]["seeds"], arms[b, budget]["gap_reduction_per_seed"]))
      d = paired(ga, gb)
      spread = 3 * max(np.std(list(ga.values()), ddof=1), np.std(list(gb.values()), ddof=1))
      lines.append(f"| {a} - {b} | {budget} | {100 * d['mean']:+.1f} | [{100 * d['ci95_t'][0]:+.1f}, "
                   f"{100 * d['ci95_t'][1]:+.1f}] | [{100 * d['ci95'][0]:+.1f}, {100 * d['ci95'][1]:+.1f}] | "
                   f"{100 * spread:.1f} |")
  lines += ["", "Equal FLOPs (each arm against every arm of lower or equal FLOPs at another budget, held-out ppl):", "",
            "| arm @ budget | TFLOPs | ppl | cheaper arm @ budget | TFLOPs | ppl |", "|---|---|---|---|---|---|"]
  for (name, budget), a in arms.items():
    if not name.endswith("kd"):
      continue
    plain = name[:-3].rstrip("_") or "baseline"
    rivals = [arms[plain, b] for b in budgets if (plain, b) in arms and arms[plain, b]["train_flops"] <= a["train_flops"] * 1.01]
    if rivals:
      r = max(rivals, key=lambda r: r["train_flops"])
      lines.append(f"| {name} @ {budget} | {a['train_flops'] / 1e12:.2f} | {a['ppl_mean']:.1f} | {plain} @ {r['budget']} | "
                   f"{r['train_flops'] / 1e12:.2f} | {r['ppl_mean']:.1f} |")
  return "\n".join(lines) + "\n"


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  if f.recheck:
    print(recheck(json.loads(fileio.read_text(f.recheck))))
    return
  if not f.sweep:
    raise ValueError("--sweep: at least one sweep output directory")
  study = build(f.sweep, f.step0, " ".join(["python -m guide_jax.study"] + sys.argv[1:]))
  fileio.atomic_write_text(f.output + ".json", json.dumps(study, indent=1))
  text = tables(study)
  fileio.atomic_write_text(f.output + "_tables.md", text)
  try:
    plot(study, f.output + ".png")
    plot(study, f.output + "_flops.png", x_key="train_flops")
  except ImportError:
    print("no matplotlib: no plots")
  print(text)


def run():
  flags.DEFINE_multi_string("sweep", [], "a sweep output directory (results.json with budgets); repeatable")
  flags.DEFINE_multi_string("step0", [], "guide_jax.diagnose's JSON (repeatable), attached to its sweep")
  flags.DEFINE_string("output", "reports/longrun", "output prefix: .json, _tables.md, .png, _flops.png")
  flags.DEFINE_string("recheck", "", "instead: recheck an older budgets study.json (reports/beyond.json)")
  app.run(lambda argv: cli.exit_on_error("guide_jax.study", main, argv))


if __name__ == "__main__":
  from guide_jax import study as _module  # pylint: disable=import-self
  _module.run()
