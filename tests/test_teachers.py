"""Teacher sources as one protocol (guide_jax.teachers): detection, checks before any array is read,
reads onto shardings, the one finiteness pass per load, and how many passes a run makes."""
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from guide_jax import checkpoints, gin_utils, model, sharding, t5x_compat, teachers
from guide_jax.transforms import validate
from test_train import MICRO, micro_bindings, run_train

STUDENT = ["config.ModelConfig.d_model = 32", "config.ModelConfig.n_layers = 2", "config.ModelConfig.n_heads = 2",
           "config.ModelConfig.head_dim = 16", "config.ModelConfig.mlp_dim = 64"]


def teacher_config(**changes):
  """The micro runs' teacher shape (test_train.teacher_dir's), from the same gin file."""
  config = gin_utils.model_from_gin("gin/models/tiny_student.gin", ["VOCAB_SIZE = 2048", *STUDENT]).replace(
      d_model=48, n_layers=3)
  return config.replace(**changes)


def save_guide_jax(path, config, params=None):
  params = model.init_params(config, jax.random.PRNGKey(0)) if params is None else params
  mngr = checkpoints.manager(str(path), params_only=True)
  checkpoints.save(mngr, 0, params, None, config, force=True)
  return str(path)


def test_formats_are_detected_and_read_onto_their_shardings(tmp_path):
  config = teacher_config()
  params = model.init_params(config, jax.random.PRNGKey(1))
  mesh = sharding.make_mesh(2)
  ours = save_guide_jax(tmp_path / "ours", config, params)
  t5x_config = config.replace(position_embedding="relpos")
  t5x_params = model.init_params(t5x_config, jax.random.PRNGKey(2))
  t5x_compat.write_t5x_checkpoint(str(tmp_path / "t5x"), t5x_params, t5x_config, step=7)
  assert teachers.describe(ours).format == "guide_jax"
  with pytest.raises(ValueError, match="needs its ModelConfig"):
    teachers.load(str(tmp_path / "t5x"), mesh)
  for source, cfg, want in [(ours, config, params),
                            (teachers.Source(str(tmp_path / "t5x"), config=t5x_config), t5x_config, t5x_params),
                            (teachers.Source(str(tmp_path / "t5x" / "checkpoint_7"), "t5x", t5x_config), t5x_config,
                             t5x_params)]:
    got, got_config, _ = teachers.load(source, mesh)
    assert got_config == cfg
    shardings = sharding.param_shardings(cfg, mesh)
    for a, b, sh in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want),
                        jax.tree_util.tree_leaves(shardings)):
      assert a.sharding == sh
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  with pytest.raises(ValueError, match="no teacher checkpoint of a known format"):
    teachers.load(str(tmp_path), mesh)
  with pytest.raises(ValueError, match="no checkpoints under"):
    teachers.load(str(tmp_path / "missing"), mesh)
  with pytest.raises(ValueError, match="format must be one of"):
    teachers.Source(ours, format="safetensors")


def test_every_metadata_check_runs_before_any_array_is_read(tmp_path, monkeypatch):
  ours = save_guide_jax(tmp_path / "ours", teacher_config())
  for name, fmt in teachers.FORMATS.items():
    monkeypatch.setitem(teachers.FORMATS, name, fmt._replace(read=lambda *a: pytest.fail("read before checks")))
  with pytest.raises(ValueError, match="teacher/student vocab mismatch: teacher vocab_size 2048 != student 1024"):
    teachers.load(ours, None, vocab_size=1024)
  with pytest.raises(ValueError, match="carries its ModelConfig"):
    teachers.load(teachers.Source(ours, config=teacher_config()), None)
  config = teacher_config(position_embedding="relpos")
  t5x_compat.write_t5x_checkpoint(str(tmp_path / "t5x"), model.init_params(config, jax.random.PRNGKey(0)), config)
  with pytest.raises(ValueError, match="does not match its config: .*mlp_dim|does not match its config"):
    teachers.load(teachers.Source(str(tmp_path / "t5x"), "t5x", config.replace(mlp_dim=32)), None)


