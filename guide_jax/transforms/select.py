"""Uniform Selection (Weight Selection, Xu et al. 2023) and layer selection."""
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from guide_jax.config import LAYER_SELECTIONS


def uniform_indices(size_from: int, size_to: int) -> np.ndarray:
  """Indices that shrink an axis of size_from to size_to.

  k * (size_from // size_to) when size_from % size_to == 0, else round(linspace(0, size_from - 1, size_to)).
  """
  if not 1 <= size_to <= size_from:
    raise ValueError(f"cannot select {size_to} of {size_from} (need 1 <= {size_to} <= {size_from})")
  if size_from % size_to == 0:
    return np.arange(size_to) * (size_from // size_to)
  return np.round(np.linspace(0, size_from - 1, size_to)).astype(np.int64)


def _select_axis(x, axis: int, size_to: int):
  """x with `axis` shrunk to size_to by uniform_indices.

  The evenly divisible case is a reshape [.., size_to, stride, ..] and index 0 of the stride axis:
  under jit, an axis sharded in size_to-aligned blocks stays local (no gather, no all-to-all).
  """
  size_from = x.shape[axis]
  if size_from % size_to == 0:
    x = jnp.reshape(x, x.shape[:axis] + (size_to, size_from // size_to) + x.shape[axis + 1:])
    return jax.lax.index_in_dim(x, 0, axis + 1, keepdims=False)
  return jnp.take(x, uniform_indices(size_from, size_to), axis=axis)


def uniform_select(array, shape: Sequence[int]):
  """Shrink every axis of `array` to `shape` by uniform_indices, axis by axis (jax array out)."""
  if np.ndim(array) != len(shape):
    raise ValueError(f"uniform_select: rank mismatch, array {tuple(np.shape(array))} vs target {tuple(shape)}")
  out = jnp.asarray(array)
  for axis, (size_from, size_to) in enumerate(zip(out.shape, shape)):
    if size_from != size_to:
      uniform_indices(size_from, size_to)  # validates
      out = _select_axis(out, axis, size_to)
  return out


def select_heads(kernel, axis: int, heads: Sequence[int], head_dim: Sequence[int], other: Sequence[int]):
  """Uniform selection of a joined-heads kernel (t5x's 2-D attention layout).

  kernel: [d_T, h_T*l_T] (axis=1; query/key/value) or [h_T*l_T, d_T] (axis=0; out), heads-major.
  heads = (h_T, h_S), head_dim = (l_T, l_S), other = (d_T, d_out): the non-head axis.
  Whole heads are selected on the heads axis and dims on the head-dim axis, as the spec asks,
  by reshaping to [.., h, l, ..] and back. Returns [d_out, h_S*l_S] or [h_S*l_S, d_out].
  """
  (h_t, h_s), (l_t, l_s), (d_t, d_out) = heads, head_dim, other
  split = (d_t, h_t, l_t) if axis == 1 else (h_t, l_t, d_t)
  target = (d_out, h_s, l_s) if axis == 1 else (h_s, l_s, d_out)
  if tuple(np.shape(kernel)) != (split[0], split[1] * split[2]) and tuple(np.shape(kernel)) != (
      split[0] * split[1], split[2]):
    raise ValueError(f"select_heads: kernel {tuple(np.shape(kernel))} is not a joined-heads kernel "
                     f"of h={h_t}, l={l_t}, d={d_t}")
  out = uniform_select(jnp.reshape(kernel, split), target)
  return jnp.reshape(out, (d_out, h_s * l_s) if axis == 1 else (h_s * l_s, d_out))


def select_layers(n_teacher: int, n_student: int, method: str = "first_n") -> np.ndarray:
  """Teacher layer index for each student layer: 'first_n' -> 0..n_S-1, 'uniform' -> uniform_indices."""
  if method not in LAYER_SELECTIONS:
    raise ValueError(f"layer_selection must be one of {LAYER_SELECTIONS}, got {method!r}")
  if method == "first_n":
    if n_student > n_teacher:
      raise ValueError(f"cannot select {n_student} of {n_teacher} layers")
    return np.arange(n_student)
  return uniform_indices(n_teacher, n_student)
