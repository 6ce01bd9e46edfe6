"""ModelConfig (the shape of a decoder-only transformer) and GuideConfig (how GUIDE maps a teacher
into it): frozen dataclasses, validated on construction."""
import dataclasses
from typing import Any, Optional

POSITION_EMBEDDINGS = ("rope", "relpos")
MLP_ACTIVATIONS = ("gelu", "silu", "relu", "gelu_exact")  # gelu: tanh approximation; gelu_exact: erf
ROPE_SCALINGS = ("none", "linear", "llama3")
DTYPES = ("float32", "bfloat16")
PARAM_DTYPES = ("float32", "bfloat16", "float16")  # float16: Hugging Face checkpoints stored in it
EMBEDDING_STYLES = ("t5x", "hf", "gemma")
LAYER_KINDS = "GL"  # layer_pattern letters: G global (full causal) attention, L local (sliding window)
REMAT_POLICIES = ("none", "full", "dots", "offload")
BLOCKS = ("first", "all", "none")
OTHER_BLOCKS = ("uniform_selection", "random")
LAYER_SELECTIONS = ("first_n", "uniform")
PRUNE_AGGREGATIONS = ("mean", "l2")
PRUNE_DEPTHS = LAYER_SELECTIONS + ("importance",)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Hyperparameters of guide_jax.model.Transformer (t5x decoder-only layout).

  d_model (d), n_layers (n), n_heads (h), head_dim (l), mlp_dim (f), vocab_size (V).
  position_embedding: 'rope' (rotate-half RoPE) or 'relpos' (t5x's T5 relative biases).
  dtype: activation dtype; params are always stored in param_dtype (float32).
  remat: what each layer's backward keeps ('none'; 'full': only its input; 'dots': also the weight
    matmuls' outputs; 'offload': those in host memory, accelerators only).
  scan_layers: run the layers as one nn.scan (one compiled layer body; compile time flat in depth).
    An execution option like remat: the param tree stays t5x's layers_N (guide_jax.model).
  mlp_activation: 'gelu' (tanh approximation, t5x's), 'gelu_exact' (erf), 'silu' or 'relu'.
  rope_scaling: RoPE frequency scaling as transformers computes it (guide_jax.model.rope_frequencies):
    'none'; 'linear' (every frequency / rope_scaling_factor); 'llama3' (Llama 3.1: wavelengths below
    rope_original_max_positions / rope_high_freq_factor kept, above rope_original_max_positions /
    rope_low_freq_factor divided by rope_scaling_factor, interpolated in between). The factors are
    used only by the scalings that name them and must keep their defaults otherwise.

  Options for the Hugging Face families (Llama 3, Mistral, Qwen 2/3, Gemma 1/2/3), all OFF by
  default, so a default config is t5x's decoder-only layout (docs/gqa_and_families.md):
  n_kv_heads (k): grouped-query attention; None means k = h (t5x's tree). key/value kernels are
    [d, k*l]; query head j reads kv head j // (h // k) (transformers' repeat_kv).
  qkv_bias / out_bias: biases on query/key/value ([h*l], [k*l]) and on out ([d]).
  qk_norm: per-head RMSNorm over l of queries and keys (scale [l]) before RoPE (Qwen 3, Gemma 3).
  post_norms: RMSNorm after attention and after the MLP, before the residual add (Gemma 2/3).
  norm_offset: every RMSNorm multiplies by (norm_offset + scale) (Gemma stores scale - 1: 1.0).
  attn_logit_softcap / final_logit_softcap: c * tanh(z / c) of attention logits / output logits.
  query_pre_attn_scalar: None (t5x): the 1/sqrt(l) of attention lives in the query kernel and the
    logits are q.k; a number s: the query kernel is unscaled and the logits are q.k / sqrt(s)
    (transformers' layout: s = head_dim for Llama, Qwen, Mistral; Gemma 2/3 set their own).
  embedding_style: 't5x' (x0 = E[tok], tied logits y E^T / sqrt(d)), 'hf' (x0 = E[tok], tied
    logits y E^T) or 'gemma' (x0 = sqrt(d) E[tok], tied logits y E^T).
  layer_pattern: per layer 'G' (global: full causal attention) or 'L' (local: each token attends to
    the sliding_window tokens up to itself), repeated cyclically over the layers ('' = all 'G';
    'LLLLLG' is Gemma 3's 5:1, 'LG' Gemma 2's alternation, 'L' Mistral's).
  sliding_window: the local layers' window (required iff the pattern has an 'L').
  rope_local_theta: RoPE theta of the local layers, without rope_scaling (Gemma 3's local base
    frequency); None: local layers use the global RoPE.
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
  scan_layers: bool = False
  rope_scaling: str = "none"
  rope_scaling_factor: float = 1.0
  rope_low_freq_factor: float = 1.0
  rope_high_freq_factor: float = 4.0
  rope_original_max_positions: int = 8192
  n_kv_heads: Optional[int] = None
  qkv_bias: bool = False
  out_bias: bool = False
  qk_norm: bool = False
  post_norms: bool = False
  norm_offset: float = 0.0
  attn_logit_softcap: Optional[float] = None
  final_logit_softcap: Optional[float] = None
  query_pre_attn_scalar: Optional[float] = None
  embedding_style: str = "t5x"
  layer_pattern: str = ""
  sliding_window: Optional[int] = None
  rope_local_theta: Optional[float] = None

  def __post_init__(self):
    for name in ("vocab_size", "d_model", "n_layers", "n_heads", "head_dim", "mlp_dim"):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"ModelConfig.{name} must be a positive int, got {value!r}")
    _check_choice("position_embedding", self.position_embedding, POSITION_EMBEDDINGS)
    _check_choice("mlp_activation", self.mlp_activation, MLP_ACTIVATIONS)
    _check_choice("dtype", self.dtype, DTYPES)
    _check_choice("param_dtype", self.param_dtype, PARAM_DTYPES)
    _check_choice("remat", self.remat, REMAT_POLICIES)
    _check_choice("attention_impl", self.attention_impl, ("xla", "cudnn"))
    if not isinstance(self.scan_layers, bool):
      raise ValueError(f"ModelConfig.scan_layers must be a bool, got {self.scan_layers!r}")
    if self.position_embedding == "rope" and self.head_dim % 2:
      raise ValueError(f"RoPE needs an even head_dim, got {self.head_dim}")
    self._check_rope_scaling()
    self._check_family_options()

  def _check_family_options(self):
    if self.n_kv_heads is not None:
      k = self.n_kv_heads
      if not isinstance(k, int) or isinstance(k, bool) or k <= 0 or self.n_heads % k:
        raise ValueError(f"ModelConfig.n_kv_heads must be None or a positive int dividing n_heads="
                         f"{self.n_heads}, got {k!r}")
    for name in ("qkv_bias", "out_bias", "qk_norm", "post_norms"):
      if not isinstance(getattr(self, name), bool):
        raise ValueError(f"ModelConfig.{name} must be a bool, got {getattr(self, name)!r}")
    if not isinstance(self.norm_offset, (int, float)) or isinstance(self.norm_offset, bool):
      raise ValueError(f"ModelConfig.norm_offset must be a number, got {self.norm_offset!r}")
    for name in ("attn_logit_softcap", "final_logit_softcap", "query_pre_attn_scalar", "rope_local_theta"):
      value = getattr(self, name)
      if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0):
        raise ValueError(f"ModelConfig.{name} must be None or a number > 0, got {value!r}")
    _check_choice("embedding_style", self.embedding_style, EMBEDDING_STYLES)
    if not isinstance(self.layer_pattern, str) or set(self.layer_pattern) - set(LAYER_KINDS):
      raise ValueError(f"ModelConfig.layer_pattern must be a string of 'G' (global) and 'L' (local) "
                       f"layers, got {self.layer_pattern!r}")
    window = self.sliding_window
    if window is not None and (not isinstance(window, int) or isinstance(window, bool) or window <= 0):
      raise ValueError(f"ModelConfig.sliding_window must be None or a positive int, got {window!r}")
    if ("L" in self.layer_pattern) != (window is not None):
      raise ValueError("ModelConfig.sliding_window is required exactly when layer_pattern has local 'L' "
                       f"layers, got layer_pattern={self.layer_pattern!r}, sliding_window={window!r}")
    if self.rope_local_theta is not None and "L" not in self.layer_pattern:
      raise ValueError("ModelConfig.rope_local_theta needs local 'L' layers in layer_pattern")
    if self.qk_norm and self.query_pre_attn_scalar is None:
      raise ValueError("ModelConfig.qk_norm needs query_pre_attn_scalar (with normalized queries the "
                       "attention scale cannot live in the query kernel; set it to head_dim)")
    if self.position_embedding == "relpos" and (self.rope_local_theta is not None):
      raise ValueError("ModelConfig.rope_local_theta needs position_embedding='rope'")

  @property
  def kv_heads(self) -> int:
    """k: the number of key/value heads (n_kv_heads, or n_heads when it is None)."""
    return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

  def layer_kind(self, i: int) -> str:
    """'G' or 'L': the attention kind of layer i (layer_pattern repeated cyclically)."""
    return self.layer_pattern[i % len(self.layer_pattern)] if self.layer_pattern else "G"

  def t5x_incompatibilities(self):
    """The settings t5x's decoder-only network cannot represent (an empty list: t5x-exportable)."""
    defaults = {f.name: f.default for f in dataclasses.fields(ModelConfig)}
    names = ("n_kv_heads", "qkv_bias", "out_bias", "qk_norm", "post_norms", "norm_offset",
             "attn_logit_softcap", "final_logit_softcap", "query_pre_attn_scalar", "embedding_style",
             "sliding_window", "rope_local_theta")
    problems = [f"{name}={getattr(self, name)!r}" for name in names if getattr(self, name) != defaults[name]]
    if self.n_kv_heads == self.n_heads:
      problems.remove(f"n_kv_heads={self.n_kv_heads!r}")
    if self.layer_pattern.replace("G", ""):
      problems.append(f"layer_pattern={self.layer_pattern!r}")
    return problems

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
    k = self.kv_heads
    block = 2 * d * h * l + 2 * d * k * l + 3 * d * f + 2 * d
    block += (h * l + 2 * k * l if self.qkv_bias else 0) + (d if self.out_bias else 0)
    block += (2 * l if self.qk_norm else 0) + (2 * d if self.post_norms else 0)
    extra = (self.n_heads * self.relpos_buckets) if self.position_embedding == "relpos" else 0
    return v * d * (1 if self.tie_embeddings else 2) + self.n_layers * block + d + extra

  def train_flops_per_token(self, seq_len: int) -> float:
    """Training FLOPs per token: 6 * (matmul params) + 12 * n * h * l * seq_len (attention)."""
    return 3 * self.forward_flops_per_token(seq_len)

  def forward_flops_per_token(self, seq_len: int) -> float:
    """Forward FLOPs per token: 2 * (matmul params incl. output layer) + 4 * n * h * l * seq_len."""
    d, h, l, f, v = self.d_model, self.n_heads, self.head_dim, self.mlp_dim, self.vocab_size
    matmul_params = self.n_layers * (2 * d * h * l + 2 * d * self.kv_heads * l + 3 * d * f) + d * v
    return 2 * matmul_params + 4 * self.n_layers * h * l * seq_len


def _check_positive_int(name, value, what=""):
  if not isinstance(value, int) or isinstance(value, bool) or value < 1:
    raise ValueError(f"{name} must be a positive int{' ' + what if what else ''}, got {value!r}")


def _check_choice(name, value, choices, owner="ModelConfig"):
  if value not in choices:
    raise ValueError(f"{owner}.{name} must be one of {choices}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class GuideConfig:
  """How GUIDE maps a teacher into a student (docs/algorithm.md; each field a [choice] knob).

  blocks: which student blocks get the PCA mapping: 'first' (the paper), 'all' or 'none'.
  other_blocks: how the remaining blocks start: 'uniform_selection' of the teacher's layer, or
    'random' (the student's own init from PRNGKey(seed)).
  layer_selection: which teacher layer feeds each student layer: 'first_n' or 'uniform'.
  center: student table (E_T - mu) M instead of E_T M.
  seed: PRNG seed of the parts that start at random.
  calibration_batches: 0 (the paper: off) or k > 0: after the mapping, one scalar on the final norm
    scale (a logit temperature) is fitted to the run's first k training batches, the value in a
    fixed log grid with the lowest cross-entropy (transforms/calibrate.py). Applied by
    starts.guide (it needs data); guide_init itself ignores it.
  """
  blocks: str = "first"
  other_blocks: str = "uniform_selection"
  layer_selection: str = "first_n"
  center: bool = False
  seed: int = 0
  calibration_batches: int = 0

  def __post_init__(self):
    _check_choice("blocks", self.blocks, BLOCKS, "GuideConfig")
    _check_choice("other_blocks", self.other_blocks, OTHER_BLOCKS, "GuideConfig")
    _check_choice("layer_selection", self.layer_selection, LAYER_SELECTIONS, "GuideConfig")
    if not isinstance(self.center, bool):
      raise ValueError(f"GuideConfig.center must be a bool, got {self.center!r}")
    if not isinstance(self.seed, int) or isinstance(self.seed, bool):
      raise ValueError(f"GuideConfig.seed must be an int, got {self.seed!r}")
    cb = self.calibration_batches
    if not isinstance(cb, int) or isinstance(cb, bool) or cb < 0:
      raise ValueError(f"GuideConfig.calibration_batches must be an int >= 0 (0: off), got {cb!r}")

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
  seqio and TensorFlow; training from prepared data needs neither). A gs:// data_dir is staged
  once to <cache_dir>/staged/, hash-checked as it is copied.
  verify_data: check every shard's SHA-256 against the manifest when the run starts (about one
    read of the data, every core; reports/data_hash_cost.json). False skips it for a huge corpus,
    at a risk: a shard changed since prepare (same size) then trains without a warning; token ids
    are still range-checked (one cheaper pass).
  """
  corpus: str = "shakespeare"
  data_dir: Optional[str] = None
  cache_dir: str = "cache"
  vocab_size: int = 2048
  seq_len: int = 128
  batch_size: int = 16
  eval_max_batches: Optional[int] = None
  verify_data: bool = True

  def __post_init__(self):
    for name in ("vocab_size", "seq_len", "batch_size"):
      _check_positive_int(f"DataConfig.{name}", getattr(self, name))
    if self.eval_max_batches is not None:
      _check_positive_int("DataConfig.eval_max_batches", self.eval_max_batches, "or None (every batch)")


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  """How the run saves and resumes (how a fresh run starts is train.start: guide_jax.starts).

  restore_step: resume from this step instead of the latest (e.g. when the latest is corrupt).
  allow_changed_run: resume even when this run's settings differ from the checkpoint's.
  lock_timeout_s: the run lease (<model_dir>/.lock, guide_jax.runlock) is taken over once its
    holder's heartbeat is older than this (a preempted or killed job); a fresher one refuses.
  """
  save_every: int = 200
  keep: int = 2
  restore_step: Optional[int] = None
  allow_changed_run: bool = False
  lock_timeout_s: float = 300.0

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
  """The KD teacher (a path or guide_jax.teachers.Source); kd_alpha = 0 loads and runs no teacher.
  (A start that reads a teacher names its own: starts.guide.teacher; the same source is read once.)"""
  teacher_dir: Optional[Any] = None
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
    if self.kd_alpha > 0 and not self.teacher_dir:
      raise ValueError("TeacherConfig.teacher_dir (TEACHER_DIR) is required for kd_alpha > 0")


@dataclasses.dataclass(frozen=True)
class PruneConfig:
  """Minitron-style pruning init (starts.prune; docs/algorithm.md, comparison inits).

  calibration_batches: training batches (steps 0..k-1 of the run's stream) the teacher's
    activations are measured on. aggregation: 'mean' or 'l2' over batch and sequence.
  depth: which teacher layers survive: 'first_n', 'uniform' or 'importance'.
  """
  calibration_batches: int = 4
  aggregation: str = "mean"
  depth: str = "first_n"

  def __post_init__(self):
    _check_choice("aggregation", self.aggregation, PRUNE_AGGREGATIONS, "PruneConfig")
    _check_choice("depth", self.depth, PRUNE_DEPTHS, "PruneConfig")
    if not isinstance(self.calibration_batches, int) or self.calibration_batches < 1:
      raise ValueError(f"PruneConfig.calibration_batches must be a positive int, got {self.calibration_batches!r}")


@dataclasses.dataclass(frozen=True)
class WeightSelectionConfig:
  """Weight Selection init (starts.weight_selection; Xu et al. 2023). layer_selection: which teacher
  layer feeds each student layer, 'first_n' (Xu et al.) or 'uniform'."""
  layer_selection: str = "first_n"

  def __post_init__(self):
    _check_choice("layer_selection", self.layer_selection, LAYER_SELECTIONS, "WeightSelectionConfig")
