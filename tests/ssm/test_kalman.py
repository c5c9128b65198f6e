"""Kalman filter and RTS smoother against the dense joint Gaussian of (X_{0:T-1}, Y_{0:T-1})."""

from __future__ import annotations

import math

import pytest
import torch

from smcdiff.ssm import LinearGaussian, kalman_filter, lgssm_data, rts_smoother

f64 = torch.float64


def model_2d(dtype=f64) -> LinearGaussian:
    """A 2-D state, 2-D observation model with full (non-diagonal) covariances."""
    A = torch.tensor([[0.8, 0.3], [-0.2, 0.7]], dtype=dtype)
    C = torch.tensor([[1.0, 0.5], [0.0, 1.5]], dtype=dtype)
    Q = torch.tensor([[0.5, 0.1], [0.1, 0.3]], dtype=dtype)
    R = torch.tensor([[0.4, -0.1], [-0.1, 0.2]], dtype=dtype)
    m0 = torch.tensor([0.5, -1.0], dtype=dtype)
    P0 = torch.tensor([[1.0, 0.3], [0.3, 2.0]], dtype=dtype)
    return LinearGaussian(A, C, Q, R, m0, P0)


def model_obs1() -> LinearGaussian:
    """2-D state observed through one scalar (dy = 1 < d)."""
    m = model_2d()
    return LinearGaussian(m.A, m.C[:1], m.Q, m.R[:1, :1], m.m0, m.P0)


def dense_joint(model: LinearGaussian, T: int):
    """Mean and covariance of the stacked x = (x_0..x_{T-1}) [T d] and y [T dy]."""
    A, C, Q, R, m0, P0 = model.A, model.C, model.Q, model.R, model.m0, model.P0
    d, dy = A.shape[0], C.shape[0]
    means, covs = [m0], [P0]
    for _ in range(1, T):
        means.append(A @ means[-1])
        covs.append(A @ covs[-1] @ A.T + Q)
    Sx = torch.zeros(T * d, T * d, dtype=A.dtype)
    for s in range(T):
        block = covs[s]
        for t in range(s, T):  # Cov(x_t, x_s) = A^{t-s} Cov(x_s)
            Sx[t * d:(t + 1) * d, s * d:(s + 1) * d] = block
            Sx[s * d:(s + 1) * d, t * d:(t + 1) * d] = block.T
            block = A @ block
    mx = torch.cat(means)
    Cb = torch.block_diag(*[C] * T)
    Rb = torch.block_diag(*[R] * T)
    my = Cb @ mx
    Sy = Cb @ Sx @ Cb.T + Rb
    Sxy = Sx @ Cb.T
    return mx, Sx, my, Sy, Sxy, d, dy


def dense_conditional(model, y: torch.Tensor, upto: int | None = None):
    """Exact E[x | y_{0:upto}] and Cov(x | y_{0:upto}) of the stacked states."""
    T = y.shape[0]
    mx, Sx, my, Sy, Sxy, d, dy = dense_joint(model, T)
    k = T * dy if upto is None else (upto + 1) * dy
    yv = y.reshape(-1)[:k]
    gain = torch.linalg.solve(Sy[:k, :k], Sxy[:, :k].T).T
    mean = mx + gain @ (yv - my[:k])
    cov = Sx - gain @ Sxy[:, :k].T
    return mean.reshape(T, d), cov, d


def dense_loglik(model, y: torch.Tensor) -> torch.Tensor:
    _, _, my, Sy, _, _, _ = dense_joint(model, y.shape[0])
    return torch.distributions.MultivariateNormal(my, Sy).log_prob(y.reshape(-1))


def simulated_y(model, T, seed=0):
    return model.simulate(T, generator=torch.Generator().manual_seed(seed)).y


# --------------------------------------------------------------------------- filter


@pytest.mark.parametrize("make", [model_2d, model_obs1], ids=["2d", "2d-obs1"])
def test_loglik_equals_dense_gaussian(make):
    model = make()
    y = simulated_y(model, 12)
    kf = kalman_filter(model, y)
    assert kf.log_likelihood.shape == ()
    assert abs(float(kf.log_likelihood - dense_loglik(model, y))) < 1e-10
    assert torch.allclose(kf.log_likelihood_increments.sum(-1), kf.log_likelihood, atol=1e-12)


