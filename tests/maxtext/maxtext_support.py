"""MaxText's side of the tier: tiny llama2-block models built, initialized, run and saved by MaxText
itself (pyconfig, model_creation_utils.from_pretrained (NNX, MaxText's default), its conversion
writer save_weights_to_checkpoint, its load_parameters_path), and the README route run as written."""
import os
import re
import subprocess
import sys
from typing import Dict, NamedTuple, Optional, Tuple

import jax
import numpy as np

from guide_jax import maxtext_compat, model, sharding, teachers
from guide_jax.transforms import validate  # noqa: F401  (the tests' flatten)

import maxtext  # noqa: E402  (the tier's venv has MaxText's src on its path)
from flax import nnx, traverse_util  # noqa: E402
from maxtext.checkpoint_conversion.utils.utils import save_weights_to_checkpoint  # noqa: E402
from maxtext.common import checkpointing  # noqa: E402
from maxtext.configs import pyconfig  # noqa: E402
from maxtext.utils import model_creation_utils  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = os.path.join(os.path.dirname(maxtext.__file__), "configs")
BASE_YML = os.path.join(CONFIGS, "base.yml")
TOKENIZER = os.path.join(os.path.dirname(maxtext.__file__), "assets", "tokenizers", "tokenizer.llama2")
SHIMS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tunix_shims")
RTOL = 1e-5

# A tiny llama2-block model (GQA: 4 query heads on 2 kv heads) and MaxText's CPU run settings.
TINY = dict(base_emb_dim=64, base_num_query_heads=4, base_num_kv_heads=2, base_mlp_dim=128, head_dim=16,
            base_num_decoder_layers=2, vocab_size=256)
RUN = dict(max_target_length=32, per_device_batch_size=1, attention="dot_product", hardware="cpu",
           skip_jax_distributed_system=True, dtype="float32", weight_dtype="float32", enable_dropout=False,
           run_name="tier")
TOKENS = np.random.RandomState(0).randint(0, 256, (2, 24)).astype(np.int32)
NEAR = np.broadcast_to(np.arange(24), (2, 24)).astype(np.int32)
FAR = (NEAR * 40 + 7).astype(np.int32)  # up to 927: where Llama 3.1's RoPE scaling changes the angles

# name -> (settings, scan_layers, positions, bf16 table)
TEACHERS = {
    "scanned": (TINY, True, NEAR, False),
    # Llama 3.1 shape, unscanned: GQA 8 heads on 2, interleaved RoPE pairs with the llama3.1
    # frequency scaling, read at positions where the scaling changes the angles.
    "llama31": ({**TINY, "base_num_query_heads": 8, "head_dim": 8, "rope_type": "llama3.1",
                 "rope_max_timescale": 500_000}, False, FAR, False),
    # Mistral shape: MaxText's mistral decoder block, GQA, theta 1e6; tied output layer. MaxText
    # rounds the tied table to bfloat16 in the logits product, so the table is made
    # bfloat16-representable to compare at 1e-5 (docs/maxtext.md).
    "mistral_tied": ({**TINY, "decoder_block": "mistral", "base_num_query_heads": 8, "head_dim": 8,
                      "rope_max_timescale": 1_000_000, "logits_via_embedding": True}, True, NEAR, True),
}


def rel_err(a, b) -> float:
  return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / np.max(np.abs(b)))


def words(values: Dict) -> str:
  """MaxText settings as the words teachers.Source.settings / --teacher_maxtext take."""
  return maxtext_compat.format_settings(values, shell=False)


def config(config_file: str = BASE_YML, **overrides):
  """MaxText's own config: pyconfig.initialize on a .yml with keyword overrides."""
  return pyconfig.initialize(["tier", config_file], **{**RUN, **overrides})


def build(cfg):
  """(model, mesh): MaxText's NNX model, initialized by MaxText (or restored from
  cfg.load_parameters_path through MaxText's own restore)."""
  return model_creation_utils.from_pretrained(cfg)


def forward(mx_model, mesh, positions=NEAR) -> np.ndarray:
  with mesh:
    return np.asarray(mx_model(TOKENS, positions, enable_dropout=False), np.float32)


def perturb(mx_model, seed: int) -> None:
  """MaxText initializes every norm scale to 1, which would hide a misplaced norm: give them
  1 + 0.3 N(0, 1) inside MaxText's model state."""
  rng = np.random.RandomState(seed)
  _change(mx_model, lambda name, x: (1.0 + 0.3 * rng.randn(*x.shape)).astype(np.float32)
          if name.endswith("['scale']") else x)


def round_table(mx_model) -> None:
  """The embedding table rounded to bfloat16 (kept float32) inside MaxText's model state."""
  _change(mx_model, lambda name, x: np.asarray(x).astype(jax.numpy.bfloat16).astype(np.float32)
          if "token_embedder" in name else x)


