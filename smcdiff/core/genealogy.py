"""Genealogy: trace particles back through recorded ancestor indices.

With ``record_ancestors=True`` the driver stores ``ancestors: [T, *batch, N]`` where row
``t`` maps each particle at step ``t`` to its parent at step ``t - 1`` (row 0 is the
identity). Tracing these gives the lineage of any final particle; the number of distinct
ancestors at early times measures path degeneracy.
"""

from __future__ import annotations

import torch


def trace_lineage(ancestors: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
    """Indices ``[T, *batch, K]`` of the ancestors, at each step, of final particles ``index``.

    Args:
        ancestors: ``[T, *batch, N]`` recorded ancestor indices.
        index: ``[*batch, K]`` final-step particle indices (all ``N`` if omitted).
    """
    T, N = ancestors.shape[0], ancestors.shape[-1]
    if index is None:
        index = torch.arange(N, device=ancestors.device).expand(ancestors.shape[1:])
    batch_ndim = ancestors.dim() - 2
    out = [index]
    for t in range(T - 1, 0, -1):
        index = torch.gather(ancestors[t], batch_ndim, index)
        out.append(index)
    return torch.stack(out[::-1])


def gather_paths(history: torch.Tensor, lineage: torch.Tensor) -> torch.Tensor:
    """Particle paths ``[T, *batch, K, *event]`` from a history ``[T, *batch, N, *event]``."""
    batch_ndim = lineage.dim() - 2
    event = history.shape[lineage.dim():]
    idx = lineage.reshape(*lineage.shape, *([1] * len(event))).expand(*lineage.shape, *event)
    return torch.gather(history, batch_ndim + 1, idx)


def num_distinct_ancestors(lineage: torch.Tensor) -> torch.Tensor:
    """``[T, *batch]`` number of distinct indices per step of a lineage ``[T, *batch, K]``."""
    s, _ = torch.sort(lineage, dim=-1)
    return 1 + (s[..., 1:] != s[..., :-1]).sum(-1)
