"""Baselines of the MAGEP paper: Monomial-NFN, NP and HNP linear layers and pools, IO-encodings, np_inv's input
standardisation, STATNN."""
from magep.baselines.io_encoding import IOEmbedding, IOEncoding, add_io_embedding, sinusoidal_embedding
from magep.baselines.linear import HNPLinear, MonomialLinear, NPLinear, SharingLinear, linear_plan, sharing_linear
from magep.baselines.pools import (HNPPool, MonomialPool, NPPool, hnp_pool, hnp_pool_size, np_pool,
                                   scale_normalize)
from magep.baselines.standardize import standardization_stats, standardize
from magep.baselines.statnn import StatNN, statistics

__all__ = ["HNPLinear", "HNPPool", "IOEmbedding", "IOEncoding", "MonomialLinear", "MonomialPool", "NPLinear", "NPPool",
           "SharingLinear", "StatNN", "add_io_embedding", "hnp_pool", "hnp_pool_size", "linear_plan", "np_pool",
           "scale_normalize", "sharing_linear", "sinusoidal_embedding", "standardization_stats", "standardize",
           "statistics"]
