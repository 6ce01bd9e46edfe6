"""Checks run before any GUIDE compute: dimensions, tree structure, finiteness."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from flax.core import unfreeze

from guide_jax import model
from guide_jax.config import ModelConfig


def check_dimensions(teacher: ModelConfig, student: ModelConfig) -> None:
  """Raise ValueError naming every dimension where the student is not <= the teacher."""
  problems = []
  if student.vocab_size != teacher.vocab_size:
    problems.append(f"vocab_size: student {student.vocab_size} != teacher {teacher.vocab_size} "
                    "(teacher and student must share the tokenizer)")
  for name, sym in (("d_model", "d"), ("n_heads", "h"), ("head_dim", "l"), ("mlp_dim", "f"),
                    ("n_layers", "n")):
    s, t = getattr(student, name), getattr(teacher, name)
    if s > t:
      problems.append(f"{name}: student {sym}_S={s} > teacher {sym}_T={t}")
  k_t, k_s = teacher.kv_heads, student.kv_heads
  if k_s > k_t:
    problems.append(f"kv heads: student k_S={k_s} > teacher k_T={k_t} (the student keeps whole kv groups)")
  elif student.n_heads // k_s > teacher.n_heads // k_t:
    problems.append(f"query heads per kv head: student h_S/k_S={student.n_heads // k_s} > teacher "
                    f"h_T/k_T={teacher.n_heads // k_t} (a student group keeps query heads of one teacher group)")
  for name in ("qkv_bias", "out_bias", "qk_norm", "post_norms"):
    if getattr(student, name) != getattr(teacher, name):
      problems.append(f"{name}: student {getattr(student, name)} != teacher {getattr(teacher, name)} "
                      "(the student keeps the teacher's block structure)")
  for name in ("position_embedding", "mlp_activation"):
    if getattr(student, name) != getattr(teacher, name):
      problems.append(f"{name}: student {getattr(student, name)!r} != teacher {getattr(teacher, name)!r}")
  if student.position_embedding == "relpos" and student.relpos_buckets != teacher.relpos_buckets:
    problems.append(f"relpos_buckets: student {student.relpos_buckets} != teacher {teacher.relpos_buckets} "
                    "(the bias table [h, buckets] is selected on heads only)")
  if problems:
    raise ValueError("GUIDE needs a student no larger than its teacher: " + "; ".join(problems))


def flatten(params) -> dict:
  """Nested dict (or FrozenDict) of arrays -> {'a/b/c': array}."""
  return traverse_util.flatten_dict(unfreeze(params), sep="/")


def flatten_paths(tree) -> list:
  """Nested dict of leaves -> [(('a', 'b', 'c'), leaf), ...]."""
  return list(traverse_util.flatten_dict(unfreeze(tree)).items())


def restrict(params, config: ModelConfig) -> dict:
  """`params` with exactly the keys of config's model tree, as plain dicts (drops t5x extras)."""
  def pick(tree, shapes):
    return {k: pick(tree[k], v) for k, v in shapes.items()} if isinstance(shapes, dict) else tree
  return pick(unfreeze(params), model.param_shapes(config))


def check_tree(params, config: ModelConfig, name: str = "params") -> None:
  """Raise ValueError if `params` lacks a key of, or has a wrong shape or a non-float dtype for,
  config's model tree."""
  if not hasattr(params, "keys"):
    raise ValueError(f"{name} must be a nested dict of arrays, got {type(params).__name__}")
  expected = flatten(model.param_shapes(config))
  got = flatten(params)
  missing = sorted(set(expected) - set(got))
  if missing:
    more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
    raise ValueError(f"{name} is missing {len(missing)} key(s) for its config: "
                     f"{', '.join(missing[:5])}{more}")
  wrong = [f"{k}: {tuple(np.shape(got[k]))} != expected {expected[k].shape}"
           for k in sorted(expected) if tuple(np.shape(got[k])) != expected[k].shape]
  if wrong:
    raise ValueError(f"{name} has wrong shapes for its config: " + "; ".join(wrong[:5]))
  dtype = lambda x: x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype  # never fetch global arrays
  not_float = [f"{k} has dtype {np.dtype(dtype(got[k]))}" for k in sorted(expected)
               if not jnp.issubdtype(dtype(got[k]), jnp.floating)]
  if not_float:
    raise ValueError(f"{name} must hold float parameters (GUIDE maps real-valued weights): "
                     + "; ".join(not_float[:3]))


@functools.partial(jax.jit, static_argnums=1)
def _scan(leaves, also):
  # isfinite(sum(x * 0)): 0 for finite x, NaN for NaN or Inf; a fused reduction with no temporary,
  # where all(isfinite(x)) materializes a bool array per leaf (half a bf16 teacher, all leaves at
  # once). Not max |x|: XLA's CPU max reduction does not propagate NaN.
  finite = jnp.stack([jnp.isfinite(jnp.sum(x.astype(jnp.float32) * 0)) if x.size else jnp.bool_(True)
                      for x in leaves])
  return finite, (jnp.stack([also(x) for x in leaves]) if also is not None else None)


def _float_leaves(params):
  flat = flatten(params)
  keys = sorted(k for k, v in flat.items() if jnp.issubdtype(jnp.result_type(v), jnp.inexact))
  return keys, [flat[k] for k in keys]


def nonfinite_leaves(params) -> list:
  """The 'a/b/c' keys of the float leaves of `params` that hold NaN or Inf (one fused pass)."""
  keys, leaves = _float_leaves(params)
  ok = np.asarray(_scan(leaves, None)[0])
  return [k for k, good in zip(keys, ok) if not good]


def check_finite(params, name: str = "params", also=None):
  """Raise ValueError naming each leaf of `params` that holds NaN or Inf (a teacher's one pass,
  where it is loaded).

  also: a traceable function of one array (e.g. checkpoints.array_checksum) computed in the same
  pass over every float leaf; returns {'a/b/c': its value} (None without `also`).
  """
  keys, leaves = _float_leaves(params)
  ok, values = _scan(leaves, also)
  bad = [k for k, good in zip(keys, np.asarray(ok)) if not good]
  if bad:
    raise ValueError(f"{name} holds NaN or Inf in: {', '.join(bad[:5])}")
  return None if also is None else dict(zip(keys, np.asarray(values)))
