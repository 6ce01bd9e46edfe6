"""guide_jax.maxtext_compat without MaxText (main suite): the settings <-> ModelConfig rules, the
layout and shape rules, reads in shards, the refusals before any array is read, convert
--format=maxtext and a MaxText teacher in a train run. The same rules against MaxText itself:
tests/maxtext (tests/maxtext_tier.sh)."""
import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import yaml

from guide_jax import convert, maxtext_compat, model, sharding, teachers
from guide_jax.config import ModelConfig
from guide_jax.maxtext_compat import checkpoint_io, configs, layout
from guide_jax.transforms import validate
from test_teachers import _Counter
from test_train import MICRO, micro_bindings, run_train

SETTINGS = dict(base_emb_dim=48, base_num_query_heads=4, base_num_kv_heads=2, head_dim=16, base_mlp_dim=96,
                base_num_decoder_layers=3, vocab_size=2048)


def words(**changes) -> str:
  return configs.format_settings({**SETTINGS, **changes}, shell=False)


def write_teacher(root, scan=True, seed=0, step=0, **changes):
  """A MaxText-layout checkpoint (guide_jax's writer; the tier checks it against MaxText) ->
  (items path, settings words, ModelConfig, params)."""
  config = configs.model_config(words(**changes)).config
  params = model.init_params(config, jax.random.PRNGKey(seed))
  items = checkpoint_io.write(str(root), params, config, scan_layers=scan, step=step)
  return items, words(**changes), config, params


def assert_same(got, want):
  flat_got, flat_want = validate.flatten(got), validate.flatten(want)
  assert sorted(flat_got) == sorted(flat_want)
  for k in flat_want:
    np.testing.assert_array_equal(np.asarray(flat_got[k]), np.asarray(flat_want[k]), err_msg=k)


# ------------------------------------------------------------------------------------ settings
def test_settings_parse_like_maxtexts_command_line(tmp_path):
  base = tmp_path / "model.yml"
  base.write_text("base_emb_dim: 4096\nmlp_activations: ['silu', 'linear']\nrope_max_timescale: 500_000\n")
  child = tmp_path / "child.yml"
  child.write_text("base_config: model.yml\nnormalization_layer_epsilon: 1.e-05\n")
  got = configs.parse(f"{child} base_emb_dim=2048 normalization_layer_epsilon=1e-6 rope_type=llama3.1 "
                      "logits_via_embedding=true mlp_activations=['gelu','linear']")
  assert got == {"base_emb_dim": 2048, "mlp_activations": ["gelu", "linear"], "rope_max_timescale": 500000,
                 "normalization_layer_epsilon": 1e-6, "rope_type": "llama3.1", "logits_via_embedding": True}
  assert configs.parse(str(tmp_path / "model.yml"))["base_emb_dim"] == 4096
  for bad, match in [("base_emb_dim", "neither KEY=VALUE nor a .yml"), (str(tmp_path / "no.yml"), "unreadable"),
                     ("=3", "has no key")]:
    with pytest.raises(configs.MaxTextConfigError, match=match):
      configs.parse(bad)


def test_model_config_follows_maxtexts_conventions():
  """base.yml's defaults for unset keys; llama3.1 RoPE = interleaved pairs + Llama 3.1 scaling;
  tied logits y E^T / sqrt(d) ('t5x') unless normalize_embedding_logits=false ('hf')."""
  plain = configs.model_config("")
  assert (plain.config.d_model, plain.config.n_heads, plain.config.kv_heads, plain.config.head_dim,
          plain.config.mlp_dim, plain.config.n_layers, plain.config.vocab_size) == (2048, 16, 16, 128, 7168, 16, 32000)
  assert (plain.config.mlp_activation, plain.config.norm_eps, plain.config.rope_theta, plain.config.tie_embeddings,
          plain.config.query_pre_attn_scalar, plain.interleaved) == ("silu", 1e-5, 10000.0, False, None, False)
  llama31 = configs.model_config(words(rope_type="llama3.1", rope_max_timescale=500_000))
  assert llama31.interleaved and llama31.config.rope_scaling == "llama3"
  assert {k: getattr(llama31.config, k) for k in configs.LLAMA31_ROPE} == configs.LLAMA31_ROPE
  unscaled = configs.model_config(words(rope_type="llama3.1", rope_use_scale=False))
  assert unscaled.interleaved and unscaled.config.rope_scaling == "none"
  assert configs.model_config(words(logits_via_embedding=True)).config.embedding_style == "t5x"
  assert configs.model_config(words(logits_via_embedding=True, normalize_embedding_logits=False)).config \
      .embedding_style == "hf"
  assert configs.model_config(words(base_num_kv_heads=4)).config.n_kv_heads is None
  assert configs.model_config(words(decoder_block="mistral")).config == configs.model_config(words()).config


