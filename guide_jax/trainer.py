"""The compiled train and eval steps, and how their state is laid out on a Mesh.

One jitted step: student forward (+ frozen teacher forward when alpha > 0) -> loss -> grads ->
optax update, with params / optimizer state sharded by the logical-axis rules of guide_jax.sharding
(FSDP over 'fsdp', tensor parallelism over 'model') and the batch split over ('data', 'fsdp');
optionally as microbatches (gradient accumulation) and with the loss chunked over the sequence.
Parameters and optimizer state are donated.
"""
from typing import Any, Callable, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

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
  """This process's rows of the global batch -> global [B, T] arrays split over ('data', 'fsdp')."""
  sh = sharding.batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sh, np.asarray(local_batch[k])) for k in BATCH_KEYS}


def _forward(config, params, batch, hidden=False):
  return model.apply(config, params, batch["decoder_input_tokens"], batch["decoder_segment_ids"],
                     batch["decoder_positions"], hidden=hidden)


def check_batch(batch_size: int, mesh: Mesh, accum_steps: int = 1) -> None:
  """ValueError unless a global batch of batch_size rows splits into accum_steps microbatches
  that each split evenly over the mesh's batch axes (data x fsdp)."""
  shards = sharding.batch_shards(mesh)
  if not isinstance(accum_steps, int) or isinstance(accum_steps, bool) or accum_steps < 1:
    raise ValueError(f"accum_steps (train.train.grad_accum_steps) must be a positive int, got {accum_steps!r}")
  if batch_size % (shards * accum_steps):
    raise ValueError(f"BATCH_SIZE {batch_size} must divide by the mesh's batch axes (data x fsdp = {shards}) "
                     f"x grad_accum_steps ({accum_steps}) = {shards * accum_steps}; set train.train.mesh_shape, "
                     "train.train.num_devices or train.train.grad_accum_steps")


