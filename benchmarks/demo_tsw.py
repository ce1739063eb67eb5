"""Demo section: TSW-SL against exact references, then the three experiments in their --quick modes
(gradient flows, colour transfer, generator), whose reports, plots and JSON land in the section's folder."""
from __future__ import annotations

import os

import jax
import numpy as np
import ot

import tsw_sl
from benchmarks import tsw_colour_transfer, tsw_flows, tsw_generate
from benchmarks.harness import read_json


def _reference_rows() -> list[tuple[str, str]]:
    """Uniform splitting = sliced W1 over the k L directions (POT); one draw of chain TSW-SL and Db-TSW."""
    kx, ky, kt = jax.random.split(jax.random.key(0), 3)
    x = np.asarray(jax.random.normal(kx, (500, 3)))
    y = np.asarray(jax.random.normal(ky, (400, 3)) + 1.0)
    trees = tsw_sl.sample_trees(kt, n_trees=25, n_lines=4, dim=3, kind="chain")
    tw = float(tsw_sl.tree_wasserstein(x, y, trees=trees))
    directions = np.asarray(trees.directions).reshape(-1, 3)
    pot = float(ot.sliced_wasserstein_distance(x, y, projections=directions.T, p=1))
    return [
        ("uniform-splitting TSW-SL (L=25, k=4) vs POT sliced W1 on the same 100 lines", f"{tw:.5f} vs {pot:.5f}"),
        ("chain TSW-SL with distance splitting / Db-TSW (n=500 vs m=400, d=3)",
         f"{float(tsw_sl.tree_wasserstein(x, y, trees=trees, splitting='distance')):.4f} / "
         f"{float(tsw_sl.db_tsw(x, y, key=kt, n_trees=25, n_lines=4)):.4f}"),
    ]


def run(out_dir: str) -> list[tuple[str, str]]:
    """Returns rows (quantity, value) for the results table."""
    rows = _reference_rows()
    tsw_flows.main(["--quick", "--fresh", "--out", out_dir])  # the demo's own folder: replace cells of older settings
    flows = read_json(os.path.join(out_dir, "tsw_flows.json"), None)
    steps = flows["config"]["steps"]
    for target, methods in flows["results"].items():
        cells = ", ".join(f"{m} {r['w2_mean'][0]:.2f}->{r['w2_mean'][-1]:.1e}" for m, r in methods.items())
        rows.append((f"flow to {target}, {steps} Adam steps: W2^2 start->end", cells))
    tsw_colour_transfer.main(["--quick", "--out", out_dir])
    colour = read_json(os.path.join(out_dir, "tsw_colour_transfer.json"), None)
    for method, r in colour["results"].items():
        rows.append((f"colour transfer palette ({colour['config']['colours']} colours), {method}: W2^2 start->end",
                     f"{r['w2_squared'][0]:.3f} -> {r['w2_squared'][-1]:.1e} ({r['flow_s']:.1f} s)"))
    tsw_generate.main(["--quick", "--out", out_dir])
    generated = read_json(os.path.join(out_dir, "tsw_generate.json"), None)
    for dataset, r in generated["results"].items():
        scores = ", ".join(f"{r[m]['label']} {r[m]['cfd_mean']:.1f}" for m in ("sw", "tsw_sl"))
        rows.append((f"generator on {dataset}, {generated['config']['steps']} steps: classifier Frechet distance", scores))
    rows.append(("reports and pictures", os.path.abspath(out_dir)))
    return rows
