"""Comparison-arm inits: Minitron-style pruning (importance, prune_init) and Weight Selection.

Pruning is tested on teachers built to have KNOWN important channels, heads, neurons and layers;
Weight Selection on explicit uniform indices (written out here, not recomputed by the code under test).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from guide_jax import model, sharding
from guide_jax.config import ModelConfig
from guide_jax.transforms.prune import Importance, importance, prune_indices, prune_init, top_k
from guide_jax.transforms.weight_selection import weight_selection_init

TEACHER = ModelConfig(vocab_size=96, d_model=32, n_layers=4, n_heads=4, head_dim=8, mlp_dim=64)
STUDENT = TEACHER.replace(d_model=16, n_layers=2, n_heads=2, head_dim=4, mlp_dim=32)
NORMS = ("pre_self_attention_layer_norm", "pre_mlp_layer_norm")

# The known important units (not first-k, not uniform, different per layer).
_RNG = np.random.default_rng(7)
CHANNELS = np.sort(_RNG.choice(32, 16, replace=False))
HEADS = np.array([[1, 3], [0, 3], [2, 3], [1, 2]])
SHARED_HEADS = np.array([[1, 3]] * 4)  # relpos models keep the same heads in every layer
NEURONS = np.stack([np.sort(_RNG.choice(64, 32, replace=False)) for _ in range(4)])
IDENTITY_LAYERS = (0, 2)  # near-identity blocks: the least important for depth='importance'


def tokens(batch=4, length=16, seed=0):
  return np.random.default_rng(seed).integers(0, TEACHER.vocab_size, (batch, length)).astype(np.int32)


def known_teacher(config, heads, seed=0):
  """A teacher whose important units are CHANNELS, `heads`, NEURONS and the layers outside
  IDENTITY_LAYERS: every other unit's activations are scaled down 100x."""
  params = jax.tree_util.tree_map(np.array, model.init_params(config, jax.random.PRNGKey(seed)))
  dec = params["decoder"]
  d, h, l = config.d_model, config.n_heads, config.head_dim
  weak_channels = np.setdiff1d(np.arange(d), CHANNELS)
  dec["decoder_norm"]["scale"][weak_channels] = 0.01
  for i in range(config.n_layers):
    layer = dec[f"layers_{i}"]
    for norm in NORMS:  # the norm outputs are the channel scores
      layer[norm]["scale"][weak_channels] = 0.01
    value = layer["self_attention"]["value"]["kernel"].reshape(d, h, l)  # a view: heads-major
    value[:, np.setdiff1d(np.arange(h), heads[i])] *= 0.01
    layer["mlp"]["wi_1"]["kernel"][:, np.setdiff1d(np.arange(config.mlp_dim), NEURONS[i])] *= 0.01
    if i in IDENTITY_LAYERS:  # the block barely changes the residual: cos(in, out) ~ 1
      layer["self_attention"]["out"]["kernel"] *= 1e-3
      layer["mlp"]["wo"]["kernel"] *= 1e-3
  return params


def _config_and_heads(position_embedding, tie):
  config = TEACHER.replace(position_embedding=position_embedding, tie_embeddings=tie)
  return config, (SHARED_HEADS if position_embedding == "relpos" else HEADS)


@pytest.mark.parametrize("aggregation", ["mean", "l2"])
@pytest.mark.parametrize("position_embedding", ["rope", "relpos"])
def test_importance_ranks_the_known_units_first(aggregation, position_embedding):
  config, heads = _config_and_heads(position_embedding, True)
  imp = importance(known_teacher(config, heads), config, tokens(), aggregation=aggregation)
  assert imp.heads.shape == (4, 4) and imp.neurons.shape == (4, 64) and imp.channels.shape == (32,)
  np.testing.assert_array_equal(top_k(imp.channels, 16), CHANNELS)
  for i in range(4):
    np.testing.assert_array_equal(top_k(imp.heads[i], 2), heads[i])
    np.testing.assert_array_equal(top_k(imp.neurons[i], 32), NEURONS[i])
  np.testing.assert_array_equal(top_k(imp.layers, 2), [1, 3])
  assert np.all(np.isfinite(imp.layers)) and np.all(imp.layers >= 0)


