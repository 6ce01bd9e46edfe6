"""From a teacher t5x made and saved to a student t5x restores, trains and resumes:
  - offline: README's `python -m guide_jax.convert --teacher_format=t5x --format=t5x`, then t5x
    restores the student with drop_optimizer_state (gin/t5x/restore_converted.gin);
  - restore time: gin/t5x/guide_restore.gin parsed through gin with t5x's decoder_only base.gin,
    t5x.utils.create_checkpoint_manager_and_restore pointed at the teacher's checkpoint;
  - t5x.trainer.Trainer steps on the student, a save, and a resume (is_resuming=True) as
    t5x.train does it.
"""
import os
import sys

import pytest

pytest.importorskip("t5x.models", reason="t5x is not installed (tests/t5x_tier.sh builds a venv with it)")

import gin  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
from t5x import gin_utils as t5x_gin_utils  # pylint: disable=g-import-not-at-top,wrong-import-position
from t5x import partitioning  # pylint: disable=g-import-not-at-top,wrong-import-position
from t5x import train as t5x_train  # pylint: disable=g-import-not-at-top,wrong-import-position
from t5x import trainer as t5x_trainer  # pylint: disable=g-import-not-at-top,wrong-import-position
from t5x import utils  # pylint: disable=g-import-not-at-top,wrong-import-position

import t5x_support as S  # pylint: disable=g-import-not-at-top,wrong-import-position
from guide_jax import model as gmodel  # pylint: disable=g-import-not-at-top,wrong-import-position
from guide_jax import t5x_compat  # pylint: disable=g-import-not-at-top,wrong-import-position

TIED = [pytest.param(True, id="tied"), pytest.param(False, id="untied")]


def student_model(tied):
  return S.decoder_only_model(S.transformer_config(S.STUDENT_SHAPE, tied))


def check_student_runs_in_t5x(model, params):
  """t5x's forward (score_batch) runs and equals guide_jax's model on the same params."""
  config = t5x_compat.model_config_from_t5x(model.module.config)
  batch = S.batch(seed=2)
  scores = np.asarray(model.score_batch(params, batch))
  assert scores.shape == (S.BATCH,) and np.all(np.isfinite(scores))
  params = jax.device_get(params)
  np.testing.assert_allclose(np.asarray(gmodel.apply(config, params, batch["decoder_input_tokens"])),
                             S.t5x_logits(model, params, batch), atol=1e-5, rtol=0)


def t5x_configured(tied, restore_gin, bindings, model_dir, monkeypatch):
  """What `python -m t5x.train --gin_file=models/base.gin --gin_file=configs/runs/pretrain.gin
  --gin_file=<restore_gin> --gin.<bindings> --gin.MODEL_DIR=...` configures,
  parsed by t5x.gin_utils: (model, CheckpointConfig, partitioner, trainer_cls) as t5x.train gets
  them. pretrain.gin configures `__main__.train` (t5x/train.py run as a script): here that is
  t5x.train.train, which is not called."""
  monkeypatch.setattr(sys.modules["__main__"], "train", t5x_train.train, raising=False)
  gin.clear_config()
  t5x_gin_utils.parse_gin_flags(
      gin_search_paths=[],
      gin_files=[os.path.join(S.T5X_ROOT, "t5x/examples/decoder_only/models/base.gin"),
                 os.path.join(S.T5X_ROOT, "t5x/configs/runs/pretrain.gin"),
                 os.path.join(S.REPO, restore_gin),
                 os.path.join(S.REPO, "tests/t5x/local_vocab.gin")],
      gin_bindings=S.t5x_model_bindings(tied) + list(bindings) + [f"MODEL_DIR = '{model_dir}'",
          "MIXTURE_OR_TASK_NAME = 'unused'", "TASK_FEATURE_LENGTHS = {'targets': 12}", "TRAIN_STEPS = 3",
          "utils.create_learning_rate_scheduler.factors = 'constant'",
          "utils.create_learning_rate_scheduler.base_learning_rate = 0.01"],
      finalize_config=False)
  model = gin.query_parameter("%MODEL").scoped_configurable_fn()
  configurable = lambda obj: gin.get_configurable(obj)
  return (model, configurable(utils.CheckpointConfig)(), configurable(partitioning.PjitPartitioner)(),
          configurable(t5x_trainer.Trainer))


