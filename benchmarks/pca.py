"""PCA of embedding tables and guide_init: guide_jax vs the jitted limit, jnp SVD, scikit-learn, numpy.

  python -m benchmarks.pca --sizes=32768x2048,65536x4096,131072x8192,262144x8192 \
      --guide_init_shapes=1b_from_7b --json_out=reports/pca_gpu.json        # on an H100
  python -m benchmarks.pca --smoke                                          # CPU, seconds

Methods, per V x d table (random standard-normal float32, row-sharded over a mesh of all local
devices), k = d * --k_frac student components:
  ours        guide_jax.transforms.pca_embedding(table, k, mesh=mesh): covariance + eigh + E M
  limit       one jit of mean, covariance matmul (precision HIGHEST, as ours) and eigh, nothing else
  limit_full  one jit of limit + top-k + projection E M (the whole job with no overheads)
  svd         one jit of jnp.linalg.svd(E - mu, full_matrices=False)
  sklearn     sklearn.decomposition.PCA(k, svd_solver=covariance_eigh|full).fit_transform (host CPU)
  numpy       np covariance (f32 BLAS) + np.linalg.eigh + projection (host CPU)
FLOP counts (stated, standard): covariance 2 V d^2; symmetric eigendecomposition with vectors 9 d^3
(Golub & Van Loan, symmetric QR); projection 2 V d k; thin SVD with U 6 V d^2 + 20 d^3 (GvL R-SVD).
ours / numpy / sklearn / limit_full are credited 2Vd^2 + 9d^3 + 2Vdk, limit 2Vd^2 + 9d^3, svd its own.
Time: median of --repeats after --warmup untimed calls (JAX: compile), outputs block_until_ready.

guide_init: a student from a random teacher (shapes: --guide_init_shapes), the first call timed
cold (includes compiles) and later calls warm; peak memory: on CPU the peak RSS (VmHWM, reset right
before the call) over the RSS before the teacher existed, on a GPU/TPU peak_bytes_in_use; both are
reported relative to the teacher's parameter bytes (so 1.0 = the teacher alone).
"""
import argparse
import os
import sys
import time

if __package__ in (None, ""):  # `python benchmarks/pca.py`
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from guide_jax import model as model_lib, sharding  # noqa: E402
from guide_jax.config import GuideConfig  # noqa: E402
from guide_jax.transforms import compiled_guide_init, guide_init, pca_embedding  # noqa: E402
from guide_jax.transforms.pca import HIGHEST  # noqa: E402

