"""Pod-scale training on 8 virtual CPU devices (issue 27): the FSDP step equals the unsharded step,
each device holds ~1/shards of the params and optimizer state, gradient accumulation equals the full
batch, scanned layers equal unrolled ones, and a KD run resumes step-exact on an FSDP mesh."""

import jax
import numpy as np
import optax
import pytest

from guide_jax import model, sharding, trainer
from guide_jax.config import ModelConfig
from test_train import MICRO, losses, micro_bindings, run_train

V, ROWS, SEQ = 128, 16, 16
# Every dimension divides by 8, so every leaf can be split over an 8-way 'fsdp' axis.
STUDENT = ModelConfig(vocab_size=V, d_model=32, n_layers=2, n_heads=2, head_dim=16, mlp_dim=64, remat="full")
TEACHER = ModelConfig(vocab_size=V, d_model=48, n_layers=3, n_heads=4, head_dim=16, mlp_dim=96, n_kv_heads=2)


def make_batch(seed, rows=ROWS):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(1, V, (rows, SEQ + 1)).astype(np.int32)
  return {"decoder_input_tokens": tokens[:, :-1], "decoder_target_tokens": tokens[:, 1:],
          "decoder_loss_weights": (rng.random((rows, SEQ)) > 0.2).astype(np.int32),
          "decoder_segment_ids": np.ones((rows, SEQ), np.int32),
          "decoder_positions": np.broadcast_to(np.arange(SEQ, dtype=np.int32), (rows, SEQ)).copy()}


@pytest.fixture(scope="module")
def host_params():
  """The student's and teacher's initial params on the host: every mesh starts from the same values."""
  return (jax.device_get(model.init_params(STUDENT, jax.random.key(0))),
          jax.device_get(model.init_params(TEACHER, jax.random.key(1))))


def mesh_of(shape):
  n = int(np.prod(shape))
  return sharding.make_mesh(devices=jax.devices()[:n], shape=shape)


def run_steps(host_params, shape, *, scan=False, accum=1, chunk=None, steps=2):
  """`steps` KD steps (SGD, lr 1: an update is minus the gradient) on a (data, fsdp, model) mesh;
  the final params on the host and each step's metrics."""
  student, teacher = STUDENT.replace(scan_layers=scan), TEACHER.replace(scan_layers=scan)
  mesh, optimizer = mesh_of(shape), optax.sgd(1.0)
  state = trainer.abstract_state(student, optimizer, mesh)
  params = jax.device_put(host_params[0], state.param_shardings)
  opt_state = trainer.init_opt_state(state, optimizer, params)
  teacher_params = trainer.stack_teacher(
      teacher, jax.device_put(host_params[1], sharding.param_shardings(teacher, mesh)), mesh)
  step = trainer.make_train_step(student, optimizer, mesh, state, teacher_config=teacher, alpha=0.5, tau=2.0,
                                 accum_steps=accum, loss_chunk=chunk)
  out = []
  for i in range(steps):
    params, opt_state, m = step(params, opt_state, trainer.global_batch(make_batch(i), mesh), teacher_params)
    out.append({k: float(v) for k, v in jax.device_get(m).items()})
  return jax.device_get(params), out


def assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
  for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree_util.tree_leaves(b)):
    np.testing.assert_allclose(np.asarray(x, np.float32), np.asarray(y, np.float32), rtol=rtol, atol=atol,
                               err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope="module")
def unsharded(host_params):
  return run_steps(host_params, (1, 1, 1))


@pytest.mark.parametrize("shape,scan,chunk", [((1, 8, 1), True, 8), ((2, 2, 2), False, None)])
def test_fsdp_kd_step_equals_the_unsharded_step(host_params, unsharded, shape, scan, chunk):
  params, ms = run_steps(host_params, shape, scan=scan, chunk=chunk)
  ref_params, ref_ms = unsharded
  assert all(m["finite"] == 1.0 for m in ms)
  for m, r in zip(ms, ref_ms):
    for k in ("loss", "ce", "kd", "grad_norm"):
      assert m[k] == pytest.approx(r[k], rel=1e-5), (k, m, r)
  assert_trees_close(params, ref_params)
  assert ref_ms[0]["loss"] != ref_ms[1]["loss"]  # the steps did update the params


def test_gradient_accumulation_equals_the_full_batch(host_params, unsharded):
  full_params, full_ms = unsharded  # the whole batch at once
  acc_params, acc_ms = run_steps(host_params, (2, 4, 1), accum=2)
  for m, r in zip(acc_ms, full_ms):
    for k in ("loss", "ce", "kd", "grad_norm"):
      assert m[k] == pytest.approx(r[k], rel=1e-5), (k, m, r)
  assert_trees_close(acc_params, full_params)
  with pytest.raises(ValueError, match="grad_accum_steps"):  # 16 rows: not 8 shards x 4 microbatches
    trainer.check_batch(ROWS, mesh_of((1, 8, 1)), 4)


