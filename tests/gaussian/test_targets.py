"""Closed-form tilted targets: normalizers vs quadrature / Monte Carlo, laws vs p~ / Z."""

import math

import pytest
import torch
from helpers import gen

from smcdiff.diffusion.processes import VP
from smcdiff.gaussian import (
    Gaussian,
    GaussianMixture,
    TiltedTarget,
    cfg,
    geometric,
    linear_gaussian_tilt,
    linear_tilt,
    power,
    product,
)

F64 = torch.float64


def g2(m, c) -> Gaussian:
    return Gaussian(torch.tensor(m, dtype=F64), torch.tensor(c, dtype=F64))


def gmm_a() -> GaussianMixture:
    return GaussianMixture(
        torch.tensor([0.3, 0.7], dtype=F64),
        torch.tensor([[-1.0, 0.5], [1.0, -0.5]], dtype=F64),
        torch.tensor([[[0.6, 0.2], [0.2, 0.4]], [[0.5, -0.1], [-0.1, 0.7]]], dtype=F64),
    )


def gmm_b() -> GaussianMixture:
    return GaussianMixture(
        torch.tensor([0.5, 0.2, 0.3], dtype=F64),
        torch.tensor([[0.0, 1.0], [1.5, 0.0], [-1.0, -1.0]], dtype=F64),
        torch.tensor([[[1.0, 0.0], [0.0, 0.5]], [[0.4, 0.1], [0.1, 0.4]],
                      [[0.8, -0.3], [-0.3, 0.9]]], dtype=F64),
    )


def gmm_1d() -> GaussianMixture:
    return GaussianMixture(torch.tensor([0.25, 0.45, 0.3], dtype=F64),
                           torch.tensor([[-1.5], [0.3], [2.0]], dtype=F64),
                           torch.tensor([[[0.4]], [[0.8]], [[0.3]]], dtype=F64))


def grid2(lo=-12.0, hi=12.0, h=0.08):
    g1 = torch.arange(lo, hi, h, dtype=F64)
    X, Y = torch.meshgrid(g1, g1, indexing="ij")
    return torch.stack([X, Y], -1).reshape(-1, 2), h * h


def grid1(lo=-12.0, hi=12.0, h=0.02):
    return torch.arange(lo, hi, h, dtype=F64)[:, None], h


def check_target(res: TiltedTarget, log_unnorm, pts, cell, rtol_z=1e-8):
    """p~ / Z == law pointwise; Z == quadrature of p~; law moments == quadrature moments."""
    lu = log_unnorm(pts)
    torch.testing.assert_close(res.distribution.log_prob(pts), lu - res.log_z,
                               rtol=1e-9, atol=1e-9)
    log_z_quad = torch.logsumexp(lu, 0) + math.log(cell)
    assert res.log_z.item() == pytest.approx(log_z_quad.item(), abs=rtol_z)
    w = torch.softmax(lu, 0)
    mean = (w[:, None] * pts).sum(0)
    xc = pts - mean
    cov = (w[:, None, None] * xc[:, :, None] * xc[:, None, :]).sum(0)
    torch.testing.assert_close(res.distribution.mean, mean, rtol=0, atol=1e-8)
    torch.testing.assert_close(res.distribution.cov, cov, rtol=0, atol=1e-8)


# --------------------------------------------------------------------------- products


def test_product_of_gaussians():
    a = g2([1.0, 0.0], [[1.0, 0.3], [0.3, 0.8]])
    b = g2([-0.5, 1.0], [[0.5, 0.0], [0.0, 2.0]])
    c = g2([0.0, -1.0], [[2.0, -0.5], [-0.5, 1.0]])
    pts, cell = grid2()
    res = product(a, b, c)
    assert isinstance(res.distribution, Gaussian)
    check_target(res, lambda x: a.log_prob(x) + b.log_prob(x) + c.log_prob(x), pts, cell)
    # precision adds
    P = sum(torch.linalg.inv(q.cov) for q in (a, b, c))
    torch.testing.assert_close(res.distribution.cov, torch.linalg.inv(P))
    # log Z of two Gaussians is log N(mu_a; mu_b, C_a + C_b)
    r2 = product(a, b)
    ref = torch.distributions.MultivariateNormal(b.mean, a.cov + b.cov).log_prob(a.mean)
    torch.testing.assert_close(r2.log_z, ref)


