"""guide_jax.t5x_compat without t5x: config translation, the gin/t5x model gins, checkpoint
detection and the shape check before writing. Everything that claims to match t5x itself is
tested against real t5x in tests/t5x/ (tests/t5x_tier.sh)."""
import os
import subprocess
import sys
import types

import jax
import numpy as np
import pytest

from guide_jax import convert, gin_utils, model, t5x_compat
from guide_jax.config import GuideConfig
from guide_jax.transforms import validate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = dict(vocab_size=32, emb_dim=8, num_heads=2, num_layers=1, head_dim=4, mlp_dim=16)


def zeros(config):
  return jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), model.param_shapes(config))


def test_model_config_from_t5x_fields_and_errors():
  cfg = t5x_compat.model_config_from_t5x(**BASE, mlp_activations=("swish", "linear"), dtype="bfloat16")
  assert (cfg.mlp_activation, cfg.position_embedding, cfg.relpos_buckets, cfg.relpos_max_distance,
          cfg.tie_embeddings, cfg.dtype, cfg.norm_eps) == ("silu", "relpos", 32, 128, False, "bfloat16", 1e-6)
  as_object = types.SimpleNamespace(**BASE, mlp_activations=("gelu", "linear"), logits_via_embedding=True,
                                    dropout_rate=0.1)
  cfg = t5x_compat.model_config_from_t5x(as_object)
  assert (cfg.d_model, cfg.n_heads, cfg.head_dim, cfg.tie_embeddings, cfg.mlp_activation) == (8, 2, 4, True, "gelu")
  assert t5x_compat.as_model_config(as_object) == cfg == t5x_compat.as_model_config(dict(vars(as_object)))
  with pytest.raises(ValueError, match="non-gated"):
    t5x_compat.model_config_from_t5x(**BASE, mlp_activations=("relu",))
  with pytest.raises(ValueError, match="non-gated"):
    t5x_compat.model_config_from_t5x(**BASE)  # t5x's default ('relu',)
  with pytest.raises(ValueError, match="unsupported t5x mlp_activations"):
    t5x_compat.model_config_from_t5x(**BASE, mlp_activations=("linear", "gelu"))
  with pytest.raises(ValueError, match="missing mlp_dim"):
    t5x_compat.model_config_from_t5x(**{k: v for k, v in BASE.items() if k != "mlp_dim"})
  with pytest.raises(ValueError, match="student_config is required"):
    t5x_compat.as_model_config(None, "student_config")


@pytest.mark.parametrize("tied", [True, False])
def test_t5x_model_gins_describe_t5x_decoder_only(tied):
  bindings = [f"LOGITS_VIA_EMBEDDING = {tied}"]
  teacher = gin_utils.model_from_gin("gin/t5x/teacher.gin", bindings)
  student = gin_utils.model_from_gin("gin/t5x/student.gin", [f"VOCAB_SIZE = {teacher.vocab_size}", *bindings])
  # teacher.gin is t5x's decoder_only base.gin, as model_config_from_t5x reads that TransformerConfig.
  assert teacher == t5x_compat.model_config_from_t5x(
      vocab_size=32128, emb_dim=768, num_heads=12, num_layers=12, head_dim=64, mlp_dim=2048,
      mlp_activations=("gelu", "linear"), logits_via_embedding=tied)
  assert (student.position_embedding, student.tie_embeddings, student.mlp_activation) == ("relpos", tied, "gelu")
  validate.check_dimensions(teacher, student)


def test_find_t5x_checkpoint_kinds(tmp_path):
  with pytest.raises(t5x_compat.T5xCheckpointError, match="does not exist"):
    t5x_compat.find_t5x_checkpoint(str(tmp_path / "missing"))
  legacy = tmp_path / "legacy" / "checkpoint_3"
  legacy.mkdir(parents=True)
  (legacy / "checkpoint").write_bytes(b"")
  for path in (legacy, legacy.parent):  # the step dir, or the model dir holding it: found, read through t5x
    found = t5x_compat.find_t5x_checkpoint(str(path))
    assert found == str(legacy) and t5x_compat.is_legacy(found)
  incomplete = tmp_path / "incomplete" / "checkpoint_5" / "state"
  incomplete.mkdir(parents=True)
  with pytest.raises(t5x_compat.T5xCheckpointError, match="incomplete"):
    t5x_compat.find_t5x_checkpoint(str(incomplete.parent))
  with pytest.raises(t5x_compat.T5xCheckpointError, match="no t5x checkpoint"):
    t5x_compat.find_t5x_checkpoint(str(tmp_path))


