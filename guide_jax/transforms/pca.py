"""PCA of an embedding table by its covariance, with the vocab axis sharded over a mesh."""
import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from guide_jax.sharding import rows_sharding

HIGHEST = jax.lax.Precision.HIGHEST


class PCAResult(NamedTuple):
  """embedding [V, k] student table; components M [d, k] (orthonormal columns, by eigenvalue);
  mean [d]; explained_variance_ratio [k]; eigenvalues [k] (variances of the kept directions)."""
  embedding: jax.Array
  components: jax.Array
  mean: jax.Array
  explained_variance_ratio: jax.Array
  eigenvalues: jax.Array


@functools.partial(jax.jit, static_argnames=("num_rows",))
def covariance(table: jax.Array, num_rows: int):
  """Mean [d] and covariance [d, d] = (E - mu)^T (E - mu) / V of the first num_rows rows, float32.

  Computed as E^T E / V - mu mu^T at HIGHEST precision, so the table is never copied.

  Rows past num_rows (padding for an even split across devices) are masked out. When `table`
  is row-sharded, each device multiplies its own rows and XLA all-reduces the [d, d] partials.
  """
  x = table.astype(jnp.float32)
  if num_rows < x.shape[0]:
    x = jnp.where((jnp.arange(x.shape[0]) < num_rows)[:, None], x, 0.0)
  mean = jnp.sum(x, axis=0) / num_rows
  # E^T E / V - mu mu^T: no centered copy of the table (the only [V, d]-sized temporary is none)
  cov = jnp.einsum("vd,ve->de", x, x, precision=HIGHEST) / num_rows - jnp.outer(mean, mean)
  return mean, cov


def top_components(cov: jax.Array, num_components: int):
  """Top eigenvectors of a symmetric [d, d] matrix: (M [d, k], eigenvalues [k], total variance).

  Columns are sorted by decreasing eigenvalue; each column's largest-magnitude entry is positive.
  """
  evals, evecs = jnp.linalg.eigh(cov)  # ascending
  evals, evecs = evals[::-1][:num_components], evecs[:, ::-1][:, :num_components]
  pivot = jnp.argmax(jnp.abs(evecs), axis=0)
  signs = jnp.sign(evecs[pivot, jnp.arange(num_components)])
  total = jnp.trace(cov)
  return evecs * jnp.where(signs == 0, 1.0, signs), jnp.maximum(evals, 0.0), total


def pca_table(table: jax.Array, num_components: int, num_rows: int, center: bool = False) -> PCAResult:
  """The PCA of `table` [V', d] (rows past num_rows are padding) as one traceable function.

  Used inside guide_init's compiled program and by pca_embedding. Returns PCAResult with the
  student table [V', k] (padding rows included; callers slice [:num_rows] where they padded).
  """
  mean, cov = covariance(table, num_rows)
  components, eigenvalues, total = top_components(cov, num_components)
  x = table.astype(jnp.float32)
  if center:
    x = x - mean
  student = jnp.einsum("vd,dk->vk", x, components, precision=HIGHEST)
  ratio = eigenvalues / jnp.where(total > 0, total, 1.0)
  return PCAResult(student, components, mean, ratio, eigenvalues)


_pca_jit = jax.jit(pca_table, static_argnames=("num_components", "num_rows", "center"))


def _check_inputs(embedding, num_components) -> None:
  if not hasattr(embedding, "shape") or not hasattr(embedding, "dtype"):
    raise ValueError(f"embedding must be a numpy or jax array [V, d], got {type(embedding).__name__}")
  if len(embedding.shape) != 2:
    raise ValueError(f"embedding must be [V, d], got shape {tuple(embedding.shape)}")
  if not np.issubdtype(embedding.dtype, np.floating) and embedding.dtype != jnp.bfloat16:
    raise ValueError(f"embedding must hold floats, got dtype {embedding.dtype}")
  if not isinstance(num_components, (int, np.integer)) or isinstance(num_components, bool):
    raise ValueError(f"num_components must be an int, got {num_components!r}")
  num_rows, dim = embedding.shape
  if not 1 <= num_components <= dim:
    raise ValueError(f"num_components (d_S={num_components}) must be in [1, d_T={dim}]")
  if num_rows < 2:
    raise ValueError(f"PCA needs at least 2 rows, got V={num_rows}")


def pca_embedding(embedding, num_components: int, *, mesh: Optional[Mesh] = None,
                  center: bool = False) -> PCAResult:
  """GUIDE step 1: student table E_S = E_T M (or (E_T - mu) M when center=True).

  embedding: [V, d_T] float teacher table (numpy or jax). num_components: int d_S <= d_T.
  mesh: if given, the table is placed with its vocab axis split over all mesh axes (padded with
  masked zero rows to a multiple of the device count) so no device holds the whole table; the
  covariance is a sharded float32 reduction and the student table comes back row-sharded.
  Raises ValueError for a non-array, wrong rank or dtype, a bad num_components, or NaN/Inf rows.
  """
  _check_inputs(embedding, num_components)
  num_rows, dim = embedding.shape
  table = embedding
  if mesh is not None:
    pad = -num_rows % mesh.size
    if pad:  # pad host-side, before placement, so no device ever sees the whole table
      table = jnp.concatenate([jnp.asarray(table), jnp.zeros((pad, dim), table.dtype)]) \
          if isinstance(table, jax.Array) else np.concatenate([np.asarray(table), np.zeros((pad, dim), table.dtype)])
    table = jax.device_put(table, rows_sharding(mesh))
  if not bool(_finite(table)):
    raise ValueError("embedding holds NaN or Inf: PCA of the teacher table needs finite values")
  result = _pca_jit(table, num_components=int(num_components), num_rows=num_rows, center=center)
  return result._replace(embedding=result.embedding[:num_rows])


@jax.jit
def _finite(table):
  return jnp.all(jnp.isfinite(table))
