r"""Gin-driven sweeps: train a teacher, then every arm x seed on the same tokens; tabulate and plot.

  python -m guide_jax.sweep --gin_file=gin/sweeps/quickstart.gin
  python -m guide_jax.sweep --gin_file=gin/sweeps/reproduction.gin --gin.sweep.sweep.seeds=[0,1,2]

Each run is `python -m guide_jax.train` in a subprocess with the sweep's gin files and bindings, in
<output_dir>/<arm>/seed_<k> (the teacher in <output_dir>/teacher); output_dir may be gs://. A run
whose results.json says it finished is skipped; an unfinished one resumes from its checkpoint.
Each run directory records the settings it was started with (sweep_run.json: gin files with
their content hashes, bindings); when the sweep's gin now asks for other settings the sweep
refuses before starting anything, or reruns those runs from scratch with
sweep.rerun_changed = True. Writes results.json, results.md and results.png in output_dir
(atomically).
"""
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence, Tuple

from absl import app, flags, logging
import gin
import numpy as np
import tqdm

from guide_jax import cli, evaluate, fileio, gin_utils, metrics
from guide_jax.config import ModelConfig

SETTINGS_FILE = "sweep_run.json"

def split_spec(spec: Sequence[str]):
  """An arm spec mixes gin files ('*.gin') and bindings ('KEY = VALUE'): -> (files, bindings)."""
  files = [s for s in spec if s.strip().endswith(".gin")]
  return files, [s for s in spec if not s.strip().endswith(".gin")]


def train_command(gin_files: Sequence[str], bindings: Sequence[str]) -> List[str]:
  return ([sys.executable, "-m", "guide_jax.train"] + [f"--gin_file={f}" for f in gin_files]
          + [f"--gin_bindings={b}" for b in bindings])


def gin_string(value: str) -> str:
  """A gin string literal holding `value` exactly (quotes, backslashes: Python literal syntax)."""
  return repr(str(value))


def read_result(run_dir: str) -> Optional[dict]:
  try:
    result = json.loads(fileio.read_text(fileio.join(run_dir, "results.json")))
  except FileNotFoundError:
    return None
  return result if result.get("finished") else None


def run_settings(gin_files: Sequence[str], bindings: Sequence[str]) -> dict:
  """What a run was asked for: its gin files (with a SHA-256 of their content) and bindings."""
  def digest(f):
    path = f if os.path.exists(f) else os.path.join(gin_utils.REPO_ROOT, f)
    with open(path, "rb") as fh:
      return hashlib.sha256(fh.read()).hexdigest()
  return {"gin_files": [[f, digest(f)] for f in gin_files], "bindings": list(bindings)}


def settings_diff(saved: dict, wanted: dict) -> List[str]:
  """Human-readable differences between two run_settings dicts ([] when equal)."""
  out = []
  old_b, new_b = saved.get("bindings", []), wanted["bindings"]
  out += [f"binding {b!r} dropped" for b in old_b if b not in new_b]
  out += [f"binding {b!r} added" for b in new_b if b not in old_b]
  old_f = {f: h for f, h in saved.get("gin_files", [])}
  new_f = {f: h for f, h in wanted["gin_files"]}
  out += [f"gin file {f} {'edited' if f in new_f else 'dropped'}" for f in old_f if new_f.get(f) != old_f[f]]
  out += [f"gin file {f} added" for f in new_f if f not in old_f]
  return out


def _die_with_parent(parent: int) -> None:
  """preexec_fn: the child gets SIGTERM when the sweep process dies (Linux prctl PR_SET_PDEATHSIG;
  a parent that died before the prctl is caught by the getppid check)."""
  try:
    import ctypes
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
  except (OSError, AttributeError):  # not Linux: no parent-death signal exists
    return
  if os.getppid() != parent:
    os._exit(1)


