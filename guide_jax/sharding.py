"""The mesh and the logical-axis rules: the one place that says what lives where on the devices.

Mesh axes ('data', 'fsdp', 'model'), as MaxText's (ici_)data / fsdp / tensor parallelism:
  data   pure data parallelism: params replicated across it, gradients all-reduced over it.
  fsdp   fully sharded data parallelism (ZeRO-3): the batch AND every parameter's 'embed' axis
         (with its optimizer state) split over it; the train step all-gathers one layer's weights
         where they are used (forward, and again in the backward under remat) and reduce-scatters
         its gradients.
  model  tensor parallelism, t5x's 1-D rules: heads, mlp, vocab split over it.
The batch is split over ('data', 'fsdp'). t5x's 2-D rules with activation_partitioning_dims=1 are
this layout with 'fsdp' as t5x's 'data'. A mesh of make_mesh(model_parallel) has fsdp = 1: t5x's
1-D layout (params replicated over 'data'), what every caller had before the 'fsdp' axis.
train's mesh is a gin knob (train.train.mesh_shape = (data, fsdp, model), one entry may be -1);
unset, default_mesh_shape puts every device on 'fsdp' except model_parallel on 'model' and, on
multi-slice TPU pods, the slices on 'data' (MaxText's ici_fsdp_parallelism=-1 / dcn data).
"""
import contextlib
from typing import Optional, Sequence, Tuple

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from guide_jax import model

MESH_AXES = ("data", "fsdp", "model")
BATCH_AXES = ("data", "fsdp")  # the mesh axes a batch's rows are split over

# Parameters: t5x's standard rules (t5x/partitioning.py standard_logical_axis_rules) with 'embed'
# on 'fsdp' (t5x's 2-D parameter partitioning). Activations (guide_jax.model.ACTIVATION_AXES,
# constrained only under activation_rules): batch over the batch axes, embed unsplit, so a layer
# gathers its weights rather than moving activations.
LOGICAL_AXIS_RULES: Tuple[Tuple[str, Optional[object]], ...] = (
    ("batch", BATCH_AXES),
    ("vocab", "model"),
    ("embed", "fsdp"),
    ("mlp", "model"),
    ("heads", "model"),
    ("kv", None),
    ("joined_kv", "model"),
    ("relpos_buckets", None),
    ("length", None),
    ("layers", None),
    ("activation_batch", BATCH_AXES),
    ("activation_length", None),
    ("activation_embed", None),
)


