"""GUIDE parameter transforms: pure functions over (t5x decoder-only) parameter PyTrees."""
from guide_jax.transforms.guide import (BLOCKS, OTHER_BLOCKS, guide_init, map_block, map_first_block,
                                        map_output, select_block)
from guide_jax.transforms.pca import PCAResult, covariance, pca_embedding, top_components
from guide_jax.transforms.select import LAYER_SELECTIONS, select_layers, uniform_indices, uniform_select
from guide_jax.transforms.validate import check_dimensions, check_finite, check_tree
