"""Reward-tilted Feynman-Kac correctors: sample ``q_0 exp(beta r) / Z`` from a diffusion model.

Skreta et al. 2025 (arXiv 2503.02819), Prop. 3.4; notes ``feynman-kac-correctors.md`` §2(d).
Diffusion time ``t`` in [0, 1] (0 = data, 1 = noise); generation time ``tau = 1 - t``.
The target path is

    p~_t(x) = q_t(x) exp(beta_t r(x)),    beta_t: 0 at the first grid time -> beta at the last,

with ``q_t`` the model's marginals and ``r`` a differentiable reward. For the forward SDE
``dx = f(t) x dt + g(t) dW`` and the proposal (noise factor ``zeta >= 0``)

    dx = [-f x + (1 + zeta^2)/2 g^2 s + zeta^2/2 beta_t g^2 grad r] dtau + zeta g dW,

the Feynman-Kac weight rate is

    G = d beta_t/d tau * r - beta_t <grad r, f x> + beta_t g^2/2 <grad r, s>.

Derivation. ``p~`` solves ``d_tau p~ = -div(u p~) + zeta^2 g^2/2 Lap p~ + G p~`` iff, with
``l = log p~ = log q + beta r``, ``G = d_tau l + div u + u.grad l - zeta^2 g^2/2 (Lap l +
|grad l|^2)``. Insert the forward Fokker-Planck equation of ``q`` in generation time,
``d_tau log q = div f + f x.s - g^2/2 (Lap log q + |s|^2)``, and
``div u = -div f + (1+zeta^2)/2 g^2 Lap log q + zeta^2/2 beta g^2 Lap r``. Collecting terms:
``div f`` and ``f x.s`` cancel; ``Lap log q`` has coefficient ``-1/2 + (1+zeta^2)/2 - zeta^2/2
= 0``; ``|s|^2``: ``-1/2 + (1+zeta^2)/2 - zeta^2/2 = 0``; ``Lap r``: ``zeta^2/2 - zeta^2/2 = 0``;
``|grad r|^2``: ``zeta^2/2 beta^2 - zeta^2/2 beta^2 = 0``; ``<s, grad r>``:
``beta ((1+zeta^2)/2 + zeta^2/2 - zeta^2) = beta/2``; what is left is ``G`` above, for every
``zeta`` (the note's ``zeta = 1`` form has drift ``-f + g^2 (s + beta_t/2 grad r)``). So the
weights need the score and ``grad r`` only: no divergences, no Hutchinson estimates.
``tests/fk/test_reward_tilt.py`` checks the PDE identity pointwise by autograd.

Implementation: this is the general weighted SDE of :mod:`smcdiff.fk.weighted_sde` with one
expert (``beta_1 = 1``) and the log-tilt ``rho_t = beta_t r`` (its
:class:`~smcdiff.fk.weighted_sde.RewardTilt`), so annealing / products / CFG combine with a
reward by passing more experts to :class:`~smcdiff.fk.weighted_sde.WeightedSDE` directly.
:func:`reward_tilt` builds it with a schedule that is exactly ``0`` at the first grid time and
``beta`` at the last, so the SMC target at the end is ``q_{t_K} exp(beta r) / Z`` and
``log Z_hat`` estimates ``log E_{q_{t_K}}[exp(beta r)]`` when the run starts from ``q_{t_0}``
(for Gaussian data and ``r = a.x``: ``beta a^T m + beta^2 a^T C a / 2`` with ``q_{t_K} =
N(m, C)``; see :func:`smcdiff.gaussian.linear_tilt`). Increments are Euler (``O(Delta)``
bias) and evaluated at the pre-step point, one network evaluation per step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from smcdiff.diffusion.grids import check_grid, time_grid
from smcdiff.fk.weighted_sde import RewardTilt, WeightedSDE

__all__ = ["LinearSchedule", "reward_tilt"]


@dataclass(frozen=True)
class LinearSchedule:
    """``beta_t = beta * clamp((t_start - t) / (t_start - t_end), 0, 1)``: 0 at ``t_start``
    (noise side), ``beta`` at ``t_end`` (data side), linear in diffusion time ``t`` between,
    so ``d beta / d tau = beta / (t_start - t_end)`` is constant and the Euler increment
    ``d beta/d tau * Delta * r`` equals ``(beta_{n+1} - beta_n) r`` exactly."""

    beta: float
    t_start: float
    t_end: float

    def __post_init__(self) -> None:
        if not math.isfinite(self.beta):
            raise ValueError(f"beta must be finite, got {self.beta}")
        if not 0.0 <= self.t_end < self.t_start <= 1.0:
            raise ValueError(f"need 0 <= t_end < t_start <= 1 (diffusion times, 0 = data), got "
                             f"t_start={self.t_start}, t_end={self.t_end}")

    def __call__(self, t: Tensor) -> Tensor:
        frac = (self.t_start - t) / (self.t_start - self.t_end)
        return self.beta * torch.clamp(frac, 0.0, 1.0)


def reward_tilt(
    model: Any,
    reward: Callable[[Tensor], Tensor],
    beta: float,
    *,
    schedule: Callable[[Tensor], Any] | None = None,
    zeta: float | str | None = 1.0,
    grad: Callable[[Tensor], Tensor] | None = None,
    reward_nfe: int = 0,
    num_steps: int | None = None,
    grid: Any = None,
    grid_kind: str = "uniform",
    t_start: float | None = None,
    t_end: float | None = None,
    final: str = "t_min",
    **kwargs: Any,
) -> WeightedSDE:
    """Reward-tilted FKC target ``p~_t = q_t exp(beta_t r)`` (FKC Prop. 3.4) as a Feynman-Kac
    model for :func:`smcdiff.smc` (module docstring for the drift, weights and derivation).

    Args:
        model: a :class:`~smcdiff.diffusion.DiffusionModel` of ``q`` (any parametrization).
        reward: differentiable ``r(x: [*batch, N, *event]) -> [*batch, N]``
            (:mod:`smcdiff.fk.rewards`); its gradient comes from autograd unless ``grad``.
        beta: final tilt strength; the target at the last grid time ``t_K`` is
            ``q_{t_K} exp(beta r) / Z``.
        schedule: ``beta_t`` as a function of a 0-d float64 diffusion-time tensor (its
            derivative by autograd); default :class:`LinearSchedule` from 0 at the first grid
            time to ``beta`` at the last.
        zeta: noise factor (``1``: drift ``-f + g^2 (s + beta_t/2 grad r)``, noise ``g``);
            ``G`` does not depend on it.
        grad: optional closed-form ``grad r``; ``reward_nfe``: network evaluations of one
            reward call, counted in ``nfe``.
        num_steps / grid, grid_kind, t_start, t_end, final: the Euler-Maruyama grid (default
            100 uniform steps from ``process.t_max`` to ``process.t_min``).
        **kwargs: passed to :class:`~smcdiff.fk.weighted_sde.WeightedSDE` (``event_shape``,
            ``init`` -- e.g. the exact ``q_{t_0}``, ``init_log_z``, ``clamp``, ``dtype``, ...).

    Example::

        data = sd.gaussian.Gaussian(mu, cov)
        proc = sd.diffusion.VP()
        tgt = reward_tilt(data.model(proc), LinearReward(a), beta=1.0, event_shape=(2,),
                          num_steps=200, init=data.marginal(1.0, proc))
        out = sd.smc(tgt, 2000, resample="adaptive", generator=torch.Generator().manual_seed(0))
        out.particles, out.weights, out.log_z       # log_z ~ log E[exp(beta a.x)]
    """
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta):
        raise ValueError(f"beta must be a finite number, got {beta!r}")
    process = model.process
    if grid is None:
        n = 100 if num_steps is None else num_steps
        g = time_grid(process, n, kind=grid_kind, t_start=t_start, t_end=t_end, final=final)
    else:
        if num_steps is not None:
            raise ValueError("give either grid or num_steps, not both")
        g = check_grid(grid).detach().to("cpu", torch.float64)
    if schedule is None:
        schedule = LinearSchedule(float(beta), float(g[0]), float(g[-1]))
    tilt = RewardTilt(reward, float(beta), schedule, grad=grad, nfe=reward_nfe)
    return WeightedSDE([model], [1.0], zeta=zeta, grid=g, tilt=tilt, **kwargs)