def microbatches(batch: dict, accum_steps: int, mesh: Mesh) -> dict:
  """[B, ...] arrays -> [accum_steps, B / accum_steps, ...]: microbatch j holds rows j, j + k,
  j + 2k, ... (k = accum_steps), so each device keeps its own rows (B / (data x fsdp) must divide
  by k: check_batch)."""
  sh = NamedSharding(mesh, P(None, sharding.batch_axes(mesh)))
  split = lambda x: jnp.swapaxes(x.reshape((x.shape[0] // accum_steps, accum_steps) + x.shape[1:]), 0, 1)
  return {k: jax.lax.with_sharding_constraint(split(v), sh) for k, v in batch.items()}


def chunked_objective(mesh: Mesh, config: ModelConfig, params, hidden, teacher_config, teacher_params,
                      teacher_hidden, targets, weights, alpha: float, tau: float, chunk: int) -> dict:
  """losses.chunked_objective_sums on every device's own rows (jax.shard_map over the batch axes),
  summed over devices: each output layer is gathered once (model.output_head) and its gradient,
  summed locally over the chunks, is reduced once at the end (an SPMD chunk loop would reduce it
  once per chunk). hidden [B, T, d] / teacher_hidden (None without KD); returns {'ce', 'kd'} sums."""
  axes = sharding.batch_axes(mesh)
  kd = alpha > 0.0
  heads = (model.output_head(config, params), model.output_head(teacher_config, teacher_params) if kd else None)

  def local(hidden, teacher_hidden, heads, targets, weights):
    # Varying per device: the chunks' head gradients add up locally; the one psum is pcast's transpose.
    heads = (jax.lax.pcast(heads[0], axes, to="varying"), heads[1])
    with nn.logical_axis_rules(()):  # manual here: the model's sharding constraints are off
      sums = losses.chunked_objective_sums(
          hidden, teacher_hidden, lambda y: model.output_logits(config, heads[0], y),
          (lambda y: model.output_logits(teacher_config, heads[1], y)) if kd else None,
          targets, weights, alpha, tau, chunk)
    return {k: jax.lax.psum(v, axes) for k, v in sums.items()}

  rows = P(axes)
  return jax.shard_map(local, mesh=mesh, in_specs=(rows, rows if kd else None, P(), rows, rows),
                       out_specs=P())(hidden, teacher_hidden, heads, targets, weights)


def make_train_step(config: ModelConfig, optimizer: optax.GradientTransformation, mesh: Mesh,
                    state: AbstractState, *, teacher_config: Optional[ModelConfig] = None,
                    alpha: float = 0.0, tau: float = 1.0, accum_steps: int = 1,
                    loss_chunk: Optional[int] = None) -> Callable:
  """step(params, opt_state, batch, teacher_params) -> (params, opt_state, metrics).

  teacher_params: on sharding.param_shardings(teacher_config, mesh), stacked (stack_teacher) when
  teacher_config.scan_layers.
  alpha == 0 compiles no teacher forward at all (teacher_params may be None). metrics['finite']
  is 1.0 when the loss and every updated parameter are finite (the run's NaN guard reads it).
  The program is traced under sharding.activation_rules(mesh): on a mesh with an 'fsdp' axis each
  layer's weights are gathered where used (model.gathered: layers' kernels in the compute dtype,
  the teacher in its own dtype) and gradients reduce-scattered onto the params' shards.
  accum_steps: the global batch runs as that many microbatches (microbatches(); a jax.lax.scan),
    float32 gradients summed on the params' shardings, the loss divided by the whole batch's
    weight: one update equal to the full batch's (tested to float tolerance). The teacher forward
    runs per microbatch too.
  loss_chunk: the objective from final hidden states, loss_chunk positions at a time
    (losses.chunked_objective_sums: no whole [B, T, V] logits); None: whole logits (exact
    kd_objective). Both agree to float summation order.
  """
  if alpha > 0 and teacher_config is None:
    raise ValueError("KD (alpha > 0) needs a teacher_config")
  if loss_chunk is not None and (not isinstance(loss_chunk, int) or isinstance(loss_chunk, bool) or loss_chunk < 1):
    raise ValueError(f"loss_chunk (train.train.loss_chunk) must be None or a positive int, got {loss_chunk!r}")
  check_batch(sharding.batch_shards(mesh) * accum_steps, mesh, accum_steps)
  p_sh, o_sh = state.param_shardings, state.opt_state_shardings
  b_sh = {k: sharding.batch_sharding(mesh) for k in BATCH_KEYS}
  t_sh = sharding.param_shardings(teacher_config, mesh, stacked=teacher_config.scan_layers) if alpha > 0 else None
  kd, chunked = alpha > 0, loss_chunk is not None

  def micro(params, batch, teacher_params, denom):
    """(objective sums, grads of their combined loss) on one (micro)batch."""
    targets, weights = batch["decoder_target_tokens"], batch["decoder_loss_weights"].astype(jnp.float32)
    teacher_out = jax.lax.stop_gradient(_forward(teacher_config, teacher_params, batch, hidden=chunked)) if kd else None

    def loss_fn(p):
      out = _forward(config, p, batch, hidden=chunked)
      if chunked:
        sums = chunked_objective(mesh, config, p, out, teacher_config, teacher_params, teacher_out, targets,
                                 weights, alpha, tau, loss_chunk)
      else:
        sums = losses.objective_sums(out, teacher_out, targets, weights, alpha, tau)
      return losses.combine(sums, denom, alpha)[0], sums
    (_, sums), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return sums, grads

  def step(params, opt_state, batch, teacher_params):
    with sharding.activation_rules(mesh):
      denom = jnp.maximum(jnp.sum(batch["decoder_loss_weights"].astype(jnp.float32)), 1.0)
      if accum_steps == 1:
        sums, grads = micro(params, batch, teacher_params, denom)
      else:
        def body(carry, mb):
          sums, grads = micro(params, mb, teacher_params, denom)
          total = jax.tree_util.tree_map(jnp.add, carry, (sums, grads))
          return (total[0], jax.lax.with_sharding_constraint(total[1], p_sh)), None
        zeros = jax.lax.with_sharding_constraint(
            jax.tree_util.tree_map(lambda p: jnp.zeros(p.shape, jnp.float32), params), p_sh)
        init = ({k: jnp.zeros((), jnp.float32) for k in ("ce", "kd")[:1 + kd]}, zeros)
        (sums, grads), _ = jax.lax.scan(body, init, microbatches(batch, accum_steps, mesh))
        grads = jax.tree_util.tree_map(lambda g, p: g.astype(p.dtype), grads, params)
      loss, aux = losses.combine(sums, denom, alpha)
      updates, opt_state = optimizer.update(grads, opt_state, params)
      params = optax.apply_updates(params, updates)
      finite = jnp.isfinite(loss) & jnp.all(jnp.stack([jnp.all(jnp.isfinite(p)) for p in jax.tree_util.tree_leaves(params)]))
      return params, opt_state, {"loss": loss, "grad_norm": optax.tree.norm(grads),
                                 "finite": finite.astype(jnp.float32), **aux}

  return jax.jit(step, in_shardings=(p_sh, o_sh, b_sh, t_sh),
                 out_shardings=(p_sh, o_sh, sharding.replicated(mesh)), donate_argnums=(0, 1))


def make_eval_step(config: ModelConfig, mesh: Mesh, loss_chunk: Optional[int] = None) -> Callable:
  """eval(params, batch) -> (sum of token CE, sum of weights), both float32 scalars (loss_chunk: as
  make_train_step's, no whole [B, T, V] logits)."""
  b_sh = {k: sharding.batch_sharding(mesh) for k in BATCH_KEYS}

  def step(params, batch):
    with sharding.activation_rules(mesh):
      targets, weights = batch["decoder_target_tokens"], batch["decoder_loss_weights"].astype(jnp.float32)
      if loss_chunk is None:
        return losses.cross_entropy(_forward(config, params, batch), targets, weights)
      sums = chunked_objective(mesh, config, params, _forward(config, params, batch, hidden=True), None, None,
                               None, targets, weights, 0.0, 1.0, loss_chunk)
      return sums["ce"], jnp.sum(weights)

  return jax.jit(step, in_shardings=(sharding.param_shardings(config, mesh), b_sh),
                 out_shardings=sharding.replicated(mesh))


def stack_teacher(teacher_config: ModelConfig, params, mesh: Mesh):
  """A KD teacher as make_train_step takes it: with teacher_config.scan_layers, stacked once here
  (model.stack_layers onto its stacked shardings), so that the step does not stack it again every
  step; otherwise as it is. The caller drops the unrolled tree (XLA cannot reuse its buffers for
  the stacked leaves, so donating them would free nothing sooner)."""
  if not teacher_config.scan_layers:
    return params
  out = sharding.param_shardings(teacher_config, mesh, stacked=True)
  return jax.jit(lambda p: model.stack_layers(teacher_config, p), out_shardings=out)(params)


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
