"""Diffusion ODE/SDE solvers as update rules over an explicit history; one registry.

Every solver shares one call, ``solver.transition(ev, x, history, i, grid) -> Transition
(mean, std, history)``, declares its capabilities as attributes (``order``,
``nfe_per_step``, ``stochastic``, ``needs_history``) and is run by the one loop in
:func:`smcdiff.diffusion.sample.sample` or stepped by SMC code with :func:`transition`.
Diffusion time ``t`` in ``[0, 1]``: 0 = data, 1 = noise; samplers go from 1 to 0.

=========================  =======================================  =====  =========
name                       solver                                   order  NFE/step
=========================  =======================================  =====  =========
``euler``                  :class:`Euler` (in ``t``; ``"rho"``: DDIM) 1     1
``heun``                   :class:`Heun` (EDM Alg. 1)               2      2
``ddim``, ``dpmsolver++1`` :class:`DDIM`                            1      1
``dpmsolver-{1,2,3}``      :class:`DPMSolver` (singlestep, eps)     k      k
``dpmsolver++2s``          :class:`DPMSolverPP2S`                   2      2
``dpmsolver++2m``          :class:`DPMSolverPP2M`                   2      1
``dpmsolver++3m``          :class:`DPMSolverPP3M` (``"adaptive"``)  3      1
``dpmsolver++3m-exact``    :class:`DPMSolverPP3M` (``"exact"``)     3      1
``dpmsolver++3m-compat``   :class:`DPMSolverPP3M` (``"compat"``)    2      1
``unipc-{1,2,3}``          :class:`UniPC` (bh2, with UniC)          p + 1  1
``unipc-bh1-{1,2,3}``      :class:`UniPC` (bh1, with UniC)          p + 1  1
``unip-{1,2,3}``           :class:`UniPC` (no corrector)            p      1
``deis-{1,2,3}``           :class:`DEIS` (log-rho AB)               r      1
``ipndm``                  :class:`IPNDM`                           2      1
``euler-maruyama``         :class:`EulerMaruyama` (SDE, ``eta``)    1      1
``ddpm``                   :class:`DDPM` (ancestral, ``eta``)       1      1
``sde-dpmsolver++1``       :class:`SDEDPMSolverPP1`                 1      1
``sde-dpmsolver++2m``      :class:`SDEDPMSolverPP2M`                2      1
=========================  =======================================  =====  =========

How ``sample(..., nfe=n)`` spends a budget is the solver's :meth:`Solver.grid_for_nfe`:
the most steps that fit, except :class:`DPMSolver`, which uses the DPM-Solver-fast order
split (:func:`fast_orders`) as its paper prescribes. A budget (or grid) on which a run never
reaches the solver's nominal order raises ``ValueError`` (:meth:`Solver.check_plan`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from smcdiff.diffusion.solvers.base import (
    Evaluator,
    History,
    NFETooSmallError,
    Solver,
    SolverGrid,
    Transition,
    check_state,
    log_transition_density,
    prepare_grid,
    step,
    transition,
)
from smcdiff.diffusion.solvers.deis import DEIS
from smcdiff.diffusion.solvers.dpm_solver import (
    DDIM,
    DPMSolver,
    DPMSolverPP2M,
    DPMSolverPP2S,
    DPMSolverPP3M,
    fast_orders,
)
from smcdiff.diffusion.solvers.euler_heun import Euler, Heun
from smcdiff.diffusion.solvers.noise import (
    FixedNoise,
    GeneratorNoise,
    NoiseSampler,
    PerParticleNoise,
    as_noise_sampler,
)
from smcdiff.diffusion.solvers.pndm import IPNDM
from smcdiff.diffusion.solvers.sde import DDPM, EulerMaruyama, SDEDPMSolverPP1, SDEDPMSolverPP2M
from smcdiff.diffusion.solvers.unipc import UniPC

SOLVERS: dict[str, Callable[..., Solver]] = {
    "euler": Euler,
    "heun": Heun,
    "ddim": DDIM,
    "dpmsolver++1": DDIM,
    "dpmsolver-1": lambda **kw: DPMSolver(order=1, **kw),
    "dpmsolver-2": lambda **kw: DPMSolver(order=2, **kw),
    "dpmsolver-3": lambda **kw: DPMSolver(order=3, **kw),
    "dpmsolver++2s": DPMSolverPP2S,
    "dpmsolver++2m": DPMSolverPP2M,
    "dpmsolver++3m": DPMSolverPP3M,
    "dpmsolver++3m-exact": lambda **kw: DPMSolverPP3M(variant="exact", **kw),
    "dpmsolver++3m-compat": lambda **kw: DPMSolverPP3M(variant="compat", **kw),
    **{f"unipc-{p}": (lambda p=p, **kw: UniPC(p=p, **kw)) for p in (1, 2, 3)},
    **{f"unipc-bh1-{p}": (lambda p=p, **kw: UniPC(p=p, variant="bh1", **kw)) for p in (1, 2, 3)},
    **{f"unip-{p}": (lambda p=p, **kw: UniPC(p=p, corrector=False, **kw)) for p in (1, 2, 3)},
    **{f"deis-{r}": (lambda r=r, **kw: DEIS(order=r, **kw)) for r in (1, 2, 3)},
    "ipndm": IPNDM,
    "euler-maruyama": EulerMaruyama,
    "ddpm": DDPM,
    "sde-dpmsolver++1": SDEDPMSolverPP1,
    "sde-dpmsolver++2m": SDEDPMSolverPP2M,
}


def get_solver(solver: str | Solver, **kwargs: Any) -> Solver:
    """A :class:`Solver` from an instance (returned as is) or a registered name.

    Names are case-insensitive (``_`` = ``-``); ``kwargs`` go to the constructor, e.g.
    ``get_solver("euler-maruyama", eta=0.5)``, ``get_solver("unipc-2", variant="bh1")``.
    """
    if isinstance(solver, Solver):
        if kwargs:
            raise TypeError("keyword arguments are only accepted with a solver name")
        return solver
    if isinstance(solver, str):
        key = solver.lower().replace("_", "-")
        if key not in SOLVERS:
            raise ValueError(f"unknown solver {solver!r}; expected one of {sorted(SOLVERS)} or a "
                             "Solver instance")
        return SOLVERS[key](**kwargs)
    raise TypeError(f"solver must be a name or a Solver, got {type(solver).__name__}")


__all__ = [
    "DDIM",
    "DDPM",
    "DEIS",
    "IPNDM",
    "SOLVERS",
    "DPMSolver",
    "DPMSolverPP2M",
    "DPMSolverPP2S",
    "DPMSolverPP3M",
    "Euler",
    "EulerMaruyama",
    "Evaluator",
    "FixedNoise",
    "GeneratorNoise",
    "Heun",
    "History",
    "NFETooSmallError",
    "NoiseSampler",
    "PerParticleNoise",
    "SDEDPMSolverPP1",
    "SDEDPMSolverPP2M",
    "Solver",
    "SolverGrid",
    "Transition",
    "UniPC",
    "as_noise_sampler",
    "check_state",
    "fast_orders",
    "get_solver",
    "log_transition_density",
    "prepare_grid",
    "step",
    "transition",
]
