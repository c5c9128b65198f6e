"""Exact score, Fisher-identity score, exact MLE and exact smoothing draws of a linear
Gaussian state-space model (the references of :mod:`smcdiff.ssm.learning`).

For ``X_0 ~ N(m0, P0)``, ``X_t = A X_{t-1} + N(0, Q)``, ``Y_t = C X_t + N(0, R)`` with
parameters ``theta`` (``model = build(params)``):

- :func:`exact_score`: ``grad_theta log p_theta(y)``, autograd through the Kalman filter.
- :func:`fisher_score_rts`: the same by the Fisher identity, ``grad_theta' Q(theta', theta)``
  at ``theta' = theta`` with the EM function (Shumway & Stoffer 1982)

      Q(theta', theta) = E_theta[log p_theta'(X, y) | y]
        = -1/2 [ log|2 pi P0| + tr(P0^-1 E[(x_0 - m0)(x_0 - m0)^T]) ]
          -1/2 sum_{t>=1} [ log|2 pi Q| + tr(Q^-1 E[(x_t - A x_{t-1})(x_t - A x_{t-1})^T]) ]
          -1/2 sum_t [ log|2 pi R| + tr(R^-1 E[(y_t - C x_t)(y_t - C x_t)^T]) ],

  whose expectations need only the RTS moments ``E[x_t x_t^T] = P_{t|n} + m_{t|n} m_{t|n}^T``
  and ``E[x_{t-1} x_t^T] = Cov(x_{t-1}, x_t | y) + m_{t-1|n} m_{t|n}^T``.
- :func:`exact_mle`: maximiser of the Kalman log-likelihood by L-BFGS (strong Wolfe line
  search), the reference the stochastic-approximation MLE must reach.
- :func:`sample_smoothing_paths`: exact draws from ``p(x_{0:n} | y)`` by forward filtering,
  backward sampling (Carter & Kohn 1994; Frühwirth-Schnatter 1994).

A batch of series ``y: [*batch, T, dy]`` is treated as independent replicates sharing
``theta``: log-likelihoods and scores are summed over the batch. ``t`` is the observation
index.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch

from smcdiff.ssm.kalman import SmootherResult, kalman_filter, rts_smoother
from smcdiff.ssm.learning import Params, _check_params, flatten_params, unflatten_params

Build = Callable[[dict[str, torch.Tensor]], object]

__all__ = [
    "MLEResult", "exact_log_likelihood", "exact_mle", "exact_score",
    "expected_complete_log_likelihood", "fisher_score_rts", "sample_smoothing_paths",
]


def _leaf(params: Params) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    params = _check_params(params)
    like = {k: v.detach() for k, v in params.items()}
    theta = flatten_params(like).clone().requires_grad_(True)
    return theta, like


def exact_log_likelihood(build: Build, params: Params, y: torch.Tensor) -> torch.Tensor:
    """``log p_theta(y)`` summed over the batch of ``y: [*batch, T, dy]`` (a 0-d tensor,
    differentiable in the tensors of ``params``)."""
    return kalman_filter(build(dict(params)), y).log_likelihood.sum()


def exact_score(build: Build, params: Params, y: torch.Tensor) -> torch.Tensor:
    """``grad_theta log p_theta(y)``, flat ``[P]`` (autograd through the Kalman filter)."""
    theta, like = _leaf(params)
    ll = exact_log_likelihood(build, unflatten_params(theta, like), y)
    return torch.autograd.grad(ll, theta)[0]


def _trace_solve(S: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """``tr(S^{-1} M)`` for ``S: [k, k]`` positive definite and ``M: [*lead, k, k]``."""
    L = torch.linalg.cholesky(S)
    return torch.diagonal(torch.cholesky_solve(M, L), dim1=-2, dim2=-1).sum(-1)


def _logdet(S: torch.Tensor) -> torch.Tensor:
    return 2 * torch.log(torch.diagonal(torch.linalg.cholesky(S))).sum()


def expected_complete_log_likelihood(
    model, y: torch.Tensor, smoother: SmootherResult
) -> torch.Tensor:
    """``E[log p_model(X, y) | y]`` under the Gaussian smoothing law whose moments are in
    ``smoother`` (``Q(theta', theta)`` of EM, Shumway & Stoffer 1982): ``[*batch]``.

    Differentiable in the tensors of ``model``; ``smoother`` is held fixed (detach it, or
    compute it at another ``theta``).
    """
    A, C, Q, R, m0, P0 = model.A, model.C, model.Q, model.R, model.m0, model.P0
    d, dy = A.shape[-1], C.shape[0]
    m = smoother.smoothed_mean.detach()                     # [*b, T, d]
    P = smoother.smoothed_cov.detach()                      # [*b, T, d, d]
    L1 = smoother.lag_one_cov.detach()                      # [*b, T-1, d, d]
    T = m.shape[-2]
    S = P + m.unsqueeze(-1) * m.unsqueeze(-2)               # E[x_t x_t^T]
    X = L1 + m[..., :-1, :].unsqueeze(-1) * m[..., 1:, :].unsqueeze(-2)  # E[x_{t-1} x_t^T]
    log2pi = math.log(2 * math.pi)

    d0 = m[..., 0, :] - m0
    E0 = P[..., 0, :, :] + d0.unsqueeze(-1) * d0.unsqueeze(-2)
    out = -0.5 * (d * log2pi + _logdet(P0) + _trace_solve(P0, E0))

    if T > 1:
        AX = A @ X                                          # A E[x_{t-1} x_t^T]
        Et = S[..., 1:, :, :] - AX - AX.mT + A @ S[..., :-1, :, :] @ A.mT
        out = out - 0.5 * ((T - 1) * (d * log2pi + _logdet(Q)) + _trace_solve(Q, Et.sum(-3)))

    yy = y.unsqueeze(-1) * y.unsqueeze(-2)                  # [*b, T, dy, dy]
    Cmy = (m @ C.mT).unsqueeze(-1) * y.unsqueeze(-2)        # C m y^T
    Ey = yy - Cmy - Cmy.mT + C @ S @ C.mT
    out = out - 0.5 * (T * (dy * log2pi + _logdet(R)) + _trace_solve(R, Ey.sum(-3)))
    return out


def fisher_score_rts(build: Build, params: Params, y: torch.Tensor) -> torch.Tensor:
    """``grad_theta log p_theta(y)`` by the Fisher identity with the exact RTS moments: the
    gradient of :func:`expected_complete_log_likelihood` at the smoother of ``theta``; flat
    ``[P]``. Equal to :func:`exact_score` (Fisher identity); also the exact-moment score
    estimator for testing learning loops: ``lambda p: fisher_score_rts(build, p, y)``."""
    theta, like = _leaf(params)
    with torch.no_grad():
        sm = rts_smoother(build(dict(like)), y)
    q = expected_complete_log_likelihood(build(unflatten_params(theta, like)), y, sm).sum()
    return torch.autograd.grad(q, theta)[0]


class MLEResult(NamedTuple):
    """Exact MLE: ``params`` (dict, detached), ``log_likelihood`` (0-d), ``score`` ``[P]`` at
    the optimum, ``num_evals`` (log-likelihood evaluations)."""

    params: dict[str, torch.Tensor]
    log_likelihood: torch.Tensor
    score: torch.Tensor
    num_evals: int


def exact_mle(
    build: Build, params0: Params, y: torch.Tensor, *, max_iter: int = 200,
    tolerance_grad: float = 1e-10, tolerance_change: float = 1e-14,
) -> MLEResult:
    """Maximum-likelihood estimate of a linear Gaussian model by L-BFGS (Liu & Nocedal 1989;
    ``torch.optim.LBFGS`` with a strong Wolfe line search) on the Kalman log-likelihood.

    Args:
        build: ``build(params) -> LinearGaussian``; use unconstrained coordinates (e.g. a
            log standard deviation) so that every trial point is a valid model.
        params0: dict name -> tensor, the starting point.
        y: ``[T, dy]`` or ``[*batch, T, dy]`` (replicates sharing ``theta``).
        max_iter, tolerance_grad, tolerance_change: passed to ``torch.optim.LBFGS``.

    Returns:
        :class:`MLEResult`. Check ``score`` (should be ~0) for convergence.
    """
    theta, like = _leaf(params0)
    opt = torch.optim.LBFGS([theta], lr=1.0, max_iter=max_iter, tolerance_grad=tolerance_grad,
                            tolerance_change=tolerance_change, history_size=20,
                            line_search_fn="strong_wolfe")
    count = [0]

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = -exact_log_likelihood(build, unflatten_params(theta, like), y)
        loss.backward()
        count[0] += 1
        return loss

    opt.step(closure)
    best = {k: v.detach().clone() for k, v in unflatten_params(theta.detach(), like).items()}
    score = exact_score(build, best, y)
    with torch.no_grad():
        ll = exact_log_likelihood(build, best, y)
    return MLEResult(best, ll, score, count[0])


def sample_smoothing_paths(
    model, y: torch.Tensor, num_paths: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Exact draws from the smoothing law ``p(x_{0:T-1} | y)`` of a linear Gaussian model
    (forward filtering, backward sampling; Carter & Kohn 1994):

        x_{T-1} ~ N(m_{T-1|T-1}, P_{T-1|T-1}),
        x_t | x_{t+1} ~ N(m_{t|t} + J_t (x_{t+1} - m_{t+1|t}), P_{t|t} - J_t P_{t+1|t} J_t^T).

    Args:
        model: a :class:`~smcdiff.ssm.linear_gaussian.LinearGaussian`.
        y: ``[T, dy]`` or ``[*batch, T, dy]``.
        num_paths: ``K``, independent paths per series.
        generator: the random source.

    Returns:
        ``[*batch, K, T, d]`` (detached).
    """
    if isinstance(num_paths, bool) or not isinstance(num_paths, int) or num_paths < 1:
        raise ValueError(f"num_paths must be an integer >= 1, got {num_paths!r}")
    with torch.no_grad():
        kf = kalman_filter(model, y)
        A = model.A
        batch, T, d = kf.filtered_mean.shape[:-2], kf.filtered_mean.shape[-2], A.shape[-1]
        Pf, Pp = kf.filtered_cov, kf.predicted_cov       # [*b, T, d, d] (expanded views)

        def draw(mean: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
            L = torch.linalg.cholesky(0.5 * (cov + cov.mT))
            z = torch.randn((*batch, num_paths, d), generator=generator, dtype=A.dtype,
                            device=A.device)
            return mean + (L.unsqueeze(-3) @ z.unsqueeze(-1)).squeeze(-1)

        x = draw(kf.filtered_mean[..., T - 1, :].unsqueeze(-2), Pf[..., T - 1, :, :])
        xs = [x]
        for t in range(T - 2, -1, -1):
            Lp = torch.linalg.cholesky(Pp[..., t + 1, :, :])
            J = torch.cholesky_solve(A @ Pf[..., t, :, :], Lp).mT      # [*b, d, d]
            mean = (kf.filtered_mean[..., t, :].unsqueeze(-2)
                    + (x - kf.predicted_mean[..., t + 1, :].unsqueeze(-2)) @ J.mT)
            cov = Pf[..., t, :, :] - J @ Pp[..., t + 1, :, :] @ J.mT
            x = draw(mean, cov)
            xs.append(x)
        xs.reverse()
        return torch.stack(xs, dim=-2)
