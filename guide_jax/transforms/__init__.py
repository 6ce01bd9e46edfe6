"""GUIDE parameter transforms: pure functions over (t5x decoder-only) parameter PyTrees."""
from guide_jax.config import BLOCKS, LAYER_SELECTIONS, OTHER_BLOCKS, GuideConfig
from guide_jax.transforms.common import select_attention, select_block
from guide_jax.transforms.guide import GuideInfo, GuideResult, compiled_guide_init, guide_init, map_block, map_output
from guide_jax.transforms.pca import PCAResult, covariance, pca_embedding, pca_table, top_components
from guide_jax.transforms.select import select_heads, select_layers, uniform_indices, uniform_select
from guide_jax.transforms.validate import check_dimensions, check_finite, check_tree
from guide_jax.transforms.prune import (AGGREGATIONS, DEPTHS, Importance, PruneIndices, importance, prune_indices,
                                        prune_init, top_k)
from guide_jax.transforms.weight_selection import weight_selection_init
