"""Shared plumbing of the TSW-SL experiment drivers (`benchmarks.tsw_flows`, `tsw_colour_transfer`,
`tsw_generate`): argument parser, result files, figures, the methods' display labels and the exact W_2^2
(POT) that the reports measure progress with."""
from __future__ import annotations

import argparse
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import ot  # noqa: E402

from common.zoo_store import atomic_write  # noqa: E402

DEFAULT_OUT = "benchmarks/results"
LABELS = {"sw": "SW", "max_sw": "Max-SW", "tsw_sl": "TSW-SL", "tsw_sl_distance": "TSW-SL (distance)",
          "max_tsw_sl": "Max-TSW-SL", "db_tsw": "Db-TSW"}  # tsw_sl.flows.METHODS -> label in tables and plots


def parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the options every driver has: --out, --quick, --seed."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
    p.add_argument("--quick", action="store_true", help="small settings (under 2 minutes on 2 CPU cores)")
    p.add_argument("--seed", type=int, default=0, help="master PRNG seed")
    return p


def read_json(path, default):
    """The JSON object in `path`, or `default` when the file does not exist."""
    if not os.path.exists(path):
        return default
    with open(path) as f:
        return json.load(f)


def write_json(path, obj):
    """Writes `obj` as compact JSON (atomically: `common.zoo_store.atomic_write`)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    atomic_write(path, lambda f: json.dump(obj, f, separators=(",", ":")), mode="w")


def write_text(path, text):
    """Writes `text` to `path`, creating its directory."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def save_figure(fig, path, dpi=80):
    """Saves a matplotlib figure as PNG and closes it."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)


def wasserstein2_squared(x, y) -> float:
    """Exact W_2^2 between uniform empirical measures (POT's network simplex, squared Euclidean cost).

    x: [n, d], y: [m, d] (arrays of any kind) -> float.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    cost = ot.dist(x, y, metric="sqeuclidean")
    return float(ot.emd2(np.full(len(x), 1.0 / len(x)), np.full(len(y), 1.0 / len(y)), cost))
