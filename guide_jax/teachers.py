"""Teacher sources as one protocol: load(source, mesh) -> (params on their shardings, ModelConfig).

A source is a path (its format detected) or a Source naming the format and what the format does
not carry itself (a t5x checkpoint's ModelConfig, a step). Formats, in FORMATS:
  guide_jax  a guide_jax run directory or guide_jax.convert output (<dir>/checkpoints/<step>/):
             the checkpoint carries its ModelConfig.
  t5x        a t5x decoder-only checkpoint (<dir>/checkpoint_<step>/state/, or the model dir for
             its latest step; legacy msgpack + tensorstore through t5x's own loader when t5x is
             importable); Source.config gives its shape (e.g. from gin/t5x/teacher.gin).
  hf         a Hugging Face model directory (config.json + safetensors; guide_jax.importers: the
             families of its module docstring), read in shards in its own dtype.
  maxtext    a MaxText checkpoint of a llama2-style decoder block (guide_jax.maxtext_compat): a
             params-only one (<root>/0/items, what load_parameters_path names) or a training run's
             (<run>/checkpoints/<step>/items), scanned or not; Source.settings gives its MaxText
             settings (a model .yml and KEY=VALUE overrides, as MaxText's command line takes them:
             MaxText stores none). Detected before guide_jax (a MaxText run dir has checkpoints/ too).
Adding a format is one Format (detect, describe, read) and one entry in FORMATS; train (starts and
KD), guide_jax.convert and the t5x restore-time function all read teachers through load().

load() checks in this order, before any array is read: the source exists and is complete, its
arrays fit its config, the vocabulary matches (when vocab_size is given). It then reads the arrays
in shards and runs the one full pass over the teacher, the finiteness check, which also gives the
teacher's content fingerprint (Teacher.identity: what a run records and a resumed KD run compares):
callers never pass over the teacher again.

tokenizer(found): the identity of the tokenizer a teacher's ids mean, from metadata (a guide_jax
checkpoint's meta "tokenizer", a Hugging Face directory's own tokenizer files, guide_info.json
beside a t5x checkpoint that guide_jax.convert wrote), or None where the source records none (a t5x
checkpoint from t5x): train and convert compare it with the data's (guide_jax.data.hf_tokenizer.check_same).
"""
import hashlib
import dataclasses
import os
from typing import Any, Callable, NamedTuple, Optional, Tuple, Union

from absl import logging
import jax
from jax.sharding import Mesh

from guide_jax import checkpoints, fileio
from guide_jax.config import ModelConfig
from guide_jax.transforms import validate

# What guide_jax.convert writes beside every student it makes (configs, GUIDE's info, the tokenizer).
GUIDE_INFO = "guide_info.json"


@dataclasses.dataclass(frozen=True)
class Source:
  """Where a teacher is. format: a key of FORMATS, or None to detect it from the path.
  config: the teacher's ModelConfig for formats that do not store one (t5x). step: a guide_jax
  checkpoint step (default: the latest). settings: a MaxText teacher's MaxText settings, one
  string of words each a .yml file or KEY=VALUE (guide_jax.maxtext_compat.configs.parse)."""
  path: str
  format: Optional[str] = None
  config: Optional[ModelConfig] = None
  step: Optional[int] = None
  settings: Optional[str] = None

  def __post_init__(self):
    if not self.path or not isinstance(self.path, str):
      raise ValueError(f"teacher Source.path must be a non-empty path, got {self.path!r}")
    if self.format is not None and self.format not in FORMATS:
      raise ValueError(f"teacher Source.format must be one of {tuple(FORMATS)} or None, got {self.format!r}")
    if self.config is not None and not isinstance(self.config, ModelConfig):
      raise ValueError(f"teacher Source.config must be a ModelConfig, got {type(self.config).__name__}")
    if self.settings is not None and not isinstance(self.settings, str):
      raise ValueError(f"teacher Source.settings must be a string of MaxText settings, got {self.settings!r}")


class Described(NamedTuple):
  """What a source holds, from metadata only."""
  config: ModelConfig
  where: str          # the exact checkpoint read (a step directory)
  format: str
  handle: Any         # the format's own handle for read()


class Teacher(NamedTuple):
  """A loaded teacher: params on their shardings, its ModelConfig, and its identity
  {"format", "path", "fingerprint" (sha256 over every array's content checksum, from the one
  finiteness pass), "tokenizer" (tokenizer(), or None)}."""
  params: Any
  config: ModelConfig
  identity: dict


class Format(NamedTuple):
  """One teacher format. detect(path) -> bool; describe(source) -> (config, where, handle) from
  metadata only, raising ValueError naming what is wrong; read(handle, config, mesh) -> params;
  tokenizer(handle) -> the identity of its data's tokenizer, or None where it records none."""
  detect: Callable[[str], bool]
  describe: Callable[[Source], Tuple[ModelConfig, str, Any]]
  read: Callable[[Any, ModelConfig, Optional[Mesh]], Any]
  tokenizer: Callable[[Any], Optional[dict]]


