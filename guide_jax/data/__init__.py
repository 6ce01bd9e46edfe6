"""Data layer: prepared data and deterministic batches (the built-in corpora: guide_jax.corpora).

Preparing (seqio + TensorFlow, imported only inside prepare.py's preparing functions):
  prepare    python -m guide_jax.data.prepare --corpus=NAME | --task=NAME [--task_module=M];
             prepared_dir_for / ensure_prepared (what train calls) for built-in corpora
Training (numpy only):
  prepared   load_prepared(path) -> Prepared(train, validation memmaps, vocab_size, ...)
  batches    LMBatches / eval_batches (step -> batch, int32)
  atomic     atomic files and directories
prepare imports prepared, never the reverse.
"""