def test_unmapped_settings_are_refused_naming_each():
  with pytest.raises(configs.MaxTextConfigError) as e:
    configs.model_config(words(decoder_block="gemma2", num_experts=8, mlp_activations=["silu"], rope_type="yarn",
                               model_name="llama3.1-8b"))
  for name in ("decoder_block='gemma2'", "num_experts=8", "mlp_activations=['silu']", "rope_type='yarn'",
               "model_name='llama3.1-8b'"):
    assert name in str(e.value)
  with pytest.raises(configs.MaxTextConfigError, match="must divide"):
    configs.model_config(words(base_num_kv_heads=3))


@pytest.mark.parametrize("changes", [{}, {"rope_type": "llama3.1", "rope_max_timescale": 500_000},
                                     {"logits_via_embedding": True, "mlp_activations": ["relu", "linear"]},
                                     {"base_num_kv_heads": 4, "normalization_layer_epsilon": 1e-6}])
def test_student_settings_round_trip(changes):
  config = configs.model_config(words(**changes)).config
  values = configs.settings(config)
  assert configs.model_config(values).config == config
  assert list(values) == list(configs.DESCRIBING)


def test_what_maxtexts_llama2_block_cannot_express_is_named():
  config = configs.model_config(words()).config
  hf_style = config.replace(query_pre_attn_scalar=16.0, qk_norm=True, qkv_bias=True)
  assert [p.split("=")[0] for p in configs.incompatibilities(hf_style)] == ["qkv_bias", "qk_norm",
                                                                           "query_pre_attn_scalar"]
  assert configs.incompatibilities(config.replace(position_embedding="relpos", rope_theta=10000.0))
  with pytest.raises(configs.MaxTextConfigError, match="rope_scaling='linear'"):
    configs.settings(config.replace(rope_scaling="linear", rope_scaling_factor=2.0))
  with pytest.raises(configs.MaxTextConfigError, match="embedding_style='gemma'"):
    configs.settings(config.replace(embedding_style="gemma"))


# -------------------------------------------------------------------------------------- layout
def test_shape_rule_and_relayouts():
  """MaxText's shapes (layer axis at 1 when scanned; GQA kept; embedding at the top level) and
  the relayouts (heads-major reshape, interleaved RoPE pairs) inverse of each other."""
  config = configs.model_config(words()).config
  scanned = layout.param_shapes(config, True)
  assert scanned["token_embedder/embedding"] == (2048, 48)
  assert scanned["decoder/layers/self_attention/query/kernel"] == (48, 3, 4, 16)
  assert scanned["decoder/layers/self_attention/key/kernel"] == (48, 3, 2, 16)
  assert scanned["decoder/layers/self_attention/out/kernel"] == (4, 3, 16, 48)
  assert scanned["decoder/layers/post_self_attention_layer_norm/scale"] == (48, 3)
  assert scanned["decoder/logits_dense/kernel"] == (48, 2048)
  unscanned = layout.param_shapes(config, False)
  assert unscanned["decoder/layers_2/mlp/wo/kernel"] == (96, 48) and len(unscanned) == 3 + 9 * 3
  assert "decoder/logits_dense/kernel" not in layout.param_shapes(config.replace(tie_embeddings=True), True)
  x = np.random.RandomState(0).randn(48, 4, 16)
  for interleaved in (False, True):
    ours = layout.to_ours(x, "query", interleaved)
    assert ours.shape == (48, 64)
    np.testing.assert_array_equal(layout.from_ours(ours, "query", config, interleaved), x)
  pairs = layout.to_ours(x, "kv", True).reshape(48, 4, 16)
  np.testing.assert_array_equal(pairs[..., :8], x[..., 0::2])  # pair (2i, 2i+1) -> (i, i + l/2)
  np.testing.assert_array_equal(pairs[..., 8:], x[..., 1::2])
  stacked = np.random.RandomState(1).randn(48, 3, 96)
  np.testing.assert_array_equal(layout.stack_layers(layout.split_layers(stacked)), stacked)