def _progress(bar, run_dir: str, seen: int) -> int:
  """Advance a tqdm bar from the run's metrics.jsonl (steps, loss, ETA); returns the last step."""
  records = metrics.read_metrics(run_dir, "train")
  if not records:
    return seen
  step = max(records)
  last = records[step]
  if bar.total is None and last.get("step_time_s"):
    bar.total = int(round(step + last["eta_s"] / last["step_time_s"]))
    bar.refresh()
  bar.update(step - seen)
  bar.set_postfix(loss=f"{last['loss']:.3f}", refresh=False)
  return step


class TimeBudgetReached(Exception):
  """The sweep's time budget ran out; the running child saved a checkpoint (SIGTERM) and the same
  command continues from there."""


def run_once(run_dir: str, gin_files, bindings, dry_run: bool = False, label: str = "",
             deadline: Optional[float] = None) -> Optional[dict]:
  """Train one run unless it already finished; returns its results.json (None on dry run).

  The run's output goes to <run_dir>/train.log; the screen shows one progress bar per run.
  The child dies with the sweep (SIGTERM on the parent's death, terminate on an exception).
  deadline (time.time()): SIGTERM the child then (it saves and exits) and raise TimeBudgetReached.
  """
  done = read_result(run_dir)
  if done is not None:
    print(f"{label or run_dir}: finished already (eval ppl {done['eval_ppl']:.3f})", flush=True)
    return done
  cmd = train_command(gin_files, list(bindings) + [f"MODEL_DIR = {gin_string(run_dir)}"])
  if dry_run:
    print(" ".join(cmd))
    return None
  fileio.makedirs(run_dir)
  settings_path = fileio.join(run_dir, SETTINGS_FILE)
  if not fileio.exists(settings_path):
    fileio.atomic_write_json(settings_path, run_settings(gin_files, bindings))
  log_path = fileio.join(run_dir, "train.log")
  local_log = log_path
  if fileio.is_remote(run_dir):  # a child's stdout needs a local file: uploaded when the run ends
    local_log = os.path.join(tempfile.gettempdir(), "guide_jax-sweep-logs", run_dir.split("://", 1)[1], "train.log")
    os.makedirs(os.path.dirname(local_log), exist_ok=True)
    if fileio.exists(log_path):
      fileio.copy(log_path, local_log)
  logging.debug("running %s > %s", " ".join(cmd), log_path)  # --verbosity=1 shows it
  try:
    with open(local_log, "a") as log, tqdm.tqdm(desc=label or run_dir, unit="step", dynamic_ncols=True) as bar:
      parent = os.getpid()
      proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                              preexec_fn=lambda: _die_with_parent(parent))
      seen = 0
      try:
        while proc.poll() is None:
          time.sleep(1.0)
          seen = _progress(bar, run_dir, seen)
          if deadline is not None and time.time() > deadline:
            proc.terminate()  # the child saves a checkpoint at its next step and exits
            proc.wait()
            raise TimeBudgetReached(f"time budget reached during {run_dir}")
        _progress(bar, run_dir, seen)
      except BaseException:
        proc.terminate()
        proc.wait(timeout=30)
        raise
  finally:
    if local_log != log_path:
      fileio.copy(local_log, log_path)
  if proc.returncode != 0:
    with open(local_log) as f:
      tail = f.readlines()[-15:]
    raise RuntimeError(f"training run {run_dir} failed with exit code {proc.returncode}; last lines of "
                       f"{log_path}:\n" + "".join(tail))
  result = read_result(run_dir)
  if result is None:
    raise RuntimeError(f"training run {run_dir} ended without a finished results.json (see {log_path})")
  print(f"{label or run_dir}: eval ppl {result['eval_ppl']:.3f}", flush=True)
  return result


def gap_reduction(ppl_baseline: float, ppl_method: float, ppl_teacher: float) -> float:
  """(ppl_baseline - ppl_method) / (ppl_baseline - ppl_teacher), docs/algorithm.md section 5."""
  if ppl_baseline <= ppl_teacher:
    return float("nan")  # no gap to close: the teacher is not better than the baseline student
  return (ppl_baseline - ppl_method) / (ppl_baseline - ppl_teacher)


