"""Stochastic samplers: exact laws on Gaussian data, Monte Carlo moments, transition densities,
and the noise samplers (solvers note §6.5).

Every sampler here is affine in (x, history, noise) on Gaussian data, so its exact output
law is computable: with zero noise the run from the mean gives the output mean, runs from
unit perturbations of ``x_init`` give the linear map ``A``, and unit noise impulses at each
step give the columns ``C_j``; then ``cov = A S0 A^T + sum_j C_j C_j^T``. All probes are
particles of one run (``FixedNoise``). Monte Carlo tests compare against that exact law
within 4 standard errors, and against the true marginal within 4 SE plus the exactly known
discretisation bias.
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from smcdiff.diffusion.grids import time_grid
from smcdiff.diffusion.processes import VP, LinearInterpolant
from smcdiff.diffusion.sample import sample
from smcdiff.diffusion.solvers import (
    DDIM,
    DDPM,
    EulerMaruyama,
    Evaluator,
    FixedNoise,
    GeneratorNoise,
    PerParticleNoise,
    SDEDPMSolverPP1,
    SDEDPMSolverPP2M,
    log_transition_density,
    prepare_grid,
    transition,
)
from smcdiff.gaussian.distributions import Gaussian

F64 = torch.float64
D_EIG = torch.tensor([0.01, 0.1, 1.0, 4.0], dtype=F64)
MU = torch.tensor([1.0, -0.5, 0.3, 2.0], dtype=F64)
DIM = 4
PROC = VP()


def _gauss() -> tuple[Gaussian, torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    U, _ = torch.linalg.qr(torch.randn(DIM, DIM, generator=gen, dtype=F64))
    return Gaussian(MU, U @ torch.diag(D_EIG) @ U.T), U


GAUSS, U = _gauss()
SDE_SOLVERS = [EulerMaruyama(), EulerMaruyama(eta=0.5), DDPM(), DDPM(eta=0.5), SDEDPMSolverPP1(),
               SDEDPMSolverPP2M(), SDEDPMSolverPP2M(eta=0.5, solver_type="heun")]


def exact_law(solver, grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact mean and covariance of the sampler's output from x_init ~ p_{grid[0]}."""
    T = grid[0]
    prior = GAUSS.marginal(T, PROC)
    m0, S0 = prior.mean, prior.cov
    n = len(grid) - 1
    P = 1 + DIM + n * DIM
    x0 = m0.expand(P, DIM).clone()
    x0[1:1 + DIM] += torch.eye(DIM, dtype=F64)
    z = torch.zeros(n, P, DIM, dtype=F64)
    for j in range(n):
        z[j, 1 + DIM + j * DIM:1 + DIM + (j + 1) * DIM] = torch.eye(DIM, dtype=F64)
    out = sample(GAUSS.model(PROC, "x0"), solver, grid, x0, noise=FixedNoise(z)).x
    m = out[0]
    A = (out[1:1 + DIM] - m).T
    C = out[1 + DIM:] - m
    return m, A @ S0 @ A.T + C.T @ C


def law_error(solver, grid) -> tuple[float, float]:
    m, cov = exact_law(solver, grid)
    true = GAUSS.marginal(grid[-1], PROC)
    sd = true.cov.diagonal().sqrt()
    e_mean = ((m - true.mean) / sd).abs().max().item()
    e_cov = ((cov - true.cov) / sd.outer(sd)).abs().max().item()
    return e_mean, e_cov


# ----------------------------------------------------------------------------- weak order

LAM_END = 2.0
T_END = float(PROC.t_of_log_snr(torch.tensor(LAM_END, dtype=F64)))


