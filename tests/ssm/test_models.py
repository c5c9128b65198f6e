"""State-space models, their bootstrap / guided Feynman-Kac models, and the benchmark data."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import gen
from torch import distributions as D

import smcdiff as sd
from smcdiff.ssm import (
    BootstrapFK,
    GuidedFK,
    LinearGaussian,
    SSMData,
    StochasticVolatility,
    kalman_filter,
    lgssm_data,
    sv_data,
)

f64 = torch.float64


def model_2d(dtype=f64) -> LinearGaussian:
    A = torch.tensor([[0.8, 0.3], [-0.2, 0.7]], dtype=dtype)
    C = torch.tensor([[1.0, 0.5], [0.0, 1.5], [1.0, -1.0]], dtype=dtype)
    Q = torch.tensor([[0.5, 0.1], [0.1, 0.3]], dtype=dtype)
    R = torch.tensor([[0.4, -0.1, 0.0], [-0.1, 0.2, 0.05], [0.0, 0.05, 0.3]], dtype=dtype)
    m0 = torch.tensor([0.5, -1.0], dtype=dtype)
    P0 = torch.tensor([[1.0, 0.3], [0.3, 2.0]], dtype=dtype)
    return LinearGaussian(A, C, Q, R, m0, P0)


def mvn(loc, cov):
    return D.MultivariateNormal(loc, cov)


def assert_unbiased_evidence(log_z_hat: torch.Tensor, log_z: torch.Tensor) -> None:
    """Z_hat is unbiased: mean of exp(log Z_hat - log Z) is 1 within 4 standard errors."""
    ratio = torch.exp(log_z_hat - log_z).reshape(-1)
    se = ratio.std() / math.sqrt(ratio.numel())
    assert abs(float(ratio.mean()) - 1.0) < 4 * float(se), (float(ratio.mean()), float(se))


# ----------------------------------------------------------------------- simulation


@pytest.mark.parametrize("make", [model_2d, StochasticVolatility], ids=["lg2d", "sv"])
def test_simulate_shapes_and_reproducibility(make):
    model = make()
    d, dy = model.state_dim, model.obs_dim
    data = model.simulate(7, batch_shape=(3, 2), generator=gen(0))
    assert isinstance(data, SSMData)
    assert data.x.shape == (3, 2, 7, d) and data.y.shape == (3, 2, 7, dy)
    assert data.x.dtype == f64
    again = model.simulate(7, batch_shape=(3, 2), generator=gen(0))
    assert torch.equal(data.x, again.x) and torch.equal(data.y, again.y)
    other = model.simulate(7, batch_shape=(3, 2), generator=gen(1))
    assert not torch.equal(data.y, other.y)
    single = model.simulate(4, generator=gen(2))
    assert single.x.shape == (4, d) and single.y.shape == (4, dy)


def test_simulate_law_matches_joint_gaussian():
    """Empirical mean and variance of (x_t, y_t) vs the exact moments, within 4 SE."""
    model = model_2d()
    n, T = 20000, 3
    data = model.simulate(T, batch_shape=(n,), generator=gen(5))
    A, C, Q, R = model.A, model.C, model.Q, model.R
    m, P = model.m0, model.P0
    for t in range(T):
        if t > 0:
            m, P = A @ m, A @ P @ A.T + Q
        for v, mean, cov in ((data.x[:, t], m, P), (data.y[:, t], C @ m, C @ P @ C.T + R)):
            var = torch.diagonal(cov)
            se_mean = (var / n).sqrt()
            assert ((v.mean(0) - mean).abs() < 4 * se_mean).all()
            se_var = var * math.sqrt(2 / n)  # Gaussian: Var(s^2) = 2 sigma^4 / n
            assert ((v.var(0) - var).abs() < 4 * se_var).all()


def test_simulate_rejects_bad_T():
    with pytest.raises(ValueError, match="T must be an integer >= 1"):
        model_2d().simulate(0)


# -------------------------------------------------------------------- bootstrap FK


def test_bootstrap_shapes_and_values():
    model = model_2d()
    T, N, batch = 5, 4, (2, 3)
    y = model.simulate(T, generator=gen(0)).y  # [T, dy], shared by the batch
    fk = model.bootstrap(y)
    assert isinstance(fk, BootstrapFK) and fk.T == T
    sd.core.check_model(fk)
    x0 = fk.M0(N, torch.Size(batch), gen(1))
    assert x0.shape == (*batch, N, 2)
    lg0 = fk.log_G(0, None, x0)
    assert lg0.shape == (*batch, N)
    assert torch.allclose(lg0, mvn(x0 @ model.C.T, model.R).log_prob(y[0]), atol=1e-12)
    x1 = fk.M(1, x0, gen(2))
    assert x1.shape == (*batch, N, 2)
    lg1 = fk.log_G(1, x0, x1)
    assert torch.allclose(lg1, mvn(x1 @ model.C.T, model.R).log_prob(y[1]), atol=1e-12)
    # transition density, elementwise and against one "next" state (backward sampling)
    lm = fk.log_m(1, x0, x1)
    assert lm.shape == (*batch, N)
    assert torch.allclose(lm, mvn(x0 @ model.A.T, model.Q).log_prob(x1), atol=1e-12)
    lm_one = fk.log_m(1, x0, x1[..., :1, :])
    assert lm_one.shape == (*batch, N)
    assert torch.allclose(lm_one[..., 2], lm[..., 2].new_tensor(0) + mvn(
        x0[..., 2, :] @ model.A.T, model.Q).log_prob(x1[..., 0, :]), atol=1e-12)
    pairs = fk.log_m(1, x0.unsqueeze(-2), x1.unsqueeze(-3))
    assert pairs.shape == (*batch, N, N)
    assert torch.allclose(torch.diagonal(pairs, dim1=-2, dim2=-1), lm, atol=1e-12)


def test_bootstrap_reproducible_with_generator():
    model = LinearGaussian.ar1(0.9, 1.0, 1.0)
    fk = model.bootstrap(lgssm_data(1.0).y[:10])
    a = sd.smc(fk, 50, batch_shape=(3,), generator=gen(7))
    b = sd.smc(fk, 50, batch_shape=(3,), generator=gen(7))
    assert torch.equal(a.log_z, b.log_z) and torch.equal(a.particles, b.particles)


def test_per_member_observations_broadcast_correctly():
    model = model_2d()
    y = model.simulate(4, batch_shape=(3,), generator=gen(0)).y  # [3, T, dy]
    fk = model.bootstrap(y)
    x = fk.M0(5, torch.Size((3,)), gen(1))
    lg = fk.log_G(2, None, x)
    assert lg.shape == (3, 5)
    for b in range(3):
        assert torch.allclose(lg[b], model.bootstrap(y[b]).log_G(2, None, x[b]), atol=1e-12)
    # y batch (3,) also broadcasts into batch_shape (2, 3)
    assert fk.M0(5, torch.Size((2, 3)), gen(1)).shape == (2, 3, 5, 2)
    with pytest.raises(ValueError, match="does not broadcast to the SMC batch_shape"):
        fk.M0(5, torch.Size((4,)), gen(1))
    with pytest.raises(ValueError, match="does not broadcast to the SMC batch_shape"):
        fk.M0(5, torch.Size(()), gen(1))


def test_bad_observations_raise():
    model = model_2d()
    with pytest.raises(ValueError, match=r"y must have shape \[T, dy\]"):
        model.bootstrap(torch.zeros(5, dtype=f64))
    with pytest.raises(ValueError, match="dy=3"):
        model.bootstrap(torch.zeros(5, 2, dtype=f64))
    with pytest.raises(ValueError, match="dtype"):
        model.bootstrap(torch.zeros(5, 3, dtype=torch.float32))
    with pytest.raises(ValueError, match="finite"):
        model.bootstrap(torch.full((5, 3), float("inf"), dtype=f64))
    with pytest.raises(TypeError, match="floating point"):
        model.bootstrap(torch.zeros(5, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="unsqueeze"):
        LinearGaussian.ar1(0.9, 1.0, 1.0).bootstrap(torch.zeros(5, dtype=f64))
    with pytest.raises(TypeError, match="StateSpaceModel"):
        BootstrapFK(object(), torch.zeros(5, 3, dtype=f64))


@pytest.mark.parametrize("kind", ["bootstrap", "optimal"])
def test_smc_evidence_unbiased_ar1(kind):
    """Mean of Z_hat / Z_Kalman over independent batched runs is 1 (within 4 SE)."""
    model = LinearGaussian.ar1(0.9, 1.0, 1.0)
    y = lgssm_data(1.0).y[:50]
    fk = model.bootstrap(y) if kind == "bootstrap" else model.optimal_proposal(y)
    res = sd.smc(fk, 256, batch_shape=(200,), resampling="systematic", generator=gen(11))
    assert res.log_z.shape == (200,)
    assert_unbiased_evidence(res.log_z, kalman_filter(model, y).log_z)


def test_smc_evidence_unbiased_2d_per_member_series():
    model = model_2d()
    y = model.simulate(15, batch_shape=(100,), generator=gen(3)).y
    res = sd.smc(model.bootstrap(y), 256, batch_shape=(100,), generator=gen(4))
    assert_unbiased_evidence(res.log_z, kalman_filter(model, y).log_z)


def test_float32_bootstrap():
    m32 = LinearGaussian.ar1(0.9, 1.0, 1.0, dtype=torch.float32)
    assert m32.dtype == torch.float32 and m32.A.dtype == torch.float32
    y = lgssm_data(1.0).y[:30]
    res = sd.smc(m32.bootstrap(y.float()), 2000, batch_shape=(4,), generator=gen(0))
    assert res.log_z.dtype == torch.float32 and res.particles.dtype == torch.float32
    ll = float(kalman_filter(LinearGaussian.ar1(0.9, 1.0, 1.0), y).log_z)
    # N = 2000, T = 30, sigma_y = 1: sd(log Z_hat) is about 0.1
    assert (res.log_z.double() - ll).abs().max() < 0.6


# ----------------------------------------------------------------------- guided FK


@pytest.mark.parametrize("make", [model_2d, lambda: LinearGaussian.ar1(0.9, 1.0, 0.2)],
                         ids=["lg2d", "ar1"])
def test_optimal_proposal_weight_depends_only_on_x_prev(make):
    """G_0 = p(y_0) and G_t = N(y_t; C A x_{t-1}, C Q C^T + R), whatever x_t is drawn."""
    model = make()
    A, C, Q, R, m0, P0 = model.A, model.C, model.Q, model.R, model.m0, model.P0
    y = model.simulate(3, generator=gen(0)).y
    fk = model.optimal_proposal(y)
    assert isinstance(fk, GuidedFK)
    N, d = 64, model.state_dim
    x0 = fk.M0(N, torch.Size((2,)), gen(1))
    lg0 = fk.log_G(0, None, x0)
    exact0 = mvn(C @ m0, C @ P0 @ C.T + R).log_prob(y[0])
    assert torch.allclose(lg0, exact0.expand(2, N), atol=1e-10)
    # one fixed x_prev for all particles: the weight must not vary with x_t
    x_prev = torch.randn(2, 1, d, generator=gen(2), dtype=f64).expand(2, N, d)
    x1 = fk.M(1, x_prev, gen(3))
    assert x1.std(-2).min() > 0.01  # the proposed states do differ
    lg1 = fk.log_G(1, x_prev, x1)
    assert torch.allclose(lg1, lg1[..., :1].expand_as(lg1), atol=1e-10)
    # distinct x_prev: the weight is the one-step predictive of y_t
    x_prev = torch.randn(2, N, d, generator=gen(4), dtype=f64)
    x2 = fk.M(2, x_prev, gen(5))
    exact = mvn(x_prev @ A.T @ C.T, C @ Q @ C.T + R).log_prob(y[2])
    assert torch.allclose(fk.log_G(2, x_prev, x2), exact, atol=1e-10)


def test_guided_with_prior_proposal_equals_bootstrap():
    model = model_2d()
    y = model.simulate(4, generator=gen(0)).y
    fk = model.guided(y, lambda y0: model.prior(), lambda t, xp, yt: model.transition(t, xp))
    boot = model.bootstrap(y)
    x0 = fk.M0(6, torch.Size((2,)), gen(1))
    assert torch.equal(x0, boot.M0(6, torch.Size((2,)), gen(1)))
    x1 = fk.M(1, x0, gen(2))
    assert torch.allclose(fk.log_G(0, None, x0), boot.log_G(0, None, x0), atol=1e-12)
    assert torch.allclose(fk.log_G(1, x0, x1), boot.log_G(1, x0, x1), atol=1e-12)
    with pytest.raises(TypeError, match="callables"):
        model.guided(y, None, None)


# ------------------------------------------------------------------------- autograd


def test_gradients_through_models():
    rho = torch.tensor(0.9, dtype=f64, requires_grad=True)
    model = LinearGaussian.ar1(rho, 1.5, 1.0)
    xp = torch.tensor([[0.3], [-1.2]], dtype=f64)
    x = torch.tensor([[1.0], [0.4]], dtype=f64)
    y = lgssm_data(1.0).y[:5]
    fk = model.bootstrap(y)
    (g,) = torch.autograd.grad(fk.log_m(1, xp, x).sum(), rho)
    exact = ((x - 0.9 * xp) * xp).sum() / 1.5**2
    assert abs(float(g) - float(exact)) < 1e-12
    # the stationary sigma_0 is held fixed: no gradient from the prior
    assert not model.prior().log_prob(x).requires_grad
    # the same model object can be differentiated again (fresh graph on each use)
    for seed in (0, 1):
        res = sd.smc(fk, 20, batch_shape=(2,), generator=gen(seed))
        res.log_z.sum().backward()
    assert rho.grad is not None and torch.isfinite(rho.grad)


# ------------------------------------------------------------- stochastic volatility


def test_sv_laws():
    sv = StochasticVolatility()
    assert (float(sv.mu), float(sv.rho), float(sv.sigma)) == (-1.02, 0.9702, 0.178)
    x = torch.tensor([[[-1.0], [0.5]]], dtype=f64)  # [1, 2, 1]
    y = torch.tensor([[0.3]], dtype=f64)
    fk = sv.bootstrap(y)
    lg = fk.log_G(0, None, x)
    v = torch.exp(x[..., 0])
    assert lg.shape == (1, 2)
    assert torch.allclose(lg, -0.5 * torch.log(2 * math.pi * v) - 0.5 * 0.09 / v, atol=1e-12)
    lm = fk.log_m(1, x, x.flip(-2))
    mean = -1.02 + 0.9702 * (x[..., 0] + 1.02)
    exact = D.Normal(mean, 0.178).log_prob(x.flip(-2)[..., 0])
    assert torch.allclose(lm, exact, atol=1e-12)
    s0 = 0.178 / math.sqrt(1 - 0.9702**2)
    assert torch.allclose(sv.prior().log_prob(x), D.Normal(-1.02, s0).log_prob(x[..., 0]))
    with pytest.raises(ValueError, match="rho"):
        StochasticVolatility(rho=1.0)
    with pytest.raises(ValueError, match="sigma"):
        StochasticVolatility(sigma=-0.1)


def test_sv_evidence_two_steps_against_quadrature():
    """T = 2: p(y_0, y_1) by a 2-D trapezoid rule; SMC mean ratio is 1 within 4 SE."""
    sv = StochasticVolatility()
    y = sv_data().y[:2]
    mu, rho, sig = -1.02, 0.9702, 0.178
    s0 = sig / math.sqrt(1 - rho**2)
    grid = torch.linspace(mu - 9 * s0, mu + 9 * s0, 1501, dtype=f64)
    h = float(grid[1] - grid[0])
    w = torch.full_like(grid, h)
    w[0] = w[-1] = h / 2

    def log_obs(x, yt):
        return -0.5 * (math.log(2 * math.pi) + x + yt**2 * torch.exp(-x))

    a = D.Normal(mu, s0).log_prob(grid) + log_obs(grid, float(y[0]))  # x_0
    trans = D.Normal(mu + rho * (grid[:, None] - mu), sig).log_prob(grid[None, :])
    b = log_obs(grid, float(y[1]))  # x_1
    log_z = torch.logsumexp(
        (a + w.log())[:, None] + trans + (b + w.log())[None, :], dim=(0, 1)
    )
    res = sd.smc(sv.bootstrap(y), 200, batch_shape=(400,), generator=gen(9))
    assert_unbiased_evidence(res.log_z, log_z)


# ------------------------------------------------------------------ model validation


def test_linear_gaussian_validation():
    m = model_2d()
    with pytest.raises(ValueError, match="A must be a square"):
        LinearGaussian(m.C, m.C, m.Q, m.R, m.m0, m.P0)
    with pytest.raises(ValueError, match="R must have shape"):
        LinearGaussian(m.A, m.C, m.Q, m.Q, m.m0, m.P0)
    with pytest.raises(ValueError, match="m0 must have shape"):
        LinearGaussian(m.A, m.C, m.Q, m.R, m.m0[:1], m.P0)
    with pytest.raises(ValueError, match="one dtype"):
        LinearGaussian(m.A.float(), m.C, m.Q, m.R, m.m0, m.P0)
    with pytest.raises(TypeError, match="floating-point"):
        LinearGaussian(m.A, m.C, m.Q, m.R, [0.0, 0.0], m.P0)
    with pytest.raises(ValueError, match=r"\|rho\| < 1"):
        LinearGaussian.ar1(1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="scalar"):
        LinearGaussian.ar1(torch.ones(2, dtype=f64), 1.0, 1.0)
    ar = LinearGaussian.ar1(0.5, 2.0, 0.3)
    assert ar.state_dim == ar.obs_dim == 1
    assert torch.allclose(ar.P0, torch.tensor([[4.0 / 0.75]], dtype=f64))
    assert torch.allclose(LinearGaussian.ar1(0.5, 2.0, 0.3, sigma_0=1.5).P0,
                          torch.tensor([[2.25]], dtype=f64))


# ------------------------------------------------------------------------- datasets


def test_dataset_fingerprints():
    for sigma_y, first in ((0.2, (1.4769, 1.9372, 0.6869)), (1.0, (1.4389, 2.4577, -0.4991))):
        data = lgssm_data(sigma_y)
        assert data.y.shape == data.x.shape == (100, 1) and data.y.dtype == f64
        assert torch.allclose(data.y[:3, 0], torch.tensor(first, dtype=f64), atol=5e-5)
    # x is drawn before y from the same stream: it does not depend on sigma_y
    assert torch.equal(lgssm_data(0.2).x, lgssm_data(1.0).x)
    sv = sv_data()
    assert sv.y.shape == sv.x.shape == (100, 1) and sv.y.dtype == f64
    assert torch.allclose(sv.y[:3, 0], torch.tensor((-0.0362, 0.5132, -1.0953), dtype=f64),
                          atol=5e-5)
    with pytest.raises(ValueError, match="T must be"):
        lgssm_data(1.0, T=0)


@pytest.mark.parametrize(
    "make", [model_2d, lambda: LinearGaussian.ar1(0.9, 1.0, 0.5)], ids=["lg2d", "ar1"]
)
def test_written_out_linear_gaussian_bootstrap_equals_generic(make):
    """The fast LinearGaussian bootstrap model is the generic BootstrapFK, op for op."""
    model = make()
    y = model.simulate(6, generator=gen(0)).y
    fast, generic = model.bootstrap(y), BootstrapFK(model, y)
    assert type(fast) is not BootstrapFK
    x_prev = fast.M0(7, torch.Size([3]), gen(1))
    x_fast, x_generic = fast.M(2, x_prev, gen(2)), generic.M(2, x_prev, gen(2))
    torch.testing.assert_close(x_fast, x_generic, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fast.log_G(2, x_prev, x_fast), generic.log_G(2, x_prev, x_fast),
                               rtol=1e-12, atol=1e-12)
    pairs = (x_prev.unsqueeze(-2), x_fast.unsqueeze(-3))  # [3, 7, 1, d] with [3, 1, 7, d]
    torch.testing.assert_close(fast.log_m(2, *pairs), generic.log_m(2, *pairs),
                               rtol=1e-12, atol=1e-12)


def test_written_out_bootstrap_differentiates_in_the_parameters():
    rho = torch.tensor(0.8, dtype=f64, requires_grad=True)
    model = LinearGaussian.ar1(rho, 1.0, 0.5)
    x = torch.randn(5, 1, generator=gen(0), dtype=f64)
    fk = model.bootstrap(torch.zeros(3, 1, dtype=f64))
    (g,) = torch.autograd.grad(fk.log_m(1, x, x).sum(), rho)
    # d/drho of sum -(x - rho x)^2 / 2 is sum x (x - rho x)
    torch.testing.assert_close(g, (x[:, 0] * (x[:, 0] - 0.8 * x[:, 0])).sum().detach())


@pytest.mark.parametrize("dtype", [f64, torch.float32])
@pytest.mark.parametrize("make", ["ar1", "lg1d"])
def test_scalar_bootstrap_path_equals_the_tensor_path(make, dtype):
    """Without gradients a one-dimensional model's bootstrap reads its coefficients as
    cached Python numbers; the draws and densities are those of the tensor path, and an
    in-place parameter change is seen at the next call."""
    if make == "ar1":
        model = LinearGaussian.ar1(0.9, 1.3, 0.7, dtype=dtype)
        param = model.sigma_y
    else:
        t = lambda v: torch.tensor([[v]], dtype=dtype)  # noqa: E731
        model = LinearGaussian(t(0.8), t(1.5), t(1.2), t(0.4), torch.zeros(1, dtype=dtype),
                               t(1.0))
        param = model._R
    y = model.simulate(5, generator=gen(0)).y.to(dtype)
    fk = model.bootstrap(y)
    x_prev = fk.M0(9, torch.Size([4]), gen(1))
    tol = {"rtol": 1e-12, "atol": 1e-12} if dtype == f64 else {"rtol": 2e-6, "atol": 2e-6}
    with torch.no_grad():
        assert model._scalar_coefficients() is not None
        x_fast = fk.M(2, x_prev, gen(2))
        lg_fast = fk.log_G(2, x_prev, x_fast)
    param.requires_grad_(True)  # now the tensor path (a graph is wanted)
    assert model._scalar_coefficients() is None
    x_slow = fk.M(2, x_prev, gen(2))
    lg_slow = fk.log_G(2, x_prev, x_fast)
    torch.testing.assert_close(x_fast, x_slow.detach(), **tol)
    torch.testing.assert_close(lg_fast, lg_slow.detach(), **tol)
    param.requires_grad_(False)
    with torch.no_grad():
        before = fk.log_G(2, x_prev, x_fast)
        param.mul_(2.0)  # in place: the cached numbers must be refreshed
        after = fk.log_G(2, x_prev, x_fast)
        assert not torch.allclose(before, after)
        param.requires_grad_(True)
    torch.testing.assert_close(after, fk.log_G(2, x_prev, x_fast).detach(), **tol)


def test_scalar_path_is_skipped_for_inference_tensor_parameters():
    # parameters made under inference mode have no version counter: the tensor path runs
    with torch.inference_mode():
        model = LinearGaussian.ar1(0.9, 1.0, 0.5)
        assert model._scalar_coefficients() is None
        fk = model.bootstrap(torch.zeros(4, 1, dtype=f64))
        x = fk.M(1, fk.M0(5, torch.Size([2]), gen(0)), gen(1))
        assert fk.log_G(1, None, x).shape == (2, 5)
