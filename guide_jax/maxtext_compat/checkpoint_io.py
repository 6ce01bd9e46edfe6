"""MaxText checkpoints (orbax, llama2-style decoder block): find, describe, read in shards, write.

On disk (found by running MaxText e591f30cb; see docs/maxtext.md):
  params-only (conversion) checkpoint  <root>/0/items/            what load_parameters_path names
  training checkpoint                  <run>/checkpoints/<step>/items/  (opt_state beside params)
The item is an orbax PyTree (OCDBT + zarr3) {'params': {'params': <tree of layout.py>}, 'step': ...,
['opt_state': ...]}; <step>/_CHECKPOINT_METADATA holds custom metadata {"scan_layers": bool}.
MaxText never stores the model's settings: they come from the user (configs.parse's forms) and are
checked here against the arrays' metadata before any array is read.
"""
import os
from typing import Any, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import unflatten_dict
from jax.sharding import NamedSharding, PartitionSpec as P

from guide_jax import model, sharding
from guide_jax.config import ModelConfig
from guide_jax.maxtext_compat import configs, layout
from guide_jax.transforms import validate

ITEMS = "items"  # MaxText's orbax item name
_METADATA = "_METADATA"
_RULES = sharding.LOGICAL_AXIS_RULES + (("layers", None),)
_FLOATS = ("float32", "bfloat16", "float16")


class MaxTextCheckpointError(ValueError):
  """A MaxText checkpoint that is missing, incomplete, of another kind, or does not fit its settings."""


# ------------------------------------------------------------------------------------------ find
def _steps(directory: str):
  if not os.path.isdir(directory):
    return []
  return sorted(int(n) for n in os.listdir(directory)
                if n.isdigit() and os.path.isdir(os.path.join(directory, n, ITEMS)))


def find_items(path: str) -> str:
  """The orbax `items` directory of a MaxText checkpoint at `path`: the items directory itself
  (what load_parameters_path names), a step directory (<root>/0), a conversion root (<root>, its
  latest step), or a MaxText run directory (<run>/checkpoints/<step>, the latest). Raises
  MaxTextCheckpointError naming the path, or the latest step when it is incomplete (never an
  older step silently)."""
  path = os.path.abspath(os.fspath(path))
  if not os.path.isdir(path):
    raise MaxTextCheckpointError(f"MaxText checkpoint {path!r} does not exist")
  candidates = _candidates(path)
  if not candidates:
    raise MaxTextCheckpointError(f"no MaxText checkpoint in {path!r} (expected <root>/<step>/items/ or "
                                 "<run>/checkpoints/<step>/items/)")
  if not os.path.isfile(os.path.join(candidates[0], _METADATA)):
    older = [os.path.dirname(c) for c in candidates[1:]]
    raise MaxTextCheckpointError(f"MaxText checkpoint {candidates[0]} is incomplete (no {_METADATA})"
                                 + (f"; name an older step to read it instead: {older[0]}" if older else ""))
  return candidates[0]


def _candidates(path: str):
  """The items directories `path` may name, latest step first (complete or not)."""
  candidates = []
  if os.path.basename(path) == ITEMS:
    candidates = [path]
  elif os.path.isdir(os.path.join(path, ITEMS)):
    candidates = [os.path.join(path, ITEMS)]
  else:
    for base in (path, os.path.join(path, "checkpoints")):
      steps = _steps(base)
      if steps:
        candidates = [os.path.join(base, str(s), ITEMS) for s in reversed(steps)]
        break
  return candidates


def is_maxtext(path: str) -> bool:
  """Whether `path` has a MaxText checkpoint's layout (<step>/items directories; complete or not:
  find_items names an incomplete one). No array metadata is read."""
  path = os.path.abspath(os.fspath(path))
  return os.path.isdir(path) and bool(_candidates(path))


def saved_scan_layers(items: str) -> Optional[bool]:
  """The scan_layers MaxText recorded in <step>/_CHECKPOINT_METADATA (None when absent)."""
  import json  # pylint: disable=g-import-not-at-top
  try:
    with open(os.path.join(os.path.dirname(items), "_CHECKPOINT_METADATA"), encoding="utf-8") as f:
      value = (json.load(f).get("custom_metadata") or {}).get("scan_layers")
  except (OSError, ValueError):
    return None
  return value if isinstance(value, bool) else None


