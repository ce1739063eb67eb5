"""Tree-sliced Wasserstein distance on systems of lines (TSW-SL), Db-TSW, and sliced baselines, in JAX.

Public API (docs/api.md); every distance takes the measures in POT / OTT-JAX order,
`f(x, y, a=None, b=None, *, key=..., ...)`, `return_costs=True` also returns per-tree / per-direction costs, and
`mesh=` splits the trees / directions over the devices of a mesh (docs/tsw_sl.md §16.1):
  TreeSystem, sample_trees                       tree systems of lines (chain / concurrent)
  tree_wasserstein, tsw_sl, db_tsw               closed-form tree Wasserstein on given / sampled trees
  sliced_wasserstein, max_sliced_wasserstein     sliced baselines
  max_tsw_sl                                     ascent over tree parameters
  SphericalTrees, sample_spherical_trees         spherical trees (root and tangent directions on S^{D-1})
  spherical_tsw                                  spherical TSW between measures on the unit sphere
  spherical_sliced_wasserstein                   spherical sliced baseline (SSW, great circles)
  LearnedSplitting                               learnable splitting map (nnx module)
"""
from tsw_sl.distance import db_tsw, tree_wasserstein, tsw_sl
from tsw_sl.max_sliced import max_sliced_wasserstein, max_tsw_sl
from tsw_sl.sliced import sliced_wasserstein
from tsw_sl.spherical import spherical_tsw
from tsw_sl.spherical_sliced import spherical_sliced_wasserstein
from tsw_sl.splitting import LearnedSplitting
from tsw_sl.trees import SphericalTrees, TreeSystem, random_directions, sample_spherical_trees, sample_trees

__all__ = [
    "LearnedSplitting",
    "SphericalTrees",
    "TreeSystem",
    "db_tsw",
    "max_sliced_wasserstein",
    "max_tsw_sl",
    "random_directions",
    "sample_spherical_trees",
    "sample_trees",
    "sliced_wasserstein",
    "spherical_sliced_wasserstein",
    "spherical_tsw",
    "tree_wasserstein",
    "tsw_sl",
]
