"""Tree-sliced Wasserstein distance on systems of lines (TSW-SL), Db-TSW, and sliced baselines, in JAX.

Public API (docs/api.md); every distance takes the measures in POT / OTT-JAX order,
`f(x, y, a=None, b=None, *, key=..., ...)`, and `return_costs=True` also returns per-tree / per-direction costs:
  TreeSystem, sample_trees                       tree systems of lines (chain / concurrent)
  tree_wasserstein, tsw_sl, db_tsw               closed-form tree Wasserstein on given / sampled trees
  sliced_wasserstein, max_sliced_wasserstein     sliced baselines
  max_tsw_sl                                     ascent over tree parameters
  LearnedSplitting                               learnable splitting map (nnx module)
"""
from tsw_sl.distance import db_tsw, tree_wasserstein, tsw_sl
from tsw_sl.max_sliced import max_sliced_wasserstein, max_tsw_sl
from tsw_sl.sliced import sliced_wasserstein
from tsw_sl.splitting import LearnedSplitting
from tsw_sl.trees import TreeSystem, random_directions, sample_trees

__all__ = [
    "LearnedSplitting",
    "TreeSystem",
    "db_tsw",
    "max_sliced_wasserstein",
    "max_tsw_sl",
    "random_directions",
    "sample_trees",
    "sliced_wasserstein",
    "tree_wasserstein",
    "tsw_sl",
]
