"""Optimizers: optax AdamW or Adafactor behind warmup + cosine / rsqrt / constant /
warmup-stable-decay schedules, and the decay branches of a warmup-stable-decay run."""
import math
from typing import Callable, NamedTuple, Sequence, Tuple

import jax
import optax

OPTIMIZERS = ("adamw", "adafactor")
SCHEDULES = ("cosine", "rsqrt", "constant", "wsd")


def decay_start(total_steps: int, decay_fraction: float) -> int:
  """The first step of a warmup-stable-decay schedule's decay: the last round(decay_fraction *
  total_steps) steps (at least one) decay."""
  return total_steps - max(1, int(round(decay_fraction * total_steps)))


def learning_rate_schedule(peak: float, warmup_steps: int, total_steps: int, decay: str = "cosine",
                           end_fraction: float = 0.1, decay_fraction: float = 0.2) -> optax.Schedule:
  """Linear warmup to `peak`, then cosine to end_fraction * peak, rsqrt decay, constant, or 'wsd'
  (warmup-stable-decay, Hu et al. 2024 / Hägele et al. 2024): constant at `peak` until
  decay_start(total_steps, decay_fraction), then linear to 0 at total_steps. Before its decay a
  'wsd' schedule does not depend on total_steps, so a run's state at step s is every longer
  budget's state at s: each shorter budget branches off one long run (train.train.branches)."""
  if decay not in SCHEDULES:
    raise ValueError(f"schedule must be one of {SCHEDULES}, got {decay!r}")
  warmup = optax.linear_schedule(0.0, peak, max(warmup_steps, 1))
  if decay == "cosine":
    after = optax.cosine_decay_schedule(peak, max(total_steps - warmup_steps, 1), alpha=end_fraction)
  elif decay == "rsqrt":
    after = lambda step: peak * (max(warmup_steps, 1) / (step + max(warmup_steps, 1))) ** 0.5
  elif decay == "wsd":
    start = decay_start(total_steps, decay_fraction)
    if start < warmup_steps:
      raise ValueError(f"a 'wsd' schedule of {total_steps} steps decays from step {start}, inside its "
                       f"{warmup_steps} warmup steps: lower warmup_steps or decay_fraction")
    stable = optax.constant_schedule(peak)
    decay_part = optax.linear_schedule(peak, 0.0, total_steps - start)
    return optax.join_schedules([warmup, stable, decay_part], [max(warmup_steps, 1), start])
  else:
    after = optax.constant_schedule(peak)
  return optax.join_schedules([warmup, after], [max(warmup_steps, 1)])


def check_settings(*, total_steps, learning_rate, warmup_steps, weight_decay, b1, b2, clip_norm,
                   decay_fraction=0.2) -> None:
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
  if not number(decay_fraction) or not 0 < decay_fraction <= 1:
    raise ValueError(f"optim.make_optimizer.decay_fraction must be in (0, 1], got {decay_fraction!r}")


def make_optimizer(total_steps: int, name: str = "adamw", learning_rate: float = 3e-3,
                   warmup_steps: int = 100, schedule: str = "cosine", weight_decay: float = 0.1,
                   b1: float = 0.9, b2: float = 0.95, clip_norm: float = 1.0, decay_fraction: float = 0.2):
  """An optax GradientTransformation; weight decay skips 1-D params (norm scales).
  decay_fraction: the share of total_steps a 'wsd' schedule decays over (other schedules ignore it)."""
  if name not in OPTIMIZERS:
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")
  check_settings(total_steps=total_steps, learning_rate=learning_rate, warmup_steps=warmup_steps,
                 weight_decay=weight_decay, b1=b1, b2=b2, clip_norm=clip_norm, decay_fraction=decay_fraction)
  lr = learning_rate_schedule(learning_rate, warmup_steps, total_steps, schedule, decay_fraction=decay_fraction)
  decay_mask = lambda params: jax.tree_util.tree_map(lambda p: p.ndim > 1, params)
  if name == "adamw":
    opt = optax.adamw(lr, b1=b1, b2=b2, weight_decay=weight_decay, mask=decay_mask)
  else:
    opt = optax.adafactor(lr, weight_decay_rate=weight_decay or None, weight_decay_mask=decay_mask)
  chain = [optax.clip_by_global_norm(clip_norm)] if clip_norm else []
  return optax.chain(*chain, opt)


class Branch(NamedTuple):
  """A shorter budget branched off a warmup-stable-decay run: at step `start` (its decay start)
  the run's state is copied and trained to `steps` with `optimizer` (the run's optimizer with
  total_steps = steps), as a separate run of `steps` steps would be, step for step."""
  steps: int
  start: int
  optimizer: optax.GradientTransformation


def decay_branches(budgets: Sequence[int] = (), make: Callable[..., optax.GradientTransformation] = make_optimizer,
                   decay_fraction: float = 0.2) -> Tuple[Branch, ...]:
  """Branch(steps=B, start=decay_start(B), optimizer=make(total_steps=B, schedule='wsd',
  decay_fraction=...)) for each budget B, sorted. In gin (gin/wsd.gin): make = @optim.make_optimizer
  (uncalled: the run's other optimizer settings), decay_fraction the run's (%DECAY_FRACTION)."""
  for b in budgets:
    if not isinstance(b, int) or isinstance(b, bool) or b < 1:
      raise ValueError(f"optim.decay_branches.budgets must be positive ints, got {list(budgets)!r}")
  if len(set(budgets)) != len(budgets):
    raise ValueError(f"optim.decay_branches.budgets has repeated steps: {list(budgets)!r}")
  return tuple(Branch(b, decay_start(b, decay_fraction), make(total_steps=b, schedule="wsd",
                                                              decay_fraction=decay_fraction))
               for b in sorted(budgets))
