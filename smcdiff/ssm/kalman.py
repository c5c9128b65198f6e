"""Exact filtering and smoothing of a linear Gaussian state-space model, batched.

For ``X_0 ~ N(m0, P0)``, ``X_t = A X_{t-1} + N(0, Q)``, ``Y_t = C X_t + N(0, R)``
(:class:`~smcdiff.ssm.linear_gaussian.LinearGaussian`), ``t = 0 .. T-1``:

Kalman filter (Kalman 1960)::

    predict:  m_{t|t-1} = A m_{t-1|t-1},   P_{t|t-1} = A P_{t-1|t-1} A^T + Q
              (t = 0: m_{0|-1} = m0, P_{0|-1} = P0)
    update:   S_t = C P_{t|t-1} C^T + R,   K_t = P_{t|t-1} C^T S_t^{-1},   e_t = y_t - C m_{t|t-1}
              m_{t|t} = m_{t|t-1} + K_t e_t
              P_{t|t} = (I - K_t C) P_{t|t-1} (I - K_t C)^T + K_t R K_t^T     (Joseph form)
    evidence: log p(y_{0:T-1}) = sum_t log N(e_t; 0, S_t)

Rauch-Tung-Striebel smoother (Rauch, Tung & Striebel 1965), backwards from
``m_{T-1|T-1}``, ``P_{T-1|T-1}``::

    J_t = P_{t|t} A^T P_{t+1|t}^{-1}
    m_{t|T} = m_{t|t} + J_t (m_{t+1|T} - m_{t+1|t})
    P_{t|T} = P_{t|t} + J_t (P_{t+1|T} - P_{t+1|t}) J_t^T
    Cov(x_t, x_{t+1} | y_{0:T-1}) = J_t P_{t+1|T}

Inverses are Cholesky solves and every covariance is symmetrised after each update.
Everything is differentiable in the model's parameters (autograd through the recursions).
Observations ``y: [*batch, T, dy]``: the leading axes are independent series filtered at
once. The covariances do not depend on ``y``, so they are computed once and returned
expanded (views) to ``[*batch, T, d, d]``. ``t`` is the observation index, not a
diffusion time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from smcdiff.ssm.linear_gaussian import posterior_gain
from smcdiff.ssm.model import _check_observations


def _sym(M: torch.Tensor) -> torch.Tensor:
    return 0.5 * (M + M.mT)


@dataclass(frozen=True)
class KalmanResult:
    """Kalman filter output for ``y: [*batch, T, dy]``.

    Attributes:
        predicted_mean: ``[*batch, T, d]``, ``E[x_t | y_{0:t-1}]`` (row 0: ``m0``).
        predicted_cov: ``[*batch, T, d, d]``, ``Cov(x_t | y_{0:t-1})``.
        filtered_mean: ``[*batch, T, d]``, ``E[x_t | y_{0:t}]``.
        filtered_cov: ``[*batch, T, d, d]``, ``Cov(x_t | y_{0:t})``.
        log_likelihood: ``[*batch]``, ``log p(y_{0:T-1})``.
        log_likelihood_increments: ``[*batch, T]``, ``log p(y_t | y_{0:t-1})``.
    """

    predicted_mean: torch.Tensor
    predicted_cov: torch.Tensor
    filtered_mean: torch.Tensor
    filtered_cov: torch.Tensor
    log_likelihood: torch.Tensor
    log_likelihood_increments: torch.Tensor

    @property
    def log_z(self) -> torch.Tensor:
        """Alias of ``log_likelihood`` (the normalizer an SMC run estimates)."""
        return self.log_likelihood


@dataclass(frozen=True)
class SmootherResult:
    """Rauch-Tung-Striebel smoother output for ``y: [*batch, T, dy]``.

    Attributes:
        smoothed_mean: ``[*batch, T, d]``, ``E[x_t | y_{0:T-1}]``.
        smoothed_cov: ``[*batch, T, d, d]``, ``Cov(x_t | y_{0:T-1})``.
        lag_one_cov: ``[*batch, T-1, d, d]``, ``Cov(x_t, x_{t+1} | y_{0:T-1})`` (rows index
            ``x_t``, columns ``x_{t+1}``).
        gain: ``[*batch, T-1, d, d]``, the smoother gains ``J_t``.
        filter: the :class:`KalmanResult` it was computed from.
    """

    smoothed_mean: torch.Tensor
    smoothed_cov: torch.Tensor
    lag_one_cov: torch.Tensor
    gain: torch.Tensor
    filter: KalmanResult

    @property
    def log_likelihood(self) -> torch.Tensor:
        """``[*batch]`` log-likelihood ``log p(y_{0:T-1})`` from the filter."""
        return self.filter.log_likelihood


def _matrices(model):
    names = ("A", "C", "Q", "R", "m0", "P0")
    missing = [n for n in names if not isinstance(getattr(model, n, None), torch.Tensor)]
    if missing:
        raise TypeError(
            f"kalman_filter needs a linear Gaussian model with tensors {', '.join(names)}; "
            f"{type(model).__name__} lacks {', '.join(missing)}"
        )
    return tuple(getattr(model, n) for n in names)


def kalman_filter(model, y: torch.Tensor) -> KalmanResult:
    """Exact filter and log-likelihood of a linear Gaussian model (Kalman 1960).

    Args:
        model: a :class:`~smcdiff.ssm.linear_gaussian.LinearGaussian` (any object with
            tensors ``A [d,d]``, ``C [dy,d]``, ``Q``, ``R``, ``m0 [d]``, ``P0``).
        y: ``[T, dy]`` or ``[*batch, T, dy]``, same dtype and device as the model.

    Returns:
        :class:`KalmanResult`; see the module docstring for the recursions.
    """
    return _kalman(model, y)[0]


def _kalman(model, y: torch.Tensor):
    """The filter, plus the unbatched covariance stacks ``P_{t|t-1}``, ``P_{t|t}``: [T, d, d]."""
    A, C, Q, R, m0, P0 = _matrices(model)
    y = _check_observations(model, y)
    batch, T, dy = y.shape[:-2], y.shape[-2], y.shape[-1]
    d = A.shape[-1]
    log2pi = dy * math.log(2 * math.pi)

    pm, pc, fm, fc, inc = [], [], [], [], []
    m = m0.expand(*batch, d)
    P = P0
    for t in range(T):
        if t > 0:
            m = m @ A.mT
            P = _sym(A @ P @ A.mT + Q)
        pm.append(m)
        pc.append(P)
        K, P_post, _, L = posterior_gain(P, C, R)
        e = y[..., t, :] - m @ C.mT  # [*batch, dy]
        z = torch.linalg.solve_triangular(L, e.unsqueeze(-1), upper=False).squeeze(-1)
        half_logdet = torch.log(torch.diagonal(L)).sum()
        inc.append(-0.5 * (log2pi + (z * z).sum(-1)) - half_logdet)
        m = m + e @ K.mT
        P = P_post
        fm.append(m)
        fc.append(P)

    Pp, Pf = torch.stack(pc), torch.stack(fc)
    incs = torch.stack(inc, dim=-1)
    result = KalmanResult(
        predicted_mean=torch.stack(pm, dim=-2),
        predicted_cov=Pp.expand(*batch, T, d, d),
        filtered_mean=torch.stack(fm, dim=-2),
        filtered_cov=Pf.expand(*batch, T, d, d),
        log_likelihood=incs.sum(-1),
        log_likelihood_increments=incs,
    )
    return result, Pp, Pf


def rts_smoother(model, y: torch.Tensor) -> SmootherResult:
    """Exact smoothing laws and lag-one covariances (Rauch, Tung & Striebel 1965).

    Args:
        model: as for :func:`kalman_filter`.
        y: ``[T, dy]`` or ``[*batch, T, dy]``.

    Returns:
        :class:`SmootherResult` with the marginal smoothing means and covariances and
        ``Cov(x_t, x_{t+1} | y)``; see the module docstring for the recursions.
    """
    A = _matrices(model)[0]
    kf, Pp, Pf = _kalman(model, y)  # covariances do not depend on y: unbatched [T, d, d]
    batch, T, d = kf.filtered_mean.shape[:-2], kf.filtered_mean.shape[-2], A.shape[-1]

    ms = [kf.filtered_mean[..., T - 1, :]]
    Ps = [Pf[T - 1]]
    gains, lag = [], []
    for t in range(T - 2, -1, -1):
        Lp = torch.linalg.cholesky(Pp[t + 1])
        J = torch.cholesky_solve(A @ Pf[t], Lp).mT  # J = P_{t|t} A^T P_{t+1|t}^{-1}
        m_next, P_next = ms[-1], Ps[-1]
        m = kf.filtered_mean[..., t, :] + (m_next - kf.predicted_mean[..., t + 1, :]) @ J.mT
        P = _sym(Pf[t] + J @ (P_next - Pp[t + 1]) @ J.mT)
        lag.append(J @ P_next)
        gains.append(J)
        ms.append(m)
        Ps.append(P)
    ms.reverse()
    Ps.reverse()
    lag.reverse()
    gains.reverse()

    def covs(lst, n):
        if not lst:
            return A.new_zeros(*batch, 0, d, d)
        return torch.stack(lst).expand(*batch, n, d, d)

    return SmootherResult(
        smoothed_mean=torch.stack(ms, dim=-2),
        smoothed_cov=covs(Ps, T),
        lag_one_cov=covs(lag, T - 1),
        gain=covs(gains, T - 1),
        filter=kf,
    )
