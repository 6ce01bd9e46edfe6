"""Shared pieces of the benchmarks: model shapes from gin/models/*.gin (through gin, as train reads
them; carry the gin-config wheel to a GPU machine that lacks it), timing, memory, device, JSON."""
import ast
import json
import os
import re
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional, Tuple

import jax
import jax.numpy as jnp

from guide_jax import gin_utils, model as model_lib
from guide_jax.config import ModelConfig
from guide_jax.data import atomic

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MODELS_DIR = os.path.join(REPO_ROOT, "gin", "models")
DEFAULT_VOCAB = 32768
_VOCAB_COMMENT = re.compile(r"VOCAB_SIZE\s*=\s*(\d+)")


# ----------------------------------------------------------------------------- model shapes
def gin_model_path(name: str) -> str:
  """'tiny_student' -> gin/models/tiny_student.gin (a path to a .gin file is taken as is)."""
  if name.endswith(".gin") or os.sep in name:
    path = name if os.path.isabs(name) or os.path.exists(name) else os.path.join(REPO_ROOT, name)
  else:
    path = os.path.join(MODELS_DIR, name + ".gin")
  if not os.path.exists(path):
    known = sorted(f[:-4] for f in os.listdir(MODELS_DIR) if f.endswith(".gin"))
    raise ValueError(f"unknown model {name!r}: no {path} (known: {', '.join(known)})")
  return path


def documented_vocab(name: str) -> int:
  """The VOCAB_SIZE=N a gin/models file's header comment names (else 32768)."""
  with open(gin_model_path(name)) as f:
    for line in f:
      m = _VOCAB_COMMENT.search(line) if line.lstrip().startswith("#") else None
      if m:
        return int(m.group(1))
  return DEFAULT_VOCAB


def _parse_overrides(text: str) -> Dict:
  out = {}
  for item in filter(None, (s.strip() for s in text.split(","))):
    if "=" not in item:
      raise ValueError(f"bad override {item!r}: want key=value")
    key, raw = (s.strip() for s in item.split("=", 1))
    try:
      out[key] = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
      out[key] = raw  # bare strings: dtype=bfloat16
  return out


def model_config(spec: str, vocab_size: Optional[int] = None, **overrides) -> ModelConfig:
  """A ModelConfig from 'name', 'name:key=v,key=v' or 'key=v,...' (all dims explicit).

  name is a gin/models file (tiny_student, student_400m, teacher_7b, ...). Keyword overrides whose
  value is None are ignored.
  """
  if ":" in spec:
    name, extra = spec.split(":", 1)
  elif "=" in spec:
    name, extra = "", spec
  else:
    name, extra = spec, ""
  fields = _parse_overrides(extra)
  fields.update({k: v for k, v in overrides.items() if v is not None})
  if not name:
    return ModelConfig(**{"vocab_size": vocab_size or DEFAULT_VOCAB, **fields})
  vocab = vocab_size or documented_vocab(name)
  return gin_utils.model_from_gin(gin_model_path(name), [f"VOCAB_SIZE = {vocab}"]).replace(**fields)


