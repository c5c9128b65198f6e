"""Parameter learning: Fisher-score functional, exact score / MLE, SA-MLE, Markov score climbing,
the growth model. Truth is closed form (Kalman, RTS, Gaussian cubature exact for quadratics)."""

from __future__ import annotations

import importlib.util
import math
import pathlib

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

import smcdiff as sd
from smcdiff.ssm import LinearGaussian, rts_smoother
from smcdiff.ssm.exact import (
    exact_log_likelihood,
    exact_mle,
    exact_score,
    fisher_score_rts,
    sample_smoothing_paths,
)
from smcdiff.ssm.growth import Growth
from smcdiff.ssm.learning import (
    FisherScore,
    ProposalScore,
    flatten_params,
    markov_score_climbing,
    stochastic_approximation,
    unflatten_params,
)


def build_2d(p):
    """2-D model with learned A [2, 2], C [2, 2] and log-variances of a diagonal Q."""
    Q = torch.diag(torch.exp(p["log_q"]))
    R = torch.tensor([[0.4, -0.1], [-0.1, 0.2]], dtype=f64)
    m0 = torch.tensor([0.5, -1.0], dtype=f64)
    P0 = torch.tensor([[1.0, 0.3], [0.3, 2.0]], dtype=f64)
    return LinearGaussian(p["A"], p["C"], Q, R, m0, P0)


def params_2d():
    return {"A": torch.tensor([[0.8, 0.3], [-0.2, 0.7]], dtype=f64),
            "C": torch.tensor([[1.0, 0.5], [0.0, 1.5]], dtype=f64),
            "log_q": torch.log(torch.tensor([0.5, 0.3], dtype=f64))}


@pytest.fixture(scope="module")
def y1():
    return ar1_data()  # [T, 1]


@pytest.fixture(scope="module")
def mle(y1):
    return exact_mle(build_ar1, ar1_params(0.7, -0.3, 0.3), y1)


def cubature(mean: torch.Tensor, cov: torch.Tensor):
    """Points ``[2D, D]`` and weights of the degree-3 rule ``m +- sqrt(D) L e_i`` for
    ``N(mean, cov)``: exact for polynomials of degree <= 3 (so for the quadratic h~ of a
    linear Gaussian model)."""
    D = mean.shape[-1]
    L = torch.linalg.cholesky(cov)
    offs = math.sqrt(D) * L.mT  # rows: sqrt(D) L e_i
    pts = torch.cat([mean + offs, mean - offs])
    return pts, torch.full((2 * D,), 1 / (2 * D), dtype=mean.dtype)


def exact_expectation_of_functional(fs: FisherScore, model, y) -> torch.Tensor:
    """E[h~_init(X_0) + sum_t h~_t(X_{t-1}, X_t) | y] under the RTS law, by exact cubature."""
    sm = rts_smoother(model, y)
    m, P, C = sm.smoothed_mean.detach(), sm.smoothed_cov.detach(), sm.lag_one_cov.detach()
    d = m.shape[-1]
    pts, w = cubature(m[0], P[0])
    total = (w.unsqueeze(-1) * fs.init(pts)).sum(0)
    for t in range(1, m.shape[0]):
        mean = torch.cat([m[t - 1], m[t]])
        cov = torch.cat([torch.cat([P[t - 1], C[t - 1]], -1), torch.cat([C[t - 1].mT, P[t]], -1)])
        pts, w = cubature(mean, cov)
        total = total + (w.unsqueeze(-1) * fs.step(t, pts[:, :d], pts[:, d:])).sum(0)
    return total


# ------------------------------------------------------------------ score functional


