"""Test setup: 8 virtual CPU devices for sharding tests (set before jax is imported)."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# Reuse compiled XLA programs across tests and subprocesses (identical micro models recompile a lot).
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(_REPO, "cache", "jax_compile"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

# gs:// in tests is the loopback GCS emulator (tests/gcs_emulator.py). etils.epath picks its gs://
# backend once per process (functools.cache) and would take tf.io.gfile, which has no endpoint
# override, whenever TensorFlow is importable: make it gcsfs before anything touches a path.
os.environ.setdefault("EPATH_USE_TF", "0")
