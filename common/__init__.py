"""Weight-space pytrees, monomial group actions, reference networks, symmetry checks, data and training.

Shared by `magep`, `transformer_nfn` and `tsw_sl`; imports none of them.
"""
from common import groups, nets, testing
from common.weight_space import NetworkSpec, WeightSpace

__all__ = ["NetworkSpec", "WeightSpace", "groups", "nets", "testing"]
