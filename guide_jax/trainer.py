"""The compiled train and eval steps, and how their state is laid out on a Mesh.

One jitted step: student forward (+ frozen teacher forward when alpha > 0) -> loss -> grads ->
optax update, with params / optimizer state sharded by t5x logical-axis rules and the batch split
over 'data'. Parameters and optimizer state are donated.
"""
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from guide_jax import losses, model, sharding
from guide_jax.config import ModelConfig

BATCH_KEYS = ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights",
              "decoder_segment_ids", "decoder_positions")


def param_shardings(config: ModelConfig, mesh: Mesh):
  """Tree of NamedShardings for config's params, from its logical axis names."""
  return sharding.logical_to_sharding(model.logical_axes(config), mesh)


def opt_state_shardings(optimizer: optax.GradientTransformation, config: ModelConfig, mesh: Mesh,
                        params_sharding):
  """Optimizer-state leaves shaped like a param (Adam moments) get that param's sharding;
  other leaves (counts, Adafactor's factored moments) are replicated."""
  flat_params = {tuple(str(k) for k in path): (leaf.shape, sh) for (path, leaf), sh in zip(
      jax.tree_util.tree_flatten_with_path(model.param_shapes(config))[0],
      jax.tree_util.tree_leaves(params_sharding))}
  abstract = jax.eval_shape(optimizer.init, model.param_shapes(config))

  def pick(path, leaf):
    keys = tuple(str(k) for k in path)
    for start in range(len(keys)):
      match = flat_params.get(keys[start:])
      if match is not None and match[0] == leaf.shape:
        return match[1]
    return sharding.replicated(mesh)

  return jax.tree_util.tree_map_with_path(pick, abstract)


def host_to_global(tree, shardings):
  """Host numpy/jax arrays, identical on every process -> global jax.Arrays on `shardings`."""
  def put(x, sh):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sh, lambda idx: x[idx])
  return jax.tree_util.tree_map(put, tree, shardings)


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
  """This process's rows of the global batch -> global [B, T] arrays split over 'data'."""
  sh = sharding.batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sh, np.asarray(local_batch[k])) for k in BATCH_KEYS}


def _forward(config, params, batch):
  return model.apply(config, params, batch["decoder_input_tokens"], batch["decoder_segment_ids"],
                     batch["decoder_positions"])


def make_train_step(config: ModelConfig, optimizer: optax.GradientTransformation, mesh: Mesh, *,
                    teacher_config: Optional[ModelConfig] = None, alpha: float = 0.0,
                    tau: float = 1.0) -> Callable:
  """step(params, opt_state, batch, teacher_params) -> (params, opt_state, metrics).

  alpha == 0 compiles no teacher forward at all (teacher_params may be None).
  """
  if alpha > 0 and teacher_config is None:
    raise ValueError("KD (alpha > 0) needs a teacher_config")
  p_sh = param_shardings(config, mesh)
  o_sh = opt_state_shardings(optimizer, config, mesh, p_sh)
  b_sh = {k: sharding.batch_sharding(mesh) for k in BATCH_KEYS}
  t_sh = param_shardings(teacher_config, mesh) if alpha > 0 else None

  def step(params, opt_state, batch, teacher_params):
    def loss_fn(p):
      logits = _forward(config, p, batch)
      teacher_logits = _forward(teacher_config, teacher_params, batch) if alpha > 0 else None
      return losses.kd_objective(logits, teacher_logits, batch["decoder_target_tokens"],
                                 batch["decoder_loss_weights"].astype(jnp.float32), alpha, tau)
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return params, opt_state, {"loss": loss, "grad_norm": optax.tree.norm(grads), **aux}

  return jax.jit(step, in_shardings=(p_sh, o_sh, b_sh, t_sh),
                 out_shardings=(p_sh, o_sh, sharding.replicated(mesh)), donate_argnums=(0, 1))


def make_eval_step(config: ModelConfig, mesh: Mesh) -> Callable:
  """eval(params, batch) -> (sum of token CE, sum of weights), both float32 scalars."""
  b_sh = {k: sharding.batch_sharding(mesh) for k in BATCH_KEYS}

  def step(params, batch):
    return losses.cross_entropy(_forward(config, params, batch), batch["decoder_target_tokens"],
                                batch["decoder_loss_weights"].astype(jnp.float32))

  return jax.jit(step, in_shardings=(param_shardings(config, mesh), b_sh),
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


def init_random(config: ModelConfig, rng: jax.Array, mesh: Mesh):
  """Fresh params created directly on their shardings."""
  return jax.jit(lambda r: model.init_params(config, r), out_shardings=param_shardings(config, mesh))(rng)


def init_opt_state(optimizer: optax.GradientTransformation, config: ModelConfig, params, mesh: Mesh):
  o_sh = opt_state_shardings(optimizer, config, mesh, param_shardings(config, mesh))
  return jax.jit(optimizer.init, out_shardings=o_sh)(params)