def _std(values) -> float:
  """Sample standard deviation (ddof=1; 0.0 for a single value, nan for none)."""
  values = [v for v in values if np.isfinite(v)]
  return float(np.std(values, ddof=1)) if len(values) > 1 else (0.0 if values else float("nan"))


def summarize(teacher: dict, arm_results: Dict[str, List[dict]], baseline: str) -> dict:
  """results.json content: teacher_ppl, and per arm: name, ppl (mean over seeds), gap_reduction
  (in perplexity, per seed against the same-seed baseline) and gap_reduction_loss (the same in
  loss: (loss_baseline - loss_arm) / (loss_baseline - loss_teacher)); stds are over seeds, ddof=1."""
  teacher_ppl, teacher_loss = teacher["eval_ppl"], teacher["eval_loss"]
  base_by_seed = {r["seed"]: r for r in arm_results[baseline]}
  arms = []
  for name, runs in arm_results.items():
    ppls = [r["eval_ppl"] for r in runs]
    paired = [r for r in runs if r["seed"] in base_by_seed]
    gaps = [gap_reduction(base_by_seed[r["seed"]]["eval_ppl"], r["eval_ppl"], teacher_ppl) for r in paired]
    gaps_loss = [gap_reduction(base_by_seed[r["seed"]]["eval_loss"], r["eval_loss"], teacher_loss) for r in paired]
    step0 = [r["step0_ppl"] for r in runs if r.get("step0_ppl") is not None]
    arms.append({"name": name, "ppl": float(np.mean(ppls)), "ppl_std": _std(ppls),
                 "ppl_per_seed": ppls, "loss_per_seed": [r["eval_loss"] for r in runs],
                 "seeds": [r["seed"] for r in runs],
                 "gap_reduction": float(np.mean(gaps)) if gaps else float("nan"),
                 "gap_reduction_std": _std(gaps),
                 "gap_reduction_per_seed": gaps,
                 "gap_reduction_loss": float(np.mean(gaps_loss)) if gaps_loss else float("nan"),
                 "gap_reduction_loss_std": _std(gaps_loss), "gap_reduction_loss_per_seed": gaps_loss,
                 "tokens_seen": runs[0]["tokens_seen"],
                 "step0_ppl": float(np.mean(step0)) if step0 else None,
                 "train_flops": train_flops(runs[0], teacher), "model_config": runs[0]["model_config"],
                 "downstream": _mean_columns(runs)})
  base_ppl = float(np.mean([r["eval_ppl"] for r in base_by_seed.values()]))
  return {"teacher_ppl": teacher_ppl, "teacher_loss": teacher_loss, "baseline": baseline, "baseline_ppl": base_ppl,
          "baseline_loss": float(np.mean([r["eval_loss"] for r in base_by_seed.values()])),
          "teacher_below_baseline": (base_ppl - teacher_ppl) / base_ppl, "arms": arms,
          "teacher": {k: teacher[k] for k in ("eval_ppl", "eval_loss", "tokens_seen", "model_config")},
          "teacher_downstream": teacher.get("downstream") or {}}


def _mean_columns(runs: List[dict]) -> dict:
  """guide_jax.evaluate.columns of each seed's run (result["downstream"]), averaged over seeds."""
  names = sorted({k for r in runs for k in r.get("downstream") or {}})
  return {k: float(np.mean([r["downstream"][k] for r in runs if k in r.get("downstream") or {}])) for k in names}