METHODS = ("ours", "limit", "limit_full", "svd", "sklearn", "numpy")
FLOP_FORMULAS = {
    "covariance": "2*V*d^2", "eigh": "9*d^3", "projection": "2*V*d*k", "svd": "6*V*d^2 + 20*d^3",
    "ours|numpy|sklearn|limit_full": "2*V*d^2 + 9*d^3 + 2*V*d*k", "limit": "2*V*d^2 + 9*d^3",
}
GPU_SIZES = "32768x2048,65536x4096,131072x8192,262144x8192"
CPU_SIZES = "32768x1024,32768x2048"
SMOKE_SIZES = "2048x128"
GUIDE_PRESETS = ("1b_from_7b", "1b_from_7b_div2", "1b_from_7b_div4", "400m_from_1_6b", "small", "tiny")


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--sizes", default=None,
                 help=f"VxD[,VxD...] or 'none' (default: {GPU_SIZES} on an accelerator, {CPU_SIZES} on CPU)")
  p.add_argument("--k_frac", type=float, default=0.5, help="student components k = d * k_frac")
  p.add_argument("--methods", default=",".join(METHODS), help="subset of " + ",".join(METHODS))
  p.add_argument("--repeats", type=int, default=None, help="timed calls per method (default 5, CPU 3)")
  p.add_argument("--warmup", type=int, default=1, help="untimed calls before timing (JAX methods)")
  p.add_argument("--host_warmup", type=int, default=0, help="untimed calls for sklearn / numpy")
  p.add_argument("--sklearn_max_elems", type=int, default=None,
                 help="run sklearn only for V*d <= this (default 2^27 accelerator, 2^25 CPU)")
  p.add_argument("--numpy_max_elems", type=int, default=None, help="same for numpy (default: sklearn's)")
  p.add_argument("--svd_max_elems", type=int, default=None,
                 help="run jnp svd only for V*d <= this (default 2^28 accelerator, 2^25 CPU)")
  p.add_argument("--sklearn_solver", default="auto", choices=("auto", "covariance_eigh", "full"),
                 help="auto: covariance_eigh where this sklearn has it, else full")
  p.add_argument("--center", action="store_true", help="ours: E_S = (E - mu) M (default E M)")
  p.add_argument("--guide_init_shapes", default="auto",
                 help="none | auto (1b_from_7b on an accelerator, 1b_from_7b_div4 on CPU) | "
                      + " | ".join(GUIDE_PRESETS) + " | STUDENT/TEACHER (gin/models names)")
  p.add_argument("--guide_init_repeats", type=int, default=2, help="guide_init calls: first cold, rest warm")
  p.add_argument("--guide_blocks", default="first", choices=("first", "all", "none"))
  p.add_argument("--teacher_param_dtype", default="bfloat16", choices=("bfloat16", "float32"),
                 help="the teacher's stored parameter dtype (a 7B teacher in bf16 is ~13.5 GB)")
  p.add_argument("--guide_input", default="device", choices=("device", "host"),
                 help="teacher params as device arrays (sharded, as guide_jax.train restores them) or host numpy")
  p.add_argument("--vocab_size", type=int, default=None, help="guide_init vocab (default from the gin files)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--smoke", action="store_true", help="tiny sizes and shapes, 1 repeat (CPU test)")
  p.add_argument("--json_out", default=None, help="write all figures here (atomically)")
  args = p.parse_args(argv)
  accel = common.is_accelerator()
  if args.smoke:
    args.sizes = args.sizes or SMOKE_SIZES
    args.repeats = args.repeats or 1
    if args.guide_init_shapes == "auto":
      args.guide_init_shapes = "tiny"
  args.sizes = args.sizes or (GPU_SIZES if accel else CPU_SIZES)
  args.repeats = args.repeats or (5 if accel else 3)
  args.sklearn_max_elems = args.sklearn_max_elems or (2 ** 27 if accel else 2 ** 25)
  args.numpy_max_elems = args.numpy_max_elems or args.sklearn_max_elems
  args.svd_max_elems = args.svd_max_elems or (2 ** 28 if accel else 2 ** 25)
  if args.guide_init_shapes == "auto":
    args.guide_init_shapes = "1b_from_7b" if accel else "1b_from_7b_div4"
  methods = [m.strip() for m in args.methods.split(",") if m.strip()]
  unknown = sorted(set(methods) - set(METHODS))
  if unknown:
    p.error(f"unknown --methods {unknown}; choose from {METHODS}")
  args.methods = methods
  return args


def parse_sizes(text: str):
  if text.strip().lower() in ("", "none"):
    return []
  sizes = []
  for item in text.split(","):
    v, d = item.lower().split("x")
    sizes.append((int(v), int(d)))
  return sizes


def flops(v: int, d: int, k: int) -> dict:
  cov, eigh, proj = 2.0 * v * d * d, 9.0 * d ** 3, 2.0 * v * d * k
  full = cov + eigh + proj
  return {"ours": full, "numpy": full, "sklearn": full, "limit_full": full, "limit": cov + eigh,
          "svd": 6.0 * v * d * d + 20.0 * d ** 3}


def sklearn_solver(requested: str) -> str:
  if requested != "auto":
    return requested
  import sklearn
  major, minor = (int(x) for x in sklearn.__version__.split(".")[:2])
  return "covariance_eigh" if (major, minor) >= (1, 5) else "full"


