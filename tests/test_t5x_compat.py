"""guide_jax.t5x_compat and guide_jax.convert: t5x-layout state dicts and checkpoints, no t5x.

t5x itself is never imported: the state dicts are built by hand in t5x's layout
({'target': params, 'state': {'step', 'param_states'}}), and t5x's gin usage is checked against a
stand-in `fake_t5x` package (utils.RestoreCheckpointConfig, network.TransformerConfig).
"""
import dataclasses
import json
import os
import subprocess
import sys
import types

import gin
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from guide_jax import checkpoints, convert, model, optim, t5x_compat
from guide_jax.config import ModelConfig
from guide_jax.transforms import guide_init, validate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEACHER = ModelConfig(vocab_size=64, d_model=32, n_layers=3, n_heads=4, head_dim=8, mlp_dim=48,
                      position_embedding="relpos")
STUDENT = TEACHER.replace(d_model=16, n_layers=2, n_heads=2, head_dim=4, mlp_dim=24)
STUDENT_GIN = """MODEL = @ModelConfig()
ModelConfig.vocab_size = %VOCAB_SIZE
ModelConfig.d_model = 16
ModelConfig.n_layers = 2
ModelConfig.n_heads = 2
ModelConfig.head_dim = 4
ModelConfig.mlp_dim = {mlp_dim}
ModelConfig.position_embedding = 'relpos'
"""
TEACHER_GIN = """MODEL = @ModelConfig()
ModelConfig.vocab_size = %VOCAB_SIZE
ModelConfig.d_model = 32
ModelConfig.n_layers = 3
ModelConfig.n_heads = 4
ModelConfig.head_dim = 8
ModelConfig.mlp_dim = 48
ModelConfig.position_embedding = 'relpos'
"""


def random_params(config, seed):
  """Random float32 params in config's t5x tree; norm scales away from 1 so g_T matters."""
  rng = np.random.default_rng(seed)
  def leaf(path, s):
    name = jax.tree_util.keystr(path)
    if "scale" in name:
      return (1.0 + 0.2 * rng.normal(size=s.shape)).astype(np.float32)
    fan_in = s.shape[0] if len(s.shape) > 1 else 1
    return (rng.normal(size=s.shape) / np.sqrt(fan_in)).astype(np.float32)
  return jax.tree_util.tree_map_with_path(leaf, model.param_shapes(config))


def adafactor_like(params, seed):
  """t5x-style Adafactor param_states, mirroring the target tree (values random, to trace them)."""
  rng = np.random.default_rng(seed)
  r = lambda *shape: rng.normal(size=shape).astype(np.float32)
  def slots(p):
    if p.ndim >= 2:
      return {"v_row": r(*p.shape[:-1]), "v_col": r(*p.shape[:-2], p.shape[-1]), "v": r(1), "m": r(1)}
    return {"v_row": r(1), "v_col": r(1), "v": r(*p.shape), "m": r(1)}
  return jax.tree_util.tree_map(slots, params)


def t5x_state(params, step, seed=0):
  return {"target": params, "state": {"step": np.int32(step), "param_states": adafactor_like(params, seed)}}


def assert_trees_equal(a, b):
  fa, fb = validate.flatten(a), validate.flatten(b)
  assert sorted(fa) == sorted(fb)
  for k in fa:
    assert np.asarray(fa[k]).dtype == np.asarray(fb[k]).dtype, k
    np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg=k)


def zeros_like_student():
  return jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), model.param_shapes(STUDENT))


@pytest.fixture(scope="module")
def teacher_params():
  return random_params(TEACHER, 0)


@pytest.fixture(scope="module")
def expected(teacher_params):
  """guide_init's student (default options); the fresh tree's values are unused by these options."""
  params, info = guide_init(teacher_params, TEACHER, STUDENT, student_params=zeros_like_student(),
                            return_info=True)
  return jax.device_get(params), info


