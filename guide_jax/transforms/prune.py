"""Minitron-style structured pruning (Muralidharan et al. 2024; Sreenivas et al. 2024; GUIDE_SPEC.md 7).

importance(): activation-based scores of the teacher's units on a small calibration batch, from one
forward pass of guide_jax.model.Transformer itself (flax method interception reads the inputs and
outputs of its submodules; no second forward implementation). Per token, for every layer:
  heads    [n, h]: ||o_h||_2, o_h [l] the head's attention output before the out projection
                   (the input of self_attention/out, reshaped heads-major);
  neurons  [n, f]: |act(x wi_0) * (x wi_1)|, the input of mlp/wo;
  channels [d]   : |norm(x)|, the output of every RMSNorm (both pre-norms of every layer and the
                   final decoder_norm, scale included), summed over the norms;
  layers   [n]   : 1 - cos(x_in, x_out) of the block's residual input and output.
Each is aggregated over batch and sequence: 'mean' (mean over the B*T tokens) or 'l2' (the L2 norm
over them), the two best aggregations in Minitron. The forward runs in float32, without remat.

prune_init(): keep the top-k units of each axis (ties: the lower index first) and slice every array:
  channels: one set for the whole model: embedding columns, every kernel's d axis, every norm scale,
            the logits kernel's rows;
  heads   : per layer: q/k/v columns and out rows on the heads-major reshape [d, h, l] / [h, l, d];
            head dims by uniform selection when l_S < l_T. Grouped-query teachers (k < h) are
            pruned by kv group as a unit (as Minitron prunes query groups): a group scores the
            sum of its heads' scores, the top-k_S groups are kept and, inside each, the top-g_S
            query heads (g = h / k), so a student head reads the kv head its teacher head read. **[choice]** With relative position
            biases the bias table [h, buckets] is shared by all layers, so a relpos model keeps the
            same heads in every layer (the top-k of the head scores summed over the kept layers);
  neurons : per layer: wi_0/wi_1 columns, wo rows;
  layers  : depth='first_n' | 'uniform' (select.select_layers) or 'importance' (the top-n_S layer
            scores, kept in depth order).
Kept units are in index order (order='importance' puts them in decreasing importance instead: the
same function, permuted, which the tests use). No rescaling, as in Minitron (they retrain, with KD).
The output layer follows weight_selection's rule (tied teacher -> untied student: E_S^T / sqrt(d_S)).
"""
import functools
from typing import Any, Dict, NamedTuple, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from guide_jax import model, sharding
from guide_jax.config import LAYER_SELECTIONS, ModelConfig
from guide_jax.transforms import common, validate
from guide_jax.transforms.select import select_layers, uniform_indices

AGGREGATIONS = ("mean", "l2")
DEPTHS = LAYER_SELECTIONS + ("importance",)
ORDERS = ("index", "importance")
_NORMS = ("pre_self_attention_layer_norm", "pre_mlp_layer_norm")
_QKV = ("query", "key", "value")


class Importance(NamedTuple):
  """Activation importance of a teacher's units (float32 numpy arrays, larger = more important)."""
  heads: np.ndarray     # [n, h]
  neurons: np.ndarray   # [n, f]
  channels: np.ndarray  # [d]
  layers: np.ndarray    # [n]


class PruneIndices(NamedTuple):
  """What prune_init keeps, as teacher indices (int32 numpy)."""
  layers: np.ndarray    # [n_S] teacher layer of each student layer (increasing)
  heads: np.ndarray     # [n_S, h_S] kept query heads of each student layer (group-major)
  neurons: np.ndarray   # [n_S, f_S] kept MLP neurons of each student layer
  channels: np.ndarray  # [d_S] kept model-width channels (all layers)
  head_dims: np.ndarray  # [l_S] uniformly selected dims within each kept head
  kv_heads: Optional[np.ndarray] = None  # [n_S, k_S] kept kv heads (groups); None: == heads (MHA)


# ----------------------------------------------------------------------------------- importance
def _aggregate(score, aggregation: str):
  """score [B, T, ...] >= 0 -> [...]: mean, or L2 norm, over batch and sequence."""
  score = score.astype(jnp.float32)
  if aggregation == "mean":
    return jnp.mean(score, axis=(0, 1))
  return jnp.sqrt(jnp.sum(score * score, axis=(0, 1)))