@pytest.mark.parametrize("case", ["ar1", "2d"])
def test_fisher_functional_expectation_equals_exact_score(case, y1):
    if case == "ar1":
        build, params, y = build_ar1, ar1_params(0.8, 0.2, -0.1), y1
    else:
        build, params = build_2d, params_2d()
        y = build(params).simulate(30, generator=torch.Generator().manual_seed(3)).y
    fs = FisherScore(build, params, y)
    got = exact_expectation_of_functional(fs, build(params), y)
    want = exact_score(build, params, y)
    assert got.shape == want.shape == (flatten_params(params).numel(),)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_functional_is_exact_per_pair_gradient():
    """Each entry of step / init equals the reverse-mode gradient of that one pair's log
    density (growth model: nonlinear, time-dependent)."""
    build = lambda p: Growth(a=p["a"], b=p["b"], sigma_x=torch.exp(p["log_sx"]),  # noqa: E731
                             sigma_y=torch.exp(p["log_sy"]))
    params = {"a": torch.tensor(0.5, dtype=f64), "b": torch.tensor(25.0, dtype=f64),
              "log_sx": torch.tensor(1.0, dtype=f64), "log_sy": torch.tensor(0.2, dtype=f64)}
    g = torch.Generator().manual_seed(0)
    y = build(params).simulate(5, generator=g).y
    fs = FisherScore(build, params, y)
    xp = torch.randn(2, 3, 1, 1, generator=g, dtype=f64) * 5
    x = torch.randn(2, 1, 4, 1, generator=g, dtype=f64) * 5
    t = 3
    got = fs.step(t, xp, x)
    assert got.shape == (2, 3, 4, 4)
    for b in range(2):
        for i in range(3):
            for j in range(4):
                theta = flatten_params(params).clone().requires_grad_(True)
                m = build(unflatten_params(theta, params))
                lp = (m.transition(t, xp[b, i, 0]).log_prob(x[b, 0, j])
                      + m.observation(t, x[b, 0, j]).log_prob(y[t]))
                (want,) = torch.autograd.grad(lp, theta)
                torch.testing.assert_close(got[b, i, j], want, rtol=1e-12, atol=1e-12)
    x0 = torch.randn(2, 5, 1, generator=g, dtype=f64)
    got0 = fs.init(x0)
    assert got0.shape == (2, 5, 4)
    theta = flatten_params(params).clone().requires_grad_(True)
    m = build(unflatten_params(theta, params))
    lp = m.prior().log_prob(x0[1, 2]) + m.observation(0, x0[1, 2]).log_prob(y[0])
    want0 = torch.autograd.grad(lp, theta)[0]  # only the sigma_y entry is nonzero
    torch.testing.assert_close(got0[1, 2], want0, rtol=1e-12, atol=1e-12)
    assert float(want0[3].abs()) > 0


def test_path_score_monte_carlo_and_functional_agree(y1):
    """On exact smoothing draws: path_score (one reverse pass) equals the mean of the
    functional sums, and is within 4 standard errors of the exact score."""
    params = ar1_params(0.8, 0.2, -0.1)
    model = build_ar1(params)
    fs = FisherScore(build_ar1, params, y1)
    x = sample_smoothing_paths(model, y1, 400, torch.Generator().manual_seed(1))
    assert x.shape == (400, T, 1)
    h = fs.init(x[:, 0])
    for t in range(1, T):
        h = h + fs.step(t, x[:, t - 1], x[:, t])
    torch.testing.assert_close(fs.path_score(x), h.mean(0), rtol=1e-10, atol=1e-10)
    se = h.std(0) / math.sqrt(400)
    z = (h.mean(0) - exact_score(build_ar1, params, y1)) / se
    assert bool((z.abs() < 4).all()), z


def test_paris_with_fisher_score_matches_exact_score(y1):
    """The interface with the smoothers: PaRIS (K = 2) on the FisherScore functional estimates
    the exact score within 4 standard errors over 32 independent runs."""
    from smcdiff.ssm.smoothing import paris

    params = ar1_params(0.8, 0.2, -0.1)
    fs = FisherScore(build_ar1, params, y1)
    est = paris(build_ar1(params).bootstrap(y1), fs, 512, batch_shape=(32,),
                generator=torch.Generator().manual_seed(1))
    assert est.shape == (32, 3)
    z = (est.mean(0) - exact_score(build_ar1, params, y1)) / (est.std(0) / math.sqrt(32))
    assert bool((z.abs() < 4).all()), z


def test_functional_float32_and_batched_y(y1):
    params = ar1_params(dtype=torch.float32)
    yb = torch.stack([y1, -y1]).float()  # [2, T, 1]
    fs = FisherScore(build_ar1, params, yb)
    x0 = torch.zeros(2, 6, 1)
    assert fs.init(x0).dtype == torch.float32 and fs.init(x0).shape == (2, 6, 3)
    out = fs.step(4, torch.zeros(2, 6, 1, 1), torch.ones(2, 1, 5, 1))
    assert out.shape == (2, 6, 5, 3)
    # the batch of y aligns with the leading axis: series 0 and 1 differ in the sigma_y score
    assert not torch.allclose(out[0], out[1])
    with pytest.raises(ValueError, match="leading axes"):
        fs.step(4, torch.zeros(1), torch.ones(1))


# ---------------------------------------------------------------------- exact score


