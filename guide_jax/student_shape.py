"""A student's ModelConfig from its teacher's: overrides of the teacher's own config, or a budget.

    from_overrides(teacher, {"d_model": 1024, "n_layers": 12})   -> ModelConfig
    from_budget(teacher, 1e9)                                     -> ModelConfig (~1e9 params)
    parse_overrides("d_model=1024 n_layers=12 n_kv_heads=4")      -> {"d_model": 1024, ...}
    resolve(teacher, student="...", student_params=None)          -> the CLI's choice (or None)

The command-line spelling, the same on every command that takes a teacher:
    --student='d_model=1024 n_layers=12 n_kv_heads=4'     (items separated by spaces or commas)
    --student_params=1e9

Everything not overridden is the teacher's (RoPE and its scaling, activation, norm eps, tying,
vocabulary, the family's options) except param_dtype, float32 unless overridden (a bf16 teacher
still gives a student trained in float32). Overriding the width keeps the family's ratios unless the ratio's other
side is overridden too: d_model alone sets n_heads = d_model / (d_T / h_T) (the teacher's width
per head) and mlp_dim = f_T * d_model / d_T; n_heads alone (or via d_model) sets n_kv_heads =
n_heads / (h_T / k_T) (the teacher's query heads per kv head), when ModelConfig has kv heads.
head_dim stays the teacher's unless overridden. vocab_size cannot change (GUIDE's student
shares the teacher's tokenizer).

A budget keeps head_dim, the teacher's width per head, its mlp ratio and its heads per kv head,
and searches n_heads (a multiple of the heads per kv head, <= h_T, giving a d_model that is a
multiple of gcd(d_T, WIDTH_ALIGN)) and n_layers (<= n_T): among
the shapes within BUDGET_TOLERANCE of the budget, the one whose width/depth ratio d/n is closest
(in log) to the teacher's; with none that close, the shape nearest the budget. Pure functions,
no I/O.
"""

from __future__ import annotations

import ast
import dataclasses
import math
import re
from typing import Mapping, Optional

from guide_jax.config import ModelConfig

BUDGET_TOLERANCE = 0.05
WIDTH_ALIGN = 128  # a budget's d_model is a multiple of gcd(d_T, 128) (TPU/GPU-friendly tiles)
_FIELDS = {f.name: f for f in dataclasses.fields(ModelConfig)}
_FIXED = ("vocab_size",)


def _has_kv() -> bool:
  return "n_kv_heads" in _FIELDS


def _kv(config: ModelConfig) -> int:
  return (getattr(config, "n_kv_heads", None) or config.n_heads) if _has_kv() else config.n_heads


def parse_overrides(text: str) -> dict:
  """'d_model=1024 n_layers=12' (spaces or commas) -> {field: value}; values as Python literals."""
  out = {}
  for item in filter(None, re.split(r"[\s,]+", text or "")):
    key, sep, raw = item.partition("=")
    if not sep or not key:
      raise ValueError(f"--student item {item!r}: want FIELD=VALUE (e.g. d_model=1024)")
    try:
      value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
      value = raw  # bare strings: dtype=bfloat16
    if key in out:
      raise ValueError(f"--student sets {key} twice")
    out[key] = value
  return out


def _round_to(value: float, multiple: int) -> int:
  return max(multiple, int(round(value / multiple)) * multiple)


def _mlp_multiple(teacher: ModelConfig, target: float) -> int:
  """gcd(f_T, 256), halved (down to 8) until the target width is >= 8 multiples."""
  multiple = math.gcd(teacher.mlp_dim, 256)
  while multiple > 8 and target < 8 * multiple:
    multiple //= 2
  return multiple


