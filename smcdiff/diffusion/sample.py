"""The sampling front door: run any solver from noise to data; the loop is written once here.

``sample(model, solver, grid | num_steps= | nfe=, x_init)`` integrates the probability-flow
ODE (or simulates the reverse SDE) of a :class:`~smcdiff.diffusion.DiffusionModel` from
``grid[0]`` (noisy) to ``grid[-1]`` (0 = data) with the given solver, and reports the
network evaluations (NFE) it used. Diffusion time ``t`` in ``[0, 1]``: 0 = data, 1 = noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from smcdiff.diffusion.grids import time_grid
from smcdiff.diffusion.solvers import get_solver
from smcdiff.diffusion.solvers.base import Evaluator, Solver, cast, prepare_grid
from smcdiff.diffusion.solvers.noise import as_noise_sampler

__all__ = ["SampleResult", "sample"]


@dataclass(frozen=True)
class SampleResult:
    """Result of :func:`sample`.

    Attributes:
        x: ``[*batch, N, *event]`` final states at ``grid[-1]``.
        nfe: network evaluations used per particle (each evaluates all particles at once).
        trajectory: ``[num_steps + 1, *batch, N, *event]`` states at every grid point
            (``return_trajectory=True``), else ``None``. For UniPC these are the predicted
            (uncorrected) states the model was evaluated at.
        grid: the float64 time grid used ``[num_steps + 1]`` (or per-particle).
        orders: the order of the update used at each step (warm-up, edge steps).
    """

    x: Tensor
    nfe: int
    trajectory: Tensor | None
    grid: Tensor
    orders: tuple[int, ...]


def sample(
    model: Any,
    solver: Solver | str,
    grid: Tensor | None = None,
    x_init: Tensor | None = None,
    *,
    num_steps: int | None = None,
    nfe: int | None = None,
    shape: tuple[int, ...] | torch.Size | None = None,
    grid_kind: str = "logsnr",
    final: str = "zero",
    t_start: float | None = None,
    t_end: float | None = None,
    generator: torch.Generator | None = None,
    noise: Any = None,
    return_trajectory: bool = False,
    cond: dict[str, Any] | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> SampleResult:
    """Sample from a diffusion model with any solver, from noise (``t = grid[0]``) to data.

    Args:
        model: a ``DiffusionModel`` (any parametrization; its ``process`` gives the schedule).
        solver: a :class:`~smcdiff.diffusion.solvers.Solver` or a registered name
            (``"dpmsolver++2m"``, ``"unipc-2"``, ...; see :mod:`smcdiff.diffusion.solvers`).
        grid: explicit strictly decreasing times ``[num_steps + 1]`` (or per-particle
            ``[num_steps + 1, *batch, N]``). Give exactly one of ``grid``, ``num_steps``,
            ``nfe``.
        x_init: ``[*batch, N, *event]`` states at ``grid[0]``. Default: the prior
            ``sigma(grid[0]) z`` with ``z`` from the noise sampler at step ``-1`` (exact when
            ``alpha(grid[0]) = 0``; the usual approximation otherwise); needs ``shape``.
        num_steps: build ``time_grid(process, num_steps, grid_kind, t_start, t_end, final)``.
        nfe: budget of network evaluations; the largest number of steps whose run costs at
            most ``nfe`` is used (e.g. ``(nfe + 1) // 2`` Heun steps when the last one is a
            1-NFE step to ``t = 0``).
        shape: ``[*batch, N, *event]`` when ``x_init`` is not given.
        grid_kind, final, t_start, t_end: grid options (see :func:`~smcdiff.diffusion.time_grid`);
            ``final="zero"`` ends with a denoise step to ``t = 0``.
        generator: source of noise when ``noise`` is not given.
        noise: a noise sampler ``noise(step, like)`` (e.g. ``PerParticleNoise`` for
            batch-size-independent streams) or a tensor ``[num_steps, *x.shape]``.
        return_trajectory: keep the states at every grid point.
        cond: conditioning keywords passed to the network.
        dtype, device: of the default ``x_init`` (default: ``torch.get_default_dtype()``, CPU).

    Returns:
        :class:`SampleResult` ``(x, nfe, trajectory, grid, orders)``.

    Raises:
        ValueError: ambiguous or missing grid specification, an invalid grid (non-monotone,
            outside ``[0, 1]``), an NFE budget or grid too small for the solver's order, or a
            NaN/infinite model output (naming the step).
    """
    solver = get_solver(solver)
    ev = Evaluator(model, cond)
    process = model.process
    specs = (("grid", grid), ("num_steps", num_steps), ("nfe", nfe))
    given = [k for k, v in specs if v is not None]
    if len(given) != 1:
        raise ValueError(f"give exactly one of grid, num_steps, nfe; got {given or 'none'}")
    if nfe is not None:
        if isinstance(nfe, bool) or not isinstance(nfe, int):
            raise TypeError(f"nfe must be an int, got {type(nfe).__name__}")
        n = solver.num_steps_for_nfe(nfe, final == "zero")
        if n < 1:
            raise ValueError(
                f"nfe={nfe} is too small for {solver!r}, which needs {solver.nfe_per_step} NFE "
                "per step"
            )
        grid = time_grid(process, n, kind=grid_kind, t_start=t_start, t_end=t_end, final=final)
        g = prepare_grid(process, grid)
        while solver.plan_nfe(g) > nfe and n > 1:  # edge-step costs differ from the estimate
            n -= 1
            grid = time_grid(process, n, kind=grid_kind, t_start=t_start, t_end=t_end, final=final)
            g = prepare_grid(process, grid)
    elif num_steps is not None:
        grid = time_grid(process, num_steps, kind=grid_kind, t_start=t_start, t_end=t_end,
                         final=final)
        g = prepare_grid(process, grid)
    else:
        g = prepare_grid(process, grid)
    orders = solver.check_plan(g)
    ns = as_noise_sampler(noise, generator)

    if x_init is None:
        if shape is None:
            raise ValueError("give x_init or shape ([*batch, N, *event]) to draw it")
        like = torch.empty(tuple(shape), dtype=dtype or torch.get_default_dtype(), device=device)
        x = cast(g.sigma[0], like) * ns(-1, like)
    else:
        if not isinstance(x_init, Tensor) or not x_init.is_floating_point():
            raise TypeError("x_init must be a floating tensor [*batch, N, *event]")
        x = x_init
    history = solver.init_history(x)
    traj = [x] if return_trajectory else None
    for i in range(g.num_steps):
        tr = solver.transition(ev, x, history, i, g)
        x = tr.mean + tr.std * ns(i, tr.mean) if solver.stochastic else tr.mean
        history = tr.history
        if traj is not None:
            traj.append(x)
    trajectory = torch.stack(traj) if traj is not None else None
    return SampleResult(x, ev.nfe, trajectory, g.t, tuple(orders))