def resolve_mesh_shape(shape: Sequence[int], num_devices: int) -> Tuple[int, int, int]:
  """(data, fsdp, model) with a -1 entry (at most one) filled in; ValueError if it does not tile
  num_devices."""
  shape = tuple(shape)
  if len(shape) != 3 or any(not isinstance(s, int) or isinstance(s, bool) or (s < 1 and s != -1) for s in shape) \
      or shape.count(-1) > 1:
    raise ValueError(f"mesh_shape must be three positive ints (data, fsdp, model), one of them may be -1 "
                     f"(the rest of the devices), got {shape!r}")
  known = int(np.prod([s for s in shape if s != -1]))
  if -1 in shape:
    if num_devices % known:
      raise ValueError(f"mesh_shape {shape} cannot tile {num_devices} devices ({known} does not divide it)")
    shape = tuple(num_devices // known if s == -1 else s for s in shape)
  if int(np.prod(shape)) != num_devices:
    raise ValueError(f"mesh_shape {shape} (data x fsdp x model = {int(np.prod(shape))}) != the {num_devices} "
                     "devices of the run")
  return shape


def default_mesh_shape(devices: Sequence[jax.Device], model_parallel: int = 1) -> Tuple[int, int, int]:
  """The mesh a run gets when train.train.mesh_shape is unset: model_parallel on 'model', the TPU
  slices (1 elsewhere) on 'data', every other device on 'fsdp'."""
  slices = len({getattr(d, "slice_index", 0) for d in devices})
  if len(devices) % (slices * model_parallel):
    slices = 1
  return resolve_mesh_shape((slices, -1, model_parallel), len(devices))


def make_mesh(model_parallel: int = 1, devices: Optional[Sequence[jax.Device]] = None, *,
              shape: Optional[Sequence[int]] = None) -> Mesh:
  """A ('data', 'fsdp', 'model') mesh over all (or the given) devices.

  shape=None: (num_devices / model_parallel, 1, model_parallel), data parallelism with t5x's 1-D
  model parallelism. shape=(data, fsdp, model): that mesh (one entry may be -1). On TPU the device
  order follows the chips' topology (jax's mesh_utils; multi-slice: slices on 'data'); elsewhere
  it is jax.devices() order, each process's devices contiguous.
  """
  devices = list(jax.devices() if devices is None else devices)
  if shape is None:
    if not isinstance(model_parallel, int) or model_parallel < 1 or len(devices) % model_parallel:
      raise ValueError(f"model_parallel={model_parallel} must divide the device count {len(devices)}")
    shape = (len(devices) // model_parallel, 1, model_parallel)
  shape = resolve_mesh_shape(shape, len(devices))
  if devices[0].platform == "tpu" and devices == list(jax.devices()):
    from jax.experimental import mesh_utils  # pylint: disable=g-import-not-at-top
    slices = len({getattr(d, "slice_index", 0) for d in devices})
    if slices > 1 and shape[0] % slices == 0:
      grid = mesh_utils.create_hybrid_device_mesh((shape[0] // slices,) + shape[1:], (slices, 1, 1), devices)
    else:
      grid = mesh_utils.create_device_mesh(shape, devices)
  else:
    grid = np.array(devices).reshape(shape)
  return Mesh(grid, MESH_AXES)


def batch_axes(mesh: Mesh) -> Tuple[str, ...]:
  """The mesh axes a batch's rows are split over (those of BATCH_AXES the mesh has)."""
  return tuple(a for a in BATCH_AXES if a in mesh.axis_names)


def batch_shards(mesh: Mesh) -> int:
  """How many ways a batch's rows are split: data x fsdp. A global batch must divide by it."""
  return int(np.prod([mesh.shape[a] for a in batch_axes(mesh)]))


@contextlib.contextmanager
def activation_rules(mesh: Mesh):
  """Trace under this to make the model's activation constraints (and stack_layers') real on `mesh`."""
  with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nn.logical_axis_rules(LOGICAL_AXIS_RULES):
    yield


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


def param_shardings(config, mesh: Mesh, rules=LOGICAL_AXIS_RULES, stacked: bool = False):
  """Tree of NamedShardings for a guide_jax.model config's params, from its logical axis names.
  stacked: of model.stack_layers' tree (each layer leaf's sharding behind the unsplit 'layers' axis)."""
  shardings = logical_to_sharding(model.logical_axes(config), mesh, rules, shapes=model.param_shapes(config))
  if stacked:
    shardings = model.restack(config, shardings, lambda shs: NamedSharding(mesh, P(None, *shs[0].spec)))
  return shardings


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """[B, T] arrays: rows split over ('data', 'fsdp'), replicated over 'model'."""
  return NamedSharding(mesh, P(batch_axes(mesh), None))


def data_slice(mesh: Mesh) -> Tuple[int, int]:
  """(index, count): this process feeds slice `index` of `count` equal row slices of each global batch.

  A device's rows are its position on the batch axes (data-major, then fsdp). Processes that
  share those positions (e.g. when 'model' spans processes) feed the same rows; with one process
  per equal group of devices along the batch axes this is (process_index, process_count).
  """
  axes = [mesh.axis_names.index(a) for a in batch_axes(mesh)]
  sizes = [mesh.devices.shape[a] for a in axes]
  local = {d.id for d in jax.local_devices()}
  positions = sorted({int(np.ravel_multi_index(tuple(idx[a] for a in axes), sizes))
                      for idx, d in np.ndenumerate(mesh.devices) if d.id in local})
  if not positions:
    raise ValueError("this process has no device in the mesh")
  per_process = len(positions)
  if positions != list(range(positions[0], positions[0] + per_process)) or positions[0] % per_process:
    raise ValueError(f"this process's devices hold batch rows {positions} of the mesh {dict(mesh.shape)}: not one "
                     "aligned block (choose a mesh_shape whose batch axes group each process's devices)")
  return positions[0] // per_process, int(np.prod(sizes)) // per_process


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def rows_sharding(mesh: Mesh) -> NamedSharding:
  """[V, d] tables with the row (vocab) axis split over every mesh axis."""
  return NamedSharding(mesh, P(tuple(mesh.axis_names), None))


def abstract_params(config, mesh: Optional[Mesh] = None, dtypes=None, stacked: bool = False):
  """A config's params as jax.ShapeDtypeStructs (no memory) on their logical-axis shardings.

  The one place a sharded abstract param tree is built (the train state, checkpoint restores,
  t5x reads). mesh=None: unsharded structs. dtypes: a matching tree of dtypes (e.g. a
  checkpoint's stored dtypes) replacing the config's. stacked: model.stack_layers' tree (a KD
  teacher as the scanned step takes it).
  """
  if stacked:
    flat = abstract_params(config, mesh, dtypes)
    return model.restack(config, flat, lambda xs: jax.ShapeDtypeStruct(
        (len(xs),) + xs[0].shape, xs[0].dtype,
        sharding=None if mesh is None else NamedSharding(mesh, P(None, *xs[0].sharding.spec))))
  shapes = model.param_shapes(config)
  if dtypes is None:
    dtypes = jax.tree_util.tree_map(lambda s: s.dtype, shapes)
  if mesh is None:
    return jax.tree_util.tree_map(lambda s, d: jax.ShapeDtypeStruct(s.shape, d), shapes, dtypes)
  return jax.tree_util.tree_map(lambda s, d, sh: jax.ShapeDtypeStruct(s.shape, d, sharding=sh), shapes, dtypes,
                                param_shardings(config, mesh))