@pytest.fixture(scope="module")
def files(tmp_path_factory, teacher_params):
  """A guide_jax teacher run (checkpoints.save at step 7), a t5x teacher checkpoint, gin files."""
  root = tmp_path_factory.mktemp("t5x_compat")
  teacher_dir = str(root / "teacher")
  mngr = checkpoints.manager(teacher_dir)
  checkpoints.save(mngr, 7, teacher_params, optim.make_optimizer(10).init(teacher_params), TEACHER, force=True)
  mngr.close()
  t5x_dir = str(root / "t5x_teacher")
  t5x_compat.write_t5x_checkpoint(t5x_dir, teacher_params, step=5000,
                                  param_states=adafactor_like(teacher_params, 1))
  (root / "student.gin").write_text(STUDENT_GIN.format(mlp_dim=32))  # the CLI binds mlp_dim=24
  (root / "teacher.gin").write_text(TEACHER_GIN)
  return {"root": root, "teacher_dir": teacher_dir, "t5x_teacher": os.path.join(t5x_dir, "checkpoint_5000"),
          "student_gin": str(root / "student.gin"), "teacher_gin": str(root / "teacher.gin"),
          "mlp": "ModelConfig.mlp_dim = 24"}


# ----------------------------------------------------------------------------- transformation
@pytest.mark.parametrize("other_blocks", ["uniform_selection", "random"])
def test_transformation_is_guide_init_and_keeps_student_state(teacher_params, expected, other_blocks):
  teacher_state = t5x_state(teacher_params, 5000, seed=1)
  fresh = random_params(STUDENT, 3)
  student_state = t5x_state(fresh, 17, seed=2)
  before = jax.tree_util.tree_map(np.copy, teacher_state)
  fn = t5x_compat.make_guide_transformation(TEACHER, STUDENT, other_blocks=other_blocks)
  out = fn(teacher_state, student_state)

  assert set(out) == {"target", "state"}
  reference = guide_init(teacher_params, TEACHER, STUDENT, student_params=fresh, other_blocks=other_blocks)
  assert_trees_equal(out["target"], jax.device_get(reference))
  if other_blocks == "uniform_selection":
    assert_trees_equal(out["target"], expected[0])  # the fresh values play no part
  else:  # the student's own fresh values fill the blocks that start at random
    assert_trees_equal(out["target"]["decoder"]["layers_1"], fresh["decoder"]["layers_1"])
  assert all(isinstance(x, np.ndarray) for x in jax.tree_util.tree_leaves(out["target"]))
  # Optimizer state: the student's fresh one, step reset to 0; the teacher's is dropped.
  assert out["state"]["step"] == 0 and out["state"]["step"].dtype == np.int32
  assert_trees_equal(out["state"]["param_states"], student_state["state"]["param_states"])
  assert_trees_equal(teacher_state, before)  # inputs untouched
  assert fn.last_info["explained_variance"] == pytest.approx(expected[1]["explained_variance"])


def test_transformed_target_runs_in_the_student_model(teacher_params):
  fn = t5x_compat.make_guide_transformation(TEACHER, STUDENT)
  out = fn(t5x_state(teacher_params, 1), t5x_state(random_params(STUDENT, 3), 0))
  validate.check_tree(out["target"], STUDENT, "transformed target")
  tokens = np.arange(12, dtype=np.int32).reshape(2, 6) % STUDENT.vocab_size
  logits = model.apply(STUDENT, out["target"], tokens)
  assert logits.shape == (2, 6, STUDENT.vocab_size) and bool(np.all(np.isfinite(logits)))


def test_is_resuming_returns_the_input_unchanged(teacher_params):
  resumed = t5x_state(random_params(STUDENT, 5), 1234)
  fn = t5x_compat.make_guide_transformation(TEACHER, STUDENT)
  assert fn(resumed, t5x_state(random_params(STUDENT, 3), 0), is_resuming=True) is resumed
  assert t5x_compat.guide_state_transformation(resumed, {}, is_resuming=True, teacher_config=TEACHER,
                                               student_config=STUDENT) is resumed
  assert t5x_compat.drop_optimizer_state(resumed, {}, is_resuming=True) is resumed
  assert t5x_compat.drop_optimizer_state(resumed, {}) == {"target": resumed["target"]}


