"""Adaptive tempered SMC against closed-form posteriors and evidences.

Statistical checks run a batch of R independent samplers in one call and compare the batch
average with the exact value within 4 standard errors of that average (fixed seeds).
"""

from __future__ import annotations

import math

import pytest
import torch
from helpers import gen
from torch.distributions import Exponential, Independent, MultivariateNormal, Normal, Uniform

from smcdiff.core.tempering import (
    MALA,
    AdaptiveTempering,
    RandomWalkMetropolis,
    next_temperature,
    tempered_smc,
)
from smcdiff.core.weights import conditional_ess, ess


def within_4se(samples: torch.Tensor, truth: torch.Tensor | float) -> None:
    """Mean over the first axis equals ``truth`` within 4 standard errors, entrywise."""
    samples = samples.double()
    mean = samples.mean(0)
    se = samples.std(0) / math.sqrt(samples.shape[0])
    z = (mean - torch.as_tensor(truth, dtype=torch.float64)) / se
    assert bool((z.abs() < 4).all()), f"z-scores {z}, mean {mean}, truth {truth}, se {se}"


class LinearGaussian:
    """Prior N(0, s0^2 I_d); observation y ~ N(A x, S) with full covariance S.

    Exact: evidence y ~ N(0, s0^2 A A^T + S); posterior precision I/s0^2 + A^T S^-1 A,
    posterior mean C A^T S^-1 y.
    """

    def __init__(self, d: int = 3, k: int = 4, s0: float = 2.0, noise: float = 0.3,
                 dtype: torch.dtype = torch.float64):
        g = gen(0)
        A = torch.randn(k, d, generator=g, dtype=torch.float64)
        B = torch.randn(k, k, generator=g, dtype=torch.float64)
        S = noise * (B @ B.T / k + 0.5 * torch.eye(k, dtype=torch.float64))
        y = 2.0 * torch.randn(k, generator=g, dtype=torch.float64)
        self.log_z = MultivariateNormal(
            torch.zeros(k, dtype=torch.float64), s0**2 * A @ A.T + S).log_prob(y)
        P = torch.eye(d, dtype=torch.float64) / s0**2 + A.T @ torch.linalg.solve(S, A)
        self.cov = torch.linalg.inv(P)
        self.mean = self.cov @ A.T @ torch.linalg.solve(S, y)
        self.prior = MultivariateNormal(torch.zeros(d, dtype=dtype),
                                        s0**2 * torch.eye(d, dtype=dtype))
        self._A, self._y = A.to(dtype), y.to(dtype)
        self._noise = MultivariateNormal(torch.zeros(k, dtype=dtype), S.to(dtype))

    def log_likelihood(self, x: torch.Tensor) -> torch.Tensor:
        return self._noise.log_prob(self._y - x @ self._A.T)


def check_moments(res, model: LinearGaussian) -> None:
    within_4se(torch.exp(res.log_z.double() - model.log_z), 1.0)
    mean = res.mean().double()
    within_4se(mean, model.mean)
    c = res.particles.double() - model.mean
    within_4se(res.mean(lambda x: c[..., :, None] * c[..., None, :]).double(), model.cov)


@pytest.mark.parametrize("move", ["rwm", "mala"])
def test_linear_gaussian_evidence_and_posterior(move):
    model = LinearGaussian()
    R, N = 64, 512
    res = tempered_smc(model.prior, model.log_likelihood, N, batch_shape=(R,), move=move,
                       generator=gen(1))
    check_moments(res, model)
    # Bookkeeping: every member ends at beta = 1; log Z is the sum of its increments.
    assert res.betas.shape == (res.num_steps, R)
    assert bool((res.betas[-1] == 1).all())
    assert bool((res.betas[1:] >= res.betas[:-1]).all())
    torch.testing.assert_close(res.log_z, res.log_z_increments.sum(0))
    # The CESS rule: with equal weights before each step (resample every step) the ESS after
    # reweighting is target_ess * N at every intermediate temperature, and at least that at 1.
    inner = res.betas < 1
    torch.testing.assert_close(res.ess[inner] / N, torch.full_like(res.ess[inner], 0.5),
                               atol=1e-6, rtol=0)
    assert bool((res.ess[~inner] >= 0.5 * N * (1 - 1e-9)).all())
    assert bool(res.resampled.all())
    # Kernels accept at healthy rates (RWM optimum ~0.23-0.35 in low d, MALA ~0.57).
    acc = res.acceptance.mean()
    assert 0.15 < acc < 0.9, acc
    assert res.nfe == 1 + res.num_steps * (5 + (move == "mala"))


