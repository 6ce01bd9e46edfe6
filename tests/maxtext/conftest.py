"""The MaxText tier: runs only where MaxText is importable (tests/maxtext_tier.sh builds such a venv).

Inside the tier (GUIDE_JAX_MAXTEXT_TIER=1) jax gets 2 virtual CPU devices (MaxText's mesh spans
them: fsdp=2; guide_jax reads teachers on a 2-device mesh) instead of the main suite's 8, and
MaxText's Google Cloud integrations are off (DECOUPLE_GCLOUD=TRUE, as MaxText's own CPU tests run).
In the main suite these tests skip; in the tier a missing MaxText is an error, never a skip.
"""
import importlib.util
import os
import sys

if os.environ.get("GUIDE_JAX_MAXTEXT_TIER") == "1":
  if "jax" not in sys.modules:
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "").replace(
        "--xla_force_host_platform_device_count=8", "--xla_force_host_platform_device_count=2")
  os.environ.setdefault("DECOUPLE_GCLOUD", "TRUE")
  os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing from a model hub
  # This directory is itself named maxtext (a namespace package via tests/ on sys.path): only a
  # spec with an origin (MaxText's own maxtext/__init__.py) counts.
  _spec = importlib.util.find_spec("maxtext")
  if _spec is None or _spec.origin is None:
    raise RuntimeError("GUIDE_JAX_MAXTEXT_TIER=1 but maxtext is not importable: see tests/maxtext_tier.sh")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.fixture(scope="session")
def tier(tmp_path_factory):
  """Teachers made by MaxText and the README route's run, each built once (maxtext_support.Tier)."""
  pytest.importorskip("maxtext.configs.pyconfig")
  import maxtext_support  # pylint: disable=g-import-not-at-top
  return maxtext_support.Tier(tmp_path_factory.mktemp("maxtext_tier"))