def test_importance_of_an_untouched_teacher_is_not_the_known_sets():
  """The check can fail: a plain random teacher does not rank CHANNELS / HEADS first."""
  imp = importance(model.init_params(TEACHER, jax.random.PRNGKey(0)), TEACHER, tokens())
  assert not np.array_equal(top_k(imp.channels, 16), CHANNELS)
  assert not all(np.array_equal(top_k(imp.heads[i], 2), HEADS[i]) for i in range(4))


def test_top_k_ties_take_the_lower_index_and_orders():
  np.testing.assert_array_equal(top_k([1.0, 3.0, 3.0, 0.5, 3.0], 2), [1, 2])
  np.testing.assert_array_equal(top_k([1.0, 3.0, 2.0, 5.0], 3), [1, 2, 3])
  np.testing.assert_array_equal(top_k([1.0, 3.0, 2.0, 5.0], 3, "importance"), [3, 1, 2])
  # Many ties (where an unstable sort would scramble them): equal scores keep the lower index first.
  scores = np.random.default_rng(0).integers(0, 3, 200).astype(float)
  ranked = top_k(scores, 120, "importance")
  want = np.concatenate([np.flatnonzero(scores == v) for v in (2.0, 1.0, 0.0)])[:120]
  np.testing.assert_array_equal(ranked, want)
  np.testing.assert_array_equal(top_k(scores, 120), np.sort(want))


@pytest.mark.parametrize("aggregation", ["mean", "l2"])
def test_importance_values_match_a_reference(aggregation):
  """Scores against numpy: layer scores from the model's own hidden states; with every pre-norm
  scale zero the blocks are the identity, so heads/neurons score 0 and the channel scores are the
  final norm's alone."""
  agg = (lambda s: s.mean((0, 1))) if aggregation == "mean" else (lambda s: np.sqrt((s ** 2).sum((0, 1))))
  x = tokens(3, 10)
  teacher = model.init_params(TEACHER, jax.random.PRNGKey(5))
  imp = importance(teacher, TEACHER, x, aggregation=aggregation)
  _, hidden = model.apply(TEACHER, teacher, x, return_hidden=True)
  states = [np.asarray(teacher["decoder"]["token_embedder"]["embedding"])[x]] + [np.asarray(h) for h in hidden]
  cos = [np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
         for a, b in zip(states[:-1], states[1:])]
  np.testing.assert_allclose(imp.layers, [agg(1 - c) for c in cos], rtol=1e-4, atol=1e-6)
  for i in range(TEACHER.n_layers):
    for norm in NORMS:
      teacher["decoder"][f"layers_{i}"][norm]["scale"] = jnp.zeros(TEACHER.d_model)
  g = np.linspace(0.5, 1.5, TEACHER.d_model).astype(np.float32)
  teacher["decoder"]["decoder_norm"]["scale"] = jnp.asarray(g)
  imp = importance(teacher, TEACHER, x, aggregation=aggregation)
  e = states[0]
  normed = e / np.sqrt(np.mean(e * e, -1, keepdims=True) + TEACHER.norm_eps) * g
  np.testing.assert_allclose(imp.channels, agg(np.abs(normed)), rtol=1e-5)
  assert np.all(imp.heads == 0) and np.all(imp.neurons == 0)
  np.testing.assert_allclose(imp.layers, 0, atol=1e-6)