def test_float32():
    model = LinearGaussian(dtype=torch.float32)
    res = tempered_smc(model.prior, model.log_likelihood, 256, batch_shape=(48,), move="mala",
                       generator=gen(2))
    for t in (res.particles, res.log_w, res.log_z, res.betas, res.ess):
        assert t.dtype == torch.float32
    check_moments(res, model)


def _box_problem():
    # Prior U[-1, 1]^2, y ~ N(x, sig^2 I): the posterior is a product of normals N(y, sig^2)
    # truncated to [-1, 1]; Z = prod_j (Phi(b_j) - Phi(a_j)) / 2.
    y, sig = torch.tensor([0.8, -0.3], dtype=torch.float64), 0.3
    prior = Independent(Uniform(-torch.ones(2, dtype=torch.float64),
                                torch.ones(2, dtype=torch.float64)), 1)
    std = Normal(torch.zeros((), dtype=torch.float64), 1.0)
    a, b = (-1 - y) / sig, (1 - y) / sig
    mass = std.cdf(b) - std.cdf(a)
    post_mean = y + sig * (std.log_prob(a).exp() - std.log_prob(b).exp()) / mass
    return prior, y, sig, torch.log(mass / 2).sum(), post_mean, lambda x: x.abs() <= 1


def _exponential_problem():
    # Prior Exp(1)^2, y ~ N(x, sig^2 I): exp(-x) N(y; x, sig^2) on x > 0 is N(y - sig^2, sig^2)
    # truncated to (0, inf); Z = prod_j exp(-y_j + sig^2/2) Phi((y_j - sig^2)/sig).
    y, sig = torch.tensor([0.2, 1.5], dtype=torch.float64), 0.5
    prior = Independent(Exponential(torch.ones(2, dtype=torch.float64)), 1)
    std = Normal(torch.zeros((), dtype=torch.float64), 1.0)
    mu = y - sig**2
    log_z = (-y + sig**2 / 2 + torch.log(std.cdf(mu / sig))).sum()
    alpha = -mu / sig
    post_mean = mu + sig * std.log_prob(alpha).exp() / (1 - std.cdf(alpha))
    return prior, y, sig, log_z, post_mean, lambda x: x >= 0


@pytest.mark.parametrize("move", ["rwm", "mala"])
@pytest.mark.parametrize("problem", [_box_problem, _exponential_problem])
def test_constrained_prior_respects_support(problem, move):
    prior, y, sig, log_z, post_mean, inside = problem()
    lik = Normal(y, sig)
    res = tempered_smc(prior, lambda x: lik.log_prob(x).sum(-1), 256, batch_shape=(48,),
                       move=move, generator=gen(3))
    assert bool(inside(res.particles).all())
    within_4se(torch.exp(res.log_z - log_z), 1.0)
    within_4se(res.mean(), post_mean)