def test_product_of_mixtures_and_a_gaussian():
    A, B, c = gmm_a(), gmm_b(), g2([0.5, 0.5], [[3.0, 0.5], [0.5, 2.0]])
    pts, cell = grid2()
    res = product(A, B)
    assert isinstance(res.distribution, GaussianMixture)
    assert res.distribution.num_components == 6
    check_target(res, lambda x: A.log_prob(x) + B.log_prob(x), pts, cell)
    res3 = product(A, B, c)
    assert res3.distribution.num_components == 6
    check_target(res3, lambda x: A.log_prob(x) + B.log_prob(x) + c.log_prob(x), pts, cell)


def test_product_normalizer_by_monte_carlo():
    """Z = int A(x) B(x) dx = E_{x ~ A}[B(x)]: within 4 standard errors."""
    A, B = gmm_a(), gmm_b()
    x = A.sample(40000, gen(0))
    f = B.log_prob(x).exp()
    z_hat, se = f.mean(), f.std() / math.sqrt(f.shape[0])
    assert abs(z_hat - product(A, B).log_z.exp()) <= 4 * se


# --------------------------------------------------------------------------- powers


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_integer_power_of_a_1d_mixture(n):
    p = gmm_1d()
    pts, cell = grid1()
    res = power(p, n)
    assert res.distribution.num_components == math.comb(n + 2, 2)
    check_target(res, lambda x: n * p.log_prob(x), pts, cell)


def test_integer_power_of_a_2d_mixture():
    p = gmm_b()
    pts, cell = grid2()
    res = power(p, 2)
    check_target(res, lambda x: 2 * p.log_prob(x), pts, cell)
    # p^2 equals the product p * p
    torch.testing.assert_close(product(p, p).log_z, res.log_z)


@pytest.mark.parametrize("beta", [0.5, 1.0, 2.7])
def test_real_power_of_a_gaussian(beta):
    q = g2([0.5, -1.0], [[1.2, 0.4], [0.4, 0.6]])
    pts, cell = grid2()
    res = power(q, beta)
    check_target(res, lambda x: beta * q.log_prob(x), pts, cell)
    d = 2
    closed = (d * (1 - beta) / 2) * math.log(2 * math.pi) \
        + (1 - beta) / 2 * torch.logdet(q.cov) - (d / 2) * math.log(beta)
    torch.testing.assert_close(res.log_z, closed)
    torch.testing.assert_close(res.distribution.cov, q.cov / beta)


def test_power_errors():
    with pytest.raises(ValueError, match="integer"):
        power(gmm_b(), 1.5)
    with pytest.raises(ValueError, match="beta"):
        power(g2([0.0], [[1.0]]), -1.0)
    with pytest.raises(ValueError, match="nonsingular"):
        power(g2([0.0, 0.0], [[1.0, 0.0], [0.0, 0.0]]), 2.0)
    with pytest.raises(TypeError, match="dist"):
        power(torch.zeros(2), 2.0)


# --------------------------------------------------------------------------- CFG / geometric


@pytest.mark.parametrize("w", [0.0, 0.5, 1.0, 2.0, 4.0])
def test_cfg_geometric_mixture(w):
    qu = g2([0.0, 0.0], [[2.0, 0.3], [0.3, 1.5]])
    qc = g2([1.0, -0.5], [[0.5, 0.1], [0.1, 0.4]])
    pts, cell = grid2()
    res = cfg(qu, qc, w)
    check_target(res, lambda x: (1 - w) * qu.log_prob(x) + w * qc.log_prob(x), pts, cell)


def test_cfg_at_a_diffusion_time_and_failure_is_clear():
    proc = VP()
    qu = g2([0.0, 0.0], [[2.0, 0.3], [0.3, 1.5]])
    qc = g2([1.0, -0.5], [[0.5, 0.1], [0.1, 0.4]])
    pts, cell = grid2()
    ut, ct = qu.marginal(0.3, proc), qc.marginal(0.3, proc)
    res = cfg(ut, ct, 3.0)
    check_target(res, lambda x: -2.0 * ut.log_prob(x) + 3.0 * ct.log_prob(x), pts, cell)
    # w > 1 with a conditional wider than the unconditional: not normalizable.
    with pytest.raises(ValueError, match="not normalizable"):
        cfg(qc, qu, 2.0)


def test_geometric_with_negative_exponent():
    a = g2([0.0, 1.0], [[1.0, 0.2], [0.2, 1.0]])
    b = g2([1.0, 0.0], [[3.0, 0.0], [0.0, 3.0]])
    pts, cell = grid2()
    res = geometric([a, b], [1.5, -0.5])
    check_target(res, lambda x: 1.5 * a.log_prob(x) - 0.5 * b.log_prob(x), pts, cell)
    with pytest.raises(ValueError, match="betas"):
        geometric([a, b], [1.0])


# --------------------------------------------------------------------------- reward tilts


