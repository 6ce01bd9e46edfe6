r"""Step-0 diagnosis: what each start of a sweep predicts before any training step, and why.

  python -m guide_jax.diagnose --gin_file=gin/sweeps/longrun.gin --seeds=0,1 --output=reports/longrun_step0.json

For every arm of the sweep (or --arms), the student is started exactly as the sweep's run would
start it (the same gin files and bindings, TEACHER_DIR and SEED; the start built by its
guide_jax.starts factory), then measured on the first --batches held-out batches:
  loss / ppl / top1          cross-entropy, perplexity, top-1 accuracy of the next token
  p_repeat                   mean probability given to the next token being the input token
  argmax_repeat              share of positions whose top-1 prediction is the input token
                             (data_repeat: share of positions where the next token IS the input token)
  logit_std, entropy         std of the logits over the vocabulary, entropy of the prediction (nats)
  best_temperature, loss_at_best_temperature
                             the T in a log grid minimizing the loss of logits / T: how much of the
                             step-0 loss is the output scale alone
  final_norm_scale_mean      mean of decoder_norm/scale (the tied head's gain)
  embedding_row_norm_mean    mean L2 norm of the student's embedding rows (teacher's alongside)
  final_residual_rms         rms of the residual stream entering the final norm
GUIDE starts also record the explained variance of their PCA (GuideResult.info).
"""
import json
import sys
from typing import Dict, List, Optional, Sequence

from absl import app, flags, logging
import gin
import jax
import jax.numpy as jnp
import numpy as np

from guide_jax import cli, fileio, gin_utils, metrics, model as model_lib, sharding, starts, teachers, trainer
from guide_jax import sweep as sweep_lib

TEMPERATURES = tuple(float(t) for t in np.exp(np.linspace(np.log(0.05), np.log(20.0), 61)))


def step0_stats(config, params, batches: Sequence[dict], teacher_params=None) -> dict:
  """The step-0 figures of `params` (module docstring) over local batches (dicts of [B, T])."""
  residual_rms = _final_residual_rms(config)

  @jax.jit
  def per_batch(p, tokens, targets, weights):
    logits = model_lib.apply(config, p, tokens)
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    probs = jnp.exp(logp)
    p_in = jnp.take_along_axis(probs, tokens[..., None], axis=-1)[..., 0]
    top = jnp.argmax(logits, axis=-1)
    ent = -jnp.sum(probs * logp, axis=-1)
    temps = jnp.asarray(TEMPERATURES)
    nll_t = jax.vmap(lambda t: jnp.sum(weights * -jnp.take_along_axis(
        jax.nn.log_softmax(logits / t, axis=-1), targets[..., None], axis=-1)[..., 0]))(temps)
    w = weights
    return {"nll": jnp.sum(w * nll), "top1": jnp.sum(w * (top == targets)), "p_repeat": jnp.sum(w * p_in),
            "argmax_repeat": jnp.sum(w * (top == tokens)), "data_repeat": jnp.sum(w * (targets == tokens)),
            "logit_std": jnp.sum(w * jnp.std(logits, axis=-1)), "entropy": jnp.sum(w * ent),
            "residual_rms": jnp.sum(w * residual_rms(p, tokens)), "nll_t": nll_t, "weight": jnp.sum(w)}

  total = None
  for b in batches:
    out = per_batch(params, jnp.asarray(b["decoder_input_tokens"]), jnp.asarray(b["decoder_target_tokens"]),
                    jnp.asarray(b["decoder_loss_weights"], jnp.float32))
    out = jax.tree_util.tree_map(np.asarray, out)
    total = out if total is None else jax.tree_util.tree_map(np.add, total, out)
  w = float(total.pop("weight"))
  nll_t = total.pop("nll_t") / w
  stats = {k: float(v) / w for k, v in total.items()}
  stats["loss"] = stats.pop("nll")
  stats["ppl"] = float(np.exp(stats["loss"]))
  best = int(np.argmin(nll_t))
  stats["best_temperature"] = TEMPERATURES[best]
  stats["loss_at_best_temperature"] = float(nll_t[best])
  decoder = params["decoder"]
  stats["final_norm_scale_mean"] = float(np.mean(np.asarray(decoder["decoder_norm"]["scale"])))
  stats["embedding_row_norm_mean"] = float(np.mean(np.linalg.norm(np.asarray(decoder["token_embedder"]["embedding"]), axis=1)))
  if teacher_params is not None:
    stats["teacher_embedding_row_norm_mean"] = float(np.mean(np.linalg.norm(
        np.asarray(teacher_params["decoder"]["token_embedder"]["embedding"]), axis=1)))
  return stats


def _final_residual_rms(config):
  """rms(residual entering the final norm) [B, T], from the model's own intermediates."""
  def fn(p, tokens):
    _, state = model_lib.Transformer(config).apply(
        {"params": p}, tokens, capture_intermediates=True, mutable=["intermediates"])
    layer = state["intermediates"]["decoder"][f"layers_{config.n_layers - 1}"]["__call__"][0]
    x = layer[0] if isinstance(layer, tuple) else layer
    return jnp.sqrt(jnp.mean(jnp.square(x.astype(jnp.float32)), axis=-1))
  return fn


