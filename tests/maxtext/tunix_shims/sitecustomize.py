"""Runtime shims for running MaxText's distillation trainer on PyPI's google-tunix 0.1.7 (tier only).

MaxText e591f30cb pins an unreleased tunix commit; with 0.1.7 its train_distill imports but:
  1. MaxTextCheckpointManager (a tunix CheckpointManager subclass) reads `self._checkpointer`, the
     newer tunix's v1 Checkpointer; 0.1.7 has `_checkpoint_manager` instead, and every call fails
     with AttributeError. Shim: the attribute exists and is None, which MaxText's manager treats
     as "checkpointing off": the distillation run saves and restores NO checkpoint here.
  2. train_distill sets `trainer.is_managed_externally = True`, and 0.1.7's PeftTrainer.train then
     never stops at max_steps (a 3-step run went past 9,000 steps). Shim: for such a trainer, the
     training data ends after max_steps * gradient_accumulation_steps batches.
Installed by putting this directory first on PYTHONPATH (Python imports sitecustomize at start);
each patch is applied when its tunix module is first imported. Nothing else is changed.
"""
import importlib.abc
import importlib.machinery
import itertools
import sys


def _checkpoint_manager(module):
  if not hasattr(module.CheckpointManager, "_checkpointer"):
    module.CheckpointManager._checkpointer = None  # pylint: disable=protected-access


def _peft_trainer(module):
  train = module.PeftTrainer.train

  def bounded_train(self, train_ds, *args, **kwargs):
    if getattr(self, "is_managed_externally", False) and self.config.max_steps is not None:
      steps = self.config.max_steps * self.config.get_with_default("gradient_accumulation_steps", 1)
      train_ds = itertools.islice(train_ds, steps)
    return train(self, train_ds, *args, **kwargs)
  module.PeftTrainer.train = bounded_train


_PATCHES = {"tunix.sft.checkpoint_manager": _checkpoint_manager, "tunix.sft.peft_trainer": _peft_trainer}


class _PatchingFinder(importlib.abc.MetaPathFinder):
  """Finds the modules of _PATCHES as usual and patches each right after it is executed."""

  def find_spec(self, name, path, target=None):
    if name not in _PATCHES:
      return None
    spec = importlib.machinery.PathFinder.find_spec(name, path)
    if spec is None or spec.loader is None:
      return spec
    execute = spec.loader.exec_module

    def exec_module(module):
      execute(module)
      _PATCHES[name](module)
    spec.loader.exec_module = exec_module
    return spec


sys.meta_path.insert(0, _PatchingFinder())
