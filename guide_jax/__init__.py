"""guide_jax: GUIDE (Guided Initialization and Distillation of Embeddings) in JAX/Flax.

Flow: data -> model -> transforms -> train -> eval. `guide_jax.transforms` imports without gin,
seqio or TensorFlow.
"""
from guide_jax.config import ModelConfig

__version__ = "0.1.0"