@pytest.mark.parametrize(
    "solver,order",
    [(EulerMaruyama(), 1), (EulerMaruyama(eta=0.5), 1), (DDPM(), 1), (SDEDPMSolverPP1(), 1),
     (SDEDPMSolverPP2M(), 2)],
    ids=repr,
)
def test_exact_law_converges_with_the_weak_order(solver, order):
    """Error of the sampler's exact law (mean and covariance, in units of the true std)
    against p_{t_end}: fitted slope vs NFE within 0.15 of the weak order (VP, logSNR grid to
    lambda = 2, float64). Exponential samplers keep the mean exactly."""
    steps = [32, 64, 128, 256]
    errs = []
    for n in steps:
        grid = time_grid(PROC, n, kind="logsnr", t_end=T_END, final="t_min")
        e_mean, e_cov = law_error(solver, grid)
        if not isinstance(solver, EulerMaruyama):
            assert e_mean < 1e-12
        errs.append(max(e_mean, e_cov))
    X = torch.tensor([[math.log(n), 1.0] for n in steps], dtype=F64)
    y = torch.tensor([[math.log(e)] for e in errs], dtype=F64)
    slope = -torch.linalg.lstsq(X, y).solution[0, 0].item()
    assert solver.order == order
    assert abs(slope - order) < 0.15, (slope, errs)


# ----------------------------------------------------------------------------- Monte Carlo


def _moment_z(x: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor, bias_m=None, bias_c=None):
    """Largest |sample moment - reference| / SE over mean entries and covariance entries,
    after subtracting an allowed known bias."""
    N = x.shape[0]
    sd = cov.diagonal().sqrt()
    m_hat = x.mean(0)
    c_hat = torch.cov(x.T, correction=0)
    se_m = sd / math.sqrt(N)
    se_c = torch.sqrt((sd.outer(sd) ** 2 + cov**2) / N)
    dm = (m_hat - mean).abs() - (0 if bias_m is None else bias_m)
    dc = (c_hat - cov).abs() - (0 if bias_c is None else bias_c)
    return max((dm / se_m).max().item(), (dc / se_c).max().item())


@pytest.mark.parametrize("solver", SDE_SOLVERS, ids=repr)
def test_monte_carlo_moments_match_exact_law_and_data(solver):
    """N = 4000 runs of the default pipeline (logSNR grid, final denoise to t = 0): sample
    mean and covariance equal the sampler's exact law within 4 SE, and the data law
    N(mu, Sigma) within 4 SE plus the exactly computed discretisation bias."""
    grid = time_grid(PROC, 60, final="zero")
    N = 4000
    gen = torch.Generator().manual_seed(11)
    x0 = GAUSS.marginal(grid[0], PROC).sample(N, generator=gen)
    x = sample(GAUSS.model(PROC, "eps"), solver, grid, x0, generator=gen).x
    m, cov = exact_law(solver, grid)
    assert _moment_z(x, m, cov) < 4
    true = GAUSS  # the data law at t = 0
    assert _moment_z(x, true.mean, true.cov, (m - true.mean).abs(), (cov - true.cov).abs()) < 4


def test_sde_dpmsolver_2m_reproduces_the_data_law_within_standard_errors():
    """The second-order sampler's exact covariance bias at 60 steps is below half the
    N = 4000 standard error, and its Monte Carlo moments match N(mu, Sigma) within 4 SE."""
    grid = time_grid(PROC, 60, final="zero")
    m, cov = exact_law(SDEDPMSolverPP2M(), grid)
    sd = GAUSS.cov.diagonal().sqrt()
    assert ((cov - GAUSS.cov).abs() / sd.outer(sd)).max() < 0.5 * math.sqrt(2 / 4000)
    gen = torch.Generator().manual_seed(12)
    x0 = GAUSS.marginal(grid[0], PROC).sample(4000, generator=gen)
    x = sample(GAUSS.model(PROC, "eps"), SDEDPMSolverPP2M(), grid, x0, generator=gen).x
    assert _moment_z(x, GAUSS.mean, GAUSS.cov) < 4


# ----------------------------------------------------------------------------- transitions