@pytest.mark.parametrize("position_embedding,tie", [("rope", True), ("relpos", False)])
def test_prune_init_keeps_exactly_the_known_units(position_embedding, tie):
  config, heads = _config_and_heads(position_embedding, tie)
  student_cfg = STUDENT.replace(position_embedding=position_embedding, tie_embeddings=tie)
  teacher = known_teacher(config, heads)
  imp = importance(teacher, config, tokens())
  idx = prune_indices(imp, config, student_cfg, depth="importance")
  np.testing.assert_array_equal(idx.layers, [1, 3])
  np.testing.assert_array_equal(idx.channels, CHANNELS)
  np.testing.assert_array_equal(idx.heads, heads[[1, 3]])
  np.testing.assert_array_equal(idx.neurons, NEURONS[[1, 3]])
  student = prune_init(teacher, config, student_cfg, imp, depth="importance")["decoder"]
  t = teacher["decoder"]
  ch, dims = CHANNELS, [0, 2, 4, 6]  # head dims 8 -> 4: uniform selection
  np.testing.assert_array_equal(student["token_embedder"]["embedding"], t["token_embedder"]["embedding"][:, ch])
  np.testing.assert_array_equal(student["decoder_norm"]["scale"], t["decoder_norm"]["scale"][ch])
  for i, j in enumerate([1, 3]):
    s_layer, t_layer = student[f"layers_{i}"], t[f"layers_{j}"]
    for name in ("query", "key", "value"):
      want = t_layer["self_attention"][name]["kernel"].reshape(32, 4, 8)[ch][:, heads[j]][:, :, dims]
      np.testing.assert_array_equal(s_layer["self_attention"][name]["kernel"], want.reshape(16, 8))
    want = t_layer["self_attention"]["out"]["kernel"].reshape(4, 8, 32)[heads[j]][:, dims][:, :, ch]
    np.testing.assert_array_equal(s_layer["self_attention"]["out"]["kernel"], want.reshape(8, 16))
    for name in ("wi_0", "wi_1"):
      np.testing.assert_array_equal(s_layer["mlp"][name]["kernel"], t_layer["mlp"][name]["kernel"][ch][:, NEURONS[j]])
    np.testing.assert_array_equal(s_layer["mlp"]["wo"]["kernel"], t_layer["mlp"]["wo"]["kernel"][NEURONS[j]][:, ch])
    for norm in NORMS:
      np.testing.assert_array_equal(s_layer[norm]["scale"], t_layer[norm]["scale"][ch])
  if position_embedding == "relpos":
    np.testing.assert_array_equal(student["relpos_bias"]["rel_embedding"], t["relpos_bias"]["rel_embedding"][[1, 3]])
  if not tie:
    np.testing.assert_array_equal(student["logits_dense"]["kernel"], t["logits_dense"]["kernel"][ch])
  # depth='first_n' keeps teacher layers 0, 1 with their own heads.
  idx = prune_indices(imp, config, student_cfg, depth="first_n")
  np.testing.assert_array_equal(idx.layers, [0, 1])
  np.testing.assert_array_equal(idx.heads, heads[[0, 1]])


@pytest.mark.parametrize("teacher_tie,student_tie,position_embedding,depth", [
    (True, True, "rope", "first_n"), (True, False, "relpos", "importance"),
    (False, True, "rope", "uniform"), (False, False, "relpos", "first_n")])
def test_prune_init_tree_matches_the_student(teacher_tie, student_tie, position_embedding, depth):
  config = TEACHER.replace(tie_embeddings=teacher_tie, position_embedding=position_embedding)
  student_cfg = STUDENT.replace(tie_embeddings=student_tie, position_embedding=position_embedding,
                                d_model=12, mlp_dim=24)  # also non-divisible widths
  teacher = model.init_params(config, jax.random.PRNGKey(1))
  rng = np.random.default_rng(1)  # any scores: this test is about the tree
  imp = Importance(rng.random((4, 4)), rng.random((4, 64)), rng.random(32), rng.random(4))
  student = prune_init(teacher, config, student_cfg, imp, depth=depth)
  shapes = model.param_shapes(student_cfg)
  assert jax.tree_util.tree_structure(student) == jax.tree_util.tree_structure(shapes)
  for a, b in zip(jax.tree_util.tree_leaves(student), jax.tree_util.tree_leaves(shapes)):
    assert a.shape == b.shape and a.dtype == b.dtype
  if teacher_tie and not student_tie:  # the tied student's effective output layer
    emb = np.asarray(student["decoder"]["token_embedder"]["embedding"])
    np.testing.assert_allclose(student["decoder"]["logits_dense"]["kernel"], emb.T / np.sqrt(12), rtol=1e-6)


