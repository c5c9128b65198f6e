"""DDIM, DPM-Solver (singlestep, noise prediction) and DPM-Solver++ (data prediction).

Exponential integrators of the probability-flow ODE written in the half log-SNR
``lambda = log(alpha/sigma)``: with ``h = lambda_t - lambda_s``, the exact solution is
(Lu et al. 2022, arXiv 2206.00927, Eq. 3.4; arXiv 2211.01095, Eq. 8)

    x_t = (alpha_t/alpha_s) x_s - alpha_t int_{lambda_s}^{lambda_t} e^{-lambda} eps_hat dlambda
        = (sigma_t/sigma_s) x_s + sigma_t int_{lambda_s}^{lambda_t} e^{lambda} D dlambda,

and a method of order k replaces ``eps_hat`` (or ``D``) by a polynomial in ``lambda`` and
integrates it exactly. ``phi_1 = expm1(-h)``, ``phi_2 = phi_1/h + 1``, ``phi_3 = phi_2/h - 1/2``
(solvers note §0). All coefficients are float64; ``expm1`` throughout. Steps that touch
``sigma = 0`` or ``alpha = 0`` are first order (:mod:`smcdiff.diffusion.solvers.base`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import torch
from torch import Tensor

from smcdiff.diffusion.processes import NoiseProcess
from smcdiff.diffusion.solvers.base import (
    Evaluator,
    History,
    NFETooSmallError,
    Scalar,
    Solver,
    SolverGrid,
    Transition,
    cast,
    ddim_data,
    ddim_eps,
    edge_step,
    expm1,
    lincomb,
    phi_functions,
    prepare_grid,
    zero_std,
)

__all__ = [
    "DDIM",
    "EXACT_SPAN",
    "MAX_STEP_RATIO",
    "DPMSolver",
    "DPMSolverPP2M",
    "DPMSolverPP2S",
    "DPMSolverPP3M",
    "fast_orders",
]


def _intermediate(g: SolverGrid, i: int, r: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The time at ``lambda_s + r h`` and its float64 ``(t, alpha, sigma, h_r)`` where
    ``h_r = lambda(t) - lambda_s`` is recomputed from the inverted time."""
    proc = g.process
    lam = g.lam[i] + r * g.h(i)
    tm = torch.as_tensor(proc.t_of_log_snr(lam), dtype=torch.float64).clamp(0.0, 1.0)
    a = torch.as_tensor(proc.alpha(tm), dtype=torch.float64)
    sg = torch.as_tensor(proc.sigma(tm), dtype=torch.float64)
    h_r = torch.as_tensor(proc.log_snr(tm), dtype=torch.float64) - g.lam[i]
    return tm, a, sg, h_r


@dataclass(frozen=True)
class DDIM(Solver):
    """DDIM (Song et al. 2020, arXiv 2010.02502), deterministic (eta = 0).

    ``x_t = (sigma_t/sigma_s) x_s - alpha_t expm1(-h) D_s``; identical (to round-off) to
    DPM-Solver-1, DPM-Solver++1, UniP-1, DEIS-1 and Euler in ``rho`` space. Order 1, 1 NFE.
    """

    name: ClassVar[str] = "ddim"
    order = 1
    nfe_per_step = 1

    def _step(self, ev: Evaluator, x: Tensor, history: History, i: int, g: SolverGrid):
        D = ev.at(x, g, i, "x0")
        return Transition(ddim_data(g, i, x, D), zero_std(x), history)


