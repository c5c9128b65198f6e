"""Pareto-k̂ of importance weights and Pareto-smoothed importance sampling (PSIS), in torch.

Reference: Vehtari, Simpson, Gelman, Yao & Gabry (2024), *Pareto smoothed importance
sampling*, JMLR 25(72) (arXiv:1507.02646v9). The generalized Pareto fit is the
empirical-Bayes estimator of Zhang & Stephens (2009), *A new and efficient estimation
method for the generalized Pareto distribution*, Technometrics 51(3).

Recipe followed: the paper's PSIS algorithm with relative efficiency ``r_eff = 1`` (iid
draws, as SMC particle weights are treated here), step by step; on the same weights it
agrees to round-off with ``arviz.psislw`` of ArviZ 0.23, which implements the same recipe
(checked in the tests):

1. tail size ``M = ceil(min(0.2 S, 3 sqrt(S)))`` for ``S`` importance ratios;
2. threshold ``u`` = the ``(S - M)``-th order statistic (the largest ratio outside the
   tail); the ``M`` largest ratios minus ``u`` are the exceedances ``x_1 <= ... <= x_M``;
3. fit a generalized Pareto distribution ``GPD(k, sigma)``,
   ``F(x) = 1 - (1 + k x / sigma)^(-1/k)``, to the exceedances by Zhang & Stephens'
   posterior mean of ``theta = -k / sigma`` over the grid
   ``theta_j = 1 / x_M + (1 - sqrt(m / (j - 1/2))) / (3 x_*)``, ``j = 1..m``,
   ``m = 30 + floor(sqrt(M))``, ``x_* = x_(floor(M/4 + 1/2))`` (first quartile), weighted by
   the profile likelihood ``exp(l(theta_j))``,
   ``l(theta) = M (log(-theta / k(theta)) - k(theta) - 1)``,
   ``k(theta) = mean_i log(1 - theta x_i)``; then ``k = k(theta_hat)``,
   ``sigma = -k / theta_hat``;
4. weakly informative prior on the shape (10 pseudo-observations at 0.5):
   ``k_hat = (M k + 5) / (M + 10)``;
5. (smoothing only) replace the ``M`` tail ratios, in their order, by
   ``u + F^{-1}((z - 1/2) / M)``, ``z = 1..M``, and truncate every smoothed ratio at the
   largest raw ratio.

With fewer than 5 tail draws (``S <= 20``) the fit is not attempted and ``k_hat = inf``
(as in ``loo``/ArviZ 0.x). A tail with no spread at all (all tail ratios equal, e.g. equal
weights) has no Pareto tail: ``k_hat = -inf``.

Interpretation (Vehtari et al. 2024): ``k_hat`` estimates the tail shape of the importance
ratios, which have finite moments of order below ``1 / k``. Below
``min(1 - 1 / log10(S), 0.7)`` the (self-normalized) importance-sampling estimate is
reliable and PSIS converges at close to the ``1 / sqrt(S)`` rate; between that and
``0.7`` more draws are needed (the sample size is too small for the tail); above ``0.7``
the estimate is unreliable and no practical number of draws fixes it; above 1 the
ratios have no finite mean. For SMC the "ratios" are the final particle weights.
"""

from __future__ import annotations

import math

import torch

# Zhang & Stephens (2009) grid constants and the PSIS prior (Vehtari et al. 2024).
_MIN_GRID = 30
_PRIOR_BS = 3.0
_PRIOR_K_WEIGHT = 10.0
_PRIOR_K_MEAN = 0.5
_MIN_TAIL = 5


def tail_length(num_draws: int) -> int:
    """PSIS tail size ``M = ceil(min(0.2 S, 3 sqrt(S)))`` (Vehtari et al. 2024, r_eff = 1)."""
    if num_draws < 1:
        raise ValueError(f"num_draws must be >= 1, got {num_draws}")
    return int(math.ceil(min(0.2 * num_draws, 3.0 * math.sqrt(num_draws))))


def khat_threshold(num_draws: int) -> float:
    """Sample-size dependent threshold ``min(1 - 1 / log10(S), 0.7)`` on ``k_hat``.

    Below it the importance-sampling estimate with ``S`` draws is reliable
    (Vehtari et al. 2024). For ``S <= 10`` it is ``-inf`` (never reliable).
    """
    if num_draws <= 10:
        return -math.inf
    return min(1.0 - 1.0 / math.log10(num_draws), 0.7)


