"""Cached constant tensors for hot loops.

A binary op between a tensor and a Python number wraps the number in a fresh 0-d tensor
on every call; on the CPU that costs about as much again as the op itself for small
tensors (2.5 us against 1 us for a ``[64]`` tensor, measured). Loops that run once per SMC
step use these cached tensors instead. They are created outside inference mode, so they
may be used both inside and outside it, and must never be modified in place.
"""

from __future__ import annotations

from functools import lru_cache

import torch


@lru_cache(maxsize=512)
def scalar_tensor(value: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The 0-d tensor ``value`` of ``dtype`` on ``device`` (cached; read-only)."""
    with torch.inference_mode(False):
        return torch.tensor(value, dtype=dtype, device=device)


@lru_cache(maxsize=64)
def arange(n: int, device: torch.device) -> torch.Tensor:
    """``torch.arange(n)`` (int64) on ``device`` (cached; read-only)."""
    with torch.inference_mode(False):
        return torch.arange(n, device=device)


_CACHE_MAX_NUMEL = 1 << 20  # larger constant tensors are made afresh (memory over speed)


def ones(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``torch.ones(shape)`` (cached up to 2^20 elements; read-only)."""
    if torch.Size(shape).numel() > _CACHE_MAX_NUMEL:
        return torch.ones(shape, dtype=dtype, device=device)
    return _cached_ones(tuple(shape), dtype, device)


@lru_cache(maxsize=16)
def _cached_ones(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    with torch.inference_mode(False):
        return torch.ones(shape, dtype=dtype, device=device)