def test_non_finite_teacher_is_refused_where_it_is_read(tmp_path):
  config = teacher_config()
  params = jax.tree_util.tree_map(np.array, model.init_params(config, jax.random.PRNGKey(0)))
  params["decoder"]["layers_2"]["mlp"]["wo"]["kernel"][0, 0] = np.inf
  ours = save_guide_jax(tmp_path / "ours", config, params)
  with pytest.raises(ValueError, match="NaN or Inf in: decoder/layers_2/mlp/wo/kernel"):
    teachers.load(ours, sharding.make_mesh(1))
  t5x_config = config.replace(position_embedding="relpos")
  t5x_params = jax.tree_util.tree_map(np.array, model.init_params(t5x_config, jax.random.PRNGKey(0)))
  t5x_params["decoder"]["token_embedder"]["embedding"][3, 4] = np.nan
  t5x_compat.write_t5x_checkpoint(str(tmp_path / "t5x"), t5x_params, t5x_config)
  with pytest.raises(ValueError, match="NaN or Inf in: decoder/token_embedder/embedding"):
    teachers.load(teachers.Source(str(tmp_path / "t5x"), "t5x", t5x_config), None)


def _save_t5x_tree(path, target):
  ocp.PyTreeCheckpointer().save(os.path.join(path, "checkpoint_0", "state"),
                                {"target": target, "state": {"step": np.int32(0)}})
  return path


def test_scanned_encoder_decoder_and_legacy_t5x_checkpoints_are_refused_naming_why(tmp_path):
  config = teacher_config(position_embedding="relpos")
  ones = lambda *shape: np.ones(shape, np.float32)
  enc_dec = _save_t5x_tree(str(tmp_path / "t5"), {"encoder": {"layers_0": {"mlp": {"wo": {"kernel": ones(4, 4)}}}},
                                                 "decoder": {"layers_0": {"mlp": {"wo": {"kernel": ones(4, 4)}}}}})
  with pytest.raises(ValueError, match="encoder-decoder .*decoder-only models"):
    teachers.load(teachers.Source(enc_dec, config=config), None)
  scanned = _save_t5x_tree(str(tmp_path / "scanned"), {"decoder": {"layers": {"mlp": {"wo": {"kernel": ones(3, 4, 4)}}},
                                                                  "decoder_norm": {"scale": ones(4)}}})
  with pytest.raises(ValueError, match="scanned checkpoint .*scan_layers=True"):
    teachers.load(teachers.Source(scanned, config=config), None)
  legacy = tmp_path / "legacy" / "checkpoint_100"
  legacy.mkdir(parents=True)
  (legacy / "checkpoint").write_bytes(b"\x80")  # a msgpack file: what t5x's legacy checkpointer writes
  if t5x_compat.checkpoint_io._t5x() is None:  # this venv: no t5x (the t5x tier reads one through t5x)
    with pytest.raises(ValueError, match="(?s)legacy t5x checkpoint .*t5x is not importable.*load_t5x_checkpoint.*write_t5x_checkpoint"):
      teachers.load(teachers.Source(str(legacy.parent), config=config), None)


# ------------------------------------------------------------------ full passes over the teacher
class _Counter:
  """Counts the finiteness passes (validate.check_finite on any tree) and the teacher reads."""

  def __init__(self, monkeypatch):
    self.passes, self.reads = 0, 0
    check = validate.check_finite

    def counted_check(*a, **k):
      self.passes += 1
      return check(*a, **k)
    monkeypatch.setattr(validate, "check_finite", counted_check)
    for name, fmt in teachers.FORMATS.items():
      def counted_read(*a, _read=fmt.read, **k):
        self.reads += 1
        return _read(*a, **k)
      monkeypatch.setitem(teachers.FORMATS, name, fmt._replace(read=counted_read))


@pytest.mark.parametrize("files", [["gin/guide.gin", "gin/kd.gin"], ["gin/prune.gin"]], ids=["guide_kd", "prune"])
def test_one_full_pass_over_the_teacher_per_run(tmp_path, monkeypatch, files):
  """GUIDE + KD (the same teacher for the start and for KD) and pruning: one read, one pass."""
  teacher = save_guide_jax(tmp_path / "teacher", teacher_config())
  count = _Counter(monkeypatch)
  result = run_train(MICRO + files, micro_bindings(tmp_path / "run", steps=2, TEACHER_DIR=repr(teacher)))
  assert result["finished"]
  assert (count.reads, count.passes) == (1, 1)
