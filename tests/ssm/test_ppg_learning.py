"""Learning driven by Markov kernels: SA-MLE with a PPG score (the frozen path carried between
iterations) and Markov score climbing with a conditional-SMC kernel (backward sampling).

Truth is closed form on the AR(1) linear Gaussian model (Kalman likelihood, RTS moments).

Tolerance argument (both tests). With a fixed preconditioner ``B = (-H)^{-1}`` (``H`` the
Hessian of the objective at its maximiser) and steps ``gamma_l = 1 / (l + 1)``, the linearised
recursion gives ``theta_L - theta* = (1/L) sum_l B xi_l + (deterministic part)``, where
``xi_l = H_l - s(theta_l)`` is the estimator's error (``s`` the exact gradient, known here).
The estimate averages ``C`` independent chains (batch members), so
``xi_l = (1/C) sum_c xi_{l,c}`` and ``theta_L - theta* ~ (1/C) sum_c z_c`` with
``z_c = (1/L) sum_l B xi_{l,c}``. The ``z_c`` are independent across chains whatever the
autocorrelation inside a chain (the frozen / reference path is carried), so
``SE = std_c(z_c) / sqrt(C)`` is an honest standard error; the deterministic part is
measured by running the same recursion with the exact gradient. Tolerance: that part plus
4 SE, coordinatewise. A biased estimator (e.g. a kernel that does not leave the smoothing
law invariant) shifts the mean of ``z_c`` and the error, and fails it.
"""

from __future__ import annotations

import math

import pytest
import torch
from ar1_learning import (
    GaussMarkovQ,
    T,
    ar1_data,
    ar1_params,
    build_ar1,
    expected_log_q,
    f64,
)

from smcdiff.core.csmc import csmc_kernel
from smcdiff.ssm import rts_smoother
from smcdiff.ssm.exact import exact_log_likelihood, exact_mle, fisher_score_rts
from smcdiff.ssm.learning import (
    FisherScore,
    ProposalScore,
    flatten_params,
    markov_score_climbing,
    stochastic_approximation,
    unflatten_params,
)
from smcdiff.ssm.ppg import initial_path, ppg_sweep


@pytest.fixture(scope="module")
def y1():
    return ar1_data()  # [T, 1]


def chain_errors(per_chain, exact, B):
    """``z_c = (1/L) sum_l B (H_{l,c} - s(theta_l))``: ``per_chain [L, C, P]``, ``exact [L, P]``
    -> ``[C, P]``."""
    xi = per_chain - exact.unsqueeze(1)
    return (xi.mean(0)) @ B.T


# ------------------------------------------------------------------- SA-MLE with PPG


def test_sa_mle_with_ppg_score_reaches_exact_mle(y1):
    """Stochastic Fisher scoring with one PPG sweep per iteration (FisherScore functional,
    PaRIS K = 2 with IMH backward draws inside CSMC), ``C = 8`` chains whose frozen paths are
    carried from one iteration to the next, converges to the L-BFGS maximiser of the Kalman
    likelihood within the deterministic part + 4 SE (module docstring)."""
    mle = exact_mle(build_ar1, ar1_params(0.7, -0.3, 0.3), y1)
    theta_hat = flatten_params(mle.params)
    Hs = torch.autograd.functional.hessian(
        lambda th: exact_log_likelihood(build_ar1, unflatten_params(th, mle.params), y1),
        theta_hat)
    B = torch.linalg.inv(-Hs)
    C, N, L = 8, 64, 40
    p0 = ar1_params(0.82, 0.15, 0.05)
    g = torch.Generator().manual_seed(11)
    state = {"path": initial_path(build_ar1(p0).bootstrap(y1), N, batch_shape=(C,),
                                  generator=g)}
    per_chain, exact = [], []

    def ppg_score(p):
        fs = FisherScore(build_ar1, p, y1)
        est, state["path"] = ppg_sweep(build_ar1(p).bootstrap(y1), fs, state["path"], N,
                                       num_backward=2, backward="imh", batch_shape=(C,),
                                       generator=g)
        per_chain.append(est)
        exact.append(fisher_score_rts(build_ar1, p, y1))
        return est  # [C, P], averaged over the chains by stochastic_approximation

    kw = dict(step_size=1.0, decay=1.0, preconditioner=B, progress=False)
    res = stochastic_approximation(ppg_score, p0, L, **kw)
    assert state["path"].shape == (T, C, 1)
    det = stochastic_approximation(lambda p: fisher_score_rts(build_ar1, p, y1), p0, L, **kw)
    bias = (flatten_params(det.params) - theta_hat).abs()
    z = chain_errors(torch.stack(per_chain), torch.stack(exact), B)
    se = z.std(0) / math.sqrt(C)
    err = (flatten_params(res.params) - theta_hat).abs()
    assert bool((err < bias + 4 * se).all()), (err, bias, se)
    # the tolerance is tight: well inside the statistical uncertainty of the MLE itself
    # (its asymptotic standard deviation sqrt(diag(-H^{-1})))
    assert bool(((bias + 4 * se) < 0.5 * torch.diagonal(B).sqrt()).all()), (
        bias + 4 * se, torch.diagonal(B).sqrt())
    # and the noise is real
    assert float((res.theta[-1] - det.theta[-1]).abs().max()) > 0.1 * float(se.min())