def _importance(teacher_params, tokens, config: ModelConfig, aggregation: str):
  """The traced body of importance(): one intercepted forward pass -> dict of score arrays."""
  h, l, n = config.n_heads, config.head_dim, config.n_layers
  seen: Dict[Tuple[str, ...], Any] = {}

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == "__call__":
      path = tuple(context.module.path)
      if path[-2:] in (("self_attention", "out"), ("mlp", "wo")):
        seen[path] = args[0]  # the projection's input
      elif isinstance(context.module, (model.RMSNorm, model.DecoderLayer)):
        seen[path] = (args[0], out)
    return out

  with nn.intercept_methods(interceptor):
    model.Transformer(config).apply({"params": teacher_params}, tokens)
  heads, neurons, layers = [], [], []
  channels = jnp.zeros((config.d_model,), jnp.float32)
  for i in range(n):
    prefix = ("decoder", f"layers_{i}")
    o = seen[prefix + ("self_attention", "out")]
    o = o.astype(jnp.float32).reshape(o.shape[:-1] + (h, l))
    heads.append(_aggregate(jnp.sqrt(jnp.sum(o * o, axis=-1)), aggregation))
    neurons.append(_aggregate(jnp.abs(seen[prefix + ("mlp", "wo")]), aggregation))
    for norm in _NORMS:
      channels = channels + _aggregate(jnp.abs(seen[prefix + (norm,)][1]), aggregation)
    x_in, x_out = (x.astype(jnp.float32) for x in seen[prefix])
    cos = jnp.sum(x_in * x_out, -1) / (
        jnp.linalg.norm(x_in, axis=-1) * jnp.linalg.norm(x_out, axis=-1) + 1e-12)
    layers.append(_aggregate(1.0 - cos, aggregation))
  channels = channels + _aggregate(jnp.abs(seen[("decoder", "decoder_norm")][1]), aggregation)
  return {"heads": jnp.stack(heads), "neurons": jnp.stack(neurons), "channels": channels,
          "layers": jnp.stack(layers)}


def check_tokens(tokens, vocab_size: int, name: str = "calibration_tokens") -> np.ndarray:
  """Raise ValueError unless `tokens` is a [B, T] integer array with ids in [0, vocab_size)."""
  if not hasattr(tokens, "shape") or not hasattr(tokens, "dtype"):
    raise ValueError(f"{name} must be a numpy or jax array, got {type(tokens).__name__}")
  if len(tokens.shape) != 2 or 0 in tokens.shape:
    raise ValueError(f"{name} must be a non-empty [B, T] array, got shape {tuple(tokens.shape)}")
  if not jnp.issubdtype(tokens.dtype, jnp.integer):
    raise ValueError(f"{name} must hold integer token ids, got dtype {np.dtype(tokens.dtype)}")
  host = np.asarray(tokens)
  low, high = int(host.min()), int(host.max())
  if low < 0 or high >= vocab_size:
    raise ValueError(f"{name} ids must be in [0, {vocab_size}) (vocab_size), got min {low}, max {high}")
  return host.astype(np.int32)


def importance(teacher_params, teacher_config: ModelConfig, calibration_tokens, *,
               aggregation: str = "mean", mesh: Optional[Mesh] = None) -> Importance:
  """Minitron activation importance of the teacher's heads, MLP neurons, channels and layers.

  teacher_params: {'decoder': {...}} for teacher_config. calibration_tokens: [B, T] int ids in
  [0, V) (e.g. a few training batches). aggregation: 'mean' or 'l2' over batch and sequence.
  mesh: run sharded (teacher by its logical axes, tokens split over 'data'; B must divide evenly).
  Returns Importance(heads [n, h], neurons [n, f], channels [d], layers [n]) as float32 numpy;
  definitions in the module docstring. Inputs are checked before any compute (one ValueError).
  """
  if aggregation not in AGGREGATIONS:
    raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
  if not isinstance(teacher_config, ModelConfig):
    raise ValueError(f"teacher_config must be a ModelConfig, got {type(teacher_config).__name__}")
  tokens = check_tokens(calibration_tokens, teacher_config.vocab_size)
  if mesh is not None and tokens.shape[0] % mesh.shape["data"]:
    raise ValueError(f"calibration batch {tokens.shape[0]} is not divisible by the mesh's data axis "
                     f"({mesh.shape['data']})")
  validate.check_tree(teacher_params, teacher_config, "teacher params")
  teacher = validate.restrict(teacher_params, teacher_config)
  config = teacher_config.replace(dtype="float32", remat="none", attention_impl="xla")
  body = functools.partial(_importance, config=config, aggregation=aggregation)
  if mesh is None:
    scores = jax.jit(body)(teacher, tokens)
  else:
    t_sh = sharding.param_shardings(teacher_config, mesh)
    program = jax.jit(body, in_shardings=(t_sh, sharding.batch_sharding(mesh)),
                      out_shardings=sharding.replicated(mesh))
    scores = program(jax.device_put(teacher, t_sh), jax.device_put(tokens, sharding.batch_sharding(mesh)))
  scores = Importance(**{k: np.asarray(v, np.float32) for k, v in scores.items()})
  bad = [name for name, value in scores._asdict().items() if not np.all(np.isfinite(value))]
  if bad:  # the output check (the teacher's values are checked once, where it is loaded)
    raise ValueError(f"importance scores hold NaN or Inf in {', '.join(bad)} (a non-finite teacher?)")
  return scores