@pytest.mark.parametrize("position_embedding,tie", [("rope", True), ("relpos", False)])
def test_full_size_prune_reproduces_the_teacher(position_embedding, tie):
  config = TEACHER.replace(position_embedding=position_embedding, tie_embeddings=tie)
  teacher = model.init_params(config, jax.random.PRNGKey(2))
  teacher["decoder"]["decoder_norm"]["scale"] = jnp.linspace(0.5, 1.5, config.d_model)
  imp = importance(teacher, config, tokens(2, 8))
  # Index order at full size: the teacher itself, array for array.
  same = prune_init(teacher, config, config, imp)
  for a, b in zip(jax.tree_util.tree_leaves(same), jax.tree_util.tree_leaves(teacher)):
    np.testing.assert_array_equal(a, b)
  # Importance order: every axis permuted (consistently) -> the same function, other arrays.
  idx = prune_indices(imp, config, config, order="importance")
  assert not np.array_equal(idx.channels, np.arange(32)) and not np.array_equal(idx.heads[0], np.arange(4))
  permuted = prune_init(teacher, config, config, imp, order="importance")
  x = tokens(2, 9, seed=3)
  want = model.apply(config, teacher, x)
  np.testing.assert_allclose(model.apply(config, permuted, x), want, rtol=1e-4, atol=1e-4)
  assert not np.allclose(permuted["decoder"]["token_embedder"]["embedding"],
                         teacher["decoder"]["token_embedder"]["embedding"])
  # The check can fail: permute the out rows' heads of one layer only and the function changes.
  out = permuted["decoder"]["layers_1"]["self_attention"]["out"]["kernel"]
  permuted["decoder"]["layers_1"]["self_attention"]["out"]["kernel"] = jnp.roll(out, 8, axis=0)
  assert not np.allclose(model.apply(config, permuted, x), want, atol=1e-2)


# ------------------------------------------------------------------------------ weight selection
def test_weight_selection_keeps_uniform_indices():
  config = TEACHER.replace(position_embedding="relpos", tie_embeddings=False)
  student_cfg = config.replace(d_model=12, n_layers=2, n_heads=2, head_dim=4, mlp_dim=24)
  teacher = jax.tree_util.tree_map(np.asarray, model.init_params(config, jax.random.PRNGKey(0)))
  student = weight_selection_init(teacher, config, student_cfg, layer_selection="uniform")
  shapes = model.param_shapes(student_cfg)
  assert jax.tree_util.tree_structure(student) == jax.tree_util.tree_structure(shapes)
  for a, b in zip(jax.tree_util.tree_leaves(student), jax.tree_util.tree_leaves(shapes)):
    assert a.shape == b.shape and a.dtype == b.dtype
  s, t = student["decoder"], teacher["decoder"]
  d_idx = [0, 3, 6, 8, 11, 14, 17, 20, 23, 25, 28, 31]  # round(linspace(0, 31, 12))
  f_idx = [0, 3, 5, 8, 11, 14, 16, 19, 22, 25, 27, 30, 33, 36, 38, 41, 44, 47, 49, 52, 55, 58, 60, 63]
  h_idx, l_idx = [0, 2], [0, 2, 4, 6]
  np.testing.assert_array_equal(s["token_embedder"]["embedding"], t["token_embedder"]["embedding"][:, d_idx])
  assert s["token_embedder"]["embedding"][5, 3] == t["token_embedder"]["embedding"][5, 8]
  np.testing.assert_array_equal(s["decoder_norm"]["scale"], t["decoder_norm"]["scale"][d_idx])
  np.testing.assert_array_equal(s["logits_dense"]["kernel"], t["logits_dense"]["kernel"][d_idx])
  np.testing.assert_array_equal(s["relpos_bias"]["rel_embedding"], t["relpos_bias"]["rel_embedding"][h_idx])
  for i, j in enumerate([0, 2]):  # uniform layers 4 -> 2
    sl, tl = s[f"layers_{i}"], t[f"layers_{j}"]
    # Query column (head 1, dim 3) of the student = teacher head 2, dim 6: column 2 * 8 + 6.
    assert sl["self_attention"]["query"]["kernel"][4, 1 * 4 + 3] == tl["self_attention"]["query"]["kernel"][11, 22]
    for name in ("query", "key", "value"):
      want = tl["self_attention"][name]["kernel"].reshape(32, 4, 8)[d_idx][:, h_idx][:, :, l_idx].reshape(12, 8)
      np.testing.assert_array_equal(sl["self_attention"][name]["kernel"], want)
    want = tl["self_attention"]["out"]["kernel"].reshape(4, 8, 32)[h_idx][:, l_idx][:, :, d_idx].reshape(8, 12)
    np.testing.assert_array_equal(sl["self_attention"]["out"]["kernel"], want)
    np.testing.assert_array_equal(sl["mlp"]["wi_0"]["kernel"], tl["mlp"]["wi_0"]["kernel"][d_idx][:, f_idx])
    np.testing.assert_array_equal(sl["mlp"]["wo"]["kernel"], tl["mlp"]["wo"]["kernel"][f_idx][:, d_idx])
    np.testing.assert_array_equal(sl["pre_mlp_layer_norm"]["scale"], tl["pre_mlp_layer_norm"]["scale"][d_idx])
  # first_n feeds teacher layer 1 into student layer 1.
  first = weight_selection_init(teacher, config, student_cfg)
  np.testing.assert_array_equal(first["decoder"]["layers_1"]["mlp"]["wo"]["kernel"],
                                t["layers_1"]["mlp"]["wo"]["kernel"][f_idx][:, d_idx])