# -------------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("scan,rope_type", [(True, "default"), (False, "llama3.1")])
def test_written_checkpoint_reads_back_in_shards(tmp_path, scan, rope_type):
  """write -> teachers.load: the same params, each on its logical-axis sharding (8 devices,
  model axis 2), equal to the host read; the on-disk tree is MaxText's layout and records
  scan_layers where MaxText reads it."""
  items, settings, config, params = write_teacher(tmp_path / "t", scan=scan, rope_type=rope_type)
  assert items == str(tmp_path / "t" / "0" / "items")
  with open(tmp_path / "t" / "0" / "_CHECKPOINT_METADATA") as f:
    assert json.load(f)["custom_metadata"] == {"scan_layers": scan}
  assert {k: s for k, (s, _) in checkpoint_io.tree_metadata(items).items()} == layout.param_shapes(config, scan)
  mesh = sharding.make_mesh(model_parallel=2)
  got, got_config, _ = teachers.load(teachers.Source(items, settings=settings), mesh)
  assert got_config == config
  assert_same(got, params)
  for a, sh in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(sharding.param_shardings(config, mesh))):
    assert a.sharding == sh
  host, _, _ = teachers.load(teachers.Source(items, "maxtext", settings=settings), None)
  assert_same(host, params)


def test_checkpoint_forms_and_detection_before_guide_jax(tmp_path):
  """<root>, <root>/<step>, <step>/items and a training run dir (<run>/checkpoints/<step>/items,
  which has a checkpoints/ folder like a guide_jax run) are MaxText checkpoints; the latest
  complete step is read; an incomplete one is named."""
  items, settings, _, _ = write_teacher(tmp_path / "root")
  for path in (tmp_path / "root", tmp_path / "root" / "0", items):
    assert teachers.describe(teachers.Source(str(path), settings=settings)).where == items
  run = tmp_path / "run"
  write_teacher(run / "checkpoints", step=2)
  latest, _, _, _ = write_teacher(run / "checkpoints", step=4, seed=1)
  found = teachers.describe(teachers.Source(str(run), settings=settings))
  assert (found.format, found.where) == ("maxtext", latest)
  os.makedirs(run / "checkpoints" / "6" / "items")
  with pytest.raises(checkpoint_io.MaxTextCheckpointError, match="6/items is incomplete"):
    teachers.describe(teachers.Source(str(run), settings=settings))


def test_refusals_before_any_array_is_read(tmp_path, monkeypatch):
  items, settings, _, _ = write_teacher(tmp_path / "t", scan=True)
  monkeypatch.setitem(teachers.FORMATS, "maxtext",
                      teachers.FORMATS["maxtext"]._replace(read=lambda *a: pytest.fail("read before checks")))
  with pytest.raises(ValueError, match="needs its MaxText settings"):
    teachers.load(items, None)
  with pytest.raises(checkpoint_io.MaxTextCheckpointError,
                     match=r"does not match its settings: .*base_mlp_dim=96 \(settings: 128\)"):
    teachers.load(teachers.Source(items, settings=words(base_mlp_dim=128)), None)
  with pytest.raises(checkpoint_io.MaxTextCheckpointError, match="is scanned, but its settings say scan_layers=False"):
    teachers.load(teachers.Source(items, settings=settings + " scan_layers=false"), None)
  with pytest.raises(ValueError, match="teacher/student vocab mismatch"):
    teachers.load(teachers.Source(items, settings=settings), None, vocab_size=1024)
  with pytest.raises(ValueError, match="settings only for a MaxText one"):
    teachers.load(teachers.Source(str(tmp_path / "t"), "guide_jax", settings=settings), None)
  # Another decoder block's leaves (e.g. gemma2's post-FFW norm) and integer arrays.
  tree = {"token_embedder": {"embedding": np.ones((2048, 48), np.float32)},
          "decoder": {"layers": {"post_ffw_norm": {"scale": np.ones((48, 3), np.float32)}}}}
  ocp.PyTreeCheckpointer().save(str(tmp_path / "g" / "0" / "items"), {"params": {"params": tree}})
  with pytest.raises(checkpoint_io.MaxTextCheckpointError, match="not a llama2-style decoder block.*post_ffw_norm"):
    teachers.load(teachers.Source(str(tmp_path / "g"), settings=settings), None)
  ints = {"token_embedder": {"embedding": np.ones((2048, 48), np.int8)}}
  ocp.PyTreeCheckpointer().save(str(tmp_path / "i" / "0" / "items"), {"params": {"params": ints}})
  with pytest.raises(checkpoint_io.MaxTextCheckpointError, match="dtypes \\['int8'\\]"):
    teachers.load(teachers.Source(str(tmp_path / "i"), settings=settings), None)