def train_flops(run: dict, teacher: dict) -> float:
  """Training FLOPs of one run: tokens x (3 x the student's forward + the teacher's forward if KD),
  plus what its start spent on forwards: pruning's calibration batches (the teacher's, on
  PruneConfig.calibration_batches x batch x seq_len tokens) and GUIDE's output calibration (the
  student's, GuideConfig.calibration_batches). GUIDE's covariance (2 V d_T^2) and
  Weight Selection's indexing are left out (below 1e-4 of any run here)."""
  student = ModelConfig(**run["model_config"])
  teacher_forward = ModelConfig(**teacher["model_config"]).forward_flops_per_token(run["seq_len"])
  per_token = student.train_flops_per_token(run["seq_len"])
  if run.get("kd_alpha", 0) > 0:
    per_token += teacher_forward
  flops = per_token * run["tokens_seen"]
  options = run.get("start") or {}
  if run.get("init") == "prune":
    calibration = options.get("prune", {}).get("calibration_batches", 0)
    flops += teacher_forward * calibration * run["batch_size"] * run["seq_len"]
  if run.get("init") == "guide":  # GuideConfig.calibration_batches: one student forward, a softmax per scale
    from guide_jax.transforms import calibrate  # pylint: disable=g-import-not-at-top
    calibration = options.get("guide", {}).get("calibration_batches", 0)
    per_token = student.forward_flops_per_token(run["seq_len"]) + 3 * len(calibrate.SCALES) * student.vocab_size
    flops += per_token * calibration * run["batch_size"] * run["seq_len"]
  return float(flops)


def study_json(summaries: Dict[str, dict], seeds: Sequence[int]) -> dict:
  """A budgets x arms study (e.g. reports/beyond.json): per budget the teacher and baseline
  perplexities, per arm and budget the gap reduction (mean, std over seeds), ppl and FLOPs."""
  out = {"seeds": list(seeds), "budgets_tokens": {}, "teacher_ppl": {}, "baseline_ppl": {},
         "teacher_loss": {}, "baseline_loss": {}, "arms": []}
  for budget, summary in summaries.items():
    tokens = summary["arms"][0]["tokens_seen"]
    out["budgets_tokens"][budget] = tokens
    out["teacher_ppl"][budget] = summary["teacher_ppl"]
    out["baseline_ppl"][budget] = summary["baseline_ppl"]
    out["teacher_loss"][budget] = summary["teacher_loss"]
    out["baseline_loss"][budget] = summary["baseline_loss"]
    for arm in summary["arms"]:
      out["arms"].append({"name": arm["name"], "budget": budget, "budget_tokens": arm["tokens_seen"],
                          "gap_reduction_mean": arm["gap_reduction"], "gap_reduction_std": arm["gap_reduction_std"],
                          "gap_reduction_per_seed": arm["gap_reduction_per_seed"],
                          "gap_reduction_loss_mean": arm["gap_reduction_loss"],
                          "gap_reduction_loss_per_seed": arm["gap_reduction_loss_per_seed"],
                          "ppl_per_seed": arm["ppl_per_seed"], "loss_per_seed": arm["loss_per_seed"],
                          "ppl_mean": arm["ppl"],
                          "ppl_std": arm["ppl_std"], "step0_ppl_mean": arm["step0_ppl"],
                          "train_flops": arm["train_flops"], "seeds": arm["seeds"]})
  return out


def markdown_table(summary: dict) -> str:
  lines = [f"Teacher held-out perplexity: {summary['teacher_ppl']:.3f} "
           f"({100 * summary['teacher_below_baseline']:.1f} % below the baseline student's)", "",
           "| arm | held-out ppl (mean ± std) | seeds | gap reduction (mean) | per seed |",
           "|---|---|---|---|---|"]
  for arm in summary["arms"]:
    per_seed = ", ".join(f"{100 * g:.1f} %" for g in arm["gap_reduction_per_seed"])
    lines.append(f"| {arm['name']} | {arm['ppl']:.3f} ± {arm['ppl_std']:.3f} | {len(arm['seeds'])} | "
                 f"{100 * arm['gap_reduction']:.1f} % | {per_seed} |")
  return _with_downstream(lines, summary)


