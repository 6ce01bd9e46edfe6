"""guide_jax.student_shape: students named by overrides of the teacher's config or by a budget."""
import pytest

from guide_jax import student_shape
from guide_jax.config import ModelConfig

# Llama 3.2 1B's shape (MHA here: kv heads follow n_heads when ModelConfig has them).
TEACHER = ModelConfig(vocab_size=128256, d_model=2048, n_layers=16, n_heads=32, head_dim=64, mlp_dim=8192,
                      mlp_activation="silu", rope_theta=500000.0, rope_scaling="llama3",
                      rope_scaling_factor=32.0, rope_original_max_positions=8192)


def test_parse_overrides():
  assert student_shape.parse_overrides("d_model=1024 n_layers=12,dtype=bfloat16") == {
      "d_model": 1024, "n_layers": 12, "dtype": "bfloat16"}
  for bad in ("d_model", "=3", "n_layers=1 n_layers=2"):
    with pytest.raises(ValueError):
      student_shape.parse_overrides(bad)


def test_overrides_keep_the_family_ratios():
  s = student_shape.from_overrides(TEACHER, {"d_model": 1024, "n_layers": 8})
  assert (s.d_model, s.n_layers, s.n_heads, s.head_dim, s.mlp_dim) == (1024, 8, 16, 64, 4096)
  assert (s.rope_scaling, s.rope_theta, s.mlp_activation, s.vocab_size) == ("llama3", 500000.0, "silu", 128256)
  s = student_shape.from_overrides(TEACHER, {"d_model": 1024, "n_heads": 8, "mlp_dim": 3000})
  assert (s.n_heads, s.mlp_dim) == (8, 3000)


def test_overrides_refused():
  with pytest.raises(ValueError, match="unknown ModelConfig field"):
    student_shape.from_overrides(TEACHER, {"width": 3})
  with pytest.raises(ValueError, match="vocab_size must be the teacher's"):
    student_shape.from_overrides(TEACHER, {"vocab_size": 1000})
  with pytest.raises(ValueError, match="width per head"):
    student_shape.from_overrides(TEACHER, {"d_model": 1000})
  with pytest.raises(ValueError, match="student"):
    student_shape.from_overrides(TEACHER, {"n_layers": 0})


@pytest.mark.parametrize("budget", [1e8, 3e8, 6e8, 1e9])
def test_budget(budget):
  s = student_shape.from_budget(TEACHER, budget)
  assert abs(s.num_params / budget - 1) <= student_shape.BUDGET_TOLERANCE
  assert s.head_dim == 64 and s.d_model % 128 == 0 and s.d_model == 64 * s.n_heads
  assert s.n_layers <= TEACHER.n_layers and s.d_model <= TEACHER.d_model
  assert s.mlp_dim == round(4 * s.d_model / 256) * 256 or s.mlp_dim % 8 == 0
  assert "params" in student_shape.describe(s, TEACHER)


def test_budget_refused_and_resolve():
  with pytest.raises(ValueError, match="more than the teacher"):
    student_shape.from_budget(TEACHER, 1e12)
  with pytest.raises(ValueError, match="not both"):
    student_shape.resolve(TEACHER, "n_layers=2", 1e8)
  assert student_shape.resolve(TEACHER) is None
  assert student_shape.resolve(TEACHER, "n_layers=2").n_layers == 2


def test_to_gin_round_trip(tmp_path):
  from guide_jax import gin_utils
  s = student_shape.from_overrides(TEACHER, {"d_model": 1024, "n_layers": 8})
  path = tmp_path / "model.gin"
  path.write_text(student_shape.to_gin(s, "a student"))
  assert gin_utils.model_from_gin(str(path)) == s


def test_gqa_teacher_keeps_its_heads_per_kv_head():
  teacher = TEACHER.replace(n_kv_heads=8)  # Llama 3.2 1B: 32 heads, 8 kv heads
  s = student_shape.from_overrides(teacher, {"d_model": 1024})
  assert (s.n_heads, s.n_kv_heads) == (16, 4)
  s = student_shape.from_budget(teacher, 5e8)
  assert s.n_heads % 4 == 0 and s.n_kv_heads == s.n_heads // 4
  assert student_shape.from_overrides(teacher, {"n_heads": 16, "n_kv_heads": 2}).n_kv_heads == 2
  with pytest.raises(ValueError, match="query heads per kv head"):
    student_shape.from_overrides(teacher, {"n_heads": 6})
