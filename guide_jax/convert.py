r"""Build a GUIDE-initialized student checkpoint from a teacher checkpoint, offline.

  python -m guide_jax.convert --teacher_dir=runs/teacher --student_gin=gin/models/tiny_student.gin \
      --output_dir=runs/student_init [--format=guide_jax|t5x] [--blocks=first] [--other_blocks=...] \
      [--layer_selection=first_n] [--center] [--seed=0] [--gin.VOCAB_SIZE=2048] [--overwrite]
  python -m guide_jax.convert --teacher_dir=hf/Llama-3.2-1B --teacher_format=hf \
      --student='d_model=1024 n_layers=8' --output_dir=runs/student_init [--format=hf --hf_dtype=bfloat16]
  python -m guide_jax.convert --teacher_dir=/data/mt_teacher/0/items \
      --teacher_maxtext='maxtext/configs/models/llama3.1-8b.yml' --student='n_layers=16 d_model=2048' \
      --format=maxtext --output_dir=/data/student [--maxtext_scan_layers=false] [--maxtext_dtype=bfloat16]

Teacher: any guide_jax.teachers source, its format detected (or --teacher_format): a guide_jax run
directory (its ModelConfig is read from the checkpoint), a t5x checkpoint (<dir>/checkpoint_<step>,
or the model dir for its latest step; legacy msgpack checkpoints need t5x importable) whose shape is
given by --teacher_gin (a gin file defining MODEL = @config.ModelConfig(), like gin/t5x/teacher.gin)
and --teacher_gin_bindings, or a Hugging Face model directory (config.json + safetensors,
guide_jax.importers), or a MaxText checkpoint (a params-only <root>/0/items or a training run's
<run>/checkpoints/<step>/items, llama2-style decoder block) whose MaxText settings --teacher_maxtext
gives (a model .yml and KEY=VALUE overrides, as MaxText's command line takes them).
teachers.load restores it in shards onto a mesh over all devices and the compiled guide_init maps
it: no device or host holds more than its shards of it.
Student: --student_gin (same kind of gin file) plus --gin.KEY=VALUE bindings; VOCAB_SIZE defaults
to the teacher's vocabulary size, and a VOCAB_SIZE binding is applied to a t5x teacher's gin too.
Or, with no gin file, --student='FIELD=VALUE ...' (overrides of the teacher's own ModelConfig) or
--student_params=N (a budget) name the student in the teacher's family (guide_jax.student_shape).
Output (--format):
  guide_jax: <output_dir>/checkpoints/0/{params, meta}: a params-only guide_jax checkpoint; start a
             run from it with --gin_file=gin/init_params.gin --gin.INIT_PARAMS_DIR="'<output_dir>'"
             (starts.params: the run's own optimizer starts fresh). It also gets
             <output_dir>/model.gin (MODEL = the student's ModelConfig) for train's --gin_file, so a
             student named by --student needs no hand-written gin.
  t5x:       <output_dir>/checkpoint_0/state/ (guide_jax.t5x_compat.write_t5x_checkpoint).
  hf:        a Hugging Face model of the (hf) teacher's family (guide_jax.hf_export.write_hf):
             config.json, safetensors (--hf_dtype), the teacher's tokenizer and generation config.
  maxtext:   <output_dir>/0/items (+ _CHECKPOINT_METADATA {"scan_layers"}): a MaxText params-only
             checkpoint of the llama2 decoder block (guide_jax.maxtext_compat), scanned or not
             (--maxtext_scan_layers) in float32 or bfloat16 (--maxtext_dtype), its shapes checked
             against those MaxText builds for the student's settings before it is written; plus
             <output_dir>/maxtext.yml, the MaxText config of the student (those settings,
             scan_layers, load_parameters_path), and for a MaxText teacher
             <output_dir>/maxtext_distill.yml (MaxText's post_train/distillation.yml with
             student_overrides and teacher_overrides). The settings are printed.
  All also get <output_dir>/guide_info.json (configs, options, explained variance, the teacher's
  content fingerprint and, where the teacher records one, the identity of its tokenizer: an hf
  teacher's own, a guide_jax teacher's data's; a guide_jax output's meta carries it too). train
  checks its data against it (guide_jax.teachers.tokenizer reads it back, a t5x output's too).
Every check (flags, output free unless --overwrite, teacher present and complete and matching its
config, student config valid and no larger than the teacher) runs before any compute or write. The
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

from guide_jax import checkpoints, cli, fileio, gin_utils, sharding, student_shape, t5x_compat, teachers
from guide_jax.config import BLOCKS, LAYER_SELECTIONS, OTHER_BLOCKS, GuideConfig, ModelConfig
from guide_jax.transforms import guide_init

FORMATS = ("guide_jax", "t5x", "hf", "maxtext")
INFO_FILE = teachers.GUIDE_INFO
MODEL_GIN = "model.gin"
MAXTEXT_YML = "maxtext.yml"
MAXTEXT_DISTILL_YML = "maxtext_distill.yml"


def define_flags() -> None:
  """Define the CLI flags at run(), once per process. GUIDE's option flags are GuideConfig's fields
  with GuideConfig's defaults (spelled there only); --gin_bindings is gin_utils' shared flag."""
  gin_utils.define_flags()
  def define(kind, name, default, help_text, **kw):
    if name in flags.FLAGS:
      return
    if kind == "enum":
      flags.DEFINE_enum(name, default, kw["enum_values"], help_text)
    else:
      getattr(flags, f"DEFINE_{kind}")(name, default, help_text)

  define("string", "teacher_dir", None, "Teacher: guide_jax run dir, t5x checkpoint or Hugging Face model dir.")
  define("enum", "teacher_format", None, "Teacher checkpoint format (default: detected from the path).",
         enum_values=list(teachers.FORMATS))
  define("string", "teacher_maxtext", None, "MaxText teacher only: its MaxText settings, words each a .yml or "
         "KEY=VALUE ('configs/models/llama3.1-8b.yml base_num_decoder_layers=16').")
  define("string", "teacher_gin", None, "t5x teacher only: gin file defining MODEL = @ModelConfig().")
  define("multi_string", "teacher_gin_bindings", [], "t5x teacher only: gin bindings for --teacher_gin.")
  define("integer", "teacher_step", None, "guide_jax teacher: checkpoint step (default: latest).")
  define("string", "student_gin", None, "Student gin file defining MODEL = @ModelConfig().")
  define("string", "student", None, "Student as overrides of the teacher's config: 'd_model=1024 n_layers=12'.")
  define("float", "student_params", None, "Student by parameter budget in the teacher's family (e.g. 1e9).")
  define("enum", "hf_dtype", "bfloat16", "--format=hf: safetensors dtype.", enum_values=["bfloat16", "float32"])
  define("boolean", "maxtext_scan_layers", True, "--format=maxtext: scanned layers (MaxText's scan_layers).")
  define("enum", "maxtext_dtype", "float32", "--format=maxtext: weight dtype.", enum_values=["float32", "bfloat16"])
  define("string", "output_dir", None, "Where to write the student checkpoint.")
  define("enum", "format", "guide_jax", "Output checkpoint format.", enum_values=list(FORMATS))
  defaults = GuideConfig()
  choices = {"blocks": BLOCKS, "other_blocks": OTHER_BLOCKS, "layer_selection": LAYER_SELECTIONS}
  for field in _guide_fields():
    default = getattr(defaults, field.name)
    help_text = f"GuideConfig.{field.name} (docs/algorithm.md)."
    if field.name in choices:
      define("enum", field.name, default, help_text, enum_values=list(choices[field.name]))
    elif isinstance(default, bool):
      define("boolean", field.name, default, help_text)
    else:
      define("integer", field.name, default, help_text)
  define("boolean", "overwrite", False, "Replace a checkpoint already in --output_dir.")


def _guide_fields():
  """The GuideConfig fields convert takes as flags: all but calibration_batches (it needs a run's
  training batches: a train start's option)."""
  return [f for f in dataclasses.fields(GuideConfig) if f.name != "calibration_batches"]


_VOCAB_BINDING = re.compile(r"^\s*VOCAB_SIZE\s*=")


def _output_entries(output_format: str, step: int = 0):
  if output_format == "hf":
    return ["config.json", INFO_FILE]
  if output_format == "maxtext":
    return [str(step), MAXTEXT_YML, MAXTEXT_DISTILL_YML, INFO_FILE]
  return ["checkpoints" if output_format == "guide_jax" else f"checkpoint_{step}", INFO_FILE]


def _check_output(output_dir: str, output_format: str, overwrite: bool, teacher_dir: str) -> None:
  if fileio.is_remote(output_dir) and output_format != "guide_jax":
    raise ValueError(f"--format={output_format} writes local files only; write {output_dir!r} locally and copy it")
  real = lambda p: fileio.absolute(p).rstrip("/") if fileio.is_remote(p) else os.path.realpath(p)
  out, teacher = real(output_dir), real(teacher_dir)
  if out == teacher or teacher.startswith(out + "/"):
    raise ValueError(f"output_dir {output_dir!r} holds the teacher {teacher_dir!r}; choose another")
  if fileio.isfile(out):
    raise ValueError(f"output_dir {output_dir!r} exists and is not a directory")
  if not fileio.isdir(out) or overwrite:
    return
  present = [e for e in _output_entries(output_format) if fileio.exists(fileio.join(out, e))]
  if output_format == "t5x":
    present += sorted(e for e in fileio.listdir(out) if re.match(r"^checkpoint_\d+$", e) and e not in present)
  if output_format == "maxtext":  # MaxText's conversion roots hold <step>/items
    present += sorted(e for e in fileio.listdir(out) if e.isdigit() and e not in present)
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


def convert(teacher_dir: str, student_config, output_dir: str, *,
            guide: GuideConfig = GuideConfig(), output_format: str = "guide_jax",
            teacher_format: Optional[str] = None, teacher_config: Optional[ModelConfig] = None,
            teacher_step: Optional[int] = None, overwrite: bool = False,
            hf_dtype: str = "bfloat16", teacher_settings: Optional[str] = None,
            maxtext_scan_layers: bool = True, maxtext_dtype: str = "float32") -> dict:
  """Teacher checkpoint -> GUIDE student checkpoint in output_dir. Returns the guide_info dict.

  student_config: a ModelConfig, or a function of the teacher's ModelConfig giving one
  (student_shape.resolve). teacher_format: a guide_jax.teachers format ('guide_jax', 't5x', 'hf',
  'maxtext'), or None to detect it. teacher_config: required for a t5x teacher (a guide_jax
  checkpoint and a Hugging Face directory carry their own); teacher_settings: a MaxText teacher's
  MaxText settings (teachers.Source.settings). maxtext_scan_layers / maxtext_dtype: the
  --format=maxtext output's layout and weight dtype.
  Raises ValueError (checkpoints.CheckpointError / t5x_compat.T5xCheckpointError are ValueErrors)
  naming the problem: the paths and the teacher's metadata are checked before any array is read,
  the student's dimensions (by guide_init) before any compute, everything before any write.
  Touches no gin state.
  """
  # 1. Arguments and paths.
  if output_format not in FORMATS:
    raise ValueError(f"--format must be one of {FORMATS}, got {output_format!r}")
  if not isinstance(guide, GuideConfig) or not (isinstance(student_config, ModelConfig) or callable(student_config)):
    raise ValueError("convert needs a GuideConfig and a student ModelConfig")
  if guide.calibration_batches:
    raise ValueError("GuideConfig.calibration_batches fits the output scale to a run's training batches: "
                     "set it in the training run's gin (gin/guide.gin's start), not in convert")
  for name, value in (("teacher_dir", teacher_dir), ("output_dir", output_dir)):
    if not value:
      raise ValueError(f"--{name} is required")
  if not fileio.isdir(teacher_dir):
    raise ValueError(f"teacher_dir {teacher_dir!r} does not exist")
  _check_output(output_dir, output_format, overwrite, teacher_dir)
  try:
    fileio.probe_writable(output_dir, "output_dir")  # before the teacher is read
  except fileio.OutputLocationError as e:
    raise ValueError(str(e)) from e
  if output_format == "maxtext" and maxtext_dtype not in ("float32", "bfloat16"):
    raise ValueError(f"--maxtext_dtype must be float32 or bfloat16, got {maxtext_dtype!r}")
  source = teachers.Source(teacher_dir, format=teacher_format, config=teacher_config, step=teacher_step,
                           settings=teacher_settings)
  found = teachers.describe(source)  # metadata only: present, complete, fitting its config
  if output_format == "hf" and found.format != "hf":
    raise ValueError("--format=hf writes a model of the teacher's Hugging Face family: it needs a Hugging "
                     "Face teacher directory")
  if not isinstance(student_config, ModelConfig):
    student_config = student_config(found.config)
  if student_config.vocab_size != found.config.vocab_size:
    raise ValueError(f"teacher/student vocab mismatch: teacher vocab_size {found.config.vocab_size} != "
                     f"student {student_config.vocab_size} ({found.where})")
  # The identity of the tokenizer the teacher's ids mean (an hf teacher's own, a guide_jax run's data's,
  # a converted t5x checkpoint's guide_info.json): the student carries it, train compares it with its data.
  tokenizer = teachers.tokenizer(found)
  if output_format == "hf":
    from guide_jax import hf_export  # pylint: disable=g-import-not-at-top
    hf_export.check_representable(student_config, fileio.read_json_object(
        os.path.join(teacher_dir, "config.json"), "config.json").get("model_type"))
  if output_format == "maxtext":
    from guide_jax import maxtext_compat  # pylint: disable=g-import-not-at-top
    if maxtext_compat.incompatibilities(student_config):
      raise ValueError("--format=maxtext: MaxText's llama2 decoder block has no "
                       + "; ".join(maxtext_compat.incompatibilities(student_config)) + " (the student's ModelConfig)")
  if output_format == "t5x" and student_config.t5x_incompatibilities():
    raise ValueError("--format=t5x: t5x's decoder-only network has no "
                     + ", ".join(student_config.t5x_incompatibilities()) + " (the student's ModelConfig)")

  # 2. The teacher, read in shards onto a mesh over all devices (teachers.load: every check of its
  #    metadata first, the finiteness pass after), then GUIDE compiled on the same mesh.
  mesh = sharding.make_mesh(model_parallel=jax.device_count())
  logging.info("teacher %s: %s", found.where, found.config)
  logging.info("student: %s", student_config)
  teacher_params, teacher_config, identity = teachers.read(found, mesh)  # found: every metadata check done
  params, info = guide_init(teacher_params, teacher_config, student_config, guide, mesh=mesh)
  del teacher_params
  guide_info = {"explained_variance": info.explained_variance, "teacher_layers": list(info.teacher_layers),
                "guide": dataclasses.asdict(guide), "teacher": found.where, "teacher_format": found.format,
                "format": output_format, "teacher_config": dataclasses.asdict(teacher_config),
                "student_config": dataclasses.asdict(student_config), "teacher_fingerprint": identity["fingerprint"]}
  if tokenizer is not None:
    guide_info["tokenizer"] = tokenizer
  logging.info("GUIDE: explained variance %.4f, teacher layers %s", info.explained_variance,
               list(info.teacher_layers))

  # 4. Write into a temporary sibling directory, then move into place (on an object store, where
  # nothing is renamed: the checkpoint straight into output_dir, orbax committing it as a whole,
  # then guide_info.json, one atomic upload).
  if fileio.is_remote(output_dir):
    for entry in _output_entries(output_format):
      fileio.rmtree(fileio.join(output_dir, entry))  # --overwrite (else _check_output found none)
    mngr = checkpoints.manager(output_dir, keep=1, params_only=True)
    checkpoints.save(mngr, 0, params, None, student_config, force=True,
                     extra={"init": "guide", "explained_variance": info.explained_variance,
                            "teacher": found.where, **({"tokenizer": tokenizer} if tokenizer else {})})
    mngr.close()
    fileio.atomic_write_json(fileio.join(output_dir, INFO_FILE), guide_info)
    guide_info["output_dir"] = output_dir
    return guide_info
  output_dir = os.path.abspath(output_dir)
  if output_format == "hf":
    hf_export.write_hf(params, student_config, teacher_dir, output_dir, dtype=hf_dtype, overwrite=overwrite,
                       extra_files={INFO_FILE: guide_info})
    guide_info["output_dir"] = output_dir
    return guide_info
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
                              "teacher": found.where, **({"tokenizer": tokenizer} if tokenizer else {})})
      mngr.close()
      with open(os.path.join(tmp, MODEL_GIN), "w") as f:
        f.write(student_shape.to_gin(student_config, f"the GUIDE student of {found.where}"))
    elif output_format == "maxtext":
      guide_info["maxtext_settings"] = _write_maxtext(tmp, output_dir, params, student_config, found,
                                                      maxtext_scan_layers, maxtext_dtype)
    else:
      t5x_compat.write_t5x_checkpoint(tmp, params, student_config, step=0)
    fileio.atomic_write_json(os.path.join(tmp, INFO_FILE), guide_info)
    _move_into_place(tmp, output_dir)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  guide_info["output_dir"] = output_dir
  return guide_info


