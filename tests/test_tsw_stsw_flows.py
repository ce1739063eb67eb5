"""The spherical gradient-flow experiment (`benchmarks.stsw_flows`, docs/tsw_sl.md §11): its metric, its target
and a --quick run of the driver."""
import json

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from benchmarks import stsw_flows
from benchmarks.tsw_report import geodesic_wasserstein2_squared


def test_geodesic_w2_matches_assignment():
    rng = np.random.default_rng(0)
    x, y = (v / np.linalg.norm(v, axis=-1, keepdims=True) for v in rng.normal(size=(2, 20, 3)))
    cost = np.arccos(np.clip(x @ y.T, -1, 1)) ** 2
    rows, cols = linear_sum_assignment(cost)
    assert geodesic_wasserstein2_squared(x, y) == pytest.approx(cost[rows, cols].mean(), rel=1e-9)
    assert geodesic_wasserstein2_squared(x[:1], -x[:1]) == pytest.approx(np.pi ** 2, rel=1e-6)  # antipodes


def test_vmf_mixture_is_on_the_sphere_near_its_modes():
    pts = stsw_flows.vmf_mixture(np.random.default_rng(1), 400)
    np.testing.assert_allclose(np.linalg.norm(pts, axis=-1), 1, rtol=1e-9)
    nearest = np.max(pts @ stsw_flows.MODES.T, axis=-1)  # cosine to the closest mode
    assert np.median(nearest) > 0.95


def test_quick_driver_writes_results_and_the_flow_approaches_the_target(tmp_path):
    stsw_flows.main(["--quick", "--out", str(tmp_path), "--runs", "1", "--steps", "25", "--directions", "8",
                     "--lr", "0.05"])
    saved = json.loads((tmp_path / "stsw_flows.json").read_text())
    assert set(saved["results"]) == set(stsw_flows.METHODS)
    for cell in saved["results"].values():
        assert len(cell["w2_mean"]) == 26 and len(cell["ssw_mean"]) == 26
        assert cell["w2_mean"][-1] < 0.8 * cell["w2_mean"][0]
        np.testing.assert_allclose(np.linalg.norm(cell["snapshots"], axis=-1), 1, atol=1e-3)
    text = (tmp_path / "stsw_flows.md").read_text()
    assert "| STSW |" in text and "| SW (projected) |" in text
    assert (tmp_path / "stsw_flows.png").stat().st_size > 0