def test_write_checks_shapes_then_round_trips(tmp_path):
  config = t5x_compat.model_config_from_t5x(**BASE, mlp_activations=("gelu", "linear"))
  params = zeros(config)
  bad = jax.tree_util.tree_map(lambda x: x, params)
  bad["decoder"]["layers_0"]["self_attention"]["query"]["kernel"] = np.zeros((8, 2, 4), np.float32)
  with pytest.raises(t5x_compat.T5xCheckpointError,
                     match=r"decoder/layers_0/self_attention/query/kernel: \(8, 2, 4\) != config \(8, 8\)"):
    t5x_compat.write_t5x_checkpoint(str(tmp_path / "bad"), bad, config)
  del bad["decoder"]["logits_dense"]
  with pytest.raises(t5x_compat.T5xCheckpointError, match="missing decoder/logits_dense/kernel"):
    t5x_compat.write_t5x_checkpoint(str(tmp_path / "bad"), bad, config)
  assert not os.path.exists(tmp_path / "bad")
  rng = np.random.default_rng(0)
  params = jax.tree_util.tree_map(lambda x: rng.standard_normal(x.shape).astype(np.float32), params)
  path = t5x_compat.write_t5x_checkpoint(str(tmp_path / "good"), params, config, step=7)
  assert path == str(tmp_path / "good" / "checkpoint_7")
  with pytest.raises(t5x_compat.T5xCheckpointError, match="already exists"):
    t5x_compat.write_t5x_checkpoint(str(tmp_path / "good"), params, config, step=7)
  loaded = t5x_compat.load_t5x_params(str(tmp_path / "good"), config)  # model dir -> latest step
  for k, v in validate.flatten(params).items():
    np.testing.assert_array_equal(validate.flatten(loaded)[k], v)
  with pytest.raises(t5x_compat.T5xCheckpointError, match="does not match its config: .*mlp"):
    t5x_compat.check_t5x_checkpoint(path, config.replace(mlp_dim=12))
  # convert names the same problems before computing anything.
  with pytest.raises(ValueError, match="does not match its config"):
    convert.convert(path, config.replace(mlp_dim=8), str(tmp_path / "out"), teacher_format="t5x",
                    teacher_config=config.replace(mlp_dim=12), output_format="t5x")
  assert not os.path.exists(tmp_path / "out")


def test_transformations_when_resuming_and_their_argument_checks():
  state = {"target": {"decoder": {}}, "state": {"step": np.int32(5)}}
  assert t5x_compat.guide_state_transformation(state, {}, is_resuming=True) is state
  assert t5x_compat.drop_optimizer_state(state, {}, is_resuming=True) is state
  assert t5x_compat.drop_optimizer_state(state, {}) == {"target": state["target"]}
  teacher = t5x_compat.model_config_from_t5x(**BASE, mlp_activations=("gelu", "linear"))
  student = teacher.replace(d_model=4)
  with pytest.raises(ValueError, match="student_config is required"):
    t5x_compat.guide_state_transformation(state, {}, teacher_config=teacher)
  with pytest.raises(ValueError, match="d_model"):  # guide_init's check, before any compute
    t5x_compat.guide_state_transformation({"target": zeros(student)}, {"target": zeros(teacher)},
                                          teacher_config=student, student_config=teacher)
  wrong = {"target": zeros(student.replace(mlp_dim=8))}
  with pytest.raises(ValueError, match="not the model t5x is building"):
    t5x_compat.guide_state_transformation({"target": zeros(teacher)}, wrong, teacher_config=teacher,
                                          student_config=student, guide=GuideConfig())


def test_import_does_not_load_t5x_gin_seqio_or_tensorflow():
  code = ("import sys, guide_jax.t5x_compat; "
          "print(sorted(m for m in sys.modules if m.split('.')[0] in "
          "{'t5x', 'gin', 'seqio', 'tensorflow', 'tensorflow_datasets'}))")
  res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert res.returncode == 0, res.stderr[-2000:]
  assert res.stdout.strip() == "[]"