def test_exact_score_rts_fisher_identity_and_finite_difference(y1):
    params = ar1_params(0.8, 0.2, -0.1)
    s = exact_score(build_ar1, params, y1)
    torch.testing.assert_close(fisher_score_rts(build_ar1, params, y1), s, rtol=1e-9, atol=1e-9)
    theta = flatten_params(params)
    eps = 1e-5
    for i in range(3):
        e = torch.zeros(3, dtype=f64)
        e[i] = eps
        lp = exact_log_likelihood(build_ar1, unflatten_params(theta + e, params), y1)
        lm = exact_log_likelihood(build_ar1, unflatten_params(theta - e, params), y1)
        assert abs(float((lp - lm) / (2 * eps)) - float(s[i])) < 1e-5
    # the note's closed-form rho-score (raw sigma_x = e^0.2)
    sm = rts_smoother(build_ar1(params), y1)
    m, P, C = sm.smoothed_mean[:, 0], sm.smoothed_cov[:, 0, 0], sm.lag_one_cov[:, 0, 0]
    exx1 = C + m[:-1] * m[1:]
    exx = P[:-1] + m[:-1] ** 2
    rho_score = ((exx1 - 0.8 * exx).sum() / math.exp(0.4)).item()
    assert abs(rho_score - float(s[0])) < 1e-9


def test_fisher_score_rts_multivariate_batched():
    params = params_2d()
    y = build_2d(params).simulate(20, (3,), generator=torch.Generator().manual_seed(2)).y
    s = exact_score(build_2d, params, y)
    assert s.shape == (10,)
    torch.testing.assert_close(fisher_score_rts(build_2d, params, y), s, rtol=1e-9, atol=1e-9)


def test_exact_mle_is_a_maximum(mle, y1):
    assert float(mle.score.abs().max()) < 1e-5
    theta = flatten_params(mle.params)
    H = torch.autograd.functional.hessian(
        lambda th: exact_log_likelihood(build_ar1, unflatten_params(th, mle.params), y1), theta)
    assert bool((torch.linalg.eigvalsh(H) < 0).all())
    # and Newton's step from it is negligible: it is the maximiser, not just a stationary point
    assert float(torch.linalg.solve(H, mle.score).abs().max()) < 1e-6


# -------------------------------------------------------------------------- SA-MLE


def test_sa_mle_exact_estimator_reaches_exact_mle(mle, y1):
    """Robbins-Monro / Fisher-scoring steps with the exact-moment (RTS Fisher identity) score
    converge to the L-BFGS maximiser of the Kalman likelihood. With ``B = (-H(theta_0))^{-1}``
    and constant steps this is a chord (fixed-Hessian Newton) iteration, linearly convergent
    from a start where the log-likelihood is concave (H(theta_0) negative definite)."""
    p0 = ar1_params(0.8, 0.1, 0.1)
    est = lambda p: fisher_score_rts(build_ar1, p, y1)  # noqa: E731
    H0 = torch.autograd.functional.hessian(
        lambda th: exact_log_likelihood(build_ar1, unflatten_params(th, p0), y1),
        flatten_params(p0))
    assert bool((torch.linalg.eigvalsh(H0) < 0).all())
    res = stochastic_approximation(est, p0, 30, step_size=1.0, decay=0.0,
                                   preconditioner=torch.linalg.inv(-H0), progress=False)
    assert res.theta.shape == (31, 3) and res.scores.shape == (30, 3)
    assert res.trace["rho"].shape == (31,) and float(res.trace["rho"][0]) == 0.8
    err = (flatten_params(res.params) - flatten_params(mle.params)).abs()
    assert float(err.max()) < 1e-6, err
    # the score estimates it used shrink to zero
    assert float(res.scores[-1].abs().max()) < 1e-4


def test_adam_option_converges_on_a_concave_quadratic():
    """Adam ascent on log-density -|theta - c|^2 / 2 (score c - theta) reaches c."""
    c = torch.tensor([1.0, -2.0, 0.5], dtype=f64)
    est = lambda p: c - flatten_params(p)  # noqa: E731
    res = stochastic_approximation(est, ar1_params(0.0, 0.0, 0.0), 400, step_size=0.3,
                                   decay=0.5, optimizer="adam", progress=False)
    assert float((flatten_params(res.averaged) - c).abs().max()) < 2e-2
    assert float((flatten_params(res.params) - c).abs().max()) < 1e-2


def per_path_scores(fs, x):
    h = fs.init(x[:, 0])
    for t in range(1, x.shape[1]):
        h = h + fs.step(t, x[:, t - 1], x[:, t])
    return h


