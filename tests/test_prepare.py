"""Prepared data: `python -m guide_jax.data.prepare` over a user's seqio task, numpy-only loading
(in a subprocess where `import tensorflow` / `import seqio` raise), manifest verification.

The user's task lives in a module written into tmp_path (as a user's own registry would) over
a local text file with a small SentencePiece vocabulary; nothing here needs the network.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from guide_jax.corpora import corpus
from guide_jax.data import batches, prepare, prepared

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from test_data import _texts  # noqa: E402  (pytest puts tests/ on sys.path)

USER_TASK = "user_lm_task"
USER_MIXTURE = "user_lm_mixture"
USER_MODULE = "my_seqio_tasks"
VOCAB_SIZE = 400

# Installed as sitecustomize.py: tensorflow and seqio look uninstalled in that interpreter and every
# subprocess that inherits PYTHONPATH: `import` raises ModuleNotFoundError and
# importlib.util.find_spec returns None (what etils/orbax probe), as on a host without them.
_BLOCKER = textwrap.dedent('''
    import sys
    for name in ("tensorflow", "seqio", "tensorflow_text", "tensorflow_datasets"):
      sys.modules[name] = None
''')


def _run_blocked(args, tmp_dir, env=None, timeout=300, returncode=0):
  """Runs `python *args` in REPO with tensorflow/seqio imports blocked; returns CompletedProcess.

  args: e.g. ["-c", code] or ["-m", "guide_jax.train", "--gin_file=..."]. The block is a
  sitecustomize.py on PYTHONPATH, so it covers the whole interpreter (and its children).
  Raises AssertionError with the output if the command fails.
  """
  block_dir = os.path.join(str(tmp_dir), "tf_blocker")
  os.makedirs(block_dir, exist_ok=True)
  with open(os.path.join(block_dir, "sitecustomize.py"), "w", encoding="utf-8") as f:
    f.write(_BLOCKER)
  full_env = dict(os.environ, **(env or {}))
  full_env["PYTHONPATH"] = os.pathsep.join([block_dir, REPO] + (
      [full_env["PYTHONPATH"]] if full_env.get("PYTHONPATH") else []))
  proc = subprocess.run([sys.executable, *args], cwd=REPO, env=full_env, capture_output=True,
                        text=True, timeout=timeout)
  assert proc.returncode == returncode, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
  return proc


def _user_module_source(train_file, dev_file, vocab_file):
  """A user's seqio registry module: one LM task over local text files, and a mixture."""
  return textwrap.dedent(f'''
      import seqio
      import tensorflow as tf

      vocab = seqio.SentencePieceVocabulary({vocab_file!r})

      @seqio.map_over_dataset
      def to_targets(line):
        return {{"targets": line}}

      seqio.TaskRegistry.add(
          {USER_TASK!r},
          source=seqio.TextLineDataSource({{"train": {train_file!r}, "dev": {dev_file!r}}}),
          preprocessors=[
              to_targets,
              seqio.preprocessors.tokenize,
              seqio.preprocessors.append_eos_after_trim,
          ],
          output_features={{"targets": seqio.Feature(vocab, add_eos=True, dtype=tf.int32)}},
      )
      seqio.MixtureRegistry.add({USER_MIXTURE!r}, [({USER_TASK!r}, 1.0)])
  ''')


