"""Grouped-query attention and the Hugging Face family options (ModelConfig fields, off by default)
through the model and the three teacher -> student inits (no torch: the forwards against
transformers itself are in tests/test_hf_transformers.py)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from guide_jax import model, sharding
from guide_jax.config import GuideConfig, ModelConfig
from guide_jax.transforms import guide_init, importance, prune_indices, prune_init, weight_selection_init

BASE = ModelConfig(vocab_size=96, d_model=32, n_layers=3, n_heads=8, head_dim=8, mlp_dim=64)
GQA = BASE.replace(n_kv_heads=2)
# One config per family's options (the importers set these; docs/gqa_and_families.md).
FAMILIES = {
    "llama": GQA.replace(embedding_style="hf", query_pre_attn_scalar=8.0, mlp_activation="silu"),
    "qwen2": GQA.replace(embedding_style="hf", query_pre_attn_scalar=8.0, qkv_bias=True, layer_pattern="GGL",
                         sliding_window=3),
    "qwen3": GQA.replace(embedding_style="hf", query_pre_attn_scalar=8.0, qk_norm=True),
    "mistral": GQA.replace(embedding_style="hf", query_pre_attn_scalar=8.0, layer_pattern="L", sliding_window=4,
                           tie_embeddings=False),
    "gemma2": GQA.replace(embedding_style="gemma", norm_offset=1.0, post_norms=True, query_pre_attn_scalar=16.0,
                          attn_logit_softcap=5.0, final_logit_softcap=3.0, layer_pattern="LG", sliding_window=4),
    "gemma3": GQA.replace(embedding_style="gemma", norm_offset=1.0, post_norms=True, qk_norm=True,
                          query_pre_attn_scalar=16.0, layer_pattern="LLG", sliding_window=4,
                          rope_local_theta=100.0, rope_theta=1e6),
    "llama_mha_bias": BASE.replace(qkv_bias=True, out_bias=True, tie_embeddings=False),
}


def tokens(b=2, t=12, seed=1, vocab=96):
  return jax.random.randint(jax.random.PRNGKey(seed), (b, t), 0, vocab)


def random_params(config, seed=0, uniform_post_norms=False):
  """A fresh tree with every norm gain and bias randomized (so each leaf matters in a forward);
  uniform_post_norms: post-norm gains (and a tied model's final norm) uniform, where GUIDE's
  diagonal rules are exact."""
  params = model.init_params(config, jax.random.PRNGKey(seed))
  rng = np.random.default_rng(seed)

  def fill(path, x):
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    if name.endswith("bias"):
      return jnp.asarray(rng.normal(size=x.shape) * 0.3, x.dtype)
    if name.endswith("scale"):
      if uniform_post_norms and ("post_" in name or (config.tie_embeddings and "decoder_norm" in name)):
        return jnp.full(x.shape, 0.8 - config.norm_offset, x.dtype)
      return jnp.asarray(1.0 - config.norm_offset + 0.3 * rng.normal(size=x.shape), x.dtype)
    return x
  return jax.tree_util.tree_map_with_path(fill, params)


def test_default_config_is_t5x_tree_and_gqa_shapes():
  shapes = model.param_shapes(GQA)["decoder"]["layers_0"]["self_attention"]
  assert shapes["query"]["kernel"].shape == (32, 64) and shapes["out"]["kernel"].shape == (64, 32)
  assert shapes["key"]["kernel"].shape == (32, 16) and shapes["value"]["kernel"].shape == (32, 16)
  assert set(model.param_shapes(BASE)["decoder"]["layers_0"]) == {
      "pre_self_attention_layer_norm", "self_attention", "pre_mlp_layer_norm", "mlp"}
  for config in list(FAMILIES.values()) + [BASE, GQA]:
    leaves = jax.tree_util.tree_leaves(model.param_shapes(config))
    assert config.num_params == sum(x.size for x in leaves)
  assert GQA.replace(n_kv_heads=8).t5x_incompatibilities() == [] and BASE.t5x_incompatibilities() == []
  assert GQA.t5x_incompatibilities() == ["n_kv_heads=2"]
  logical = model.logical_axes(GQA)["decoder"]["layers_0"]["self_attention"]["key"]["kernel"]
  assert tuple(logical) == ("embed", "joined_kv")


@pytest.mark.parametrize("change,match", [
    (dict(n_kv_heads=3), "n_kv_heads must be None or a positive int dividing n_heads=8"),
    (dict(layer_pattern="LX", sliding_window=2), "layer_pattern must be a string"),
    (dict(layer_pattern="LG"), "sliding_window is required exactly when"),
    (dict(sliding_window=4), "sliding_window is required exactly when"),
    (dict(qk_norm=True), "qk_norm needs query_pre_attn_scalar"),
    (dict(embedding_style="t5"), "embedding_style must be one of"),
    (dict(attn_logit_softcap=0.0), "attn_logit_softcap must be None or a number > 0"),
    (dict(rope_local_theta=10.0), "rope_local_theta needs local 'L' layers"),
])
def test_bad_family_options_refused(change, match):
  with pytest.raises(ValueError, match=match):
    BASE.replace(**change)


def test_query_head_reads_kv_head_j_over_group_size():
  """GQA == MHA with each kv head repeated h/k times consecutively (transformers' repeat_kv)."""
  params = random_params(GQA)
  mha = jax.tree_util.tree_map(lambda x: x, params)
  for i in range(GQA.n_layers):
    attn = mha["decoder"][f"layers_{i}"]["self_attention"]
    for name in ("key", "value"):
      k = attn[name]["kernel"].reshape(32, 2, 8)
      attn[name]["kernel"] = jnp.repeat(k, 4, axis=1).reshape(32, 64)
  x = tokens()
  np.testing.assert_allclose(model.apply(GQA, params, x), model.apply(BASE, mha, x), rtol=1e-5, atol=1e-5)
  # ... and not with the heads interleaved (the check can fail)
  for i in range(GQA.n_layers):
    attn = mha["decoder"][f"layers_{i}"]["self_attention"]
    for name in ("key", "value"):
      k = params["decoder"][f"layers_{i}"]["self_attention"][name]["kernel"].reshape(32, 2, 8)
      attn[name]["kernel"] = jnp.tile(k, (1, 4, 1)).reshape(32, 64)
  assert not np.allclose(model.apply(GQA, params, x), model.apply(BASE, mha, x), atol=1e-3)


def test_sliding_window_and_local_theta_change_only_what_they_should():
  cfg = FAMILIES["gemma3"]
  params = random_params(cfg)
  x = tokens(t=12)
  out = model.apply(cfg, params, x)
  # With a window longer than the sequence, local layers attend like global ones.
  wide = model.apply(cfg.replace(sliding_window=64), params, x)
  np.testing.assert_allclose(out[:, :4], wide[:, :4], rtol=1e-5, atol=1e-5)  # positions < window: same
  assert not np.allclose(out[:, 8:], wide[:, 8:], atol=1e-3)
  other_theta = model.apply(cfg.replace(rope_local_theta=1e4), params, x)
  assert not np.allclose(out[:, 1:], other_theta[:, 1:], atol=1e-3)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_full_size_students_of_each_family_reproduce_the_teacher(family):
  """GUIDE (all blocks), Weight Selection and pruning at the teacher's size are the teacher's function.
  GUIDE's post-norm and tied-output rules are exact for uniform gains only (docs/gqa_and_families.md)."""
  cfg = FAMILIES[family]
  teacher = random_params(cfg, uniform_post_norms=True)
  x = tokens()
  want = model.apply(cfg, teacher, x)
  assert np.abs(want).max() > 0.5
  student = guide_init(teacher, cfg, cfg, GuideConfig(blocks="all")).params
  np.testing.assert_allclose(model.apply(cfg, student, x), want, rtol=2e-4, atol=2e-4)
  ws = weight_selection_init(teacher, cfg, cfg)
  for a, b in zip(jax.tree_util.tree_leaves(ws), jax.tree_util.tree_leaves(teacher)):
    np.testing.assert_array_equal(a, b)
  imp = importance(teacher, cfg, tokens(2, 8))
  pruned = prune_init(teacher, cfg, cfg, imp, order="importance")  # every axis permuted: same function
  np.testing.assert_allclose(model.apply(cfg, pruned, x), want, rtol=2e-4, atol=2e-4)


def test_post_norm_rule_is_approximate_for_non_uniform_gains():
  cfg = FAMILIES["gemma2"]
  teacher = random_params(cfg)
  x = tokens()
  student = guide_init(teacher, cfg, cfg, GuideConfig(blocks="all")).params
  assert not np.allclose(model.apply(cfg, student, x), model.apply(cfg, teacher, x), atol=1e-3)


@pytest.mark.parametrize("family", ["llama", "gemma3", "qwen2"])
def test_smaller_students_keep_grouped_query_attention(family):
  teacher_cfg = FAMILIES[family]
  student_cfg = teacher_cfg.replace(d_model=16, n_layers=2, n_heads=2, n_kv_heads=1, head_dim=8, mlp_dim=32)
  teacher = random_params(teacher_cfg)
  imp = importance(teacher, teacher_cfg, tokens(2, 8))
  for student in (guide_init(teacher, teacher_cfg, student_cfg).params,
                  weight_selection_init(teacher, teacher_cfg, student_cfg),
                  prune_init(teacher, teacher_cfg, student_cfg, imp)):
    attn = student["decoder"]["layers_0"]["self_attention"]
    assert attn["key"]["kernel"].shape == (16, 8) and attn["query"]["kernel"].shape == (16, 16)
    assert np.isfinite(np.asarray(model.apply(student_cfg, student, tokens()))).all()


def test_weight_selection_keeps_kv_groups_and_the_heads_inside_them():
  """Teacher h=8, k=2 (groups {0..3} -> kv 0, {4..7} -> kv 1); student h=4, k=2: kv heads 0, 1 and
  query heads 0, 2 (group 0) and 4, 6 (group 1): each reads the kv head its teacher head read."""
  teacher = random_params(GQA)
  student_cfg = GQA.replace(n_heads=4)
  ws = weight_selection_init(teacher, GQA, student_cfg)
  t_attn, s_attn = teacher["decoder"]["layers_0"]["self_attention"], ws["decoder"]["layers_0"]["self_attention"]
  q_t, q_s = t_attn["query"]["kernel"].reshape(32, 8, 8), s_attn["query"]["kernel"].reshape(32, 4, 8)
  np.testing.assert_array_equal(q_s, q_t[:, [0, 2, 4, 6]])
  np.testing.assert_array_equal(s_attn["key"]["kernel"], t_attn["key"]["kernel"])
  mqa = weight_selection_init(teacher, GQA, GQA.replace(n_heads=4, n_kv_heads=1))
  q = mqa["decoder"]["layers_0"]["self_attention"]["query"]["kernel"].reshape(32, 4, 8)
  np.testing.assert_array_equal(q, q_t[:, [0, 1, 2, 3]])  # group 0 whole, since kv head 0 is kept
  with pytest.raises(ValueError, match="query heads per kv head: student h_S/k_S=8 > teacher h_T/k_T=4"):
    weight_selection_init(teacher, GQA, GQA.replace(n_kv_heads=1))
  with pytest.raises(ValueError, match="kv heads: student k_S=4 > teacher k_T=2"):
    weight_selection_init(teacher, GQA, GQA.replace(n_kv_heads=4))


def test_pruning_scores_a_kv_group_as_a_unit():
  teacher = random_params(GQA)
  imp = importance(teacher, GQA, tokens(2, 8))
  # group 1 (heads 4..7) wins as a sum although head 0 is the single best head
  heads = np.array([[9.0, 0, 0, 0, 3, 3, 3, 3]] * 3)
  imp = imp._replace(heads=heads)
  idx = prune_indices(imp, GQA, GQA.replace(n_heads=2, n_kv_heads=1))
  np.testing.assert_array_equal(idx.kv_heads[0], [1])
  np.testing.assert_array_equal(idx.heads[0], [4, 5])
  idx = prune_indices(imp, GQA, GQA.replace(n_heads=2, n_kv_heads=2))
  np.testing.assert_array_equal(idx.heads[0], [0, 4])  # one head per kept group, each group's best
  student = prune_init(teacher, GQA, GQA.replace(n_heads=2, n_kv_heads=1), imp)
  v_t = teacher["decoder"]["layers_0"]["self_attention"]["value"]["kernel"].reshape(32, 2, 8)
  np.testing.assert_array_equal(student["decoder"]["layers_0"]["self_attention"]["value"]["kernel"], v_t[:, 1])


def test_sharded_gqa_guide_equals_unsharded():
  cfg = FAMILIES["qwen2"]
  student_cfg = cfg.replace(d_model=16, n_heads=4, n_kv_heads=2, mlp_dim=32)
  teacher = random_params(cfg)
  plain = guide_init(teacher, cfg, student_cfg).params
  mesh = sharding.make_mesh(model_parallel=2)
  sharded = guide_init(jax.device_put(teacher, sharding.param_shardings(cfg, mesh)), cfg, student_cfg,
                       mesh=mesh).params
  for a, b in zip(jax.tree_util.tree_leaves(sharded), jax.tree_util.tree_leaves(plain)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)  # f32 eigenvectors


def test_t5x_export_refuses_gqa(tmp_path):
  from guide_jax.t5x_compat import checkpoint_io
  params = model.init_params(GQA, jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match="t5x's decoder-only network has no n_kv_heads=2"):
    checkpoint_io.write_t5x_checkpoint(str(tmp_path), params, GQA)
  assert not list(tmp_path.iterdir())