# ------------------------------------------------------------------------------------ guide_jax
def _guide_jax_detect(path: str) -> bool:
  return fileio.isdir(checkpoints.checkpoint_dir(path))


def _guide_jax_describe(source: Source):
  if source.config is not None or source.settings is not None:
    raise ValueError(f"a guide_jax teacher checkpoint ({source.path}) carries its ModelConfig: give a "
                     "config only for a t5x teacher, settings only for a MaxText one")
  config, step = checkpoints.read_config(source.path, source.step)
  return config, f"{checkpoints.checkpoint_dir(source.path)}/{step}", (source.path, step)


def _guide_jax_read(handle, config: ModelConfig, mesh: Optional[Mesh]):
  del config  # the checkpoint's own
  path, step = handle
  return checkpoints.load_params(path, mesh, step=step)[0]


def _guide_jax_tokenizer(handle) -> Optional[dict]:
  path, step = handle
  return checkpoints.read_meta(path, step).get("tokenizer")


# ------------------------------------------------------------------------------------------ t5x
def _t5x_detect(path: str) -> bool:
  from guide_jax.t5x_compat import checkpoint_io  # pylint: disable=g-import-not-at-top
  try:
    checkpoint_io.find_t5x_checkpoint(path)
  except checkpoint_io.T5xCheckpointError:
    return False
  return True


def _t5x_describe(source: Source):
  from guide_jax.t5x_compat import checkpoint_io  # pylint: disable=g-import-not-at-top
  if source.config is None:
    raise ValueError(f"a t5x teacher ({source.path}) needs its ModelConfig (teachers.Source(config=...), "
                     "e.g. from gin/t5x/teacher.gin): t5x checkpoints do not store one")
  if source.step is not None:
    raise ValueError("Source.step is for guide_jax teachers; point a t5x teacher's path at checkpoint_<step>")
  if source.settings is not None:
    raise ValueError("Source.settings is for MaxText teachers; a t5x teacher takes Source.config")
  found = checkpoint_io.check_t5x_checkpoint(source.path, source.config)
  where = found if checkpoint_io.is_legacy(found) else os.path.dirname(found)
  return source.config, where, found


def _t5x_read(found, config: ModelConfig, mesh: Optional[Mesh]):
  from guide_jax.t5x_compat import checkpoint_io  # pylint: disable=g-import-not-at-top
  return checkpoint_io.read_t5x_params(found, config, mesh)


def _t5x_tokenizer(found) -> Optional[dict]:
  """guide_info.json's tokenizer where guide_jax.convert wrote the checkpoint (<dir>/checkpoint_<step>/
  state beside <dir>/guide_info.json); t5x itself records none."""
  step_dir = os.path.dirname(found) if os.path.basename(found) == "state" else found
  for directory in (step_dir, os.path.dirname(step_dir)):
    info = os.path.join(directory, GUIDE_INFO)
    if os.path.isfile(info):
      return fileio.read_json_object(info, "guide_jax.convert's info").get("tokenizer")
  return None


# -------------------------------------------------------------------------------- Hugging Face
def _hf_detect(path: str) -> bool:
  return (not fileio.is_remote(path) and os.path.isfile(os.path.join(path, "config.json"))
          and any(n.endswith(".safetensors") for n in os.listdir(path)))


def _hf_describe(source: Source):
  from guide_jax import importers  # pylint: disable=g-import-not-at-top (safetensors)
  if source.config is not None or source.step is not None or source.settings is not None:
    raise ValueError(f"a Hugging Face teacher ({source.path}) carries its config and has no step: give "
                     "neither a config, a step nor settings")
  return importers.describe(source.path), os.path.abspath(source.path), source.path


def _hf_tokenizer(path) -> Optional[dict]:
  from guide_jax.data import hf_tokenizer  # pylint: disable=g-import-not-at-top
  if not any(os.path.isfile(os.path.join(path, n)) for n in (hf_tokenizer.TOKENIZER_JSON,
                                                            hf_tokenizer.SENTENCEPIECE_MODEL)):
    return None  # weights only: nothing to compare
  return hf_tokenizer.fingerprint(path)


def _hf_read(path, config: ModelConfig, mesh: Optional[Mesh]):
  from guide_jax import importers  # pylint: disable=g-import-not-at-top
  params, read_config = importers.load(path, mesh=mesh, check_finite=False)  # load() checks once, below
  if read_config != config:
    raise ValueError(f"{path} changed while it was read: {read_config} != {config}")
  return params


# -------------------------------------------------------------------------------------- MaxText
def _maxtext_detect(path: str) -> bool:
  from guide_jax.maxtext_compat import checkpoint_io  # pylint: disable=g-import-not-at-top
  return not fileio.is_remote(path) and checkpoint_io.is_maxtext(path)


def _maxtext_describe(source: Source):
  from guide_jax.maxtext_compat import checkpoint_io  # pylint: disable=g-import-not-at-top
  if source.settings is None:
    raise ValueError(f"a MaxText teacher ({source.path}) needs its MaxText settings (teachers.Source("
                     "settings='<configs/models/NAME.yml> KEY=VALUE ...'), convert --teacher_maxtext=...): "
                     "MaxText checkpoints store none")
  if source.config is not None or source.step is not None:
    raise ValueError("a MaxText teacher takes settings, not a ModelConfig or a step: point its path at "
                     "<run>/checkpoints/<step> for a step")
  described, scan, items = checkpoint_io.describe(source.path, source.settings)
  return described.config, items, (items, described, scan)