@pytest.mark.parametrize("solver", SDE_SOLVERS, ids=repr)
def test_transition_density_matches_the_empirical_one(solver):
    """From one fixed state (and history), x_next drawn by the sampler has the returned mean
    and std (4 SE), and the returned log-density has the Gaussian's expected value."""
    grid = prepare_grid(PROC, time_grid(PROC, 20))
    model = GAUSS.model(PROC, "eps")
    N, i = 20000, 9
    x = GAUSS.marginal(grid.t[0], PROC).sample(1, generator=torch.Generator().manual_seed(1))
    x = x.expand(N, DIM).clone()
    hist = solver.init_history(x)
    ev = Evaluator(model)
    for j in range(i):  # identical copies: zero noise keeps them identical
        tr = solver.transition(ev, x, hist, j, grid)
        x, hist = tr.mean, tr.history
    tr = solver.transition(ev, x, hist, i, grid)
    gen = torch.Generator().manual_seed(2)
    x_next = tr.mean + tr.std * torch.randn(N, DIM, generator=gen, dtype=F64)
    mean, std = tr.mean[0], tr.std.expand(N, DIM)[0]
    assert bool((std > 0).all())
    z_mean = (x_next.mean(0) - mean) / (std / math.sqrt(N))
    z_var = (x_next.var(0) - std**2) / (std**2 * math.sqrt(2 / (N - 1)))
    assert z_mean.abs().max() < 4 and z_var.abs().max() < 4
    lq = log_transition_density(x_next, tr.mean, tr.std, event_ndim=1)
    assert lq.shape == (N,)
    ref = torch.distributions.Normal(tr.mean, tr.std.expand_as(tr.mean)).log_prob(x_next).sum(-1)
    assert torch.allclose(lq, ref, rtol=1e-12, atol=1e-12)
    expected = -(0.5 + torch.log(std) + 0.5 * math.log(2 * math.pi)).sum()
    assert abs(lq.mean() - expected) < 4 * lq.std() / math.sqrt(N)


def test_ddpm_equals_sde_dpmsolver_pp1_and_the_ddim_paper_sigma():
    """eta = 1: DDPM posterior = SDE-DPM-Solver++1 (note §1); the stochastic-DDIM std is the
    DDIM paper's sigma_eta = eta (sigma_t/sigma_s) sqrt(1 - alpha_s^2/alpha_t^2) on VP."""
    grid = prepare_grid(PROC, time_grid(PROC, 8))
    model = GAUSS.model(PROC, "eps")
    x = GAUSS.marginal(grid.t[0], PROC).sample(5, generator=torch.Generator().manual_seed(4))
    for i in range(grid.num_steps):
        a = transition(model, DDPM(), x, None, i, grid)
        b = transition(model, SDEDPMSolverPP1(), x, None, i, grid)
        assert torch.allclose(a.mean, b.mean, rtol=1e-12, atol=1e-13)
        assert torch.allclose(a.std, b.std, rtol=1e-12, atol=0)
        c = transition(model, DDPM(eta=0.3), x, None, i, grid)
        if i < grid.num_steps - 1:
            s_, t_ = grid.sigma[i], grid.sigma[i + 1]
            a_s, a_t = grid.alpha[i], grid.alpha[i + 1]
            ref = 0.3 * t_ / s_ * torch.sqrt(1 - a_s**2 / a_t**2)
            assert torch.allclose(c.std, ref, rtol=1e-12)
        x = a.mean


def test_log_transition_density_rejects_deterministic_steps_and_bad_event_ndim():
    x = torch.zeros(3, 2, dtype=F64)
    with pytest.raises(ValueError, match="std must be > 0"):
        log_transition_density(x, x, torch.zeros((), dtype=F64), event_ndim=1)
    with pytest.raises(ValueError, match="event_ndim"):
        log_transition_density(x, x, torch.ones((), dtype=F64), event_ndim=3)


def test_euler_maruyama_refuses_to_start_at_pure_noise():
    proc = LinearInterpolant()
    grid = time_grid(proc, 5, kind="uniform", t_start=1.0, final="zero")
    g = Gaussian(MU[:2], torch.eye(2, dtype=F64))
    with pytest.raises(ValueError, match="alpha = 0"):
        sample(g.model(proc, "velocity"), EulerMaruyama(), grid, torch.zeros(3, 2, dtype=F64),
               generator=torch.Generator().manual_seed(0))