def test_abstract_state_dicts_as_t5x_passes_them(teacher_params, expected, files):
  """t5x hands over the teacher checkpoint's structure (placeholders) and an abstract student."""
  placeholders = jax.tree_util.tree_map_with_path(
      lambda p, _: "PLACEHOLDER://target" + jax.tree_util.keystr(p), teacher_params)
  teacher_state = {"target": placeholders, "state": {"step": "PLACEHOLDER://state.step"}}
  abstract = {"target": model.param_shapes(STUDENT),
              "state": {"step": jax.ShapeDtypeStruct((), np.int32)}}
  fn = t5x_compat.make_guide_transformation(TEACHER, STUDENT, teacher_checkpoint=files["t5x_teacher"])
  out = fn(teacher_state, abstract)
  assert set(out) == {"target"}  # 'state' is left to RestoreCheckpointConfig.fallback_to_scratch
  assert_trees_equal(out["target"], expected[0])
  with pytest.raises(ValueError, match="bind teacher_checkpoint"):
    t5x_compat.make_guide_transformation(TEACHER, STUDENT)(teacher_state, abstract)


def test_gin_wrapper_and_t5x_transformer_configs(teacher_params, expected):
  t5x_fields = lambda c: {"vocab_size": c.vocab_size, "emb_dim": c.d_model, "num_heads": c.n_heads,
                          "num_layers": c.n_layers, "head_dim": c.head_dim, "mlp_dim": c.mlp_dim,
                          "mlp_activations": ("gelu", "linear"), "logits_via_embedding": True,
                          "dropout_rate": 0.0}
  assert t5x_compat.model_config_from_t5x(**t5x_fields(TEACHER)) == TEACHER
  assert t5x_compat.model_config_from_t5x(types.SimpleNamespace(**t5x_fields(STUDENT))) == STUDENT
  out = t5x_compat.guide_state_transformation(
      t5x_state(teacher_params, 9), t5x_state(random_params(STUDENT, 3), 4),
      teacher_config=t5x_fields(TEACHER), student_config=types.SimpleNamespace(**t5x_fields(STUDENT)))
  assert_trees_equal(out["target"], expected[0])


def test_model_config_from_t5x_activations_and_errors():
  base = dict(vocab_size=32, emb_dim=8, num_heads=2, num_layers=1, head_dim=4, mlp_dim=16)
  cfg = t5x_compat.model_config_from_t5x(**base, mlp_activations=("swish", "linear"), dtype="bfloat16")
  assert (cfg.mlp_activation, cfg.position_embedding, cfg.relpos_buckets, cfg.relpos_max_distance,
          cfg.tie_embeddings, cfg.dtype) == ("silu", "relpos", 32, 128, False, "bfloat16")
  with pytest.raises(ValueError, match="non-gated"):
    t5x_compat.model_config_from_t5x(**base, mlp_activations=("relu",))
  with pytest.raises(ValueError, match="non-gated"):
    t5x_compat.model_config_from_t5x(**base)  # t5x's default ('relu',)
  with pytest.raises(ValueError, match="unsupported t5x mlp_activations"):
    t5x_compat.model_config_from_t5x(**base, mlp_activations=("linear", "gelu"))
  with pytest.raises(ValueError, match="missing mlp_dim"):
    t5x_compat.model_config_from_t5x(**{k: v for k, v in base.items() if k != "mlp_dim"})