def arm_runs(sweep_gin: str, arms: Optional[Sequence[str]], seed: int):
  """[(arm, gin files, bindings)] as guide_jax.sweep would run them (for `seed`), and the sweep's
  output_dir."""
  gin.clear_config()
  gin_utils.parse([sweep_gin], [])
  q = lambda name, default=None: _query(f"sweep.sweep.{name}", default)
  output_dir = fileio.absolute(q("output_dir"))
  teacher_dir = fileio.absolute(q("teacher_dir")) if q("teacher_dir") else fileio.join(output_dir, "teacher")
  base, student, all_arms = list(q("base", ["gin/runs/pretrain.gin"])), list(q("student")), dict(q("arms"))
  branches = q("branches")
  extra = [f"TRAIN_STEPS = {max(branches.values())}"] if branches else []
  gin.clear_config()
  out = []
  for name in arms or all_arms:
    files, bindings = sweep_lib.split_spec(base + student + extra + list(all_arms[name]))
    bindings += [f"TEACHER_DIR = {sweep_lib.gin_string(teacher_dir)}", f"SEED = {seed}", "MODEL_DIR = '/nonexistent'"]
    out.append((name, files, bindings))
  return out, output_dir


def _query(name, default=None):
  try:
    return gin.query_parameter(name)
  except ValueError:
    return default


def _value(name):
  ref = gin.query_parameter(name)
  return ref.scoped_configurable_fn() if isinstance(ref, gin.config.ConfigurableReference) else ref


def diagnose_arm(files, bindings, batches_n: int) -> dict:
  """Start one arm's student as its run would and measure it (step0_stats)."""
  from guide_jax.data import batches as batches_lib, prepare, prepared  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  gin_utils.parse(files, bindings)
  try:
    config, start, data = _value("train.train.model"), _value("train.train.start"), _value("train.train.data")
    seed, optimizer = _value("train.train.seed"), _value("train.train.optimizer")
  finally:
    gin.clear_config()
  mesh = sharding.make_mesh(1, jax.devices()[:1])
  data_dir = data.data_dir or prepare.ensure_prepared(data.corpus, data.cache_dir, data.vocab_size)
  tokens = prepared.load_prepared(data_dir, verify=False)
  train_batches = batches_lib.LMBatches(tokens.train, data.seq_len, data.batch_size, seed=seed)
  abstract = trainer.abstract_state(config, optimizer, mesh)
  loaded = {}

  def load_teacher(source):
    source = teachers.as_source(source)
    if source not in loaded:
      loaded[source] = teachers.load(source, mesh, vocab_size=config.vocab_size)
    return loaded[source]

  info = {}
  name, options = starts.describe(start)
  if name == "guide":  # the explained variance of its PCA, from the transform's own info
    from guide_jax.transforms import guide_init  # pylint: disable=g-import-not-at-top
    t_params, t_config, _ = load_teacher(starts.teacher_of(start))
    result = guide_init(t_params, t_config, config, start.keywords["guide"], mesh=mesh)
    info = {"explained_variance": result.info.explained_variance, "teacher_layers": list(result.info.teacher_layers)}
  params = start(starts.Context(config, abstract, mesh, train_batches, load_teacher))
  params = jax.device_get(params)
  evals = list(batches_lib.eval_batches(tokens.validation, data.seq_len, data.batch_size, 0, 1))[:batches_n]
  teacher_source = starts.teacher_of(start)
  teacher_params = load_teacher(teacher_source)[0] if teacher_source else None
  stats = step0_stats(config, params, evals, jax.device_get(teacher_params) if teacher_params is not None else None)
  return {"start": name, "options": options, **info, **stats}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  metrics.quiet_library_logs()
  f = flags.FLAGS
  seeds = [int(s) for s in f.seeds.split(",")]
  if len(f.gin_file) != 1:
    raise ValueError("--gin_file: one sweep gin file (e.g. gin/sweeps/longrun.gin)")
  rows, output_dir = [], None
  for seed in seeds:
    runs, output_dir = arm_runs(f.gin_file[0], f.arms.split(",") if f.arms else None, seed)
    for name, files, bindings in runs:
      row = {"arm": name, "seed": seed, **diagnose_arm(files, bindings, f.batches)}
      rows.append(row)
      print(json.dumps(row), flush=True)
  out = {"sweep_gin": f.gin_file[0], "output_dir": output_dir, "batches": f.batches, "seeds": seeds, "rows": rows,
         "command": " ".join(["python -m guide_jax.diagnose"] + sys.argv[1:])}
  if f.output:
    fileio.atomic_write_json(f.output, out)
  print(markdown(rows))


def markdown(rows: List[dict]) -> str:
  """One line per arm (means over the seeds diagnosed)."""
  cols = ["ppl", "top1", "p_repeat", "argmax_repeat", "logit_std", "entropy", "best_temperature",
          "loss_at_best_temperature", "final_norm_scale_mean", "embedding_row_norm_mean", "residual_rms",
          "explained_variance"]
  by_arm: Dict[str, List[dict]] = {}
  for r in rows:
    by_arm.setdefault(r["arm"], []).append(r)
  lines = ["| arm | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
  for arm, rs in by_arm.items():
    vals = []
    for c in cols:
      xs = [r[c] for r in rs if r.get(c) is not None]
      vals.append(f"{np.mean(xs):.4g}" if xs else "")
    lines.append(f"| {arm} | " + " | ".join(vals) + " |")
  return "\n".join(lines) + "\n"


def run():
  gin_utils.define_flags()  # --gin_file is the sweep's gin file
  flags.DEFINE_string("arms", "", "comma-separated arms (default: every arm of the sweep)")
  flags.DEFINE_string("seeds", "0", "comma-separated seeds")
  flags.DEFINE_integer("batches", 8, "held-out batches to measure on")
  flags.DEFINE_string("output", "", "write the rows as JSON here")
  app.run(lambda argv: cli.exit_on_error("guide_jax.diagnose", main, argv), argv=gin_utils.rewrite_gin_args(sys.argv))


if __name__ == "__main__":
  from guide_jax import diagnose as _module  # pylint: disable=import-self
  _module.run()