@pytest.mark.parametrize("sigma_y", [0.2, 1.0])
def test_ar1_loglik_on_note_data_equals_dense(sigma_y):
    model = LinearGaussian.ar1(0.9, 1.0, sigma_y)
    y = lgssm_data(sigma_y).y
    kf = kalman_filter(model, y)
    assert abs(float(kf.log_z - dense_loglik(model, y))) < 1e-10


def test_ar1_scalar_recursion_of_note():
    """The scalar recursion written out in the note, step by step."""
    rho, sx, sy = 0.9, 1.0, 0.2
    s0 = sx / (1 - rho**2) ** 0.5
    y = lgssm_data(sy).y[:, 0].tolist()
    m, P, ll = 0.0, s0**2, 0.0
    means = []
    for t, yt in enumerate(y):
        if t > 0:
            m, P = rho * m, rho**2 * P + sx**2
        S = P + sy**2
        ll += -0.5 * math.log(2 * math.pi * S) - 0.5 * (yt - m) ** 2 / S
        K = P / S
        m, P = m + K * (yt - m), (1 - K) * P
        means.append(m)
    kf = kalman_filter(LinearGaussian.ar1(rho, sx, sy), lgssm_data(sy).y)
    assert abs(float(kf.log_z) - ll) < 1e-10
    assert torch.allclose(kf.filtered_mean[:, 0], torch.tensor(means, dtype=f64), atol=1e-12)


def test_filtered_and_predicted_moments_equal_dense_conditionals():
    model = model_2d()
    T = 6
    y = simulated_y(model, T, seed=1)
    kf = kalman_filter(model, y)
    d = 2
    for t in range(T):
        mean, cov, _ = dense_conditional(model, y, upto=t)
        blk = slice(t * d, (t + 1) * d)
        assert torch.allclose(kf.filtered_mean[t], mean[t], atol=1e-10)
        assert torch.allclose(kf.filtered_cov[t], cov[blk, blk], atol=1e-10)
        if t + 1 < T:
            nxt = slice((t + 1) * d, (t + 2) * d)
            assert torch.allclose(kf.predicted_mean[t + 1], mean[t + 1], atol=1e-10)
            assert torch.allclose(kf.predicted_cov[t + 1], cov[nxt, nxt], atol=1e-10)
    assert torch.allclose(kf.predicted_mean[0], model.m0)
    assert torch.allclose(kf.predicted_cov[0], model.P0)


# ------------------------------------------------------------------------- smoother


@pytest.mark.parametrize("make", [model_2d, model_obs1], ids=["2d", "2d-obs1"])
def test_rts_equals_dense_conditional(make):
    model = make()
    T = 8
    y = simulated_y(model, T, seed=2)
    sm = rts_smoother(model, y)
    mean, cov, d = dense_conditional(model, y)
    assert sm.smoothed_mean.shape == (T, d)
    assert sm.smoothed_cov.shape == (T, d, d)
    assert sm.lag_one_cov.shape == (T - 1, d, d)
    assert torch.allclose(sm.smoothed_mean, mean, atol=1e-10)
    for t in range(T):
        blk = slice(t * d, (t + 1) * d)
        assert torch.allclose(sm.smoothed_cov[t], cov[blk, blk], atol=1e-10)
        if t + 1 < T:
            nxt = slice((t + 1) * d, (t + 2) * d)
            assert torch.allclose(sm.lag_one_cov[t], cov[blk, nxt], atol=1e-10)
    assert torch.allclose(sm.log_likelihood, dense_loglik(model, y), atol=1e-10)


def test_rts_single_observation():
    model = model_2d()
    y = simulated_y(model, 1)
    sm = rts_smoother(model, y)
    assert sm.lag_one_cov.shape == (0, 2, 2)
    assert torch.allclose(sm.smoothed_mean, sm.filter.filtered_mean)


