"""Reward steering of diffusion samplers as Feynman-Kac models: FK steering and TDS.

Both target ``p(x0) exp(lam r(x0)) / Z`` where ``p`` is the law of the *base sampler*
(the diffusion layer's stochastic solver on a time grid, or an exact reverse kernel), and
both are run by the one SMC engine (``smcdiff.smc``). Diffusion time ``t`` in ``[0, 1]``:
0 = data, 1 = noise; the sampler goes from ``grid[0]`` to ``grid[-1]``. SMC step ``n``
holds the state at ``grid[n]`` (``T = num_steps + 1`` steps; step 0 draws the prior).

**FK steering** (Singhal et al. 2025, arXiv 2501.06848; note ``feynman-kac-correctors.md``
§5). Proposal ``M_n`` = one stochastic solver step (DDPM ancestral, SDE-DPM-Solver++,
Euler-Maruyama, ...) of :mod:`smcdiff.diffusion.solvers`, unchanged. Potentials depend on
intermediate rewards ``r_n = r(x0_hat(x_n))`` of the Tweedie estimate (or the many-sample
estimate ``(1/lam) log mean_i exp(lam r(x0_i))``, ``x0_i ~ p(x0 | x_n)``), evaluated only at
the *reward steps* (the resampling schedule):

====== ====================================== ===========================================
name   ``log G_n`` at a reward step            running statistic
====== ====================================== ===========================================
diff   ``lam (r_n - r_prev)``                 ``r_prev`` (0 before the first evaluation)
max    ``lam max_{s <= n} r_s``               running max (``-inf`` before the first)
sum    ``lam sum_{s <= n} r_s`` (alias add)   running sum
last   ``lam r_n``              (alias rt)    --
====== ====================================== ===========================================

``log G = 0`` at the other steps, and at the final step ``log G = lam r(x_final) - log prod
G`` (the final-step correction, for every potential; for ``diff`` it equals the telescoping
term), so ``prod_n G_n = exp(lam r(x_final))`` along every path and the SMC target is
exactly ``p(x0) exp(lam r(x0)) / Z``; ``log Z_hat`` estimates ``log E_p[exp(lam r(x0))]``.
The running ``log prod G``, ``r_prev`` and the statistic live *inside the particle state*
(:class:`SteeringParticles`), so the engine resamples them with the particles, and they are
accumulated at every step whether or not it resampled (the pitfall of the reference code's
adaptive branch, issue #12 there). Initialising the running max at ``-inf`` removes the need
for a ``reward_min_value`` lower bound.

Choosing a potential: every choice has the same target, but ``max``, ``sum`` and ``last``
multiply a tilt per reward step, so with ``k`` reward steps the intermediate targets are
tilted about ``k`` times too strongly and the final correction has to undo it (heavy-tailed
final weights: on the Gaussian test with 19 reward steps, ``sum`` collapses to a handful of
particles). Use them with a few reward steps (the reference code: about 5); ``diff``
telescopes and is safe at every step.

**Twisted diffusion sampler** (Wu, Trippe, Naesseth, Blei & Cunningham 2023, arXiv
2306.17775; note §6). Twist ``log p~_n(y | x_n) = lam r(x0_hat(x_n))`` (``r`` a
log-likelihood ``log p(y | x0)``, ``lam = 1`` for a posterior), exact at the end:
``log p~_final = lam r(x_final)``. Proposal: the solver step with the score replaced by
``s + grad_x log p~_n`` (autograd through the denoiser), ``q~ = N(mean~, std^2)``; weight

    w_0 = p~_0(y | x_0),   w_n = p(x_n | x_{n-1}) p~_n(y | x_n) / [q~(x_n | x_{n-1}, y)
                                  p~_{n-1}(y | x_{n-1})],

with both Gaussian kernel log-densities from the solver's transition ``(mean, std)``
(:func:`smcdiff.diffusion.log_transition_density`). A deterministic last step (the denoise
to ``t = 0``) is not twisted; its weight is the twist ratio alone. At high noise the
plug-in twist ``p(y | x0_hat)`` is much sharper than the true ``p(y | x_t)`` (it ignores the
spread of ``x0`` given ``x_t``), so the twisted proposal over-steers and the weights become
heavy-tailed with coarse grids or sharp likelihoods; the estimator stays consistent, but
check the ESS (on the Gaussian test: fine at 20 steps and noise 0.8, a visible finite-N
error at 10 steps and noise 0.5).

Network evaluations: the Tweedie estimate at ``x_n`` is the very data prediction the next
solver step needs, so it is cached in the particle state and reused (no extra NFE); FK
steering with Tweedie rewards at every step costs the NFE of the base sampler, and so does
TDS (plus one backward pass per step). ``nfe(t)`` declares the network evaluations per
particle of SMC step ``t``; ``SMCResult.nfe`` sums them.

Shapes: ``x: [*batch, N, *event]``; rewards, log-potentials ``[*batch, N]`` (float64).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from smcdiff.core.triggers import AtSteps
from smcdiff.core.weights import ess as effective_sample_size
from smcdiff.diffusion.grids import time_grid
from smcdiff.diffusion.parametrization import convert
from smcdiff.diffusion.sample import sample as run_sampler
from smcdiff.diffusion.solvers import get_solver
from smcdiff.diffusion.solvers.base import (
    Evaluator,
    History,
    Solver,
    SolverGrid,
    cast,
    log_transition_density,
    prepare_grid,
)
from smcdiff.fk.rewards import check_reward_output

__all__ = [
    "POTENTIALS",
    "ESSAtSteps",
    "FKSteering",
    "ManySample",
    "SteeringParticles",
    "TwistedDiffusion",
    "TwistedParticles",
    "potential_update",
]

POTENTIALS = ("diff", "max", "sum", "last")
_ALIASES = {"add": "sum", "rt": "last", "difference": "diff"}
F64 = torch.float64


# ----------------------------------------------------------------------------- shared helpers


class _PresetEvaluator(Evaluator):
    """An :class:`~smcdiff.diffusion.solvers.Evaluator` that answers requests at one known
    point ``x`` (the same tensor object) from a given data prediction ``D``, converted to the
    requested kind, without a network call. Other requests call the model (and count NFE).

    This is how a solver step reuses a cached Tweedie estimate, and how a guided step is made:
    presetting ``D + (sigma^2/alpha) * delta`` gives the solver the score ``s + delta``.
    """

    def __init__(self, model: Any, cond: dict[str, Any] | None, x: Tensor | None = None,
                 D: Tensor | None = None) -> None:
        super().__init__(model, cond)
        self._x = x
        self._D = D

    def __call__(self, x: Tensor, t: Tensor, kind: str) -> Tensor:
        if self._D is not None and x is self._x:
            tt = t.to(device=x.device) if t.ndim == 0 else t.to(device=x.device, dtype=x.dtype)
            return convert(self._D, "x0", kind, x, tt, self.model.process)
        return super().__call__(x, t, kind)


def _check_model(model: Any) -> None:
    if not callable(getattr(model, "predict", None)) or not hasattr(model, "process"):
        raise TypeError("model must be a smcdiff.diffusion.DiffusionModel (with predict(x, t, "
                        f"kind) and process), got {type(model).__name__}")


def _check_lam(lam: Any) -> float:
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam) \
            or lam <= 0:
        raise ValueError(f"lam must be a finite number > 0 (the target is p exp(lam r)), got "
                         f"{lam!r}")
    return float(lam)


def _check_event_shape(event_shape: Any) -> tuple[int, ...]:
    try:
        ev = tuple(int(k) for k in event_shape)
    except TypeError as err:
        raise TypeError(f"event_shape must be a tuple of ints, got {event_shape!r}") from err
    if not ev or any(k < 1 for k in ev):
        raise ValueError(f"event_shape must be a non-empty tuple of positive ints, got {ev}")
    return ev


def _make_grid(process: Any, grid: Any, num_steps: int | None, grid_kind: str,
               t_start: float | None, t_end: float | None, final: str) -> SolverGrid:
    """The sampler's time grid (1 = noise -> 0 = data): an explicit ``grid`` or
    ``time_grid(process, num_steps, grid_kind, t_start, t_end, final)``."""
    if (grid is None) == (num_steps is None):
        raise ValueError("give exactly one of grid (diffusion times, 1 = noise -> 0 = data) "
                         "and num_steps")
    if grid is None:
        assert num_steps is not None
        grid = time_grid(process, num_steps, kind=grid_kind, t_start=t_start, t_end=t_end,
                         final=final)
    g = prepare_grid(process, grid)
    if g.t.ndim != 1:
        raise ValueError(f"grid must be one shared grid [num_steps + 1], got shape "
                         f"{tuple(g.t.shape)}")
    return g


def _draw_prior(prior: Any, lead: tuple[int, ...], event: tuple[int, ...], sigma0: float,
                dtype: torch.dtype, device: Any, generator: torch.Generator | None) -> Tensor:
    """Initial particles ``[*lead, *event]``: ``sigma(grid[0]) z`` by default, a law's
    ``.sample(lead, generator)`` or a callable ``prior(lead, generator)``."""
    if prior is None:
        z = torch.randn((*lead, *event), generator=generator, dtype=dtype, device=device)
        return sigma0 * z
    x = prior.sample(lead, generator) if hasattr(prior, "sample") else prior(lead, generator)
    if not isinstance(x, Tensor) or tuple(x.shape) != (*lead, *event):
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"prior must return particles [*batch, N, *event] = "
                         f"{(*lead, *event)}, got {shape}")
    return x


def _reward(fn: Callable[[Tensor], Tensor], x: Tensor, lead: tuple[int, ...],
            name: str = "reward") -> Tensor:
    return check_reward_output(fn(x), lead, name)


def _randn_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


def _lead(x: Tensor, event: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(x.shape[: x.ndim - len(event)])


def _check_stochastic(solver: Solver, who: str) -> None:
    if not getattr(solver, "stochastic", False):
        raise ValueError(
            f"{who} needs a stochastic proposal; {solver!r} is deterministic, so resampled "
            "copies would stay identical (use 'ddpm', 'sde-dpmsolver++1' or 'euler-maruyama')"
        )


# ----------------------------------------------------------------------------- potentials


def potential_update(
    potential: str, lam: float, r: Tensor, r_prev: Tensor, stat: Tensor
) -> tuple[Tensor, Tensor]:
    """One FK-steering potential at a reward step (Singhal et al. 2025, §3).

    Args:
        potential: ``"diff"``, ``"max"``, ``"sum"`` or ``"last"`` (table in the module doc).
        lam: inverse temperature of the target ``p exp(lam r)``.
        r: ``[*batch, N]`` reward now; ``r_prev``: the reward at the previous reward step
            (``diff``); ``stat``: the running max (``-inf`` initially) or sum (0 initially).

    Returns:
        ``(log_G, new_stat)``, both ``[*batch, N]``; the caller sets ``r_prev = r``.
    """
    if potential == "diff":
        return lam * (r - r_prev), stat
    if potential == "max":
        m = torch.maximum(stat, r)
        return lam * m, m
    if potential == "sum":
        s = stat + r
        return lam * s, s
    if potential == "last":
        return lam * r, stat
    raise ValueError(f"unknown potential {potential!r}; expected one of {POTENTIALS}")


def _potential_name(potential: Any) -> str:
    if not isinstance(potential, str):
        raise TypeError(f"potential must be a name, got {type(potential).__name__}")
    key = _ALIASES.get(potential.lower(), potential.lower())
    if key not in POTENTIALS:
        raise ValueError(f"unknown potential {potential!r}; expected one of {POTENTIALS} "
                         f"(aliases {sorted(_ALIASES)})")
    return key


@dataclass(frozen=True)
class ManySample:
    """Many-sample reward estimate ``r_n = (1/lam) log mean_i exp(lam r(x0_i))``,
    ``x0_i ~ p(x0 | x_n)``, ``i = 1..num`` (FK steering paper, §3.2; the log-mean-exp form of
    the reference code's PR #10). It estimates the optimal look-ahead
    ``(1/lam) log E[exp(lam r(x0)) | x_n]`` better than the Tweedie plug-in.

    The draws come from ``sampler(x, t, num, generator) -> [num, *x.shape]`` (e.g. an exact
    reverse kernel) declaring ``nfe_per_sample`` network evaluations per draw, or by default
    from a short run of ``solver`` with ``steps`` steps from ``t`` to 0 (``steps`` NFE per draw
    for one-evaluation solvers). Cost per reward step and particle: ``num * nfe_per_sample``.
    """

    num: int = 4
    steps: int = 4
    solver: str | Solver = "ddpm"
    sampler: Callable[..., Tensor] | None = None
    nfe_per_sample: int = 0

    def __post_init__(self) -> None:
        for name in ("num", "steps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"ManySample.{name} must be an int >= 1, got {v!r}")
        if self.sampler is None:
            _check_stochastic(get_solver(self.solver), "ManySample")
        elif not callable(self.sampler):
            raise TypeError("ManySample.sampler must be callable sampler(x, t, num, generator)")


@dataclass(frozen=True)
class ESSAtSteps:
    """Resampling trigger: at the listed steps only, and there only where ``ESS < threshold N``
    (the reference code's adaptive mode). A trigger for :func:`smcdiff.smc` (``resample=``)."""

    steps: frozenset[int]
    threshold: float = 0.5

    def __call__(self, t: int, log_w: Tensor, ess: Tensor | None = None) -> bool | Tensor:
        if t not in self.steps:
            return False
        value = effective_sample_size(log_w) if ess is None else ess
        return value < self.threshold * log_w.shape[-1]


# ----------------------------------------------------------------------------- FK steering


class SteeringParticles(NamedTuple):
    """Particle state of :class:`FKSteering`; every leaf has the particle axis, so the engine
    resamples it as one.

    Attributes:
        x: ``[*batch, N, *event]`` positions at the current grid time.
        history: the solver's :class:`~smcdiff.diffusion.solvers.History`.
        x0_hat: the Tweedie estimate at ``x`` when this step evaluated it (reused by the next
            solver step), else ``None``.
        reward: ``[*batch, N]`` float64, the last evaluated reward (``r_prev``; 0 before).
        stat: ``[*batch, N]`` float64, running max (``-inf`` before) or sum of the rewards.
        log_pg: ``[*batch, N]`` float64, ``log prod G`` along the particle's ancestry.
        log_g: ``[*batch, N]`` float64, the log-potential of the step that produced ``x``.
    """

    x: Tensor
    history: History
    x0_hat: Tensor | None
    reward: Tensor
    stat: Tensor
    log_pg: Tensor
    log_g: Tensor


class FKSteering:
    """Feynman-Kac steering of a diffusion sampler toward ``p(x0) exp(lam r(x0)) / Z``
    (Singhal et al. 2025, arXiv 2501.06848), as a Feynman-Kac model for :func:`smcdiff.smc`.

    Args:
        model: a :class:`~smcdiff.diffusion.DiffusionModel` (any parametrization).
        reward: ``r(x0: [*lead, *event]) -> [*lead]``; called without gradients, so any
            callable works (see :mod:`smcdiff.fk.rewards`).
        lam: inverse temperature ``lam > 0``.
        event_shape: shape of one sample, e.g. ``(2,)``.
        potential: ``"diff"`` (default), ``"max"``, ``"sum"`` (``"add"``), ``"last"`` (``"rt"``).
        proposal: a stochastic solver or its name (default ``"ddpm"``, i.e. DDIM with
            ``eta = 1``; ``"sde-dpmsolver++1"``, ``"sde-dpmsolver++2m"``, ``"euler-maruyama"``),
            or an exact law with ``sample_reverse(x_t, t, u, process, generator)``
            (:class:`smcdiff.gaussian.Gaussian` / ``GaussianMixture``), whose exact reverse
            kernels make the base sampler exact (tests; no network evaluations).
        grid / num_steps, grid_kind, t_start, t_end, final: the sampler's time grid (one of
            ``grid`` or ``num_steps``; see :func:`smcdiff.diffusion.time_grid`).
        every: with ``reward_steps=None``, evaluate rewards at steps ``n % every == 0``,
            ``1 <= n < T - 1``.
        reward_steps: explicit SMC steps (``0 <= n < T - 1``) where rewards are evaluated.
            The final step ``T - 1`` always uses the exact reward of the sample.
        estimate: ``"tweedie"`` (default) or a :class:`ManySample`.
        prior: initial law at ``grid[0]``: ``None`` (``N(0, sigma^2 I)``), an object with
            ``.sample(shape, generator)`` (e.g. an exact marginal), or ``prior(shape,
            generator)``; ``shape = (*batch, N)``.
        cond: conditioning keywords for the network.
        dtype, device: of the default prior draw.

    Run it with ``smcdiff.smc(model, N, resample=model.resample_steps, ...)`` (resample right
    after each reward step) or ``resample=model.trigger(0.5)`` (there, only if ESS < N/2).
    The samples are ``result.particles.x`` with weights ``result.log_w``.

    Example::

        data = sd.gaussian.GaussianMixture(weights, means, covs)
        model = data.model(sd.diffusion.VP())
        fk = FKSteering(model, Bumps(centers), lam=10.0, event_shape=(2,), num_steps=50,
                        potential="diff", every=5)
        out = sd.smc(fk, 16, batch_shape=(8,), resample=fk.resample_steps,
                     generator=torch.Generator().manual_seed(0))
        x, log_w = out.particles.x, out.log_w       # [8, 16, 2], [8, 16]
        out.log_z                                   # log E[exp(lam r(x0))] estimates
        out.nfe                                     # 50: the base sampler's NFE
    """

    def __init__(
        self,
        model: Any,
        reward: Callable[[Tensor], Tensor],
        lam: float,
        *,
        event_shape: tuple[int, ...],
        potential: str = "diff",
        proposal: Any = "ddpm",
        grid: Any = None,
        num_steps: int | None = None,
        grid_kind: str = "logsnr",
        t_start: float | None = None,
        t_end: float | None = None,
        final: str = "zero",
        every: int = 1,
        reward_steps: Iterable[int] | None = None,
        estimate: str | ManySample = "tweedie",
        prior: Any = None,
        cond: dict[str, Any] | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        _check_model(model)
        if not callable(reward):
            raise TypeError(f"reward must be callable r(x0) -> [*batch, N], got "
                            f"{type(reward).__name__}")
        self.model = model
        self.reward = reward
        self.lam = _check_lam(lam)
        self.event_shape = _check_event_shape(event_shape)
        self.potential = _potential_name(potential)
        self.process = model.process
        self.grid = _make_grid(self.process, grid, num_steps, grid_kind, t_start, t_end, final)
        self.T = self.grid.num_steps + 1
        self._times = [float(v) for v in self.grid.t.tolist()]
        if hasattr(proposal, "sample_reverse"):
            self.kernel, self.solver = proposal, None
        else:
            self.kernel, self.solver = None, get_solver(proposal)
            _check_stochastic(self.solver, "FK steering")
            self.solver.check_plan(self.grid)
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be an int >= 1, got {every!r}")
        if reward_steps is None:
            steps = {n for n in range(1, self.T - 1) if n % every == 0}
        else:
            steps = {int(n) for n in reward_steps}
            bad = sorted(n for n in steps if not 0 <= n < self.T - 1)
            if bad:
                raise ValueError(f"reward_steps must lie in [0, T - 1) = [0, {self.T - 1}) "
                                 f"(the final step always uses the exact reward), got {bad}")
        self.reward_steps = frozenset(steps)
        if isinstance(estimate, str):
            if estimate != "tweedie":
                raise ValueError(f"estimate must be 'tweedie' or a ManySample, got {estimate!r}")
        elif not isinstance(estimate, ManySample):
            raise TypeError(f"estimate must be 'tweedie' or a ManySample, got "
                            f"{type(estimate).__name__}")
        self.estimate = estimate
        self.prior = prior
        self.cond = dict(cond or {})
        self.dtype = dtype or torch.get_default_dtype()
        self.device = device
        self._nfe = self._plan_nfe()

    # -- schedule -------------------------------------------------------------------------
    @property
    def resample_steps(self) -> frozenset[int]:
        """SMC steps before which to resample: right after every reward step."""
        return frozenset(n + 1 for n in self.reward_steps)

    def trigger(self, ess_threshold: float | None = None) -> Any:
        """A resampling trigger: every step after a reward step (``None``), or there only
        where ``ESS < ess_threshold * N``."""
        if ess_threshold is None:
            return AtSteps(self.resample_steps)
        if not 0.0 <= ess_threshold <= 1.0:
            raise ValueError(f"ess_threshold must lie in [0, 1], got {ess_threshold}")
        return ESSAtSteps(self.resample_steps, float(ess_threshold))

    def _sample_nfe(self, n: int) -> int:
        est = self.estimate
        assert isinstance(est, ManySample)
        if est.sampler is not None:
            return est.num * est.nfe_per_sample
        g = prepare_grid(self.process, self._x0_grid(self._times[n], est.steps))
        return est.num * get_solver(est.solver).plan_nfe(g)

    def _plan_nfe(self) -> list[int]:
        out = []
        for n in range(self.T):
            k = 0
            if n >= 1 and self.solver is not None:
                k += self.solver.step_nfe(n - 1, self.grid)
                if (n - 1) in self.reward_steps and self.estimate == "tweedie":
                    k -= 1  # the cached Tweedie estimate serves the step
            if n in self.reward_steps:
                k += 1 if self.estimate == "tweedie" else self._sample_nfe(n)
            out.append(k)
        return out

    def nfe(self, t: int) -> int:
        """Network evaluations per particle spent by SMC step ``t``."""
        return self._nfe[t]

    # -- Feynman-Kac model ------------------------------------------------------------------
    def M0(self, num_particles: int, batch_shape: torch.Size,
           generator: torch.Generator | None) -> SteeringParticles:
        """Prior draw at ``grid[0]``, and the first reward if step 0 is a reward step."""
        lead = (*batch_shape, num_particles)
        x = _draw_prior(self.prior, lead, self.event_shape, float(self.grid.sigma[0]),
                        self.dtype, self.device, generator)
        zeros = torch.zeros(lead, dtype=F64, device=x.device)
        stat = torch.full_like(zeros, -math.inf) if self.potential == "max" else zeros
        hist = self.solver.init_history(x) if self.solver is not None else History()
        state = SteeringParticles(x, hist, None, zeros, stat, zeros, zeros)
        if 0 in self.reward_steps:
            state = self._at_reward_step(0, state, generator)
        return state

    def M(self, t: int, x_prev: SteeringParticles,
          generator: torch.Generator | None) -> SteeringParticles:
        """Solver step ``t - 1`` (``grid[t-1] -> grid[t]``), then the potential of step ``t``."""
        i = t - 1
        if self.solver is None:
            x = self.kernel.sample_reverse(x_prev.x, self._times[i], self._times[i + 1],
                                           self.process, generator)
            hist = x_prev.history
        else:
            ev = _PresetEvaluator(self.model, self.cond, x_prev.x, x_prev.x0_hat)
            tr = self.solver.transition(ev, x_prev.x, x_prev.history, i, self.grid)
            x = tr.mean if self.grid.denoise(i) else tr.mean + tr.std * _randn_like(tr.mean,
                                                                                  generator)
            hist = tr.history
        zero = torch.zeros_like(x_prev.log_pg)
        state = SteeringParticles(x, hist, None, x_prev.reward, x_prev.stat, x_prev.log_pg, zero)
        if t == self.T - 1:
            with torch.no_grad():
                r = _reward(self.reward, x, _lead(x, self.event_shape)).to(F64)
            _, stat = potential_update(self.potential, self.lam, r, x_prev.reward, x_prev.stat)
            log_g = self.lam * r - x_prev.log_pg  # the final-step correction
            return state._replace(reward=r, stat=stat, log_pg=x_prev.log_pg + log_g, log_g=log_g)
        if t in self.reward_steps:
            return self._at_reward_step(t, state, generator)
        return state

    def log_G(self, t: int, x_prev: SteeringParticles | None,
              x: SteeringParticles) -> Tensor:
        """The log-potential computed with the move (stored in the particle state)."""
        return x.log_g

    # -- rewards ------------------------------------------------------------------------------
    def _x0_grid(self, t: float, steps: int) -> Tensor:
        """Grid of the default many-sample chain from ``t`` to 0 (``steps`` steps, the last
        a denoise; one step when ``t`` is already at or below ``process.t_min``)."""
        if steps == 1 or t <= self.process.t_min:
            return torch.tensor([t, 0.0], dtype=F64)
        return time_grid(self.process, steps, t_start=t, final="zero")

    def _many_sample_draws(self, x: Tensor, n: int, generator: torch.Generator | None) -> Tensor:
        est = self.estimate
        assert isinstance(est, ManySample)
        t = self._times[n]
        if est.sampler is not None:
            draws = est.sampler(x, t, est.num, generator)
        else:
            x_rep = x.unsqueeze(0).expand(est.num, *x.shape).contiguous()
            grid = self._x0_grid(t, est.steps)
            draws = run_sampler(self.model, est.solver, grid, x_rep, generator=generator,
                                cond=self.cond or None).x
        if not isinstance(draws, Tensor) or tuple(draws.shape) != (est.num, *x.shape):
            raise ValueError(f"ManySample draws must have shape [num, *x.shape] = "
                             f"{(est.num, *x.shape)}")
        return draws

    def _at_reward_step(self, n: int, state: SteeringParticles,
                        generator: torch.Generator | None) -> SteeringParticles:
        x = state.x
        lead = _lead(x, self.event_shape)
        x0_hat = None
        with torch.no_grad():
            if self.estimate == "tweedie":
                t = self.grid.t[n].to(device=x.device)
                x0_hat = self.model.predict(x, t, "x0", **self.cond)
                r = _reward(self.reward, x0_hat, lead).to(F64)
            else:
                draws = self._many_sample_draws(x, n, generator)
                rs = _reward(self.reward, draws, (draws.shape[0], *lead)).to(F64)
                r = (torch.logsumexp(self.lam * rs, 0) - math.log(rs.shape[0])) / self.lam
        log_g, stat = potential_update(self.potential, self.lam, r, state.reward, state.stat)
        return state._replace(x0_hat=x0_hat, reward=r, stat=stat, log_pg=state.log_pg + log_g,
                              log_g=log_g)

    def __repr__(self) -> str:
        prop = type(self.kernel).__name__ if self.solver is None else repr(self.solver)
        return (f"FKSteering(potential={self.potential!r}, lam={self.lam}, T={self.T}, "
                f"proposal={prop}, reward_steps={len(self.reward_steps)})")


# ----------------------------------------------------------------------------- TDS


class TwistedParticles(NamedTuple):
    """Particle state of :class:`TwistedDiffusion`.

    Attributes:
        x: ``[*batch, N, *event]`` positions at the current grid time.
        x0_hat: the (detached) Tweedie estimate at ``x``; ``None`` after the final step.
        log_twist: ``[*batch, N]`` float64 ``log p~_n(y | x_n) = lam r(x0_hat(x_n))``
            (``lam r(x)`` after the final step).
        grad: ``grad_x log p~_n(y | x)`` shaped like ``x``; ``None`` after the final step.
        log_g: ``[*batch, N]`` float64 log-weight of the step that produced ``x``.
    """

    x: Tensor
    x0_hat: Tensor | None
    log_twist: Tensor
    grad: Tensor | None
    log_g: Tensor


class TwistedDiffusion:
    """Twisted diffusion sampler (Wu et al. 2023, arXiv 2306.17775) for
    ``p(x0) exp(lam r(x0)) / Z``, as a Feynman-Kac model for :func:`smcdiff.smc`.

    With ``r(x0) = log p(y | x0)`` and ``lam = 1`` the target is the posterior
    ``p(x0 | y)`` and ``log Z_hat`` estimates the log-evidence ``log p(y)``.

    Args:
        model: a differentiable :class:`~smcdiff.diffusion.DiffusionModel`.
        log_likelihood: differentiable ``r(x0: [*lead, *event]) -> [*lead]``.
        lam: weight of ``r`` in the target (``> 0``).
        event_shape: shape of one sample.
        proposal: a stochastic one-evaluation solver without history (``"ddpm"`` default,
            ``"sde-dpmsolver++1"``, ``"euler-maruyama"``): the twist shifts its score at the
            pre-step point.
        grid / num_steps, grid_kind, t_start, t_end, final, prior, cond, dtype, device:
            as for :class:`FKSteering`. The grid must start where ``alpha > 0``.

    Every step twists and reweights (``T = num_steps + 1`` steps); resample with any trigger
    (the reference code resamples at every step: ``resample="always"``).
    """

    def __init__(
        self,
        model: Any,
        log_likelihood: Callable[[Tensor], Tensor],
        lam: float = 1.0,
        *,
        event_shape: tuple[int, ...],
        proposal: str | Solver = "ddpm",
        grid: Any = None,
        num_steps: int | None = None,
        grid_kind: str = "logsnr",
        t_start: float | None = None,
        t_end: float | None = None,
        final: str = "zero",
        prior: Any = None,
        cond: dict[str, Any] | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        _check_model(model)
        if not callable(log_likelihood):
            raise TypeError("log_likelihood must be callable r(x0) -> [*batch, N]")
        self.model = model
        self.reward = log_likelihood
        self.lam = _check_lam(lam)
        self.event_shape = _check_event_shape(event_shape)
        self.process = model.process
        self.grid = _make_grid(self.process, grid, num_steps, grid_kind, t_start, t_end, final)
        self.T = self.grid.num_steps + 1
        self.solver = get_solver(proposal)
        _check_stochastic(self.solver, "TDS")
        if self.solver.needs_history or self.solver.nfe_per_step != 1:
            raise ValueError(f"TDS twists the score at the pre-step point, so it needs a "
                             f"one-evaluation solver without history; got {self.solver!r}")
        if self.grid.from_noise(0):
            raise ValueError("TDS needs alpha > 0 at grid[0] (the twist shifts x0_hat by "
                             "sigma^2/alpha times its gradient); start at process.t_max")
        self.prior = prior
        self.cond = dict(cond or {})
        self.dtype = dtype or torch.get_default_dtype()
        self.device = device
        self._times = [float(v) for v in self.grid.t.tolist()]

    def nfe(self, t: int) -> int:
        """Network evaluations per particle of SMC step ``t`` (each with one backward pass):
        one Tweedie estimate with its gradient at every state except the final sample."""
        return 0 if t == self.T - 1 else 1

    def _twist(self, x: Tensor, n: int) -> tuple[Tensor, Tensor, Tensor]:
        """``(x0_hat, log p~_n, grad_x log p~_n)`` at ``x`` (grid time ``n``), by autograd
        through the denoiser."""
        lead = _lead(x, self.event_shape)
        with torch.enable_grad():
            xr = x.detach().requires_grad_(True)
            D = self.model.predict(xr, self.grid.t[n].to(device=x.device), "x0", **self.cond)
            lt = self.lam * _reward(self.reward, D, lead, "log_likelihood")
            if not lt.requires_grad:
                raise TypeError("TDS needs a model and log_likelihood differentiable in x "
                                "(autograd found no path from x to the twist)")
            (grad,) = torch.autograd.grad(lt.sum(), xr)
        return D.detach(), lt.detach().to(F64), grad.detach()

    def M0(self, num_particles: int, batch_shape: torch.Size,
           generator: torch.Generator | None) -> TwistedParticles:
        """Prior draw at ``grid[0]`` with its twist; ``log w_0 = log p~_0(y | x)``."""
        lead = (*batch_shape, num_particles)
        x = _draw_prior(self.prior, lead, self.event_shape, float(self.grid.sigma[0]),
                        self.dtype, self.device, generator)
        D, lt, grad = self._twist(x, 0)
        return TwistedParticles(x, D, lt, grad, lt)

    def M(self, t: int, x_prev: TwistedParticles,
          generator: torch.Generator | None) -> TwistedParticles:
        """Twisted solver step ``t - 1`` and the TDS weight of step ``t``."""
        i = t - 1
        g = self.grid
        x0 = x_prev.x
        base = self.solver.transition(_PresetEvaluator(self.model, self.cond, x0, x_prev.x0_hat),
                                      x0, History(), i, g)
        if g.denoise(i):  # deterministic: no twist, no kernel ratio
            x = base.mean
            log_ratio = torch.zeros_like(x_prev.log_twist)
        else:
            assert x_prev.grad is not None and x_prev.x0_hat is not None  # set before the end
            shift = cast(g.sigma[i] ** 2 / g.alpha[i], x0) * x_prev.grad
            tw = self.solver.transition(
                _PresetEvaluator(self.model, self.cond, x0, x_prev.x0_hat + shift),
                x0, History(), i, g)
            x = tw.mean + tw.std * _randn_like(tw.mean, generator)
            k = len(self.event_shape)
            x64, std64 = x.to(F64), tw.std.to(F64)
            log_ratio = (log_transition_density(x64, base.mean.to(F64), std64, event_ndim=k,
                                                validate=False)
                         - log_transition_density(x64, tw.mean.to(F64), std64, event_ndim=k,
                                                  validate=False))
        if t == self.T - 1:
            with torch.no_grad():
                lt = self.lam * _reward(self.reward, x, _lead(x, self.event_shape),
                                        "log_likelihood").to(F64)
            D = grad = None
        else:
            D, lt, grad = self._twist(x, t)
        log_g = log_ratio + lt - x_prev.log_twist
        return TwistedParticles(x, D, lt, grad, log_g)

    def log_G(self, t: int, x_prev: TwistedParticles | None, x: TwistedParticles) -> Tensor:
        """The TDS log-weight computed with the move (stored in the particle state)."""
        return x.log_g

    def __repr__(self) -> str:
        return f"TwistedDiffusion(lam={self.lam}, T={self.T}, proposal={self.solver!r})"
