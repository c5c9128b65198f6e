"""The written-out stochastic volatility bootstrap filter and Fisher-score functional equal
their generic counterparts (BootstrapFK on the torch.distributions laws; FisherScore by
forward-mode autodiff): same draws for the same generator, same densities and gradients."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import gen

import smcdiff as sd
from smcdiff.ssm import StochasticVolatility
from smcdiff.ssm.learning import FisherScore
from smcdiff.ssm.model import BootstrapFK
from smcdiff.ssm.smoothing import paris
from smcdiff.ssm.stochastic_volatility import (
    UNCONSTRAINED,
    StochasticVolatilityBootstrap,
    StochasticVolatilityScore,
)

f64 = torch.float64


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_written_out_bootstrap_equals_generic(dtype):
    model = StochasticVolatility(-0.8, 0.93, 0.25, dtype=dtype)
    y = model.simulate(6, batch_shape=(3,), generator=gen(0)).y  # one series per member
    fast, generic = model.bootstrap(y), BootstrapFK(model, y)
    assert isinstance(fast, StochasticVolatilityBootstrap) and type(generic) is BootstrapFK
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == f64 else dict(rtol=1e-5, atol=1e-5)
    x0 = fast.M0(7, torch.Size([3]), gen(1))
    assert x0.shape == (3, 7, 1) and x0.dtype == dtype
    torch.testing.assert_close(x0, generic.M0(7, torch.Size([3]), gen(1)), **tol)
    x1 = fast.M(2, x0, gen(2))
    torch.testing.assert_close(x1, generic.M(2, x0, gen(2)), **tol)
    for t, xp in ((0, None), (2, x0)):
        torch.testing.assert_close(fast.log_G(t, xp, x1), generic.log_G(t, xp, x1), **tol)
    pairs = (x0.unsqueeze(-2), x1.unsqueeze(-3))  # [3, 7, 1, 1] with [3, 1, 7, 1]
    lm = fast.log_m(2, *pairs)
    assert lm.shape == (3, 7, 7)
    torch.testing.assert_close(lm, generic.log_m(2, *pairs), **tol)
    assert float(lm.max()) <= float(fast.log_m_bound(2))
    # whole filters: same particles and evidence for the same generator
    a = sd.smc(fast, 50, batch_shape=(3,), generator=gen(3))
    b = sd.smc(generic, 50, batch_shape=(3,), generator=gen(3))
    torch.testing.assert_close(a.log_z, b.log_z, **tol)
    torch.testing.assert_close(a.particles, b.particles, **tol)


def test_written_out_score_equals_fisher_score():
    params = StochasticVolatility(-1.1, 0.95, 0.2).unconstrained()
    assert tuple(params) == UNCONSTRAINED
    model = StochasticVolatility.from_unconstrained(params)
    torch.testing.assert_close(
        torch.stack([model.mu, model.rho, model.sigma]),
        torch.tensor([-1.1, 0.95, 0.2], dtype=f64), rtol=1e-14, atol=1e-14)
    y = model.simulate(8, generator=gen(4)).y
    generic = FisherScore(StochasticVolatility.from_unconstrained, params, y)
    fast = StochasticVolatilityScore(params)
    x0 = model.mu + 0.8 * torch.randn(2, 5, 1, generator=gen(5), dtype=f64)
    assert fast.init(x0).shape == (2, 5, 3)
    torch.testing.assert_close(fast.init(x0), generic.init(x0), rtol=1e-11, atol=1e-11)
    xp = x0.unsqueeze(-2)  # [2, 5, 1, 1]
    x = (model.mu + 0.8 * torch.randn(2, 1, 4, 1, generator=gen(6), dtype=f64))
    got = fast.step(3, xp, x)
    assert got.shape == (2, 5, 4, 3)
    torch.testing.assert_close(got, generic.step(3, xp, x), rtol=1e-11, atol=1e-11)
    # matched pairs, and inside PaRIS: the two functionals give the same estimate
    torch.testing.assert_close(fast.step(1, x0, x0.flip(-2)), generic.step(1, x0, x0.flip(-2)),
                               rtol=1e-11, atol=1e-11)
    est_fast = paris(model.bootstrap(y), fast, 64, batch_shape=(2,), generator=gen(7))
    est_generic = paris(model.bootstrap(y), generic, 64, batch_shape=(2,), generator=gen(7))
    torch.testing.assert_close(est_fast, est_generic, rtol=1e-10, atol=1e-10)


def test_score_is_the_gradient_of_the_complete_data_log_density():
    """init + sum of steps along one path equals a central finite difference of
    log p_theta(x_{0:T-1}, y_{0:T-1}) in the unconstrained coordinates."""
    params = StochasticVolatility(-0.9, 0.9, 0.3).unconstrained()
    model = StochasticVolatility.from_unconstrained(params)
    data = model.simulate(12, generator=gen(8))
    x = data.x  # [T, 1]
    fs = StochasticVolatilityScore(params)
    h = fs.init(x[:1])[0]
    for t in range(1, 12):
        h = h + fs.step(t, x[t - 1], x[t])

    def log_joint(p):
        m = StochasticVolatility.from_unconstrained(p)
        out = m.prior().log_prob(x[0])
        for t in range(1, 12):
            out = out + m.transition(t, x[t - 1]).log_prob(x[t])
        return out + m.observation(0, x).log_prob(data.y).sum()

    eps = 1e-6
    for i, k in enumerate(UNCONSTRAINED):
        up = dict(params, **{k: params[k] + eps})
        dn = dict(params, **{k: params[k] - eps})
        fd = (log_joint(up) - log_joint(dn)) / (2 * eps)
        assert abs(float(fd) - float(h[i])) < 1e-6 * (1 + abs(float(h[i])))


def test_unconstrained_round_trip_and_validation():
    model = StochasticVolatility(-1.02, 0.9702, 0.178)
    back = StochasticVolatility.from_unconstrained(model.unconstrained())
    for a, b in ((back.mu, model.mu), (back.rho, model.rho), (back.sigma, model.sigma)):
        assert abs(float(a - b)) < 1e-14
    assert math.isclose(float(model.unconstrained()["z_rho"]), math.atanh(0.9702))
    with pytest.raises(ValueError, match="missing"):
        StochasticVolatility.from_unconstrained({"mu": torch.tensor(0.0)})
    with pytest.raises(TypeError, match="dict"):
        StochasticVolatilityScore([0.0, 1.0, 0.0])


def test_declared_gaussian_transition_gives_the_generic_backward_kernel():
    # The closed-form backward logits from gaussian_transition equal softmax(log w + log m).
    from smcdiff.ssm.backward import backward_log_kernel, gaussian_transition, row_logits

    sv = StochasticVolatility(mu=-0.7, rho=0.85, sigma=0.4, dtype=f64)
    fk = sv.bootstrap(torch.zeros(5, 1, dtype=f64))
    A, b, L = gaussian_transition(fk, 1)
    assert A.shape == (1, 1) and b.shape == (1,) and L.shape == (1, 1)
    g = gen(3)
    x_prev = torch.randn(2, 30, 1, generator=g, dtype=f64) - 0.7
    log_w = torch.randn(2, 30, generator=g, dtype=f64)
    x = torch.randn(2, 11, 1, generator=g, dtype=f64) - 0.7
    ref = backward_log_kernel(BootstrapFK(sv, fk.y), 1, x_prev, log_w, x).exp()
    lam = torch.softmax(row_logits(fk, 1, x_prev, log_w)(x), -1)
    torch.testing.assert_close(lam, ref, rtol=1e-12, atol=1e-14)