def test_ar1_score_identity_matches_autograd_and_finite_difference():
    """Fisher identity with RTS moments (note, section 6) = d/d rho of the Kalman loglik."""
    sx, sy = 1.0, 0.2
    y = lgssm_data(sy).y
    rho = torch.tensor(0.9, dtype=f64, requires_grad=True)
    model = LinearGaussian.ar1(rho, sx, sy)
    ll = kalman_filter(model, y).log_z
    (grad,) = torch.autograd.grad(ll, rho)

    sm = rts_smoother(LinearGaussian.ar1(0.9, sx, sy), y)
    m, P, Cl = sm.smoothed_mean[:, 0], sm.smoothed_cov[:, 0, 0], sm.lag_one_cov[:, 0, 0]
    exx1 = Cl + m[:-1] * m[1:]
    exx = P[:-1] + m[:-1] ** 2
    score = ((exx1 - 0.9 * exx).sum() / sx**2).item()

    s0 = sx / (1 - 0.9**2) ** 0.5  # sigma_0 held fixed in the finite difference too
    h = 1e-5

    def ll_at(r):
        return float(kalman_filter(LinearGaussian.ar1(r, sx, sy, sigma_0=s0), y).log_z)

    fd = (ll_at(0.9 + h) - ll_at(0.9 - h)) / (2 * h)
    assert abs(grad.item() - score) < 1e-8 * max(1.0, abs(score))
    assert abs(fd - score) < 1e-5 * max(1.0, abs(score))


# ------------------------------------------------------------------- batching, dtype


def test_batched_equals_looped():
    model = model_2d()
    y = model.simulate(7, batch_shape=(3, 2), generator=torch.Generator().manual_seed(3)).y
    kf, sm = kalman_filter(model, y), rts_smoother(model, y)
    assert kf.log_likelihood.shape == (3, 2)
    assert kf.filtered_mean.shape == (3, 2, 7, 2)
    assert kf.filtered_cov.shape == (3, 2, 7, 2, 2)
    assert sm.lag_one_cov.shape == (3, 2, 6, 2, 2)
    for i in range(3):
        for j in range(2):
            kf1, sm1 = kalman_filter(model, y[i, j]), rts_smoother(model, y[i, j])
            assert torch.allclose(kf.log_likelihood[i, j], kf1.log_likelihood, atol=1e-12)
            assert torch.allclose(kf.filtered_mean[i, j], kf1.filtered_mean, atol=1e-12)
            assert torch.allclose(kf.predicted_mean[i, j], kf1.predicted_mean, atol=1e-12)
            assert torch.allclose(sm.smoothed_mean[i, j], sm1.smoothed_mean, atol=1e-12)
            assert torch.allclose(sm.smoothed_cov[i, j], sm1.smoothed_cov, atol=1e-12)
            assert torch.allclose(sm.lag_one_cov[i, j], sm1.lag_one_cov, atol=1e-12)


def test_float32_close_to_float64():
    m64, m32 = model_2d(f64), model_2d(torch.float32)
    y = simulated_y(m64, 20, seed=4)
    kf64, kf32 = kalman_filter(m64, y), kalman_filter(m32, y.float())
    assert kf32.log_likelihood.dtype == torch.float32
    assert abs(float(kf32.log_likelihood) - float(kf64.log_likelihood)) < 1e-3
    sm32 = rts_smoother(m32, y.float())
    assert torch.allclose(sm32.smoothed_mean.double(), rts_smoother(m64, y).smoothed_mean,
                          atol=1e-4)


def test_gradient_flows_to_all_parameters():
    base = model_2d()
    params = [p.clone().requires_grad_(True) for p in (base.A, base.C, base.Q, base.R, base.m0,
                                                        base.P0)]
    model = LinearGaussian(*params)
    y = simulated_y(base, 5)
    kalman_filter(model, y).log_z.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)


# ----------------------------------------------------------------------- bad inputs


def test_bad_y_shapes_raise():
    model = model_2d()
    with pytest.raises(ValueError, match="y must have shape"):
        kalman_filter(model, torch.zeros(5, dtype=f64))
    with pytest.raises(ValueError, match="dy=2"):
        kalman_filter(model, torch.zeros(5, 3, dtype=f64))
    with pytest.raises(ValueError, match="T >= 1"):
        kalman_filter(model, torch.zeros(0, 2, dtype=f64))
    with pytest.raises(ValueError, match="dtype"):
        kalman_filter(model, torch.zeros(5, 2, dtype=torch.float32))
    with pytest.raises(ValueError, match="finite"):
        kalman_filter(model, torch.full((5, 2), float("nan"), dtype=f64))
    with pytest.raises(TypeError, match="y must be a torch.Tensor"):
        kalman_filter(model, [[0.0, 0.0]])
    with pytest.raises(TypeError, match="lacks"):
        kalman_filter(object(), torch.zeros(5, 2, dtype=f64))