@pytest.mark.parametrize("lam", [0.5, 2.0])
def test_linear_tilt_of_gaussian_and_mixture(lam):
    a = torch.tensor([0.7, -0.4], dtype=F64)
    q = g2([0.5, -0.5], [[1.0, 0.3], [0.3, 0.5]])
    pts, cell = grid2(-14.0, 14.0, 0.08)
    res = linear_tilt(q, a, lam)
    check_target(res, lambda x: q.log_prob(x) + x @ a / lam, pts, cell)
    torch.testing.assert_close(res.distribution.mean, q.mean + q.cov @ a / lam)
    torch.testing.assert_close(res.log_z, a @ q.mean / lam + 0.5 * a @ q.cov @ a / lam**2)
    B = gmm_b()
    resB = linear_tilt(B, a, lam)
    check_target(resB, lambda x: B.log_prob(x) + x @ a / lam, pts, cell)


def test_linear_tilt_normalizer_by_monte_carlo_and_singular_cov():
    B = gmm_a()
    a = torch.tensor([0.5, 0.3], dtype=F64)
    x = B.sample(40000, gen(1))
    f = torch.exp(x @ a)
    se = f.std() / math.sqrt(f.shape[0])
    assert abs(f.mean() - linear_tilt(B, a).log_z.exp()) <= 4 * se
    # degenerate Gaussian: the tilt moves the mean along the support only
    q = g2([0.0, 0.0], [[1.0, 0.0], [0.0, 0.0]])
    res = linear_tilt(q, torch.tensor([1.0, 1.0], dtype=F64), 1.0)
    torch.testing.assert_close(res.distribution.mean, torch.tensor([1.0, 0.0], dtype=F64))
    assert res.log_z.item() == pytest.approx(0.5)


@pytest.mark.parametrize("A", [[[1.0, -0.5]], [[1.0, 0.2], [0.3, -1.0]]])
def test_linear_gaussian_tilt(A):
    A = torch.tensor(A, dtype=F64)
    y = torch.linspace(0.5, -0.5, A.shape[0], dtype=F64)
    s = 0.7
    pts, cell = grid2()

    def log_lik(x):
        return -((x @ A.T - y) ** 2).sum(-1) / (2 * s**2)

    q = g2([0.5, -0.5], [[1.0, 0.3], [0.3, 0.5]])
    res = linear_gaussian_tilt(q, A, y, s)
    assert isinstance(res.distribution, Gaussian)
    check_target(res, lambda x: q.log_prob(x) + log_lik(x), pts, cell)
    B = gmm_b()
    resB = linear_gaussian_tilt(B, A, y, s)
    check_target(resB, lambda x: B.log_prob(x) + log_lik(x), pts, cell)


def test_linear_gaussian_tilt_vector_form_and_errors():
    q = g2([0.0, 0.0], [[1.0, 0.0], [0.0, 1.0]])
    r1 = linear_gaussian_tilt(q, torch.tensor([1.0, 0.0], dtype=F64), 0.5, 1.0)
    # 1-D: Z = sqrt(2 pi s^2) N(y; 0, 1 + s^2) = exp(-y^2 / 4) / sqrt(2) with y = 0.5, s = 1
    assert r1.log_z.item() == pytest.approx(-0.5 * math.log(2) - 0.5**2 / 4)
    with pytest.raises(ValueError, match="s"):
        linear_gaussian_tilt(q, torch.ones(2, dtype=F64), 0.0, 0.0)
    with pytest.raises(ValueError, match="A"):
        linear_gaussian_tilt(q, torch.ones(3, dtype=F64), 0.0, 1.0)
    with pytest.raises(ValueError, match="y"):
        linear_gaussian_tilt(q, torch.ones(2, dtype=F64), torch.zeros(2, dtype=F64), 1.0)
    with pytest.raises(ValueError, match="lam"):
        linear_tilt(q, torch.ones(2, dtype=F64), 0.0)


def test_float32_inputs_give_float32_targets():
    q = Gaussian(torch.tensor([0.0, 1.0]), torch.tensor([[1.0, 0.2], [0.2, 1.0]]))
    q64 = Gaussian(q.mean.double(), q.cov.double())
    for fn in (lambda d: power(d, 2.5), lambda d: product(d, d),
               lambda d: linear_tilt(d, torch.tensor([1.0, 0.0]))):
        r32, r64 = fn(q), fn(q64)
        assert r32.distribution.mean.dtype == torch.float32 and r32.log_z.dtype == torch.float32
        torch.testing.assert_close(r32.log_z.double(), r64.log_z, rtol=1e-6, atol=1e-6)