def _change(mx_model, fn) -> None:
  state = nnx.state(mx_model, nnx.Param)
  changed = jax.tree_util.tree_map_with_path(lambda path, x: fn(jax.tree_util.keystr(path), np.asarray(x)),
                                             state.to_pure_dict())
  nnx.replace_by_pure_dict(state, changed)
  nnx.update(mx_model, state)


def abstract(cfg):
  """MaxText's abstract NNX model for cfg (nnx.eval_shape: no compute)."""
  return model_creation_utils.create_nnx_abstract_model(cfg)[1]


def nest(flat: Dict[str, np.ndarray]) -> Dict:
  """{'a/b/c': x} -> {'a': {'b': {'c': x}}} (validate.flatten's inverse)."""
  return traverse_util.unflatten_dict(flat, sep="/")


def params_of(mx_model):
  return jax.tree_util.tree_map(np.asarray, nnx.state(mx_model, nnx.Param).to_pure_dict())


def abstract_shapes(cfg) -> Dict[str, tuple]:
  """{path: shape} of the params MaxText builds for cfg (nnx.eval_shape: no compute)."""
  flat = jax.tree_util.tree_flatten_with_path(nnx.state(abstract(cfg), nnx.Param).to_pure_dict())[0]
  return {"/".join(str(getattr(k, "key", k)) for k in path): tuple(v.shape) for path, v in flat}


class Teacher(NamedTuple):
  items: str            # <root>/0/items, what load_parameters_path names
  settings: str         # its MaxText settings as words
  values: Dict
  scan: bool
  positions: np.ndarray
  logits: np.ndarray    # MaxText's forward on TOKENS at positions
  # bf16 table teachers: (table before rounding, MaxText's forward with it), else None
  unrounded: Optional[Tuple[np.ndarray, np.ndarray]]


def ours(source, positions=NEAR, mesh_devices: int = 2) -> np.ndarray:
  """guide_jax's logits of a teacher source, read by teachers.load on a 2-device mesh."""
  params, cfg, _ = teachers.load(source, sharding.make_mesh(model_parallel=mesh_devices))
  return np.asarray(model.apply(cfg, params, TOKENS, positions=positions))


def readme_block(name: str = "maxtext-route") -> str:
  with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
    text = f.read()
  m = re.search(rf"<!-- {name}:begin -->\n```bash\n(.*?)```\n<!-- {name}:end -->", text, re.S)
  assert m, f"README.md has no {name} block"
  return m.group(1)


class Tier:
  """Each teacher made once per session, and the README route run once. MaxText's persistent
  compilation cache (jax_cache_dir, default ~/jax_cache) is the session's own: every run compiles
  cold, as CI's does, and nothing is written outside the test's directory."""

  def __init__(self, root):
    self.root = str(root)
    RUN["jax_cache_dir"] = os.path.join(self.root, "jax_cache")
    self._teachers: Dict[str, Teacher] = {}
    self._route: Optional[dict] = None

  def teacher(self, name: str) -> Teacher:
    if name not in self._teachers:
      values, scan, positions, bf16 = TEACHERS[name]
      where = os.path.join(self.root, f"teacher_{name}")
      cfg = config(scan_layers=scan, base_output_directory=where, **values)
      mx_model, mesh = build(cfg)
      perturb(mx_model, seed=len(self._teachers))
      unrounded = None
      if bf16:
        unrounded = (params_of(mx_model)["token_embedder"]["embedding"], forward(mx_model, mesh, positions))
        round_table(mx_model)
      save_weights_to_checkpoint(where, params_of(mx_model), device_count=1, use_ocdbt=True, use_zarr3=True,
                                 config=cfg)
      self._teachers[name] = Teacher(os.path.join(where, "0", "items"), words(values), dict(values), scan,
                                     positions, forward(mx_model, mesh, positions), unrounded)
    return self._teachers[name]

  def route(self) -> dict:
    """README's maxtext-route block, run as written in bash on the 'scanned' teacher."""
    if self._route is None:
      teacher = self.teacher("scanned")
      work = os.path.join(self.root, "route")
      run = {**RUN, "dataset_type": "synthetic", "steps": 3, "checkpoint_period": 2,
             "tokenizer_type": "sentencepiece", "tokenizer_path": TOKENIZER}
      run.pop("run_name")
      env = dict(os.environ, TEACHER=teacher.items, TEACHER_SETTINGS=teacher.settings, WORK=work,
                 STUDENT="d_model=32 n_layers=1 mlp_dim=64", RUN_SETTINGS=words(run),
                 PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
                 # google-tunix 0.1.7 under MaxText's train_distill: tunix_shims/sitecustomize.py
                 PYTHONPATH=os.pathsep.join([SHIMS] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
      res = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", readme_block()], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=1200)
      log = res.stdout + res.stderr
      with open(os.path.join(self.root, "route.log"), "w") as f:
        f.write(log)
      assert res.returncode == 0, log[-6000:]
      self._route = {"work": work, "log": log, "teacher": teacher}
    return self._route