def bench_size(v, d, args, mesh, stash):
  """Time every method on one V x d table; returns the JSON record."""
  k = max(1, int(round(d * args.k_frac)))
  rows = sharding.rows_sharding(mesh) if v % mesh.size == 0 else None
  key = jax.random.PRNGKey(args.seed)
  table = jax.jit(lambda r: jax.random.normal(r, (v, d), jnp.float32), out_shardings=rows)(key)
  table.block_until_ready()
  host = None
  fl = flops(v, d, k)
  rec = {"V": v, "d": d, "k": k, "table_bytes": v * d * 4, "flops": fl, "seconds": {}, "seconds_min": {}, "times": {},
         "tflops": {}, "skipped": {}}

  @jax.jit
  def limit(x):
    mean = jnp.mean(x, axis=0)
    c = x - mean
    cov = jnp.einsum("vd,ve->de", c, c, precision=HIGHEST) / x.shape[0]
    return jnp.linalg.eigh(cov)

  @jax.jit
  def limit_full(x):
    w, vecs = limit(x)
    m = vecs[:, ::-1][:, :k]
    return w[::-1][:k], jnp.einsum("vd,dk->vk", x, m, precision=HIGHEST)

  svd = jax.jit(lambda x: jnp.linalg.svd(x - jnp.mean(x, axis=0), full_matrices=False))

  def ours():
    r = pca_embedding(table, k, mesh=mesh, center=args.center)
    stash["ours"] = r.eigenvalues
    return r

  def run_limit():
    w, vecs = limit(table)
    stash["limit"] = w[::-1][:k]
    return w, vecs

  def numpy_pca():
    mean = host.mean(axis=0)
    c = host - mean
    cov = (c.T @ c) / v
    w, vecs = np.linalg.eigh(cov)
    m = vecs[:, ::-1][:, :k]
    return host @ m

  solver = sklearn_solver(args.sklearn_solver)

  def sklearn_pca():
    from sklearn.decomposition import PCA
    return PCA(n_components=k, svd_solver=solver).fit_transform(host)

  plan = {"ours": (ours, args.warmup), "limit": (run_limit, args.warmup),
          "limit_full": (lambda: limit_full(table), args.warmup), "svd": (lambda: svd(table), args.warmup),
          "sklearn": (sklearn_pca, args.host_warmup), "numpy": (numpy_pca, args.host_warmup)}
  caps = {"svd": args.svd_max_elems, "sklearn": args.sklearn_max_elems, "numpy": args.numpy_max_elems}
  for name in args.methods:
    if name in caps and v * d > caps[name]:
      rec["skipped"][name] = f"V*d={v * d} > --{name}_max_elems={caps[name]}"
      continue
    if name in ("sklearn", "numpy") and host is None:
      host = np.asarray(jax.device_get(table))
    fn, warm = plan[name]
    med, times = common.time_call(fn, args.repeats, warm)
    rec["seconds"][name], rec["times"][name], rec["seconds_min"][name] = med, times, min(times)
    rec["tflops"][name] = fl[name] / med / 1e12
    print(f"  {name:<11s} {med:10.4f} s  {rec['tflops'][name]:8.3f} TFLOP/s   "
          f"(runs: {', '.join(f'{t:.3f}' for t in times)})", flush=True)
  for name, why in rec["skipped"].items():
    print(f"  {name:<11s} skipped ({why})")
  if solver and "sklearn" in rec["seconds"]:
    rec["sklearn_solver"] = solver
  for key, stat in (("ratios", "seconds"), ("ratios_min", "seconds_min")):
    s = rec[stat]
    ratios = {}
    if "ours" in s:
      for base in ("limit", "limit_full"):
        if base in s:
          ratios[f"ours/{base}"] = s["ours"] / s[base]
      for other in ("sklearn", "numpy", "svd"):
        if other in s:
          ratios[f"{other}/ours"] = s[other] / s["ours"]
    rec[key] = ratios
    if ratios:
      print(f"  {key} ({'median' if stat == 'seconds' else 'best'} times): "
            + "  ".join(f"{n}={r:.3f}x" for n, r in ratios.items()))
  if "ours" in stash and "limit" in stash:
    a, b = np.asarray(stash["ours"], np.float64), np.asarray(stash["limit"], np.float64)
    rec["check_eigenvalue_max_rel_diff_vs_limit"] = float(np.max(np.abs(a - b)) / np.max(np.abs(b)))
    print(f"  check: top-{k} eigenvalues ours vs limit, max rel diff "
          f"{rec['check_eigenvalue_max_rel_diff_vs_limit']:.2e}")
  stash.clear()
  del table, host
  return rec