# -------------------------------------------------------------------------------------- describe
def tree_metadata(items: str) -> Dict[str, Tuple[Tuple[int, ...], str]]:
  """{path under params/params: (shape, dtype name)} from orbax metadata (no array read)."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  try:
    meta = ocp.PyTreeCheckpointer().metadata(items).item_metadata
  except Exception as e:  # orbax raises many types for a damaged directory
    raise MaxTextCheckpointError(f"unreadable MaxText checkpoint metadata in {items}: "
                                 f"{type(e).__name__}: {str(e)[:300]}") from e
  tree = dict(getattr(meta, "tree", None) or meta)
  params = tree.get("params")
  if not hasattr(params, "keys") or "params" not in params:
    raise MaxTextCheckpointError(f"{items} holds no params/params tree (keys: {sorted(tree)}): not a MaxText "
                                 "checkpoint of a Linen/NNX model")
  flat = validate.flatten(dict(params["params"]))
  return {k: (tuple(v.shape), str(np.dtype(v.dtype))) for k, v in flat.items()}


def scanned(flat: Dict[str, Any]) -> bool:
  """Whether a MaxText tree is scanned (decoder/layers/...) rather than unscanned (decoder/layers_<i>)."""
  return any(k.startswith("decoder/layers/") for k in flat)


def infer(flat: Dict[str, Tuple[Tuple[int, ...], str]], scan: bool) -> Dict[str, Any]:
  """The shape settings the arrays themselves show (for messages): base_emb_dim, vocab_size, ..."""
  got = {}
  shape = lambda k: flat.get(k, (None,))[0]
  emb = shape("token_embedder/embedding")
  if emb and len(emb) == 2:
    got["vocab_size"], got["base_emb_dim"] = emb
  prefix = "decoder/layers/" if scan else "decoder/layers_0/"
  cut = (lambda s: s[:layout.SCAN_AXIS] + s[layout.SCAN_AXIS + 1:]) if scan else (lambda s: s)
  q, kv, wi = (shape(prefix + p) for p in ("self_attention/query/kernel", "self_attention/key/kernel",
                                           "mlp/wi_0/kernel"))
  if q and len(q) == 3 + scan:
    got["base_num_query_heads"], got["head_dim"] = cut(q)[1:]
  if kv and len(kv) == 3 + scan:
    got["base_num_kv_heads"] = cut(kv)[1]
  if wi and len(wi) == 2 + scan:
    got["base_mlp_dim"] = cut(wi)[1]
  if scan and q:
    got["base_num_decoder_layers"] = q[layout.SCAN_AXIS]
  elif not scan:
    got["base_num_decoder_layers"] = len({k.split("/")[1] for k in flat if k.startswith("decoder/layers_")})
  got["logits_via_embedding"] = "decoder/logits_dense/kernel" not in flat
  return got


def _foreign_leaves(flat, scan: bool):
  """Leaves no llama2 block of any size has (another decoder block's, MoE, biases...)."""
  known_layer = {theirs for _, theirs, _ in layout._LAYER_LEAVES}  # pylint: disable=protected-access
  top = {"token_embedder/embedding", "decoder/decoder_norm/scale", "decoder/logits_dense/kernel"}
  foreign = []
  for k in flat:
    parts = k.split("/")
    if k in top:
      continue
    if scan and parts[:2] == ["decoder", "layers"] and "/".join(parts[2:]) in known_layer:
      continue
    if not scan and len(parts) > 2 and parts[0] == "decoder" and parts[1].startswith("layers_") \
        and parts[1][7:].isdigit() and "/".join(parts[2:]) in known_layer:
      continue
    foreign.append(k)
  return foreign


def describe(path: str, spec) -> Tuple[configs.Described, bool, str]:
  """(Described(config, interleaved), scan_layers, items dir) of the MaxText checkpoint at `path`
  with the MaxText settings `spec` (configs.parse's forms), from metadata only. Raises
  MaxTextCheckpointError / MaxTextConfigError naming every mismatch: another decoder block (its
  leaves), a scan_layers setting the checkpoint contradicts, non-float arrays, or shapes that are
  not what MaxText builds for the settings (with the values the checkpoint shows)."""
  items = find_items(path)
  flat = tree_metadata(items)
  scan = scanned(flat)
  foreign = _foreign_leaves(flat, scan)
  if foreign:
    raise MaxTextCheckpointError(
        f"MaxText checkpoint {items} is not a llama2-style decoder block (Llama 2/3, Mistral): it has "
        + ", ".join(sorted(foreign)[:6]) + (" ..." if len(foreign) > 6 else ""))
  given = configs.parse(spec)
  if "scan_layers" in given and given["scan_layers"] != scan:
    raise MaxTextCheckpointError(f"MaxText checkpoint {items} is {'' if scan else 'un'}scanned, but its "
                                 f"settings say scan_layers={given['scan_layers']}")
  dtypes = sorted({dt for _, dt in flat.values()})
  if len(dtypes) != 1 or dtypes[0] not in _FLOATS:
    raise MaxTextCheckpointError(f"MaxText checkpoint {items} has arrays of dtypes {dtypes}: guide_jax reads "
                                 f"params of one float dtype {_FLOATS}")
  described = configs.model_config(given, param_dtype=dtypes[0])
  expected = layout.param_shapes(described.config, scan)
  got = {k: s for k, (s, _) in flat.items()}
  problems = [f"missing {k}" for k in sorted(set(expected) - set(got))]
  problems += [f"unexpected {k}" for k in sorted(set(got) - set(expected))]
  problems += [f"{k}: {got[k]} != {expected[k]}" for k in sorted(set(got) & set(expected)) if got[k] != expected[k]]
  if problems:
    shown = infer(flat, scan)
    wanted = configs.settings(described.config) if not configs.incompatibilities(described.config) else {}
    diff = [f"{k}={shown[k]} (settings: {wanted.get(k)})" for k in shown if wanted.get(k) != shown[k]]
    raise MaxTextCheckpointError(
        f"MaxText checkpoint {items} does not match its settings: " + "; ".join(problems[:6])
        + (" ..." if len(problems) > 6 else "")
        + (f". The checkpoint shows {', '.join(diff)}" if diff else ""))
  return described, scan, items


# ------------------------------------------------------------------------------------------ read
def _shardings(config: ModelConfig, scan: bool, mesh):
  specs = {path: P(*axes) for path, (_, axes) in layout.leaves(config, scan).items()}
  shapes = {path: jax.ShapeDtypeStruct(shape, jnp.float32) for path, shape in layout.param_shapes(config, scan).items()}
  return sharding.logical_to_sharding(specs, mesh, _RULES, shapes=shapes)


def read(items: str, described: configs.Described, scan: bool, mesh=None):
  """guide_jax params of a described checkpoint (describe's result). With a mesh, each MaxText
  array is restored by orbax straight onto a sharding of its own layout (each process reads only
  its shards; optimizer state is never read), then relaid onto the config's shardings one MaxText
  leaf at a time (device memory: the teacher plus one leaf); without a mesh, numpy arrays."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  config, interleaved = described.config, described.interleaved
  dtype = jnp.dtype(config.param_dtype)
  shapes = layout.param_shapes(config, scan)
  if mesh is None:
    args = {p: ocp.RestoreArgs(restore_type=np.ndarray) for p in shapes}
    item = {p: jax.ShapeDtypeStruct(s, dtype) for p, s in shapes.items()}
  else:
    shardings = _shardings(config, scan, mesh)
    args = {p: ocp.ArrayRestoreArgs(sharding=shardings[p], global_shape=s, dtype=dtype) for p, s in shapes.items()}
    item = {p: jax.ShapeDtypeStruct(s, dtype, sharding=shardings[p]) for p, s in shapes.items()}
  try:
    restored = ocp.PyTreeCheckpointer().restore(items, args=ocp.args.PyTreeRestore(
        item={"params": {"params": unflatten_dict(item, sep="/")}},
        restore_args={"params": {"params": unflatten_dict(args, sep="/")}},
        partial_restore=True))
  except Exception as e:  # orbax raises many types for truncated / corrupt files
    raise MaxTextCheckpointError(f"MaxText checkpoint {items} is corrupt or incomplete: "
                                 f"{type(e).__name__}: {str(e)[:300]}") from e
  flat = validate.flatten(restored["params"]["params"])
  del restored
  targets = None if mesh is None else validate.flatten(sharding.param_shardings(config, mesh))
  programs = {}
  out = {}
  for path, kind, ours in layout.groups(config, scan):
    x = flat.pop(path)
    if mesh is None:
      parts = layout.split_layers(x) if scan and kind != "top" else [x]
      values = [np.ascontiguousarray(layout.to_ours(y, kind, interleaved)) for y in parts]
    else:
      key = (kind, tuple(targets[p] for p in ours))
      if key not in programs:
        def relayout(y, kind=kind):
          parts = layout.split_layers(y, jnp) if scan and kind != "top" else [y]
          return tuple(layout.to_ours(z, kind, interleaved, jnp) for z in parts)
        programs[key] = jax.jit(relayout, out_shardings=key[1])
      values = programs[key](x)
    del x
    out.update(zip(ours, values))
  return unflatten_dict(out, sep="/")


# ----------------------------------------------------------------------------------------- write
def to_maxtext(params, config: ModelConfig, scan_layers: bool, *, dtype: str = "float32",
               interleaved: Optional[bool] = None):
  """guide_jax params -> {MaxText path: array} (layout.py), cast to dtype. Sharded inputs stay
  sharded (one compiled relayout per leaf onto its MaxText-layout sharding); host inputs: numpy.
  interleaved: the RoPE pair layout (default: the one MaxText's settings for `config` use)."""
  if interleaved is None:
    interleaved = configs.settings(config)["rope_type"] == "llama3.1"
  flat = validate.flatten(params)
  target = jnp.dtype(dtype)
  first = next(iter(flat.values()))
  mesh = first.sharding.mesh if isinstance(getattr(first, "sharding", None), NamedSharding) else None
  shardings = _shardings(config, scan_layers, mesh) if mesh is not None else None
  out, programs = {}, {}
  for path, kind, ours in layout.groups(config, scan_layers):
    xs = [flat[p] for p in ours]
    if mesh is None:
      parts = [layout.from_ours(np.asarray(x), kind, config, interleaved) for x in xs]
      y = layout.stack_layers(parts) if scan_layers and kind != "top" else parts[0]
      out[path] = np.asarray(y).astype(target)
      continue
    key = (kind, len(xs), shardings[path])
    if key not in programs:
      def relayout(*ys, kind=kind):
        parts = [layout.from_ours(y, kind, config, interleaved, jnp) for y in ys]
        y = layout.stack_layers(parts, jnp) if scan_layers and kind != "top" else parts[0]
        return y.astype(target)
      programs[key] = jax.jit(relayout, out_shardings=shardings[path])
    out[path] = programs[key](*xs)
  return out


def write(root: str, params, config: ModelConfig, *, scan_layers: bool = True, dtype: str = "float32",
          step: int = 0) -> str:
  """Write `params` (of `config`) as a MaxText params-only checkpoint <root>/<step>/items (what
  MaxText's load_parameters_path restores; `scan_layers` as the user's MaxText config will load
  it; weights in dtype float32 or bfloat16). Before anything is written: the settings that
  describe the student (configs.settings; refused when MaxText cannot represent it), and the
  arrays' shapes against the shapes MaxText builds for those settings. Returns the items path."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  if dtype not in ("float32", "bfloat16"):
    raise MaxTextCheckpointError(f"MaxText weights are float32 or bfloat16, got dtype={dtype!r}")
  values = configs.settings(config)  # raises MaxTextConfigError for what MaxText cannot represent
  ours = {k: tuple(np.shape(v)) for k, v in validate.flatten(params).items()}
  mine = {k: v.shape for k, v in validate.flatten(model.param_shapes(config)).items()}
  if ours != mine:
    bad = sorted(k for k in set(ours) | set(mine) if ours.get(k) != mine.get(k))
    raise MaxTextCheckpointError("params do not fit their ModelConfig: " + ", ".join(
        f"{k} {ours.get(k)} != {mine.get(k)}" for k in bad[:6]))
  expected = layout.param_shapes(configs.model_config(values).config, scan_layers)  # from the overrides
  tree = to_maxtext(params, config, scan_layers, dtype=dtype, interleaved=values["rope_type"] == "llama3.1")
  got = {k: tuple(v.shape) for k, v in tree.items()}
  if got != expected:
    bad = sorted(k for k in set(got) | set(expected) if got.get(k) != expected.get(k))
    raise MaxTextCheckpointError("refusing to write a MaxText checkpoint MaxText would not build for its "
                                 "settings: " + "; ".join(f"{k}: {got.get(k)} != {expected.get(k)}" for k in bad[:6]))
  root = os.path.abspath(root)
  if os.path.exists(os.path.join(root, str(step))):
    raise MaxTextCheckpointError(f"{os.path.join(root, str(step))} already exists")
  handler = ocp.PyTreeCheckpointHandler(use_ocdbt=True, use_zarr3=True)
  options = ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False)
  mngr = ocp.CheckpointManager(root, item_names=(ITEMS,), item_handlers={ITEMS: handler}, options=options)
  try:
    mngr.save(int(step), args=ocp.args.Composite(**{ITEMS: ocp.args.PyTreeSave(
        {"params": {"params": unflatten_dict(tree, sep="/")}, "step": np.int64(step)})}), force=True,
              custom_metadata={"scan_layers": bool(scan_layers)})
    mngr.wait_until_finished()
  finally:
    mngr.close()
  return os.path.join(root, str(step), ITEMS)
