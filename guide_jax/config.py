"""ModelConfig (the shape of a decoder-only transformer) and GuideConfig (how GUIDE maps a teacher
into it): frozen dataclasses, validated on construction."""
import dataclasses
from typing import Optional

POSITION_EMBEDDINGS = ("rope", "relpos")
MLP_ACTIVATIONS = ("gelu", "silu", "relu", "gelu_exact")  # gelu: tanh approximation; gelu_exact: erf
ROPE_SCALINGS = ("none", "linear", "llama3")
DTYPES = ("float32", "bfloat16")
REMAT_POLICIES = ("none", "full", "dots")
BLOCKS = ("first", "all", "none")
OTHER_BLOCKS = ("uniform_selection", "random")
LAYER_SELECTIONS = ("first_n", "uniform")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Hyperparameters of guide_jax.model.Transformer (t5x decoder-only layout).

  d_model (d), n_layers (n), n_heads (h), head_dim (l), mlp_dim (f), vocab_size (V).
  position_embedding: 'rope' (rotate-half RoPE) or 'relpos' (t5x's T5 relative biases).
  dtype: activation dtype; params are always stored in param_dtype (float32).
  mlp_activation: 'gelu' (tanh approximation, t5x's), 'gelu_exact' (erf), 'silu' or 'relu'.
  rope_scaling: RoPE frequency scaling as transformers computes it (guide_jax.model.rope_frequencies):
    'none'; 'linear' (every frequency / rope_scaling_factor); 'llama3' (Llama 3.1: wavelengths below
    rope_original_max_positions / rope_high_freq_factor kept, above rope_original_max_positions /
    rope_low_freq_factor divided by rope_scaling_factor, interpolated in between). The factors are
    used only by the scalings that name them and must keep their defaults otherwise.
  """
  vocab_size: int
  d_model: int
  n_layers: int
  n_heads: int
  head_dim: int
  mlp_dim: int
  tie_embeddings: bool = True
  position_embedding: str = "rope"
  rope_theta: float = 10000.0
  relpos_buckets: int = 32
  relpos_max_distance: int = 128
  mlp_activation: str = "gelu"
  norm_eps: float = 1e-6
  dtype: str = "float32"
  param_dtype: str = "float32"
  remat: str = "none"
  attention_impl: str = "xla"  # passed to jax.nn.dot_product_attention ('xla' | 'cudnn')
  rope_scaling: str = "none"
  rope_scaling_factor: float = 1.0
  rope_low_freq_factor: float = 1.0
  rope_high_freq_factor: float = 4.0
  rope_original_max_positions: int = 8192

  def __post_init__(self):
    for name in ("vocab_size", "d_model", "n_layers", "n_heads", "head_dim", "mlp_dim"):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"ModelConfig.{name} must be a positive int, got {value!r}")
    _check_choice("position_embedding", self.position_embedding, POSITION_EMBEDDINGS)
    _check_choice("mlp_activation", self.mlp_activation, MLP_ACTIVATIONS)
    _check_choice("dtype", self.dtype, DTYPES)
    _check_choice("param_dtype", self.param_dtype, DTYPES)
    _check_choice("remat", self.remat, REMAT_POLICIES)
    _check_choice("attention_impl", self.attention_impl, ("xla", "cudnn"))
    if self.position_embedding == "rope" and self.head_dim % 2:
      raise ValueError(f"RoPE needs an even head_dim, got {self.head_dim}")
    self._check_rope_scaling()

  def _check_rope_scaling(self):
    _check_choice("rope_scaling", self.rope_scaling, ROPE_SCALINGS)
    if self.rope_scaling != "none" and self.position_embedding != "rope":
      raise ValueError(f"ModelConfig.rope_scaling={self.rope_scaling!r} needs position_embedding='rope'")
    floats = ("rope_scaling_factor", "rope_low_freq_factor", "rope_high_freq_factor")
    for name in floats:
      value = getattr(self, name)
      if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
        raise ValueError(f"ModelConfig.{name} must be a number > 0, got {value!r}")
    value = self.rope_original_max_positions
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
      raise ValueError(f"ModelConfig.rope_original_max_positions must be a positive int, got {value!r}")
    used = {"none": (), "linear": ("rope_scaling_factor",), "llama3": floats + ("rope_original_max_positions",)}
    for name in floats + ("rope_original_max_positions",):
      default = ModelConfig.__dataclass_fields__[name].default
      if name not in used[self.rope_scaling] and getattr(self, name) != default:
        raise ValueError(f"ModelConfig.{name}={getattr(self, name)!r} is not used by "
                         f"rope_scaling={self.rope_scaling!r}; leave it at {default!r}")
    if self.rope_scaling == "llama3" and not self.rope_low_freq_factor < self.rope_high_freq_factor:
      raise ValueError("ModelConfig.rope_low_freq_factor must be < rope_high_freq_factor, got "
                       f"{self.rope_low_freq_factor} and {self.rope_high_freq_factor}")

  def replace(self, **changes) -> "ModelConfig":
    return dataclasses.replace(self, **changes)

  @property
  def num_params(self) -> int:
    """Parameter count (embedding included once when tied)."""
    d, h, l, f, v = self.d_model, self.n_heads, self.head_dim, self.mlp_dim, self.vocab_size
    block = 4 * d * h * l + 3 * d * f + 2 * d
    extra = (self.n_heads * self.relpos_buckets) if self.position_embedding == "relpos" else 0
    return v * d * (1 if self.tie_embeddings else 2) + self.n_layers * block + d + extra

  def train_flops_per_token(self, seq_len: int) -> float:
    """Training FLOPs per token: 6 * (matmul params) + 12 * n * h * l * seq_len (attention)."""
    return 3 * self.forward_flops_per_token(seq_len)

  def forward_flops_per_token(self, seq_len: int) -> float:
    """Forward FLOPs per token: 2 * (matmul params incl. output layer) + 4 * n * h * l * seq_len."""
    d, h, l, f, v = self.d_model, self.n_heads, self.head_dim, self.mlp_dim, self.vocab_size
    matmul_params = self.n_layers * (4 * d * h * l + 3 * d * f) + d * v
    return 2 * matmul_params + 4 * self.n_layers * h * l * seq_len


def _check_positive_int(name, value, what=""):
  if not isinstance(value, int) or isinstance(value, bool) or value < 1:
    raise ValueError(f"{name} must be a positive int{' ' + what if what else ''}, got {value!r}")


def _check_choice(name, value, choices, owner="ModelConfig"):
  if value not in choices:
    raise ValueError(f"{owner}.{name} must be one of {choices}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class GuideConfig:
  """How GUIDE maps a teacher into a student (GUIDE_SPEC.md sections 1-3; each field a [choice] knob).

  blocks: which student blocks get the PCA mapping: 'first' (the paper), 'all' or 'none'.
  other_blocks: how the remaining blocks start: 'uniform_selection' of the teacher's layer, or
    'random' (the student's own init from PRNGKey(seed)).
  layer_selection: which teacher layer feeds each student layer: 'first_n' or 'uniform'.
  center: student table (E_T - mu) M instead of E_T M.
  seed: PRNG seed of the parts that start at random.
  """
  blocks: str = "first"
  other_blocks: str = "uniform_selection"
  layer_selection: str = "first_n"
  center: bool = False
  seed: int = 0

  def __post_init__(self):
    _check_choice("blocks", self.blocks, BLOCKS, "GuideConfig")
    _check_choice("other_blocks", self.other_blocks, OTHER_BLOCKS, "GuideConfig")
    _check_choice("layer_selection", self.layer_selection, LAYER_SELECTIONS, "GuideConfig")
    if not isinstance(self.center, bool):
      raise ValueError(f"GuideConfig.center must be a bool, got {self.center!r}")
    if not isinstance(self.seed, int) or isinstance(self.seed, bool):
      raise ValueError(f"GuideConfig.seed must be an int, got {self.seed!r}")

  def replace(self, **changes) -> "GuideConfig":
    return dataclasses.replace(self, **changes)

  @property
  def starts_random(self) -> bool:
    """True when some student block starts from the student's random init."""
    return self.other_blocks == "random" and self.blocks != "all"


# ---------------------------------------------------------------------------- run configuration
# train()'s arguments grouped as t5x's DatasetConfig / CheckpointConfig (gin binds their fields).

@dataclasses.dataclass(frozen=True)
class DataConfig:
  """What the run reads. data_dir: a prepared-data directory (python -m guide_jax.data.prepare);
  without it the built-in `corpus` is prepared under cache_dir on first use (that step imports
  seqio and TensorFlow; training from prepared data needs neither)."""
  corpus: str = "shakespeare"
  data_dir: Optional[str] = None
  cache_dir: str = "cache"
  vocab_size: int = 8000
  seq_len: int = 128
  batch_size: int = 32
  eval_max_batches: Optional[int] = None

  def __post_init__(self):
    for name in ("vocab_size", "seq_len", "batch_size"):
      _check_positive_int(f"DataConfig.{name}", getattr(self, name))
    if self.eval_max_batches is not None:
      _check_positive_int("DataConfig.eval_max_batches", self.eval_max_batches, "or None (every batch)")


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  """How the run saves and where it may start from.

  init_params_dir: a params-only start (init order step 2): a guide_jax run or convert output
    whose params (not its optimizer state or step) seed this run.
  restore_step: resume from this step instead of the latest (e.g. when the latest is corrupt).
  allow_changed_run: resume even when this run's settings differ from the checkpoint's.
  """
  save_every: int = 200
  keep: int = 2
  init_params_dir: Optional[str] = None
  restore_step: Optional[int] = None
  allow_changed_run: bool = False

  def __post_init__(self):
    _check_positive_int("CheckpointConfig.save_every", self.save_every)
    # keep=0 would let orbax delete every step, the final one too: a finished run with no checkpoint.
    _check_positive_int("CheckpointConfig.keep", self.keep, "(the number of recent steps kept; >= 1)")
    if self.restore_step is not None and (not isinstance(self.restore_step, int) or isinstance(
        self.restore_step, bool) or self.restore_step < 0):
      raise ValueError(f"CheckpointConfig.restore_step must be a step number >= 0 or None, got {self.restore_step!r}")
    if not isinstance(self.allow_changed_run, bool):
      raise ValueError(f"CheckpointConfig.allow_changed_run must be a bool, got {self.allow_changed_run!r}")


@dataclasses.dataclass(frozen=True)
class TeacherConfig:
  """The teacher (a guide_jax run dir) for GUIDE init and/or KD; kd_alpha = 0 runs no teacher forward."""
  teacher_dir: Optional[str] = None
  kd_alpha: float = 0.0
  kd_tau: float = 1.0

  def __post_init__(self):
    for name in ("kd_alpha", "kd_tau"):
      value = getattr(self, name)
      if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value:
        raise ValueError(f"TeacherConfig.{name} must be a number, got {value!r}")
    if not 0.0 <= self.kd_alpha <= 1.0 or self.kd_tau <= 0:
      raise ValueError(f"TeacherConfig needs 0 <= kd_alpha <= 1 and kd_tau > 0, got alpha={self.kd_alpha}, "
                       f"tau={self.kd_tau}")


@dataclasses.dataclass(frozen=True)
class PruneConfig:
  """Minitron-style pruning init (train.init = 'prune'; GUIDE_SPEC.md section 7).

  calibration_batches: training batches (steps 0..k-1 of the run's stream) the teacher's
    activations are measured on. aggregation: 'mean' or 'l2' over batch and sequence.
  depth: which teacher layers survive: 'first_n', 'uniform' or 'importance'.
  """
  calibration_batches: int = 4
  aggregation: str = "mean"
  depth: str = "first_n"

  def __post_init__(self):
    _check_choice("aggregation", self.aggregation, ("mean", "l2"), "PruneConfig")
    _check_choice("depth", self.depth, ("first_n", "uniform", "importance"), "PruneConfig")
    if not isinstance(self.calibration_batches, int) or self.calibration_batches < 1:
      raise ValueError(f"PruneConfig.calibration_batches must be a positive int, got {self.calibration_batches!r}")