def test_members_with_different_likelihoods_and_frozen_finished_members():
    # batch (R, 2): member [:, 0] has a broad likelihood, [:, 1] a concentrated one.
    R, N, d = 24, 256, 2
    tau = torch.tensor([1.0, 0.05], dtype=torch.float64)
    y = torch.tensor([0.5, -1.0], dtype=torch.float64)
    prior = MultivariateNormal(torch.zeros(d, dtype=torch.float64),
                               torch.eye(d, dtype=torch.float64))

    def log_likelihood(x):  # [R, 2, N, d] -> [R, 2, N]
        t = tau[:, None, None]
        return (-0.5 * ((y - x) / t) ** 2 - torch.log(t) - 0.5 * math.log(2 * math.pi)).sum(-1)

    sampler = AdaptiveTempering(prior, log_likelihood, N, batch_shape=(R, 2))
    g = gen(4)
    state = sampler.init(g)
    states, infos = [state], []
    while bool((state.beta < 1).any()):
        state, info = sampler.step(state, g)
        states.append(state)
        infos.append(info)
    betas = torch.stack([i.beta for i in infos])
    steps = (betas < 1).sum(0) + 1
    assert bool((steps[:, 1] > steps[:, 0]).all()), steps
    # After a member reaches beta = 1 nothing about it changes.
    for k in range(1, len(infos)):
        done = states[k].beta == 1
        torch.testing.assert_close(states[k + 1].particles[done], states[k].particles[done],
                                   rtol=0, atol=0)
        torch.testing.assert_close(states[k + 1].log_z[done], states[k].log_z[done],
                                   rtol=0, atol=0)
        assert bool(infos[k].acceptance[done].isnan().all())
        assert not bool(infos[k].resampled[done].any())
    assert bool(infos[0].acceptance.isfinite().all())
    # Exact evidence of each member: y ~ N(0, (1 + tau^2) I).
    log_z = Normal(torch.zeros(2, 1, dtype=torch.float64),
                   torch.sqrt(1 + tau**2)[:, None]).log_prob(y).sum(-1)
    within_4se(torch.exp(state.log_z - log_z), torch.ones(2, dtype=torch.float64))
    # run() with the same seed walks the same path.
    res = sampler.run(gen(4))
    assert res.num_steps == len(infos)
    torch.testing.assert_close(res.particles, state.particles, rtol=0, atol=0)
    torch.testing.assert_close(res.betas, betas, rtol=0, atol=0)
    torch.testing.assert_close(res.steps_per_member, steps)


def test_more_steps_for_more_concentrated_likelihood():
    broad = LinearGaussian(noise=1.0)
    sharp = LinearGaussian(noise=1e-3)
    kw = dict(batch_shape=(8,), num_mcmc_steps=2)
    r_broad = tempered_smc(broad.prior, broad.log_likelihood, 256, generator=gen(5), **kw)
    r_sharp = tempered_smc(sharp.prior, sharp.log_likelihood, 256, generator=gen(5), **kw)
    assert r_sharp.steps_per_member.min() > r_broad.steps_per_member.max()
    assert r_sharp.num_steps > r_broad.num_steps


def test_adaptive_resampling_trigger():
    model = LinearGaussian()
    res = tempered_smc(model.prior, model.log_likelihood, 256, batch_shape=(48,),
                       resample="adaptive", ess_threshold=0.3, generator=gen(6))
    assert not bool(res.resampled.all())  # ESS 0.5 N after the first step: not resampled
    within_4se(torch.exp(res.log_z - model.log_z), 1.0)
    within_4se(res.mean(), model.mean)


def test_scalar_batch_and_custom_kernel():
    model = LinearGaussian()
    res = tempered_smc(model.prior, model.log_likelihood, 128,
                       move=RandomWalkMetropolis(scale=1.0), generator=gen(7))
    assert res.log_z.shape == () and res.particles.shape == (128, 3)
    assert res.betas.shape == (res.num_steps,) and float(res.betas[-1]) == 1.0
    assert res.sample(10, generator=gen(8)).shape == (10, 3)
    res2 = tempered_smc(model.prior, model.log_likelihood, 128, move=MALA(scale=1.0),
                        generator=gen(7))
    assert res2.particles.shape == (128, 3)


