r"""Export a trained guide_jax run (or convert's params-only output) as a model other tools load.

  python -m guide_jax.export --run_dir=runs/student --format=hf --teacher_dir=hf/Llama-3.2-1B \
      --output_dir=runs/student_hf [--step=N] [--dtype=bfloat16|float32] [--max_shard_size=5GB] [--overwrite]

--format=hf: a Hugging Face model of the teacher's family (guide_jax.hf_export.write_hf: config.json
with the student's shape, sharded safetensors, the teacher's tokenizer and generation config), loaded
by transformers' AutoModelForCausalLM / AutoTokenizer.from_pretrained. --teacher_dir is the Hugging
Face teacher the student was made from (its family, tokenizer files); when the run's checkpoint
records a tokenizer fingerprint (convert --teacher_format=hf writes one), the teacher's tokenizer
must match it. The params are the run's latest checkpoint (or --step), restored on the host.
Every check runs before anything is written; the output directory appears complete or not at all.
"""
import json
import sys

from absl import app, flags

from guide_jax import checkpoints, metrics

FORMATS = ("hf",)


def export(run_dir: str, output_dir: str, *, teacher_dir: str, output_format: str = "hf",
           step=None, dtype: str = "bfloat16", max_shard_size="5GB", overwrite: bool = False) -> dict:
  """Writes run_dir's checkpoint (latest or `step`) to output_dir; returns a summary dict."""
  from guide_jax import hf_export  # pylint: disable=g-import-not-at-top
  from guide_jax.data import hf_tokenizer  # pylint: disable=g-import-not-at-top

  if output_format not in FORMATS:
    raise ValueError(f"--format must be one of {FORMATS}, got {output_format!r}")
  for name, value in (("run_dir", run_dir), ("teacher_dir", teacher_dir), ("output_dir", output_dir)):
    if not value:
      raise ValueError(f"--{name} is required")
  meta = checkpoints.read_meta(run_dir, step)
  config, step = checkpoints.read_config(run_dir, step)
  recorded = meta.get("tokenizer")
  if recorded:
    hf_tokenizer.check_same(hf_tokenizer.fingerprint(teacher_dir), recorded,
                            f"teacher {teacher_dir}", f"the run {run_dir}")
  params, _ = checkpoints.load_params(run_dir, step=step)
  hf_export.write_hf(params, config, teacher_dir, output_dir, dtype=dtype, max_shard_size=max_shard_size,
                     overwrite=overwrite)
  return {"output_dir": output_dir, "format": output_format, "step": step, "dtype": dtype}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  metrics.quiet_library_logs()
  try:
    result = export(f.run_dir, f.output_dir, teacher_dir=f.teacher_dir, output_format=f.format,
                    step=f.step, dtype=f.dtype, max_shard_size=f.max_shard_size, overwrite=f.overwrite)
  except ValueError as e:
    sys.exit(f"guide_jax.export: error: {e}")
  print(json.dumps(result))


def run():
  flags.DEFINE_string("run_dir", None, "guide_jax run (or convert output) whose checkpoint is exported.")
  flags.DEFINE_enum("format", "hf", list(FORMATS), "Output format.")
  flags.DEFINE_string("teacher_dir", None, "--format=hf: the Hugging Face teacher (family, tokenizer).")
  flags.DEFINE_string("output_dir", None, "Where to write the exported model.")
  flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
  flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"], "Tensor dtype of the safetensors.")
  flags.DEFINE_string("max_shard_size", "5GB", "Largest safetensors file (huggingface_hub's sharding).")
  flags.DEFINE_boolean("overwrite", False, "Replace an existing --output_dir.")
  app.run(main)


if __name__ == "__main__":
  run()