def _with_downstream(lines: List[str], summary: dict) -> str:
  """The table with guide_jax.evaluate's columns (sweep.downstream) at the end, and a teacher row."""
  cols = sorted({k for a in summary["arms"] for k in a.get("downstream") or {}})
  if cols:
    lines[2] += " " + " | ".join(cols) + " |"
    lines[3] += "---|" * len(cols)
    for i, arm in enumerate(summary["arms"]):
      lines[4 + i] += " " + " | ".join(evaluate.format_column(k, (arm.get("downstream") or {}).get(k)) for k in cols) + " |"
    teacher = summary.get("teacher_downstream") or {}
    lines.append(f"| teacher | {summary['teacher_ppl']:.3f} | | | | "
                 + " | ".join(evaluate.format_column(k, teacher.get(k)) for k in cols) + " |")
  return "\n".join(lines) + "\n"


def plot(summary: dict, run_dirs: Dict[str, List[str]], path: str) -> None:
  """Held-out ppl curves per arm (seed 0) and gap-reduction bars, written atomically as PNG."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
  for name, dirs in run_dirs.items():
    evals = metrics.read_metrics(dirs[0], "eval")
    steps = sorted(evals)
    ax1.plot(steps, [evals[s]["ppl"] for s in steps], marker="o", label=name)
  ax1.axhline(summary["teacher_ppl"], color="k", linestyle="--", label="teacher")
  ax1.set(xlabel="step", ylabel="held-out perplexity", yscale="log", title="Held-out perplexity (seed 0)")
  ax1.legend(fontsize=8)
  arms = [a for a in summary["arms"] if a["name"] != summary["baseline"]]
  ax2.bar([a["name"] for a in arms], [100 * a["gap_reduction"] for a in arms],
          yerr=[100 * _std(a["gap_reduction_per_seed"]) for a in arms], capsize=4)
  ax2.axhline(0, color="k", linewidth=0.8)
  ax2.set(ylabel="gap reduction (%)", title="Teacher-student gap reduction vs baseline")
  ax2.tick_params(axis="x", rotation=30)
  fig.tight_layout()
  with fileio.atomic_open(path, "wb") as f:
    fig.savefig(f, format="png", dpi=110)
  plt.close(fig)


def _budget_results(run_dir: str, result: dict, budget: Optional[str], branches: Optional[Dict[str, int]]):
  """[(budget name, results.json, run dir)] of one finished run: itself, or with branches every
  budget's, the shorter ones from <run_dir>/branches/<steps>/ (train.train.branches)."""
  if branches is None:
    return [(budget, result, run_dir)]
  out = []
  for name, steps in sorted(branches.items(), key=lambda kv: kv[1]):
    if steps == result["step"]:
      out.append((name, result, run_dir))
      continue
    branch_dir = fileio.join(run_dir, "branches", str(steps))
    branch = read_result(branch_dir)
    if branch is None:
      raise RuntimeError(f"{run_dir} finished without its branch of {steps} steps ({branch_dir}/results.json)")
    out.append((name, branch, branch_dir))
  return out


def check_settings(plan: Sequence[Tuple[str, list, list]], rerun_changed: bool) -> List[str]:
  """Run dirs of `plan` [(run_dir, gin_files, bindings)] whose recorded settings differ from what
  is asked now; ValueError naming each (before anything runs) unless rerun_changed."""
  changed, lines = [], []
  for run_dir, files, bindings in plan:
    try:
      saved = json.loads(fileio.read_text(fileio.join(run_dir, SETTINGS_FILE)))
    except FileNotFoundError:
      continue  # not started yet (or by a sweep that recorded nothing)
    diff = settings_diff(saved, run_settings(files, bindings))
    if diff:
      changed.append(run_dir)
      lines.append(f"{run_dir}: " + "; ".join(diff))
  if changed and not rerun_changed:
    raise ValueError("sweep: these runs were made with other settings than the sweep's gin now asks for "
                     "(their results would be mixed with the new ones):\n  " + "\n  ".join(lines) +
                     "\nUse a new output_dir, or set sweep.sweep.rerun_changed = True to rerun them from scratch.")
  return changed


