"""Per-step summaries recorded by the SMC driver.

A collector has a ``name`` and is called as ``collector(state, info)`` after every step;
it returns a tensor (stored under ``name``) or a dict of tensors (stored as
``name.key``). The driver stacks the per-step outputs along a new leading time axis.
ESS, resampling flags and log-normalizer increments are always recorded in the result.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from smcdiff.core.weights import normalize


def weighted_mean(values: torch.Tensor, log_w: torch.Tensor) -> torch.Tensor:
    """``sum_i W_i values_i`` over the particle axis; values ``[*batch, N, *shape]``."""
    W = normalize(log_w).to(values.dtype)
    W = W.reshape(*W.shape, *([1] * (values.dim() - W.dim())))
    return (W * values).sum(dim=log_w.dim() - 1)


@dataclass(frozen=True)
class Moments:
    """Weighted mean and variance of ``fn(particles)`` (identity by default)."""

    fn: Callable | None = None
    name: str = "moments"

    def __call__(self, state, info) -> dict[str, torch.Tensor]:
        v = state.particles if self.fn is None else self.fn(state.particles)
        m = weighted_mean(v, state.log_w)
        m2 = weighted_mean(v * v, state.log_w)
        return {"mean": m, "var": (m2 - m * m).clamp_min(0)}


@dataclass(frozen=True)
class Summary:
    """Any user statistic ``fn(state, info) -> Tensor`` recorded every step."""

    fn: Callable
    name: str = "summary"

    def __call__(self, state, info) -> torch.Tensor:
        return self.fn(state, info)
