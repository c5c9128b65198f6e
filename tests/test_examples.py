"""The example scripts run end to end with tiny arguments (examples/*.py).

Each example's ``main(argv)`` is called with small sizes into a temporary directory; the
figures must exist and the returned numbers be finite and of the right shape. For the two
Feynman-Kac-corrector examples the weighted answer must also beat the uncorrected SDE on
the mode-mass error, by a factor (FKC TV error below 0.8 times the uncorrected one). The
sizes were chosen so that this holds on every seed tried (annealing, 80 steps, 2 x 256
particles, seeds 0-11: FKC 0.03-0.19 vs 0.29-0.35 uncorrected at beta = 2, largest ratio
0.59; 0.02-0.07 vs 0.10-0.18 at beta = 0.5, largest ratio 0.64; product, 120 steps, seeds
0-9: 0.04-0.18 vs 0.25-0.29, largest ratio 0.68); the test runs seed 0.
"""

from __future__ import annotations

import importlib.util
import math
import pathlib

import matplotlib
import pytest
import torch

matplotlib.use("Agg")

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def load(name: str):
    """Import ``examples/<name>.py`` as a module (its ``__main__`` block does not run)."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _masses_ok(m: torch.Tensor, k: int) -> None:
    assert m.shape == (k,)
    assert torch.isfinite(m).all() and (m >= 0).all()
    assert abs(float(m.sum()) - 1.0) < 1e-6


def test_fkc_annealing_gmm(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture) -> None:
    results = load("fkc_annealing_gmm").main(
        ["--num-particles", "256", "--steps", "80", "--runs", "2", "--seed", "0",
         "--out", str(tmp_path)])
    assert [r["beta"] for r in results] == [2.0, 0.5]
    for r in results:
        assert pathlib.Path(r["figure"]).is_file()
        assert r["figure"].endswith(f"anneal_beta{r['beta']:g}.png")
        for key in ("exact_masses", "fkc_masses", "uncorrected_masses"):
            _masses_ok(r[key], 3)
        for key in ("fkc_tv", "uncorrected_tv", "exact_log_z", "fkc_log_z"):
            assert math.isfinite(r[key]), key
        assert 0 < r["min_ess_fraction"] <= 1
        assert r["nfe"] == 80
        # the correction matters: the weighted mode masses are closer to the exact ones
        assert r["fkc_tv"] < 0.8 * r["uncorrected_tv"], r
    # integer power: the quadrature log Z equals the closed form (smcdiff.gaussian.power)
    assert abs(results[0]["closed_form_log_z"] - results[0]["exact_log_z"]) < 1e-6
    assert "TV error" in capsys.readouterr().out


def test_fkc_product_of_experts(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture) -> None:
    r = load("fkc_product_of_experts").main(
        ["--num-particles", "256", "--steps", "120", "--runs", "2", "--seed", "0",
         "--out", str(tmp_path)])
    assert pathlib.Path(r["figure"]).is_file()
    for key in ("exact_masses", "fkc_masses", "uncorrected_masses"):
        _masses_ok(r[key], 4)
    for key in ("fkc_tv", "uncorrected_tv", "exact_log_z", "fkc_log_z"):
        assert math.isfinite(r[key]), key
    assert r["nfe"] == 2 * 120  # two experts per step
    assert r["fkc_tv"] < 0.8 * r["uncorrected_tv"], r
    assert "log Z" in capsys.readouterr().out


def test_reward_steering(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture) -> None:
    runs, n, steps = 16, 8, 10
    res = load("reward_steering").main(
        ["--num-particles", str(n), "--steps", str(steps), "--runs", str(runs), "--seed", "0",
         "--out", str(tmp_path)])
    assert pathlib.Path(res["figure"]).is_file()
    assert math.isfinite(res["quadrature_log_z"]) and 0 < res["tilted_mean_reward"] <= 1
    for name in ("best-of-N", "FK steering", "TDS"):
        row = res[name]
        assert row["nfe"] == steps, name  # equal budgets
        assert row["particles"].shape == (runs, n, 2)
        assert row["returned"].shape == (runs, 2)
        assert torch.isfinite(row["particles"]).all()
        # rewards of Bumps lie in [0, max height]; the best is at least the weighted mean
        assert 0 <= row["weighted_reward"] <= row["best_reward"] <= 1.0, (name, row)
        assert row["best_reward_se"] >= 0
    assert res["best-of-N"]["log_z"] is None
    assert math.isfinite(res["FK steering"]["log_z"]) and math.isfinite(res["TDS"]["log_z"])
    assert "best-of-N" in capsys.readouterr().out


def test_ssm_learning(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "trace.png"
    res = load("ssm_learning").main(
        ["--iters", "6", "--particles", "32", "--runs", "1", "--T", "30", "--out", str(out)])
    assert out.is_file()
    assert res.theta.shape == (7, 3) and torch.isfinite(res.theta).all()
    assert all(torch.isfinite(v).all() for v in res.averaged.values())
    assert "Polyak average" in capsys.readouterr().out
