"""The compiled train and eval steps, and how their state is laid out on a Mesh.

One jitted step: student forward (+ frozen teacher forward when alpha > 0) -> loss -> grads ->
optax update, with params / optimizer state sharded by t5x logical-axis rules and the batch split
over 'data'. Parameters and optimizer state are donated.
"""
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from guide_jax import losses, model, sharding
from guide_jax.config import ModelConfig

BATCH_KEYS = ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights",
              "decoder_segment_ids", "decoder_positions")


class AbstractState(NamedTuple):
  """The train state as sharded jax.ShapeDtypeStructs (no memory): built once per run."""
  params: Any
  opt_state: Any

  @property
  def param_shardings(self):
    return jax.tree_util.tree_map(lambda x: x.sharding, self.params)

  @property
  def opt_state_shardings(self):
    return jax.tree_util.tree_map(lambda x: x.sharding, self.opt_state)


def abstract_state(config: ModelConfig, optimizer: optax.GradientTransformation, mesh: Mesh) -> AbstractState:
  """Params from the logical-axis rules; optimizer-state leaves that mirror a param (Adam moments)
  take that param's sharding via optax.tree_map_params, the rest (counts, factored moments) are
  replicated. As MaxText's get_abstract_state: one place decides how the state is laid out."""
  params = sharding.abstract_params(config, mesh)
  p_sh = jax.tree_util.tree_map(lambda x: x.sharding, params)
  opt_shapes = jax.eval_shape(optimizer.init, model.param_shapes(config))
  rep = sharding.replicated(mesh)
  with_sharding = lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh)
  opt_sh = optax.tree_map_params(optimizer, lambda s, sh: sh, opt_shapes, p_sh,
                                 transform_non_params=lambda _: rep)
  opt_state = jax.tree_util.tree_map(with_sharding, opt_shapes, opt_sh)
  return AbstractState(params, opt_state)


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
  """This process's rows of the global batch -> global [B, T] arrays split over 'data'."""
  sh = sharding.batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sh, np.asarray(local_batch[k])) for k in BATCH_KEYS}


def _forward(config, params, batch):
  return model.apply(config, params, batch["decoder_input_tokens"], batch["decoder_segment_ids"],
                     batch["decoder_positions"])


def make_train_step(config: ModelConfig, optimizer: optax.GradientTransformation, mesh: Mesh,
                    state: AbstractState, *, teacher_config: Optional[ModelConfig] = None,
                    alpha: float = 0.0, tau: float = 1.0) -> Callable:
  """step(params, opt_state, batch, teacher_params) -> (params, opt_state, metrics).

  alpha == 0 compiles no teacher forward at all (teacher_params may be None). metrics['finite']
  is 1.0 when the loss and every updated parameter are finite (the run's NaN guard reads it).
  """
  if alpha > 0 and teacher_config is None:
    raise ValueError("KD (alpha > 0) needs a teacher_config")
  p_sh, o_sh = state.param_shardings, state.opt_state_shardings
  b_sh = {k: sharding.batch_sharding(mesh) for k in BATCH_KEYS}
  t_sh = sharding.param_shardings(teacher_config, mesh) if alpha > 0 else None

  def step(params, opt_state, batch, teacher_params):
    def loss_fn(p):
      logits = _forward(config, p, batch)
      teacher_logits = _forward(teacher_config, teacher_params, batch) if alpha > 0 else None
      return losses.kd_objective(logits, teacher_logits, batch["decoder_target_tokens"],
                                 batch["decoder_loss_weights"].astype(jnp.float32), alpha, tau)
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    finite = jnp.isfinite(loss) & jnp.all(jnp.stack([jnp.all(jnp.isfinite(p)) for p in jax.tree_util.tree_leaves(params)]))
    return params, opt_state, {"loss": loss, "grad_norm": optax.tree.norm(grads),
                               "finite": finite.astype(jnp.float32), **aux}

  return jax.jit(step, in_shardings=(p_sh, o_sh, b_sh, t_sh),
                 out_shardings=(p_sh, o_sh, sharding.replicated(mesh)), donate_argnums=(0, 1))


def make_eval_step(config: ModelConfig, mesh: Mesh) -> Callable:
  """eval(params, batch) -> (sum of token CE, sum of weights), both float32 scalars."""
  b_sh = {k: sharding.batch_sharding(mesh) for k in BATCH_KEYS}

  def step(params, batch):
    return losses.cross_entropy(_forward(config, params, batch), batch["decoder_target_tokens"],
                                batch["decoder_loss_weights"].astype(jnp.float32))

  return jax.jit(step, in_shardings=(sharding.param_shardings(config, mesh), b_sh),
                 out_shardings=sharding.replicated(mesh))


def evaluate(eval_step: Callable, params, batches, mesh: Mesh) -> dict:
  """Held-out loss (per token) and perplexity over an iterable of local batches."""
  total, weight = 0.0, 0.0
  for local in batches:
    loss_sum, w = eval_step(params, global_batch(local, mesh))
    total, weight = total + float(loss_sum), weight + float(w)
  if weight == 0:
    raise ValueError("evaluation saw no target tokens")
  loss = total / weight
  return {"loss": loss, "ppl": float(np.exp(loss)), "tokens": weight}


def init_random(state: AbstractState, config: ModelConfig, rng: jax.Array):
  """Fresh params created directly on their shardings."""
  return jax.jit(lambda r: model.init_params(config, r), out_shardings=state.param_shardings)(rng)


def init_opt_state(state: AbstractState, optimizer: optax.GradientTransformation, params):
  """A fresh optimizer state for `params`, on the abstract state's shardings."""
  return jax.jit(optimizer.init, out_shardings=state.opt_state_shardings)(params)
