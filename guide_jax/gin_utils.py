"""t5x-style gin command lines: --gin_file=... and --gin.KEY=VALUE."""
import os
from typing import List, Sequence

from absl import flags
import gin

from guide_jax import optim
from guide_jax.config import ModelConfig

flags.DEFINE_multi_string("gin_file", [], "gin files, in order (t5x style).")
flags.DEFINE_multi_string("gin_bindings", [], "gin bindings; --gin.KEY=VALUE is rewritten to these.")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# The pure pieces, made configurable here so that gin stays at the edges. Entry points call these.
ModelConfig = gin.external_configurable(ModelConfig, module="guide_jax")
make_optimizer = gin.external_configurable(optim.make_optimizer, module="guide_jax.optim")


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


def parse(gin_files: Sequence[str], bindings: Sequence[str]) -> None:
  """Parse gin files (relative paths resolve against the repo root too) and bindings.

  Unknown configurables or parameters raise here, before any work is done.
  """
  gin.add_config_file_search_path(REPO_ROOT)
  for path in gin_files:
    if not os.path.exists(path) and not os.path.exists(os.path.join(REPO_ROOT, path)):
      raise ValueError(f"gin file not found: {path!r}")
  try:
    gin.parse_config_files_and_bindings(list(gin_files), list(bindings), finalize_config=False)
  except (ValueError, KeyError, SyntaxError) as e:
    raise ValueError(f"bad gin configuration: {e}") from e
