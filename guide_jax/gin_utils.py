"""t5x-style gin command lines: --gin_file=... and --gin.KEY=VALUE.

Nothing is registered here: gin files name what they configure with
`from __gin__ import dynamic_registration` (as t5x/configs do), e.g.
  from guide_jax import config
  MODEL = @config.ModelConfig()
"""
import difflib
import io
import os
import re
import tokenize
from typing import List, Sequence

from absl import flags
import gin

flags.DEFINE_multi_string("gin_file", [], "gin files, in order (t5x style).")
flags.DEFINE_multi_string("gin_bindings", [], "gin bindings; --gin.KEY=VALUE is rewritten to these.")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A top-level macro binding (`NAME = value`: no dot, no scope), in a gin file or a --gin.NAME binding.
_MACRO_BINDING = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=(?!=)")
_MACRO_USE = re.compile(r"%([A-Za-z_][A-Za-z0-9_]*)")


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


def _suggest(name: str, candidates) -> str:
  """' (did you mean X?)' for the closest known macro, case-insensitively, or ''."""
  by_lower = {c.lower(): c for c in candidates}
  match = by_lower.get(name.lower()) or next(iter(difflib.get_close_matches(name, sorted(candidates), 1)), None)
  return f" (did you mean {match}?)" if match else ""


def _check_syntax(path: str, text: str) -> None:
  """An unclosed bracket or string: gin raises a bare tokenize.TokenError naming no file or line."""
  opened = []  # line of each bracket still open
  try:
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
      if tok.type == tokenize.OP and tok.string in "([{":
        opened.append(tok.start[0])
      elif tok.type == tokenize.OP and tok.string in ")]}" and opened:
        opened.pop()
  except (tokenize.TokenError, SyntaxError) as e:
    where = f"the bracket opened at line {opened[-1]} is never closed" if opened else str(e.args[0])
    raise ValueError(f"bad gin file {path}: {where}") from e


def check_macros(files: Sequence[str], bindings: Sequence[str], provided: Sequence[str] = ()) -> None:
  """Refuse macro typos, which gin would silently ignore.

  - a --gin.NAME=... binding of a macro that no gin file defines or uses (TRAIN_STPES, train_steps,
    Train_Steps: gin macros are case-sensitive);
  - a macro set in a gin file that nothing uses (%NAME in a file or a binding) unless the caller
    reads it itself (`provided`, e.g. MODEL for model_from_gin): a typo in a user's gin file.
  """
  defined, used = {}, set(provided)
  for path in files:
    with open(path) as f:
      text = f.read()
    _check_syntax(path, text)
    used.update(_MACRO_USE.findall(text))
    for line in text.splitlines():
      m = _MACRO_BINDING.match(line)
      if m and not line[:1].isspace():  # top level only (not a line inside a multi-line value)
        defined.setdefault(m.group(1), path)
  for b in bindings:
    used.update(_MACRO_USE.findall(b.split("=", 1)[-1]))
  known = set(defined) | used
  unknown = [m.group(1) for m in map(_MACRO_BINDING.match, bindings) if m and m.group(1) not in known]
  if unknown:
    raise ValueError(f"unknown gin macro(s) {unknown}{_suggest(unknown[0], known)}: no gin file defines or "
                     f"uses them (files: {list(files)}); check the spelling (macros are case-sensitive)")
  unused = [(name, path) for name, path in defined.items() if name not in used]
  if unused:
    name, path = unused[0]
    raise ValueError(f"gin macro {name} is set in {path} but nothing uses %{name}{_suggest(name, used)}: "
                     f"a misspelled macro is silently ignored by gin, so it is refused")


def parse(gin_files: Sequence[str], bindings: Sequence[str], provided: Sequence[str] = ()) -> None:
  """Parse gin files (relative paths resolve against the repo root too), then bindings.

  Macro typos (check_macros), unclosed brackets, unknown configurables or parameters: all raised
  here as one ValueError naming the problem, before any work is done. `provided`: macros the
  caller reads itself (they count as used).
  """
  files = [_resolve(p) for p in gin_files]
  check_macros(files, bindings, provided)
  try:
    gin.parse_config_files_and_bindings(files, list(bindings), finalize_config=False)
  except (ValueError, KeyError, SyntaxError, ImportError, tokenize.TokenError) as e:
    raise ValueError(f"bad gin configuration: {e}") from e


def model_from_gin(gin_file: str, bindings: Sequence[str] = ()):
  """The ModelConfig a model gin file's MODEL macro builds, for command-line tools.

  Clears gin's (process-global) configuration before and after: call it from a CLI's main,
  never from a library function whose caller may hold a gin configuration.
  """
  gin.clear_config()
  try:
    parse([gin_file], bindings, provided=("MODEL",))
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
