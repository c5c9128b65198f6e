"""FKC targets against closed-form truth (smcdiff.gaussian.targets; notes §8).

Gaussian experts under VP, d = 2, Euler-Maruyama on a uniform grid, particles started from
the exact normalised p~ at t_0 (so log_z estimates log Z_{t_K} once init_log_z = log Z_{t_0}).
Each run is a batch of R independent SMC runs; standard errors are the across-run standard
deviation / sqrt(R). Euler has a first-order time-discretisation bias, so every statistic is
checked at a fine grid (n2 steps) within 4 SE plus the first-order allowance extrapolated
from a coarse grid (n1 = n2 / 4 steps), and the coarse grid's largest bias must be
significant and visibly shrink at n2.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import smcdiff as sd
from smcdiff.diffusion import VP, time_grid
from smcdiff.fk import (
    RewardTilt,
    WeightDegeneracyWarning,
    anneal,
    cfg,
    check_weights_degeneracy,
    collectors,
    diagnose,
    product,
)
from smcdiff.gaussian import Gaussian, GaussianMixture
from smcdiff.gaussian import targets as gt

F64 = torch.float64
PROC = VP()
N, R = 2000, 16
N1, N2 = 25, 100


def _gauss(mean, cov) -> Gaussian:
    return Gaussian(torch.tensor(mean, dtype=F64), torch.tensor(cov, dtype=F64))


G1 = _gauss([1.0, -0.5], [[1.0, 0.3], [0.3, 0.5]])
G2 = _gauss([-0.5, 1.0], [[0.6, -0.2], [-0.2, 0.8]])
GU = _gauss([0.0, 0.0], [[2.0, 0.3], [0.3, 1.5]])
GC = _gauss([1.0, -1.0], [[0.5, 0.1], [0.1, 0.4]])
A = torch.tensor([0.8, -0.6], dtype=F64)
LAM = 1.0


def _lam(t: float) -> float:  # RewardTilt's default schedule: LAM (1 - t)
    return LAM * (1 - t)


# name -> (exact tilted target at diffusion time t, weighted SDE given WeightedSDE kwargs)
TARGETS = {
    "anneal-2": (lambda t: gt.power(G1.marginal(t, PROC), 2.0),
                 lambda **kw: anneal(G1.model(PROC, "eps"), 2.0, **kw)),
    "anneal-0.5": (lambda t: gt.power(G1.marginal(t, PROC), 0.5),
                   lambda **kw: anneal(G1.model(PROC, "x0"), 0.5, **kw)),
    "product": (lambda t: gt.product(G1.marginal(t, PROC), G2.marginal(t, PROC)),
                lambda **kw: product([G1.model(PROC, "eps"), G2.model(PROC, "velocity")], **kw)),
    "cfg-2": (lambda t: gt.cfg(GU.marginal(t, PROC), GC.marginal(t, PROC), 2.0),
              lambda **kw: cfg(GU.model(PROC, "score"), GC.model(PROC, "eps"), 2.0, **kw)),
    "linear-tilt": (
        lambda t: gt.linear_tilt(G1.marginal(t, PROC), A, 1 / _lam(t)) if _lam(t) > 0
        else gt.TiltedTarget(G1.marginal(t, PROC), torch.zeros((), dtype=F64)),
        lambda **kw: sd.fk.WeightedSDE([G1.model(PROC, "eps")], [1.0],
                                       tilt=RewardTilt(lambda x: x @ A, LAM), **kw)),
}


def _run(name: str, n: int, weighted: bool = True, seed: int = 0):
    """Errors of (mean_1, mean_2, cov_11, cov_12, cov_22, log_z) against the exact target at
    the grid's end: (bias [6], SE [6]) over R runs of N particles."""
    exact, build = TARGETS[name]
    grid = time_grid(PROC, n, kind="uniform", final="t_min")
    p_start, p_end = exact(float(grid[0])), exact(float(grid[-1]))
    model = build(grid=grid, init=p_start.distribution, init_log_z=float(p_start.log_z))
    out = sd.smc(model, N, batch_shape=(R,), resample="adaptive" if weighted else "never",
                 generator=torch.Generator().manual_seed(seed))
    # Without the correction: plain proposal draws, equal weights.
    log_w = out.log_w if weighted else torch.zeros_like(out.log_w)
    W = torch.softmax(log_w, -1)
    mean = (W[..., None] * out.particles).sum(-2)
    xc = out.particles - mean[:, None]
    cov = torch.einsum("rn,rni,rnj->rij", W, xc, xc)
    est = torch.stack([mean[:, 0], mean[:, 1], cov[:, 0, 0], cov[:, 0, 1], cov[:, 1, 1],
                       out.log_z], -1)
    m, C = p_end.distribution.mean, p_end.distribution.cov
    truth = torch.stack([m[0], m[1], C[0, 0], C[0, 1], C[1, 1], p_end.log_z])
    err = est - truth
    return err.mean(0), err.std(0) / math.sqrt(R)