# ----------------------------------------------------------------------------------- selection
def top_k(scores, k: int, order: str = "index") -> np.ndarray:
  """Indices of the k largest scores (ties: the lower index first), in index order or, with
  order='importance', in decreasing score. scores [D] -> int32 [k]."""
  scores = np.asarray(scores, np.float64)
  best = np.argsort(-scores, kind="stable")[:k]
  return (np.sort(best) if order == "index" else best).astype(np.int32)


def _check_importance(imp, config: ModelConfig) -> None:
  if not isinstance(imp, Importance):
    raise ValueError(f"importance must be an Importance, got {type(imp).__name__}")
  n, h, f, d = config.n_layers, config.n_heads, config.mlp_dim, config.d_model
  want = {"heads": (n, h), "neurons": (n, f), "channels": (d,), "layers": (n,)}
  problems = []
  for name, shape in want.items():
    got = np.asarray(getattr(imp, name))
    if got.shape != shape:
      problems.append(f"{name} has shape {got.shape}, teacher needs {shape}")
    elif not np.all(np.isfinite(got)):
      problems.append(f"{name} holds NaN or Inf")
  if problems:
    raise ValueError("importance does not fit the teacher: " + "; ".join(problems))


def prune_indices(imp: Importance, teacher_config: ModelConfig, student_config: ModelConfig, *,
                  depth: str = "first_n", order: str = "index") -> PruneIndices:
  """The teacher units prune_init keeps (module docstring), from importance scores. Host-side."""
  common.check_configs(teacher_config, student_config)
  _check_importance(imp, teacher_config)
  if depth not in DEPTHS:
    raise ValueError(f"depth must be one of {DEPTHS}, got {depth!r}")
  if order not in ORDERS:
    raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
  t, s = teacher_config, student_config
  if depth == "importance":
    layers = top_k(imp.layers, s.n_layers, "index")
  else:
    layers = select_layers(t.n_layers, s.n_layers, depth).astype(np.int32)
  head_scores = np.asarray(imp.heads, np.float64)[layers]
  if s.position_embedding == "relpos":  # one shared bias table: the same heads in every layer
    heads, kv = _group_heads(head_scores.sum(0), t, s, order)
    heads, kv = np.tile(heads, (s.n_layers, 1)), np.tile(kv, (s.n_layers, 1))
  else:
    heads, kv = (np.stack(x) for x in zip(*[_group_heads(row, t, s, order) for row in head_scores]))
  neurons = np.stack([top_k(row, s.mlp_dim, order) for row in np.asarray(imp.neurons)[layers]])
  return PruneIndices(layers=layers, heads=heads.astype(np.int32), neurons=neurons,
                      channels=top_k(imp.channels, s.d_model, order),
                      head_dims=uniform_indices(t.head_dim, s.head_dim).astype(np.int32),
                      kv_heads=kv.astype(np.int32))


def _group_heads(scores, t: ModelConfig, s: ModelConfig, order: str):
  """One layer's head scores [h_T] -> (kept query heads [h_S] group-major, kept kv heads [k_S]).

  A kv group scores the sum of its g_T = h_T / k_T query heads; the top-k_S groups are kept and,
  in each, its top-g_S heads. MHA (k = h, g = 1) is top-h_S of the head scores.
  """
  g_t, g_s = t.n_heads // t.kv_heads, s.n_heads // s.kv_heads
  by_group = np.asarray(scores, np.float64).reshape(t.kv_heads, g_t)
  groups = top_k(by_group.sum(1), s.kv_heads, order)
  heads = [g * g_t + top_k(by_group[g], g_s, order) for g in groups]
  return np.concatenate(heads), groups


