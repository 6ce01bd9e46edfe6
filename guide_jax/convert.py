r"""Build a GUIDE-initialized student checkpoint from a teacher checkpoint, offline.

  python -m guide_jax.convert --teacher_dir=runs/teacher --student_gin=gin/models/tiny_student.gin \
      --output_dir=runs/student_init [--format=guide_jax|t5x] [--blocks=first] [--other_blocks=...] \
      [--layer_selection=first_n] [--center] [--seed=0] [--gin.VOCAB_SIZE=2048] [--overwrite]

Teacher: a guide_jax run directory (orbax layout of guide_jax.checkpoints; its ModelConfig is read
from the checkpoint), or with --teacher_format=t5x a t5x checkpoint (<dir>/checkpoint_<step>, or
the model dir for its latest step) whose shape is given by --teacher_gin (a gin file defining
MODEL = @config.ModelConfig(), like gin/t5x/teacher.gin) and --teacher_gin_bindings.
The teacher is restored in shards onto a mesh over all devices and mapped by the compiled
guide_init: no device or host holds more than its shards of it.
Student: --student_gin (same kind of gin file) plus --gin.KEY=VALUE bindings; VOCAB_SIZE defaults
to the teacher's vocabulary size, and a VOCAB_SIZE binding is applied to a t5x teacher's gin too.
Output (--format):
  guide_jax: <output_dir>/checkpoints/0/{params, meta}: a params-only guide_jax checkpoint; start a
             run from it with --gin.INIT_PARAMS_DIR="'<output_dir>'" (the run's own optimizer starts fresh).
  t5x:       <output_dir>/checkpoint_0/state/ (guide_jax.t5x_compat.write_t5x_checkpoint).
  Both also get <output_dir>/guide_info.json (configs, options, explained variance).
Every check (flags, teacher present and complete and matching its config, student config valid and
no larger than the teacher, output free unless --overwrite) runs before any compute or write. The
output is built in a temporary sibling directory and moved into place when complete.
"""
import dataclasses
import json
import os
import re
import shutil
import sys
import tempfile
from typing import Optional

from absl import app, flags, logging
import jax

from guide_jax import checkpoints, cli, gin_utils, sharding, t5x_compat
from guide_jax.config import BLOCKS, LAYER_SELECTIONS, OTHER_BLOCKS, GuideConfig, ModelConfig
from guide_jax.data import atomic
from guide_jax.transforms import check_dimensions, guide_init
from guide_jax.transforms.select import select_layers

FORMATS = ("guide_jax", "t5x")
INFO_FILE = "guide_info.json"


def define_flags() -> None:
  """Define the CLI flags at run(), once per process (the student's --gin_bindings is gin_utils'
  shared flag)."""
  def define(kind, name, default, help_text, **kw):
    if name in flags.FLAGS:
      return
    if kind == "enum":
      flags.DEFINE_enum(name, default, kw["enum_values"], help_text)
    else:
      getattr(flags, f"DEFINE_{kind}")(name, default, help_text)

  define("string", "teacher_dir", None, "Teacher: guide_jax run dir, or t5x checkpoint (--teacher_format=t5x).")
  define("enum", "teacher_format", "guide_jax", "Teacher checkpoint format.", enum_values=list(FORMATS))
  define("string", "teacher_gin", None, "t5x teacher only: gin file defining MODEL = @ModelConfig().")
  define("multi_string", "teacher_gin_bindings", [], "t5x teacher only: gin bindings for --teacher_gin.")
  define("integer", "teacher_step", None, "guide_jax teacher: checkpoint step (default: latest).")
  define("string", "student_gin", None, "Student gin file defining MODEL = @ModelConfig().")
  define("string", "output_dir", None, "Where to write the student checkpoint.")
  define("enum", "format", "guide_jax", "Output checkpoint format.", enum_values=list(FORMATS))
  define("enum", "blocks", "first", "Blocks given the PCA mapping.", enum_values=list(BLOCKS))
  define("enum", "other_blocks", "uniform_selection", "How the other blocks start.",
         enum_values=list(OTHER_BLOCKS))
  define("enum", "layer_selection", "first_n", "Teacher layer for each student layer.",
         enum_values=list(LAYER_SELECTIONS))
  define("boolean", "center", False, "Student table (E_T - mu) M instead of E_T M.")
  define("integer", "seed", 0, "PRNG seed for the parts that start at random.")
  define("boolean", "overwrite", False, "Replace a checkpoint already in --output_dir.")