@pytest.mark.parametrize("name", list(TARGETS))
def test_fkc_matches_exact_target(name):
    b1, s1 = _run(name, N1)
    b2, s2 = _run(name, N2)
    # Fine grid: within 4 SE plus the first-order discretisation allowance from the coarse
    # grid (a wrong limit would show as a bias that does not shrink).
    allowance = (N1 / N2) * (b1.abs() + 4 * s1)
    assert (b2.abs() <= 4 * s2 + allowance).all(), (b1, s1, b2, s2)
    # The bias is real at the coarse grid and shrinks with the number of steps.
    j = int((b1.abs() / s1).argmax())
    assert b1[j].abs() > 4 * s1[j], (j, b1, s1)
    assert b1[j].abs() - b2[j].abs() > 3 * torch.sqrt(s1[j] ** 2 + s2[j] ** 2), (j, b1, b2)
    # Without the weights the same proposal is measurably biased (moments only: an
    # unweighted run has no normaliser estimate): the uncorrected bias exceeds the corrected
    # error by more than the noise of both plus the discretisation allowance.
    bu, su = _run(name, N2, weighted=False)
    z = bu[:5].abs() / su[:5]
    k = int(z.argmax())
    assert z[k] > 10, (bu, su)
    gap = bu[k].abs() - b2[k].abs()
    assert gap > 4 * torch.sqrt(su[k] ** 2 + s2[k] ** 2) + allowance[k], (k, bu, b2, s2)


def _mass_positive(mix: GaussianMixture) -> float:
    """P(x_1 > 0) of a 1-D Gaussian mixture."""
    m, s = mix.means[:, 0], mix.covs[:, 0, 0].sqrt()
    return float((mix.weights * 0.5 * torch.erfc(-m / s / math.sqrt(2))).sum())


def test_gmm_integer_power_mode_masses():
    """p^2 of a 1-D two-mode mixture: the weighted mass right of 0 matches the exact power's
    (smcdiff.gaussian.targets.power) within 4 SE plus the first-order discretisation allowance
    from a coarse grid; the original mixture's mass lies outside that band."""
    gmm = GaussianMixture(torch.tensor([0.3, 0.7], dtype=F64),
                          torch.tensor([[-2.0], [2.0]], dtype=F64),
                          torch.tensor([[[0.25]], [[0.25]]], dtype=F64))

    def run(n):
        grid = time_grid(PROC, n, kind="uniform", final="t_min")
        p_start = gt.power(gmm.marginal(float(grid[0]), PROC), 2)
        p_end = gt.power(gmm.marginal(float(grid[-1]), PROC), 2)
        model = anneal(gmm.model(PROC), 2.0, grid=grid, init=p_start.distribution,
                       init_log_z=float(p_start.log_z))
        out = sd.smc(model, N, batch_shape=(R,), generator=torch.Generator().manual_seed(0))
        mass = (out.weights * (out.particles[..., 0] > 0)).sum(-1)
        exact = _mass_positive(p_end.distribution)
        return float(mass.mean()) - exact, float(mass.std()) / math.sqrt(R), exact

    b1, s1, _ = run(N1)
    b2, s2, exact = run(N2)
    band = 4 * s2 + (N1 / N2) * (abs(b1) + 4 * s1)
    assert abs(b2) <= band, (b1, s1, b2, s2)
    assert abs(exact - _mass_positive(gmm)) > band  # power: 0.845 (p^2) vs 0.70 (p)