def _maxtext_read(handle, config: ModelConfig, mesh: Optional[Mesh]):
  from guide_jax.maxtext_compat import checkpoint_io  # pylint: disable=g-import-not-at-top
  items, described, scan = handle
  return checkpoint_io.read(items, described, scan, mesh)


def _maxtext_tokenizer(handle) -> Optional[dict]:
  """guide_info.json's tokenizer where guide_jax.convert wrote the checkpoint (<dir>/0/items beside
  <dir>/guide_info.json); MaxText itself records none."""
  items = handle[0]
  for directory in (os.path.dirname(items), os.path.dirname(os.path.dirname(items))):
    info = os.path.join(directory, GUIDE_INFO)
    if os.path.isfile(info):
      return fileio.read_json_object(info, "guide_jax.convert's info").get("tokenizer")
  return None


# Detection tries these in order; a named Source.format skips detection.
FORMATS = {
    "maxtext": Format(_maxtext_detect, _maxtext_describe, _maxtext_read, _maxtext_tokenizer),
    "guide_jax": Format(_guide_jax_detect, _guide_jax_describe, _guide_jax_read, _guide_jax_tokenizer),
    "t5x": Format(_t5x_detect, _t5x_describe, _t5x_read, _t5x_tokenizer),
    "hf": Format(_hf_detect, _hf_describe, _hf_read, _hf_tokenizer),
}


def as_source(source: Union[str, Source]) -> Source:
  """A Source from a path or a Source."""
  if isinstance(source, Source):
    return source
  if isinstance(source, (str, os.PathLike)) and str(source):
    return Source(os.fspath(source))
  raise ValueError(f"a teacher source must be a path or a teachers.Source, got {source!r}")


def describe(source: Union[str, Source], *, vocab_size: Optional[int] = None) -> Described:
  """What `source` holds, from metadata only (no array is read). Raises ValueError naming the
  problem: missing, incomplete, of no known format, not fitting its config, or (vocab_size given)
  of another vocabulary."""
  source = as_source(source)
  name = source.format
  if name is None:
    if not fileio.exists(source.path):
      raise checkpoints.CheckpointError(f"no checkpoints under {source.path!r}: the teacher does not exist")
    name = next((n for n, f in FORMATS.items() if f.detect(source.path)), None)
    if name is None:
      raise ValueError(f"{source.path!r} is no teacher checkpoint of a known format {tuple(FORMATS)} "
                       "(guide_jax: <dir>/checkpoints/<step>/; t5x: <dir>/checkpoint_<step>/; hf: config.json + "
                       "*.safetensors; maxtext: <root>/<step>/items/ or <run>/checkpoints/<step>/items/)")
  config, where, handle = FORMATS[name].describe(source)
  if vocab_size is not None and config.vocab_size != vocab_size:
    raise ValueError(f"teacher/student vocab mismatch: teacher vocab_size {config.vocab_size} != "
                     f"student {vocab_size} ({where})")
  return Described(config, where, name, handle)


def tokenizer(found: Described) -> Optional[dict]:
  """The identity of the tokenizer `found`'s ids mean (module docstring), or None."""
  return FORMATS[found.format].tokenizer(found.handle)


def read(found: Described, mesh: Optional[Mesh]) -> Teacher:
  """The arrays of a described source read straight onto their logical-axis shardings on `mesh`
  (each process reads only its own shards; mesh=None: host arrays), then the one full pass over
  them: finiteness, and in the same pass every array's content checksum (its fingerprint)."""
  params = FORMATS[found.format].read(found.handle, found.config, mesh)
  sums = validate.check_finite(params, f"teacher params ({found.where})", also=checkpoints.array_checksum)
  fingerprint = hashlib.sha256("".join(f"{k}:{int(v):08x}\n" for k, v in sorted(sums.items())).encode())
  leaves = jax.tree_util.tree_leaves(params)
  mine = sum(s.data.nbytes for x in leaves if isinstance(x, jax.Array) for s in x.addressable_shards
             if s.replica_id == 0)
  logging.info("teacher %s (%s) restored in shards: process %d holds %d of %d bytes", found.where, found.format,
               jax.process_index(), mine, sum(x.nbytes for x in leaves))
  identity = {"format": found.format, "path": found.where, "fingerprint": fingerprint.hexdigest(),
              "tokenizer": tokenizer(found)}
  return Teacher(params, found.config, identity)


def load(source: Union[str, Source], mesh: Optional[Mesh], *, vocab_size: Optional[int] = None) -> Teacher:
  """Teacher(params, ModelConfig, identity): every check of describe(), then read(): the arrays in
  shards and the one full pass over them (finiteness + fingerprint), so callers never re-check."""
  return read(describe(source, vocab_size=vocab_size), mesh)
