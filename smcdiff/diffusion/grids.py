"""Time grids for samplers: explicit, strictly decreasing arrays of diffusion times.

Diffusion time ``t`` runs in ``[0, 1]`` (0 = data, 1 = noise); a grid ``[num_steps + 1]``
goes from ``t_start`` (noisy) down to its end point, and a sampler takes one step per
consecutive pair. The spacing kinds (``lambda = log(alpha/sigma)``, ``q = sigma/alpha``):

- ``"uniform"``: uniform in ``t`` (DPM-Solver ``time_uniform``; diffusers ``linspace``).
- ``"quadratic"``: uniform in ``sqrt(t)`` (DDIM's quadratic schedule, Song et al. 2020,
  arXiv 2010.02502; DEIS ``ts_order=2``).
- ``"logsnr"``: uniform in ``lambda`` (DPM-Solver ``logSNR``, Lu et al. 2022, arXiv 2206.00927;
  k-diffusion ``get_sigmas_exponential``).
- ``"karras"``: uniform in ``q^(1/rho)`` (Karras et al. 2022, arXiv 2206.00364, Eq. 5), with
  ``q = sigma/alpha = e^{-lambda}`` the noise-to-signal ratio, so it applies to any process
  (it is ``sigma`` itself for VE/EDM); ``rho -> inf`` approaches ``"logsnr"``.

The final step is explicit:

- ``final="zero"``: ``num_steps`` points spaced as above from ``t_start`` to ``t_end`` (default
  ``process.t_min``), then a last entry exactly ``0.0``: a denoise-to-data step
  (k-diffusion's appended ``sigma = 0``). ``lambda(0) = +inf``; the grid itself never evaluates
  ``log(0)`` and solvers must treat the last step without it (e.g. ``x_0 = D(x, t_end)``).
- ``final="t_min"``: ``num_steps + 1`` points spaced as above from ``t_start`` to ``t_end``
  (default ``process.t_min``), which is the last entry exactly; the output keeps the
  residual noise ``sigma(t_end)``. ``"uniform"`` / ``"quadratic"`` grids may use ``t_end=0``
  here (e.g. Euler on a flow over ``linspace(1, 0)``); the lambda-based kinds need ``t_end > 0``.

Grids are computed in float64 and then cast to ``dtype``; both ends are exact.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from smcdiff.diffusion.processes import NoiseProcess, get_process

GRID_KINDS = ("logsnr", "uniform", "karras", "quadratic")
FINALS = ("zero", "t_min")


def _as_float(v: Any, name: str) -> float:
    if isinstance(v, Tensor):
        if v.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got a tensor of shape {tuple(v.shape)}")
        v = v.item()
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(v).__name__}")
    v = float(v)
    if not np.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    return v


def time_grid(
    process: NoiseProcess | str,
    num_steps: int,
    kind: str = "logsnr",
    t_start: float | None = None,
    t_end: float | None = None,
    final: str = "zero",
    rho: float = 7.0,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """A strictly decreasing grid of diffusion times ``[num_steps + 1]`` (0 = data, 1 = noise).

    Args:
        process: the noising process (or its name); it defines ``lambda`` for the
            ``"logsnr"`` and ``"karras"`` kinds and the default end points.
        num_steps: number of steps (>= 1); the grid has ``num_steps + 1`` entries.
        kind: ``"logsnr"`` | ``"uniform"`` | ``"karras"`` | ``"quadratic"`` (module docstring).
        t_start: first time, default ``process.t_max``; in ``(0, 1]``.
        t_end: last spaced time, default ``process.t_min``; in ``[0, t_start)``.
        final: ``"zero"`` (append an exact ``0.0`` after ``num_steps`` spaced points) or
            ``"t_min"`` (``num_steps + 1`` spaced points ending at ``t_end``).
        rho: Karras exponent (only for ``kind="karras"``), > 0.
        dtype: floating dtype of the result (computed in float64 first).

    Returns:
        ``grid: [num_steps + 1]`` with ``grid[0] = t_start`` and ``grid[-1] = 0.0`` or ``t_end``.
    """
    proc = get_process(process)
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)):
        raise TypeError(f"num_steps must be an int, got {type(num_steps).__name__}")
    num_steps = int(num_steps)
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if kind not in GRID_KINDS:
        raise ValueError(f"unknown grid kind {kind!r}; expected one of {GRID_KINDS}")
    if final not in FINALS:
        raise ValueError(f"unknown final {final!r}; expected one of {FINALS}")
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    rho = _as_float(rho, "rho")
    if rho <= 0:
        raise ValueError(f"rho must be > 0, got {rho}")

    ts = _as_float(proc.t_max if t_start is None else t_start, "t_start")
    te = _as_float(proc.t_min if t_end is None else t_end, "t_end")
    if not 0 < ts <= 1:
        raise ValueError(f"t_start must lie in (0, 1] (1 = noise), got {ts}")
    if not 0 <= te < ts:
        raise ValueError(f"t_end must lie in [0, t_start) = [0, {ts}), got {te}")

    n = num_steps if final == "zero" else num_steps + 1  # spaced points
    if final == "zero" and te == 0 and n > 1:
        raise ValueError(
            "t_end = 0 with final='zero' would repeat t = 0; use t_end > 0 (default "
            "process.t_min), or final='t_min' with t_end=0 for a uniform/quadratic grid"
        )
    body = _spaced(proc, n, kind, ts, te, rho)
    if final == "zero":
        body = torch.cat([body, torch.zeros(1, dtype=torch.float64)])
    grid = body.to(dtype)
    check_grid(grid)
    return grid


def _spaced(proc: NoiseProcess, n: int, kind: str, ts: float, te: float, rho: float) -> Tensor:
    """``n`` points from ``ts`` to ``te`` (both exact), float64."""
    if n == 1:
        return torch.tensor([ts], dtype=torch.float64)
    u = torch.linspace(0, 1, n, dtype=torch.float64)
    if kind == "uniform":
        t = ts + u * (te - ts)
    elif kind == "quadratic":
        a, b = ts**0.5, te**0.5
        t = (a + u * (b - a)) ** 2
    else:
        lam_s = proc.log_snr(torch.tensor(ts, dtype=torch.float64))
        lam_e = proc.log_snr(torch.tensor(te, dtype=torch.float64))
        if not (bool(torch.isfinite(lam_s)) and bool(torch.isfinite(lam_e))):
            raise ValueError(
                f"a {kind!r} grid needs a finite log-SNR at both ends, got "
                f"lambda(t_start={ts}) = {lam_s.item()}, lambda(t_end={te}) = {lam_e.item()}; "
                "use 0 < t_end < t_start < 1 where alpha and sigma are both positive "
                "(defaults: process.t_min, process.t_max), and final='zero' to reach t = 0"
            )
        if kind == "logsnr":
            lam = lam_s + u * (lam_e - lam_s)
        else:  # karras: uniform in q^(1/rho), q = e^{-lambda}; q^(1/rho) = e^{-lambda/rho}
            qs, qe = torch.exp(-lam_s / rho), torch.exp(-lam_e / rho)
            lam = -rho * torch.log(qs + u * (qe - qs))
        t = proc.t_of_log_snr(lam).to(torch.float64)
    t[0] = ts
    t[-1] = te
    return t


def check_grid(grid: Any, name: str = "grid") -> Tensor:
    """Validate a time grid and return it as a tensor.

    A valid grid is a 1-D floating tensor (lists and arrays are converted to float64) of at
    least 2 diffusion times, free of NaN, inside ``[0, 1]`` (0 = data, 1 = noise) and strictly
    decreasing. Raises ``TypeError`` / ``ValueError`` naming the first offending entry.
    """
    if isinstance(grid, Tensor):
        g = grid if grid.is_floating_point() else grid.to(torch.float64)
    else:
        try:
            g = torch.as_tensor(np.asarray(grid, dtype=np.float64))
        except (TypeError, ValueError) as err:
            raise TypeError(
                f"{name} must be a 1-D array of times, got {type(grid).__name__}"
            ) from err
    if g.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(g.shape)}")
    if g.numel() < 2:
        raise ValueError(f"{name} needs at least 2 times (one step), got {g.numel()}")
    gc = g.detach().cpu()
    nan = torch.isnan(gc)
    if bool(nan.any()):
        raise ValueError(f"{name} contains NaN at index {int(nan.nonzero()[0])}")
    out = (gc < 0) | (gc > 1)
    if bool(out.any()):
        i = int(out.nonzero()[0])
        raise ValueError(
            f"{name} must lie in [0, 1] (0 = data, 1 = noise); {name}[{i}] = {gc[i].item()}"
        )
    bad = gc[1:] >= gc[:-1]
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise ValueError(
            f"{name} must be strictly decreasing (samplers go from noise t=1 to data t=0); "
            f"{name}[{i}] = {gc[i].item()} <= {name}[{i + 1}] = {gc[i + 1].item()}"
        )
    return g


__all__ = ["FINALS", "GRID_KINDS", "check_grid", "time_grid"]
