"""DEIS multistep (exponential Adams-Bashforth in log rho), noise prediction.

Zhang & Chen 2023, arXiv 2204.13902 (DEIS); the variant implemented here is the one of
diffusers' ``DEISMultistepScheduler`` (``algorithm_type="deis"``, solvers note §1): with
``y = x/alpha`` and ``rho = sigma/alpha = e^{-lambda}`` the PF-ODE is ``dy/drho = eps_hat``,
so

    y_t = y_s + int_{rho_s}^{rho_t} eps_hat drho,

and AB-r replaces ``eps_hat`` by the Lagrange polynomial in ``log rho`` through the last r
outputs (at ``log rho_s, log rho_{s-1}, ...``) and integrates it *exactly* in ``rho``.
With ``w = log rho - log rho_s`` (nodes ``w_j = lambda_s - lambda_{s-j} >= 0``,
end point ``H = -h``)::

    x_t = (alpha_t/alpha_s) x_s + alpha_t rho_s sum_j eps_{s-j} int_0^H l_j(w) e^w dw,
    int_0^H w^k e^w dw = k! H^{k+1} e^H phi_{k+1}(-H)

(``phi_k`` from :func:`~smcdiff.diffusion.solvers.base.phi_functions`, exact and stable
for small ``h``). Order r (AB-1 = DDIM). This is the "logρ" exponential-AB form, not the
``tAB`` (Lagrange in ``t``, quadrature) or ``rhoAB`` (Lagrange in ``rho``) variants of the
DEIS repository. Warm-up with orders 1, ..., r-1.
History: ``outputs = (eps_{i-1}, ..., eps_{i-r+1})``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from smcdiff.diffusion.solvers.base import (
    Evaluator,
    History,
    Scalar,
    Solver,
    SolverGrid,
    Transition,
    ddim_eps,
    edge_step,
    exp,
    lincomb,
    phis,
    zero_std,
)

__all__ = ["DEIS"]


def _exp_moments(h: Scalar, K: int) -> list[Scalar]:
    """``[int_0^{-h} w^k e^w dw for k < K]`` (float64; floats on a shared grid)."""
    H = -h
    ph = phis(h, K)  # phi_{k+1}(-H) = phi_{k+1}(h)
    eH = exp(H)
    return [math.factorial(k) * H ** (k + 1) * eH * ph[k] for k in range(K)]


def _lagrange_integrals(h: Scalar, nodes: list[Scalar]) -> list[Scalar]:
    """``int_0^{-h} l_j(w) e^w dw`` for the Lagrange basis on ``nodes`` (first node 0)."""
    n = len(nodes)
    I = _exp_moments(h, n)
    if n == 1:
        return [I[0]]
    if n == 2:
        w1 = nodes[1]
        return [I[0] - I[1] / w1, I[1] / w1]
    w1, w2 = nodes[1], nodes[2]
    c0 = (I[2] - (w1 + w2) * I[1] + w1 * w2 * I[0]) / (w1 * w2)
    c1 = (I[2] - w2 * I[1]) / (w1 * (w1 - w2))
    c2 = (I[2] - w1 * I[1]) / (w2 * (w2 - w1))
    return [c0, c1, c2]


@dataclass(frozen=True)
class DEIS(Solver):
    """DEIS multistep of order r = 1, 2, 3 (log-rho exponential Adams-Bashforth); 1 NFE/step."""

    order: int = 3
    lower_order_final: bool = False
    name: ClassVar[str] = "deis"
    nfe_per_step = 1
    needs_history: ClassVar[bool] = True
    history_kind: ClassVar[str] = "eps"

    def __post_init__(self) -> None:
        if self.order not in (1, 2, 3):
            raise ValueError(f"DEIS order must be 1, 2 or 3, got {self.order!r}")

    def history_size(self) -> int:
        return self.order - 1

    def _step(self, ev: Evaluator, x: Tensor, history: History, i: int, g: SolverGrid):
        if g.edge(i):
            return edge_step(self, ev, x, history, i, g)
        eps_s = ev.at(x, g, i, "eps")
        p = self.step_order(i, g, g.usable(i, len(history.outputs)))
        if p == 1:
            x_t = ddim_eps(g, i, x, eps_s)
        else:
            c = _deis_coefficients(g, i, p)
            eps = (eps_s,) + history.outputs[: p - 1]
            x_t = lincomb(g, x, [(c[0], x)] + list(zip(c[1:], eps)))
        return Transition(x_t, zero_std(x), self._push(history, eps_s))


def _deis_coefficients(g: SolverGrid, i: int, p: int) -> tuple[Scalar, ...]:
    """Weights of ``(x_s, eps_s, eps_{s-1}, ...)`` in the AB-``p`` step ``i`` (module
    docstring): ``alpha_t/alpha_s`` and ``alpha_t rho_s int_0^{-h} l_j(w) e^w dw``; once per
    grid."""
    key = ("deis", i, p)
    c = g._cache.get(key)
    if c is None:
        a, sg, lam = g.values()
        s, t = i, i + 1
        h = lam[t] - lam[s]
        nodes = [0.0] + [lam[s] - lam[s - j] for j in range(1, p)]
        pre = a[t] * sg[s] / a[s]
        c = g._cache[key] = (a[t] / a[s], *(pre * w for w in _lagrange_integrals(h, nodes)))
    return c