def _check(log_w: torch.Tensor, dim: int) -> torch.Tensor:
    if not isinstance(log_w, torch.Tensor):
        raise TypeError(f"log_w must be a torch.Tensor, got {type(log_w).__name__}")
    if not log_w.is_floating_point():
        raise TypeError(f"log_w must be floating point, got {log_w.dtype}")
    if log_w.dim() < 1:
        raise ValueError("log_w must have at least one dimension (the draws), got a scalar")
    if not -log_w.dim() <= dim < log_w.dim():
        raise ValueError(f"dim={dim} is out of range for log_w of shape {tuple(log_w.shape)}")
    return log_w.movedim(dim, -1)


def _gpd_fit(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Zhang-Stephens fit of ``GPD(k, sigma)`` to sorted exceedances ``x: [B, M]`` (float64).

    Returns the shape ``k`` *before* the prior adjustment and the scale ``sigma``, ``[B]``.
    Rows whose largest exceedance is 0 give NaN (handled by the caller).
    """
    B, M = x.shape
    m = _MIN_GRID + int(math.floor(math.sqrt(M)))
    j = torch.arange(1, m + 1, dtype=x.dtype, device=x.device)
    x_max = x[:, -1:]
    x_star = x[:, int(math.floor(M / 4 + 0.5)) - 1 : int(math.floor(M / 4 + 0.5))]
    # theta grid [B, m]; a zero quartile (many ties at the threshold) would give -inf
    # offsets, so floor it at a tiny fraction of the maximum.
    x_star = torch.maximum(x_star, x_max * 1e-12)
    theta = 1.0 / x_max + (1.0 - torch.sqrt(m / (j - 0.5))) / (_PRIOR_BS * x_star)
    k_grid = torch.log1p(-theta.unsqueeze(-1) * x.unsqueeze(-2)).mean(-1)  # [B, m]
    prof = M * (torch.log(-theta / k_grid) - k_grid - 1.0)
    prof = torch.where(torch.isnan(prof), torch.full_like(prof, -math.inf), prof)
    w = torch.softmax(prof, dim=-1)
    theta_hat = (w * theta).sum(-1, keepdim=True)
    k = torch.log1p(-theta_hat * x).mean(-1)
    sigma = -k / theta_hat.squeeze(-1)
    return k, sigma


def _fit_tail(log_w: torch.Tensor):
    """Shared part of :func:`pareto_khat` and :func:`psis_smooth` on ``[B, S]`` float64."""
    B, S = log_w.shape
    M = tail_length(S)
    finite_max = log_w.max(-1, keepdim=True).values
    shift = torch.where(torch.isfinite(finite_max), finite_max, torch.zeros_like(finite_max))
    lw = log_w - shift  # max is 0: ratios in (0, 1]
    if M < _MIN_TAIL or M >= S:
        return None, M, lw, shift
    top, idx = torch.topk(lw, M + 1, dim=-1, largest=True, sorted=True)  # descending
    top, idx = top.flip(-1), idx.flip(-1)  # ascending: threshold first
    u = torch.exp(top[:, :1])  # [B, 1] threshold ratio
    x = torch.exp(top[:, 1:]) - u  # [B, M] exceedances, ascending
    x = x.clamp_min(0.0)
    k, sigma = _gpd_fit(x)
    spread = x[:, -1] > 0
    k_hat = (M * k + _PRIOR_K_WEIGHT * _PRIOR_K_MEAN) / (M + _PRIOR_K_WEIGHT)
    k_hat = torch.where(spread, k_hat, torch.full_like(k_hat, -math.inf))
    return (k_hat, k, sigma, u, idx[:, 1:], spread), M, lw, shift


def pareto_khat(log_w: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Pareto-k̂ diagnostic of importance weights (Vehtari et al. 2024).

    Fits a generalized Pareto distribution to the ``M = ceil(min(0.2 S, 3 sqrt(S)))``
    largest importance ratios ``exp(log_w)`` by Zhang & Stephens (2009) and returns its
    shape after the weakly informative prior adjustment ``(M k + 5) / (M + 10)`` (see the
    module docstring for the full recipe and for how to read the values: reliable below
    :func:`khat_threshold` ``= min(1 - 1/log10 S, 0.7)``, unreliable above 0.7).

    Args:
        log_w: unnormalized log-weights ``[*batch, S]`` (the draws along ``dim``);
            ``-inf`` entries are zero weights.
        dim: the axis of the draws.

    Returns:
        ``k_hat: [*batch]`` in the dtype of ``log_w`` (computed in float64). ``inf`` when
        ``S <= 20`` (tail too short), ``-inf`` when the tail ratios are all equal, NaN for a
        degenerate member (all weights ``-inf`` or any NaN).
    """
    lw = _check(log_w, dim)
    batch, S = lw.shape[:-1], lw.shape[-1]
    flat = lw.reshape(-1, S).to(torch.float64)
    fit, M, _, _ = _fit_tail(flat)
    if fit is None:
        k_hat = torch.full(flat.shape[:1], math.inf, dtype=torch.float64, device=lw.device)
    else:
        k_hat = fit[0]
    k_hat = torch.where(_degenerate(flat), torch.full_like(k_hat, math.nan), k_hat)
    return k_hat.to(log_w.dtype).reshape(batch)


def _degenerate(flat: torch.Tensor) -> torch.Tensor:
    return torch.isnan(flat).any(-1) | torch.isposinf(flat).any(-1) | torch.isneginf(flat).all(-1)


def gpd_quantile(p: torch.Tensor, k: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Generalized Pareto quantile ``F^{-1}(p) = sigma ((1 - p)^(-k) - 1) / k``
    (``-sigma log(1 - p)`` at ``k = 0``); ``k``, ``sigma`` broadcast against ``p``."""
    small = k.abs() < 1e-12
    k_safe = torch.where(small, torch.ones_like(k), k)
    q = sigma * torch.expm1(-k_safe * torch.log1p(-p)) / k_safe
    return torch.where(small, -sigma * torch.log1p(-p), q)


def psis_smooth(log_w: torch.Tensor, dim: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """Pareto-smoothed log-weights and k̂ (Vehtari et al. 2024, PSIS).

    The ``M`` largest ratios are replaced by the expected order statistics of the fitted
    generalized Pareto tail, ``u + F^{-1}((z - 1/2) / M)``, ``z = 1..M`` in their original
    order, then truncated at the largest raw ratio. Everything below the threshold is
    unchanged. Members whose fit is impossible (``S <= 20``, no spread in the tail,
    degenerate weights) are returned unchanged.

    Args:
        log_w: unnormalized log-weights ``[*batch, S]`` (draws along ``dim``).
        dim: the axis of the draws.

    Returns:
        ``(log_w_smoothed, k_hat)``: smoothed log-weights of the same shape, dtype and
        offset as ``log_w`` (unnormalized: apply
        :func:`smcdiff.core.weights.log_normalize` for normalized ones), and
        ``k_hat: [*batch]`` as in :func:`pareto_khat`.
    """
    lw_in = _check(log_w, dim)
    batch, S = lw_in.shape[:-1], lw_in.shape[-1]
    flat = lw_in.reshape(-1, S).to(torch.float64)
    fit, M, lw, shift = _fit_tail(flat)
    bad = _degenerate(flat)
    if fit is None:
        k_hat = torch.full(flat.shape[:1], math.inf, dtype=torch.float64, device=flat.device)
        out = flat
    else:
        k_hat, _, sigma, u, tail_idx, spread = fit
        z = torch.arange(1, M + 1, dtype=torch.float64, device=flat.device)
        p = (z - 0.5) / M
        q = gpd_quantile(p, k_hat.unsqueeze(-1), sigma.unsqueeze(-1))
        smooth = torch.log(u + q).clamp_max(0.0)  # truncate at the largest raw ratio (= 1)
        ok = (spread & torch.isfinite(k_hat) & ~bad).unsqueeze(-1)
        ok = ok & torch.isfinite(smooth).all(-1, keepdim=True)
        new = torch.where(ok, smooth, lw.gather(-1, tail_idx))
        out = lw.scatter(-1, tail_idx, new) + shift
    k_hat = torch.where(bad, torch.full_like(k_hat, math.nan), k_hat)
    out = out.to(log_w.dtype).reshape(*batch, S).movedim(-1, dim)
    return out, k_hat.to(log_w.dtype).reshape(batch)