def _yml(comment: str, values: dict) -> str:
  import yaml  # pylint: disable=g-import-not-at-top
  return "".join(f"# {line}\n" for line in comment.splitlines()) + yaml.safe_dump(
      values, sort_keys=False, default_flow_style=None, width=120)


def _write_maxtext(tmp: str, output_dir: str, params, config: ModelConfig, found, scan_layers: bool,
                   dtype: str) -> dict:
  """<tmp>/0/items + maxtext.yml (+ maxtext_distill.yml for a MaxText teacher); returns the
  student's MaxText settings (scan_layers and load_parameters_path included)."""
  from guide_jax import maxtext_compat  # pylint: disable=g-import-not-at-top
  items = maxtext_compat.write(tmp, params, config, scan_layers=scan_layers, dtype=dtype)
  student = {**maxtext_compat.settings(config), "scan_layers": bool(scan_layers),
             "load_parameters_path": os.path.join(output_dir, os.path.relpath(items, tmp))}
  with open(os.path.join(tmp, MAXTEXT_YML), "w") as f:
    f.write(_yml(f"The GUIDE student of {found.where} (guide_jax.convert --format=maxtext), as a MaxText config:\n"
                 f"  python -m maxtext.trainers.pre_train.train {os.path.join(output_dir, MAXTEXT_YML)} run_name=... "
                 "base_output_directory=... [dataset settings]\n"
                 "MaxText resolves base.yml in its own configs directory.", {"base_config": "base.yml", **student}))
  if found.format == "maxtext":
    items_dir, described, teacher_scan = found.handle
    teacher = {**described.settings, "scan_layers": teacher_scan, "load_parameters_path": items_dir}
    with open(os.path.join(tmp, MAXTEXT_DISTILL_YML), "w") as f:
      f.write(_yml(f"MaxText distillation of {items_dir} into its GUIDE student (guide_jax.convert):\n"
                   "  python -m maxtext.trainers.post_train.distillation.train_distill "
                   f"{os.path.join(output_dir, MAXTEXT_DISTILL_YML)} run_name=... base_output_directory=... "
                   "[dataset and tokenizer settings]",
                   {"base_config": "post_train/distillation.yml",
                    "student_overrides": {"model_name": "default", **student},
                    "teacher_overrides": {"model_name": "default", **teacher}}))
  print("MaxText settings of the student: " + maxtext_compat.format_settings(student), flush=True)
  return student


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  try:
    named = [name for name in ("student_gin", "student", "student_params") if f[name].value is not None]
    if len(named) != 1:
      raise ValueError("name the student with exactly one of --student_gin, --student, --student_params"
                       + (f" (got {', '.join('--' + n for n in named)})" if named else ""))
    guide = GuideConfig(**{field.name: getattr(f, field.name) for field in _guide_fields()})
    teacher_config, vocab = None, [b for b in f.gin_bindings if _VOCAB_BINDING.match(b)]
    if f.teacher_gin:
      teacher_config = gin_utils.model_from_gin(f.teacher_gin, [*vocab, *f.teacher_gin_bindings])
    elif f.teacher_gin_bindings:
      raise ValueError("--teacher_gin_bindings needs --teacher_gin")
    source = teachers.Source(f.teacher_dir, format=f.teacher_format, config=teacher_config,
                             step=f.teacher_step, settings=f.teacher_maxtext) if f.teacher_dir else None
    if f.student_gin:
      # VOCAB_SIZE defaults to the teacher's; model gins read it as a macro.
      vocab_size = teachers.describe(source).config.vocab_size if source else 0
      student_config = gin_utils.model_from_gin(f.student_gin, [f"VOCAB_SIZE = {vocab_size}", *f.gin_bindings])
    else:
      if f.gin_bindings:
        raise ValueError("--gin.* bindings go with --student_gin; put student fields in --student")

      def student_config(teacher):
        student = student_shape.resolve(teacher, f.student, f.student_params)
        print(f"student: {student_shape.describe(student, teacher)}", flush=True)
        return student
    info = convert(f.teacher_dir, student_config, f.output_dir, guide=guide, output_format=f.format,
                   teacher_format=f.teacher_format, teacher_config=teacher_config,
                   teacher_step=f.teacher_step, overwrite=f.overwrite, hf_dtype=f.hf_dtype,
                   teacher_settings=f.teacher_maxtext, maxtext_scan_layers=f.maxtext_scan_layers,
                   maxtext_dtype=f.maxtext_dtype)
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
