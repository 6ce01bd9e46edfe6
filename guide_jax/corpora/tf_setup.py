"""Imports TensorFlow and seqio for CPU-only input processing.

TensorFlow is only used to run seqio preprocessing on the host; it must not claim
accelerator memory that JAX needs, so GPUs are hidden from it before first use.
"""

from __future__ import annotations

import os


def import_tf_and_seqio():
  """(tensorflow, seqio) with TF logging quieted and TF's view of GPUs/TPUs removed."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import seqio  # pylint: disable=g-import-not-at-top

  for kind in ("GPU", "TPU"):
    try:
      tf.config.set_visible_devices([], kind)
    except (RuntimeError, ValueError):  # already initialized, or kind unknown
      pass
  return tf, seqio