def fast_orders(nfe: int, order: int) -> list[int]:
    """The DPM-Solver-fast split of a budget of ``nfe`` evaluations into per-step orders.

    Lu et al. 2022 (arXiv 2206.00927, "DPM-Solver-fast"; the reference implementation's
    ``get_orders_and_timesteps_for_singlestep_solver``; solvers note §1), with ``K`` steps:

    - ``order = 3``: ``K = nfe // 3 + 1``; ``nfe % 3 == 0``: ``[3]*(K-2) + [2, 1]``;
      ``== 1``: ``[3]*(K-1) + [1]``; ``== 2``: ``[3]*(K-1) + [2]``;
    - ``order = 2``: ``[2]*(nfe // 2)``, plus ``[1]`` when ``nfe`` is odd;
    - ``order = 1``: ``[1]*nfe``.

    The orders sum to ``nfe`` exactly. E.g. ``fast_orders(9, 3) = [3, 3, 2, 1]``.
    """
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
        raise ValueError(f"nfe must be an int >= 1, got {nfe!r}")
    if order == 3:
        K = nfe // 3 + 1
        if nfe % 3 == 0:
            return [3] * (K - 2) + [2, 1]
        return [3] * (K - 1) + ([1] if nfe % 3 == 1 else [2])
    if order == 2:
        return [2] * (nfe // 2) + ([1] if nfe % 2 else [])
    if order == 1:
        return [1] * nfe
    raise ValueError(f"order must be 1, 2 or 3, got {order!r}")


_DPM_SOLVER_TYPES = ("taylor", "dpmsolver")


@dataclass(frozen=True)
class DPMSolver(Solver):
    """Singlestep DPM-Solver-k with noise prediction (Lu et al. 2022, arXiv 2206.00927, Alg. 1-2).

    With ``eps_s = eps_hat(x_s)``, ``s_j`` the times at ``lambda_s + r_j h`` and
    ``x1 = (alpha_t/alpha_s) x_s - sigma_t (e^h - 1) eps_s`` (= DDIM, the whole of k = 1):

    - k = 2 (``r1 = 1/2``): ``u = (alpha_{s1}/alpha_s) x_s - sigma_{s1}(e^{r1 h} - 1) eps_s``,
      ``Delta = eps_hat(u) - eps_s`` and

        ``"taylor"``:    x_t = x1 - (sigma_t/r1) ((e^h - 1)/h - 1) Delta
        ``"dpmsolver"``: x_t = x1 - (sigma_t/(2 r1)) (e^h - 1) Delta;

    - k = 3 (``r1 = 1/3``, ``r2 = 2/3``): ``u1`` as ``u`` above, ``Delta1 = eps_hat(u1) -
      eps_s``, ``u2 = (alpha_{s2}/alpha_s) x_s - sigma_{s2}(e^{r2 h} - 1) eps_s - sigma_{s2}
      (r2/r1) ((e^{r2 h} - 1)/(r2 h) - 1) Delta1``, ``Delta2 = eps_hat(u2) - eps_s``, and

        ``"taylor"``:    x_t = x1 - sigma_t phi2 D1 - sigma_t phi3 D2,
                         D1 = (r2 Delta1/r1 - r1 Delta2/r2)/(r2 - r1),
                         D2 = 2 (Delta2/r2 - Delta1/r1)/(r2 - r1)
        ``"dpmsolver"``: x_t = x1 - (sigma_t/r2) ((e^h - 1)/h - 1) Delta2,

      with ``phi2 = (e^h - 1)/h - 1 = h phi_2(h)``, ``phi3 = phi2/h - 1/2 = h phi_3(h)``
      (``phi_k`` of :func:`~smcdiff.diffusion.solvers.base.phi_functions`, stable at small h).

    Both types are the reference implementation's ``solver_type`` options (diffusers'
    singlestep scheduler calls them ``"heun"`` and ``"midpoint"``) and both have order k.
    ``"taylor"`` (default here) integrates the polynomial through the evaluated ``eps``
    *exactly* against ``e^{-lambda}``: the exact integral of the linear interpolant is
    ``sigma_t (e^h - 1 - h)/h Delta/r1``. ``"dpmsolver"`` (the paper's Alg. 1-2, which the
    authors recommend for image models) replaces ``(e^h - 1 - h)/h`` by ``(e^h - 1)/2``, equal
    to leading order but larger by 21% at ``h = 1``, 58% at ``h = 2.4`` and 85% at ``h = 3.2``:
    the high-order correction overshoots exactly when steps are large, i.e. at low NFE.

    NFE budgets (``sample(..., nfe=n)``, :meth:`grid_for_nfe`): with ``fast=True`` (default)
    the budget is split as in the paper's DPM-Solver-fast (:func:`fast_orders`), the final
    denoise step to ``t = 0`` (``final="zero"``) taking one evaluation: ``n - 1``
    evaluations are split into ``K`` steps of orders ``fast_orders(n - 1, k)`` on a
    ``K``-step grid. For ``kind="logsnr"`` that grid is uniform in ``lambda`` (the paper's
    setting); for other kinds it is the ``(n - 1)``-interval grid of that kind taken at the
    cumulative orders, as in the reference implementation (which also spaces the inner
    points of a step like the grid kind; here they stay at the paper's ``lambda_s + r_j h``,
    which measured slightly better on the GMM below: 0.62 vs 0.66 of DDIM's error for
    k = 2 on a time-uniform grid at NFE 10). Every evaluation of the budget is used. A
    budget whose split never reaches order k is "too small" and raises
    :class:`~smcdiff.diffusion.solvers.NFETooSmallError` (a ``ValueError``; see
    :meth:`~smcdiff.diffusion.solvers.Solver.check_plan`): with the final denoise step
    DPM-Solver-3 needs ``nfe >= 5`` (``[3, 1]`` + denoise; ``nfe = 4`` would give
    ``[2, 1]``) and DPM-Solver-2 ``nfe >= 3``; to ``t_min``, 4 and 2.
    ``fast=False`` spends the budget on fixed order-k steps (the remainder stays unused).

    Measured (``tests/diffusion/test_sample.py``: 2-D three-component GMM, VP, logSNR grid,
    final denoise step, mean distance to a float64 PF-ODE reference; error / DDIM's error at
    the same NFE). NFE 10: the former configuration (``"dpmsolver"``, fixed order: 4 steps
    of ``h = 2.4`` for k = 2, 3 steps of ``h = 3.2`` for k = 3) gave 1.95 (k = 2) and 2.50
    (k = 3), i.e. worse than DDIM; the DPM-Solver-fast split alone 1.84 / 1.36;
    ``"taylor"`` alone 0.57 / 0.51; both (the default) 0.74 / 0.45. NFE 20: 0.74 / 0.46
    before, 0.26 / 0.18 now. Why: a singlestep method spends k evaluations per step, so at
    NFE 10 its steps are 2-3 times longer than DDIM's, and on this target everything
    happens in ``lambda in [-2.6, 2.2]`` where the components separate. One step from the
    exact solution across ``[-2.63, -0.23]`` and ``[-0.23, 2.16]`` (``h = 2.4``) has local
    errors 0.31 and 0.45 for k = 2 ``"dpmsolver"``, 0.10 and 0.16 for ``"taylor"``, against
    0.26 and 0.19 for two DDIM substeps (same NFE); for k = 3: 0.08 and 0.19
    (``"dpmsolver"``), 0.05 and 0.03 (``"taylor"``), against 0.18 and 0.12 for three DDIM
    substeps. The default still loses to DDIM at NFE 10 on one of four 2-D GMMs checked
    (an 8-Gaussian ring, k = 3: 1.36x; k = 2 there: 0.82x) and beats it from NFE 12 on all.

    Explicit orders: ``orders`` (a tuple of 1/2/3, each ``<= order``) gives the order of each
    *regular* step of a run (steps touching ``t = 0`` or ``alpha = 0`` are always first
    order), e.g. ``DPMSolver(order=3, orders=(3, 3, 2, 1))``; its length must equal the
    number of regular steps of the grid. ``orders=None`` with ``num_steps=``/``grid=``: every
    regular step has order k ("singlestep_fixed"). ``r_j`` are recomputed from the times
    actually used (``lambda(t(lambda_s + r_j h))``), so a process with an approximate
    inverse stays consistent. A step of order j costs j NFE (1 on the final step to
    ``t = 0``).
    """

    order: int = 2
    solver_type: str = "taylor"
    fast: bool = True
    orders: tuple[int, ...] | None = None
    name: ClassVar[str] = "dpmsolver"

    def __post_init__(self) -> None:
        if isinstance(self.order, bool) or self.order not in (1, 2, 3):
            raise ValueError(f"DPMSolver order must be 1, 2 or 3, got {self.order!r}")
        if self.solver_type not in _DPM_SOLVER_TYPES:
            raise ValueError(
                f"solver_type must be one of {_DPM_SOLVER_TYPES}, got {self.solver_type!r}"
            )
        if self.orders is not None:
            try:
                orders = tuple(self.orders)
            except TypeError as err:
                raise TypeError(
                    f"orders must be a tuple of ints or None, got {type(self.orders).__name__}"
                ) from err
            bad = [o for o in orders
                   if isinstance(o, bool) or not isinstance(o, int) or not 1 <= o <= self.order]
            if not orders or bad:
                raise ValueError(
                    f"orders must be a non-empty tuple of ints in [1, order={self.order}], got "
                    f"{self.orders!r}"
                )
            object.__setattr__(self, "orders", orders)

    @property
    def nfe_per_step(self) -> int:  # type: ignore[override]
        return self.order

    def _regular_index(self, i: int, g: SolverGrid) -> int:
        """Index of regular step ``i`` among the regular steps (for ``orders``)."""
        n_regular = g.num_steps - int(g.data_end[-1]) - int(g.noise_start[0])
        assert self.orders is not None
        if len(self.orders) != n_regular:
            raise ValueError(
                f"orders has {len(self.orders)} entries but the grid has {n_regular} regular "
                f"step(s) ({g.num_steps} steps, first-order edge steps excluded)"
            )
        return i - int(g.noise_start[0])

    def step_order(self, i: int, g: SolverGrid, n_usable: int) -> int:
        if g.edge(i):
            return 1
        if self.orders is None:
            return self.order
        return self.orders[self._regular_index(i, g)]

    def step_nfe(self, i: int, g: SolverGrid) -> int:
        return self.step_order(i, g, 0)

    def grid_for_nfe(
        self,
        process: NoiseProcess | str,
        nfe: int,
        *,
        kind: str = "logsnr",
        t_start: float | None = None,
        t_end: float | None = None,
        final: str = "zero",
    ) -> tuple[Solver, SolverGrid]:
        """DPM-Solver-fast (``fast=True``, no explicit ``orders``): see the class docstring."""
        if not self.fast or self.orders is not None or self.order == 1:
            return super().grid_for_nfe(process, nfe, kind=kind, t_start=t_start, t_end=t_end,
                                        final=final)
        from smcdiff.diffusion.grids import time_grid

        body = nfe - int(final == "zero")
        if body < 1:
            raise NFETooSmallError(f"nfe={nfe} is too small for {self!r}: it leaves no "
                                   "evaluation for a step before the final denoise step")
        orders = fast_orders(body, self.order)
        K = len(orders)
        if kind == "logsnr":
            grid = time_grid(process, K + int(final == "zero"), kind=kind, t_start=t_start,
                             t_end=t_end, final=final)
        else:
            if final == "zero" and t_end is not None and float(t_end) == 0.0:
                raise ValueError("t_end = 0 with final='zero' would repeat t = 0; use "
                                 "t_end > 0 or final='t_min'")
            base = time_grid(process, body, kind=kind, t_start=t_start, t_end=t_end,
                             final="t_min")
            idx = torch.cumsum(torch.tensor([0] + orders), 0)
            grid = base[idx]
            if final == "zero":
                grid = torch.cat([grid, torch.zeros(1, dtype=grid.dtype)])
        g = prepare_grid(process, grid)
        # steps from alpha = 0 or to sigma = 0 (t_end = 0 with final="t_min") are
        # first-order edge steps costing 1 NFE: they take no entry of ``orders``
        if g.noise_start[0]:
            orders = orders[1:]
        if g.data_end[-1] and final != "zero":
            orders = orders[:-1]
        if not orders:
            raise NFETooSmallError(f"nfe={nfe} is too small for {self!r}")
        return replace(self, orders=tuple(orders)), g

    def _step(self, ev: Evaluator, x: Tensor, history: History, i: int, g: SolverGrid):
        if g.edge(i):
            return edge_step(self, ev, x, history, i, g)
        s, t = i, i + 1
        h = g.h(i)
        order = self.step_order(i, g, 0)
        eps_s = ev.at(x, g, s, "eps")
        x1 = ddim_eps(g, i, x, eps_s)
        if order == 1:
            return Transition(x1, zero_std(x), history)
        taylor = self.solver_type == "taylor"
        if taylor:
            _, phi2, phi3 = phi_functions(h, 3)
            phi2, phi3 = h * phi2, h * phi3  # (e^h - 1)/h - 1 and phi2/h - 1/2, stable
        if order == 2:
            t1, a1, s1, h1 = _intermediate(g, i, 0.5)
            r1 = h1 / h
            u = cast(a1 / g.alpha[s], x) * x - cast(s1 * torch.expm1(h1), x) * eps_s
            d1 = ev(u, t1, "eps") - eps_s
            if taylor:
                coef = -g.sigma[t] * phi2 / r1
            else:
                coef = -g.sigma[t] / (2 * r1) * torch.expm1(h)
            return Transition(x1 + cast(coef, x) * d1, zero_std(x), history)
        t1, a1, s1, h1 = _intermediate(g, i, 1.0 / 3.0)
        t2, a2, s2, h2 = _intermediate(g, i, 2.0 / 3.0)
        r1, r2 = h1 / h, h2 / h
        u1 = cast(a1 / g.alpha[s], x) * x - cast(s1 * torch.expm1(h1), x) * eps_s
        d1 = ev(u1, t1, "eps") - eps_s
        u2 = (cast(a2 / g.alpha[s], x) * x - cast(s2 * torch.expm1(h2), x) * eps_s
              - cast(s2 * (r2 / r1) * (torch.expm1(h2) / h2 - 1), x) * d1)
        d2 = ev(u2, t2, "eps") - eps_s
        if taylor:
            D1_0, D1_1 = d1 / cast(r1, x), d2 / cast(r2, x)
            D1 = (cast(r2, x) * D1_0 - cast(r1, x) * D1_1) / cast(r2 - r1, x)
            D2 = (D1_1 - D1_0) * cast(2 / (r2 - r1), x)
            x_t = x1 - cast(g.sigma[t] * phi2, x) * D1 - cast(g.sigma[t] * phi3, x) * D2
            return Transition(x_t, zero_std(x), history)
        coef = -(g.sigma[t] / r2) * (torch.expm1(h) / h - 1)
        return Transition(x1 + cast(coef, x) * d2, zero_std(x), history)


@dataclass(frozen=True)
class DPMSolverPP2S(Solver):
    """Singlestep DPM-Solver++(2S) with data prediction (Lu et al. 2022, arXiv 2211.01095, Alg. 1).

    ``u = (sigma_{s1}/sigma_s) x_s - alpha_{s1} expm1(-r1 h) D_s`` at ``lambda_s + r1 h``
    (``r1 = 1/2``), ``x_t = (sigma_t/sigma_s) x_s - alpha_t expm1(-h) [(1 - 1/(2 r1)) D_s +
    (1/(2 r1)) D(u)]``. Order 2, 2 NFE per step.
    """

    name: ClassVar[str] = "dpmsolver++2s"
    order = 2
    nfe_per_step = 2
    r1: float = 0.5

    def __post_init__(self) -> None:
        if not 0 < self.r1 < 1:
            raise ValueError(f"r1 must be in (0, 1), got {self.r1!r}")

    def _step(self, ev: Evaluator, x: Tensor, history: History, i: int, g: SolverGrid):
        if g.edge(i):
            return edge_step(self, ev, x, history, i, g)
        s = i
        h = g.h(i)
        D_s = ev.at(x, g, s, "x0")
        t1, a1, s1, h1 = _intermediate(g, i, self.r1)
        r1 = h1 / h
        u = cast(s1 / g.sigma[s], x) * x - cast(a1 * torch.expm1(-h1), x) * D_s
        D_1 = ev(u, t1, "x0")
        w1 = 1 / (2 * r1)
        D = cast(1 - w1, x) * D_s + cast(w1, x) * D_1
        return Transition(ddim_data(g, i, x, D), zero_std(x), history)


def _check_solver_type(solver_type: str) -> None:
    if solver_type not in ("midpoint", "heun"):
        raise ValueError(f"solver_type must be 'midpoint' or 'heun', got {solver_type!r}")


@dataclass(frozen=True)
class DPMSolverPP2M(Solver):
    """Multistep DPM-Solver++(2M) (Lu et al. 2022, arXiv 2211.01095, Alg. 2). Order 2, 1 NFE/step.

    With ``r0 = h_prev/h`` and ``D1 = (D_s - D_{s-1})/r0``:
    ``x_t = (sigma_t/sigma_s) x_s - alpha_t phi_1 D_s - (1/2) alpha_t phi_1 D1``
    (``solver_type="midpoint"``, the published form) or ``... + alpha_t phi_2 D1``
    (``"heun"``: the exact integral of the linear interpolant of ``D`` in ``lambda``).
    The first step (no history) is DDIM. ``lower_order_final``: order at step ``i`` is at
    most ``num_steps - i`` (diffusers' robustness device for < 15 steps; off by default).
    History: ``outputs = (D_{i-1},)``.
    """

    solver_type: str = "midpoint"
    lower_order_final: bool = False
    name: ClassVar[str] = "dpmsolver++2m"
    order = 2
    nfe_per_step = 1
    needs_history: ClassVar[bool] = True
    history_kind: ClassVar[str] = "x0"

    def __post_init__(self) -> None:
        _check_solver_type(self.solver_type)

    def history_size(self) -> int:
        return self.order - 1

    def _step(self, ev: Evaluator, x: Tensor, history: History, i: int, g: SolverGrid):
        if g.edge(i):
            return edge_step(self, ev, x, history, i, g)
        D_s = ev.at(x, g, i, "x0")
        p = self.step_order(i, g, g.usable(i, len(history.outputs)))
        x_t = _dpmpp_multistep(g, i, x, D_s, history.outputs, p, self.solver_type, "compat")
        return Transition(x_t, zero_std(x), self._push(history, D_s))


#: ``variant="adaptive"``: the exact (``c = 2``) third-order term is used while the
#: interpolation stencil and the step span at most this much log-SNR
#: (``lambda_t - lambda_{s-2}``), the halved (``c = 1``) term beyond it.
EXACT_SPAN = 1.0
#: ``variant="adaptive"``: a step longer (in ``lambda``) than this multiple of the previous
#: one is first order.
MAX_STEP_RATIO = 2.0
_VARIANTS = ("adaptive", "exact", "compat")


@dataclass(frozen=True)
class DPMSolverPP3M(Solver):
    """Multistep DPM-Solver++(3M), data prediction. 1 NFE/step; warm-up with orders 1, 2.

    With ``r0 = h_0/h``, ``r1 = h_1/h`` (previous step sizes), ``D1_0 = (D_s - D_{s-1})/r0``,
    ``D1_1 = (D_{s-1} - D_{s-2})/r1``, ``D1 = D1_0 + r0/(r0 + r1) (D1_0 - D1_1)`` and
    ``D2 = (D1_0 - D1_1)/(r0 + r1)``:

        x_t = (sigma_t/sigma_s) x_s - alpha_t phi_1 D_s + alpha_t phi_2 D1 - c alpha_t phi_3 D2.

    ``variant="compat"`` (``c = 1``) is the formula shipped by dpm-solver
    (``multistep_dpm_solver_third_update``), diffusers and k-diffusion
    (``sample_dpmpp_3m_sde`` at eta = 0). A Taylor expansion of ``D(lambda)`` gives
    ``D1 = h D' + O(h^3)`` but ``D2 = h^2 D''/2 + O(h^3)``, while the exact third term is
    ``-alpha_t phi_3 h^2 D''``; so ``c = 1`` leaves a local error ``alpha_t phi_3 h^2 D''/2 =
    O(h^3)`` and the method is only second order. ``variant="exact"`` uses ``c = 2``: it
    integrates the quadratic interpolant of the last three ``D`` exactly and coincides step
    by step with UniP-3 (no corrector). Measured on the exact Gaussian testbed
    (``tests/diffusion/test_solvers_order.py``: VP, logSNR grid to ``lambda = 2``, modes
    ``d in {0.01, 0.1, 1, 4}``, float64), the fitted slope of log error against log NFE over
    64-256 NFE is 2.04 for ``"compat"`` and 3.10 for ``"exact"`` (to ``t_min``: 2.02 and 3.2
    over 256-512 NFE); on a 1-D two-component GMM against a float64 reference, 2.00 and
    2.99. ``"compat"`` is kept for parity with those libraries (benchmarks).

    ``variant="adaptive"`` (default) is ``"exact"`` with two step-size rules; it is third
    order (both rules switch off as the steps shrink on a smooth grid) and identical to
    ``"exact"`` on grids fine enough for third order to pay, e.g. logSNR grids with steps
    of at most 1/3 in ``lambda`` (>= 29 steps from ``t = 1`` to ``t_min`` for ``VP()``):

    - *long step after a short one*: a step more than :data:`MAX_STEP_RATIO` (2) times
      longer in ``lambda`` than the previous one is first order (DDIM). On smooth grids the
      ratio tends to 1; grids uniform in ``t`` (diffusers' default ``"linspace"`` spacing)
      end with a step 3.5-4.7 times the previous one (``lambda`` grows like ``-log t / 2``
      near ``t = 0``), over which the quadratic, and even the linear, extrapolation of
      ``D`` from the short steps before it overshoots: with ``"exact"`` that one step made
      the error 1.1-2.2x diffusers' (DPM++3M) at NFE 5-50 on ``benchmarks/solvers.py``;
      ``"adaptive"`` has 0.06-0.40x. A denoiser saturates as ``lambda`` grows, which a
      polynomial continued from short steps cannot follow; the constant ``D_s`` of DDIM
      does not overshoot. (Adams-type multistep error constants grow with the step ratio, Hairer,
      Norsett & Wanner, *Solving ODEs I*, III.5; dpm-solver and diffusers instead lower the
      order of the last steps when there are fewer than 10 / 15 steps.)
    - *stencil wider than the denoiser's scale*: the exact (``c = 2``) term is used only
      while ``lambda_t - lambda_{s-2} <= ``:data:`EXACT_SPAN` (1), the compat (``c = 1``)
      term beyond. Gaussian data have ``D(lambda)`` proportional, per covariance mode
      ``d``, to ``(1 + e^{-2 lambda}/d)^(-1/2)`` along the ODE, analytic only in the strip
      ``|Im lambda| < pi/2``: a polynomial through three points spread over more than about
      that distance is no longer close to ``D`` where it is used, and there the full
      quadratic term overshoots, while the halved one damps it. Measured over 5 targets
      (2-D and 4-D/6-D Gaussians, three 2-D mixtures) x 8 grids (logSNR, Karras, uniform,
      quadratic; to 0 and to ``t_min``) x 7 NFE (5-50), against ``"compat"``: ``"exact"``
      had the larger error in 227/280 cells (geometric mean ratio 1.34), ``"adaptive"`` in
      34 (geometric mean 0.54); with the threshold ``pi/2``, 58 (0.55); 0.75, 20 (0.53).
      32 of the 34 are Karras and quadratic grids at NFE 20-50, where ``"exact"`` is used
      (stencil <= 1) and its third-order error constant is still larger than the
      second-order one of ``"compat"`` (1.0-3.0x; one 8.5x cell, where ``"compat"``'s error
      dips to 8e-5 at NFE 50 by cancellation and is back to 6e-5 at NFE 100); the other two
      are within 7%.

    The 2nd-order warm-up step uses ``solver_type``.
    History: ``outputs = (D_{i-1}, D_{i-2})``.
    """

    variant: str = "adaptive"
    solver_type: str = "midpoint"
    lower_order_final: bool = False
    name: ClassVar[str] = "dpmsolver++3m"
    nfe_per_step = 1
    needs_history: ClassVar[bool] = True
    history_kind: ClassVar[str] = "x0"

    def __post_init__(self) -> None:
        _check_solver_type(self.solver_type)
        if self.variant not in _VARIANTS:
            raise ValueError(f"variant must be one of {_VARIANTS}, got {self.variant!r}")

    @property
    def order(self) -> int:  # type: ignore[override]
        return 2 if self.variant == "compat" else 3

    @property
    def max_step_order(self) -> int:
        return 3

    def history_size(self) -> int:
        return 2

    def step_order(self, i: int, g: SolverGrid, n_usable: int) -> int:
        p = super().step_order(i, g, n_usable)
        if p >= 2 and self.variant == "adaptive" and _long_step(g, i):
            return 1
        return p

    def check_plan(self, g: SolverGrid) -> list[int]:
        """As :meth:`Solver.check_plan`; for ``"adaptive"`` a grid is too small when the
        ``"exact"`` plan is: first-order long steps do not make it so."""
        if self.variant == "adaptive":
            replace(self, variant="exact").check_plan(g)
            return self.plan(g)
        return super().check_plan(g)

    def _step(self, ev: Evaluator, x: Tensor, history: History, i: int, g: SolverGrid):
        if g.edge(i):
            return edge_step(self, ev, x, history, i, g)
        D_s = ev.at(x, g, i, "x0")
        p = self.step_order(i, g, g.usable(i, len(history.outputs)))
        x_t = _dpmpp_multistep(g, i, x, D_s, history.outputs, p, self.solver_type, self.variant)
        return Transition(x_t, zero_std(x), self._push(history, D_s))


def _long_step(g: SolverGrid, i: int) -> bool:
    """Step ``i`` is more than :data:`MAX_STEP_RATIO` times longer in ``lambda`` than step
    ``i - 1`` (for some particle, on a per-particle grid); cached per grid."""
    key = ("dpm++long", i)
    v = g._cache.get(key)
    if v is None:
        _, _, lam = g.values()
        r = lam[i + 1] - lam[i] > MAX_STEP_RATIO * (lam[i] - lam[i - 1])
        v = g._cache[key] = r if isinstance(r, bool) else bool(r.any())
    return v


def _dpmpp_coefficients(g: SolverGrid, i: int, p: int, solver_type: str,
                        variant: str) -> tuple[Scalar, ...]:
    """Weights of ``(x_s, D_s, D_s - D_{s-1}, D_{s-1} - D_{s-2})`` (the first ``p + 1``) in
    the DPM-Solver++ multistep update of order ``p`` at non-edge step ``i``; float64,
    computed once per grid (floats on a shared grid).

    With ``D1_0 = Delta_0/r0``, ``D1_1 = Delta_1/r1``, ``D1 = D1_0 + r0/(r0 + r1) (D1_0 -
    D1_1)``, ``D2 = (D1_0 - D1_1)/(r0 + r1)`` (class docstring), the update
    ``base + A D1 - C D2`` (``A = alpha_t phi_2``, ``C = c alpha_t phi_3``) weighs
    ``Delta_0`` by ``(A (1 + r0/(r0 + r1)) - C/(r0 + r1))/r0`` and ``Delta_1`` by
    ``(C/(r0 + r1) - A r0/(r0 + r1))/r1``.
    """
    key = ("dpm++", i, p, solver_type, variant)
    c = g._cache.get(key)
    if c is not None:
        return c
    a, sg, lam = g.values()
    s, t = i, i + 1
    h = lam[t] - lam[s]
    phi1 = expm1(-h)
    c = (sg[t] / sg[s], -(a[t] * phi1))
    if p >= 2:
        r0 = (lam[s] - lam[s - 1]) / h
        phi2 = phi1 / h + 1
    if p == 2:
        if solver_type == "midpoint":
            c = c + (-(0.5 * a[t] * phi1) / r0,)
        else:
            c = c + (a[t] * phi2 / r0,)
    elif p == 3:
        r1 = (lam[s - 1] - lam[s - 2]) / h
        phi3 = phi2 / h - 0.5
        A = a[t] * phi2
        if variant == "adaptive":  # c = 2 while the stencil spans <= EXACT_SPAN
            span = lam[t] - lam[s - 2]
            cc: Scalar = (2.0 if span <= EXACT_SPAN else 1.0) if isinstance(span, float) \
                else torch.where(span <= EXACT_SPAN, 2.0, 1.0).to(torch.float64)
        else:
            cc = 2.0 if variant == "exact" else 1.0
        C = cc * a[t] * phi3
        q = r0 / (r0 + r1)
        c = c + ((A * (1 + q) - C / (r0 + r1)) / r0, (C / (r0 + r1) - A * q) / r1)
    g._cache[key] = c
    return c


def _dpmpp_multistep(g: SolverGrid, i: int, x: Tensor, D_s: Tensor, past: tuple[Tensor, ...],
                     p: int, solver_type: str, variant: str) -> Tensor:
    """DPM-Solver++ multistep update of order ``p`` (1, 2 or 3) at a non-edge step."""
    c = _dpmpp_coefficients(g, i, p, solver_type, variant)
    terms = [(c[0], x), (c[1], D_s)]
    if p >= 2:
        terms.append((c[2], D_s - past[0]))
    if p == 3:
        terms.append((c[3], past[0] - past[1]))
    return lincomb(g, x, terms)
