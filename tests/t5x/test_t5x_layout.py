"""guide_jax's model against t5x's own decoder-only model: parameter shapes and logical axes,
checkpoints t5x wrote, logits (module.apply and DecoderOnlyModel.score_batch), and the shape
check before any t5x checkpoint is written."""
import os

import pytest

pytest.importorskip("t5x.models", reason="t5x is not installed (tests/t5x_tier.sh builds a venv with it)")

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
from flax.traverse_util import flatten_dict  # pylint: disable=g-import-not-at-top,wrong-import-position

import t5x_support as S  # pylint: disable=g-import-not-at-top,wrong-import-position
from guide_jax import model as gmodel  # pylint: disable=g-import-not-at-top,wrong-import-position
from guide_jax import t5x_compat  # pylint: disable=g-import-not-at-top,wrong-import-position

TIED = [pytest.param(True, id="tied"), pytest.param(False, id="untied")]


def t5x_logical_axes(model):
  """t5x's own logical axis names of every param ('params_axes' of get_initial_variables)."""
  variables = jax.eval_shape(lambda: model.get_initial_variables(
      jax.random.PRNGKey(0), S.INPUT_SHAPES, S.INPUT_TYPES))
  return {"/".join(k[:-1] + (k[-1].removesuffix("_axes"),)): tuple(v.names)
          for k, v in flatten_dict(dict(variables["params_axes"])).items()}


def our_token_scores(config, params, batch):
  logits = gmodel.apply(config, params, batch["decoder_input_tokens"])
  logp = jax.nn.log_softmax(logits.astype(np.float32))
  return np.take_along_axis(np.asarray(logp), batch["decoder_target_tokens"][..., None], -1)[..., 0]


@pytest.mark.parametrize("tied", TIED)
@pytest.mark.parametrize("which", ["teacher", "student"])
def test_param_shapes_and_logical_axes_are_t5x(which, tied):
  config = S.transformer_config(S.TEACHER_SHAPE if which == "teacher" else S.STUDENT_SHAPE, tied)
  model, part = S.decoder_only_model(config), S.partitioner()
  t5x_shapes = {k: tuple(v.shape) for k, v in S.flat(S.initializer(model, part).global_train_state_shape.params).items()}
  ours = t5x_compat.model_config_from_t5x(config)
  assert {k: tuple(v.shape) for k, v in S.flat(gmodel.param_shapes(ours)).items()} == t5x_shapes
  our_axes = {"/".join(k): tuple(v) for k, v in flatten_dict(dict(gmodel.logical_axes(ours))).items()}
  assert our_axes == t5x_logical_axes(model)


@pytest.mark.parametrize("tied", TIED)
def test_teacher_logits_and_score_batch_equal_guide_jax(tier, tied):
  config, model, saved, path = tier.teacher(tied)
  # The teacher as t5x reads it back (create_checkpoint_manager_and_restore, as t5x.train) ...
  state, mngr = S.restore(model, S.partitioner(), S.restore_config(path, []), str(tier.root / f"reader_{tied}"))
  mngr.close()
  S.assert_trees_close(state.params, saved.params)
  # ... and as guide_jax reads it (checked against the config, in shards or as numpy).
  ours = t5x_compat.model_config_from_t5x(config)
  assert (ours.position_embedding, ours.tie_embeddings, ours.mlp_activation) == ("relpos", tied, "gelu")
  S.assert_trees_close(t5x_compat.load_t5x_params(path, ours), state.params)

  params = jax.device_get(state.params)
  batch = S.batch(seed=1)
  np.testing.assert_allclose(np.asarray(gmodel.apply(ours, params, batch["decoder_input_tokens"])),
                             S.t5x_logits(model, params, batch), atol=1e-5, rtol=0)
  _, inter = model.score_batch(params, batch, return_intermediates=True)
  t5x_tokens = np.asarray(inter["decoder"]["token_scores"][0])
  np.testing.assert_allclose(our_token_scores(ours, params, batch), t5x_tokens, atol=1e-5, rtol=0)
  np.testing.assert_allclose(np.asarray(model.score_batch(params, batch)), t5x_tokens.sum(-1), atol=1e-5, rtol=1e-6)


def test_write_refuses_shapes_t5x_would_not_build(tmp_path):
  """The issue's failure: 3-D kernels restore in t5x without error and crash at the first forward."""
  config = t5x_compat.model_config_from_t5x(S.transformer_config(S.STUDENT_SHAPE, True))
  d, h, l = config.d_model, config.n_heads, config.head_dim
  params = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), gmodel.param_shapes(config))
  three_d = jax.tree_util.tree_map(lambda x: x, params)
  three_d["decoder"]["layers_0"]["self_attention"]["key"]["kernel"] = np.zeros((d, h, l), np.float32)
  with pytest.raises(t5x_compat.T5xCheckpointError,
                     match=r"decoder/layers_0/self_attention/key/kernel: \(16, 2, 8\) != config \(16, 16\)"):
    t5x_compat.write_t5x_checkpoint(str(tmp_path / "bad"), three_d, config)
  untied_extra = dict(params, decoder=dict(params["decoder"], logits_dense={"kernel": np.zeros((d, 64), np.float32)}))
  with pytest.raises(t5x_compat.T5xCheckpointError, match="unexpected decoder/logits_dense/kernel"):
    t5x_compat.write_t5x_checkpoint(str(tmp_path / "bad"), untied_extra, config)
  assert not os.path.exists(tmp_path / "bad")
  # What passes the check is what t5x restores and runs.
  path = t5x_compat.write_t5x_checkpoint(str(tmp_path / "good"), params, config)
  model = S.decoder_only_model(S.transformer_config(S.STUDENT_SHAPE, True))
  state, mngr = S.restore(model, S.partitioner(), S.restore_config(path, [t5x_compat.drop_optimizer_state]),
                          str(tmp_path / "run"))
  mngr.close()
  S.assert_trees_close(state.params, params)
  assert np.all(np.isfinite(np.asarray(model.score_batch(state.params, S.batch()))))


@pytest.mark.parametrize("tied", TIED)
def test_legacy_msgpack_checkpoint_is_read_through_t5x(tier, tied, tmp_path):
  """A legacy checkpoint (t5x.checkpoints.Checkpointer: msgpack + tensorstore, what public T5X
  checkpoints and `--gin.train.use_orbax=False` are) is read by guide_jax.teachers through t5x's
  own loader, onto the mesh's shardings, equal to what t5x saved."""
  from t5x import checkpoints as t5x_checkpoints  # pylint: disable=g-import-not-at-top
  from guide_jax import sharding, teachers  # pylint: disable=g-import-not-at-top
  config, _, saved, _ = tier.teacher(tied)
  legacy_dir = str(tmp_path / "legacy")
  t5x_checkpoints.Checkpointer(saved, S.partitioner(), legacy_dir).save(saved)
  step_dir = os.path.join(legacy_dir, f"checkpoint_{int(saved.step)}")
  assert os.path.isfile(os.path.join(step_dir, "checkpoint"))  # the msgpack file: a legacy checkpoint
  ours = t5x_compat.model_config_from_t5x(config)
  mesh = sharding.make_mesh(model_parallel=jax.device_count())
  params, got_config, _ = teachers.load(teachers.Source(legacy_dir, config=ours), mesh)
  assert got_config == ours
  S.assert_trees_close(params, saved.params)
