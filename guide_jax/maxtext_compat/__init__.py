"""GUIDE for MaxText users: MaxText checkpoints (llama2-style decoder block) as teachers, and
students written as MaxText checkpoints, without importing MaxText (never a dependency; the
MaxText tier, tests/maxtext_tier.sh, checks everything here against MaxText itself).

  configs        MaxText settings (.yml / KEY=VALUE overrides) <-> ModelConfig, the conventions
  layout         MaxText's tree <-> guide_jax's: shapes MaxText builds, relayouts (pure)
  checkpoint_io  find / describe / read in shards / write orbax checkpoints in MaxText's layout

A teacher is read through guide_jax.teachers (format 'maxtext', Source.settings = its MaxText
settings); a student is written by `python -m guide_jax.convert --format=maxtext`.
"""
from guide_jax.maxtext_compat.checkpoint_io import (ITEMS, MaxTextCheckpointError, describe, find_items,
                                                    is_maxtext, read, to_maxtext, write)
from guide_jax.maxtext_compat.configs import (MaxTextConfigError, format_settings, incompatibilities,
                                              model_config, parse, settings)
from guide_jax.maxtext_compat.layout import param_shapes
