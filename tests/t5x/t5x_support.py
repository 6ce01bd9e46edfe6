"""Helpers for the t5x tier: t5x's own decoder-only model, partitioner, train state and orbax
checkpoint manager, used exactly as t5x.train uses them (no stand-ins)."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import seqio
from flax.traverse_util import flatten_dict
from t5x import adafactor, models, partitioning, utils
from t5x.examples.decoder_only import network

VOCAB = 64
SEQ = 12
BATCH = 8  # divisible by the 8 virtual CPU devices (t5x puts the batch on the 'data' axis)
INPUT_SHAPES = {"decoder_input_tokens": (BATCH, SEQ), "decoder_target_tokens": (BATCH, SEQ)}
INPUT_TYPES = {"decoder_input_tokens": jnp.int32, "decoder_target_tokens": jnp.int32}

# The shapes gin/t5x/teacher.gin and gin/t5x/student.gin describe (VOCAB_SIZE bound to VOCAB).
TEACHER_SHAPE = dict(emb_dim=32, num_heads=4, num_layers=3, head_dim=8, mlp_dim=64)
STUDENT_SHAPE = dict(emb_dim=16, num_heads=2, num_layers=2, head_dim=8, mlp_dim=32)


def transformer_config(shape: dict, tied: bool) -> network.TransformerConfig:
  """t5x's TransformerConfig as base.gin sets it (gated gelu), float32, no dropout."""
  return network.TransformerConfig(vocab_size=VOCAB, dtype=jnp.float32, mlp_activations=("gelu", "linear"),
                                   dropout_rate=0.0, logits_via_embedding=tied, **shape)


def decoder_only_model(config: network.TransformerConfig) -> models.DecoderOnlyModel:
  """t5x's DecoderOnlyModel as base.gin builds it, with a local vocabulary instead of gs://."""
  return models.DecoderOnlyModel(module=network.DecoderWrapper(config=config),
                                 vocabulary=seqio.PassThroughVocabulary(size=VOCAB),
                                 optimizer_def=adafactor.Adafactor(decay_rate=0.8, step_offset=0),
                                 z_loss=1e-4)


def partitioner() -> partitioning.PjitPartitioner:
  return partitioning.PjitPartitioner(num_partitions=1)


def initializer(model: models.DecoderOnlyModel, part) -> utils.TrainStateInitializer:
  return utils.TrainStateInitializer(optimizer_def=model.optimizer_def, init_fn=model.get_initial_variables,
                                     input_shapes=INPUT_SHAPES, input_types=INPUT_TYPES, partitioner=part)


def restore_config(path: str, fns, **kw) -> utils.RestoreCheckpointConfig:
  """mode='specific'; with transformations, fallback_to_scratch (t5x allows it only with some)."""
  return utils.RestoreCheckpointConfig(path=path, mode="specific", fallback_to_scratch=bool(fns),
                                       state_transformation_fns=list(fns), **kw)


def restore(model, part, restore_cfg, model_dir, save_cfg=None, seed=0):
  """t5x.train's init-or-restore step: (train_state or None, t5x's orbax checkpoint manager)."""
  os.makedirs(model_dir, exist_ok=True)  # as t5x.train does (t5x's manager uses the parent of a missing dir)
  valid_cfg, paths = utils.get_first_valid_restore_config_and_paths([restore_cfg] if restore_cfg else [])
  return utils.create_checkpoint_manager_and_restore(
      initializer(model, part), part, valid_cfg, paths[0] if paths else None, jax.random.PRNGKey(seed),
      save_checkpoint_cfg=save_cfg or utils.SaveCheckpointConfig(period=1), model_dir=model_dir,
      use_orbax=True)


def make_and_save_teacher(model_dir: str, tied: bool, seed: int = 0):
  """A teacher made by t5x: TrainStateInitializer.from_scratch, saved by t5x's checkpoint manager.

  Norm scales are ones at init, so they are perturbed (through TrainState.replace_params) to make
  the norm-scale handling of GUIDE and of the forward pass matter. Returns
  (config, model, train_state, path of checkpoint_<step>).
  """
  config = transformer_config(TEACHER_SHAPE, tied)
  model, part = decoder_only_model(config), partitioner()
  state, mngr = restore(model, part, None, model_dir, seed=seed)
  assert state is None
  state = initializer(model, part).from_scratch(jax.random.PRNGKey(seed))
  rng = np.random.default_rng(seed)
  params = jax.tree_util.tree_map_with_path(
      lambda p, x: x * (1.0 + 0.3 * rng.standard_normal(x.shape).astype(np.float32))
      if "scale" in jax.tree_util.keystr(p) else x, state.params)
  state = state.replace_params(params)
  mngr.save(state)
  mngr.wait_until_finished()
  mngr.close()
  return config, model, state, os.path.join(model_dir, f"checkpoint_{int(state.step)}")