def test_weight_selection_tied_and_untied_students_start_as_the_same_function():
  teacher = model.init_params(TEACHER, jax.random.PRNGKey(4))  # tied
  tied = weight_selection_init(teacher, TEACHER, STUDENT)
  untied_cfg = STUDENT.replace(tie_embeddings=False)
  untied = weight_selection_init(teacher, TEACHER, untied_cfg)
  emb = np.asarray(untied["decoder"]["token_embedder"]["embedding"])
  np.testing.assert_array_equal(emb, np.asarray(teacher["decoder"]["token_embedder"]["embedding"])[:, ::2])
  np.testing.assert_allclose(untied["decoder"]["logits_dense"]["kernel"], emb.T / np.sqrt(16), rtol=1e-6)
  x = tokens(2, 7)
  np.testing.assert_allclose(model.apply(untied_cfg, untied, x), model.apply(STUDENT, tied, x),
                             rtol=1e-5, atol=1e-5)
  # Untied teacher -> tied student: the input table is selected, logits_dense is dropped.
  untied_teacher = model.init_params(TEACHER.replace(tie_embeddings=False), jax.random.PRNGKey(4))
  from_untied = weight_selection_init(untied_teacher, TEACHER.replace(tie_embeddings=False), STUDENT)
  assert "logits_dense" not in from_untied["decoder"]


# ------------------------------------------------------------------------------------ bad inputs
@pytest.fixture
def no_compute(monkeypatch):
  for target in ("guide_jax.transforms.prune._importance", "guide_jax.transforms.prune._prune",
                 "guide_jax.transforms.weight_selection._weight_selection"):
    monkeypatch.setattr(target, lambda *a, **k: pytest.fail("computed before validation"))


@pytest.mark.parametrize("change,match", [
    (dict(d_model=64), "d_model: student d_S=64 > teacher d_T=32"),
    (dict(n_heads=8), "n_heads: student h_S=8 > teacher h_T=4"),
    (dict(mlp_dim=128), "mlp_dim"),
    (dict(n_layers=5), "n_layers: student n_S=5 > teacher n_T=4"),
    (dict(vocab_size=97), "vocab_size"),
])
def test_larger_student_fails_before_compute(change, match, no_compute):
  teacher = model.init_params(TEACHER, jax.random.PRNGKey(0))
  imp = Importance(np.ones((4, 4)), np.ones((4, 64)), np.ones(32), np.ones(4))
  with pytest.raises(ValueError, match=match):
    prune_init(teacher, TEACHER, STUDENT.replace(**change), imp)
  with pytest.raises(ValueError, match=match):
    weight_selection_init(teacher, TEACHER, STUDENT.replace(**change))


@pytest.mark.parametrize("bad,match", [
    (np.full((2, 8), 96, np.int32), r"ids must be in \[0, 96\).*max 96"),
    (np.full((2, 8), -1, np.int32), r"ids must be in \[0, 96\).*min -1"),
    (np.zeros((16,), np.int32), r"\[B, T\] array, got shape \(16,\)"),
    (np.zeros((2, 3, 4), np.int32), r"\[B, T\]"),
    (np.zeros((0, 8), np.int32), "non-empty"),
    (np.zeros((2, 8), np.float32), "integer token ids"),
    ([[1, 2, 3]], "numpy or jax array"),
])
def test_bad_calibration_tokens_fail_before_compute(bad, match, no_compute):
  teacher = model.init_params(TEACHER, jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match=match):
    importance(teacher, TEACHER, bad)


