"""Tests of smcdiff.diagnostics: Pareto-k̂ / PSIS against exact Pareto tails and ArviZ,
the ArviZ export and the plots."""

from __future__ import annotations

import math
import sys

import arviz as az
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from helpers import gen

import smcdiff as sd
from smcdiff.core.weights import ess, log_normalize
from smcdiff.diagnostics import (
    ESSSummary,
    ess_summary,
    khat_threshold,
    pareto_khat,
    plot_ess,
    plot_particles_2d,
    psis_smooth,
    tail_length,
    to_inference_data,
)

plt.switch_backend("Agg")  # no display in tests


# ------------------------------------------------------------------- Pareto-k̂, exact tails


@pytest.mark.parametrize("xi", [0.3, 0.5, 0.9])
def test_pareto_khat_recovers_exact_pareto_shape(xi):
    # Ratios w = U^(-xi) are Pareto with tail index 1/xi; their exceedances over any
    # threshold u are exactly GPD(k = xi, sigma = xi u), so the fit has no tail bias.
    # The estimate is shrunk by the prior to (M xi + 5) / (M + 10); its asymptotic
    # standard error is (1 + xi) / sqrt(M) (GPD maximum likelihood, Zhang & Stephens 2009).
    R, S = 64, 100_000
    M = tail_length(S)
    log_w = xi * -torch.log(torch.rand(R, S, generator=gen(1), dtype=torch.float64))
    k = pareto_khat(log_w)
    assert k.shape == (R,)
    target = (M * xi + 5) / (M + 10)
    se_one = max((1 + xi) / math.sqrt(M), k.std().item())
    assert abs(k.mean().item() - target) < 4 * se_one / math.sqrt(R)
    # a single run is within 4 SE too
    assert abs(k[0].item() - target) < 4 * se_one


def test_pareto_khat_light_tail_below_half():
    # log-weights N(0, 0.01^2): ratios ~ 1 + 0.01 z, a Gaussian (k = 0) tail.
    log_w = 0.01 * torch.randn(8, 100_000, generator=gen(2), dtype=torch.float64)
    k = pareto_khat(log_w)
    assert (k < 0.5).all()


def test_pareto_khat_bounded_weights_negative():
    # Uniform ratios have a bounded tail: exceedances are exactly GPD(k = -1). For k < -1/2
    # the GPD likelihood is irregular (no sqrt(M) standard error, and Zhang-Stephens is
    # biased towards 0 there), so check the sign and size, not a tolerance band.
    w = torch.rand(16, 100_000, generator=gen(3), dtype=torch.float64)
    k = pareto_khat(torch.log(w))
    assert (k < -0.8).all() and (k > -1.1).all()


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0])
def test_pareto_khat_matches_arviz_psislw(sigma):
    log_w = sigma * torch.randn(3, 2000, generator=gen(4), dtype=torch.float64)
    k = pareto_khat(log_w)
    for b in range(3):
        _, k_az = az.psislw(log_w[b].numpy().copy(), reff=1.0)
        # same recipe (Vehtari et al. 2024 with Zhang-Stephens), so equal up to round-off
        assert abs(k[b].item() - float(k_az)) < 1e-8


def test_psis_smooth_matches_arviz_psislw_weights():
    log_w = 1.5 * torch.randn(2, 5000, generator=gen(5), dtype=torch.float64) + 7.0
    sm, k = psis_smooth(log_w)
    assert sm.shape == log_w.shape
    for b in range(2):
        lw_az, k_az = az.psislw(log_w[b].numpy().copy(), reff=1.0)
        np.testing.assert_allclose(log_normalize(sm[b]).numpy(), lw_az, atol=1e-10)
        assert abs(k[b].item() - float(k_az)) < 1e-8
    # below the threshold nothing changes; the largest smoothed ratio never exceeds the raw max
    M = tail_length(5000)
    body = torch.topk(log_w, 5000 - M, largest=False).indices
    torch.testing.assert_close(sm.gather(-1, body), log_w.gather(-1, body))
    assert (sm.max(-1).values <= log_w.max(-1).values + 1e-12).all()


