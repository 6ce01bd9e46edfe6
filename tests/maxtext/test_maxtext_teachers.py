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
from guide_jax.config import ModelConfig  # noqa: E402
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


def _heads_permuted(flat, config, perm):
  """q/k kernels [d, n*l] with their head_dim axis reindexed by perm (a RoPE pair layout change)."""
  out = dict(flat)
  for k, x in flat.items():
    if k.endswith(("query/kernel", "key/kernel")):
      d = x.shape[0]
      out[k] = x.reshape(d, -1, config.head_dim)[..., perm].reshape(d, -1)
  return out


def _norms_swapped(flat):
  out = dict(flat)
  for k, x in flat.items():
    if "pre_self_attention_layer_norm" in k:
      other = k.replace("pre_self_attention_layer_norm", "pre_mlp_layer_norm")
      out[k], out[other] = flat[other], x
  return out


def _table(flat, table):
  return {**flat, "decoder/token_embedder/embedding": table}


def test_conventions_are_maxtexts(tier):
  """Each convention of docs/maxtext.md, found by running MaxText: with the other choice guide_jax's
  forward is far from MaxText's (> 1e-3 relative; 1e-4 for the table's rounding), so the 1e-5
  agreements above pin each one down. The tied table: MaxText's forward with a float32 table E
  reads E for the first residual and bfloat16(E) in the logits product."""
  def apply(teacher, flat, config):
    return S.model.apply(config, S.nest(flat), S.TOKENS, positions=teacher.positions)

  def err(teacher, flat, config):
    return S.rel_err(apply(teacher, flat, config), teacher.logits)

  found = {}
  for name, changes in [
      ("scanned", {"pairs (2i, 2i+1) for rope_type=default": "interleave",
                   "q.k / sqrt(head_dim) (scale outside the kernel)": "query_scale",
                   "norms swapped (post_self_attention_layer_norm before attention)": "norms"}),
      ("llama31", {"pairs (i, i + l/2) for rope_type=llama3.1": "halves",
                   "no Llama 3.1 frequency scaling": "no_scaling"}),
      ("mistral_tied", {"tied logits y E^T (no 1/sqrt(d))": "hf"})]:
    teacher = tier.teacher(name)
    params, config, _ = teachers.load(teachers.Source(teacher.items, settings=teacher.settings), None)
    flat = {k: np.asarray(v) for k, v in S.validate.flatten(params).items()}
    assert err(teacher, flat, config) < S.RTOL, name
    perm = layout.interleave_permutation(config.head_dim)
    for what, change in changes.items():
      alt_flat, alt_config = flat, config
      if change == "interleave":
        alt_flat = _heads_permuted(flat, config, perm)
      elif change == "halves":
        alt_flat = _heads_permuted(flat, config, np.argsort(perm))
      elif change == "query_scale":
        alt_config = config.replace(query_pre_attn_scalar=float(config.head_dim))
      elif change == "norms":
        alt_flat = _norms_swapped(flat)
      elif change == "no_scaling":
        alt_config = config.replace(rope_scaling="none", **{
            k: ModelConfig.__dataclass_fields__[k].default for k in configs.LLAMA31_ROPE if k != "rope_scaling"})
      elif change == "hf":
        alt_config = config.replace(embedding_style="hf")
      found[what] = err(teacher, alt_flat, alt_config)
    if teacher.unrounded is not None:
      # MaxText's forward on a float32 table E: the first residual reads E, the logits product
      # bfloat16(E) (guide_jax's untied forward with kernel bfloat16(E)^T / sqrt(d) equals it).
      table, mx_logits = teacher.unrounded
      split = {**_table(flat, table), "decoder/logits_dense/kernel":
               table.astype(jax.numpy.bfloat16).astype(np.float32).T / np.sqrt(np.float32(config.d_model))}
      assert S.rel_err(apply(teacher, split, config.replace(tie_embeddings=False)), mx_logits) < S.RTOL
      found["tied table float32 in the logits product (not bfloat16)"] = S.rel_err(
          apply(teacher, _table(flat, table), config), mx_logits)
  print("\nrelative error to MaxText's logits with the other convention:")
  for what, e in found.items():
    print(f"  {what}: {e:.2e}")
  assert len(found) == 7
  for what, e in found.items():
    assert e > (1e-4 if what.startswith("tied table") else 1e-3), (what, e)