def test_non_finite_teacher_gives_no_student():
  """The teacher's values are checked where it is loaded; each init checks what it outputs."""
  imp = Importance(np.ones((4, 4)), np.ones((4, 64)), np.ones(32), np.ones(4))
  bad = model.init_params(TEACHER, jax.random.PRNGKey(0))
  bad["decoder"]["layers_1"]["mlp"]["wo"]["kernel"] = jnp.full((64, 32), jnp.inf)
  with pytest.raises(ValueError, match="importance scores hold NaN or Inf"):
    importance(bad, TEACHER, tokens())
  for call, what in ((lambda: prune_init(bad, TEACHER, STUDENT, imp), "pruning"),
                     (lambda: weight_selection_init(bad, TEACHER, STUDENT), "Weight Selection")):
    with pytest.raises(ValueError, match=f"student {what} made .*NaN or Inf in: decoder/layers_1/mlp/wo/kernel"):
      call()


def test_other_bad_inputs_fail_before_compute(no_compute):
  teacher = model.init_params(TEACHER, jax.random.PRNGKey(0))
  imp = Importance(np.ones((4, 4)), np.ones((4, 64)), np.ones(32), np.ones(4))
  with pytest.raises(ValueError, match="aggregation must be one of"):
    importance(teacher, TEACHER, tokens(), aggregation="max")
  with pytest.raises(ValueError, match="depth must be one of"):
    prune_init(teacher, TEACHER, STUDENT, imp, depth="last")
  with pytest.raises(ValueError, match="order must be one of"):
    prune_init(teacher, TEACHER, STUDENT, imp, order="random")
  with pytest.raises(ValueError, match="layer_selection must be one of"):
    weight_selection_init(teacher, TEACHER, STUDENT, layer_selection="last")
  with pytest.raises(ValueError, match=r"neurons has shape \(4, 32\), teacher needs \(4, 64\)"):
    prune_init(teacher, TEACHER, STUDENT, imp._replace(neurons=np.ones((4, 32))))
  with pytest.raises(ValueError, match="channels holds NaN or Inf"):
    prune_init(teacher, TEACHER, STUDENT, imp._replace(channels=np.full(32, np.nan)))
  with pytest.raises(ValueError, match="must be an Importance"):
    prune_init(teacher, TEACHER, STUDENT, (imp.heads, imp.neurons))
  relpos = TEACHER.replace(position_embedding="relpos")
  with pytest.raises(ValueError, match="relpos_buckets: student 16 != teacher 32"):
    weight_selection_init(model.init_params(relpos, jax.random.PRNGKey(0)), relpos,
                          STUDENT.replace(position_embedding="relpos", relpos_buckets=16))
  bad = model.init_params(TEACHER, jax.random.PRNGKey(0))
  del bad["decoder"]["layers_1"]["self_attention"]["key"]
  with pytest.raises(ValueError, match="missing 1 key.*layers_1/self_attention/key/kernel"):
    weight_selection_init(bad, TEACHER, STUDENT)


# --------------------------------------------------------------------------------------- sharded
def test_sharded_equals_unsharded():
  config = TEACHER.replace(position_embedding="relpos", tie_embeddings=False)
  student_cfg = STUDENT.replace(position_embedding="relpos", tie_embeddings=False)
  teacher = model.init_params(config, jax.random.PRNGKey(0))
  mesh = sharding.make_mesh(2)  # data=4 x model=2
  placed = jax.device_put(teacher, sharding.param_shardings(config, mesh))
  x = tokens(4, 8)
  plain_imp = importance(teacher, config, x, aggregation="l2")
  sharded_imp = importance(placed, config, x, aggregation="l2", mesh=mesh)
  for a, b in zip(plain_imp, sharded_imp):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
  want = sharding.param_shardings(student_cfg, mesh)
  for plain, sharded in [(prune_init(teacher, config, student_cfg, plain_imp),
                          prune_init(placed, config, student_cfg, plain_imp, mesh=mesh)),
                         (weight_selection_init(teacher, config, student_cfg),
                          weight_selection_init(placed, config, student_cfg, mesh=mesh))]:
    for a, b, sh in zip(jax.tree_util.tree_leaves(plain), jax.tree_util.tree_leaves(sharded),
                        jax.tree_util.tree_leaves(want)):
      assert b.sharding == sh
      np.testing.assert_array_equal(np.asarray(b), np.asarray(a))
  with pytest.raises(ValueError, match="calibration batch 3 is not divisible"):
    importance(placed, config, tokens(3, 8), mesh=mesh)