def test_sa_mle_noisy_estimator_within_standard_errors(mle, y1):
    """Stochastic Fisher scoring with a Monte Carlo score from K exact smoothing draws.

    With ``B = (-H)^{-1}`` (H: Hessian of log p(y) at the MLE) and ``gamma_l = 1 / (l + 1)``,
    the linearised error is ``e_L = (1/L) sum_l B xi_l + (deterministic part)``, so
    ``Cov(e_L) = B Sigma B / (K L)`` with ``Sigma`` the covariance of one path's score
    (estimated from 1000 draws). The deterministic part is measured by running the same
    recursion with the exact score. Tolerance: that bias + 4 standard errors.
    """
    theta_hat = flatten_params(mle.params)
    H = torch.autograd.functional.hessian(
        lambda th: exact_log_likelihood(build_ar1, unflatten_params(th, mle.params), y1),
        theta_hat)
    B = torch.linalg.inv(-H)
    fs = FisherScore(build_ar1, mle.params, y1)
    x = sample_smoothing_paths(build_ar1(mle.params), y1, 1000, torch.Generator().manual_seed(5))
    Sigma = torch.cov(per_path_scores(fs, x).T)
    K, L = 8, 60
    p0 = ar1_params(0.82, 0.15, 0.05)
    g = torch.Generator().manual_seed(6)

    def noisy(p):
        return FisherScore(build_ar1, p, y1).path_score(
            sample_smoothing_paths(build_ar1(p), y1, K, g))

    kw = dict(step_size=1.0, decay=1.0, preconditioner=B, progress=False)
    res = stochastic_approximation(noisy, p0, L, **kw)
    det = stochastic_approximation(lambda p: fisher_score_rts(build_ar1, p, y1), p0, L, **kw)
    bias = (flatten_params(det.params) - theta_hat).abs()
    se = torch.sqrt(torch.diagonal(B @ Sigma @ B) / (K * L))
    err = (flatten_params(res.params) - theta_hat).abs()
    assert bool((err < bias + 4 * se).all()), (err, bias, se)
    # the noise is real: the noisy run is not the deterministic one
    assert float((res.theta[-1] - det.theta[-1]).abs().max()) > 0.1 * float(se.min())


def test_sa_validation():
    p = ar1_params()
    with pytest.raises(ValueError, match="num_iters"):
        stochastic_approximation(lambda q: torch.zeros(3, dtype=f64), p, 0)
    with pytest.raises(ValueError, match="estimator returned shape"):
        stochastic_approximation(lambda q: torch.zeros(2, dtype=f64), p, 2, progress=False)
    with pytest.raises(ValueError, match="not finite"):
        stochastic_approximation(lambda q: torch.full((3,), math.nan, dtype=f64), p, 2,
                                 progress=False)
    with pytest.raises(ValueError, match="optimizer"):
        stochastic_approximation(lambda q: torch.zeros(3, dtype=f64), p, 2, optimizer="sgd")
    with pytest.raises(TypeError, match="params0"):
        stochastic_approximation(lambda q: torch.zeros(3, dtype=f64), [0.1], 2)
    with pytest.raises(ValueError, match="preconditioner"):
        stochastic_approximation(lambda q: torch.zeros(3, dtype=f64), p, 2,
                                 preconditioner=torch.eye(2, dtype=f64))
    # a batch of estimates is averaged
    res = stochastic_approximation(lambda q: torch.ones(4, 3, dtype=f64), p, 2, step_size=0.5,
                                   decay=0.0, progress=False)
    torch.testing.assert_close(res.theta[-1] - res.theta[0], torch.ones(3, dtype=f64))


# ------------------------------------------------------------ Markov score climbing