def test_pareto_khat_batching_dim_dtype_and_edge_cases():
    lw = torch.randn(2, 3, 500, generator=gen(7), dtype=torch.float64)
    k = pareto_khat(lw)
    assert k.shape == (2, 3)
    for i in range(2):
        for j in range(3):
            assert k[i, j] == pareto_khat(lw[i, j])
    torch.testing.assert_close(pareto_khat(lw.transpose(-1, 0), dim=0), k.transpose(0, 1))
    k32 = pareto_khat(lw.float())
    assert k32.dtype == torch.float32
    torch.testing.assert_close(k32.double(), k, atol=1e-3, rtol=0)
    sm, ks = psis_smooth(lw.transpose(-1, 0), dim=0)
    torch.testing.assert_close(sm.transpose(-1, 0), psis_smooth(lw)[0])
    torch.testing.assert_close(ks, k.transpose(0, 1))
    short = torch.randn(3, 20, generator=gen(11), dtype=torch.float64)
    sm_short, k_short = psis_smooth(short)  # tail of 4 < 5 draws: left alone
    assert torch.equal(sm_short, short) and torch.isinf(k_short).all()
    # offset invariance
    torch.testing.assert_close(pareto_khat(lw + 100.0), k)
    # equal weights: no tail at all; too few draws: not estimable; degenerate: NaN
    assert pareto_khat(torch.zeros(100)).item() == -math.inf
    assert pareto_khat(torch.randn(20, generator=gen(8))).item() == math.inf
    bad = torch.full((2, 100), -math.inf)
    bad[1] = torch.randn(100, generator=gen(9))
    kb = pareto_khat(bad)
    assert math.isnan(kb[0].item()) and math.isfinite(kb[1].item())
    # -inf entries are zero weights and are allowed
    part = torch.randn(1000, generator=gen(10), dtype=torch.float64)
    part[::7] = -math.inf
    assert math.isfinite(pareto_khat(part).item())
    with pytest.raises(TypeError, match="log_w"):
        pareto_khat(torch.zeros(100, dtype=torch.long))
    with pytest.raises(ValueError, match="dim"):
        pareto_khat(torch.zeros(10, 100), dim=2)


def test_khat_threshold_and_tail_length():
    assert tail_length(100) == 20 and tail_length(10_000) == 300
    assert khat_threshold(100) == pytest.approx(0.5)
    assert khat_threshold(10**6) == 0.7
    assert khat_threshold(10) == -math.inf


# --------------------------------------------------------------------- tiny SMC model


class RandomWalkTempering:
    """x_0 ~ N(0, 1), x_t = x_{t-1} + 0.3 eps, log G_t = -x_t^2 / 2 (event shape (2,))."""

    T = 6

    def M0(self, N, batch_shape, generator):
        return torch.randn(*batch_shape, N, 2, generator=generator, dtype=torch.float64)

    def M(self, t, x_prev, generator):
        noise = torch.randn(x_prev.shape, generator=generator, dtype=x_prev.dtype)
        return x_prev + 0.3 * noise

    def log_G(self, t, x_prev, x):
        return -0.5 * (x**2).sum(-1)


def run(batch_shape=(), N=200, seed=0):
    return sd.smc(RandomWalkTempering(), N, batch_shape=batch_shape, generator=gen(seed))


# ------------------------------------------------------------------------ ESS summary


def test_ess_summary_values():
    res = run(batch_shape=(3,))
    s = ess_summary(res)
    assert isinstance(s, ESSSummary)
    torch.testing.assert_close(s.ess, ess(res.log_w))
    torch.testing.assert_close(s.ess_fraction, ess(res.log_w) / 200)
    torch.testing.assert_close(s.min_ess_fraction, (res.ess / 200).min(0).values)
    assert torch.equal(s.num_resampled, res.resampled.sum(0))
    torch.testing.assert_close(s.pareto_k, pareto_khat(res.log_w))
    assert s.khat_threshold == khat_threshold(200) and s.num_steps == 6
    d = s.to_dict()
    assert len(d["ess"]) == 3 and len(d["reliable"]) == 3
    assert "| member |" in str(s)


# ------------------------------------------------------------------------ ArviZ export


def test_to_inference_data_unbatched_shapes_and_stats():
    res = run()
    idata = to_inference_data(res, generator=gen(11))
    post = idata.posterior["x"]
    assert post.shape == (1, 200, 2)
    assert post.dims[:2] == ("chain", "draw")
    st = idata.sample_stats
    assert st["log_weight"].shape == (1, 200)
    assert st["log_z"].shape == (1, 200)
    assert float(st["log_z"][0, 0]) == pytest.approx(res.log_z.item())
    assert float(st["ess"][0, 5]) == pytest.approx(ess(res.log_w).item())
    assert float(st["pareto_k"][0, 0]) == pytest.approx(pareto_khat(res.log_w).item())
    # the draws are copies of the particles named in sample_stats.particle
    idx = torch.as_tensor(st["particle"].values[0])
    np.testing.assert_array_equal(post.values[0], res.particles[idx].numpy())
    attrs = idata.posterior.attrs
    assert attrs["inference_library"] == "smcdiff" and attrs["num_particles"] == 200
    assert attrs["log_z"] == pytest.approx([res.log_z.item()])


