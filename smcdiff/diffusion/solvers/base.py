"""Shared machinery of the diffusion ODE/SDE solvers: grid, history, transition, capabilities.

A solver is an *update rule*: given the state ``x`` at grid point ``i``, its explicit
history and the grid, it returns the Gaussian transition ``x_{i+1} ~ N(mean, std^2 I)``
(``std = 0`` for ODE solvers) and the new history. The loop that applies it is written
once (:func:`smcdiff.diffusion.sample.sample`); SMC code calls :func:`transition` per step.

Conventions (``smcdiff/docs/dev/diffusion-api.md``): diffusion time ``t`` in ``[0, 1]``,
``t = 0`` data, ``t = 1`` noise, ``x_t = alpha_t x_0 + sigma_t eps``, half log-SNR
``lambda = log(alpha/sigma)``; a step goes from ``s = grid[i]`` (noisier) to
``t = grid[i + 1]`` (cleaner), ``h = lambda_t - lambda_s > 0``; ``D`` is the data
prediction ``x0_hat`` and ``eps_hat = (x - alpha D)/sigma``.

Grid (:func:`prepare_grid`): strictly decreasing times ``[num_steps + 1]`` or per-particle
times ``[num_steps + 1, *tshape]`` with ``tshape`` a prefix of ``x.shape`` (e.g.
``[*batch, N]``). ``alpha``, ``sigma`` and ``lambda`` are computed once in float64; every
update coefficient is formed in float64 (with ``expm1``) and cast to ``x``'s dtype only
when it multiplies ``x``. On a shared grid the coefficients are Python floats (float64),
computed once per prepared grid and cached on it (``SolverGrid._cache``), so a step costs
no tensor operations beyond the update itself; model outputs are converted with the
grid's ``alpha``/``sigma`` (:meth:`Evaluator.at`) and checked for NaN/inf once.

Two kinds of *edge step* never evaluate ``log 0`` or ``inf - inf``:

- a step ending at ``sigma_t = 0`` (``t = 0``, ``lambda_t = +inf``; grids with
  ``final="zero"``) is the denoise ``x_t = alpha_t D(x_s)``: the ``sigma_t -> 0`` limit of
  every exponential integrator's first-order term (``e^{-h} -> 0``). Higher-order terms
  diverge in that limit (``r = h_prev/h -> 0``), so the last step is first order for every
  solver (Karras et al. 2022 use Euler there; DPM-Solver / diffusers ``final_sigmas_type
  ="zero"`` do the same);
- a step starting at ``alpha_s = 0`` (pure noise, ``lambda_s = -inf``) is the DDIM step
  ``x_t = (sigma_t/sigma_s) x_s + alpha_t D(x_s)`` (``h = +inf``), and its model output is
  not used by later multistep differences (``r = inf``).

History (:class:`History`): a NamedTuple of tensors shaped like ``x`` (particle axis
included), so ``smcdiff.core.tree.take_particles((x, history), ancestors)`` resamples a
particle together with its solver memory. ``outputs[j]`` is the model output (the kind in
``solver.history_kind``) evaluated at grid point ``i - 1 - j`` before step ``i``; the times
come from the grid, not from the history. Nothing is hidden in the solver object, so one
solver instance can serve many runs of any shape.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor

from smcdiff.diffusion.parametrization import (
    DiffusionModel,
    _convert_with,
    _process_coef,
    all_finite,
)
from smcdiff.diffusion.processes import NoiseProcess, as_time, expand_to, get_process

#: A schedule value at a grid point: a Python float (float64) on a shared grid, a float64
#: tensor ``[*tshape]`` on a per-particle grid (see :meth:`SolverGrid.values`).
Scalar = float | Tensor

__all__ = [
    "Evaluator",
    "History",
    "NFETooSmallError",
    "Solver",
    "SolverGrid",
    "Transition",
    "check_state",
    "log_transition_density",
    "phi_functions",
    "prepare_grid",
    "step",
    "transition",
]


# ----------------------------------------------------------------------------- containers


class NFETooSmallError(ValueError):
    """An NFE budget, step count or grid on which a run never reaches the solver's order
    (or cannot pay for a single step). A ``ValueError``."""


class History(NamedTuple):
    """Explicit, gatherable solver memory; every leaf is shaped like ``x: [*batch, N, *event]``.

    Attributes:
        outputs: past model outputs, most recent first: ``outputs[j]`` was evaluated at grid
            point ``i - 1 - j`` (for step ``i``). Empty for one-step solvers.
        x_prev: UniPC only: ``(x_c,)``, the corrected state at grid point ``i - 1``.
    """

    outputs: tuple[Tensor, ...] = ()
    x_prev: tuple[Tensor, ...] = ()


class Transition(NamedTuple):
    """One step as a Gaussian transition ``x_next ~ N(mean, std^2 I)`` plus the new history.

    ``mean: [*batch, N, *event]``; ``std`` broadcasts against it (``[]`` or
    ``[*tshape, 1, ..., 1]``) and is 0 for deterministic (ODE) steps.
    """

    mean: Tensor
    std: Tensor
    history: History


# ----------------------------------------------------------------------------- grid


@dataclass(frozen=True)
class SolverGrid:
    """A validated time grid with its schedule, precomputed once in float64.

    Attributes:
        t, alpha, sigma, lam: ``[num_steps + 1, *tshape]`` float64 (``lam = +inf`` where
            ``sigma = 0``, ``-inf`` where ``alpha = 0``).
        process: the noising process.
        data_end: per grid point, ``sigma == 0`` there (only the last point may be).
        noise_start: per grid point, ``alpha == 0`` there (only the first point may be).
    """

    t: Tensor
    alpha: Tensor
    sigma: Tensor
    lam: Tensor
    process: NoiseProcess
    data_end: tuple[bool, ...]
    noise_start: tuple[bool, ...]
    # Lazily filled, per grid: schedule values as Python floats, times and coefficients cast
    # for a state's dtype/device, and solvers' per-step coefficients (keyed by the solver).
    _cache: dict[Any, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def num_steps(self) -> int:
        return self.t.shape[0] - 1

    @property
    def shared(self) -> bool:
        """One grid for all particles (``t: [num_steps + 1]``)."""
        return self.t.ndim == 1

    def values(self) -> tuple[Sequence[Scalar], Sequence[Scalar], Sequence[Scalar]]:
        """``(alpha, sigma, lam)`` indexed by grid point, for coefficient arithmetic.

        Shared grid: Python floats (the float64 values, read once per grid), so per-step
        coefficients cost no tensor operations; per-particle grid: float64 ``[*tshape]`` rows.
        """
        v = self._cache.get("values")
        if v is None:
            if self.shared:
                v = (tuple(self.alpha.tolist()), tuple(self.sigma.tolist()),
                     tuple(self.lam.tolist()))
            else:
                v = (self.alpha.unbind(0), self.sigma.unbind(0), self.lam.unbind(0))
            self._cache["values"] = v
        return v

    def time_at(self, k: int, x: Tensor) -> Tensor:
        """Time of grid point ``k`` as passed to the network for a state ``x``: float64 0-d on
        ``x``'s device (shared grid), else ``[*tshape]`` in ``x``'s dtype and device."""
        key = ("t", x.device, None if self.shared else x.dtype)
        ts = self._cache.get(key)
        if ts is None:
            tt = self.t.to(device=x.device) if self.shared else \
                self.t.to(device=x.device, dtype=x.dtype)
            ts = self._cache[key] = tt.unbind(0)
        return ts[k]

    def coef(self, v: Scalar, x: Tensor) -> Scalar:
        """A schedule value or coefficient as a multiplier of ``x``: a float as is, a tensor
        cast to ``x``'s dtype/device and padded to broadcast (:func:`cast`)."""
        return v if isinstance(v, float) else cast(v, x)

    def point_coef(self, name: str, k: int, x: Tensor) -> Scalar:
        """``alpha`` or ``sigma`` at grid point ``k`` as a multiplier of ``x`` (cached)."""
        if self.shared:
            return self.values()[0 if name == "alpha" else 1][k]
        key = (name, x.device, x.dtype, x.ndim)
        vals = self._cache.get(key)
        if vals is None:
            src = self.alpha if name == "alpha" else self.sigma
            vals = self._cache[key] = tuple(cast(r, x) for r in src.unbind(0))
        return vals[k]

    def denoise(self, i: int) -> bool:
        """Step ``i`` ends at ``sigma = 0`` (a denoise-to-data step)."""
        return self.data_end[i + 1]

    def from_noise(self, i: int) -> bool:
        """Step ``i`` starts at ``alpha = 0`` (pure noise)."""
        return self.noise_start[i]

    def edge(self, i: int) -> bool:
        """Step ``i`` touches an infinite log-SNR (and is therefore first order)."""
        return self.data_end[i + 1] or self.noise_start[i]

    def h(self, i: int) -> Tensor:
        """``lambda_{i+1} - lambda_i`` (float64, ``[*tshape]``)."""
        return self.lam[i + 1] - self.lam[i]

    def usable(self, i: int, n_outputs: int) -> int:
        """How many of ``n_outputs`` history entries (at points ``i-1, i-2, ...``) have a
        finite log-SNR, counting from the most recent."""
        if n_outputs > i:
            raise ValueError(
                f"history has {n_outputs} past outputs but step i={i} can have at most {i}; "
                "a history must come from the steps before i on the same grid"
            )
        k = 0
        while k < n_outputs and not self.noise_start[i - 1 - k]:
            k += 1
        return k