# ----------------------------------------------------------------------------------- prune_init
def _prune_layer(layer, heads, kv_heads, neurons, channels, head_dims, teacher_config: ModelConfig):
  """One teacher layer (norm gains) sliced to (query heads [h_S], kv heads [k_S], neurons [f_S],
  channels [d_S], head_dims [l_S])."""
  t = teacher_config
  h, kv, l, d = t.n_heads, t.kv_heads, t.head_dim, t.d_model
  attn, mlp = layer["self_attention"], layer["mlp"]
  new_attn = {}
  for name in _QKV:  # [d, h*l] -> [d, h, l] -> [d_S, h_S, l_S] -> [d_S, h_S*l_S]
    n, keep = (h, heads) if name == "query" else (kv, kv_heads)
    k = jnp.reshape(attn[name]["kernel"], (d, n, l))
    k = jnp.take(jnp.take(jnp.take(k, channels, 0), keep, 1), head_dims, 2)
    new_attn[name] = {"kernel": jnp.reshape(k, (k.shape[0], -1))}
    if "bias" in attn[name]:
      b = jnp.take(jnp.take(jnp.reshape(attn[name]["bias"], (n, l)), keep, 0), head_dims, 1)
      new_attn[name]["bias"] = jnp.reshape(b, (-1,))
  k = jnp.reshape(attn["out"]["kernel"], (h, l, d))  # [h*l, d] -> [h, l, d]
  k = jnp.take(jnp.take(jnp.take(k, heads, 0), head_dims, 1), channels, 2)
  new_attn["out"] = {"kernel": jnp.reshape(k, (-1, k.shape[-1]))}
  if "bias" in attn["out"]:
    new_attn["out"]["bias"] = jnp.take(attn["out"]["bias"], channels, 0)
  for name in ("query_norm", "key_norm"):
    if name in attn:
      new_attn[name] = {"scale": jnp.take(attn[name]["scale"], head_dims, 0)}
  new_mlp = {name: {"kernel": jnp.take(jnp.take(mlp[name]["kernel"], channels, 0), neurons, 1)}
             for name in ("wi_0", "wi_1")}
  new_mlp["wo"] = {"kernel": jnp.take(jnp.take(mlp["wo"]["kernel"], neurons, 0), channels, 1)}
  norms = {name: {"scale": jnp.take(value["scale"], channels, 0)}
           for name, value in layer.items() if name.endswith("layer_norm")}
  return {**norms, "self_attention": new_attn, "mlp": new_mlp}


def _prune(teacher_params, idx, teacher_config: ModelConfig, student_config: ModelConfig,
           teacher_layers: Tuple[int, ...], head_dims: np.ndarray):
  """The traced body of prune_init: (teacher tree, kept indices) -> student tree."""
  t, s = teacher_config, student_config
  teacher = common.to_gains(teacher_params["decoder"], t)
  channels = idx["channels"]
  embedding = jnp.take(teacher["token_embedder"]["embedding"], channels, 1)
  student = {"token_embedder": {"embedding": embedding}}
  for i, j in enumerate(teacher_layers):
    student[f"layers_{i}"] = _prune_layer(teacher[f"layers_{j}"], idx["heads"][i], idx["kv_heads"][i],
                                          idx["neurons"][i], channels, head_dims, t)
  if s.position_embedding == "relpos":
    student["relpos_bias"] = {"rel_embedding": jnp.take(teacher["relpos_bias"]["rel_embedding"],
                                                        idx["heads"][0], 0)}
  student["decoder_norm"] = {"scale": jnp.take(teacher["decoder_norm"]["scale"], channels, 0)}
  if not s.tie_embeddings:
    student["logits_dense"] = {"kernel": common.student_logits_kernel(
        teacher, t, s, embedding, lambda k: jnp.take(k, channels, 0))}
  return common.cast_to_student(student, s)


def prune_init(teacher_params, teacher_config: ModelConfig, student_config: ModelConfig,
               importance: Importance, *, depth: str = "first_n", order: str = "index",
               mesh: Optional[Mesh] = None):
  """Minitron-style pruned initialization of a student from a teacher and its Importance.

  teacher_params: {'decoder': {...}} for teacher_config. importance: importance(teacher, ...).
  depth: which teacher layers survive: 'first_n', 'uniform' or 'importance' (top-n_S layer scores).
  order: kept units in 'index' order (default) or by decreasing 'importance' (an equivalent
    permutation). mesh: run sharded (teacher and student by their logical axes).
  Returns the student's params {'decoder': {...}} with the structure, shapes and dtypes of
  model.param_shapes(student_config); what is kept is prune_indices(...) (module docstring).
  All inputs are checked (shapes, dtypes, dimensions) before any compute; a problem raises one
  ValueError naming it. The student that comes out is checked finite.
  """
  idx = prune_indices(importance, teacher_config, student_config, depth=depth, order=order)
  validate.check_tree(teacher_params, teacher_config, "teacher params")
  body = functools.partial(_prune, teacher_config=teacher_config, student_config=student_config,
                           teacher_layers=tuple(int(j) for j in idx.layers), head_dims=idx.head_dims)
  kept = {"heads": idx.heads, "kv_heads": idx.kv_heads, "neurons": idx.neurons, "channels": idx.channels}
  rep = None if mesh is None else sharding.replicated(mesh)
  program, t_sh = common.compile_init(body, teacher_config, student_config, mesh, extra_shardings=(rep,))
  params = common.run_init(program, t_sh, teacher_params, teacher_config, kept)
  common.check_student(params, "pruning")
  return params