def test_to_inference_data_batched_chains_and_num_draws():
    res = run(batch_shape=(2, 3), N=64, seed=1)
    idata = to_inference_data(res, num_draws=50, generator=gen(12), var_name="theta")
    assert idata.posterior["theta"].shape == (6, 50, 2)
    assert idata.sample_stats["particle"].shape == (6, 50)
    np.testing.assert_allclose(idata.sample_stats["log_z"].values[:, 0],
                               res.log_z.reshape(6).numpy())
    # chain c holds draws from batch member c (row-major flattening of the batch)
    anc = torch.as_tensor(idata.sample_stats["particle"].values).reshape(2, 3, 50)
    expect = torch.gather(res.particles, 2, anc.unsqueeze(-1).expand(2, 3, 50, 2))
    np.testing.assert_array_equal(idata.posterior["theta"].values,
                                  expect.reshape(6, 50, 2).numpy())
    # arviz can compute on it
    assert az.ess(idata, var_names=["theta"])["theta"].shape == (2,)


def test_to_inference_data_weighted_mean_agrees():
    # The resampled draws are an unbiased sample of the weighted particle measure:
    # their mean is within 4 SE of the weighted mean.
    res = run(N=2000, seed=2)
    D = 20_000
    idata = to_inference_data(res, num_draws=D, generator=gen(13))
    draws = torch.as_tensor(idata.posterior["x"].values[0])
    wmean = res.mean()
    wvar = res.mean(lambda x: x**2) - wmean**2
    se = torch.sqrt(wvar / D)
    assert ((draws.mean(0) - wmean).abs() < 4 * se).all()


def test_to_inference_data_container_particles_float32():
    g = gen(15)
    parts = {"pos": torch.randn(2, 40, 3, generator=g), "vel": torch.randn(2, 40, generator=g)}
    log_w = torch.randn(2, 40, generator=g)
    res = sd.SMCResult(
        particles=parts, log_w=log_w, log_z=torch.zeros(2), ess=ess(log_w).unsqueeze(0),
        resampled=torch.zeros(1, 2, dtype=torch.bool), log_z_increments=torch.zeros(1, 2),
        num_particles=40,
    )
    idata = to_inference_data(res, num_draws=10, generator=gen(16))
    assert idata.posterior["pos"].shape == (2, 10, 3)
    assert idata.posterior["vel"].shape == (2, 10)
    idx = torch.as_tensor(idata.sample_stats["particle"].values)
    np.testing.assert_array_equal(idata.posterior["vel"].values, parts["vel"].gather(1, idx))


def test_to_inference_data_bad_input():
    with pytest.raises(TypeError, match="SMCResult"):
        to_inference_data(torch.zeros(3))
    with pytest.raises(ValueError, match="num_draws"):
        to_inference_data(run(N=30), num_draws=0)


def test_missing_optional_dependencies_name_the_extra(monkeypatch):
    res = run(N=30)
    monkeypatch.setitem(sys.modules, "arviz", None)  # makes `import arviz` fail
    with pytest.raises(ImportError, match=r"smcdiff\[diag\]"):
        to_inference_data(res)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r"smcdiff\[diag\]"):
        plot_ess(res)
    assert ess_summary(res).num_particles == 30  # needs only torch


# ------------------------------------------------------------------------------ plots


def test_plot_ess_unbatched_and_batched():
    res = run(N=100)
    ax = plot_ess(res, threshold=0.5)
    assert isinstance(ax, matplotlib.axes.Axes)
    line = ax.get_lines()[0]
    np.testing.assert_allclose(line.get_ydata(), (res.ess / 100).numpy())
    assert int(res.resampled.sum()) >= 1  # this seed resamples, so markers must appear
    (marks,) = [ln for ln in ax.get_lines() if ln.get_label() == "resampled"]
    np.testing.assert_array_equal(marks.get_xdata(), res.resampled.nonzero()[:, 0].numpy())
    plt.close(ax.figure)

    resb = run(batch_shape=(4,), N=100, seed=3)
    fig, ax2 = plt.subplots()
    out = plot_ess(resb, ax=ax2)
    assert out is ax2
    thin = [ln for ln in ax2.get_lines() if ln.get_label().startswith("_")]
    assert len(thin) == 4  # one thin line per member
    (marks,) = [ln for ln in ax2.get_lines() if ln.get_label() == "resampled"]
    assert len(marks.get_xdata()) == int(resb.resampled.sum())
    plt.close(fig)


def test_plot_particles_2d():
    x = torch.randn(300, 2, generator=gen(14))
    ax = plot_particles_2d(x, -0.5 * (x**2).sum(-1))
    assert isinstance(ax, matplotlib.axes.Axes)
    assert len(ax.collections) == 1 and len(ax.collections[0].get_offsets()) == 300
    plt.close(ax.figure)
    ax = plot_particles_2d(x)
    plt.close(ax.figure)
    with pytest.raises(ValueError, match="x must be"):
        plot_particles_2d(torch.randn(5, 3))
    with pytest.raises(ValueError, match="log_w"):
        plot_particles_2d(x, torch.zeros(4))