# ----------------------------------------------------------------------------- guide_init
def guide_shapes(spec: str, vocab_size):
  """(student, teacher) ModelConfigs for a --guide_init_shapes value."""
  v = vocab_size
  if spec.startswith("1b_from_7b"):
    div = int(spec.split("_div")[1]) if "_div" in spec else 1
    s = common.model_config("student_1b", v or 32768)
    t = common.model_config("teacher_7b", v or 32768)
    return common.scaled(s, div), common.scaled(t, div)
  pairs = {"400m_from_1_6b": ("student_400m", "teacher_1_6b"), "small": ("small_student", "small_teacher"),
           "tiny": ("tiny_student", "tiny_teacher")}
  if spec in pairs:
    s_name, t_name = pairs[spec]
  elif "/" in spec:
    s_name, t_name = spec.split("/", 1)
  else:
    raise ValueError(f"--guide_init_shapes={spec!r}: want none, auto, {', '.join(GUIDE_PRESETS)} or STUDENT/TEACHER")
  s = common.model_config(s_name, v)
  t = common.model_config(t_name, v or s.vocab_size)
  return s, t


def random_teacher(config, mesh, seed: int, on_device: bool):
  """Random teacher params made leaf by leaf (peak ~ teacher + one leaf): kernels N(0, 0.02^2),
  the embedding N(0, 1), norm scales 1 + N(0, 0.1^2). on_device: each leaf placed on its param
  sharding (on an accelerator generated there by one cached jit per leaf shape; on CPU by numpy,
  which needs no compiles)."""
  shapes = model_lib.param_shapes(config)
  flat, treedef = jax.tree_util.tree_flatten_with_path(shapes)
  shardings = jax.tree_util.tree_leaves(sharding.param_shardings(config, mesh))
  rng = np.random.default_rng(seed)
  makers, out = {}, []
  for i, ((path, leaf), sh) in enumerate(zip(flat, shardings)):
    path = jax.tree_util.keystr(path)
    scale, offset = (1.0, 0.0) if "embedding" in path else ((0.1, 1.0) if len(leaf.shape) == 1 else (0.02, 0.0))
    if on_device and common.is_accelerator():
      key = (leaf.shape, scale, offset, sh)
      if key not in makers:
        makers[key] = jax.jit(lambda r, shape=leaf.shape, s=scale, o=offset:
                              o + s * jax.random.normal(r, shape, jnp.float32), out_shardings=sh)
      x = makers[key](jax.random.PRNGKey(seed * 100003 + i)).astype(leaf.dtype)
    else:
      x = rng.standard_normal(leaf.shape, dtype=np.float32)
      x *= np.float32(scale)
      x += np.float32(offset)
      x = x.astype(leaf.dtype)
      if on_device:
        x = jax.device_put(x, sh)
    jax.block_until_ready(x)
    out.append(x)
  return jax.tree_util.tree_unflatten(treedef, out)


