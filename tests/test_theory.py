"""Every theory/*.py notebook runs as a script in quick mode (SMCDIFF_QUICK=1), and the
quantities it computes are what its text claims."""

from __future__ import annotations

import pathlib
import runpy

import jupytext
import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

THEORY = pathlib.Path(__file__).resolve().parents[1] / "theory"
NOTEBOOKS = sorted(THEORY.glob("*.py"))
_CACHE: dict[str, dict] = {}


def run_notebook(path: pathlib.Path) -> dict:
    """Module-level variables of the notebook run in quick mode (cached per session)."""
    if path.name not in _CACHE:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("SMCDIFF_QUICK", "1")
            mp.delenv("SMCDIFF_FIGURES", raising=False)
            try:
                _CACHE[path.name] = runpy.run_path(str(path), run_name="__main__")
            finally:
                plt.close("all")
    return _CACHE[path.name]


def test_notebooks_exist():
    assert NOTEBOOKS, "no theory/*.py notebooks found"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_a_percent_notebook_and_runs(path):
    nb = jupytext.read(path)
    kinds = {cell.cell_type for cell in nb.cells}
    assert kinds == {"markdown", "code"}, kinds
    assert nb.metadata["jupytext"]["text_representation"]["format_name"] == "percent"
    ns = run_notebook(path)
    assert ns["QUICK"] is True


# ----------------------------------------------------------------------------- gaussian_score


@pytest.fixture(scope="module")
def gsa():
    return run_notebook(THEORY / "gaussian_score_approximation.py")


def test_a_closed_form_trajectories_match_the_solver(gsa):
    """DPM-Solver++(2M) tracks the closed-form PF-ODE trajectory at every grid point, and the
    fitted convergence orders against the closed form are the nominal ones."""
    assert gsa["gauss_traj_err"] < 0.05
    assert gsa["gauss_traj_err_fine"] < 1e-3
    assert gsa["gauss_traj_err_fine"] < gsa["gauss_traj_err"] / 30  # 10x the steps: ~100x
    assert abs(gsa["gauss_orders"]["ddim"] - 1) < 0.15
    assert abs(gsa["gauss_orders"]["dpmsolver++2m"] - 2) < 0.15


def test_b_gaussian_score_approximation_error_along_t(gsa):
    rho, lam, t = gsa["rel_err"], gsa["lam_b"], gsa["t_b"]
    assert np.all(np.diff(lam) > 0) and np.all(np.diff(t) < 0)
    # small at high noise, O(1) near the data
    assert rho[0] < 1e-8 and rho[-1] > 0.5
    # increasing towards the data up to Monte Carlo noise (never 10% below its running max),
    # strictly where it changes fast
    assert np.all(rho >= 0.9 * np.maximum.accumulate(rho))
    steep = rho < 0.5
    assert np.all(np.diff(rho[steep]) > 0)
    # the 10% crossing is bracketed by the grid values
    t_cross = gsa["t_cross"]
    assert 0.25 < t_cross < 0.45
    assert rho[t > t_cross].max() < 0.1 < rho[t < t_cross].min()
    # rho = O(exp(6 lambda)) at high noise (third cumulants of the data do not vanish)
    assert abs(gsa["highnoise_slope"] - 6) < 0.5


def test_c_teleportation_saves_nfe_at_equal_error(gsa):
    target = gsa["target_err"]
    assert gsa["ref_accuracy"] < 1e-3 * target
    # the floor grows as t_skip moves towards the data; the chosen skip leaves room below target
    floors = [gsa["floors"][level] for level in sorted(gsa["floors"])]  # rho small -> large
    t_skips = [f[0] for f in floors]
    values = [f[1] for f in floors]
    assert np.all(np.diff(t_skips) < 0) and np.all(np.diff(values) > 0)
    assert gsa["floor_skip"] < target / 1.5
    assert gsa["floors"][0.1][1] > 2 * target  # skipping to rho = 10% overshoots the target
    for name in gsa["solvers_c"]:
        base, tele = gsa["nfe_base"][name], gsa["nfe_tele"][name]
        assert base is not None and tele is not None, name
        assert tele < base, (name, base, tele)
        assert gsa["saving"][name] == pytest.approx(100 * (1 - tele / base))
        i = gsa["nfe_grid"].index(10)
        assert gsa["err_tele"][name][i] < gsa["err_base"][name][i], name
