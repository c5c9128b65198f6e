"""Reward functions ``r(x0)`` for steering diffusion samplers, all with one call signature.

A reward maps points ``x: [*lead, *event]`` to one number per point, ``[*lead]``; the event
axes are the trailing ``event_ndim`` axes (1 for points in ``R^d``). ``*lead`` is anything
(``[*batch, N]`` for particles, ``[M, *batch, N]`` for several draws per particle), so every
reward here broadcasts over particles, batch members and draws without a loop. All are
differentiable in ``x`` (autograd), so they serve both gradient-free methods (FK steering,
best-of-N) and gradient-based ones (the twisted diffusion sampler, reward-tilted FKC).
Parameters are cast to ``x``'s dtype and device on use.

The steered target is ``p(x0) exp(lam r(x0)) / Z`` (Singhal et al. 2025, arXiv 2501.06848;
Skreta et al. 2025, arXiv 2503.02819, Prop. 3.4); ``lam`` lives with the sampler, not here.

=============================  ===============================================================
reward                         ``r(x)``
=============================  ===============================================================
:class:`LinearReward`          ``<a, x>`` (the exact Gaussian test case: the tilt of
                               ``N(mu, S)`` is ``N(mu + lam S a, S)``)
:class:`NegSquaredDistance`    ``-min_j |x - c_j|^2 / (2 s^2)`` (a point or a set)
:class:`LinearGaussianLogLik`  ``log N(y; A x, s^2 I)`` (a linear-Gaussian observation; TDS)
:class:`Bumps`                 ``max_j h_j exp(-|x - c_j|^2 / (2 w^2))`` (hard or soft max)
=============================  ===============================================================
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "Bumps",
    "LinearGaussianLogLik",
    "LinearReward",
    "NegSquaredDistance",
    "Reward",
    "check_reward_output",
]

Reward = Callable[[Tensor], Tensor]
"""A reward: ``r(x: [*lead, *event]) -> [*lead]``."""


def check_reward_output(r: object, lead: tuple[int, ...], name: str = "reward") -> Tensor:
    """Validate a reward's output: a floating tensor of shape ``lead`` (``[*batch, N]``)."""
    if not isinstance(r, Tensor):
        raise TypeError(f"{name} must return a tensor [*batch, N], got {type(r).__name__}")
    if tuple(r.shape) != tuple(lead):
        raise ValueError(
            f"{name} returned shape {tuple(r.shape)}, expected one value per point "
            f"[*batch, N] = {tuple(lead)} (rewards reduce over the event axes)"
        )
    if not r.is_floating_point():
        raise TypeError(f"{name} returned dtype {r.dtype}; expected floating point")
    return r


def _as_param(v: object, name: str) -> Tensor:
    t = torch.as_tensor(v)
    if not t.is_floating_point():
        t = t.to(torch.get_default_dtype())
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite")
    return t


def _check_x(x: object, event: tuple[int, ...], name: str) -> Tensor:
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(f"{name}: x must be a floating tensor [*lead, *event]")
    k = len(event)
    if x.ndim < k or tuple(x.shape[x.ndim - k:]) != event:
        raise ValueError(f"{name}: x of shape {tuple(x.shape)} must end with the event shape "
                         f"{event}")
    return x


