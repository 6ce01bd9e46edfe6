"""Losses: token cross-entropy and the distillation objective (docs/algorithm.md section 4) (optax)."""
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


def kd_objective(student_logits, teacher_logits, targets, weights, alpha: float, tau: float):
  """(1 - alpha) * CE + alpha * tau^2 * KL, per-token mean. Returns (loss, {'ce': .., 'kd': ..}).

  alpha == 0 (a Python float) takes no teacher logits at all: pass teacher_logits=None.
  """
  ce_sum, denom = cross_entropy(student_logits, targets, weights)
  denom = jnp.maximum(denom, 1.0)
  ce = ce_sum / denom
  if alpha == 0.0:
    return ce, {"ce": ce}
  kd = distillation(student_logits, teacher_logits, weights, tau) / denom
  return (1.0 - alpha) * ce + alpha * kd, {"ce": ce, "kd": kd}
