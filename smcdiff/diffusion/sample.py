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
from smcdiff.diffusion.solvers.base import (
    Evaluator,
    NFETooSmallError,
    Solver,
    cast,
    check_state,
    prepare_grid,
)
from smcdiff.diffusion.solvers.noise import as_noise_sampler

__all__ = ["SampleResult", "sample"]


def _check_shape(shape: Any) -> tuple[int, ...]:
    try:
        out = tuple(int(d) for d in shape)
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"shape must be a tuple of ints [*batch, N, *event], got {shape!r}"
        ) from err
    if not out or any(d < 1 for d in out):
        raise ValueError(f"shape must be a non-empty tuple of positive ints [*batch, N, *event], "
                         f"got {shape!r}")
    return out


def _check_x_init(x_init: Any, shape: Any, dtype: Any, device: Any) -> Tensor:
    """``x_init`` must be a finite floating tensor ``[*batch, N, *event]`` agreeing with any
    ``shape``/``dtype``/``device`` also given (those only describe a default ``x_init``)."""
    if not isinstance(x_init, Tensor) or not x_init.is_floating_point():
        got = f"a {x_init.dtype} tensor" if isinstance(x_init, Tensor) else type(x_init).__name__
        raise TypeError(f"x_init must be a floating tensor [*batch, N, *event], got {got}")
    if x_init.ndim < 1 or x_init.numel() == 0:
        raise ValueError(f"x_init must be a non-empty tensor [*batch, N, *event], got shape "
                         f"{tuple(x_init.shape)}")
    if shape is not None and tuple(_check_shape(shape)) != tuple(x_init.shape):
        raise ValueError(f"shape={tuple(shape)} disagrees with x_init.shape = "
                         f"{tuple(x_init.shape)}; give one of them")
    if dtype is not None and dtype != x_init.dtype:
        raise ValueError(f"dtype={dtype} disagrees with x_init.dtype = {x_init.dtype}; dtype "
                         "only sets the dtype of a default x_init (cast x_init instead)")
    if device is not None and torch.device(device) != x_init.device:
        want = torch.device(device)
        if not (want.type == x_init.device.type and want.index is None):
            raise ValueError(f"device={want} disagrees with x_init.device = {x_init.device}; "
                             "device only sets the device of a default x_init (move x_init)")
    if not bool(torch.isfinite(x_init).all()):
        raise ValueError("x_init contains NaN or infinite entries")
    return x_init


def _min_nfe(solver: Solver, process: Any, nfe: int, kind: str, t_start: Any, t_end: Any,
             final: str, search: int = 12) -> int | None:
    """The smallest budget above ``nfe`` whose run reaches the solver's order (or None)."""
    for m in range(nfe + 1, nfe + search + 1):
        try:
            s, g = solver.grid_for_nfe(process, m, kind=kind, t_start=t_start, t_end=t_end,
                                       final=final)
            s.check_plan(g)
        except NFETooSmallError:
            continue
        return m
    return None


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
        nfe: budget of network evaluations, spent as the solver's paper prescribes
            (:meth:`Solver.grid_for_nfe <smcdiff.diffusion.solvers.Solver.grid_for_nfe>`):
            by default the largest number of steps whose run costs at most ``nfe`` (e.g.
            ``(nfe + 1) // 2`` Heun steps when the last one is a 1-NFE step to ``t = 0``);
            singlestep :class:`~smcdiff.diffusion.solvers.DPMSolver` uses the DPM-Solver-fast
            order split (``"dpmsolver-3"`` at ``nfe=10``: orders 3, 3, 2, 1 and the denoise
            step). The run uses at most ``nfe`` (``SampleResult.nfe`` is the exact count);
            a budget that cannot pay for a single step of the solver's nominal order (plus
            the final denoise step) raises ``ValueError`` (see ``check_plan``).
        shape: ``[*batch, N, *event]`` when ``x_init`` is not given (must equal
            ``x_init.shape`` if both are given).
        grid_kind, final, t_start, t_end: grid options (see :func:`~smcdiff.diffusion.time_grid`);
            ``final="zero"`` ends with a denoise step to ``t = 0``.
        generator: source of noise when ``noise`` is not given.
        noise: a noise sampler ``noise(step, like)`` (e.g. ``PerParticleNoise`` for
            batch-size-independent streams) or a tensor ``[num_steps, *x.shape]``.
        return_trajectory: keep the states at every grid point.
        cond: conditioning keywords passed to the network.
        dtype, device: of the default ``x_init`` (default: ``torch.get_default_dtype()``, CPU);
            with an ``x_init`` they must agree with it if given. The run follows ``x_init``'s
            dtype and device; the grid may live on any device (coefficients are computed in
            float64 and moved to ``x``).

    Returns:
        :class:`SampleResult` ``(x, nfe, trajectory, grid, orders)``.

    Raises:
        ValueError: ambiguous or missing grid specification; an invalid grid (times outside
            ``[0, 1]``, NaN, not strictly decreasing; the message names the index); an NFE
            budget or grid too small for the solver's order; a NaN/infinite model output
            (naming the solver step and the time); ``x_init`` with NaN/inf, or whose shape,
            dtype or device disagrees with ``shape``/``dtype``/``device`` or with a
            per-particle grid.
        TypeError: a non-floating ``x_init``, an unknown solver type, a model that is not a
            ``DiffusionModel``.
    """
    solver_arg = solver
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
        if nfe < 1:
            raise NFETooSmallError(f"nfe must be >= 1, got {nfe}: too small for any solver")
        try:
            solver, g = solver.grid_for_nfe(process, nfe, kind=grid_kind, t_start=t_start,
                                            t_end=t_end, final=final)
            orders = solver.check_plan(g)
        except NFETooSmallError as err:
            need = _min_nfe(get_solver(solver_arg), process, nfe, grid_kind, t_start, t_end,
                            final)
            hint = f"; this solver needs nfe >= {need} with these grid options" if need else ""
            raise NFETooSmallError(f"{err}{hint}") from err
    else:
        if num_steps is not None:
            grid = time_grid(process, num_steps, kind=grid_kind, t_start=t_start, t_end=t_end,
                             final=final)
        g = prepare_grid(process, grid)
        orders = solver.check_plan(g)
    ns = as_noise_sampler(noise, generator)

    if x_init is None:
        if shape is None:
            raise ValueError("give x_init or shape ([*batch, N, *event]) to draw it")
        shape = _check_shape(shape)
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
        like = torch.empty(shape, dtype=dtype or torch.get_default_dtype(), device=device)
        x = cast(g.sigma[0], like) * ns(-1, like)
    else:
        x = _check_x_init(x_init, shape, dtype, device)
    check_state(g, x, "x_init")
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
