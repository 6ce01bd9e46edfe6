"""guide_jax.convert (guide_jax teacher -> params-only student checkpoint) and the params-only init
path (gin/init_params.gin: starts.params(INIT_PARAMS_DIR)): the converted student trains from step 0 with a fresh optimizer state."""
import json
import os
import subprocess
import sys

import gin
import jax
import numpy as np
import pytest

from guide_jax import checkpoints, convert, gin_utils, metrics
from guide_jax.config import GuideConfig
from test_train import MICRO, REPO, micro_bindings, run_train

STUDENT_BINDINGS = ["config.ModelConfig.d_model = 32", "config.ModelConfig.n_layers = 2",
                    "config.ModelConfig.n_heads = 2", "config.ModelConfig.head_dim = 16",
                    "config.ModelConfig.mlp_dim = 64"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
  d = tmp_path_factory.mktemp("convert_teacher")
  run_train(MICRO, micro_bindings(d, steps=4, **{"config.ModelConfig.d_model": 48, "config.ModelConfig.n_layers": 3}))
  return d


def test_convert_cli_then_init_params_dir_equals_a_guide_run(tmp_path, teacher):
  out = tmp_path / "student_init"
  cmd = [sys.executable, "-m", "guide_jax.convert", f"--teacher_dir={teacher}",
         "--student_gin=gin/models/tiny_student.gin", f"--output_dir={out}"] + [
             f"--gin.{b.replace(' = ', '=')}" for b in STUDENT_BINDINGS]
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  info = json.load(open(out / "guide_info.json"))
  assert info["guide"] == {"blocks": "first", "other_blocks": "uniform_selection", "layer_selection": "first_n",
                           "center": False, "seed": 0, "calibration_batches": 0}
  assert "opt_state" not in os.listdir(out / "checkpoints" / "0")  # params only: no made-up optimizer state
  # (2) params only: a run starting from it has the GUIDE run's step-0 loss and a fresh optimizer.
  run_train(MICRO + ["gin/init_params.gin"], micro_bindings(tmp_path / "from_params", steps=2,
                                                          INIT_PARAMS_DIR=repr(str(out))))
  run_train(MICRO + ["gin/guide.gin"], micro_bindings(tmp_path / "guide", steps=2, TEACHER_DIR=repr(str(teacher))))
  from_params = metrics.read_metrics(str(tmp_path / "from_params"), "eval")[0]["loss"]
  guided = metrics.read_metrics(str(tmp_path / "guide"), "eval")[0]["loss"]
  assert from_params == pytest.approx(guided, rel=1e-6)
  # A second convert into the same place is refused (nothing overwritten without --overwrite).
  again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert again.returncode != 0 and "already holds checkpoints" in again.stderr


def test_convert_api_takes_configs_and_leaves_gin_alone(tmp_path, teacher):
  gin.clear_config()
  gin_utils.parse(["gin/runs/pretrain.gin"], ["MODEL_DIR = 'x'"])
  student = gin_utils.model_from_gin("gin/models/tiny_student.gin", ["VOCAB_SIZE = 2048", *STUDENT_BINDINGS])
  gin_utils.parse(["gin/runs/pretrain.gin"], ["MODEL_DIR = 'x'"])
  before = gin.config_str()
  convert.convert(str(teacher), student, str(tmp_path / "out"), guide=GuideConfig(blocks="all"))
  assert gin.config_str() == before  # convert() never touches the caller's gin configuration
  gin.clear_config()
  params, config = checkpoints.load_params(str(tmp_path / "out"))
  assert config == student and all(bool(np.all(np.isfinite(x))) for x in jax.tree_util.tree_leaves(params))
  with pytest.raises(ValueError, match="d_model: student d_S=96 > teacher d_T=48"):
    convert.convert(str(teacher), student.replace(d_model=96), str(tmp_path / "big"))
  assert not (tmp_path / "big").exists()
  with pytest.raises(ValueError, match="calibration_batches fits the output scale to a run's training batches"):
    convert.convert(str(teacher), student, str(tmp_path / "cal"), guide=GuideConfig(calibration_batches=4))
  assert not (tmp_path / "cal").exists()


def test_init_params_dir_of_another_model_fails_before_writing(tmp_path, teacher):
  with pytest.raises(ValueError, match="starts.params: .* holds a .* checkpoint, not this run's"):
    run_train(MICRO + ["gin/init_params.gin"], micro_bindings(tmp_path / "run", INIT_PARAMS_DIR=repr(str(teacher))))
  assert not (tmp_path / "run").exists()


def test_case13_convert_into_an_unwritable_location_fails_before_any_compute(tmp_path, teacher, monkeypatch):
  """Issue 26 case 13. Before: GUIDE was computed first, then a raw OSError at the write."""
  def guide(*args, **kwargs):
    raise AssertionError("GUIDE computed before the output was probed")
  monkeypatch.setattr(convert, "guide_init", guide)
  student = gin_utils.model_from_gin("gin/models/tiny_student.gin", ["VOCAB_SIZE = 2048", *STUDENT_BINDINGS])
  blocker = tmp_path / "file"
  blocker.write_text("x")  # nothing can be created below a file (root ignores permission bits)
  with pytest.raises(ValueError, match=f"output_dir {blocker / 'out'} is not writable"):
    convert.convert(str(teacher), student, str(blocker / "out"))