def test_ddim_eta_zero_is_deterministic_ddim():
    grid = time_grid(PROC, 10)
    x0 = torch.randn(5, DIM, generator=torch.Generator().manual_seed(0), dtype=F64)
    a = sample(GAUSS.model(PROC), DDPM(eta=0.0), grid, x0, generator=torch.Generator()).x
    b = sample(GAUSS.model(PROC), DDIM(), grid, x0).x
    assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- noise samplers


def test_per_particle_noise_does_not_depend_on_batch_size():
    seeds = torch.randint(0, 2**62, (100,), generator=torch.Generator().manual_seed(0))
    like = torch.empty(100, 3, 2, dtype=torch.float32)
    big = PerParticleNoise(seeds)(5, like)
    small = PerParticleNoise(seeds[:7])(5, like[:7])
    assert torch.equal(big[:7], small)
    assert big.dtype == torch.float32
    batched = PerParticleNoise(seeds.reshape(4, 25))(5, like.reshape(4, 25, 3, 2))
    assert torch.equal(batched.reshape(100, 3, 2), big)
    assert not torch.equal(PerParticleNoise(seeds)(6, like), big)  # steps differ


def test_sample_with_per_particle_noise_is_batch_size_invariant():
    seeds = torch.randint(0, 2**62, (50,), generator=torch.Generator().manual_seed(1))
    model = GAUSS.model(PROC, "eps")
    big = sample(model, SDEDPMSolverPP2M(), num_steps=15, shape=(50, DIM), dtype=F64,
                 noise=PerParticleNoise(seeds)).x
    small = sample(model, SDEDPMSolverPP2M(), num_steps=15, shape=(6, DIM), dtype=F64,
                   noise=PerParticleNoise(seeds[:6])).x
    assert torch.allclose(big[:6], small, rtol=1e-13, atol=1e-13)


def test_per_particle_noise_is_standard_normal_and_independent():
    seeds = PerParticleNoise.from_generator((4000,), torch.Generator().manual_seed(3)).seeds
    ns = PerParticleNoise(seeds)
    like = torch.empty(4000, 8, dtype=F64)
    z0, z1 = ns(0, like), ns(1, like)
    z = z0.flatten()
    n = z.numel()
    assert abs(z.mean()) < 4 / math.sqrt(n)
    assert abs(z.var() - 1) < 4 * math.sqrt(2 / n)
    assert stats.kstest(z.numpy(), "norm").pvalue > 1e-3
    r_step = torch.corrcoef(torch.stack([z0.flatten(), z1.flatten()]))[0, 1]
    r_lane = torch.corrcoef(torch.stack([z0[:, 0], z0[:, 1]]))[0, 1]
    r_part = torch.corrcoef(torch.stack([z0[:-1, 0], z0[1:, 0]]))[0, 1]
    assert abs(r_step) < 4 / math.sqrt(n)
    assert abs(r_lane) < 4 / math.sqrt(4000) and abs(r_part) < 4 / math.sqrt(4000)


def test_generator_and_fixed_noise():
    like = torch.empty(5, 2, dtype=F64)
    a = GeneratorNoise(torch.Generator().manual_seed(9))(0, like)
    b = GeneratorNoise(torch.Generator().manual_seed(9))(0, like)
    assert torch.equal(a, b)
    z = torch.randn(3, 5, 2, dtype=F64)
    assert torch.equal(FixedNoise(z)(2, like), z[2])
    with pytest.raises(ValueError, match="step"):
        FixedNoise(z)(3, like)
    with pytest.raises(ValueError, match="shape"):
        FixedNoise(z)(0, torch.empty(4, 2, dtype=F64))
    with pytest.raises(TypeError):
        PerParticleNoise(torch.zeros(3))
