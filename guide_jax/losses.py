"""Losses: token cross-entropy and the distillation objective (docs/algorithm.md section 4) (optax).

The objective is (1 - alpha) * CE + alpha * tau^2 * KL, each a per-token mean over the whole
batch. It is computed as sums (objective_sums: sum of CE, sum of KL) divided once by the batch's
total weight (combine), so that microbatches (gradient accumulation) and sequence chunks add up to
the full batch's value. chunked_objective_sums takes the final hidden states instead of logits and
applies the output layers one sequence chunk at a time, recomputing each chunk in the backward:
no [B, T, V] logits tensor, the student's or the teacher's, exists at once.
"""
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits, targets, weights):
  """Weighted token CE. logits [B, T, V] f32, targets/weights [B, T] -> (sum of loss, sum of weights)."""
  loss = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
  return jnp.sum(loss * weights), jnp.sum(weights)


def distillation(student_logits, teacher_logits, weights, tau: float):
  """Sum over tokens of tau^2 * KL(softmax(teacher / tau) || softmax(student / tau)) [B, T] -> scalar."""
  t = jax.lax.stop_gradient(teacher_logits.astype(jnp.float32)) / tau
  s = student_logits.astype(jnp.float32) / tau
  kl = optax.kl_divergence(jax.nn.log_softmax(s), jax.nn.softmax(t))
  return tau ** 2 * jnp.sum(kl * weights)


def objective_sums(student_logits, teacher_logits, targets, weights, alpha: float, tau: float) -> dict:
  """{'ce': sum of weighted CE, 'kd': sum of weighted tau^2 KL (only when alpha > 0)}."""
  sums = {"ce": cross_entropy(student_logits, targets, weights)[0]}
  if alpha > 0.0:
    sums["kd"] = distillation(student_logits, teacher_logits, weights, tau)
  return sums


def combine(sums: dict, denom, alpha: float):
  """(loss, {'ce', 'kd'} per-token means) from objective sums and the batch's total weight
  `denom` (>= 1). alpha == 0: loss = CE exactly."""
  ce = sums["ce"] / denom
  if alpha == 0.0:
    return ce, {"ce": ce}
  kd = sums["kd"] / denom
  return (1.0 - alpha) * ce + alpha * kd, {"ce": ce, "kd": kd}


def kd_objective(student_logits, teacher_logits, targets, weights, alpha: float, tau: float):
  """(1 - alpha) * CE + alpha * tau^2 * KL, per-token mean. Returns (loss, {'ce': .., 'kd': ..}).

  alpha == 0 (a Python float) takes no teacher logits at all: pass teacher_logits=None.
  """
  denom = jnp.maximum(jnp.sum(weights), 1.0)
  return combine(objective_sums(student_logits, teacher_logits, targets, weights, alpha, tau), denom, alpha)


def chunked_objective_sums(student_hidden, teacher_hidden, student_head: Callable, teacher_head: Optional[Callable],
                           targets, weights, alpha: float, tau: float, chunk: int) -> dict:
  """objective_sums computed `chunk` positions at a time from hidden states.

  student_hidden [B, T, d_S], teacher_hidden [B, T, d_T] (None when alpha == 0), heads:
  hidden [B, c, d] -> logits [B, c, V] float32 (guide_jax.model.output_logits), targets/weights
  [B, T]. T must divide by chunk. A jax.lax.scan over the T / chunk chunks whose body is
  rematerialized (jax.checkpoint): forward and backward hold one chunk's logits, [B, c, V] per
  model, and the scan keeps only the hidden states.
  """
  b, t = targets.shape
  if t % chunk:
    raise ValueError(f"loss chunk {chunk} must divide the sequence length {t}")
  n = t // chunk
  split = lambda x: jnp.swapaxes(x.reshape((b, n, chunk) + x.shape[2:]), 0, 1)  # [n, B, c, ...]
  kd = alpha > 0.0

  @jax.checkpoint
  def body(_, xs):
    ys, yt, tg, w = xs
    return None, objective_sums(student_head(ys), teacher_head(yt) if kd else None, tg, w, alpha, tau)

  xs = (split(student_hidden), split(jax.lax.stop_gradient(teacher_hidden)) if kd else None,
        split(targets), split(weights))
  _, per_chunk = jax.lax.scan(body, None, xs)
  return {k: jnp.sum(v) for k, v in per_chunk.items()}
