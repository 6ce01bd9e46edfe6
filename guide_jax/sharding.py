"""Mesh construction and t5x-style logical-axis rules (logical names -> mesh axes 'data', 'model')."""
from typing import Optional, Sequence, Tuple

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from guide_jax import model

# t5x's standard rules for 1D model parallelism (t5x/partitioning.py standard_logical_axis_rules).
LOGICAL_AXIS_RULES: Tuple[Tuple[str, Optional[str]], ...] = (
    ("batch", "data"),
    ("vocab", "model"),
    ("embed", None),
    ("mlp", "model"),
    ("heads", "model"),
    ("kv", None),
    ("joined_kv", "model"),
    ("relpos_buckets", None),
    ("length", None),
)


def make_mesh(model_parallel: int = 1, devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A ('data', 'model') mesh over all (or the given) devices; data = num_devices / model_parallel."""
  devices = list(jax.devices() if devices is None else devices)
  if model_parallel < 1 or len(devices) % model_parallel:
    raise ValueError(f"model_parallel={model_parallel} must divide the device count {len(devices)}")
  grid = np.array(devices).reshape(len(devices) // model_parallel, model_parallel)
  return Mesh(grid, ("data", "model"))


def logical_to_sharding(logical_specs, mesh: Mesh, rules=LOGICAL_AXIS_RULES, shapes=None):
  """Tree of logical PartitionSpecs -> tree of NamedShardings on `mesh`.

  With `shapes` (a matching tree of arrays or ShapeDtypeStructs), a dimension that the mesh
  axes do not divide evenly (e.g. 4 relpos heads over model=8) stays unsplit instead of failing.
  """
  shardings = nn.logical_to_mesh_sharding(logical_specs, mesh, rules)
  if shapes is None:
    return shardings

  def fit(sh, shape):
    spec = []
    for dim, axes in zip(shape.shape, tuple(sh.spec) + (None,) * (len(shape.shape) - len(sh.spec))):
      names = (axes,) if isinstance(axes, str) else tuple(axes or ())
      size = int(np.prod([mesh.shape[a] for a in names])) if names else 1
      spec.append(axes if dim % size == 0 else None)
    return NamedSharding(mesh, P(*spec))
  return jax.tree_util.tree_map(fit, shardings, shapes)


def param_shardings(config, mesh: Mesh, rules=LOGICAL_AXIS_RULES):
  """Tree of NamedShardings for a guide_jax.model config's params, from its logical axis names."""
  return logical_to_sharding(model.logical_axes(config), mesh, rules, shapes=model.param_shapes(config))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """[B, T] arrays: batch split over 'data', replicated over 'model'."""
  return NamedSharding(mesh, P("data", None))


def data_slice(mesh: Mesh) -> Tuple[int, int]:
  """(index, count): this process feeds slice `index` of `count` equal row slices of each global batch.

  Processes that share positions on the 'data' axis (e.g. when 'model' spans processes) feed the
  same rows; with model_parallel=1 this is (process_index, process_count).
  """
  axis = mesh.axis_names.index("data")
  local = {d.id for d in jax.local_devices()}
  positions = sorted({idx[axis] for idx, d in np.ndenumerate(mesh.devices) if d.id in local})
  if not positions:
    raise ValueError("this process has no device in the mesh")
  per_process = len(positions)
  return positions[0] // per_process, mesh.shape["data"] // per_process


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def rows_sharding(mesh: Mesh) -> NamedSharding:
  """[V, d] tables with the row (vocab) axis split over every mesh axis."""
  return NamedSharding(mesh, P(tuple(mesh.axis_names), None))


def abstract_params(config, mesh: Optional[Mesh] = None, dtypes=None):
  """A config's params as jax.ShapeDtypeStructs (no memory) on their logical-axis shardings.

  The one place a sharded abstract param tree is built (the train state, checkpoint restores,
  t5x reads). mesh=None: unsharded structs. dtypes: a matching tree of dtypes (e.g. a
  checkpoint's stored dtypes) replacing the config's.
  """
  shapes = model.param_shapes(config)
  if dtypes is None:
    dtypes = jax.tree_util.tree_map(lambda s: s.dtype, shapes)
  if mesh is None:
    return jax.tree_util.tree_map(lambda s, d: jax.ShapeDtypeStruct(s.shape, d), shapes, dtypes)
  return jax.tree_util.tree_map(lambda s, d, sh: jax.ShapeDtypeStruct(s.shape, d, sharding=sh), shapes, dtypes,
                                param_shardings(config, mesh))
