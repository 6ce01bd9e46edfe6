"""Uniform Selection (Weight Selection, Xu et al. 2023) and layer selection."""
from typing import Sequence

import jax.numpy as jnp
import numpy as np

LAYER_SELECTIONS = ("first_n", "uniform")


def uniform_indices(size_from: int, size_to: int) -> np.ndarray:
  """Indices that shrink an axis of size_from to size_to.

  k * (size_from // size_to) when size_from % size_to == 0, else round(linspace(0, size_from - 1, size_to)).
  """
  if not 1 <= size_to <= size_from:
    raise ValueError(f"cannot select {size_to} of {size_from} (need 1 <= {size_to} <= {size_from})")
  if size_from % size_to == 0:
    return np.arange(size_to) * (size_from // size_to)
  return np.round(np.linspace(0, size_from - 1, size_to)).astype(np.int64)


def uniform_select(array, shape: Sequence[int]):
  """Shrink every axis of `array` to `shape` by uniform_indices, axis by axis.

  Attention kernels keep their head structure because heads [h] and head dims [l] are separate
  axes of the t5x layout ([d, h, l] and [h, l, d]).
  """
  if array.ndim != len(shape):
    raise ValueError(f"uniform_select: rank mismatch, array {tuple(array.shape)} vs target {tuple(shape)}")
  out = array
  for axis, (size_from, size_to) in enumerate(zip(array.shape, shape)):
    if size_from != size_to:
      out = jnp.take(out, uniform_indices(size_from, size_to), axis=axis)
  return out


def select_layers(n_teacher: int, n_student: int, method: str = "first_n") -> np.ndarray:
  """Teacher layer index for each student layer: 'first_n' -> 0..n_S-1, 'uniform' -> uniform_indices."""
  if method not in LAYER_SELECTIONS:
    raise ValueError(f"layer_selection must be one of {LAYER_SELECTIONS}, got {method!r}")
  if method == "first_n":
    if n_student > n_teacher:
      raise ValueError(f"cannot select {n_student} of {n_teacher} layers")
    return np.arange(n_student)
  return uniform_indices(n_teacher, n_student)