def test_per_device_params_and_optimizer_state_are_one_shard_of_the_total():
  """Compiled from shapes (AdamW: params + two moments): the bytes each device holds of the step's
  params and optimizer state, from the compiled program's input shardings and from its
  memory_analysis() arguments (less the batch and teacher), within 1.15x of total / 8."""
  mesh, optimizer = mesh_of((1, 8, 1)), optax.adamw(1e-3)
  state = trainer.abstract_state(STUDENT, optimizer, mesh)
  teacher = sharding.abstract_params(TEACHER, mesh)
  batch = {k: jax.ShapeDtypeStruct((ROWS, SEQ), np.int32, sharding=sharding.batch_sharding(mesh))
           for k in trainer.BATCH_KEYS}
  step = trainer.make_train_step(STUDENT, optimizer, mesh, state, teacher_config=TEACHER, alpha=0.5)
  compiled = step.lower(state.params, state.opt_state, batch, teacher).compile()

  def per_device(tree, shardings):
    return sum(int(np.prod(sh.shard_shape(x.shape))) * np.dtype(x.dtype).itemsize
               for x, sh in zip(jax.tree_util.tree_leaves(tree), jax.tree_util.tree_leaves(shardings)))

  total = sum(x.size * np.dtype(x.dtype).itemsize for x in jax.tree_util.tree_leaves((state.params, state.opt_state)))
  in_sh = compiled.input_shardings[0]
  held = per_device((state.params, state.opt_state), (in_sh[0], in_sh[1]))
  assert total / 8 <= held <= 1.15 * total / 8, (held, total)
  others = per_device((batch, teacher), (in_sh[2], in_sh[3]))
  args = compiled.memory_analysis().argument_size_in_bytes - others
  assert args <= 1.15 * total / 8, (args, total)
  assert args >= total / 8 * 0.99, (args, total)