def batch(seed: int = 0) -> dict:
  """A decoder-only batch as seqio.DecoderFeatureConverter packs it (one sequence per row)."""
  rng = np.random.default_rng(seed)
  targets = rng.integers(1, VOCAB, size=(BATCH, SEQ)).astype(np.int32)
  inputs = np.concatenate([np.zeros((BATCH, 1), np.int32), targets[:, :-1]], axis=1)
  return {"decoder_input_tokens": inputs, "decoder_target_tokens": targets,
          "decoder_loss_weights": np.ones((BATCH, SEQ), np.float32)}


def t5x_logits(model: models.DecoderOnlyModel, params, b: dict) -> np.ndarray:
  """t5x's network forward (DecoderWrapper.apply, as DecoderOnlyModel._compute_logits calls it)."""
  return np.asarray(model.module.apply({"params": params}, b["decoder_input_tokens"], b["decoder_target_tokens"],
                                       enable_dropout=False, decode=False))


def flat(tree) -> dict:
  return {"/".join(k): np.asarray(v) for k, v in flatten_dict(jax.device_get(dict(tree))).items()}


def assert_trees_close(a, b, atol=0.0, rtol=0.0):
  fa, fb = flat(a), flat(b)
  assert sorted(fa) == sorted(fb), (sorted(set(fa) ^ set(fb)))
  for k in fa:
    assert fa[k].shape == fb[k].shape, (k, fa[k].shape, fb[k].shape)
    assert fa[k].dtype == fb[k].dtype, (k, fa[k].dtype, fb[k].dtype)
    np.testing.assert_allclose(fa[k], fb[k], atol=atol, rtol=rtol, err_msg=k)


# ------------------------------------------------------------------ gin: guide_jax's and t5x's side
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
T5X_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(utils.__file__)))  # holds t5x/configs, t5x/examples


def model_gin_bindings(shape: dict, tied: bool) -> list:
  """Bindings that make gin/t5x/teacher.gin or student.gin describe `shape` (t5x field names)."""
  names = {"emb_dim": "d_model", "num_layers": "n_layers", "num_heads": "n_heads", "head_dim": "head_dim",
           "mlp_dim": "mlp_dim"}
  return [f"config.ModelConfig.{names[k]} = {v}" for k, v in shape.items()] + [
      f"LOGITS_VIA_EMBEDDING = {tied}"]


def convert_command(teacher_checkpoint: str, output_dir: str, tied: bool) -> list:
  """README's offline convert command, with the tiny shapes bound on the command line."""
  import sys  # pylint: disable=g-import-not-at-top
  return ([sys.executable, "-m", "guide_jax.convert", f"--teacher_dir={teacher_checkpoint}",
           "--teacher_format=t5x", "--teacher_gin=gin/t5x/teacher.gin", f"--teacher_gin_bindings=VOCAB_SIZE = {VOCAB}"]
          + [f"--teacher_gin_bindings={b}" for b in model_gin_bindings(TEACHER_SHAPE, tied)]
          + ["--student_gin=gin/t5x/student.gin", "--format=t5x", f"--output_dir={output_dir}"]
          + [f"--gin.{b.replace(' ', '')}" for b in model_gin_bindings(STUDENT_SHAPE, tied)])


def t5x_model_bindings(tied: bool) -> list:
  """What a t5x user's command line adds to t5x's decoder_only base.gin for the student (and the
  teacher's shape for gin/t5x/guide_restore.gin): tiny shapes, float32, no dropout
  (tests/t5x/local_vocab.gin replaces base.gin's gs:// vocabulary)."""
  student = [f"network.TransformerConfig.{k} = {v}" for k, v in STUDENT_SHAPE.items()]
  teacher = [f"teacher/network.TransformerConfig.{k} = {v}" for k, v in TEACHER_SHAPE.items()]
  return student + teacher + [
      f"network.TransformerConfig.vocab_size = {VOCAB}", "network.TransformerConfig.dtype = 'float32'",
      f"network.TransformerConfig.logits_via_embedding = {tied}", "DROPOUT_RATE = 0.0"]


def t5x_train_restore(model, checkpoint_cfg, model_dir: str, part, seed: int = 0):
  """t5x.train's steps 1-2 of "init or restore" (t5x/train.py): resume from model_dir's latest
  checkpoint with the restore config's transformations partial(fn, is_resuming=True), else restore
  checkpoint_cfg.restore. Returns (train_state or None, checkpoint manager)."""
  import functools  # pylint: disable=g-import-not-at-top
  os.makedirs(model_dir, exist_ok=True)
  resume = utils.RestoreCheckpointConfig(
      path=model_dir, mode="latest", dtype=checkpoint_cfg.save.dtype if checkpoint_cfg.save else "float32",
      state_transformation_fns=[functools.partial(fn, is_resuming=True)
                                for fn in checkpoint_cfg.restore.state_transformation_fns])
  valid_cfg, paths = utils.get_first_valid_restore_config_and_paths([resume, checkpoint_cfg.restore])
  return utils.create_checkpoint_manager_and_restore(
      initializer(model, part), part, valid_cfg, paths[0] if paths else None, jax.random.PRNGKey(seed),
      save_checkpoint_cfg=checkpoint_cfg.save, model_dir=model_dir, use_orbax=True)