def sweep(output_dir: str = gin.REQUIRED, base: Sequence[str] = ("gin/runs/pretrain.gin",),
          teacher: Sequence[str] = gin.REQUIRED, student: Sequence[str] = gin.REQUIRED,
          arms: Dict[str, Sequence[str]] = gin.REQUIRED, seeds: Sequence[int] = (0,),
          baseline: str = "baseline", dry_run: bool = False,
          time_budget_s: Optional[float] = None,
          budgets: Optional[Dict[str, Sequence[str]]] = None, rerun_changed: bool = False,
          downstream: Sequence[str] = (), downstream_limit: Optional[int] = evaluate.SWEEP_LIMIT,
          branches: Optional[Dict[str, int]] = None, teacher_dir: Optional[str] = None) -> Optional[dict]:
  """Train the teacher (base + teacher specs), then each arm (base + student + arm specs) per seed.

  Specs are lists of gin files and bindings. Every arm gets TEACHER_DIR bound to the teacher run,
  and SEED to its seed, so all arms see the same tokens in the same order per seed.
  time_budget_s: stop (resumably) after this long: raises TimeBudgetReached.
  budgets: {name: bindings} (e.g. TRAIN_STEPS): every arm x seed runs once per budget, smallest
  first, into <output_dir>/<budget>/<arm>/seed_k; results.json then holds one summary per budget
  and study.json the budgets x arms table.
  rerun_changed: rerun (from scratch) runs whose recorded settings differ from the ones asked
  now, instead of refusing; a rerun teacher reruns every arm.
  branches: {name: steps}, the budgets of a warmup-stable-decay study (the student spec includes
  gin/wsd.gin): each arm x seed is ONE run of the largest steps, into <output_dir>/<arm>/seed_k,
  which branches every smaller budget off at its decay start (TRAIN_STEPS and BRANCH_STEPS are
  bound here); results.json / study.json then hold one summary per budget, as with `budgets`.
  teacher_dir: where the teacher run lives (default <output_dir>/teacher): several sweeps (e.g. one
  per student shape) share one teacher; each trains it if absent, with its own teacher spec, and
  refuses a teacher made with other settings.
  downstream: guide_jax.evaluate task names: every finished run (the teacher too) is evaluated on the
  first downstream_limit documents of each (None: all), as columns at the end of the table.
  """
  deadline = None if time_budget_s is None else time.time() + time_budget_s
  if baseline not in arms:
    raise ValueError(f"sweep.arms must include the baseline arm {baseline!r}; got {sorted(arms)}")
  if branches is not None:
    if budgets is not None:
      raise ValueError("sweep: set budgets (a run per budget) or branches (one run per arm x seed, "
                       "branched), not both")
    if not branches or any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in branches.values()) \
        or len(set(branches.values())) != len(branches):
      raise ValueError(f"sweep.branches must map budget names to distinct positive step counts, got {branches!r}")
  all_files = set(split_spec(base)[0] + split_spec(teacher)[0] + split_spec(student)[0])
  for spec in arms.values():
    all_files.update(split_spec(spec)[0])
  missing = [f for f in sorted(all_files) if not os.path.exists(os.path.join(gin_utils.REPO_ROOT, f))
             and not os.path.exists(f)]
  if missing:
    raise ValueError(f"sweep: gin files not found: {missing}")
  output_dir = fileio.absolute(output_dir)
  teacher_dir = fileio.absolute(teacher_dir) if teacher_dir else fileio.join(output_dir, "teacher")
  plan = [(teacher_dir, *split_spec(list(base) + list(teacher)), "teacher", None, None)]
  if branches is not None:
    longest = max(branches.values())
    branch_spec = [f"TRAIN_STEPS = {longest}", f"BRANCH_STEPS = {sorted(v for v in branches.values() if v < longest)}"]
  for budget, budget_spec in ({None: branch_spec} if branches is not None else budgets or {None: []}).items():
    for seed in seeds:
      for name, spec in arms.items():
        run_dir = fileio.join(output_dir, *([budget] if budget else []), name, f"seed_{seed}")
        files, bindings = split_spec(list(base) + list(student) + list(budget_spec) + list(spec))
        bindings = bindings + [f"TEACHER_DIR = {gin_string(teacher_dir)}", f"SEED = {seed}"]
        plan.append((run_dir, files, bindings, f"{budget + ' ' if budget else ''}{name} seed {seed}", budget, name))
  if not dry_run:
    fileio.probe_writable(output_dir, "sweep output_dir")
    changed = check_settings([p[:3] for p in plan], rerun_changed)
    if teacher_dir in changed:
      changed = [p[0] for p in plan]
    for run_dir in changed:
      logging.warning("rerunning %s from scratch: its settings changed", run_dir)
      fileio.rmtree(run_dir)
  teacher_result = None
  arm_results, run_dirs = {}, {}
  for run_dir, files, bindings, label, budget, name in plan:
    result = run_once(run_dir, files, bindings, dry_run, label=label, deadline=deadline)
    if result is not None and downstream:
      result["downstream"] = evaluate.run_columns(run_dir, downstream, downstream_limit)
    if name is None:
      teacher_result = result
    elif result is not None:
      evals = metrics.read_metrics(run_dir, "eval")
      step0 = float(np.exp(evals[0]["loss"])) if 0 in evals else None
      for budget_name, budget_result, budget_dir in _budget_results(run_dir, result, budget, branches):
        budget_result["step0_ppl"] = step0
        arm_results.setdefault(budget_name, {}).setdefault(name, []).append(budget_result)
        run_dirs.setdefault(budget_name, {}).setdefault(name, []).append(budget_dir)
  if dry_run:
    return None
  summaries, tables = {}, []
  if branches is not None:
    budgets = {b: [] for b in sorted(branches, key=branches.get)}
  for budget in (budgets or {None: []}):
    summaries[budget] = summarize(teacher_result, arm_results[budget], baseline)
    tables.append((f"## {budget}\n\n" if budget else "") + markdown_table(summaries[budget]))
  summary = summaries[None] if budgets is None else {"budgets": summaries}
  fileio.atomic_write_text(fileio.join(output_dir, "results.json"), json.dumps(summary, indent=2))
  if budgets is not None:
    fileio.atomic_write_text(fileio.join(output_dir, "study.json"),
                             json.dumps(study_json(summaries, seeds), indent=2))
  table = "\n".join(tables)
  fileio.atomic_write_text(fileio.join(output_dir, "results.md"), table)
  try:
    last = list(summaries)[-1]
    plot(summaries[last], run_dirs[last], fileio.join(output_dir, "results.png"))
    written = "results.json, results.md, results.png"
  except ImportError:  # a bare accelerator image without matplotlib: the table and JSON suffice
    written = "results.json, results.md (no matplotlib: no plot)"
  print(table)
  print(f"wrote {output_dir}/{written}")
  return summary


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  gin_utils.parse(flags.FLAGS.gin_file, flags.FLAGS.gin_bindings)
  metrics.quiet_library_logs()
  try:
    gin.get_configurable(sweep)(dry_run=flags.FLAGS.dry_run)  # registered by the gin file
  except TimeBudgetReached as e:
    print(f"{e}: progress is saved; run the same command again to continue")


def run():
  gin_utils.define_flags()
  if "dry_run" not in flags.FLAGS:
    flags.DEFINE_bool("dry_run", False, "print the train commands instead of running them.")
  app.run(lambda argv: cli.exit_on_error("guide_jax.sweep", main, argv), argv=gin_utils.rewrite_gin_args(sys.argv))


if __name__ == "__main__":
  # Run the importable module's sweep (the one gin files name as guide_jax.sweep.sweep), not __main__'s.
  from guide_jax import sweep as _sweep_module  # pylint: disable=import-self
  _sweep_module.run()
