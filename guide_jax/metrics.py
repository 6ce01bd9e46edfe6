"""Run metrics: absl log lines, TensorBoard summaries (tensorboardX) and metrics.jsonl."""
import json
import os

import jax
from absl import logging


def quiet_library_logs() -> None:
  """Drop absl INFO records that come from orbax / tensorstore internals (warnings stay), and
  jax's backend-probe warnings ("Unable to initialize backend 'tpu'", CUDA on a CPU host).
  `--verbosity=1` (absl's -v) keeps everything."""
  import logging as std_logging
  if logging.get_verbosity() >= 1:
    return
  std_logging.getLogger("jax._src.xla_bridge").setLevel(std_logging.ERROR)

  class _Filter(std_logging.Filter):
    def filter(self, record):
      noisy = "/orbax/" in record.pathname or "/tensorstore/" in record.pathname
      return not noisy or record.levelno >= std_logging.WARNING

  logging.get_absl_handler().addFilter(_Filter())


class Writer:
  """Writes train/eval scalars of one run; only process 0 writes files."""

  def __init__(self, model_dir: str):
    self._lead = jax.process_index() == 0
    self._jsonl = open(os.path.join(model_dir, "metrics.jsonl"), "a") if self._lead else None
    self._tb = None
    if self._lead:
      try:
        import tensorboardX  # TensorBoard event files under model_dir/tb
        self._tb = tensorboardX.SummaryWriter(os.path.join(model_dir, "tb"))
      except ImportError:  # e.g. a bare CUDA JAX image: metrics.jsonl still has every figure
        logging.warning("tensorboardX is not installed: no TensorBoard summaries for %s", model_dir)

  def _write(self, kind: str, step: int, values: dict) -> None:
    if not self._lead:
      return
    self._jsonl.write(json.dumps({"kind": kind, "step": step, **values}) + "\n")
    self._jsonl.flush()
    for k, v in values.items() if self._tb is not None else ():
      self._tb.add_scalar(f"{kind}/{k}", v, step)

  def train(self, step: int, values: dict) -> None:
    logging.info("step %d | loss %.4f | %.0f tok/s | %.3f s/step | ETA %.0f s", step, values["loss"],
                 values["tokens_per_s"], values["step_time_s"], values["eta_s"])
    self._write("train", step, values)

  def eval(self, step: int, values: dict) -> None:
    logging.info("step %d | eval loss %.4f | eval ppl %.3f", step, values["loss"], values["ppl"])
    self._write("eval", step, values)

  def close(self) -> None:
    if self._lead:
      self._jsonl.close()
      if self._tb is not None:
        self._tb.flush()
        self._tb.close()


def read_metrics(model_dir: str, kind: str = "train") -> dict:
  """{step: record} from metrics.jsonl; a step logged twice (a resumed run) keeps its last record."""
  out = {}
  path = os.path.join(model_dir, "metrics.jsonl")
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        try:
          record = json.loads(line)
        except json.JSONDecodeError:  # a line torn by a kill -9 mid-write
          continue
        if record.get("kind") == kind:
          out[record["step"]] = record
  return out
