"""Shared plumbing of the TSW-SL experiment drivers (`benchmarks.tsw_flows`, `tsw_colour_transfer`,
`tsw_generate`, `stsw_flows`): argument parser (with the compilation-cache options), the methods' display labels
and the exact W_2^2 (POT) that the reports measure progress with. Result files and figures go through
`benchmarks.harness`."""
from __future__ import annotations

import argparse

import numpy as np
import ot

from common.cli import add_compile_arguments, configure_compiles, non_negative_int

DEFAULT_OUT = "benchmarks/results"
LABELS = {"sw": "SW", "max_sw": "Max-SW", "tsw_sl": "TSW-SL", "tsw_sl_distance": "TSW-SL (distance)",
          "max_tsw_sl": "Max-TSW-SL", "db_tsw": "Db-TSW",  # tsw_sl.flows.METHODS -> label in tables and plots
          "stsw": "STSW", "ssw": "SSW", "sw_projected": "SW (projected)"}  # benchmarks.stsw_flows


def parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the options every driver has: --out, --quick, --seed."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
    p.add_argument("--quick", action="store_true", help="small settings (under 2 minutes on 2 CPU cores)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="master PRNG seed")
    add_compile_arguments(p)
    return p


def parse_args(p: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """``p.parse_args(argv)``, then the compile options as they say (`common.cli.configure_compiles`: the persistent
    compilation cache on and LLVM's loop unroller off by default)."""
    args = p.parse_args(argv)
    configure_compiles(args)
    return args


def wasserstein2_squared(x, y) -> float:
    """Exact W_2^2 between uniform empirical measures (POT's network simplex, squared Euclidean cost).

    x: [n, d], y: [m, d] (arrays of any kind) -> float.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    cost = ot.dist(x, y, metric="sqeuclidean")
    return float(ot.emd2(np.full(len(x), 1.0 / len(x)), np.full(len(y), 1.0 / len(y)), cost))


def geodesic_wasserstein2_squared(x, y) -> float:
    """Exact W_2^2 on the unit sphere between uniform empirical measures: POT's network simplex with the squared
    geodesic cost arccos(<x, y>)^2. x: [n, D], y: [m, D] unit vectors -> float."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    cost = np.arccos(np.clip(x @ y.T, -1.0, 1.0)) ** 2
    return float(ot.emd2(np.full(len(x), 1.0 / len(x)), np.full(len(y), 1.0 / len(y)), cost))
