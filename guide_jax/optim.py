"""Optimizers: optax AdamW or Adafactor behind warmup + cosine / rsqrt / constant schedules."""
import math

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


def check_settings(*, total_steps, learning_rate, warmup_steps, weight_decay, b1, b2, clip_norm) -> None:
  """One ValueError naming the first bad optimizer setting (a negative learning rate would train by
  gradient ascent to a 'finished' run; a NaN one to a NaN guard stop far from its cause)."""
  def number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

  if not isinstance(total_steps, int) or isinstance(total_steps, bool) or total_steps < 1:
    raise ValueError(f"optim.make_optimizer.total_steps must be a positive int, got {total_steps!r}")
  if not number(learning_rate) or learning_rate <= 0:
    raise ValueError(f"optim.make_optimizer.learning_rate must be a finite number > 0, got {learning_rate!r}")
  if not isinstance(warmup_steps, int) or isinstance(warmup_steps, bool) or warmup_steps < 0:
    raise ValueError(f"optim.make_optimizer.warmup_steps must be an int >= 0, got {warmup_steps!r}")
  for key, value in (("weight_decay", weight_decay), ("clip_norm", clip_norm)):
    if not number(value) or value < 0:
      raise ValueError(f"optim.make_optimizer.{key} must be a finite number >= 0 (0 turns it off), got {value!r}")
  for key, value in (("b1", b1), ("b2", b2)):
    if not number(value) or not 0 <= value < 1:
      raise ValueError(f"optim.make_optimizer.{key} must be in [0, 1), got {value!r}")


def make_optimizer(total_steps: int, name: str = "adamw", learning_rate: float = 3e-3,
                   warmup_steps: int = 100, schedule: str = "cosine", weight_decay: float = 0.1,
                   b1: float = 0.9, b2: float = 0.95, clip_norm: float = 1.0):
  """An optax GradientTransformation; weight decay skips 1-D params (norm scales)."""
  if name not in OPTIMIZERS:
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")
  check_settings(total_steps=total_steps, learning_rate=learning_rate, warmup_steps=warmup_steps,
                 weight_decay=weight_decay, b1=b1, b2=b2, clip_norm=clip_norm)
  lr = learning_rate_schedule(learning_rate, warmup_steps, total_steps, schedule)
  decay_mask = lambda params: jax.tree_util.tree_map(lambda p: p.ndim > 1, params)
  if name == "adamw":
    opt = optax.adamw(lr, b1=b1, b2=b2, weight_decay=weight_decay, mask=decay_mask)
  else:
    opt = optax.adafactor(lr, weight_decay_rate=weight_decay or None, weight_decay_mask=decay_mask)
  chain = [optax.clip_by_global_norm(clip_norm)] if clip_norm else []
  return optax.chain(*chain, opt)