def test_markov_score_climbing_reaches_kl_minimiser(y1):
    """MSC with exact smoothing draws as the p-invariant kernel converges to the closed-form
    minimiser of KL(p || q_phi) within bias + 4 SE (same argument as the SA test)."""
    params = ar1_params(0.9, 0.0, 0.0)
    model = build_ar1(params)
    sm = rts_smoother(model, y1)
    m, P, C = sm.smoothed_mean[:, 0], sm.smoothed_cov[:, 0, 0], sm.lag_one_cov[:, 0, 0]
    ex, ey = m[:-1], m[1:]
    n = len(ey)
    M = torch.stack([torch.stack([(P[:-1] + ex ** 2).sum(), ex.sum()]),
                     torch.stack([ex.sum(), torch.tensor(float(n), dtype=f64)])])
    a, b = torch.linalg.solve(M, torch.stack([(C + ex * ey).sum(), ey.sum()]))
    sq = (P[1:] + ey ** 2 - 2 * a * (C + ex * ey) - 2 * b * ey + a * a * (P[:-1] + ex ** 2)
          + 2 * a * b * ex + b * b)
    phi_star = torch.stack([m[0], 0.5 * torch.log(P[0]), a, b, 0.5 * torch.log(sq.mean())])
    names = ("mu0", "ls0", "a", "b", "ls")
    # the closed form is the stationary point, and a maximum of E_p log q
    grad = torch.func.grad(lambda ph: expected_log_q(ph, m, P, C))(phi_star)
    assert float(grad.abs().max()) < 1e-9
    Hq = torch.autograd.functional.hessian(lambda ph: expected_log_q(ph, m, P, C), phi_star)
    B = torch.linalg.inv(-Hq)
    star = dict(zip(names, phi_star))
    x = sample_smoothing_paths(model, y1, 1000, torch.Generator().manual_seed(7))
    ps = ProposalScore(GaussMarkovQ, star)
    h = ps.init(x[:, 0])
    for t in range(1, T):
        h = h + ps.step(t, x[:, t - 1], x[:, t])
    torch.testing.assert_close(ps.path_score(x), h.mean(0), rtol=1e-10, atol=1e-10)
    Sigma = torch.cov(h.T)

    K, L = 8, 60
    kernel = lambda x, q, g: sample_smoothing_paths(model, y1, K, g)  # noqa: E731
    # start off the optimum, inside the region where E_p log q is close to quadratic
    phi0 = dict(zip(names, phi_star + torch.tensor([0.3, 0.2, -0.05, 0.1, 0.1], dtype=f64)))
    state0 = torch.zeros(K, T, 1, dtype=f64)
    kw = dict(step_size=1.0, decay=1.0, preconditioner=B, progress=False)
    res = markov_score_climbing(GaussMarkovQ, phi0, kernel, state0, L,
                                generator=torch.Generator().manual_seed(8), **kw)
    assert res.state.shape == state0.shape and res.theta.shape == (L + 1, 5)
    exact_est = lambda p: torch.func.grad(  # noqa: E731
        lambda ph: expected_log_q(ph, m, P, C))(flatten_params(p))
    det = stochastic_approximation(exact_est, phi0, L, **kw)
    bias = (flatten_params(det.params) - phi_star).abs()
    se = torch.sqrt(torch.diagonal(B @ Sigma @ B) / (K * L))
    err = (flatten_params(res.params) - phi_star).abs()
    assert bool((err < bias + 4 * se).all()), (err, bias, se)


# ------------------------------------------------------------------------ growth model


def test_growth_model_simulate_and_bootstrap_shapes():
    model = Growth()
    g = torch.Generator().manual_seed(0)
    data = model.simulate(25, (3,), generator=g)
    assert data.x.shape == (3, 25, 1) and data.y.shape == (3, 25, 1)
    assert data.x.dtype == f64
    fk = model.bootstrap(data.y[0])
    x0 = fk.M0(64, torch.Size((2,)), g)
    assert x0.shape == (2, 64, 1)
    x1 = fk.M(1, x0, g)
    assert x1.shape == (2, 64, 1)
    assert fk.log_G(1, x0, x1).shape == (2, 64)
    assert fk.log_m(1, x0.unsqueeze(-2), x1.unsqueeze(-3)).shape == (2, 64, 64)
    res = sd.smc(fk, 128, batch_shape=(2,), generator=g)
    assert res.log_z.shape == (2,) and bool(torch.isfinite(res.log_z).all())
    # the drift is the model's: x/2 + 25 x / (1 + x^2) + 8 cos(1.2 t)
    xt = torch.tensor([[2.0]], dtype=f64)
    torch.testing.assert_close(model.transition(3, xt).mean,
                               torch.tensor([[1.0 + 10.0 + 8 * math.cos(3.6)]], dtype=f64))
    torch.testing.assert_close(model.observation(0, xt).mean, torch.tensor([[0.2]], dtype=f64))
    assert Growth(dtype=torch.float32).simulate(4).y.dtype == torch.float32
    with pytest.raises(ValueError, match="sigma_x"):
        Growth(sigma_x=-1.0)


# ------------------------------------------------------------------------------ example


def test_example_runs_with_tiny_args(tmp_path):
    path = pathlib.Path(__file__).resolve().parents[2] / "examples" / "ssm_learning.py"
    spec = importlib.util.spec_from_file_location("ssm_learning_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "trace.png"
    res = module.main(["--iters", "3", "--particles", "32", "--T", "20", "--out", str(out)])
    assert out.exists() and out.stat().st_size > 0
    assert res.theta.shape == (4, 3) and bool(torch.isfinite(res.theta).all())
