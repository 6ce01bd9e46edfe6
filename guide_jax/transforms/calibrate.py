"""Output calibration: one scalar on the final norm scale (a logit temperature), fitted to data.

A student initialized from a teacher can inherit an output scale made for another residual
stream (GUIDE's tied head reads the teacher's final-norm gains through the PCA basis), and start
with confident wrong logits. logits(c * g) = c * logits(g) for the tied and untied heads alike
(without a final soft-cap), so scaling decoder_norm/scale by c is a temperature 1 / c.
"""
from typing import Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from guide_jax import model
from guide_jax.config import ModelConfig

# c in [1/20, 20], log-spaced (61 values, including 1.0).
SCALES = tuple(float(c) for c in np.exp(np.linspace(np.log(1 / 20), np.log(20), 61)))


def output_scale_losses(params, config: ModelConfig, tokens, targets, weights,
                        scales: Sequence[float] = SCALES) -> np.ndarray:
  """Mean cross-entropy [len(scales)] of the logits scaled by each c. tokens, targets, weights: [B, T]."""
  @jax.jit
  def losses(p, tok, tgt, w):
    logits = model.apply(config, p, tok)
    def one(c):
      logp = jax.nn.log_softmax(logits * c, axis=-1)
      return -jnp.sum(w * jnp.take_along_axis(logp, tgt[..., None], axis=-1)[..., 0]) / jnp.sum(w)
    return jax.lax.map(one, jnp.asarray(scales, jnp.float32))
  return np.asarray(losses(params, jnp.asarray(tokens), jnp.asarray(targets), jnp.asarray(weights, jnp.float32)))


def calibrate_output(params, config: ModelConfig, tokens, targets, weights) -> Tuple[dict, float]:
  """(params with decoder_norm/scale multiplied by the best c of SCALES, c). config must have no
  final_logit_softcap (then the scale is not a temperature)."""
  if config.final_logit_softcap is not None:
    raise ValueError("output calibration needs final_logit_softcap=None (a soft-capped head is not "
                     "linear in its final norm scale)")
  if config.norm_offset:
    raise ValueError("output calibration needs norm_offset=0 (the gain is offset + scale)")
  c = SCALES[int(np.argmin(output_scale_losses(params, config, tokens, targets, weights)))]
  decoder = dict(params["decoder"])
  norm = decoder["decoder_norm"]
  decoder["decoder_norm"] = {**norm, "scale": (norm["scale"] * c).astype(norm["scale"].dtype)}
  return {**params, "decoder": decoder}, c