def check_state(g: SolverGrid, x: Any, name: str = "x") -> None:
    """``x`` must be a floating tensor ``[*batch, N, *event]`` whose leading dims match a
    per-particle grid's ``tshape`` (``g.t: [num_steps + 1, *tshape]``)."""
    if not isinstance(x, Tensor) or not x.is_floating_point():
        got = f"a {x.dtype} tensor" if isinstance(x, Tensor) else type(x).__name__
        raise TypeError(f"{name} must be a floating tensor [*batch, N, *event], got {got}")
    tshape = tuple(g.t.shape[1:])
    if tshape and tuple(x.shape[: len(tshape)]) != tshape:
        raise ValueError(
            f"a per-particle grid of shape {tuple(g.t.shape)} = [num_steps + 1, *tshape] needs "
            f"tshape = {tshape} to be a prefix of {name}.shape = {tuple(x.shape)}"
        )


def cast(coef: Tensor, x: Tensor) -> Tensor:
    """A float64 coefficient ``[*tshape]`` cast to ``x``'s dtype/device, padded to broadcast."""
    return expand_to(coef.to(device=x.device, dtype=x.dtype), x)


def _as_grid_tensor(grid: Any) -> Tensor:
    if isinstance(grid, Tensor):
        if not grid.is_floating_point():
            grid = grid.to(torch.float64)
        return grid.detach().to(torch.float64)
    try:
        return torch.as_tensor(grid, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(
            f"grid must be a tensor of diffusion times [num_steps + 1] (or [num_steps + 1, "
            f"*tshape]), got {type(grid).__name__}"
        ) from err


def prepare_grid(process: NoiseProcess | str, grid: Any) -> SolverGrid:
    """Validate a time grid and precompute ``alpha``, ``sigma``, ``lambda`` in float64.

    Args:
        process: the noising process (or its name).
        grid: strictly decreasing diffusion times (1 = noise -> 0 = data), ``[num_steps + 1]``,
            or per-particle times ``[num_steps + 1, *tshape]`` (each column strictly
            decreasing); a :class:`SolverGrid` is returned unchanged.

    Raises:
        ValueError: fewer than 2 points, NaN, times outside ``[0, 1]``, a non-decreasing
            pair (naming the index), ``sigma = 0`` before the last point, ``alpha = 0``
            after the first point, or points where only some particles hit those ends.
    """
    if isinstance(grid, SolverGrid):
        return grid
    proc = get_process(process)
    g = _as_grid_tensor(grid)
    if g.ndim < 1:
        raise ValueError("grid must have shape [num_steps + 1, *tshape], got a 0-d tensor")
    if g.shape[0] < 2:
        raise ValueError(f"grid needs at least 2 times (one step), got {g.shape[0]}")
    gc = g.cpu()
    nan = torch.isnan(gc)
    out_of_range = (gc < 0) | (gc > 1)
    inc = (gc[1:] >= gc[:-1]).reshape(g.shape[0] - 1, -1).any(-1)
    if bool(nan.any() | out_of_range.any() | inc.any()):  # one test; details below
        if bool(nan.any()):
            i = int(nan.reshape(g.shape[0], -1).any(-1).nonzero()[0])
            raise ValueError(f"grid contains NaN at index {i}")
        if bool(out_of_range.any()):
            i = int(out_of_range.reshape(g.shape[0], -1).any(-1).nonzero()[0])
            raise ValueError(
                f"grid times must lie in [0, 1] (0 = data, 1 = noise); grid[{i}] = "
                f"{gc[i].flatten()[:4].tolist()}"
            )
        i = int(inc.nonzero()[0])
        raise ValueError(
            "grid must be strictly decreasing (samplers go from noise t=1 to data t=0); "
            f"grid[{i}] = {gc[i].flatten()[:4].tolist()} <= grid[{i + 1}] = "
            f"{gc[i + 1].flatten()[:4].tolist()}"
        )
    alpha = torch.as_tensor(proc.alpha(g), dtype=torch.float64)
    sigma = torch.as_tensor(proc.sigma(g), dtype=torch.float64)
    zero_s = sigma == 0
    zero_a = alpha == 0
    inner = zero_s | zero_a
    lam = torch.as_tensor(proc.log_snr(torch.where(inner, torch.full_like(g, 0.5), g)),
                          dtype=torch.float64)
    lam = torch.where(zero_s, torch.full_like(lam, math.inf), lam)
    lam = torch.where(zero_a, torch.full_like(lam, -math.inf), lam)
    # one transfer for all per-point flags: [any sigma = 0, all, any alpha = 0, all]
    flat_s = zero_s.reshape(g.shape[0], -1)
    flat_a = zero_a.reshape(g.shape[0], -1)
    n = g.shape[0] - 1
    flags = torch.cat([flat_s.any(-1), flat_s.all(-1), flat_a.any(-1), flat_a.all(-1),
                       torch.isfinite(lam[1:-1]).all().reshape(1)]).cpu().tolist()
    any_s, data_end, any_a, noise_start = (flags[j * (n + 1):(j + 1) * (n + 1)]
                                           for j in range(4))
    lam_finite = flags[-1]
    for k in range(g.shape[0]):
        for any_k, all_k, what in ((any_s[k], data_end[k], "sigma"),
                                   (any_a[k], noise_start[k], "alpha")):
            if any_k and not all_k:
                raise ValueError(
                    f"grid point {k}: {what} = 0 for some particles only; per-particle grids "
                    "must reach t = 0 (or alpha = 0) at the same step for all particles"
                )
    for k in range(n):
        if data_end[k]:
            raise ValueError(
                f"grid point {k} of {n}: sigma = 0 (t = 0) is only allowed at the last point"
            )
    for k in range(1, n + 1):
        if noise_start[k]:
            raise ValueError(
                f"grid point {k}: alpha = 0 (pure noise) is only allowed at the first point"
            )
    if n == 1 and noise_start[0] and data_end[1]:
        raise ValueError("a single step from alpha = 0 to sigma = 0 is undefined")
    if not lam_finite:
        raise ValueError("process.log_snr is not finite at an interior grid point")
    return SolverGrid(g, alpha, sigma, lam, proc, tuple(data_end), tuple(noise_start))


# ----------------------------------------------------------------------------- model calls


def _plain_model(model: Any) -> bool:
    """``model`` is a :class:`DiffusionModel` whose evaluation is not overridden, so that
    :class:`Evaluator` may call its network and convert the output itself."""
    cls = type(model)
    return (isinstance(model, DiffusionModel)
            and cls.predict is DiffusionModel.predict
            and cls.__call__ is DiffusionModel.__call__
            and cls._raw is DiffusionModel._raw
            and not {"predict", "_raw"} & vars(model).keys())


class Evaluator:
    """Calls ``model.predict(x, t, kind, **cond)``, counts NFE and names the step on failure.

    ``nfe`` counts network calls (each call evaluates all particles at once). A NaN or
    infinite prediction raises ``ValueError`` naming the solver step and the time.

    Solvers evaluate at grid points with :meth:`at`, which converts the network output with
    the grid's float64 ``alpha``/``sigma`` rather than recomputing them from ``t``. For a
    :class:`~smcdiff.diffusion.DiffusionModel` the network output is checked for NaN/inf
    once per evaluation (one host synchronisation), on the converted prediction, which is
    non-finite whenever the raw output is (every conversion multiplies it by a coefficient;
    ``0 * inf`` and ``0 * nan`` are NaN); the error then names the raw output when the
    model's ``check_finite`` is on, as the model's own check would.
    """

    def __init__(self, model: Any, cond: dict[str, Any] | None = None, check_finite: bool = True):
        if not callable(getattr(model, "predict", None)) or not hasattr(model, "process"):
            raise TypeError(
                "model must be a smcdiff.diffusion.DiffusionModel (with .predict(x, t, kind) and "
                f".process), got {type(model).__name__}"
            )
        self.model = model
        self.cond = dict(cond or {})
        self.check_finite = check_finite
        self.nfe = 0
        self.step = -1
        self._plain = _plain_model(model)
        self._grid: tuple[SolverGrid | None, bool] = (None, False)

    def __call__(self, x: Tensor, t: Tensor, kind: str) -> Tensor:
        tt = t.to(device=x.device) if t.ndim == 0 else t.to(device=x.device, dtype=x.dtype)
        if not self._plain:
            try:
                out = self.model.predict(x, tt, kind, **self.cond)
            except ValueError as err:
                raise ValueError(f"solver step {self.step}: {err}") from err
            self.nfe += 1
            self._check_type(out, x, t, kind)
            if self.check_finite and not all_finite(out):
                raise self._nonfinite_error(t, kind)
            return out
        model = self.model
        try:
            as_time(tt)  # validates t in [0, 1]
            raw = model._raw(x, tt, self.cond)
        except ValueError as err:
            raise ValueError(f"solver step {self.step}: {err}") from err
        pred = _convert_with(raw, model.kind, kind, x, _process_coef(model.process, tt, x))
        return self._finish(raw, pred, x, lambda: t, tt, kind)

    def at(self, x: Tensor, g: SolverGrid, k: int, kind: str) -> Tensor:
        """The prediction of ``kind`` at ``x`` and grid point ``k`` of ``g``.

        Equivalent to ``self(x, g.t[k], kind)``, which it calls for models other than a
        plain :class:`~smcdiff.diffusion.DiffusionModel` of ``g``'s process and for
        subclasses that override ``__call__``; otherwise ``alpha`` and ``sigma`` come from
        the grid (float64, already validated) and the time is not validated again.
        """
        grid, ok = self._grid
        if grid is not g:
            ok = (self._plain and type(self).__call__ is Evaluator.__call__
                  and (g.process is self.model.process or g.process == self.model.process))
            self._grid = (g, ok)
        if not ok:
            return self(x, g.t[k], kind)
        model = self.model
        tt = g.time_at(k, x)
        try:
            raw = model._raw(x, tt, self.cond)
        except ValueError as err:
            raise ValueError(f"solver step {self.step}: {err}") from err
        fallback = _process_coef(model.process, tt, x)

        def coef(name: str) -> Any:
            if name in ("alpha", "sigma"):
                return g.point_coef(name, k, x)
            return fallback(name)

        pred = _convert_with(raw, model.kind, kind, x, coef)
        return self._finish(raw, pred, x, lambda: g.t[k], tt, kind)

    def _finish(self, raw: Tensor, pred: Tensor, x: Tensor, t: Callable[[], Tensor],
                tt: Tensor, kind: str) -> Tensor:
        """Count the call and check ``pred`` (``raw`` converted) with one finiteness test.

        The errors are those of the model's check on ``raw`` (if on) and of the evaluator's
        on ``pred`` (if on), in that order; ``t()`` is the time named by the latter.
        """
        check_model = self.model.check_finite
        bad = False
        if self.check_finite or check_model:
            bad = not all_finite(pred if self.check_finite else raw)
            if bad and check_model and (not self.check_finite or not all_finite(raw)):
                err = self.model._nonfinite_error(raw, x, tt)
                raise ValueError(f"solver step {self.step}: {err}")
        self.nfe += 1
        if not (pred.shape == x.shape and pred.dtype == x.dtype and pred.device == x.device):
            self._check_type(pred, x, t(), kind)
        if bad and self.check_finite:
            raise self._nonfinite_error(t(), kind)
        return pred

    def _check_type(self, out: Any, x: Tensor, t: Tensor, kind: str) -> None:
        if not isinstance(out, Tensor) or out.shape != x.shape or out.dtype != x.dtype \
                or out.device != x.device:
            tv = t.item() if t.numel() == 1 else f"[{t.min().item()}, {t.max().item()}]"
            got = (f"{tuple(out.shape)} {out.dtype} on {out.device}" if isinstance(out, Tensor)
                   else type(out).__name__)
            raise TypeError(
                f"model prediction ({kind!r}) at solver step {self.step} (t = {tv}) must match "
                f"x: {tuple(x.shape)} {x.dtype} on {x.device}; got {got} (a model must follow "
                "the dtype and device of x)"
            )

    def _nonfinite_error(self, t: Tensor, kind: str) -> ValueError:
        tv = t.item() if t.numel() == 1 else f"[{t.min().item()}, {t.max().item()}]"
        return ValueError(
            f"model prediction ({kind!r}) is NaN or infinite at solver step {self.step} "
            f"(t = {tv})"
        )


# ----------------------------------------------------------------------------- solvers


class Solver:
    """Base class of all solvers: capability declarations and the edge-step rules.

    Class attributes (capabilities, checked by :func:`~smcdiff.diffusion.sample.sample`):

    - ``order``: convergence order of the method (global error ``O(h^order)``; weak order for
      stochastic samplers);
    - ``nfe_per_step``: network evaluations of a regular step (edge steps cost 1);
    - ``stochastic``: the transition has ``std > 0`` and needs a noise sampler;
    - ``needs_history``: the update uses past model outputs (multistep);
    - ``history_kind``: which prediction is stored in ``History.outputs``;
    - ``max_step_order``: the highest order a single step uses once warmed up.

    Parametrized families (``DPMSolver(order=3)``, ``UniPC(p=2)``, ``DEIS(order=3)``) set
    ``order`` on the instance.

    Subclasses implement :meth:`_step` (``ev`` evaluates the model; ``g`` is the
    :class:`SolverGrid`) and, if multistep, :meth:`history_size`; :meth:`grid_for_nfe`
    says how an NFE budget is spent (``sample(..., nfe=n)``), :meth:`check_plan` rejects a
    grid on which the solver never reaches its order (:class:`NFETooSmallError`).
    """

    name: ClassVar[str] = "solver"
    order: int = 1
    nfe_per_step: int = 1
    stochastic: ClassVar[bool] = False
    needs_history: ClassVar[bool] = False
    history_kind: ClassVar[str] = "x0"
    lower_order_final: bool = False

    @property
    def max_step_order(self) -> int:
        return self.order

    def history_size(self) -> int:
        """Number of past model outputs kept in ``History.outputs``."""
        return 0

    def init_history(self, x: Tensor) -> History:
        """The empty history of a run that starts at ``x`` (no past outputs)."""
        return History()

    # -- planning ------------------------------------------------------------------------
    def step_order(self, i: int, g: SolverGrid, n_usable: int) -> int:
        """Order of the update used at step ``i`` with ``n_usable`` valid past outputs."""
        if g.edge(i):
            return 1
        p = min(self.max_step_order, 1 + n_usable) if self.needs_history else self.max_step_order
        if self.lower_order_final:
            p = min(p, g.num_steps - i)
        return max(p, 1)

    def step_nfe(self, i: int, g: SolverGrid) -> int:
        """Network evaluations spent by step ``i`` (edge steps cost one)."""
        return 1 if g.edge(i) else self.nfe_per_step

    def plan(self, g: SolverGrid) -> list[int]:
        """Per-step orders of a whole run from an empty history on grid ``g``."""
        orders = []
        for i in range(g.num_steps):
            n_out = min(i, self.history_size())
            orders.append(self.step_order(i, g, g.usable(i, n_out)))
        return orders

    def plan_nfe(self, g: SolverGrid) -> int:
        """Total network evaluations of a run on grid ``g``."""
        return sum(self.step_nfe(i, g) for i in range(g.num_steps))

    def num_steps_for_nfe(self, nfe: int, final_zero: bool) -> int:
        """The most steps whose run costs at most ``nfe`` evaluations (edge steps cost 1)."""
        k = self.nfe_per_step
        if final_zero:
            return 1 + (nfe - 1) // k if nfe >= 1 else 0
        return nfe // k

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
        """The solver configuration and grid a budget of ``nfe`` evaluations runs with.

        Used by :func:`~smcdiff.diffusion.sample` when it is given ``nfe=``. The default:
        the most steps of a ``time_grid(process, n, kind, t_start, t_end, final)`` whose run
        costs at most ``nfe`` (edge steps cost one evaluation), with ``self`` unchanged.
        Solvers whose papers prescribe how to spend a budget override it (e.g.
        :class:`~smcdiff.diffusion.solvers.DPMSolver`: the DPM-Solver-fast order split).

        Raises:
            ValueError: ``nfe`` cannot pay for a single step.
        """
        from smcdiff.diffusion.grids import time_grid

        n = self.num_steps_for_nfe(nfe, final == "zero")
        if n < 1:
            raise NFETooSmallError(
                f"nfe={nfe} is too small for {self!r}, which needs {self.nfe_per_step} NFE per "
                "step"
            )
        for m in range(n, 0, -1):  # edge-step costs can differ from the estimate
            grid = time_grid(process, m, kind=kind, t_start=t_start, t_end=t_end, final=final)
            g = prepare_grid(process, grid)
            if self.plan_nfe(g) <= nfe:
                return self, g
        raise NFETooSmallError(
            f"nfe={nfe} is too small for {self!r}: one step costs {self.plan_nfe(g)}"
        )

    def check_plan(self, g: SolverGrid) -> list[int]:
        """Raise ``ValueError`` if a run on ``g`` never reaches this solver's order."""
        orders = self.plan(g)
        need = min(self.order, self.max_step_order)
        if max(orders) < need:
            raise NFETooSmallError(
                f"NFE too small for {self!r}: a run of {g.num_steps} step(s) "
                f"({self.plan_nfe(g)} NFE) uses step orders {orders} and never reaches order "
                f"{need}; use more steps/NFE (multistep solvers warm up with lower orders, "
                "DPM-Solver-fast splits a small budget into lower orders, and the final step "
                "to t = 0 is first order) or a lower-order solver"
            )
        return orders

    # -- stepping ------------------------------------------------------------------------
    def transition(
        self, ev: Evaluator, x: Tensor, history: History, i: int, g: SolverGrid
    ) -> Transition:
        """Step ``i`` (from ``g.t[i]`` to ``g.t[i + 1]``) as a Gaussian transition."""
        if not 0 <= i < g.num_steps:
            raise ValueError(f"step index i must be in [0, {g.num_steps}), got {i}")
        if not isinstance(history, History):
            raise TypeError(f"history must be a History, got {type(history).__name__}")
        check_state(g, x)
        ev.step = i
        return self._step(ev, x, history, i, g)

    def _step(self, ev: Evaluator, x: Tensor, history: History, i: int, g: SolverGrid):
        raise NotImplementedError

    def _push(self, history: History, out: Tensor) -> History:
        """History after step ``i``: ``out`` (evaluated at point ``i``) prepended, truncated."""
        k = self.history_size()
        if k == 0:
            return history
        return History(((out,) + history.outputs)[:k], history.x_prev)

    def __repr__(self) -> str:
        fields = getattr(self, "__dataclass_fields__", {})
        args = ", ".join(f"{k}={getattr(self, k)!r}" for k in fields)
        return f"{type(self).__name__}({args})"


_PHI_TERMS = 25
_INV_FACT = tuple(1.0 / math.factorial(n) for n in range(_PHI_TERMS + 8))


@lru_cache(maxsize=32)
def _phi_table(K: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """``(exponents [_PHI_TERMS], table [_PHI_TERMS, K])`` with ``table[j, k-1] = 1/(j+k)!``."""
    js = torch.arange(_PHI_TERMS, dtype=torch.float64, device=device)
    table = torch.tensor(
        [[_INV_FACT[j + k] for k in range(1, K + 1)] for j in range(_PHI_TERMS)],
        dtype=torch.float64, device=device,
    )
    return js, table


def phi_functions(z: Tensor, K: int) -> list[Tensor]:
    """``[phi_1(z), ..., phi_K(z)]`` with ``phi_k(z) = sum_{j>=0} z^j/(j+k)!`` (float64).

    ``phi_1 = expm1(z)/z`` and ``phi_{k+1} = (phi_k - 1/k!)/z`` for ``|z| > 1``; the Taylor
    series (25 terms) for ``|z| <= 1``, where the recurrence would cancel (Hochbruck &
    Ostermann 2010, exponential integrators). ``phi_k(0) = 1/k!``.
    """
    z = z.to(torch.float64)
    small = z.abs() <= 1
    zs = torch.where(small, z, torch.zeros_like(z))
    zl = torch.where(small, torch.ones_like(z), z)
    js, table = _phi_table(K, z.device)
    series = (zs.unsqueeze(-1) ** js) @ table  # [*z.shape, K]
    out = []
    rec = torch.expm1(zl) / zl
    for k in range(1, K + 1):
        out.append(torch.where(small, series[..., k - 1], rec))
        rec = (rec - _INV_FACT[k]) / zl
    return out


def phis(z: Scalar, K: int) -> list[Scalar]:
    """:func:`phi_functions` of a float (same method; Horner's rule for the series) or of a
    tensor (:func:`phi_functions`)."""
    out: list[Scalar] = []
    if not isinstance(z, float):
        out.extend(phi_functions(z, K))
        return out
    if abs(z) <= 1:
        for k in range(1, K + 1):
            acc = 0.0
            for j in range(_PHI_TERMS - 1, -1, -1):
                acc = acc * z + _INV_FACT[j + k]
            out.append(acc)
        return out
    rec = expm1(z) / z
    for k in range(1, K + 1):
        out.append(rec)
        rec = (rec - _INV_FACT[k]) / z
    return out


def expm1(v: Scalar) -> Scalar:
    """``exp(v) - 1`` of a float (``math.expm1``; ``inf`` on overflow) or a tensor."""
    if isinstance(v, float):
        try:
            return math.expm1(v)
        except OverflowError:
            return math.inf
    return torch.expm1(v)


def exp(v: Scalar) -> Scalar:
    """``exp(v)`` of a float (``inf`` on overflow) or a tensor."""
    if isinstance(v, float):
        try:
            return math.exp(v)
        except OverflowError:
            return math.inf
    return torch.exp(v)


def zero_std(x: Tensor) -> Tensor:
    """A 0-d zero ``std`` of ``x``'s dtype/device (deterministic step)."""
    return x.new_zeros(())


def eps_from_x0(g: SolverGrid, k: int, x: Tensor, D: Tensor) -> Tensor:
    """``eps_hat = (x - alpha D)/sigma`` at grid point ``k`` (needs ``sigma_k > 0``)."""
    return (x - g.point_coef("alpha", k, x) * D) / g.point_coef("sigma", k, x)


def x0_from_eps(g: SolverGrid, k: int, x: Tensor, eps: Tensor) -> Tensor:
    """``D = (x - sigma eps)/alpha`` at grid point ``k`` (needs ``alpha_k > 0``)."""
    return (x - g.point_coef("sigma", k, x) * eps) / g.point_coef("alpha", k, x)


def lincomb(g: SolverGrid, x: Tensor, terms: Sequence[tuple[Scalar, Tensor]]) -> Tensor:
    """``sum_j c_j v_j`` for ``terms = [(c_j, v_j)]`` (float64 coefficients, tensors like
    ``x``), with fused multiply-adds when the coefficients are floats (shared grid)."""
    (c0, v0), rest = terms[0], terms[1:]
    if isinstance(c0, float) and all(isinstance(c, float) for c, _ in rest):
        out = v0 * c0
        for c, v in rest:
            out = out.add_(v, alpha=float(c))
        return out
    out = g.coef(c0, x) * v0
    for c, v in rest:
        out = out + g.coef(c, x) * v
    return out


def ddim_data(g: SolverGrid, i: int, x: Tensor, D: Tensor) -> Tensor:
    """First-order exponential step in data form (DDIM = DPM-Solver(++)-1 = UniP-1).

    ``x_t = (sigma_t/sigma_s) x_s - alpha_t expm1(-h) D_s`` (Song et al. 2020, arXiv
    2010.02502; Lu et al. 2022, arXiv 2211.01095, Eq. 9). At ``sigma_t = 0`` it is the
    denoise ``alpha_t D_s``; at ``alpha_s = 0`` (``h = inf``) it is
    ``(sigma_t/sigma_s) x_s + alpha_t D_s``.
    """
    s, t = i, i + 1
    if g.denoise(i):
        return g.point_coef("alpha", t, x) * D
    a, sg, lam = g.values()
    ratio = sg[t] / sg[s]
    coef = -a[t] * expm1(-(lam[t] - lam[s]))
    return lincomb(g, x, ((ratio, x), (coef, D)))


def ddim_eps(g: SolverGrid, i: int, x: Tensor, eps: Tensor) -> Tensor:
    """First-order exponential step in noise form (``alpha_s > 0``, ``sigma_t > 0``).

    ``x_t = (alpha_t/alpha_s) x_s - sigma_t expm1(h) eps_s`` (DPM-Solver-1, Lu et al. 2022,
    arXiv 2206.00927, Eq. 3.7), identical to :func:`ddim_data` with ``D = (x - sigma eps)/alpha``.
    """
    s, t = i, i + 1
    a, sg, lam = g.values()
    ratio = a[t] / a[s]
    coef = -sg[t] * expm1(lam[t] - lam[s])
    return lincomb(g, x, ((ratio, x), (coef, eps)))


def edge_step(solver: Solver, ev: Evaluator, x: Tensor, history: History, i: int,
              g: SolverGrid) -> Transition:
    """The first-order step used on edge steps (see module docstring), any solver.

    Evaluates ``D = x0_hat(x_s)`` once, stores the solver's ``history_kind`` in the history.
    """
    s = i
    D = ev.at(x, g, s, "x0")
    x_next = ddim_data(g, i, x, D)
    if solver.history_size():
        out = D if solver.history_kind == "x0" else eps_from_x0(g, s, x, D)
        history = solver._push(history, out)
    return Transition(x_next, zero_std(x), history)


# ----------------------------------------------------------------------------- functional API


def transition(
    model: Any,
    solver: Solver,
    x: Tensor,
    history: History | None,
    i: int,
    grid: Any,
    *,
    cond: dict[str, Any] | None = None,
) -> Transition:
    """Step ``i`` of ``solver`` as a Gaussian transition ``x_{i+1} ~ N(mean, std^2 I)``.

    Args:
        model: a ``DiffusionModel`` (its ``process`` defines the schedule).
        solver: a :class:`Solver` (or a registered name).
        x: ``[*batch, N, *event]`` state at diffusion time ``grid[i]`` (0 = data, 1 = noise).
        history: the solver's :class:`History` before step ``i`` (``None``: empty).
        i: step index, from ``grid[i]`` to ``grid[i + 1]``.
        grid: times ``[num_steps + 1]`` / ``[num_steps + 1, *tshape]`` or a prepared
            :class:`SolverGrid` (prepare once with :func:`prepare_grid` in a loop).
        cond: conditioning keywords passed to the network.

    Returns:
        :class:`Transition` ``(mean, std, history)``; ``std = 0`` for ODE solvers. For
        SMC weights use :func:`log_transition_density`.
    """
    from smcdiff.diffusion.solvers import get_solver

    solver = get_solver(solver)
    g = prepare_grid(model.process, grid)
    ev = Evaluator(model, cond)
    return solver.transition(ev, x, history if history is not None else History(), i, g)


def step(
    model: Any,
    solver: Solver,
    x: Tensor,
    history: History | None,
    i: int,
    grid: Any,
    *,
    noise: Any = None,
    generator: torch.Generator | None = None,
    cond: dict[str, Any] | None = None,
) -> tuple[Tensor, History]:
    """Apply step ``i``: ``x_next = mean + std * z`` with ``z`` from the noise sampler.

    ``noise``: a noise sampler (:mod:`smcdiff.diffusion.solvers.noise`), else ``z`` is drawn
    from ``generator``. Returns ``(x_next, new_history)``.
    """
    from smcdiff.diffusion.solvers import get_solver
    from smcdiff.diffusion.solvers.noise import as_noise_sampler

    solver = get_solver(solver)
    tr = transition(model, solver, x, history, i, grid, cond=cond)
    if not solver.stochastic:
        return tr.mean, tr.history
    z = as_noise_sampler(noise, generator)(i, tr.mean)
    return tr.mean + tr.std * z, tr.history


def log_transition_density(
    x_next: Tensor, mean: Tensor, std: Tensor, *, event_ndim: int, validate: bool = True
) -> Tensor:
    """``log N(x_next; mean, std^2 I)`` summed over the event dims: ``[*batch, N]``.

    Args:
        x_next, mean: ``[*batch, N, *event]``.
        std: broadcasts against ``mean`` (as returned by :func:`transition`); must be > 0.
        event_ndim: number of trailing event dims of ``x`` (e.g. 1 for points in R^d,
            3 for images ``[C, H, W]``).
        validate: raise ``ValueError`` if some ``std <= 0`` (a deterministic step has no
            density); one host synchronisation.
    """
    if not isinstance(event_ndim, int) or not 0 <= event_ndim <= x_next.ndim:
        raise ValueError(f"event_ndim must be an int in [0, {x_next.ndim}], got {event_ndim!r}")
    std = torch.as_tensor(std, dtype=mean.dtype, device=mean.device)
    if validate and not bool((std > 0).all()):
        raise ValueError(
            "std must be > 0: this transition is deterministic (an ODE step, eta = 0 or the "
            "final denoise step) and has no density"
        )
    z = (x_next - mean) / std
    lp = -0.5 * z * z - torch.log(std) - 0.5 * math.log(2 * math.pi)
    lp = lp.expand_as(z) if lp.shape != z.shape else lp
    if event_ndim == 0:
        return lp
    return lp.sum(dim=tuple(range(-event_ndim, 0)))
