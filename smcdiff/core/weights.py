"""Log-weight arithmetic: normalization, effective sample size, log-mean-exp.

Weights live as unnormalized log-weights ``log_w: [*batch, N]``. ``-inf`` is a legal
weight (a killed particle). A batch member whose weights are *all* ``-inf`` or contain
NaN is degenerate: the functions here return NaN for it rather than raising, because
raising needs a host synchronisation; :func:`check_weights` is the explicit check that
names the step.
"""

from __future__ import annotations

import math

import torch


class DegenerateWeightsError(ValueError):
    """All weights of a run are ``-inf`` or some are NaN."""


def log_normalize(log_w: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``log W_i = log w_i - logsumexp_j log w_j`` along ``dim``."""
    return log_w - torch.logsumexp(log_w, dim=dim, keepdim=True)


def normalize(log_w: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Normalized weights ``W_i = w_i / sum_j w_j`` (softmax of the log-weights)."""
    return torch.softmax(log_w, dim=dim)


def log_mean_exp(log_w: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``log (1/N sum_i exp(log_w_i))``, stable for large and ``-inf`` entries."""
    return torch.logsumexp(log_w, dim=dim) - math.log(log_w.shape[dim])


def ess(log_w: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Effective sample size ``1 / sum_i W_i^2`` (Kong, Liu & Wong 1994), in ``[1, N]``.

    Computed in log space: ``exp(2 logsumexp(log w) - logsumexp(2 log w))``.
    """
    return torch.exp(2 * torch.logsumexp(log_w, dim=dim) - torch.logsumexp(2 * log_w, dim=dim))


def conditional_ess(log_w: torch.Tensor, log_incr: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Conditional ESS of an incremental reweighting (Zhou, Johansen & Aston 2016).

    For current normalized weights ``W`` and incremental weights ``g``:
    ``CESS = N (sum_i W_i g_i)^2 / sum_i W_i g_i^2`` in ``[0, N]``; it equals the ESS of
    the new weights when the current weights are uniform, and is the criterion that
    adaptive tempering bisects on.
    """
    log_W = log_normalize(log_w, dim)
    num = 2 * torch.logsumexp(log_W + log_incr, dim=dim)
    den = torch.logsumexp(log_W + 2 * log_incr, dim=dim)
    return log_w.shape[dim] * torch.exp(num - den)


def is_degenerate(log_w: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``[*batch]`` boolean: all weights ``-inf``, or any NaN / ``+inf``."""
    bad = torch.isnan(log_w).any(dim) | torch.isposinf(log_w).any(dim)
    return bad | torch.isneginf(log_w).all(dim)


def check_weights(log_w: torch.Tensor, where: str = "") -> None:
    """Raise :class:`DegenerateWeightsError` if any batch member is degenerate.

    This synchronises with the device; the SMC engine calls it once per run, not per step.
    """
    bad = is_degenerate(log_w)
    if bool(bad.any()):
        members = torch.nonzero(bad).tolist()[:5]
        raise DegenerateWeightsError(
            f"degenerate weights {where}: all -inf or NaN/+inf for batch member(s) {members}"
        )
