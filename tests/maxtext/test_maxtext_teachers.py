"""MaxText teachers (tier): checkpoints initialized and saved by MaxText itself, read by guide_jax's
teachers.load, give MaxText's own logits; the shapes guide_jax expects for MaxText settings are the
shapes MaxText builds; checkpoints guide_jax does not map are refused before any array is read."""
import os

import jax
import numpy as np
import pytest

pytest.importorskip("maxtext.configs.pyconfig")

import maxtext_support as S  # noqa: E402
from guide_jax import convert, maxtext_compat, teachers  # noqa: E402
from guide_jax.maxtext_compat import configs, layout  # noqa: E402


@pytest.mark.parametrize("name", sorted(S.TEACHERS))
def test_teacher_logits_equal_maxtext(tier, name):
  """A teacher MaxText initialized (norm scales perturbed in its own state) and saved with its
  conversion writer, scanned (default RoPE; Mistral block, tied) and unscanned (Llama 3.1 RoPE at
  positions up to 927, where its scaling acts): guide_jax's forward on what teachers.load
  restores (2-device mesh) equals MaxText's forward within 1e-5."""
  teacher = tier.teacher(name)
  source = teachers.Source(teacher.items, settings=teacher.settings)
  found = teachers.describe(source)
  assert found.format == "maxtext" and found.where == teacher.items
  assert S.rel_err(S.ours(source, teacher.positions), teacher.logits) < S.RTOL


def test_teacher_dir_forms(tier):
  """The conversion root (<root>, <root>/0) reads the same checkpoint as <root>/0/items."""
  teacher = tier.teacher("scanned")
  root = os.path.dirname(os.path.dirname(teacher.items))
  for path in (root, os.path.dirname(teacher.items)):
    assert teachers.describe(teachers.Source(path, settings=teacher.settings)).where == teacher.items


VARIANTS = [
    ({**S.TINY}, True),
    ({**S.TINY, "base_num_kv_heads": 4, "logits_via_embedding": True}, False),
    ({**S.TINY, "base_num_query_heads": 8, "head_dim": 8, "rope_type": "llama3.1"}, True),
    ({**S.TINY, "decoder_block": "mistral", "base_num_decoder_layers": 3, "base_mlp_dim": 96}, False),
]


@pytest.mark.parametrize("values,scan", VARIANTS)
def test_shape_rule_is_maxtexts(tier, values, scan):
  """layout.param_shapes(settings) -- what convert checks a student against before writing --
  equals the parameter shapes MaxText's own model has for those settings. (tier: MaxText's config
  sets the compilation cache dir, so it is built after the tier has set its own.)"""
  expected = layout.param_shapes(configs.model_config(values).config, scan)
  assert S.abstract_shapes(S.config(scan_layers=scan, **values)) == expected


def test_refuses_another_decoder_block(tier, tmp_path):
  """A checkpoint of MaxText's gemma2 block (its tree as MaxText builds it, saved by MaxText's
  conversion writer) is refused (describe, convert) before any array is read, naming the leaves a
  llama2 block lacks; convert writes nothing."""
  values = {**S.TINY, "decoder_block": "gemma2", "base_num_kv_heads": 4}
  cfg = S.config(scan_layers=True, **values)
  zeros = jax.tree_util.tree_map(lambda x: np.zeros(x.shape, np.float32),
                                 S.nnx.state(S.abstract(cfg), S.nnx.Param).to_pure_dict())
  S.save_weights_to_checkpoint(str(tmp_path / "g"), zeros, device_count=1, use_ocdbt=True, use_zarr3=True,
                               config=cfg)
  items = str(tmp_path / "g" / "0" / "items")
  with pytest.raises(maxtext_compat.MaxTextCheckpointError, match="not a llama2-style decoder block"):
    teachers.describe(teachers.Source(items, settings=S.words(S.TINY)))
  with pytest.raises(ValueError, match="llama2"):
    convert.convert(items, lambda t: t.replace(n_layers=1), str(tmp_path / "out"), output_format="maxtext",
                    teacher_settings=S.words(values))
  assert not (tmp_path / "out").exists()


def test_refuses_settings_the_checkpoint_contradicts(tier):
  """Settings whose shapes are not the checkpoint's are refused naming the setting and the value
  the checkpoint shows; a scan_layers setting the tree contradicts is refused."""
  teacher = tier.teacher("scanned")
  wrong = S.words({**teacher.values, "base_num_kv_heads": 4})
  with pytest.raises(maxtext_compat.MaxTextCheckpointError, match=r"base_num_kv_heads=2 \(settings: 4\)"):
    teachers.describe(teachers.Source(teacher.items, settings=wrong))
  with pytest.raises(maxtext_compat.MaxTextCheckpointError, match="scan_layers=False"):
    teachers.describe(teachers.Source(teacher.items, settings=teacher.settings + " scan_layers=false"))