def bench_guide_init(args, mesh):
  """guide_init on `mesh` (its 'model' axis spans every device: each holds 1/devices of the teacher)."""
  student_cfg, teacher_cfg = guide_shapes(args.guide_init_shapes, args.vocab_size)
  teacher_cfg = teacher_cfg.replace(param_dtype=args.teacher_param_dtype)
  on_device = args.guide_input == "device"
  accel = common.is_accelerator()
  teacher_bytes = common.param_bytes(teacher_cfg)
  student_bytes = common.param_bytes(student_cfg)
  print(f"guide_init {args.guide_init_shapes}: teacher {common.describe(teacher_cfg)}", flush=True)
  print(f"  student {common.describe(student_cfg)}; teacher params {teacher_bytes / 2 ** 30:.2f} GiB "
        f"{args.teacher_param_dtype}; input={args.guide_input}, blocks={args.guide_blocks}; "
        f"mesh {dict(mesh.shape)}", flush=True)
  guide = GuideConfig(blocks=args.guide_blocks)
  compiled = compiled_guide_init(teacher_cfg, student_cfg, mesh, guide,
                                 teacher_dtype=jnp.dtype(args.teacher_param_dtype))
  mem = compiled.memory_analysis()
  per_device = mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes - mem.alias_size_in_bytes
  shards = mesh.shape["model"]
  bound = 1.25 * (teacher_bytes + student_bytes) / shards + teacher_cfg.d_model ** 2 * 4
  print(f"  compiled per-device memory {per_device / 2 ** 30:.3f} GiB (arguments {mem.argument_size_in_bytes / 2 ** 30:.3f}, "
        f"outputs {mem.output_size_in_bytes / 2 ** 30:.3f}, temp {mem.temp_size_in_bytes / 2 ** 30:.3f}); bound "
        f"1.25 x (teacher + student) / {shards} + d_T^2 x 4 = {bound / 2 ** 30:.3f} GiB; ratio {per_device / bound:.3f}",
        flush=True)
  rss_before = common.rss_bytes()
  t = time.perf_counter()
  teacher = random_teacher(teacher_cfg, mesh, args.seed, on_device)
  make_s = time.perf_counter() - t
  rss_teacher = common.rss_bytes()
  rec = {"shapes": args.guide_init_shapes, "student": student_cfg.__dict__.copy(),
         "teacher": teacher_cfg.__dict__.copy(), "teacher_bytes": teacher_bytes,
         "student_bytes": student_bytes, "input": args.guide_input, "blocks": args.guide_blocks,
         "mesh": dict(mesh.shape), "teacher_create_s": make_s, "calls_s": [],
         "compiled_per_device_bytes": per_device, "compiled_bound_bytes": bound,
         "compiled_memory_ratio_to_bound": per_device / bound}
  for i in range(max(args.guide_init_repeats, 1)):
    hwm_reset = common.reset_peak_rss()
    t = time.perf_counter()
    student, info = guide_init(teacher, teacher_cfg, student_cfg, guide, mesh=mesh)
    jax.block_until_ready(student)
    rec["calls_s"].append(time.perf_counter() - t)
    if i == 0:
      rec["explained_variance"] = info.explained_variance
      if hwm_reset and rss_before is not None:
        peak = common.peak_rss_bytes()
        rec["host_peak_rss_bytes_over_baseline"] = peak - rss_before
        rec["host_rss_inputs_bytes"] = rss_teacher - rss_before
        rec["host_memory_ratio"] = (peak - rss_before) / teacher_bytes
        rec["host_extra_memory_ratio"] = (peak - rss_teacher) / teacher_bytes
      dev_peak = common.device_peak_bytes() if accel else None
      if dev_peak is not None:
        rec["device_peak_bytes_in_use"] = dev_peak
        rec["device_memory_ratio"] = dev_peak / teacher_bytes
    del student, info
  rec["cold_s"] = rec["calls_s"][0]
  rec["warm_s"] = min(rec["calls_s"][1:]) if len(rec["calls_s"]) > 1 else None
  if accel and on_device and "device_memory_ratio" in rec:
    rec["memory_ratio"], rec["memory_basis"] = rec["device_memory_ratio"], "device peak_bytes_in_use / teacher bytes"
  elif "host_memory_ratio" in rec:
    rec["memory_ratio"] = rec["host_memory_ratio"]
    rec["memory_basis"] = ("(peak RSS during guide_init - RSS before the teacher existed) / teacher bytes; "
                           "includes the teacher, the student and XLA compile memory")
  else:
    rec["memory_ratio"], rec["memory_basis"] = None, "unavailable"
  warm = f"{rec['warm_s']:.3f} s" if rec["warm_s"] is not None else "n/a"
  print(f"  teacher created in {make_s:.2f} s; guide_init cold {rec['cold_s']:.3f} s (incl. compiles), "
        f"warm {warm}; explained variance {rec['explained_variance']:.4f}")
  if rec["memory_ratio"] is not None:
    extra = ""
    if "host_extra_memory_ratio" in rec:
      extra = (f"; host peak over baseline {rec['host_peak_rss_bytes_over_baseline'] / 2 ** 30:.2f} GiB, "
               f"of which above teacher+inputs {rec['host_extra_memory_ratio']:.2f}x teacher")
    if "device_peak_bytes_in_use" in rec:
      extra += f"; device peak_bytes_in_use {rec['device_peak_bytes_in_use'] / 2 ** 30:.2f} GiB"
    print(f"  peak memory {rec['memory_ratio']:.2f}x teacher bytes [{rec['memory_basis']}]{extra}")
  del teacher
  return rec


