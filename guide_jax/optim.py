"""Optimizers: optax AdamW or Adafactor behind warmup + cosine / rsqrt / constant schedules."""
import jax
import optax

OPTIMIZERS = ("adamw", "adafactor")
SCHEDULES = ("cosine", "rsqrt", "constant")


def learning_rate_schedule(peak: float, warmup_steps: int, total_steps: int, decay: str = "cosine",
                           end_fraction: float = 0.1) -> optax.Schedule:
  """Linear warmup to `peak`, then cosine to end_fraction * peak, rsqrt decay, or constant."""
  if decay not in SCHEDULES:
    raise ValueError(f"schedule must be one of {SCHEDULES}, got {decay!r}")
  warmup = optax.linear_schedule(0.0, peak, max(warmup_steps, 1))
  if decay == "cosine":
    after = optax.cosine_decay_schedule(peak, max(total_steps - warmup_steps, 1), alpha=end_fraction)
  elif decay == "rsqrt":
    after = lambda step: peak * (max(warmup_steps, 1) / (step + max(warmup_steps, 1))) ** 0.5
  else:
    after = optax.constant_schedule(peak)
  return optax.join_schedules([warmup, after], [max(warmup_steps, 1)])


def make_optimizer(total_steps: int, name: str = "adamw", learning_rate: float = 3e-3,
                   warmup_steps: int = 100, schedule: str = "cosine", weight_decay: float = 0.1,
                   b1: float = 0.9, b2: float = 0.95, clip_norm: float = 1.0):
  """An optax GradientTransformation; weight decay skips 1-D params (norm scales)."""
  if name not in OPTIMIZERS:
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")
  lr = learning_rate_schedule(learning_rate, warmup_steps, total_steps, schedule)
  decay_mask = lambda params: jax.tree_util.tree_map(lambda p: p.ndim > 1, params)
  if name == "adamw":
    opt = optax.adamw(lr, b1=b1, b2=b2, weight_decay=weight_decay, mask=decay_mask)
  else:
    opt = optax.adafactor(lr, weight_decay_rate=weight_decay or None, weight_decay_mask=decay_mask)
  chain = [optax.clip_by_global_norm(clip_norm)] if clip_norm else []
  return optax.chain(*chain, opt)