_VOCAB_BINDING = re.compile(r"^\s*VOCAB_SIZE\s*=")


def _output_entries(output_format: str, step: int = 0):
  return ["checkpoints" if output_format == "guide_jax" else f"checkpoint_{step}", INFO_FILE]


def _check_output(output_dir: str, output_format: str, overwrite: bool, teacher_dir: str) -> None:
  out, teacher = os.path.realpath(output_dir), os.path.realpath(teacher_dir)
  if out == teacher or teacher.startswith(out + os.sep):
    raise ValueError(f"output_dir {output_dir!r} holds the teacher {teacher_dir!r}; choose another")
  if os.path.exists(out) and not os.path.isdir(out):
    raise ValueError(f"output_dir {output_dir!r} exists and is not a directory")
  if not os.path.isdir(out) or overwrite:
    return
  present = [e for e in _output_entries(output_format) if os.path.exists(os.path.join(out, e))]
  if output_format == "t5x":
    present += sorted(e for e in os.listdir(out) if re.match(r"^checkpoint_\d+$", e) and e not in present)
  if present:
    raise ValueError(f"output_dir {output_dir!r} already holds {', '.join(present)}; pass --overwrite "
                     "to replace it, or choose another directory")


def _move_into_place(tmp: str, output_dir: str) -> None:
  """Rename the finished tmp dir to output_dir, or its entries into an existing output_dir."""
  if not os.path.exists(output_dir):
    os.rename(tmp, output_dir)
    return
  trash = tempfile.mkdtemp(prefix=".guide_convert_old-", dir=output_dir)
  try:
    for entry in sorted(os.listdir(tmp), key=lambda e: e == INFO_FILE):  # checkpoint first
      dst = os.path.join(output_dir, entry)
      if os.path.exists(dst):
        os.rename(dst, os.path.join(trash, entry))
      os.rename(os.path.join(tmp, entry), dst)
  finally:
    shutil.rmtree(trash, ignore_errors=True)
    shutil.rmtree(tmp, ignore_errors=True)