def test_scanned_layers_equal_unrolled_logits_and_gradients():
  """GQA, alternating sliding-window / global layers (per-layer call arguments) and full remat."""
  config = TEACHER.replace(layer_pattern="LG", sliding_window=4, remat="full")
  params = model.init_params(config, jax.random.key(2))
  batch = make_batch(0, rows=2)
  probe = np.random.default_rng(0).standard_normal((2, SEQ, V)).astype(np.float32)

  def run(scan):
    cfg = config.replace(scan_layers=scan)
    f = lambda p: model.apply(cfg, p, batch["decoder_input_tokens"], batch["decoder_segment_ids"],
                              batch["decoder_positions"])
    def loss(p):
      logits = f(p)
      return (logits * probe).sum(), logits
    (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return logits, grads

  (logits, grads), (ref_logits, ref_grads) = run(True), run(False)
  np.testing.assert_allclose(logits, ref_logits, rtol=1e-5, atol=1e-5)
  assert_trees_close(grads, ref_grads, atol=1e-5)  # the same layers_N tree
  stacked = model.stack_layers(config, params)  # a teacher stacked once (trainer.stack_teacher)
  assert model.is_stacked(stacked) and not model.is_stacked(params)
  np.testing.assert_allclose(model.apply(config.replace(scan_layers=True), stacked, batch["decoder_input_tokens"],
                                         batch["decoder_segment_ids"], batch["decoder_positions"]),
                             ref_logits, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------- the train loop
def _bindings(model_dir, **extra):
  """test_train's micro run, smaller still, on every device unless extra names train.num_devices."""
  return micro_bindings(model_dir, steps=6, **{
      "BATCH_SIZE": 8, "SEQ_LEN": 16, "config.DataConfig.eval_max_batches": 1, "train.train.eval_every": 100,
      "config.CheckpointConfig.save_every": 3, "optim.make_optimizer.warmup_steps": 2,
      "train.train.num_devices": None, **extra})


def test_kd_run_on_an_fsdp_mesh_resumes_step_exact(tmp_path):
  """KD with scanned layers, 2 microbatches and a chunked loss on a (1, 4, 1) mesh: a run stopped
  after 3 steps and resumed logs the same loss, bit for bit, at every step as one uninterrupted run."""
  teacher = tmp_path / "teacher"
  run_train(MICRO, _bindings(teacher, TRAIN_STEPS=1, **{"config.ModelConfig.d_model": 48,
                                                   "config.ModelConfig.n_layers": 3,
                                                   "train.train.num_devices": 1}))
  kd = {"TEACHER_DIR": repr(str(teacher)), "KD_ALPHA": 0.5, "train.train.num_devices": 4,
        "train.train.mesh_shape": (1, 4, 1), "train.train.grad_accum_steps": 2, "train.train.loss_chunk": 8,
        "config.ModelConfig.scan_layers": True, "config.ModelConfig.remat": "'full'"}
  files = MICRO + ["gin/kd.gin"]
  reference = run_train(files, _bindings(tmp_path / "reference", **kd))
  assert reference["finished"]
  first = run_train(files, _bindings(tmp_path / "resumed", **kd, **{"train.train.stop_after": 3}))
  assert not first.get("finished")
  resumed = run_train(files, _bindings(tmp_path / "resumed", **kd))
  assert resumed["finished"]
  ref, got = losses(tmp_path / "reference"), losses(tmp_path / "resumed")
  assert sorted(ref) == list(range(1, 7)) and got == ref
  assert resumed["eval_loss"] == reference["eval_loss"]


def test_hlo_collectives_counts_each_op_times_its_loop_trips():
  """benchmarks/pods.py's reading of a compiled program (what reports/pods.md's collective bytes are):
  a [128] float32 row gathered from 8 shards inside a 3-step scan is 512 bytes, 3 times."""
  from benchmarks import pods  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top
  mesh = mesh_of((1, 8, 1))

  def f(w, c):
    def body(c, row):  # depends on the carry: the gather stays in the loop
      return c + jax.numpy.sin(jax.lax.with_sharding_constraint(row * c, NamedSharding(mesh, P()))).sum(), None
    return jax.lax.scan(body, c, w)[0]

  w = jax.ShapeDtypeStruct((3, 128), np.float32, sharding=NamedSharding(mesh, P(None, "fsdp")))
  c = jax.ShapeDtypeStruct((), np.float32, sharding=NamedSharding(mesh, P()))
  details = []
  totals = pods.hlo_collectives(jax.jit(f).lower(w, c).compile().as_text(), details)
  assert totals["all-gather"]["bytes"] == 3 * 128 * 4, details
  assert [(kind, nbytes, times) for kind, nbytes, times, _ in details] == [("all-gather", 512, 3)]


def test_guide_and_weight_selection_on_an_fsdp_mesh_equal_one_device_in_the_training_shardings():
  """The starts on an 8-way 'fsdp' mesh: the student comes out on the train state's shardings with
  the values of the unsharded init (to 1e-5 of each array's scale; the teacher spectrum of
  test_transforms' sharded GUIDE test, so that f32 PCA eigenvectors are well conditioned)."""
  from guide_jax.transforms import guide_init, weight_selection_init  # pylint: disable=g-import-not-at-top
  from test_transforms import EQ_S, EQ_T  # pylint: disable=g-import-not-at-top
  teacher = model.init_params(EQ_T, jax.random.key(0))
  table = teacher["decoder"]["token_embedder"]["embedding"]
  teacher["decoder"]["token_embedder"]["embedding"] = table * jax.numpy.linspace(4.0, 0.5, EQ_T.d_model)
  mesh = mesh_of((1, 8, 1))
  want = trainer.abstract_state(EQ_S, optax.adamw(1e-3), mesh).param_shardings
  sharded_teacher = jax.device_put(teacher, sharding.param_shardings(EQ_T, mesh))
  for name, init in (("guide", lambda t, m: guide_init(t, EQ_T, EQ_S, mesh=m).params),
                     ("weight_selection", lambda t, m: weight_selection_init(t, EQ_T, EQ_S, mesh=m))):
    plain, sharded = init(teacher, None), init(sharded_teacher, mesh)
    for (path, a), b, sh in zip(jax.tree_util.tree_flatten_with_path(plain)[0], jax.tree_util.tree_leaves(sharded),
                                jax.tree_util.tree_leaves(want)):
      where = f"{name} {jax.tree_util.keystr(path)}"
      assert b.sharding == sh, where
      np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=0, atol=1e-5 * float(np.max(np.abs(a))),
                                 err_msg=where)
  assert any("fsdp" in str(sh.spec) for sh in jax.tree_util.tree_leaves(want))


@pytest.mark.parametrize("binding,message", [
    ({"train.train.mesh_shape": (1, 3, 1)}, "mesh_shape"),
    ({"train.train.grad_accum_steps": 3}, "grad_accum_steps"),
    ({"train.train.loss_chunk": 0}, "loss_chunk"),
])
def test_bad_pod_knobs_fail_clearly_and_write_nothing(tmp_path, binding, message):
  with pytest.raises(ValueError, match=message):
    run_train(MICRO, _bindings(tmp_path / "run", **binding))
  assert not (tmp_path / "run").exists()
