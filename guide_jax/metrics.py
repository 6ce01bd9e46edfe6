"""Run metrics: absl log lines, TensorBoard summaries (tensorboardX) and metrics.jsonl."""
import json
import os
import shutil
import tempfile
import time
from typing import List, Optional

import jax
from absl import logging

from guide_jax import fileio


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
  """Writes train/eval scalars of one run; only process 0 writes files.

  metrics.jsonl holds one record per (kind, step): a run resumed at `resume_step` first drops the
  records of the steps after it (written before the interruption and now replayed), and
  TensorBoard is told to purge them (tensorboardX purge_step). Locally the file is appended to;
  on an object store (no appends) the whole object is uploaded at flush(), at most every
  `upload_every_s` seconds from a log line, and at every eval and close; TensorBoard's event
  file is written to a local temporary directory and uploaded at the same moments (tensorboardX's
  own gs:// writer re-uploads from its __del__, at interpreter shutdown).
  """

  def __init__(self, model_dir: str, resume_step: Optional[int] = None, upload_every_s: float = 30.0):
    self._lead = jax.process_index() == 0
    self._path = fileio.join(model_dir, "metrics.jsonl")
    self._remote, self._upload_every_s, self._uploaded = fileio.is_remote(model_dir), upload_every_s, 0.0
    self._jsonl, self._lines, self._tb, self._tb_local = None, [], None, None
    self._tb_dir = fileio.join(model_dir, "tb")
    if not self._lead:
      return
    kept = [line for line in _lines(self._path) if resume_step is not None and _step(line) <= resume_step]
    if resume_step is not None or kept or fileio.exists(self._path):
      fileio.atomic_write_text(self._path, "".join(kept))  # replayed steps are replaced, not repeated
    if self._remote:
      self._lines = kept
    else:
      self._jsonl = open(self._path, "a")
    try:
      import tensorboardX  # TensorBoard event files under model_dir/tb
      purge = {} if resume_step is None else {"purge_step": resume_step + 1}
      if self._remote:
        self._tb_local = tempfile.mkdtemp(prefix="guide_jax-tb-")
      self._tb = tensorboardX.SummaryWriter(self._tb_local or self._tb_dir, **purge)
    except ImportError:  # e.g. a bare CUDA JAX image: metrics.jsonl still has every figure
      logging.warning("tensorboardX is not installed: no TensorBoard summaries for %s", model_dir)

  def _write(self, kind: str, step: int, values: dict) -> None:
    if not self._lead:
      return
    line = json.dumps({"kind": kind, "step": step, **values}) + "\n"
    if self._remote:
      self._lines.append(line)
      if time.time() - self._uploaded > self._upload_every_s:
        self.flush()
    else:
      self._jsonl.write(line)
      self._jsonl.flush()
    for k, v in values.items() if self._tb is not None else ():
      self._tb.add_scalar(f"{kind}/{k}", v, step)

  def flush(self) -> None:
    """Make every record so far durable (called before a checkpoint is saved)."""
    if not self._lead:
      return
    if self._remote:
      fileio.atomic_write_text(self._path, "".join(self._lines))
      self._uploaded = time.time()
    if self._tb is not None:
      self._tb.flush()
      for name in os.listdir(self._tb_local) if self._tb_local else ():
        fileio.copy(os.path.join(self._tb_local, name), fileio.join(self._tb_dir, name))

  def train(self, step: int, values: dict) -> None:
    logging.info("step %d | loss %.4f | %.0f tok/s | %.3f s/step | ETA %.0f s", step, values["loss"],
                 values["tokens_per_s"], values["step_time_s"], values["eta_s"])
    self._write("train", step, values)

  def eval(self, step: int, values: dict) -> None:
    logging.info("step %d | eval loss %.4f | eval ppl %.3f", step, values["loss"], values["ppl"])
    self._write("eval", step, values)
    if self._remote:
      self.flush()

  def close(self) -> None:
    if self._lead:
      self.flush()
      if self._jsonl is not None:
        self._jsonl.close()
      if self._tb is not None:
        self._tb.close()
      if self._tb_local:
        shutil.rmtree(self._tb_local, ignore_errors=True)
      self._jsonl, self._tb, self._tb_local = None, None, None


def _lines(path: str) -> List[str]:
  """The complete lines of a metrics.jsonl ([] when absent; a line torn by a kill -9 is dropped)."""
  try:
    text = fileio.read_text(path)
  except FileNotFoundError:
    return []
  out = []
  for line in text.splitlines():
    try:
      json.loads(line)
    except json.JSONDecodeError:
      continue
    out.append(line + "\n")
  return out


def _step(line: str) -> int:
  return int(json.loads(line).get("step", -1))


def read_metrics(model_dir: str, kind: str = "train") -> dict:
  """{step: record} from metrics.jsonl; a step logged twice (a resumed run) keeps its last record."""
  out = {}
  for line in _lines(fileio.join(model_dir, "metrics.jsonl")):
    record = json.loads(line)
    if record.get("kind") == kind:
      out[record["step"]] = record
  return out