def test_transformation_checks_its_arguments_up_front(teacher_params):
  with pytest.raises(ValueError, match="d_model: student d_S=64 > teacher d_T=32"):
    t5x_compat.make_guide_transformation(TEACHER, STUDENT.replace(d_model=64))
  with pytest.raises(ValueError, match="blocks must be one of"):
    t5x_compat.make_guide_transformation(TEACHER, STUDENT, blocks="second")
  with pytest.raises(ValueError, match="student_config is required"):
    t5x_compat.guide_state_transformation({}, {}, teacher_config=TEACHER)
  fn = t5x_compat.make_guide_transformation(TEACHER, STUDENT)
  wrong = t5x_state(random_params(STUDENT.replace(mlp_dim=20), 3), 0)
  with pytest.raises(ValueError, match="not the model t5x is building"):
    fn(t5x_state(teacher_params, 1), wrong)
  untied = t5x_state(random_params(TEACHER.replace(tie_embeddings=False), 0), 1)
  with pytest.raises(ValueError, match="logits_via_embedding"):
    fn(untied, t5x_state(random_params(STUDENT, 3), 0))


def _fake_t5x():
  """Stand-ins for t5x.utils and t5x.examples.decoder_only.network, enough for the gin file."""
  pkg = types.ModuleType("fake_t5x")
  pkg.__path__ = []
  utils, network = types.ModuleType("fake_t5x.utils"), types.ModuleType("fake_t5x.network")

  @dataclasses.dataclass
  class RestoreCheckpointConfig:
    path: str
    mode: str = "latest"
    dtype: str = None
    restore_dataset: bool = False
    fallback_to_scratch: bool = False
    state_transformation_fns: tuple = ()

  @dataclasses.dataclass
  class CheckpointConfig:
    save: object = None
    restore: object = None

  @dataclasses.dataclass(frozen=True)
  class TransformerConfig:
    vocab_size: int
    emb_dim: int = 512
    num_heads: int = 8
    num_layers: int = 6
    head_dim: int = 64
    mlp_dim: int = 2048
    mlp_activations: tuple = ("relu",)
    logits_via_embedding: bool = False
    dtype: str = "float32"
    dropout_rate: float = 0.1

  for cls, mod in ((RestoreCheckpointConfig, utils), (CheckpointConfig, utils), (TransformerConfig, network)):
    cls.__module__ = mod.__name__
    setattr(mod, cls.__name__, cls)
  pkg.utils, pkg.network = utils, network
  return {"fake_t5x": pkg, "fake_t5x.utils": utils, "fake_t5x.network": network}, CheckpointConfig


def test_t5x_gin_snippet_configures_the_transformation(monkeypatch, teacher_params, expected):
  modules, checkpoint_config = _fake_t5x()
  for name, module in modules.items():
    monkeypatch.setitem(sys.modules, name, module)
  with open(os.path.join(ROOT, "gin", "t5x", "guide_restore.gin")) as f:
    text = f.read()
  text = text.replace("from t5x import utils", "from fake_t5x import utils").replace(
      "from t5x.examples.decoder_only import network", "from fake_t5x import network")
  student_model_gin = "\n".join([  # what the student's t5x model gin would bind
      "network.TransformerConfig.vocab_size = 64", "network.TransformerConfig.emb_dim = 16",
      "network.TransformerConfig.num_heads = 2", "network.TransformerConfig.num_layers = 2",
      "network.TransformerConfig.head_dim = 4", "network.TransformerConfig.mlp_dim = 24",
      "network.TransformerConfig.mlp_activations = ('gelu', 'linear')",
      "network.TransformerConfig.logits_via_embedding = True",
      "teacher/network.TransformerConfig.emb_dim = 32", "teacher/network.TransformerConfig.num_heads = 4",
      "teacher/network.TransformerConfig.num_layers = 3", "teacher/network.TransformerConfig.head_dim = 8",
      "teacher/network.TransformerConfig.mlp_dim = 48", "TEACHER_CHECKPOINT = '/unused/checkpoint_1'"])
  gin.clear_config()
  try:
    gin.parse_config(text + "\n" + student_model_gin)
    restore = gin.get_configurable(checkpoint_config)().restore
    assert (restore.mode, restore.fallback_to_scratch, restore.path) == ("specific", True, "/unused/checkpoint_1")
    (fn,) = restore.state_transformation_fns
    out = fn(t5x_state(teacher_params, 3), t5x_state(random_params(STUDENT, 3), 8))
    assert fn(out, {}, is_resuming=True) is out
  finally:
    gin.clear_config()
  assert_trees_equal(out["target"], expected[0])
  assert out["state"]["step"] == 0


