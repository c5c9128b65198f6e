"""Stochastic samplers of the reverse-time SDE, each step a Gaussian transition.

Every step returns ``x_next ~ N(mean, std^2 I)`` (:class:`~smcdiff.diffusion.solvers.base.
Transition`), so ``log q(x_next | x)`` is available for SMC weights
(:func:`~smcdiff.diffusion.solvers.base.log_transition_density`); the noise comes from an
injectable noise sampler (:mod:`smcdiff.diffusion.solvers.noise`).

Reverse SDE family (Song et al. 2021, arXiv 2011.13456; Karras et al. 2022, Eq. 6): for
any ``eta >= 0`` the SDE

    dx = [f(t) x - (1 + eta^2)/2 g(t)^2 grad log p_t(x)] dt + eta g(t) dW_bar,   t: 1 -> 0,

has the marginals ``p_t`` of the forward process ``dx = f x dt + g dW``; ``eta = 0`` is the
probability-flow ODE and ``eta = 1`` the reverse SDE of Anderson (1982).

In log-SNR form (data prediction, ``h = lambda_t - lambda_s``) the reverse SDE with
``eta = 1`` integrates exactly to (Lu et al. 2022, arXiv 2211.01095, §4)

    x_t = (sigma_t/sigma_s) e^{-h} x_s + 2 alpha_t int e^{-2(lambda_t - lambda)} D dlambda
          + sigma_t sqrt(1 - e^{-2h}) z,

which with ``D = D_s`` is the DDPM posterior step; k-diffusion's ``eta`` interpolates the
exponents (``h -> (1 + eta) h`` in the data term, noise ``sigma_t sqrt(1 - e^{-2 eta h})``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from smcdiff.diffusion.solvers.base import (
    Evaluator,
    History,
    Solver,
    SolverGrid,
    Transition,
    cast,
    eps_from_x0,
    zero_std,
)

__all__ = ["DDPM", "EulerMaruyama", "SDEDPMSolverPP1", "SDEDPMSolverPP2M"]


def _check_eta(eta: float, upper: float | None = None) -> None:
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not eta >= 0:
        raise ValueError(f"eta must be a number >= 0, got {eta!r}")
    if upper is not None and eta > upper:
        raise ValueError(f"eta must be in [0, {upper}], got {eta!r}")


@dataclass(frozen=True)
class EulerMaruyama(Solver):
    """Euler-Maruyama for the reverse SDE with noise level ``eta`` (weak order 1, 1 NFE/step).

    From ``s`` to ``t < s``: ``mean = x + (t - s)[f(s) x - (1 + eta^2)/2 g(s)^2 score(x, s)]``,
    ``std = eta g(s) sqrt(s - t)``. ``eta = 0`` is Euler for the probability-flow ODE in
    ``t``; ``eta = 1`` the classic reverse-SDE sampler (Song et al. 2021, "predictor" of PC
    sampling). Needs ``alpha > 0`` at the start of every step (``f = alpha'/alpha``). The
    step to ``sigma = 0`` is the denoise ``alpha_t D`` with ``std = 0``, as for every solver.
    """

    eta: float = 1.0
    name: ClassVar[str] = "euler-maruyama"
    order = 1
    nfe_per_step = 1
    stochastic: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _check_eta(self.eta)

    def _step(self, ev: Evaluator, x: Tensor, history: History, i: int, g: SolverGrid):
        if g.from_noise(i):
            raise ValueError(
                f"EulerMaruyama step {i} starts at alpha = 0 where the drift f = alpha'/alpha is "
                "infinite; start the grid at process.t_max (< 1 for interpolants)"
            )
        s, t = i, i + 1
        if g.denoise(i):
            D = ev.at(x, g, s, "x0")
            return Transition(cast(g.alpha[t], x) * D, zero_std(x), history)
        proc = g.process
        ts = g.t[s]
        f = torch.as_tensor(proc.drift_coef(ts), dtype=torch.float64)
        g2 = torch.as_tensor(proc.diffusion_sq(ts), dtype=torch.float64)
        dt = g.t[t] - ts
        score = ev.at(x, g, s, "score")
        mean = x + cast(dt * f, x) * x - cast(dt * 0.5 * (1 + self.eta**2) * g2, x) * score
        std = cast(self.eta * torch.sqrt(g2 * (-dt)), x)
        return Transition(mean, std, history)


@dataclass(frozen=True)
class DDPM(Solver):
    """DDPM ancestral sampling / stochastic DDIM with ``eta`` in ``[0, 1]`` (1 NFE/step).

    Song et al. 2020 (arXiv 2010.02502, Eq. 12), Ho et al. 2020: with ``D = x0_hat(x_s)``,
    ``eps = (x_s - alpha_s D)/sigma_s`` and ``c = eta sigma_t sqrt(1 - e^{-2h})``,

        mean = alpha_t D + sqrt(sigma_t^2 - c^2) eps,   std = c.

    ``eta = 1`` (default) is the DDPM posterior ``q(x_t | x_s, x0 = D)`` and equals
    :class:`SDEDPMSolverPP1` at ``eta = 1``; ``eta = 0`` is DDIM. Weak order 1. The last
    step to ``t = 0`` is the denoise ``alpha_t D`` with ``std = 0``.
    """

    eta: float = 1.0
    name: ClassVar[str] = "ddpm"
    order = 1
    nfe_per_step = 1
    stochastic: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _check_eta(self.eta, 1.0)

    def _step(self, ev: Evaluator, x: Tensor, history: History, i: int, g: SolverGrid):
        s, t = i, i + 1
        D = ev.at(x, g, s, "x0")
        if g.denoise(i):
            return Transition(cast(g.alpha[t], x) * D, zero_std(x), history)
        e2h = torch.exp(-2 * g.h(i))  # 0 when alpha_s = 0
        keep = g.sigma[t] * torch.sqrt((1 - self.eta**2) + self.eta**2 * e2h)
        c = self.eta * g.sigma[t] * torch.sqrt(-torch.expm1(-2 * g.h(i)))
        eps = eps_from_x0(g, s, x, D)
        mean = cast(g.alpha[t], x) * D + cast(keep, x) * eps
        return Transition(mean, cast(c, x), history)


def _sde_dpmpp1(g: SolverGrid, i: int, x: Tensor, D: Tensor, eta: float) -> tuple[Tensor, Tensor]:
    """First-order SDE-DPM-Solver++ mean and std (non-denoise step)."""
    s, t = i, i + 1
    h = g.h(i)
    if eta == 0:  # DDIM; avoids 0 * inf when alpha_s = 0
        ratio = g.sigma[t] / g.sigma[s]
        coef = -g.alpha[t] * torch.expm1(-h)
        return cast(ratio, x) * x + cast(coef, x) * D, zero_std(x)
    ratio = g.sigma[t] / g.sigma[s] * torch.exp(-eta * h)
    coef = -g.alpha[t] * torch.expm1(-(1 + eta) * h)
    std = g.sigma[t] * torch.sqrt(-torch.expm1(-2 * eta * h))
    return cast(ratio, x) * x + cast(coef, x) * D, cast(std, x)


@dataclass(frozen=True)
class SDEDPMSolverPP1(Solver):
    """SDE-DPM-Solver++1 (Lu et al. 2022, arXiv 2211.01095; k-diffusion ``eta``), 1 NFE/step.

    ``mean = (sigma_t/sigma_s) e^{-eta h} x_s + alpha_t (1 - e^{-(1+eta) h}) D_s``,
    ``std = sigma_t sqrt(1 - e^{-2 eta h})``. ``eta = 1``: the DDPM posterior step
    (= :class:`DDPM`); ``eta = 0``: DDIM. Weak order 1.
    """

    eta: float = 1.0
    name: ClassVar[str] = "sde-dpmsolver++1"
    order = 1
    nfe_per_step = 1
    stochastic: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _check_eta(self.eta)

    def _step(self, ev: Evaluator, x: Tensor, history: History, i: int, g: SolverGrid):
        D = ev.at(x, g, i, "x0")
        if g.denoise(i):
            return Transition(cast(g.alpha[i + 1], x) * D, zero_std(x), history)
        mean, std = _sde_dpmpp1(g, i, x, D, self.eta)
        return Transition(mean, std, history)


@dataclass(frozen=True)
class SDEDPMSolverPP2M(Solver):
    """SDE-DPM-Solver++(2M) (Lu et al. 2022, arXiv 2211.01095; k-diffusion
    ``sample_dpmpp_2m_sde``), 1 NFE/step.

    The first-order step of :class:`SDEDPMSolverPP1` plus, with ``D1 = (D_s - D_{s-1})/r``,
    ``r = h_prev/h`` and ``e = 1 - e^{-(1+eta) h}``: ``+ (1/2) alpha_t e D1`` (``"midpoint"``)
    or ``+ alpha_t (e/(-(1+eta) h) + 1) D1`` (``"heun"``). At ``eta = 0`` it is
    DPM-Solver++(2M). Weak order 2: on Gaussian data the exact law of the sampler
    (``tests/diffusion/test_sde.py``) has covariance error slope ~2.0 against NFE (VP, logSNR
    grid), versus ~1.0 for :class:`SDEDPMSolverPP1`, :class:`DDPM` and :class:`EulerMaruyama`.
    History: ``outputs = (D_{i-1},)``.
    """

    eta: float = 1.0
    solver_type: str = "midpoint"
    name: ClassVar[str] = "sde-dpmsolver++2m"
    order = 2
    nfe_per_step = 1
    stochastic: ClassVar[bool] = True
    needs_history: ClassVar[bool] = True
    history_kind: ClassVar[str] = "x0"

    def __post_init__(self) -> None:
        _check_eta(self.eta)
        if self.solver_type not in ("midpoint", "heun"):
            raise ValueError(f"solver_type must be 'midpoint' or 'heun', got {self.solver_type!r}")

    @property
    def max_step_order(self) -> int:
        return 2

    def history_size(self) -> int:
        return 1

    def _step(self, ev: Evaluator, x: Tensor, history: History, i: int, g: SolverGrid):
        s, t = i, i + 1
        D = ev.at(x, g, s, "x0")
        new = self._push(history, D)
        if g.denoise(i):
            return Transition(cast(g.alpha[t], x) * D, zero_std(x), new)
        mean, std = _sde_dpmpp1(g, i, x, D, self.eta)
        p = self.step_order(i, g, g.usable(i, len(history.outputs)))
        if p == 2:
            h = g.h(i)
            r = (g.lam[s] - g.lam[s - 1]) / h
            D1 = (D - history.outputs[0]) / cast(r, x)
            e = -torch.expm1(-(1 + self.eta) * h)
            if self.solver_type == "midpoint":
                coef = 0.5 * g.alpha[t] * e
            else:
                coef = g.alpha[t] * (e / (-(1 + self.eta) * h) + 1)
            mean = mean + cast(coef, x) * D1
        return Transition(mean, std, new)
