"""Stochastic volatility: the particle SA-MLE recovers the generating parameters within their
posterior spread (issue 5).

Estimate. ``T = 500`` observations are simulated from ``StochasticVolatility(mu=-1, rho=0.9,
sigma=0.5)`` with a fixed seed. Their maximum likelihood estimate ``theta_hat``, in the
unconstrained coordinates ``theta = (mu, atanh rho, log sigma)``, is found by stochastic
approximation (:func:`~smcdiff.ssm.learning.stochastic_approximation`) driven by the library's
particle score: PaRIS (Olsson & Westerborn 2017; K = 2 IMH backward draws) on the
Fisher-identity functional. The functional is the written-out
:class:`~smcdiff.ssm.stochastic_volatility.StochasticVolatilityScore`, equal to
``FisherScore(StochasticVolatility.from_unconstrained, ...)`` (``test_stochastic_volatility.py``)
but without autodiff at every step, which would make this test about four times slower.
Two stages:

1. Adam (25 iterations, 2 x 64 particles, average of the last 5 iterates) from a deliberately
   poor start ``(mu, rho, sigma) = (0, 0.5, 1)``, more than 6 posterior SDs off, where the
   log-likelihood is not concave. It lands within about one SD of the MLE;
2. stochastic Fisher scoring from there (Delyon, Lavielle & Moulines 1999; the preconditioned
   form of ``stochastic_approximation``): ``theta_{l+1} = theta_l + B H_l / (l + 1)``, with
   ``B = (-J)^{-1}`` fixed and ``J`` the score Jacobian estimated there as below, with the
   larger step ``h = 0.25``. The iterate is then the running mean of noisy Newton steps
   (8 iterations, 8 x 256 particles).

Spread. By Bernstein-von Mises (any prior smooth and positive at the truth) the posterior is
``N(theta_hat, I^{-1})`` to first order. In the frequentist reading of the same statement,
``theta_hat - theta_true`` is ``N(0, I^{-1})``. Here ``I = -d^2 log p(y) / d theta^2`` is the
observed information at the MLE. ``I`` is estimated as minus the Jacobian of the particle score
at ``theta_hat``. The Jacobian comes from central finite differences with common random
numbers: ``theta +- h e_i`` use the same generator seed, so most of the Monte Carlo noise cancels
(16 x 256 particles). The step is ``h = 0.15``, 0.6-1 posterior SD. Resampling makes the CRN
difference discontinuous, so a smaller ``h`` is noisier, and at this ``h`` the difference
quotient is the average curvature over the bulk of the posterior, which is what a spread
measures. A Hessian is symmetric, so the asymmetry of the estimated Jacobian measures its
error, and that is asserted small. Covariance: ``C = (-J_sym)^{-1}``. A short PMMH run would be
the alternative, but a few thousand T = 500 filters do not fit the time budget.

Checks:

- recovery: ``|theta_hat_i - theta_true_i| <= 3 sqrt(C_ii)`` per coordinate, and the squared
  Mahalanobis distance ``d^T C^{-1} d`` is below the 0.999 quantile of chi-square(3) (16.27);
- the spread means something: ``SD(rho) < 0.1`` and ``SD(sigma) < sigma / 2`` in natural units
  (delta method), and every SD in ``theta`` is below 0.5;
- the SA learned something: the start is more than 6 SDs off (``d^T C^{-1} d > 36``), and
  ``theta_hat`` is less than half as far from the truth in that metric;
- ``theta_hat`` is a stationary point of the likelihood: the Newton step ``C s(theta_hat)``
  has Mahalanobis length ``sqrt(s^T C s)`` under 1 (measured: 0.21). ``s`` is the mean of the
  six CRN scores of the finite difference, ``s(theta_hat) + O(h^2)``.

All randomness comes from fixed seeds, so the test is deterministic; the seeds were not tuned.
The measured numbers, and the same pipeline on four other data seeds, are in
``docs/ssm-learning.md``.
"""

from __future__ import annotations

import math
import time

import pytest
import torch
from helpers import gen

from smcdiff.ssm import StochasticVolatility
from smcdiff.ssm.learning import flatten_params, stochastic_approximation, unflatten_params
from smcdiff.ssm.smoothing import paris
from smcdiff.ssm.stochastic_volatility import StochasticVolatilityScore

TRUE = (-1.0, 0.9, 0.5)  # (mu, rho, sigma)
START = (0.0, 0.5, 1.0)
ADAM = dict(iters=25, lr=0.2, decay=0.5, N=64, R=2, average_from=20)
T = 500
DATA_SEED = 2024
CHI2_3_999 = 16.266  # 0.999 quantile of chi-square with 3 degrees of freedom
H_FD = 0.15  # finite-difference steps in the unconstrained coordinates: Laplace reference,
H_PRE = 0.25  # and the preconditioner (a larger step: less noise, more curvature averaging)


def particle_score(y: torch.Tensor, params: dict, num_particles: int, num_runs: int,
                   generator: torch.Generator) -> torch.Tensor:
    """PaRIS estimate of the score ``grad log p_theta(y)`` in the unconstrained coordinates,
    averaged over ``num_runs`` independent filters: ``[3]``."""
    model = StochasticVolatility.from_unconstrained(params)
    est = paris(model.bootstrap(y), StochasticVolatilityScore(params), num_particles,
                num_backward=2, batch_shape=(num_runs,), generator=generator)
    return est.mean(0)


