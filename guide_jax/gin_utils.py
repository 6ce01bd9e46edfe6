"""t5x-style gin command lines: --gin_file=... and --gin.KEY=VALUE.

Nothing is registered here: gin files name what they configure with
`from __gin__ import dynamic_registration` (as t5x/configs do), e.g.
  from guide_jax import config
  MODEL = @config.ModelConfig()
"""
import os
import re
from typing import List, Sequence

from absl import flags
import gin



def define_flags() -> None:
  """Define --gin_file and --gin_bindings (t5x's names) in absl's FLAGS, once: called by each CLI's
  run(), never at import (importing guide_jax defines no flag, e.g. inside a t5x process)."""
  if "gin_file" not in flags.FLAGS:
    flags.DEFINE_multi_string("gin_file", [], "gin files, in order (t5x style).")
  if "gin_bindings" not in flags.FLAGS:
    flags.DEFINE_multi_string("gin_bindings", [], "gin bindings; --gin.KEY=VALUE is rewritten to these.")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_MACRO_BINDING = re.compile(r"^\s*([A-Z][A-Z0-9_]*)\s*=")


def rewrite_gin_args(argv: Sequence[str]) -> List[str]:
  """t5x's convention: '--gin.KEY=VALUE' becomes '--gin_bindings=KEY = VALUE'."""
  out = []
  for arg in argv:
    if arg.startswith("--gin.") and "=" in arg:
      key, value = arg[len("--gin."):].split("=", 1)
      out.append(f"--gin_bindings={key} = {value}")
    else:
      out.append(arg)
  return out


def _resolve(path: str) -> str:
  if os.path.exists(path):
    return path
  if os.path.exists(os.path.join(REPO_ROOT, path)):
    return os.path.join(REPO_ROOT, path)
  raise ValueError(f"gin file not found: {path!r}")


def parse(gin_files: Sequence[str], bindings: Sequence[str]) -> None:
  """Parse gin files (relative paths resolve against the repo root too), then bindings.

  A binding of an UPPER_CASE macro that no gin file defines (a typo such as TRAIN_STPES) is an
  error, as are unknown configurables or parameters: all raised here, before any work is done.
  """
  files = [_resolve(p) for p in gin_files]
  known = set()
  for path in files:
    with open(path) as f:
      text = f.read()
    known.update(re.findall(r"%([A-Z][A-Z0-9_]*)", text))
    known.update(m.group(1) for m in map(_MACRO_BINDING.match, text.splitlines()) if m)
  unknown = [m.group(1) for m in map(_MACRO_BINDING.match, bindings) if m and m.group(1) not in known]
  if unknown:
    raise ValueError(f"unknown gin macro(s) {unknown}: no gin file defines or uses them "
                     f"(files: {list(gin_files)}); check the spelling")
  try:
    gin.parse_config_files_and_bindings(files, list(bindings), finalize_config=False)
  except (ValueError, KeyError, SyntaxError, ImportError) as e:
    raise ValueError(f"bad gin configuration: {e}") from e


def model_from_gin(gin_file: str, bindings: Sequence[str] = ()):
  """The ModelConfig a model gin file's MODEL macro builds, for command-line tools.

  Clears gin's (process-global) configuration before and after: call it from a CLI's main,
  never from a library function whose caller may hold a gin configuration.
  """
  gin.clear_config()
  try:
    parse([gin_file], bindings)
    try:
      config = gin.query_parameter("%MODEL").scoped_configurable_fn()
    except Exception as e:  # gin re-raises ModelConfig's ValueError, or an unbound-macro error
      raise ValueError(f"gin file {gin_file!r} (bindings {list(bindings)}) does not give a valid "
                       f"model: {type(e).__name__}: {e}") from e
  finally:
    gin.clear_config()
  from guide_jax.config import ModelConfig  # pylint: disable=g-import-not-at-top
  if not isinstance(config, ModelConfig):
    raise ValueError(f"gin file {gin_file!r}: MODEL must be @config.ModelConfig(), got {type(config).__name__}")
  return config