# ----------------------------------------------------------------------------- checkpoints + CLI
def _listing(path):
  return sorted(os.listdir(path))


def test_convert_cli_t5x_format(files, expected):
  out_dir = str(files["root"] / "cli_t5x")
  res = subprocess.run(
      [sys.executable, "-m", "guide_jax.convert", f"--teacher_dir={files['teacher_dir']}",
       f"--student_gin={files['student_gin']}", f"--gin.{files['mlp'].replace(' ', '')}",
       f"--output_dir={out_dir}", "--format=t5x"],
      cwd=ROOT, capture_output=True, text=True, timeout=120,
      env=dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=""))
  assert res.returncode == 0, res.stderr[-3000:]
  assert f"explained variance: {expected[1]['explained_variance']:.6f}" in res.stdout
  assert _listing(out_dir) == ["checkpoint_0", "guide_info.json"]
  assert not [e for e in _listing(str(files["root"])) if ".tmp-" in e]  # no temp dir left behind
  restored = ocp.PyTreeCheckpointer().restore(os.path.join(out_dir, "checkpoint_0", "state"))
  assert_trees_equal(restored["target"], expected[0])
  assert int(restored["state"]["step"]) == 0
  assert_trees_equal(t5x_compat.load_t5x_params(out_dir, STUDENT), expected[0])  # model dir -> latest
  with open(os.path.join(out_dir, "guide_info.json")) as f:
    info = json.load(f)
  assert info["student_config"] == dataclasses.asdict(STUDENT)
  assert info["teacher"].endswith("checkpoints/7")


def test_convert_guide_jax_format_and_overwrite(files, teacher_params, expected):
  out_dir = str(files["root"] / "guide_out")
  info = convert.convert(files["teacher_dir"], files["student_gin"], out_dir, gin_bindings=[files["mlp"]])
  params, config = checkpoints.load_params(out_dir)
  assert config == STUDENT
  assert_trees_equal(jax.device_get(params), expected[0])
  assert info["explained_variance"] == pytest.approx(expected[1]["explained_variance"])
  # An existing checkpoint is refused without --overwrite and left as it was ...
  with pytest.raises(ValueError, match="already holds checkpoints, guide_info.json; pass --overwrite"):
    convert.convert(files["teacher_dir"], files["student_gin"], out_dir, gin_bindings=[files["mlp"]])
  # ... and replaced with it (here by the blocks='all' student).
  convert.convert(files["teacher_dir"], files["student_gin"], out_dir, gin_bindings=[files["mlp"]],
                  blocks="all", overwrite=True)
  params, _ = checkpoints.load_params(out_dir)
  reference = guide_init(teacher_params, TEACHER, STUDENT,
                         student_params=zeros_like_student(), blocks="all")
  assert_trees_equal(jax.device_get(params), jax.device_get(reference))
  assert _listing(out_dir) == ["checkpoints", "guide_info.json"]


def test_convert_from_t5x_teacher(files, expected):
  out_dir = str(files["root"] / "from_t5x")
  convert.convert(files["t5x_teacher"], files["student_gin"], out_dir, gin_bindings=[files["mlp"], "VOCAB_SIZE = 64"],
                  teacher_format="t5x", teacher_gin=files["teacher_gin"], output_format="t5x")
  assert_trees_equal(t5x_compat.load_t5x_params(os.path.join(out_dir, "checkpoint_0"), STUDENT), expected[0])


