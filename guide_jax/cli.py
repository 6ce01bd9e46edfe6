"""What our command lines do with our errors: one last line naming the problem, no traceback.

    def main(argv): ...
    cli.exit_on_error("guide_jax.train", main, argv)

Errors guide_jax raises for bad input or state (ValueError and its subclasses: CheckpointError,
PreparedDataError, T5xCheckpointError; the run lock's RunLockedError; OSError from a path the user
gave) end the process with `<prog>: error: <message>` and exit status 1. gin appends
"In call to configurable ..." lines to an exception raised inside a configurable; they are dropped.
Anything else (a bug) keeps its traceback.
"""
import sys
from typing import Callable, Sequence


def user_errors() -> tuple:
  """The exception types that mean 'the input or the state is wrong', not 'guide_jax is broken'."""
  from guide_jax import runlock  # pylint: disable=g-import-not-at-top
  return (ValueError, OSError, runlock.RunLockedError)


def message(error: BaseException) -> str:
  """str(error) without gin's "In call to configurable" context lines, on one line."""
  lines = [l for l in str(error).splitlines() if not l.strip().startswith("In call to configurable")]
  return " ".join(l.strip() for l in lines if l.strip()) or type(error).__name__


def exit_on_error(prog: str, main: Callable[[Sequence[str]], object], argv: Sequence[str]):
  """main(argv), turning a user error into `sys.exit('<prog>: error: <message>')`."""
  try:
    return main(argv)
  except user_errors() as e:
    sys.exit(f"{prog}: error: {message(e)}")