def convert(teacher_dir: str, student_config: ModelConfig, output_dir: str, *,
            guide: GuideConfig = GuideConfig(), output_format: str = "guide_jax",
            teacher_format: str = "guide_jax", teacher_config: Optional[ModelConfig] = None,
            teacher_step: Optional[int] = None, overwrite: bool = False) -> dict:
  """Teacher checkpoint -> GUIDE student checkpoint in output_dir. Returns the guide_info dict.

  teacher_config: required for a t5x teacher (a guide_jax checkpoint carries its own).
  Raises ValueError (checkpoints.CheckpointError / t5x_compat.T5xCheckpointError are ValueErrors)
  naming the problem, before anything is computed or written. Touches no gin state.
  """
  # 1. Arguments and paths.
  for name, value, choices in (("format", output_format, FORMATS), ("teacher_format", teacher_format, FORMATS)):
    if value not in choices:
      raise ValueError(f"--{name} must be one of {choices}, got {value!r}")
  if not isinstance(guide, GuideConfig) or not isinstance(student_config, ModelConfig):
    raise ValueError("convert needs a GuideConfig and a student ModelConfig")
  for name, value in (("teacher_dir", teacher_dir), ("output_dir", output_dir)):
    if not value:
      raise ValueError(f"--{name} is required")
  if not os.path.isdir(teacher_dir):
    raise ValueError(f"teacher_dir {teacher_dir!r} does not exist")
  _check_output(output_dir, output_format, overwrite, teacher_dir)

  # 2. Teacher: present, complete, matching its config; the student no larger.
  if teacher_format == "guide_jax":
    if teacher_config is not None:
      raise ValueError("a guide_jax teacher checkpoint carries its ModelConfig: give --teacher_gin only "
                       "with --teacher_format=t5x")
    teacher_config, teacher_step = checkpoints.read_config(teacher_dir, teacher_step)
    teacher_source = f"{checkpoints.checkpoint_dir(teacher_dir)}/{teacher_step}"
  else:
    if teacher_config is None:
      raise ValueError("--teacher_format=t5x needs --teacher_gin (a gin file defining MODEL)")
    if teacher_step is not None:
      raise ValueError("--teacher_step is for guide_jax teachers; point --teacher_dir at checkpoint_<step>")
    teacher_source = os.path.dirname(t5x_compat.find_t5x_checkpoint(teacher_dir))
    t5x_compat.check_t5x_checkpoint(teacher_dir, teacher_config)
  check_dimensions(teacher_config, student_config)
  select_layers(teacher_config.n_layers, student_config.n_layers, guide.layer_selection)
  logging.info("teacher %s: %s", teacher_source, teacher_config)
  logging.info("student: %s", student_config)

  # 3. Compute (only now): the teacher restored in shards, GUIDE compiled on the same mesh.
  mesh = sharding.make_mesh(model_parallel=jax.device_count())
  t_sh = sharding.param_shardings(teacher_config, mesh)
  if teacher_format == "guide_jax":
    teacher_params, _ = checkpoints.load_params(teacher_dir, t_sh, step=teacher_step)
  else:
    teacher_params = t5x_compat.load_t5x_params(teacher_dir, teacher_config, t_sh)
  params, info = guide_init(teacher_params, teacher_config, student_config, guide, mesh=mesh)
  guide_info = {"explained_variance": info.explained_variance, "teacher_layers": list(info.teacher_layers),
                "guide": dataclasses.asdict(guide), "teacher": teacher_source, "teacher_format": teacher_format,
                "format": output_format, "teacher_config": dataclasses.asdict(teacher_config),
                "student_config": dataclasses.asdict(student_config)}
  logging.info("GUIDE: explained variance %.4f, teacher layers %s", info.explained_variance,
               list(info.teacher_layers))

  # 4. Write into a temporary sibling directory, then move into place.
  output_dir = os.path.abspath(output_dir)
  parent = os.path.dirname(output_dir)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(output_dir)}.tmp-", dir=parent)
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it 0700; the output should get the usual mode
  try:
    if output_format == "guide_jax":
      mngr = checkpoints.manager(tmp, keep=1, params_only=True)
      checkpoints.save(mngr, 0, params, None, student_config, force=True,
                       extra={"init": "guide", "explained_variance": info.explained_variance,
                              "teacher": teacher_source})
      mngr.close()
    else:
      t5x_compat.write_t5x_checkpoint(tmp, params, student_config, step=0)
    atomic.atomic_write_json(os.path.join(tmp, INFO_FILE), guide_info)
    _move_into_place(tmp, output_dir)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  guide_info["output_dir"] = output_dir
  return guide_info


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  try:
    if not f.student_gin:
      raise ValueError("--student_gin is required")
    guide = GuideConfig(blocks=f.blocks, other_blocks=f.other_blocks, layer_selection=f.layer_selection,
                        center=f.center, seed=f.seed)
    teacher_config, vocab = None, [b for b in f.gin_bindings if _VOCAB_BINDING.match(b)]
    if f.teacher_format == "t5x":
      if not f.teacher_gin:
        raise ValueError("--teacher_format=t5x needs --teacher_gin (a gin file defining MODEL)")
      teacher_config = gin_utils.model_from_gin(f.teacher_gin, [*vocab, *f.teacher_gin_bindings])
      vocab_size = teacher_config.vocab_size
    elif f.teacher_gin or f.teacher_gin_bindings:
      raise ValueError("--teacher_gin / --teacher_gin_bindings are for --teacher_format=t5x only (a "
                       "guide_jax checkpoint carries its ModelConfig)")
    else:
      vocab_size = checkpoints.read_config(f.teacher_dir, f.teacher_step)[0].vocab_size if f.teacher_dir else 0
    # VOCAB_SIZE defaults to the teacher's; model gins read it as a macro.
    student_config = gin_utils.model_from_gin(f.student_gin, [f"VOCAB_SIZE = {vocab_size}", *f.gin_bindings])
    info = convert(f.teacher_dir, student_config, f.output_dir, guide=guide, output_format=f.format,
                   teacher_format=f.teacher_format, teacher_config=teacher_config,
                   teacher_step=f.teacher_step, overwrite=f.overwrite)
  except ValueError as e:
    sys.exit(f"guide_jax.convert: error: {e}")
  print(f"explained variance: {info['explained_variance']:.6f}")
  print(json.dumps({k: info[k] for k in ("output_dir", "format", "explained_variance", "teacher_layers")}))


def run():
  """Entry point with t5x-style --gin.KEY=VALUE rewriting."""
  define_flags()
  app.run(lambda argv: cli.exit_on_error("guide_jax.convert", main, argv), argv=gin_utils.rewrite_gin_args(sys.argv))


if __name__ == "__main__":
  run()