def from_overrides(teacher: ModelConfig, overrides: Mapping) -> ModelConfig:
  """The teacher's config with `overrides` and the family's ratios (module docstring)."""
  overrides = dict(overrides)
  unknown = sorted(set(overrides) - set(_FIELDS))
  if unknown:
    raise ValueError(f"unknown ModelConfig field(s) {unknown} in the student's overrides "
                     f"(fields: {sorted(_FIELDS)})")
  for key in _FIXED:
    if key in overrides and overrides[key] != getattr(teacher, key):
      raise ValueError(f"the student's {key} must be the teacher's ({getattr(teacher, key)}): "
                       "GUIDE's student shares the teacher's tokenizer")
  changes = {"param_dtype": "float32", **overrides}  # a student trains in float32 (teachers may be bf16)
  d = changes.get("d_model", teacher.d_model)
  if "d_model" in changes and "n_heads" not in changes:
    per_head = teacher.d_model / teacher.n_heads
    if d % per_head:
      raise ValueError(f"d_model={d} is not a multiple of the teacher's width per head "
                       f"{per_head:g} (d_T/h_T); give n_heads too")
    changes["n_heads"] = int(d // per_head)
  if "d_model" in changes and "mlp_dim" not in changes:
    target = teacher.mlp_dim * d / teacher.d_model
    changes["mlp_dim"] = _round_to(target, _mlp_multiple(teacher, target))
  if _has_kv() and "n_heads" in changes and "n_kv_heads" not in changes:
    group = teacher.n_heads // _kv(teacher)
    if changes["n_heads"] % group:
      raise ValueError(f"n_heads={changes['n_heads']} is not a multiple of the teacher's "
                       f"{group} query heads per kv head; give n_kv_heads too")
    changes["n_kv_heads"] = None if group == 1 and teacher.n_kv_heads is None else changes["n_heads"] // group
  try:
    return teacher.replace(**changes)
  except (TypeError, ValueError) as e:
    raise ValueError(f"student {changes}: {e}") from e


def _shape(teacher: ModelConfig, n_heads: int, n_layers: int) -> ModelConfig:
  per_head = teacher.d_model // teacher.n_heads
  changes = {"d_model": n_heads * per_head, "n_heads": n_heads, "n_layers": n_layers}
  return from_overrides(teacher, changes)


def from_budget(teacher: ModelConfig, params: float) -> ModelConfig:
  """A student of about `params` parameters in the teacher's family (module docstring)."""
  if not isinstance(params, (int, float)) or isinstance(params, bool) or not params > 0:
    raise ValueError(f"--student_params must be a number > 0, got {params!r}")
  if teacher.d_model % teacher.n_heads:
    raise ValueError(f"teacher d_model {teacher.d_model} is not a multiple of n_heads {teacher.n_heads}")
  if params > teacher.num_params:
    raise ValueError(f"--student_params={params:.4g} is more than the teacher's {teacher.num_params:.4g}")
  group = teacher.n_heads // _kv(teacher)
  aspect = teacher.d_model / teacher.n_layers
  align = math.gcd(teacher.d_model, WIDTH_ALIGN)
  candidates = []
  for h in range(group, teacher.n_heads + 1, group):
    if h * (teacher.d_model // teacher.n_heads) % align:
      continue
    for n in range(1, teacher.n_layers + 1):
      try:
        config = _shape(teacher, h, n)
      except ValueError:
        continue
      candidates.append((abs(math.log(config.num_params / params)),
                         abs(math.log(config.d_model / n / aspect)), config))
  if not candidates:
    raise ValueError(f"no student shape of the teacher's family fits --student_params={params:.4g}")
  close = [c for c in candidates if c[0] <= math.log1p(BUDGET_TOLERANCE)]
  if close:
    return min(close, key=lambda c: (c[1], c[0]))[2]
  return min(candidates, key=lambda c: c[0])[2]


def describe(config: ModelConfig, teacher: Optional[ModelConfig] = None) -> str:
  """'d_model=1024 n_layers=12 n_heads=8 n_kv_heads=2 head_dim=128 mlp_dim=4096 (1.23e+09 params)'."""
  keys = ["d_model", "n_layers", "n_heads"] + (["n_kv_heads"] if _has_kv() else []) + ["head_dim", "mlp_dim"]
  text = " ".join(f"{k}={getattr(config, k)}" for k in keys)
  text += f" ({config.num_params:.3g} params"
  if teacher is not None:
    text += f", {config.num_params / teacher.num_params:.1%} of the teacher's {teacher.num_params:.3g}"
  return text + ")"


def resolve(teacher: ModelConfig, student: Optional[str] = None,
            student_params: Optional[float] = None) -> Optional[ModelConfig]:
  """The student --student / --student_params name (at most one of them), or None for neither."""
  if student and student_params is not None:
    raise ValueError("give --student or --student_params, not both")
  if student:
    return from_overrides(teacher, parse_overrides(student))
  if student_params is not None:
    return from_budget(teacher, student_params)
  return None


def to_gin(config: ModelConfig, comment: str = "") -> str:
  """A model gin file (gin/models/*.gin's form) whose MODEL is `config`: every field that differs
  from ModelConfig's default, so `--gin_file=` of it gives train exactly this model."""
  lines = [f"# {comment}" if comment else "# A student model", "from __gin__ import dynamic_registration",
           "from guide_jax import config", "", "MODEL = @config.ModelConfig()"]
  for field in dataclasses.fields(ModelConfig):
    value = getattr(config, field.name)
    required = field.default is dataclasses.MISSING
    if required or value != field.default:
      lines.append(f"config.ModelConfig.{field.name} = {value!r}")
  return "\n".join(lines) + "\n"