def main(argv=None):
  args = parse_args(argv)
  info = common.device_info()
  label = common.device_label(info)
  mesh = sharding.make_mesh()
  command = common.command_line("benchmarks.pca", argv)
  print(f"device: {label}; jax {jax.__version__}; mesh {dict(mesh.shape)}; load average {common.load_average()}")
  print("FLOP counts: " + "; ".join(f"{k}: {v}" for k, v in FLOP_FORMULAS.items()))
  out = {"benchmark": "pca", "command": command, "device": label, "device_info": info,
         "flop_formulas": FLOP_FORMULAS, "repeats": args.repeats, "warmup": args.warmup,
         "k_frac": args.k_frac, "load_average_start": common.load_average(), "sizes": []}

  # guide_init first: on a GPU peak_bytes_in_use cannot be reset, so nothing big may run before it.
  if args.guide_init_shapes != "none":
    out["guide_init"] = bench_guide_init(args, sharding.make_mesh(model_parallel=jax.device_count()))

  stash = {}
  for v, d in parse_sizes(args.sizes):
    print(f"PCA V={v} d={d} k={max(1, int(round(d * args.k_frac)))} float32 "
          f"(median of {args.repeats}, warmup {args.warmup})", flush=True)
    out["sizes"].append(bench_size(v, d, args, mesh, stash))

  with_ratio = [r for r in out["sizes"] if "ours/limit" in r["ratios"]]
  with_sk = [r for r in out["sizes"] if "sklearn/ours" in r["ratios"]]
  ratio = with_ratio[-1]["ratios"]["ours/limit"] if with_ratio else None
  speedup = with_sk[-1]["ratios"]["sklearn/ours"] if with_sk else None
  out["pca_ratio_to_limit"] = ratio
  out["pca_ratio_to_limit_size"] = f"{with_ratio[-1]['V']}x{with_ratio[-1]['d']}" if with_ratio else None
  out["pca_ratio_to_limit_min_based"] = with_ratio[-1]["ratios_min"]["ours/limit"] if with_ratio else None
  out["pca_ratio_to_limit_worst"] = max((r["ratios"]["ours/limit"] for r in with_ratio), default=None)
  full = [r for r in out["sizes"] if "ours/limit_full" in r["ratios"]]
  out["pca_ratio_to_limit_full"] = full[-1]["ratios"]["ours/limit_full"] if full else None
  out["pca_speedup_vs_sklearn"] = speedup
  out["pca_speedup_vs_sklearn_min_based"] = with_sk[-1]["ratios_min"]["sklearn/ours"] if with_sk else None
  out["pca_speedup_vs_sklearn_size"] = f"{with_sk[-1]['V']}x{with_sk[-1]['d']}" if with_sk else None
  gi = out.get("guide_init", {})
  out["guide_init_s"] = gi.get("cold_s")
  out["guide_init_warm_s"] = gi.get("warm_s")
  out["guide_init_memory_ratio"] = gi.get("memory_ratio")

  where = "" if common.is_accelerator() else "(goals are set for one H100; this is CPU)"
  shape_note = "" if args.guide_init_shapes == "1b_from_7b" else f"(shapes {args.guide_init_shapes}, goal is for 1b_from_7b)"
  lines = [
      common.goal_line(f"PCA ratio to limit, ours/limit at {out['pca_ratio_to_limit_size']}", ratio, "<=", 1.5, "x", where),
      common.goal_line(f"PCA speedup vs sklearn at {out['pca_speedup_vs_sklearn_size']}", speedup, ">=", 50, "x", where),
      common.goal_line("guide_init seconds (cold)", out["guide_init_s"], "<", 30, " s", f"{where} {shape_note}".strip()),
      common.goal_line("guide_init peak memory / teacher bytes", out["guide_init_memory_ratio"], "<=", 1.3, "x", shape_note),
      common.goal_line("guide_init compiled per-device memory / bound", gi.get("compiled_memory_ratio_to_bound"),
                       "<=", 1.0, "x", shape_note),
  ]
  out["goals"] = lines
  out["load_average_end"] = common.load_average()
  print("\n".join(lines))
  if args.json_out:
    common.write_json_atomic(args.json_out, out)
    print(f"wrote {args.json_out}")
  return out


if __name__ == "__main__":
  main()