def score_jacobian(y: torch.Tensor, theta: torch.Tensor, like: dict, h: float,
                   num_particles: int, num_runs: int, seed: int):
    """Central finite differences of the particle score with common random numbers.

    Returns ``(J [3, 3], s [3])``: ``J[:, i] = (s(theta + h e_i) - s(theta - h e_i)) / 2h``
    and ``s`` the mean of the six scores (``s(theta) + O(h^2)``)."""
    cols, scores = [], []
    for i in range(theta.shape[0]):
        e = torch.zeros_like(theta)
        e[i] = h
        up, dn = (particle_score(y, unflatten_params(theta + sgn * e, like), num_particles,
                                 num_runs, gen(seed)) for sgn in (1, -1))
        cols.append((up - dn) / (2 * h))
        scores += [up, dn]
    return torch.stack(cols, 1), torch.stack(scores).mean(0)


@pytest.fixture(scope="module")
def fit():
    t0 = time.perf_counter()
    truth = StochasticVolatility(*TRUE)
    y = truth.simulate(T, generator=gen(DATA_SEED)).y  # [T, 1]
    like = truth.unconstrained()
    start = StochasticVolatility(*START).unconstrained()
    g = gen(1)

    # stage 1: Adam with cheap scores from the poor start, average of the last iterates
    adam = stochastic_approximation(
        lambda p: particle_score(y, p, ADAM["N"], ADAM["R"], g), start, ADAM["iters"],
        step_size=ADAM["lr"], decay=ADAM["decay"], optimizer="adam",
        average_from=ADAM["average_from"], progress=False)
    theta1 = flatten_params(adam.averaged)
    t1 = time.perf_counter()

    # stage 2: stochastic Fisher scoring with the observed information at theta1
    J1, _ = score_jacobian(y, theta1, like, H_PRE, 256, 16, seed=2)
    B = torch.linalg.inv(-0.5 * (J1 + J1.T))
    fisher = stochastic_approximation(
        lambda p: particle_score(y, p, 256, 8, g), unflatten_params(theta1, like), 8,
        step_size=1.0, decay=1.0, preconditioner=B, progress=False)
    theta_hat = flatten_params(fisher.params)
    t2 = time.perf_counter()

    # the reference spread: Laplace / Bernstein-von Mises at theta_hat
    J, s = score_jacobian(y, theta_hat, like, H_FD, 256, 16, seed=3)
    cov = torch.linalg.inv(-0.5 * (J + J.T))
    t3 = time.perf_counter()
    return dict(theta_true=flatten_params(like), theta0=flatten_params(start), theta1=theta1,
                J1=J1, adam=adam, fisher=fisher, theta_hat=theta_hat, J=J, score=s, cov=cov,
                seconds=(t1 - t0, t2 - t1, t3 - t2))


def mahalanobis2(d: torch.Tensor, cov: torch.Tensor) -> float:
    return float(d @ torch.linalg.solve(cov, d))


def test_stage_one_reaches_the_concave_region(fit):
    """Adam's average is where -J is positive definite (Newton steps are ascent steps)."""
    assert bool((torch.linalg.eigvalsh(-0.5 * (fit["J1"] + fit["J1"].T)) > 0).all())
    assert fit["adam"].theta.shape == (ADAM["iters"] + 1, 3) and fit["fisher"].theta.shape == (9, 3)


def test_observed_information_is_a_symmetric_negative_definite_hessian(fit):
    J = fit["J"]
    assert bool((torch.linalg.eigvalsh(-0.5 * (J + J.T)) > 0).all())
    # finite-difference + Monte Carlo error, measured by the asymmetry of a Hessian estimate
    assert float(torch.linalg.matrix_norm(J - J.T)) < 0.25 * float(torch.linalg.matrix_norm(J))


def test_posterior_spread_is_informative(fit):
    sd = torch.sqrt(torch.diagonal(fit["cov"]))
    rho, sigma = math.tanh(float(fit["theta_hat"][1])), math.exp(float(fit["theta_hat"][2]))
    sd_rho, sd_sigma = (1 - rho**2) * float(sd[1]), sigma * float(sd[2])  # delta method
    assert sd_rho < 0.1 and sd_sigma < 0.5 * sigma, (sd_rho, sd_sigma)
    assert float(sd.max()) < 0.5


def test_sa_mle_is_a_stationary_point(fit):
    """The Newton step from theta_hat, ``C s(theta_hat)``, is under one posterior SD in the
    posterior's own metric (``s^T C s < 1``; its Monte Carlo noise alone is about 0.2-0.3):
    theta_hat sits at a maximum of the likelihood up to a fraction of the spread, not merely
    near the truth."""
    s, cov = fit["score"], fit["cov"]
    assert float(s @ cov @ s) < 1.0, (cov @ s) / torch.sqrt(torch.diagonal(cov))


def test_sv_mle_recovers_generating_parameters(fit):
    cov, d = fit["cov"], fit["theta_hat"] - fit["theta_true"]
    z = d / torch.sqrt(torch.diagonal(cov))
    assert bool((z.abs() <= 3).all()), z
    m2 = mahalanobis2(d, cov)
    assert m2 < CHI2_3_999, m2
    # and it learned something: the start was far, the estimate is much closer
    m2_start = mahalanobis2(fit["theta0"] - fit["theta_true"], cov)
    assert m2_start > 36 and math.sqrt(m2) < 0.5 * math.sqrt(m2_start), (m2, m2_start)
