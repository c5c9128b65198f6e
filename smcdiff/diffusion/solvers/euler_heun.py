"""Euler and Heun (EDM) steps for the probability-flow ODE.

Two integration variables (``space``):

- ``"t"`` (default): the ODE in the process's own time, ``dx/dt = u(x, t)`` with the PF-ODE
  velocity ``u = alpha' x0_hat + sigma' eps_hat``: Karras et al. 2022 (EDM, arXiv
  2206.00364), Alg. 1 with the process's ``s(t) = alpha``, ``sigma(t)/s(t)``; for the EDM
  process (``alpha = 1``, ``sigma = sigma_max t``) exactly EDM's sampler in ``sigma``, and
  for flows the usual flow-matching Euler / Heun (for the linear interpolant Euler in ``t``
  equals DDIM).
- ``"rho"``: EDM's reparametrization ``sigma(t) = t``, ``s(t) = 1`` applied to
  ``y = x/alpha``, ``rho = sigma/alpha``: ``dy/drho = eps_hat(alpha y, t)``; Euler in
  ``rho`` equals DDIM (Song et al. 2020) for every process.

Heun: ``d = f(x_s)``, ``x' = x_s + dt d``, ``d' = f(x', t)``, ``x_t = x_s + dt (d + d')/2``
(2 NFE). A step ending at ``sigma = 0`` is the denoise ``x_t = alpha_t D(x_s)`` (1 NFE): EDM
Alg. 1 takes an Euler step there, which *is* the denoise when ``sigma`` is linear in ``t``
near 0 (EDM, flows); for VP, Euler in ``t`` to 0 would leave ``sigma_s/2`` of the noise
because ``sigma ~ sqrt(t)``. In ``rho`` space a step starting at ``alpha = 0``
(``rho = inf``) is the DDIM step.

Measured on the 2-D GMM of ``tests/diffusion/test_sample.py`` (VP, logSNR grid): at NFE 10,
Heun in ``rho`` is several times *worse* than DDIM (trapezoid over steps of ~2.4 in
``lambda``), Heun in ``t`` about half the DDIM error; hence the default ``space="t"``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from smcdiff.diffusion.solvers.base import (
    Evaluator,
    History,
    Solver,
    SolverGrid,
    Transition,
    cast,
    ddim_data,
    eps_from_x0,
    zero_std,
)

__all__ = ["Euler", "Heun"]

_SPACES = ("rho", "t")


def _check_space(space: str) -> None:
    if space not in _SPACES:
        raise ValueError(f"space must be one of {_SPACES}, got {space!r}")


@dataclass(frozen=True)
class Euler(Solver):
    """Euler's method for the probability-flow ODE (order 1, 1 NFE/step).

    ``space="t"``: ``x_t = x_s + (t - s) u(x_s, s)``. ``space="rho"``:
    ``x_t = alpha_t D_s + sigma_t eps_hat_s`` (= DDIM; k-diffusion ``sample_euler`` for
    ``alpha = 1``). The step to ``sigma = 0`` is the denoise ``alpha_t D``.
    """

    space: str = "t"
    name: ClassVar[str] = "euler"
    order = 1
    nfe_per_step = 1

    def __post_init__(self) -> None:
        _check_space(self.space)

    def _step(self, ev: Evaluator, x: Tensor, history: History, i: int, g: SolverGrid):
        s, t = i, i + 1
        if self.space == "rho" or g.denoise(i):
            D = ev.at(x, g, s, "x0")
            return Transition(ddim_data(g, i, x, D), zero_std(x), history)
        u = ev.at(x, g, s, "velocity")
        return Transition(x + cast(g.t[t] - g.t[s], x) * u, zero_std(x), history)


@dataclass(frozen=True)
class Heun(Solver):
    """Heun's method (explicit trapezoid), EDM's deterministic sampler (order 2, 2 NFE/step).

    ``space="t"`` (Karras et al. 2022, Alg. 1 on the process's schedule): trapezoid on the
    velocity ``u``. ``space="rho"``: with ``x' = alpha_t D_s + sigma_t eps_s`` (the Euler /
    DDIM step) and ``eps' = eps_hat(x', t)``, ``x_t = x' + (1/2) alpha_t (rho_t - rho_s)
    (eps' - eps_s)``, ``alpha_t (rho_t - rho_s) = -sigma_t expm1(h)``. The last step to
    ``sigma = 0`` is the denoise ``alpha_t D`` (1 NFE).
    """

    space: str = "t"
    name: ClassVar[str] = "heun"
    order = 2
    nfe_per_step = 2

    def __post_init__(self) -> None:
        _check_space(self.space)

    def _step(self, ev: Evaluator, x: Tensor, history: History, i: int, g: SolverGrid):
        s, t = i, i + 1
        if self.space == "rho":
            D = ev.at(x, g, s, "x0")
            x1 = ddim_data(g, i, x, D)
            if g.edge(i):
                return Transition(x1, zero_std(x), history)
            eps_s = eps_from_x0(g, s, x, D)
            eps_1 = eps_from_x0(g, t, x1, ev.at(x1, g, t, "x0"))
            coef = -0.5 * g.sigma[t] * (g.h(i)).expm1()
            return Transition(x1 + cast(coef, x) * (eps_1 - eps_s), zero_std(x), history)
        if g.denoise(i):
            D = ev.at(x, g, s, "x0")
            return Transition(ddim_data(g, i, x, D), zero_std(x), history)
        dt = cast(g.t[t] - g.t[s], x)
        u = ev.at(x, g, s, "velocity")
        u1 = ev.at(x + dt * u, g, t, "velocity")
        return Transition(x + 0.5 * dt * (u + u1), zero_std(x), history)

    def _edge(self, i: int, g: SolverGrid) -> bool:
        return g.edge(i) if self.space == "rho" else g.denoise(i)

    def step_nfe(self, i: int, g: SolverGrid) -> int:
        return 1 if self._edge(i, g) else 2

    def step_order(self, i: int, g: SolverGrid, n_usable: int) -> int:
        return 1 if self._edge(i, g) else 2