def test_next_temperature_hits_the_cess_target():
    g = gen(9)
    log_lik = 5.0 * torch.randn(3, 200, generator=g, dtype=torch.float64)
    log_lik[2] = -1.0  # constant likelihood: one step to 1
    log_w = torch.randn(3, 200, generator=g, dtype=torch.float64)
    beta = torch.tensor([0.0, 0.3, 0.0], dtype=torch.float64)
    new = next_temperature(log_w, log_lik, beta, 0.5)
    cess = conditional_ess(log_w, (new - beta)[:, None] * log_lik)
    torch.testing.assert_close(cess[:2] / 200, torch.full((2,), 0.5, dtype=torch.float64),
                               atol=1e-9, rtol=0)
    assert float(new[2]) == 1.0
    assert bool((new[:2] > beta[:2]).all()) and bool((new[:2] < 1).all())
    # Finished members stay at 1; a tiny likelihood spread jumps straight to 1.
    one = next_temperature(log_w, log_lik, torch.ones(3, dtype=torch.float64), 0.5)
    assert bool((one == 1).all())
    flat = next_temperature(torch.zeros(200, dtype=torch.float64), 1e-3 * log_lik[0],
                            torch.tensor(0.0, dtype=torch.float64), 0.5)
    assert float(flat) == 1.0
    assert float(ess(1e-3 * log_lik[0])) >= 100


# ------------------------------------------------------------------------ bad input


def _prior(d=2):
    return MultivariateNormal(torch.zeros(d, dtype=torch.float64),
                              torch.eye(d, dtype=torch.float64))


def _ll(x):
    return -0.5 * (x**2).sum(-1)


@pytest.mark.parametrize("target_ess", [0.0, 1.0, -0.2, 1.5, float("nan")])
def test_target_ess_outside_unit_interval_raises(target_ess):
    with pytest.raises(ValueError, match="target_ess"):
        tempered_smc(_prior(), _ll, 16, target_ess=target_ess, generator=gen(0))


def test_non_finite_log_likelihood_at_prior_draws_raises():
    def ll(x):
        out = _ll(x)
        return torch.where(x[..., 0] > 1.0, torch.full_like(out, math.nan), out)

    with pytest.raises(ValueError, match=r"log_likelihood is not finite at \d+ of the 200"):
        tempered_smc(_prior(), ll, 100, batch_shape=(2,), generator=gen(0))


def test_log_likelihood_shape_mismatch_raises():
    with pytest.raises(ValueError, match=r"log_likelihood returned shape \(4, 16, 1\)"):
        tempered_smc(_prior(), lambda x: _ll(x)[..., None], 16, batch_shape=(4,),
                     generator=gen(0))
    with pytest.raises(TypeError, match="log_likelihood must return a tensor"):
        tempered_smc(_prior(), lambda x: 1.0, 16, generator=gen(0))


def test_other_bad_arguments_raise():
    with pytest.raises(ValueError, match="event_shape"):
        tempered_smc(Normal(torch.zeros(()), 1.0), _ll, 16)
    with pytest.raises(ValueError, match="batch_shape"):
        tempered_smc(Independent(Normal(torch.zeros(3, 2), 1.0), 1), _ll, 16)
    with pytest.raises(TypeError, match="prior"):
        tempered_smc("normal", _ll, 16)
    with pytest.raises(ValueError, match="unknown move"):
        tempered_smc(_prior(), _ll, 16, move="hmc")
    with pytest.raises(ValueError, match="num_particles"):
        tempered_smc(_prior(), _ll, 0)
    with pytest.raises(ValueError, match="num_mcmc_steps"):
        tempered_smc(_prior(), _ll, 16, num_mcmc_steps=-1)
    with pytest.raises(ValueError, match="unknown resampling scheme"):
        tempered_smc(_prior(), _ll, 16, resampling="best")
    with pytest.raises(TypeError, match="autograd"):
        tempered_smc(_prior(), lambda x: _ll(x.detach()), 16, move="mala", generator=gen(0))
    with pytest.raises(RuntimeError, match="max_steps=2"):
        tempered_smc(_prior(), lambda x: 1e4 * _ll(x - 1), 64, max_steps=2, generator=gen(0))
