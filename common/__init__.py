"""Weight-space pytrees, monomial group actions, the parameter-sharing engine, reference networks, symmetry
checks, data and training.

Shared by `magep`, `transformer_nfn` and `tsw_sl`; imports none of them.
"""
from common import groups, nets, testing
from common.draws import normal_arrays
from common.sharing import SharingPlan, Term
from common.weight_space import NetworkSpec, WeightSpace

__all__ = ["NetworkSpec", "SharingPlan", "Term", "WeightSpace", "groups", "nets", "normal_arrays", "testing"]