# ------------------------------------------------- Markov score climbing with CSMC-BS


def test_markov_score_climbing_with_csmc_kernel(y1):
    """MSC (Naesseth, Lindsten & Blei 2020) whose p-invariant kernel is conditional SMC with
    backward sampling using the current ``q_phi`` as its proposal, ``C = 8`` chains, reaches
    the closed-form minimiser of ``KL(p || q_phi)`` within the deterministic part + 4 SE."""
    model = build_ar1(ar1_params(0.9, 0.0, 0.0))
    sm = rts_smoother(model, y1)
    m, P, Cl = sm.smoothed_mean[:, 0], sm.smoothed_cov[:, 0, 0], sm.lag_one_cov[:, 0, 0]
    ex, ey = m[:-1], m[1:]
    n = len(ey)
    M = torch.stack([torch.stack([(P[:-1] + ex ** 2).sum(), ex.sum()]),
                     torch.stack([ex.sum(), torch.tensor(float(n), dtype=f64)])])
    a, b = torch.linalg.solve(M, torch.stack([(Cl + ex * ey).sum(), ey.sum()]))
    sq = (P[1:] + ey ** 2 - 2 * a * (Cl + ex * ey) - 2 * b * ey + a * a * (P[:-1] + ex ** 2)
          + 2 * a * b * ex + b * b)
    phi_star = torch.stack([m[0], 0.5 * torch.log(P[0]), a, b, 0.5 * torch.log(sq.mean())])
    names = ("mu0", "ls0", "a", "b", "ls")

    def exact_grad(phi):
        return torch.func.grad(lambda ph: expected_log_q(ph, m, P, Cl))(phi)

    assert float(exact_grad(phi_star).abs().max()) < 1e-9
    B = torch.linalg.inv(-torch.autograd.functional.hessian(
        lambda ph: expected_log_q(ph, m, P, Cl), phi_star))

    C, N, L = 8, 32, 40
    per_chain, exact = [], []

    def kernel(x, q, gen):
        fk = model.guided(y1, lambda y0: q.prior(),
                          lambda t, x_prev, yt: q.transition(t, x_prev))
        new = csmc_kernel(fk, x.transpose(0, 1), N, batch_shape=(C,), generator=gen,
                          backward_sampling=True).transpose(0, 1)  # [C, T, 1]
        ps = ProposalScore(GaussMarkovQ, q.p)
        h = ps.init(new[:, 0])
        for t in range(1, T):
            h = h + ps.step(t, new[:, t - 1], new[:, t])
        per_chain.append(h)  # [C, P]: the score of each chain's path
        exact.append(exact_grad(flatten_params(q.p)))
        return new

    phi0 = dict(zip(names, phi_star + torch.tensor([0.3, 0.2, -0.05, 0.1, 0.1], dtype=f64)))
    g = torch.Generator().manual_seed(12)
    # start the chains from one bootstrap-filter path each (not from the target)
    state0 = initial_path(model.bootstrap(y1), N, batch_shape=(C,), generator=g).transpose(0, 1)
    kw = dict(step_size=1.0, decay=1.0, preconditioner=B, progress=False)
    res = markov_score_climbing(GaussMarkovQ, phi0, kernel, state0, L, generator=g, **kw)
    assert res.state.shape == (C, T, 1) and res.theta.shape == (L + 1, 5)
    # the per-chain scores average to the update direction the climber used
    torch.testing.assert_close(res.scores, torch.stack(per_chain).mean(1), rtol=1e-9,
                               atol=1e-9)
    det = stochastic_approximation(lambda p: exact_grad(flatten_params(p)), phi0, L, **kw)
    bias = (flatten_params(det.params) - phi_star).abs()
    z = chain_errors(torch.stack(per_chain), torch.stack(exact), B)
    se = z.std(0) / math.sqrt(C)
    err = (flatten_params(res.params) - phi_star).abs()
    assert bool((err < bias + 4 * se).all()), (err, bias, se)
    # the tolerance is smaller than the distance the iterates travelled (x_0 enters one
    # term only, so mu0 and ls0 are the noisiest coordinates)
    assert bool(((bias + 4 * se) < (flatten_params(phi0) - phi_star).abs()).all()), (
        bias + 4 * se)
