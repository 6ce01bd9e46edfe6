"""GUIDE for t5x users, by job: configs (t5x TransformerConfig -> ModelConfig), checkpoint_io (t5x's
orbax layout: check, read in shards, write), restore (the restore-time state transformation).

Nothing here imports gin, seqio or TensorFlow, nor t5x, except to read a legacy (msgpack) t5x
checkpoint through t5x's own loader when t5x is importable. t5x's gin files name these functions with
`from __gin__ import dynamic_registration` / `from guide_jax import t5x_compat`; nothing registers.
"""
from guide_jax.t5x_compat.checkpoint_io import (LEGACY_RECIPE, STATE_ITEM, T5xCheckpointError,
                                                check_t5x_checkpoint, find_t5x_checkpoint, is_legacy,
                                                load_t5x_params, read_t5x_params, t5x_checkpoint_dir,
                                                write_t5x_checkpoint)
from guide_jax.t5x_compat.configs import as_model_config, model_config_from_t5x
from guide_jax.t5x_compat.restore import drop_optimizer_state, guide_state_transformation