def test_writer_checks_before_writing(tmp_path):
  config = configs.model_config(words()).config
  params = model.init_params(config, jax.random.PRNGKey(0))
  with pytest.raises(configs.MaxTextConfigError, match="query_pre_attn_scalar"):
    checkpoint_io.write(str(tmp_path / "a"), params, config.replace(query_pre_attn_scalar=16.0))
  with pytest.raises(checkpoint_io.MaxTextCheckpointError, match="do not fit their ModelConfig"):
    checkpoint_io.write(str(tmp_path / "b"), params, config.replace(mlp_dim=64))
  with pytest.raises(checkpoint_io.MaxTextCheckpointError, match="float32 or bfloat16"):
    checkpoint_io.write(str(tmp_path / "c"), params, config, dtype="float16")
  assert not any((tmp_path / n).exists() for n in "abc")
  items = checkpoint_io.write(str(tmp_path / "d"), params, config, dtype="bfloat16")
  assert {dt for _, dt in checkpoint_io.tree_metadata(items).values()} == {"bfloat16"}


# -------------------------------------------------------------------------------------- convert
def test_convert_format_maxtext(tmp_path, capsys):
  """convert --format=maxtext from a MaxText teacher: <out>/0/items, maxtext.yml (the student's
  settings, reading back to its ModelConfig) and maxtext_distill.yml (student and teacher
  overrides with both load_parameters_paths); the settings printed; an existing output refused."""
  items, settings, _, _ = write_teacher(tmp_path / "t", rope_type="llama3.1")
  out = str(tmp_path / "out")
  argv = ["convert", f"--teacher_dir={items}", f"--teacher_maxtext={settings}", "--student=n_layers=2 mlp_dim=64",
          "--format=maxtext", "--maxtext_scan_layers=false", f"--output_dir={out}"]
  convert.define_flags()
  convert.flags.FLAGS(argv)
  try:
    convert.main(["convert"])
  finally:
    convert.flags.FLAGS.unparse_flags()
  printed = capsys.readouterr().out
  assert "MaxText settings of the student: decoder_block=llama2 base_emb_dim=48" in printed
  assert "base_mlp_dim=64 base_num_decoder_layers=2" in printed
  assert "rope_type=llama3.1" in printed and "scan_layers=false" in printed
  student = configs.parse(os.path.join(out, "maxtext.yml"))
  assert student["load_parameters_path"] == os.path.join(out, "0", "items") and student["scan_layers"] is False
  with open(os.path.join(out, "guide_info.json")) as f:
    assert ModelConfig(**json.load(f)["student_config"]) == configs.model_config(student).config
  with open(os.path.join(out, "maxtext_distill.yml")) as f:
    distill = yaml.safe_load(f)
  assert distill["base_config"] == "post_train/distillation.yml"
  assert distill["teacher_overrides"]["load_parameters_path"] == items
  assert distill["teacher_overrides"]["rope_type"] == "llama3.1" and distill["teacher_overrides"]["scan_layers"]
  assert distill["student_overrides"]["load_parameters_path"] == student["load_parameters_path"]
  back, back_config, _ = teachers.load(teachers.Source(out, settings=os.path.join(out, "maxtext.yml")), None)
  assert back_config == configs.model_config(student).config
  with pytest.raises(ValueError, match="already holds 0, maxtext.yml"):
    convert.convert(items, lambda t: t.replace(n_layers=1), out, output_format="maxtext", teacher_settings=settings)
  assert back["decoder"]["token_embedder"]["embedding"].shape == (2048, 48)


def test_convert_refuses_a_student_maxtext_cannot_build_before_reading(tmp_path, monkeypatch):
  items, settings, _, _ = write_teacher(tmp_path / "t")
  monkeypatch.setitem(teachers.FORMATS, "maxtext",
                      teachers.FORMATS["maxtext"]._replace(read=lambda *a: pytest.fail("teacher read")))
  with pytest.raises(ValueError, match="--format=maxtext: MaxText's llama2 decoder block has no query_pre_attn_scalar"):
    convert.convert(items, lambda t: t.replace(query_pre_attn_scalar=16.0), str(tmp_path / "out"),
                    output_format="maxtext", teacher_settings=settings)
  assert not (tmp_path / "out").exists()


def test_maxtext_teacher_for_guide_and_kd_in_one_read(tmp_path, monkeypatch):
  """train with gin/guide.gin + gin/kd.gin + gin/maxtext/teacher.gin: the MaxText teacher is read
  once (one finiteness pass) for the GUIDE start and for KD, and the run finishes."""
  items, settings, _, _ = write_teacher(tmp_path / "t", base_num_kv_heads=4, mlp_activations=["gelu", "linear"])
  count = _Counter(monkeypatch)
  result = run_train(MICRO + ["gin/guide.gin", "gin/kd.gin", "gin/maxtext/teacher.gin"],
                     micro_bindings(tmp_path / "run", steps=2, MAXTEXT_TEACHER=repr(items),
                                    MAXTEXT_SETTINGS=repr(settings)))
  assert result["finished"]
  assert (count.reads, count.passes) == (1, 1)
