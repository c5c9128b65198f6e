"""UniPC: unified predictor-corrector for the probability-flow ODE (data prediction).

Zhao et al. 2023, arXiv 2302.04867 (``multistep_uni_pc_bh_update``); solvers note §1.
A step from ``s`` to ``t`` (``h = lambda_t - lambda_s``, ``hh = -h``) with past data
predictions ``D_{s_m}`` at ``lambda_{s_m}`` (``m = 1..p-1``, ``r_m = (lambda_{s_m} -
lambda_s)/h < 0``, ``D_m = (D_{s_m} - D_s)/r_m``):

    x~ = (sigma_t/sigma_s) x_s - alpha_t expm1(hh) D_s
    UniP-p:  x_t^p = x~ - alpha_t B(h) sum_{m<p} a_m D_m,              a = R_{p-1}^{-1} b
    UniC-p:  x_t^c = x~ - alpha_t B(h) (sum_{m<p} a^c_m D_m + a^c_p (D(x_t^p) - D_s)),
             a^c = R_p^{-1} b (with r_p = 1),

``B(h) = hh`` (``variant="bh1"``) or ``expm1(hh)`` (``"bh2"``), ``b_k = k! psi_{k+1}/B(h)``,
``psi_k = hh phi_k(hh)``, ``R_{kj} = r_j^{k-1}``; the published code fixes ``a = 1/2`` for
``p = 2`` (predictor) and ``a^c = 1/2`` for ``p = 1`` (corrector), which is where bh1 and
bh2 differ (elsewhere ``B`` cancels). ``D(x_t^p)`` is evaluated at the *uncorrected*
point and reused as the next step's ``D_s``, so the corrector costs no extra NFE; the
correction of the step into ``t`` therefore happens at the start of the next step, and
the last step (whose output is never evaluated) is not corrected. Orders: UniP-p is p,
UniPC-p is p + 1. Warm-up: step ``i`` uses order ``min(p, i + 1)``; steps touching
``t = 0`` or ``alpha = 0`` are first order (:mod:`smcdiff.diffusion.solvers.base`).

History: ``outputs = (D_{i-1}, ..., D_{i-p})`` and ``x_prev = (x^c_{i-1},)`` (the corrected
state the step into ``i`` started from).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from smcdiff.diffusion.solvers.base import (
    Evaluator,
    History,
    Scalar,
    Solver,
    SolverGrid,
    Transition,
    ddim_data,
    expm1,
    lincomb,
    phis,
    zero_std,
)

__all__ = ["UniPC"]


def _solve(R: list[list[Scalar]], b: list[Scalar]) -> list[Scalar]:
    """``R a = b`` for a small system: Gaussian elimination with partial pivoting on floats,
    ``torch.linalg.solve`` (batched over ``[*tshape]``) on tensors."""
    n = len(b)
    vals = [v for row in R for v in row] + list(b)
    ref = next((v for v in vals if isinstance(v, Tensor)), None)
    if ref is not None:

        def full(v: Scalar) -> Tensor:
            return torch.as_tensor(v, dtype=torch.float64, device=ref.device).expand(ref.shape)

        A = torch.stack([torch.stack([full(v) for v in row], -1) for row in R], -2)
        sol = torch.linalg.solve(A, torch.stack([full(v) for v in b], -1))
        return list(sol.unbind(-1))
    M = [[float(v) for v in row] + [float(b[k])] for k, row in enumerate(R)]
    for col in range(n):
        piv = max(range(col, n), key=lambda r: abs(M[r][col]))
        M[col], M[piv] = M[piv], M[col]
        for r in range(col + 1, n):
            f = M[r][col] / M[col][col]
            M[r] = [M[r][k] - f * M[col][k] for k in range(n + 1)]
    out: list[Scalar] = [0.0] * n
    for r in range(n - 1, -1, -1):
        out[r] = (M[r][n] - sum(M[r][k] * out[k] for k in range(r + 1, n))) / M[r][r]
    return out


def _coefficients(g: SolverGrid, j: int, n_past: int, with_corrector: bool, variant: str):
    """``(B(h), rhos, rks)`` for step ``j`` with ``n_past`` history differences (float64;
    floats on a shared grid), computed once per grid.

    Predictor (``with_corrector=False``): ``rhos`` has ``n_past`` entries solving
    ``R[:-1, :-1] a = b[:-1]`` (or ``1/2`` when ``n_past = 1``). Corrector: ``n_past + 1``
    entries solving ``R a = b`` (or ``1/2`` when ``n_past = 0``).
    """
    key = ("unipc", j, n_past, with_corrector, variant)
    c = g._cache.get(key)
    if c is not None:
        return c
    _, _, lam = g.values()
    h = lam[j + 1] - lam[j]
    hh = -h
    B = hh if variant == "bh1" else expm1(hh)
    rks = [(lam[j - m] - lam[j]) / h for m in range(1, n_past + 1)]
    n = n_past + 1  # rows of the full system (r_p := 1 appended)
    ks = rks + [1.0]
    ph = g._cache.get(("unipc-phi", j))  # shared by the predictor and the corrector
    if ph is None:
        ph = g._cache[("unipc-phi", j)] = phis(hh, 4)  # n + 1 <= 4
    b = [math.factorial(k) * hh * ph[k] / B for k in range(1, n + 1)]
    R = [[r**k for r in ks] for k in range(n)]  # R[k][j] = r_j^k
    if with_corrector:
        rhos = [0.5] if n == 1 else _solve(R, b)
    elif n_past == 0:
        rhos = []
    elif n_past == 1:
        rhos = [0.5]
    else:
        rhos = _solve([row[:-1] for row in R[:-1]], b[:-1])
    c = g._cache[key] = (B, rhos, rks)
    return c


def _update_weights(g: SolverGrid, j: int, n_past: int, with_corrector: bool,
                    variant: str) -> tuple[Scalar, ...]:
    """Weights of ``(x, D_s, Delta_1, ..., Delta_k)`` in a UniP/UniC update of step ``j``:
    ``ddim(x, D_s) - alpha_t B sum_m rho_m Delta_m / r_m`` with ``Delta_m = D_{s_m} - D_s``
    (``r = 1`` for the corrector's ``D(x_t) - D_s``)."""
    key = ("unipc-w", j, n_past, with_corrector, variant)
    w = g._cache.get(key)
    if w is not None:
        return w
    a, sg, lam = g.values()
    s, t = j, j + 1
    ratio = sg[t] / sg[s]
    cD = -a[t] * expm1(-(lam[t] - lam[s]))
    B, rhos, rks = _coefficients(g, j, n_past, with_corrector, variant)
    f = -(a[t] * B)
    rs = rks + ([1.0] if with_corrector else [])
    w = g._cache[key] = (ratio, cD, *(f * rho / r for rho, r in zip(rhos, rs)))
    return w


@dataclass(frozen=True)
class UniPC(Solver):
    """UniPC-p (predictor UniP-p + corrector UniC), data prediction; 1 NFE per step.

    Args:
        p: predictor order (1, 2 or 3); with ``corrector=True`` the method has order p + 1.
        variant: ``"bh1"`` or ``"bh2"`` (``B(h) = -h`` or ``expm1(-h)``; the paper recommends
            bh1 for unconditional sampling with very few steps and bh2 otherwise; diffusers
            defaults to bh2 and documents bh1 "for unconditional sampling when steps < 10";
            the authors' CIFAR-10 (continuous VP) script runs bh1 with p = 3 on a logSNR
            grid with ``lower_order_final``). Not chosen automatically: on the exact GMM
            testbed bh1 with p = 2 is worse than bh2 at every NFE from 5 to 20.
        corrector: apply UniC (no extra NFE); ``False`` gives UniP-p (order p).
        lower_order_final: cap the order at step ``i`` by ``num_steps - i`` (the final
            denoise step counts, as in diffusers with ``final_sigmas_type="zero"``).

    bh1 with p = 2 at low NFE (measured, ``tests/diffusion/test_sample.py``: 2-D
    three-component GMM, VP, logSNR grid with the final denoise step, mean distance to a
    float64 PF-ODE reference). For p = 2 the two variants differ only in the predictor's
    hard-coded ``a = 1/2``: its ``D1`` coefficient is ``-alpha_t B(h)/2``, i.e.
    ``(1 - e^{-h})/2`` (bh2, = DPM-Solver++(2M)) or ``h/2`` (bh1), against ``(e^{-h} - 1 +
    h)/h`` for the exact integral of the linear interpolant. At NFE 10 (``h = 1.065``) these
    are 0.328 (bh2, 15% low), 0.532 (bh1, 38% high) and 0.385: bh1's extrapolation overshoots,
    and UniPC-2 bh1 ends at 1.08x DDIM's error (bh2: 0.36x); 1.20x, 1.04x and 0.96x on an
    8-Gaussian ring and two random 4-component GMMs. ``lower_order_final`` does not help
    on the logSNR grid (1.08x; 1.04x when only the steps before the denoise step count).
    From NFE 12 on bh1-2 beats DDIM (0.57x at 12, 0.14x at 20). This is the method as
    published (bh1 is meant for p = 3 at < 10 steps, where bh1 = bh2 up to the warm-up),
    so it is left as is; use bh2 for p = 2.
    """

    p: int = 2
    variant: str = "bh2"
    corrector: bool = True
    lower_order_final: bool = False
    name: ClassVar[str] = "unipc"
    nfe_per_step = 1
    needs_history: ClassVar[bool] = True
    history_kind: ClassVar[str] = "x0"

    def __post_init__(self) -> None:
        if self.p not in (1, 2, 3):
            raise ValueError(f"UniPC predictor order p must be 1, 2 or 3, got {self.p!r}")
        if self.variant not in ("bh1", "bh2"):
            raise ValueError(f"variant must be 'bh1' or 'bh2', got {self.variant!r}")

    @property
    def order(self) -> int:  # type: ignore[override]
        return self.p + int(self.corrector)

    @property
    def max_step_order(self) -> int:
        return self.p

    def history_size(self) -> int:
        return self.p if self.corrector else self.p - 1

    def _step(self, ev: Evaluator, x: Tensor, history: History, i: int, g: SolverGrid):
        D_s = ev.at(x, g, i, "x0")
        n_use = g.usable(i, len(history.outputs))
        x_s = x
        if self.corrector and history.x_prev and n_use >= 1 and not g.denoise(i):
            q = self.step_order(i - 1, g, n_use - 1)
            x_s = self._correct(g, i - 1, history.x_prev[0], D_s, history.outputs, q)
        if g.edge(i):
            x_next = ddim_data(g, i, x_s, D_s)
        else:
            p = self.step_order(i, g, n_use)
            x_next = self._predict(g, i, x_s, D_s, history.outputs, p)
        k = self.history_size()
        new = History(((D_s,) + history.outputs)[:k], (x_s,) if self.corrector else ())
        return Transition(x_next, zero_std(x), new)

    def _predict(self, g: SolverGrid, i: int, x: Tensor, D_s: Tensor,
                 past: tuple[Tensor, ...], p: int) -> Tensor:
        if p == 1:
            return ddim_data(g, i, x, D_s)
        w = _update_weights(g, i, p - 1, False, self.variant)
        terms = [(w[0], x), (w[1], D_s)]
        terms += [(w[2 + m], past[m] - D_s) for m in range(p - 1)]
        return lincomb(g, x, terms)

    def _correct(self, g: SolverGrid, j: int, x_prev: Tensor, D_new: Tensor,
                 past: tuple[Tensor, ...], q: int) -> Tensor:
        """Corrected state at point ``j + 1`` for the step ``j -> j + 1`` of order ``q``."""
        D_s = past[0]
        w = _update_weights(g, j, q - 1, True, self.variant)
        terms = [(w[0], x_prev), (w[1], D_s)]
        terms += [(w[2 + m], past[m + 1] - D_s) for m in range(q - 1)]
        terms.append((w[1 + q], D_new - D_s))
        return lincomb(g, x_prev, terms)