def test_tempered_noise_beta3_warns_while_ess_looks_healthy():
    """Tempered noise (zeta^2 = 1/beta) at beta = 3 is biased (the weighted variance is far
    too small) with healthy per-step ESS; check_weights_degeneracy flags it from the model's
    variance ratio. The target-score SDE on the same budget is accurate and not flagged."""
    g = _gauss([1.0], [[0.5]])
    grid = time_grid(PROC, 100, kind="uniform", final="t_min")
    exact_var = float(gt.power(g.marginal(float(grid[-1]), PROC), 3.0).distribution.cov)

    def run(zeta):
        model = anneal(g.model(PROC), 3.0, zeta=zeta, grid=grid, event_shape=1)  # prior init
        out = sd.smc(model, 1000, batch_shape=(8,), collectors=collectors(),
                     record_ancestors=True, generator=torch.Generator().manual_seed(0))
        W = out.weights
        m = (W * out.particles[..., 0]).sum(-1, keepdim=True)
        var = (W * (out.particles[..., 0] - m) ** 2).sum(-1)
        return model, out, var

    model, out, var = run("tempered")
    assert float(var.mean()) < 0.7 * exact_var  # badly biased (about half the variance)...
    diag = diagnose(out)
    assert float(diag.min_ess_fraction.min()) > 0.02  # ...while the weights look fine:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_weights_degeneracy(out) == []  # weight statistics alone pass it
    with pytest.warns(WeightDegeneracyWarning, match="too narrow"):
        reasons = check_weights_degeneracy(out, model)  # the model's variance ratio does not
    assert len(reasons) == 1

    model, out, var = run("target")
    se = float(var.std()) / math.sqrt(8)
    assert abs(float(var.mean()) - exact_var) < 4 * se + 0.1 * exact_var
    assert check_weights_degeneracy(out, model) == []


def test_degeneracy_warning_from_weights_alone():
    """Without resampling the path weights of beta = 3 collapse: the ESS check fires."""
    model = anneal(G1.model(PROC), 3.0, event_shape=2, num_steps=30)
    out = sd.smc(model, 500, resample="never", collectors=collectors(), record_ancestors=True,
                 generator=torch.Generator().manual_seed(0))
    with pytest.warns(WeightDegeneracyWarning, match="ESS fell"):
        reasons = check_weights_degeneracy(out)
    assert reasons


def test_diagnostics_content():
    model = anneal(G1.model(PROC), 2.0, event_shape=2, num_steps=20)
    out = sd.smc(model, 300, batch_shape=(3,), resample="always", collectors=collectors(),
                 record_ancestors=True, generator=torch.Generator().manual_seed(0))
    d = diagnose(out)
    T = model.T
    assert d.ess.shape == d.increment_std.shape == d.distinct_parents.shape == (T, 3)
    assert d.lineage_width.shape == (T, 3)
    torch.testing.assert_close(d.log_z_path[-1], out.log_z)
    assert (d.distinct_parents[0] == 300).all()
    for t in (1, T // 2, T - 1):
        for b in range(3):
            assert int(d.distinct_parents[t, b]) == out.ancestors[t, b].unique().numel()
    assert (d.lineage_width[-1] == 300).all()
    assert (d.lineage_width[:-1] <= d.lineage_width[1:]).all()  # coalescence backwards
    assert (d.increment_std[0] == 0).all() and (d.increment_std[1:] > 0).all()
    bare = diagnose(sd.smc(model, 50, generator=torch.Generator().manual_seed(0)))
    assert bare.increment_std is None and bare.distinct_parents is None