@pytest.fixture
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


@pytest.mark.parametrize("tied", TIED)
def test_convert_then_t5x_restores_the_student(tier, tied, clean_gin, monkeypatch):
  out = tier.converted(tied)
  assert sorted(os.listdir(out)) == ["checkpoint_0", "guide_info.json"]
  written = t5x_compat.load_t5x_params(os.path.join(out, "checkpoint_0"),
                                       t5x_compat.model_config_from_t5x(S.transformer_config(S.STUDENT_SHAPE, tied)))
  model_dir = str(tier.root / f"offline_run_{tied}")
  model, checkpoint_cfg, part, _ = t5x_configured(
      tied, "gin/t5x/restore_converted.gin", [f"STUDENT_INIT = '{out}/checkpoint_0'"], model_dir, monkeypatch)
  assert checkpoint_cfg.restore.state_transformation_fns[0].__wrapped__ is t5x_compat.drop_optimizer_state
  state, mngr = S.t5x_train_restore(model, checkpoint_cfg, model_dir, part)
  mngr.close()
  S.assert_trees_close(state.params, written)
  assert int(state.step) == 0
  check_student_runs_in_t5x(model, state.params)


@pytest.mark.parametrize("tied", TIED)
def test_restore_time_gin_route_equals_convert(tier, tied, clean_gin, monkeypatch):
  teacher_checkpoint, model_dir = tier.teacher(tied)[3], str(tier.root / f"gin_run_{tied}")
  model, checkpoint_cfg, part, _ = t5x_configured(
      tied, "gin/t5x/guide_restore.gin", [f"TEACHER_CHECKPOINT = '{teacher_checkpoint}'"], model_dir, monkeypatch)
  restore = checkpoint_cfg.restore
  assert (restore.path, restore.mode, restore.fallback_to_scratch) == (teacher_checkpoint, "specific", True)
  assert model.module.config == S.transformer_config(S.STUDENT_SHAPE, tied).replace(dtype="float32")
  state, mngr = S.t5x_train_restore(model, checkpoint_cfg, model_dir, part)
  mngr.close()
  offline = t5x_compat.load_t5x_params(os.path.join(tier.converted(tied), "checkpoint_0"),
                                       t5x_compat.model_config_from_t5x(model.module.config))
  S.assert_trees_close(state.params, offline, atol=1e-5)
  assert int(state.step) == 0
  check_student_runs_in_t5x(model, state.params)


def test_trainer_steps_save_and_resume_unchanged(tier, clean_gin, monkeypatch):
  """A GUIDE student (restore-time route) trained by t5x.trainer.Trainer, saved by t5x's checkpoint
  manager, then resumed as t5x.train resumes: the guide transformation with is_resuming=True."""
  model_dir = str(tier.root / "trained_run")
  model, checkpoint_cfg, part, trainer_cls = t5x_configured(
      True, "gin/t5x/guide_restore.gin", [f"TEACHER_CHECKPOINT = '{tier.teacher(True)[3]}'"], model_dir, monkeypatch)
  state, mngr = S.t5x_train_restore(model, checkpoint_cfg, model_dir, part)
  start = jax.device_get(state.params)
  trainer = trainer_cls(model=model, train_state=state, partitioner=part,
                        train_state_axes=S.initializer(model, part).train_state_axes, eval_names=[],
                        summary_dir=None, rng=jax.random.PRNGKey(0))
  trainer.train(iter([S.batch(seed=10 + i) for i in range(3)]), 3)
  trained = trainer.train_state
  assert int(trained.step) == 3
  assert not np.allclose(S.flat(trained.params)["decoder/token_embedder/embedding"],
                         S.flat(start)["decoder/token_embedder/embedding"])
  mngr.save(trained, checkpoint_cfg.save.state_transformation_fns)
  mngr.wait_until_finished()
  mngr.close()
  trainer.close()

  resumed, mngr = S.t5x_train_restore(model, checkpoint_cfg, model_dir, part)
  mngr.close()
  assert int(resumed.step) == 3  # t5x restores the step at the resume config's dtype (float32)
  S.assert_trees_close(resumed.params, trained.params)
  S.assert_trees_close(resumed.state_dict()["state"]["param_states"], trained.state_dict()["state"]["param_states"])