def scaled(config: ModelConfig, divisor: int) -> ModelConfig:
  """Widths (d_model, mlp_dim, n_heads) and n_layers divided by `divisor`; head_dim and vocab kept."""
  if divisor == 1:
    return config
  return config.replace(d_model=max(config.d_model // divisor, 1), mlp_dim=max(config.mlp_dim // divisor, 1),
                        n_heads=max(config.n_heads // divisor, 1), n_layers=max(config.n_layers // divisor, 1))


def describe(config: ModelConfig) -> str:
  c = config
  return (f"d={c.d_model} n={c.n_layers} h={c.n_heads} l={c.head_dim} f={c.mlp_dim} V={c.vocab_size} "
          f"({c.num_params / 1e6:.1f}M params, dtype={c.dtype}, remat={c.remat})")


def param_bytes(config: ModelConfig) -> int:
  return sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(model_lib.param_shapes(config)))


def command_line(module: str, argv) -> str:
  """The command that reproduces this run: `python -m <module> <args>` (argv None: sys.argv)."""
  import shlex  # pylint: disable=g-import-not-at-top
  return shlex.join(["python", "-m", module] + (sys.argv[1:] if argv is None else list(argv)))


# ----------------------------------------------------------------------------- device
def device_info() -> Dict:
  devices = jax.devices()
  d = devices[0]
  info = {"platform": d.platform, "device_kind": d.device_kind, "num_devices": len(devices),
          "jax_version": jax.__version__}
  if d.platform == "cpu":
    info["cpu_cores"] = os.cpu_count()
    info["xla_flags"] = os.environ.get("XLA_FLAGS", "")
  return info


def load_average() -> Optional[List[float]]:
  """1/5/15-minute load averages: other processes on a shared CPU machine skew timings."""
  try:
    return [round(x, 2) for x in os.getloadavg()]
  except OSError:
    return None


def device_label(info: Dict) -> str:
  if info["platform"] == "cpu":
    return f"CPU ({info['cpu_cores']} cores, {info['num_devices']} XLA host device(s))"
  return f"{info['num_devices']} x {info['device_kind']}"


def is_accelerator() -> bool:
  return jax.devices()[0].platform != "cpu"


# Dense peak TFLOP/s per device (vendor datasheets), by dtype of the model's matmuls.
# f32 on NVIDIA GPUs runs on TF32 tensor cores under JAX's default matmul precision.
PEAK_TFLOPS = (
    ("H100 PCIe", {"bfloat16": 756.0, "float32": 378.0}),
    ("H100", {"bfloat16": 989.0, "float32": 494.7}),  # SXM
    ("H200", {"bfloat16": 989.0, "float32": 494.7}),
    ("A100", {"bfloat16": 312.0, "float32": 156.0}),
    ("TPU v4", {"bfloat16": 275.0, "float32": 275.0}),
    ("TPU v5 lite", {"bfloat16": 197.0, "float32": 197.0}),
    ("TPU v5e", {"bfloat16": 197.0, "float32": 197.0}),
    ("TPU v5p", {"bfloat16": 459.0, "float32": 459.0}),
    ("TPU v6", {"bfloat16": 918.0, "float32": 918.0}),
)


def datasheet_peak_tflops(device_kind: str, dtype: str) -> Optional[float]:
  for key, table in PEAK_TFLOPS:
    if key.lower() in device_kind.lower():
      return table[dtype]
  return None


def measure_matmul_tflops(n: int, dtype: str, repeats: int = 3) -> float:
  """Best achieved TFLOP/s (2 n^3 / time) of a jitted [n, n] @ [n, n] matmul on device 0."""
  dt = jnp.bfloat16 if dtype == "bfloat16" else jnp.float32
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), dt)
  b = jax.random.normal(jax.random.PRNGKey(1), (n, n), dt)
  f = jax.jit(lambda x, y: x @ y)
  f(a, b).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    f(a, b).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2 * n ** 3 / best / 1e12


# ----------------------------------------------------------------------------- timing
def time_call(fn: Callable, repeats: int, warmup: int = 1) -> Tuple[float, List[float]]:
  """Median wall seconds of fn() (outputs block_until_ready) after `warmup` untimed calls."""
  for _ in range(warmup):
    jax.block_until_ready(fn())
  times = []
  for _ in range(max(repeats, 1)):
    t = time.perf_counter()
    out = fn()
    jax.block_until_ready(out)
    times.append(time.perf_counter() - t)
    del out
  return statistics.median(times), times


# ----------------------------------------------------------------------------- host memory
def _status_kb(field: str) -> Optional[int]:
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith(field + ":"):
          return int(line.split()[1])
  except OSError:
    pass
  return None


def rss_bytes() -> Optional[int]:
  kb = _status_kb("VmRSS")
  return None if kb is None else kb * 1024


def reset_peak_rss() -> bool:
  """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS (Linux /proc/self/clear_refs '5')."""
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


def peak_rss_bytes() -> int:
  """VmHWM (resettable) where available, else getrusage's ru_maxrss (process lifetime)."""
  kb = _status_kb("VmHWM")
  if kb is None:
    import resource
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return kb * 1024


def device_peak_bytes() -> Optional[int]:
  stats = jax.devices()[0].memory_stats()
  return None if not stats else stats.get("peak_bytes_in_use")


# ----------------------------------------------------------------------------- output
def write_json_atomic(path: str, data) -> None:
  """Indented, key-sorted JSON (numpy scalars as numbers) written atomically (temp file, fsync, rename)."""
  atomic.atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(x):
  try:
    return x.item()
  except AttributeError:
    return str(x)


def goal_line(name: str, value: Optional[float], op: str, target: float, unit: str, note: str = "") -> str:
  """'GOAL name: value unit (goal op target unit) met|NOT met|not measured  note'."""
  if value is None:
    verdict, shown = "not measured", "n/a"
  else:
    ok = value <= target if op == "<=" else (value < target if op == "<" else value >= target)
    verdict, shown = ("met" if ok else "NOT met"), f"{value:.3g}{unit}"
  return f"GOAL {name}: {shown} (goal {op} {target:g}{unit}) -> {verdict}{'  ' + note if note else ''}"
