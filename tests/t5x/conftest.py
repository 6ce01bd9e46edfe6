"""The t5x tier: runs only where t5x is installed (tests/t5x_tier.sh builds such a venv).

t5x's PjitPartitioner puts all CPU devices on its 'model' axis, so the tier runs on 2 virtual CPU
devices (the smallest student has 2 heads) instead of the main suite's 8, set here before jax is
imported (tests/conftest.py only sets a default) -- only inside the tier (GUIDE_JAX_T5X_TIER=1): in
the main suite these tests skip, and its other tests need their 8 devices.
"""
import importlib.util
import os

if "jax" not in __import__("sys").modules and os.environ.get("GUIDE_JAX_T5X_TIER") == "1":
  os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "").replace(
      "--xla_force_host_platform_device_count=8", "--xla_force_host_platform_device_count=2")


def _t5x_installed() -> bool:
  # This directory is itself named t5x: on sys.path (via tests/) it is a namespace package, so
  # only a spec with an origin (a real t5x/__init__.py) counts.
  spec = importlib.util.find_spec("t5x")
  return spec is not None and spec.origin is not None


# Elsewhere each test module skips itself (pytest.importorskip("t5x.models")); inside the tier
# script a missing t5x is an error, never a silent skip.
if not _t5x_installed() and os.environ.get("GUIDE_JAX_T5X_TIER") == "1":
  raise RuntimeError("GUIDE_JAX_T5X_TIER=1 but t5x is not importable: see tests/t5x_tier.sh")


import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position


class _Tier:
  """Teachers made by t5x and students written by README's convert command, each built once."""

  def __init__(self, root):
    self.root = root
    self._teachers, self._converted = {}, {}

  def teacher(self, tied: bool):
    """(t5x TransformerConfig, DecoderOnlyModel, TrainState, checkpoint_<step> path) of a teacher
    initialized and saved by t5x."""
    import t5x_support as S  # pylint: disable=g-import-not-at-top
    if tied not in self._teachers:
      self._teachers[tied] = S.make_and_save_teacher(str(self.root / f"teacher_tied{tied}"), tied)
    return self._teachers[tied]

  def converted(self, tied: bool) -> str:
    """The output dir of `python -m guide_jax.convert --teacher_format=t5x --format=t5x` on teacher(tied)."""
    import subprocess  # pylint: disable=g-import-not-at-top
    import t5x_support as S  # pylint: disable=g-import-not-at-top
    if tied not in self._converted:
      out = str(self.root / f"student_tied{tied}")
      res = subprocess.run(S.convert_command(self.teacher(tied)[3], out, tied), cwd=S.REPO, capture_output=True,
                           text=True, timeout=300, env=dict(os.environ))
      assert res.returncode == 0, res.stderr[-4000:]
      self._converted[tied] = out
    return self._converted[tied]


@pytest.fixture(scope="session")
def tier(tmp_path_factory):
  return _Tier(tmp_path_factory.mktemp("t5x_tier"))