def test_convert_errors_write_nothing(files):
  root = str(files["root"])
  before = _listing(root)
  args = dict(gin_bindings=[files["mlp"]])
  with pytest.raises(ValueError, match="teacher_dir .*does not exist"):
    convert.convert(os.path.join(root, "no_such_teacher"), files["student_gin"], os.path.join(root, "o1"), **args)
  with pytest.raises(ValueError, match="no checkpoints under"):  # a directory, but no checkpoint in it
    convert.convert(root, files["student_gin"], os.path.join(root, "o1"), **args)
  with pytest.raises(ValueError, match=r"d_model: student d_S=64 > teacher d_T=32.*n_layers: student n_S=5"):
    convert.convert(files["teacher_dir"], files["student_gin"], os.path.join(root, "o1"),
                    gin_bindings=["ModelConfig.d_model = 64", "ModelConfig.n_layers = 5"])
  with pytest.raises(ValueError, match="vocab_size: student 32 != teacher 64"):
    convert.convert(files["teacher_dir"], files["student_gin"], os.path.join(root, "o1"),
                    gin_bindings=["VOCAB_SIZE = 32"])
  with pytest.raises(ValueError, match="does not give a valid model"):
    convert.convert(files["teacher_dir"], files["student_gin"], os.path.join(root, "o1"),
                    gin_bindings=["ModelConfig.n_heads = 0"])
  with pytest.raises(ValueError, match="needs --teacher_gin"):
    convert.convert(files["t5x_teacher"], files["student_gin"], os.path.join(root, "o1"), teacher_format="t5x")
  with pytest.raises(ValueError, match="does not match its config: .*mlp"):
    convert.convert(files["t5x_teacher"], files["student_gin"], os.path.join(root, "o1"), teacher_format="t5x",
                    teacher_gin=files["teacher_gin"], teacher_gin_bindings=["ModelConfig.mlp_dim = 40"],
                    gin_bindings=["VOCAB_SIZE = 64"])
  legacy = os.path.join(root, "legacy", "checkpoint_3")
  os.makedirs(legacy)
  open(os.path.join(legacy, "checkpoint"), "wb").close()
  with pytest.raises(ValueError, match="legacy t5x checkpoint"):
    convert.convert(legacy, files["student_gin"], os.path.join(root, "o1"), teacher_format="t5x",
                    teacher_gin=files["teacher_gin"], gin_bindings=["VOCAB_SIZE = 64"])
  # An output dir that already holds a t5x checkpoint: refused, untouched.
  existing = os.path.join(root, "existing")
  os.makedirs(os.path.join(existing, "checkpoint_40"))
  with pytest.raises(ValueError, match="already holds checkpoint_40"):
    convert.convert(files["teacher_dir"], files["student_gin"], existing, output_format="t5x", **args)
  assert _listing(existing) == ["checkpoint_40"]
  with pytest.raises(ValueError, match="holds the teacher"):
    convert.convert(files["teacher_dir"], files["student_gin"], files["teacher_dir"], overwrite=True, **args)
  assert _listing(root) == sorted(before + ["existing", "legacy"])  # nothing else written


def test_convert_cli_reports_errors(files):
  res = subprocess.run(
      [sys.executable, "-m", "guide_jax.convert", "--teacher_dir=/nonexistent/teacher",
       f"--student_gin={files['student_gin']}", f"--output_dir={files['root'] / 'cli_err'}"],
      cwd=ROOT, capture_output=True, text=True, timeout=60, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert res.returncode == 1
  assert "guide_jax.convert: error: teacher_dir '/nonexistent/teacher' does not exist" in res.stderr
  assert not os.path.exists(files["root"] / "cli_err")


def test_repo_student_gin_reads_with_a_vocab_binding():
  config = convert.model_from_gin("gin/models/tiny_student.gin", ["VOCAB_SIZE = 2048"])
  assert (config.vocab_size, config.d_model, config.n_layers) == (2048, 96, 2)


def test_import_does_not_load_t5x_gin_seqio_or_tensorflow():
  code = ("import sys, guide_jax.t5x_compat; "
          "print(sorted(m for m in sys.modules if m.split('.')[0] in "
          "{'t5x', 'gin', 'seqio', 'tensorflow', 'tensorflow_datasets'}))")
  res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert res.returncode == 0, res.stderr[-2000:]
  assert res.stdout.strip() == "[]"