@pytest.fixture(scope="module")
def user_task(tmp_path_factory):
  """{"module_dir", "vocab", "train_lines", "dev_lines", "prepared"}: a user task module in a
  temp dir, prepared with the command line (`--task_module`, `--task`, `--validation_split`)."""
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  from guide_jax.corpora import vocab as vocab_lib  # pylint: disable=g-import-not-at-top

  root = tmp_path_factory.mktemp("user_task")
  tiny = corpus.write_corpus(_texts(40, offset=500), str(root / "corpus"), name="user")
  vocab_file = vocab_lib.train_vocab(tiny["train"], VOCAB_SIZE, str(root / "cache"))
  lines = {s: open(tiny[s], encoding="utf-8").read().splitlines() for s in corpus.SPLITS}
  module_dir = root / "modules"
  module_dir.mkdir()
  (module_dir / f"{USER_MODULE}.py").write_text(
      _user_module_source(tiny["train"], tiny["validation"], vocab_file))
  out = str(root / "prepared")
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(module_dir), REPO]))
  proc = subprocess.run(
      [sys.executable, "-m", "guide_jax.data.prepare", f"--task_module={USER_MODULE}",
       f"--task={USER_TASK}", "--validation_split=dev", f"--output_dir={out}"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-5000:]
  assert f"prepared {out}" in proc.stdout
  sp = spm.SentencePieceProcessor(model_file=vocab_file)
  return {"module_dir": str(module_dir), "vocab": vocab_file, "sp": sp, "lines": lines,
          "prepared": out}


def test_prepare_user_seqio_task_by_name(user_task):
  data = prepared.load_prepared(user_task["prepared"], verify=True)
  m = data.manifest
  assert m["source"]["kind"] == "seqio" and m["source"]["task"] == USER_TASK
  assert m["source"]["task_modules"] == [USER_MODULE]
  assert m["splits"]["validation"]["source_split"] == "dev"
  assert (data.vocab_size, m["dtype"], m["eos_id"]) == (VOCAB_SIZE, "uint16", 1)
  for split, source_split in (("train", "train"), ("validation", "validation")):
    tokens = getattr(data, split)
    assert isinstance(tokens, np.memmap) and tokens.dtype == np.uint16 and not tokens.flags.writeable
    lines = user_task["lines"][source_split]
    assert m["splits"][split]["docs"] == len(lines) == int((tokens == 1).sum())
    assert tokens[-1] == 1 and int(tokens.max()) < VOCAB_SIZE
    first = tokens[:int(np.argmax(tokens == 1))].tolist()
    assert user_task["sp"].decode(first) == lines[0]  # seqio's tokens == the user's vocabulary
  assert open(data.vocab_path, "rb").read() == open(user_task["vocab"], "rb").read()
  assert not [f for f in os.listdir(os.path.dirname(user_task["prepared"])) if f.startswith(".")]


def test_load_prepared_and_batches_without_tensorflow(user_task, tmp_path):
  """The training side: prepared data -> LMBatches / eval_batches with TF and seqio unimportable,
  also through ensure_prepared (what train.py calls) for an already prepared built-in corpus."""
  cache = tmp_path / "cache"
  shutil.copytree(user_task["prepared"], prepare.prepared_dir_for("shakespeare", str(cache), VOCAB_SIZE))
  code = textwrap.dedent(f'''
      import sys
      import numpy as np
      for name in ("tensorflow", "seqio"):
        try:
          __import__(name)
        except ImportError:
          pass
        else:
          raise AssertionError(name + " was importable")
      import guide_jax.data
      from guide_jax.data import batches, prepare, prepared
      data = prepared.load_prepared({user_task["prepared"]!r}, verify=True)
      assert data.train.dtype == np.uint16
      train = batches.LMBatches(data.train, seq_len=16, global_batch_size=4, seed=0)
      b = train.batch(3)
      assert all(v.dtype == np.int32 and v.shape == (4, 16) for v in b.values())
      again = batches.LMBatches(prepared.load_prepared({user_task["prepared"]!r}).train, 16, 4).batch(3)
      assert all(np.array_equal(b[k], again[k]) for k in b)
      ev = list(batches.eval_batches(data.validation, 16, 4))
      assert ev and all(v.dtype == np.int32 for e in ev for v in e.values())
      info = prepared.load_prepared(prepare.ensure_prepared("shakespeare", {str(cache)!r}, {VOCAB_SIZE}))
      assert info.vocab_size == {VOCAB_SIZE} and info.train.shape == data.train.shape
      assert not any(m.split(".")[0] in ("tensorflow", "seqio") and mod is not None
                     for m, mod in sys.modules.items())
      print("ok", b["decoder_input_tokens"].sum())
  ''')
  assert "ok" in _run_blocked(["-c", code], tmp_path).stdout


def test_uint16_batches_equal_int32_batches(user_task):
  data = prepared.load_prepared(user_task["prepared"])
  a = batches.LMBatches(data.train, 16, 4, seed=5)
  b = batches.LMBatches(np.asarray(data.train, dtype=np.int32), 16, 4, seed=5)
  for step in (0, 7, a.steps_per_epoch + 1):
    for k, v in a.batch(step).items():
      assert v.dtype == np.int32
      np.testing.assert_array_equal(v, b.batch(step)[k])


def test_corrupted_or_incomplete_prepared_data_fails_clearly(user_task, tmp_path):
  path = str(tmp_path / "copy")
  shutil.copytree(user_task["prepared"], path)
  shard = os.path.join(path, prepared.shard_name("train", 0))
  raw = bytearray(open(shard, "rb").read())
  raw[-3] ^= 0xFF  # same size, different content
  open(shard, "wb").write(bytes(raw))
  with pytest.raises(prepared.PreparedDataError, match="token id 6\\d+ >= vocab_size 400.*bad data"):
    prepared.load_prepared(path)  # no hash check: the id range pass still names the bad id
  with pytest.raises(prepared.PreparedDataError, match="sha256.*corrupted"):
    prepared.load_prepared(path, verify=True)
  open(shard, "ab").write(b"\0\0")
  with pytest.raises(prepared.PreparedDataError, match="bytes"):
    prepared.load_prepared(path)
  os.remove(shard)
  with pytest.raises(prepared.PreparedDataError, match="missing"):
    prepared.load_prepared(path)
  manifest_path = os.path.join(path, prepared.MANIFEST)
  manifest = json.load(open(manifest_path))
  manifest["format_version"] = 99
  json.dump(manifest, open(manifest_path, "w"))
  with pytest.raises(prepared.PreparedDataError, match="format_version"):
    prepared.load_prepared(path)
  open(manifest_path, "w").write("{not json")
  with pytest.raises(prepared.PreparedDataError, match="not JSON"):
    prepared.load_prepared(path)
  os.remove(manifest_path)
  with pytest.raises(prepared.PreparedDataError, match="no manifest.json"):
    prepared.load_prepared(path)
  with pytest.raises(prepared.PreparedDataError, match="does not exist"):
    prepared.load_prepared(str(tmp_path / "nowhere"))


def test_write_prepared_shards_dtypes_and_atomicity(tmp_path):
  rng = np.random.default_rng(0)
  docs = {s: [rng.integers(3, 70_000, size=n) for n in (5, 9, 3, 12)] for s in prepared.SPLITS}
  out = str(tmp_path / "big_vocab")
  manifest = prepare.write_prepared(
      out, {"kind": "test"}, b"model", 70_000, 1,
      {s: (s, iter(d)) for s, d in docs.items()}, shard_tokens=10)
  assert manifest["dtype"] == "int32"  # ids >= 65535 do not fit uint16
  assert [s["tokens"] for s in manifest["splits"]["train"]["shards"]] == [16, 17]
  assert manifest["splits"]["train"]["max_id"] == max(int(d.max()) for d in docs["train"])  # re-checked at load
  data = prepared.load_prepared(out, verify=True)
  expected = np.concatenate([np.append(d, 1) for d in docs["train"]])  # EOS appended
  np.testing.assert_array_equal(data.train, expected)
  assert data.train.dtype == np.int32
  with pytest.raises(FileExistsError):
    prepare.write_prepared(out, {}, b"", 70_000, 1, {s: (s, iter(d)) for s, d in docs.items()})

  bad = {s: (s, iter([np.array([5, 400])])) for s in prepared.SPLITS}
  with pytest.raises(ValueError, match="outside"):
    prepare.write_prepared(str(tmp_path / "bad"), {}, b"", 300, 1, bad)
  assert sorted(os.listdir(tmp_path)) == ["big_vocab"]  # the failed one left nothing behind
  assert prepared.shard_dtype(65535) == np.uint16 and prepared.shard_dtype(65536) == np.int32


def test_bad_prepare_inputs_fail_before_any_work(user_task, tmp_path):
  with pytest.raises(ValueError, match="unknown corpus"):
    prepare.run("wikipedia", None, [], None, str(tmp_path), 8000, "train", "validation")
  with pytest.raises(ValueError, match="unknown corpus"):
    prepare.ensure_prepared("wikipedia", str(tmp_path), 8000)
  with pytest.raises(ValueError, match="exactly one"):
    prepare.run(None, None, [], None, str(tmp_path), 8000, "train", "validation")
  with pytest.raises(ValueError, match="--output_dir"):
    prepare.run(None, USER_TASK, [], None, str(tmp_path), 8000, "train", "validation")
  with pytest.raises(ValueError, match="cannot import --task_module"):
    prepare.prepare_task(USER_TASK, str(tmp_path / "o"), task_modules=["no_such_module_xyz"])
  with pytest.raises(FileExistsError):
    prepare.prepare_task(USER_TASK, user_task["prepared"])
  sys.path.insert(0, user_task["module_dir"])
  try:
    with pytest.raises(ValueError, match="unknown seqio task"):
      prepare.prepare_task("no_such_task", str(tmp_path / "o"), task_modules=[USER_MODULE])
    with pytest.raises(ValueError, match="no split 'validation'"):  # the task names it "dev"
      prepare.prepare_task(USER_TASK, str(tmp_path / "o"), task_modules=[USER_MODULE])
    # A mixture by name (in process): sampled from its one task, so the same documents.
    manifest = prepare.prepare_task(USER_MIXTURE, str(tmp_path / "mix"), validation_split="dev",
                                    task_modules=[USER_MODULE])
  finally:
    sys.path.remove(user_task["module_dir"])
  assert manifest["splits"]["train"]["tokens"] == prepared.read_manifest(
      user_task["prepared"])["splits"]["train"]["tokens"]
  assert sorted(os.listdir(tmp_path)) == ["mix"]


def test_command_line_error_is_one_clear_line(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "guide_jax.data.prepare", "--corpus=wikipedia",
                         f"--cache_dir={tmp_path}"], cwd=REPO, capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode != 0 and "unknown corpus 'wikipedia'" in proc.stderr
  assert "Traceback" not in proc.stderr and os.listdir(tmp_path) == []


def test_train_and_resume_from_prepared_data_without_tensorflow(user_task, tmp_path):
  """End to end: `python -m guide_jax.train` on a prepared directory with TF/seqio blocked,
  then the same command again resumes. Runs once train accepts a `config.DataConfig.data_dir` binding."""
  model_dir = tmp_path / "run"
  args = ["-m", "guide_jax.train", "--gin_file=gin/models/tiny_student.gin",
          "--gin_file=gin/runs/pretrain.gin",
          f"--gin.MODEL_DIR='{model_dir}'", f"--gin.DATA_DIR='{user_task['prepared']}'",
          f"--gin.VOCAB_SIZE={VOCAB_SIZE}", "--gin.BATCH_SIZE=4", "--gin.SEQ_LEN=16",
          "--gin.config.ModelConfig.d_model=32", "--gin.config.ModelConfig.n_layers=2", "--gin.config.ModelConfig.n_heads=2",
          "--gin.config.ModelConfig.head_dim=16", "--gin.config.ModelConfig.mlp_dim=64", "--gin.train.train.num_devices=1",
          "--gin.config.DataConfig.eval_max_batches=2", "--gin.train.train.eval_every=4", "--gin.config.CheckpointConfig.save_every=4"]
  _run_blocked(args + ["--gin.TRAIN_STEPS=8", "--gin.train.train.stop_after=4"], tmp_path,
               returncode=75)  # saved, not finished
  _run_blocked(args + ["--gin.TRAIN_STEPS=8"], tmp_path)
  results = json.load(open(model_dir / "results.json"))
  assert results["finished"]


@pytest.mark.skipif(not os.path.isdir("/work/shared/thirdparty/maxtext/src/maxtext/assets/tokenizers")
                    and not os.path.isdir(os.path.join(REPO, "..", "shared", "thirdparty")),
                    reason="no MaxText tokenizer assets")
def test_prepare_seqio_task_text_with_a_teacher_tokenizer(user_task, tmp_path):
  """--tokenizer with --task: the task source's raw "text" field, tokenized by Llama 2's
  SentencePiece model (BOS + line + EOS), not by the task's own vocabulary."""
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  assets = next(p for p in (os.path.join(REPO, "..", "shared", "thirdparty", "maxtext", "src", "maxtext",
                                         "assets", "tokenizers"),
                            "/work/shared/thirdparty/maxtext/src/maxtext/assets/tokenizers") if os.path.isdir(p))
  tokenizer = os.path.join(assets, "tokenizer.llama2")
  out = str(tmp_path / "prepared")
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([user_task["module_dir"], REPO]))
  proc = subprocess.run(
      [sys.executable, "-m", "guide_jax.data.prepare", f"--tokenizer={tokenizer}", f"--task_module={USER_MODULE}",
       f"--task={USER_TASK}", "--validation_split=dev", f"--output_dir={out}"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-5000:]
  data = prepared.load_prepared(out, verify=True)
  assert data.manifest["source"]["task"] == USER_TASK and data.vocab_size == 32000
  sp = spm.SentencePieceProcessor(model_file=tokenizer)
  want = np.concatenate([[1] + sp.encode(line) + [2] for line in user_task["lines"]["validation"]])
  np.testing.assert_array_equal(np.asarray(data.validation), want)