def _positive(v: float, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
    return float(v)


@dataclass(frozen=True)
class LinearReward:
    """Linear reward ``r(x) = <a, x>`` summed over the event axes (``a: [*event]``).

    For Gaussian data ``N(mu, S)`` the tilted target ``p exp(lam r)`` is ``N(mu + lam S a, S)``
    with ``log Z = lam a^T mu + lam^2 a^T S a / 2`` (the moment generating function), the
    closed-form truth of the steering tests; ``grad r = a``.
    """

    a: Tensor

    def __post_init__(self) -> None:
        a = _as_param(self.a, "a")
        if a.ndim < 1:
            raise ValueError("a must have the event shape (at least 1-D)")
        object.__setattr__(self, "a", a)

    def __call__(self, x: Tensor) -> Tensor:
        event = tuple(self.a.shape)
        x = _check_x(x, event, "LinearReward")
        a = self.a.to(dtype=x.dtype, device=x.device)
        return (x * a).sum(dim=tuple(range(-len(event), 0)))


@dataclass(frozen=True)
class NegSquaredDistance:
    """Negative squared distance to a point or to the nearest point of a set.

    ``r(x) = -min_j |x - c_j|^2 / (2 scale^2)``, ``centers: [*event]`` (one point) or
    ``[M, *event]`` (a set; ``event_ndim`` says which). For one point, ``exp(lam r)`` is an
    isotropic Gaussian factor ``N(x; c, scale^2/lam I)`` up to a constant, so the tilt of a
    Gaussian is again Gaussian. For a set the reward is continuous with a kink where two
    centres tie (differentiable almost everywhere).
    """

    centers: Tensor
    scale: float = 1.0
    event_ndim: int = 1

    def __post_init__(self) -> None:
        c = _as_param(self.centers, "centers")
        if not isinstance(self.event_ndim, int) or self.event_ndim < 1:
            raise ValueError(f"event_ndim must be an int >= 1, got {self.event_ndim!r}")
        if c.ndim == self.event_ndim:
            c = c.unsqueeze(0)
        if c.ndim != self.event_ndim + 1 or c.shape[0] < 1:
            raise ValueError(f"centers must have shape [*event] or [M, *event] with "
                             f"event_ndim={self.event_ndim}, got {tuple(c.shape)}")
        object.__setattr__(self, "centers", c)
        _positive(self.scale, "scale")

    def __call__(self, x: Tensor) -> Tensor:
        event = tuple(self.centers.shape[1:])
        x = _check_x(x, event, "NegSquaredDistance")
        c = self.centers.to(dtype=x.dtype, device=x.device)
        k = len(event)
        diff = x.unsqueeze(-k - 1) - c  # [*lead, M, *event]
        d2 = (diff * diff).sum(dim=tuple(range(-k, 0)))  # [*lead, M]
        return -d2.amin(-1) / (2.0 * self.scale**2)


@dataclass(frozen=True)
class LinearGaussianLogLik:
    """Log-likelihood of a linear-Gaussian observation: ``r(x) = log N(y; A x, s^2 I_m)``.

    ``A: [m, d]`` (or ``[d]`` for one observation), ``y: [m]`` (or a scalar), ``noise_std``
    ``s > 0``; points ``x: [*lead, d]``. With ``lam = 1`` the tilted target
    ``p(x) N(y; A x, s^2 I)`` is the posterior of ``x`` given ``y`` and ``Z`` the evidence;
    for ``x ~ N(mu, S)``: posterior ``N(mu + K (y - A mu), (I - K A) S)``, ``K = S A^T G^-1``,
    ``G = A S A^T + s^2 I``, evidence ``N(y; A mu, G)`` (Wu et al. 2023, arXiv 2306.17775,
    the twist ``p(y | x0_hat(x_t))`` of the twisted diffusion sampler). The normalising
    constant is included, so ``log Z_hat`` estimates the log-evidence.
    """

    A: Tensor
    y: Tensor
    noise_std: float

    def __post_init__(self) -> None:
        A = _as_param(self.A, "A")
        if A.ndim == 1:
            A = A.unsqueeze(0)
        if A.ndim != 2:
            raise ValueError(f"A must have shape [m, d] or [d], got {tuple(A.shape)}")
        y = _as_param(self.y, "y").reshape(-1)
        if y.shape[0] != A.shape[0]:
            raise ValueError(f"y must have {A.shape[0]} entries (rows of A), got {y.shape[0]}")
        _positive(self.noise_std, "noise_std")
        object.__setattr__(self, "A", A)
        object.__setattr__(self, "y", y)

    def __call__(self, x: Tensor) -> Tensor:
        m, d = self.A.shape
        x = _check_x(x, (d,), "LinearGaussianLogLik")
        A = self.A.to(dtype=x.dtype, device=x.device)
        y = self.y.to(dtype=x.dtype, device=x.device)
        res = (y - x @ A.T) / self.noise_std  # [*lead, m]
        return -0.5 * (res * res).sum(-1) - m * (math.log(self.noise_std)
                                                 + 0.5 * math.log(2 * math.pi))


@dataclass(frozen=True)
class Bumps:
    """A smooth multi-modal reward: the highest of a few Gaussian bumps.

    ``b_j(x) = h_j exp(-|x - c_j|^2 / (2 width^2))``, centres ``[M, d]``, heights ``[M]``
    (default all 1); ``r(x) = max_j b_j(x)`` (``softness = 0``) or the smooth maximum
    ``softness * log sum_j exp(b_j(x) / softness)`` (``softness > 0``, infinitely
    differentiable, within ``softness * log M`` of the max). Bounded in ``[0, max h]`` for the
    hard max, so ``0`` is a valid lower bound (FK steering's ``reward_min_value``). Meant for
    2-D toy problems (any ``d`` works): away from the bumps the reward is flat, so a sampler
    must find the bumps, which is where steering beats best-of-N.
    """

    centers: Tensor
    heights: Tensor | None = None
    width: float = 0.5
    softness: float = 0.0

    def __post_init__(self) -> None:
        c = _as_param(self.centers, "centers")
        if c.ndim != 2:
            raise ValueError(f"centers must have shape [M, d], got {tuple(c.shape)}")
        h = torch.ones(c.shape[0], dtype=c.dtype) if self.heights is None \
            else _as_param(self.heights, "heights").reshape(-1)
        if h.shape[0] != c.shape[0]:
            raise ValueError(f"heights must have {c.shape[0]} entries, got {h.shape[0]}")
        _positive(self.width, "width")
        if isinstance(self.softness, bool) or not isinstance(self.softness, (int, float)) \
                or not self.softness >= 0:
            raise ValueError(f"softness must be a number >= 0, got {self.softness!r}")
        object.__setattr__(self, "centers", c)
        object.__setattr__(self, "heights", h)

    def __call__(self, x: Tensor) -> Tensor:
        d = self.centers.shape[1]
        x = _check_x(x, (d,), "Bumps")
        c = self.centers.to(dtype=x.dtype, device=x.device)
        h = self.heights.to(dtype=x.dtype, device=x.device)  # type: ignore[union-attr]
        diff = x.unsqueeze(-2) - c  # [*lead, M, d]
        b = h * torch.exp(-(diff * diff).sum(-1) / (2.0 * self.width**2))  # [*lead, M]
        if self.softness == 0:
            return b.amax(-1)
        return self.softness * torch.logsumexp(b / self.softness, dim=-1)
