"""When to resample: independent objects, one call signature.

A trigger is called as ``trigger(t, log_w, ess)`` before step ``t`` moves the particles
(``ess: [*batch]`` is the ESS of ``log_w`` when the caller already has it, else ``None``) and
returns either a Python ``bool`` (the same decision for every batch member, known without
looking at the weights, so the engine can skip the work) or a ``[*batch]`` boolean tensor
(decided per batch member on the device, with no host synchronisation).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import torch

from smcdiff.core.constants import scalar_tensor
from smcdiff.core.weights import ess as effective_sample_size


class ResamplingTrigger(Protocol):
    def __call__(
        self, t: int, log_w: torch.Tensor, ess: torch.Tensor | None = None
    ) -> bool | torch.Tensor: ...


@dataclass(frozen=True)
class ESSTrigger:
    """Resample when ``ESS < threshold * N`` (adaptive resampling; Liu & Chen 1995)."""

    threshold: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"ess_threshold must lie in [0, 1], got {self.threshold}")

    def __call__(
        self, t: int, log_w: torch.Tensor, ess: torch.Tensor | None = None
    ) -> bool | torch.Tensor:
        if self.threshold >= 1.0:
            return True
        if self.threshold <= 0.0:
            return False
        value = effective_sample_size(log_w) if ess is None else ess
        # a cached 0-d threshold: comparing with a Python number allocates one per call
        return value < scalar_tensor(self.threshold * log_w.shape[-1], value.dtype, value.device)


@dataclass(frozen=True)
class Always:
    """Resample before every move."""

    def __call__(self, t: int, log_w: torch.Tensor, ess: torch.Tensor | None = None) -> bool:
        return True


@dataclass(frozen=True)
class Never:
    """Never resample (sequential importance sampling)."""

    def __call__(self, t: int, log_w: torch.Tensor, ess: torch.Tensor | None = None) -> bool:
        return False


@dataclass(frozen=True)
class Every:
    """Resample before steps ``t`` with ``t % k == 0`` (inside an optional window)."""

    k: int
    start: int = 1
    stop: int | None = None

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"Every(k) needs k >= 1, got {self.k}")

    def __call__(self, t: int, log_w: torch.Tensor, ess: torch.Tensor | None = None) -> bool:
        inside = t >= self.start and (self.stop is None or t < self.stop)
        return inside and t % self.k == 0


@dataclass(frozen=True)
class AtSteps:
    """Resample exactly before the listed steps (a user schedule)."""

    steps: frozenset[int]

    def __call__(self, t: int, log_w: torch.Tensor, ess: torch.Tensor | None = None) -> bool:
        return t in self.steps


@dataclass(frozen=True)
class Window:
    """Apply ``inner`` only for steps in ``[start, stop)``; never resample outside."""

    inner: ResamplingTrigger
    start: int = 1
    stop: int | None = None

    def __call__(
        self, t: int, log_w: torch.Tensor, ess: torch.Tensor | None = None
    ) -> bool | torch.Tensor:
        if t < self.start or (self.stop is not None and t >= self.stop):
            return False
        return self.inner(t, log_w, ess)


def make_trigger(
    resample: str | ResamplingTrigger | Iterable[int] | None = None,
    ess_threshold: float = 0.5,
) -> ResamplingTrigger:
    """Build a trigger from the convenience arguments of :func:`smcdiff.smc`.

    ``resample`` is ``"adaptive"`` (default; uses ``ess_threshold``), ``"always"``,
    ``"never"``, a trigger object, or an iterable of step indices.
    """
    if resample is None or resample == "adaptive":
        return ESSTrigger(ess_threshold)
    if resample == "always":
        return Always()
    if resample == "never":
        return Never()
    if isinstance(resample, str):
        raise ValueError(
            f"unknown resample policy {resample!r}; expected 'adaptive', 'always', 'never', "
            "a trigger object or a list of steps"
        )
    if callable(resample):
        return resample
    return AtSteps(frozenset(int(s) for s in resample))
