"""Adaptive tempered SMC for a static target (Jasra et al. 2011; Zhou, Johansen & Aston 2016).

The target is the posterior ``pi(x) ∝ pi_0(x) L(x)`` on ``R^d``. Tempering bridges the prior
``pi_0`` to it through

    ``pi_beta(x) = pi_0(x) L(x)^beta / Z_beta``,  ``0 = beta_0 < beta_1 < ... < beta_T = 1``,

an SMC sampler in the sense of Del Moral, Doucet & Jasra (2006) whose step ``t`` does
(resample-move; Chopin & Papaspiliopoulos 2020, ch. 17):

1. choose ``beta_t`` so that the *conditional* ESS of the incremental weights
   ``g_i = L(x_i)^(beta_t - beta_{t-1})`` equals ``target_ess * N``
   (:func:`smcdiff.core.weights.conditional_ess`; Zhou, Johansen & Aston 2016, Sec. 3).
   The CESS is non-increasing in the increment, so the increment is found by bisection, vectorised
   over the batch with a fixed number of halvings; it is clamped to reach exactly 1, and a batch
   member already at ``beta = 1`` stays there;
2. reweight ``log w += (beta_t - beta_{t-1}) log L(x)`` and update
   ``log Z_hat += logsumexp(log w) - logsumexp(carried log w)``; since ``pi_0`` is normalized,
   ``Z_hat`` estimates ``Z = ∫ pi_0 L``;
3. resample (by default *always*, see below);
4. move every particle with ``num_mcmc_steps`` steps of a ``pi_{beta_t}``-invariant kernel:
   random-walk Metropolis with proposal covariance ``(2.38^2 / d) Sigma_hat`` (Roberts, Gelman &
   Gilks 1997) or MALA preconditioned by ``Sigma_hat`` with step ``h = 1.65^2 / d^(1/3)``
   (Roberts & Rosenthal 1998); both scalings are reviewed in Roberts & Rosenthal (2001).
   ``Sigma_hat`` is the weighted particle covariance after resampling, fixed during the move.

Resampling choice: the default trigger is :class:`~smcdiff.core.triggers.Always`. Because the
temperature is chosen so that the ESS after reweighting is ``target_ess * N`` anyway, an ESS
trigger at the same level would fire at (almost) every step; resampling every step keeps the
particles equally weighted before the MCMC move, which is the textbook resample-move scheme.
Any trigger (e.g. ``ESSTrigger(0.3)``) can be passed instead; the CESS criterion then accounts
for the carried weights.

The temperatures and the kernel's covariance are chosen from the particles themselves, so
``Z_hat`` is not exactly unbiased as for a fixed schedule; the bias is ``O(1/N)`` and the
estimates are consistent (Beskos, Jasra, Kantas & Thiery 2016).

References:
    A. Jasra, D. A. Stephens, A. Doucet, T. Tsagaris (2011). Inference for Lévy-driven stochastic
    volatility models via adaptive sequential Monte Carlo. Scand. J. Statist. 38(1), 1-22.
    Y. Zhou, A. M. Johansen, J. A. D. Aston (2016). Toward automatic model comparison: an adaptive
    sequential Monte Carlo approach. J. Comput. Graph. Statist. 25(3), 701-726.
    N. Chopin, O. Papaspiliopoulos (2020). An Introduction to Sequential Monte Carlo. Springer,
    ch. 17 (SMC samplers, adaptive tempering).
    G. O. Roberts, J. S. Rosenthal (2001). Optimal scaling for various Metropolis-Hastings
    algorithms. Statist. Sci. 16(4), 351-367.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

import torch
from torch import distributions as D

from smcdiff.core.engine import resample_where, reweight
from smcdiff.core.progress import progress_bar
from smcdiff.core.random import sample
from smcdiff.core.resampling import Resampler, get_resampler
from smcdiff.core.tree import take_particles
from smcdiff.core.triggers import Always, ResamplingTrigger, make_trigger
from smcdiff.core.weights import conditional_ess, ess, normalize

LogLikelihood = Callable[[torch.Tensor], torch.Tensor]

NUM_BISECTION_STEPS = 40


# ------------------------------------------------------------------------ the target


def _without_validation(dist: D.Distribution) -> D.Distribution:
    """A shallow copy of ``dist`` (and of any distribution inside it) with argument
    validation off, so that ``log_prob`` of an out-of-support proposal does not raise."""
    out = copy.copy(dist)
    out._validate_args = False
    for name, value in vars(out).items():
        if isinstance(value, D.Distribution):
            setattr(out, name, _without_validation(value))
    return out


@dataclass(frozen=True)
class TemperedTarget:
    """The tempered density ``log pi_beta(x) = log pi_0(x) + beta log L(x)`` (unnormalized).

    Args:
        prior: ``pi_0``, a torch / pyro distribution with ``event_shape = [d]`` and empty
            ``batch_shape``.
        log_likelihood: ``log L``, maps ``x: [*batch, N, d]`` to ``[*batch, N]``.

    Points outside the prior's support get ``log pi_0 = -inf``. A non-finite ``log L`` (NaN,
    ``+inf`` or ``-inf``) at a point makes ``log pi_beta = -inf`` there, so MCMC kernels reject
    such proposals.
    """

    prior: D.Distribution
    log_likelihood: LogLikelihood
    _prior: D.Distribution = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.prior, D.Distribution):
            raise TypeError(
                f"prior must be a torch.distributions.Distribution, got {type(self.prior).__name__}"
            )
        if len(self.prior.event_shape) != 1:
            raise ValueError(
                f"prior must have event_shape [d], got {tuple(self.prior.event_shape)}; wrap "
                "a scalar family with torch.distributions.Independent(..., 1)"
            )
        if len(self.prior.batch_shape) != 0:
            raise ValueError(
                f"prior must have empty batch_shape, got {tuple(self.prior.batch_shape)}; the "
                "batch of runs comes from batch_shape"
            )
        if not callable(self.log_likelihood):
            raise TypeError("log_likelihood must be callable: x [*batch, N, d] -> [*batch, N]")
        object.__setattr__(self, "_prior", _without_validation(self.prior))

    @property
    def dim(self) -> int:
        """``d``, the event size."""
        return int(self.prior.event_shape[0])

    def log_lik(self, x: torch.Tensor) -> torch.Tensor:
        """``log L(x)``: ``[*batch, N, d] -> [*batch, N]`` (shape checked, cast to ``x.dtype``)."""
        out = self.log_likelihood(x)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"log_likelihood must return a tensor, got {type(out).__name__}")
        if out.shape != x.shape[:-1]:
            raise ValueError(
                f"log_likelihood returned shape {tuple(out.shape)} for x of shape "
                f"{tuple(x.shape)}; expected [*batch, N] = {tuple(x.shape[:-1])}"
            )
        if not out.is_floating_point():
            raise TypeError(f"log_likelihood returned dtype {out.dtype}; expected floating point")
        return out.to(x.dtype)

    def log_prior(self, x: torch.Tensor) -> torch.Tensor:
        """``log pi_0(x)``, ``-inf`` outside the support: ``[*batch, N, d] -> [*batch, N]``."""
        lp = self._prior.log_prob(x)
        try:
            support = self._prior.support
        except NotImplementedError:  # a family without a declared support
            return lp
        if support is None:
            return lp
        inside = support.check(x)
        if inside.dim() == x.dim():
            inside = inside.all(-1)
        return torch.where(inside, lp, torch.full_like(lp, -math.inf))

    def log_density(
        self, x: torch.Tensor, log_lik: torch.Tensor, beta: torch.Tensor
    ) -> torch.Tensor:
        """``log pi_beta(x)`` from an already computed ``log L(x)`` (no likelihood call)."""
        with torch.no_grad():
            lp = self.log_prior(x) + beta.unsqueeze(-1) * log_lik
        return torch.where(torch.isfinite(log_lik), lp, torch.full_like(lp, -math.inf))

    def evaluate(
        self, x: torch.Tensor, beta: torch.Tensor, grad: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(log pi_beta(x), log L(x), grad_x log pi_beta(x) or None)``.

        Args:
            x: ``[*batch, N, d]``.
            beta: ``[*batch]`` inverse temperatures.
            grad: also return the gradient (autograd), shaped like ``x``.
        """
        b = beta.unsqueeze(-1)
        if not grad:
            with torch.no_grad():
                ll = self.log_lik(x)
                lp = self.log_prior(x) + b * ll
            g = None
        else:
            with torch.enable_grad():
                xg = x.detach().requires_grad_(True)
                ll = self.log_lik(xg)
                if not ll.requires_grad:
                    raise TypeError(
                        "move='mala' needs a log_likelihood that autograd can differentiate; "
                        "its output does not depend on x through torch operations"
                    )
                lp = self.log_prior(xg) + b * ll
                (g,) = torch.autograd.grad(lp.sum(), xg)
            ll, lp = ll.detach(), lp.detach()
        bad = ~torch.isfinite(ll)
        lp = torch.where(bad, torch.full_like(lp, -math.inf), lp)
        return lp, ll, g


# ---------------------------------------------------------------------- MCMC kernels


class MoveInfo(NamedTuple):
    """Result of an MCMC move: particles ``[*batch, N, d]``, their ``log L`` ``[*batch, N]``
    and the acceptance rate ``[*batch]`` (mean over particles and steps)."""

    particles: torch.Tensor
    log_lik: torch.Tensor
    acceptance: torch.Tensor


class MCMCKernel(Protocol):
    """A ``pi_beta``-invariant MCMC move, shared signature of all tempering kernels.

    ``kernel(target, x, log_lik, log_w, beta, num_steps, generator) -> MoveInfo``; ``log_w``
    ``[*batch, N]`` are the current weights, used only to adapt the proposal.
    """

    def __call__(
        self,
        target: TemperedTarget,
        x: torch.Tensor,
        log_lik: torch.Tensor,
        log_w: torch.Tensor,
        beta: torch.Tensor,
        num_steps: int,
        generator: torch.Generator | None,
    ) -> MoveInfo: ...


def weighted_covariance_cholesky(x: torch.Tensor, log_w: torch.Tensor) -> torch.Tensor:
    """Cholesky factor ``[*batch, d, d]`` of the weighted particle covariance plus jitter.

    ``Sigma_hat = sum_i W_i (x_i - m)(x_i - m)^T`` with ``m = sum_i W_i x_i``, regularised by
    ``(1e-6 tr(Sigma_hat)/d + sqrt(tiny)) I``. Where the factorisation still fails (a collapsed
    or non-finite cloud) the diagonal ``sqrt(diag Sigma_hat)`` is used instead, decided per batch
    member with ``torch.where``.
    """
    W = normalize(log_w).to(x.dtype)
    m = torch.einsum("...n,...nd->...d", W, x)
    xc = x - m.unsqueeze(-2)
    cov = torch.einsum("...n,...ni,...nj->...ij", W, xc, xc)
    d = x.shape[-1]
    diag = torch.diagonal(cov, dim1=-2, dim2=-1)
    finfo = torch.finfo(x.dtype)
    jitter = 1e-6 * diag.mean(-1) + math.sqrt(finfo.tiny)
    eye = torch.eye(d, dtype=x.dtype, device=x.device)
    cov = cov + jitter[..., None, None] * eye
    L, info = torch.linalg.cholesky_ex(cov)
    fallback = torch.diag_embed(torch.diagonal(cov, dim1=-2, dim2=-1).clamp_min(0).sqrt())
    return torch.where((info != 0)[..., None, None], fallback, L)


def _matvec(L: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``L v_i`` for ``L: [*batch, d, d]`` and ``v: [*batch, N, d]``."""
    return torch.einsum("...ij,...nj->...ni", L, v)


def _accept(
    log_alpha: torch.Tensor, generator: torch.Generator | None
) -> torch.Tensor:
    u = torch.rand(log_alpha.shape, generator=generator, dtype=log_alpha.dtype,
                   device=log_alpha.device)
    return torch.log(u) < log_alpha  # NaN log_alpha rejects


@dataclass(frozen=True)
class RandomWalkMetropolis:
    """Random-walk Metropolis with proposal ``y = x + (scale / sqrt(d)) L eps``, ``eps ~ N(0, I)``,
    ``L L^T = Sigma_hat`` (weighted particle covariance), i.e. proposal covariance
    ``(scale^2 / d) Sigma_hat``; ``scale = 2.38`` is optimal for Gaussian-like targets
    (Roberts, Gelman & Gilks 1997; Roberts & Rosenthal 2001). Invariant for ``pi_beta``.
    """

    scale: float = 2.38
    needs_grad = False

    def __call__(self, target, x, log_lik, log_w, beta, num_steps, generator) -> MoveInfo:
        L = weighted_covariance_cholesky(x, log_w) * (self.scale / math.sqrt(x.shape[-1]))
        lp = target.log_density(x, log_lik, beta)
        accepted = torch.zeros_like(lp)
        for _ in range(num_steps):
            eps = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
            y = x + _matvec(L, eps)
            lpy, lly, _ = target.evaluate(y, beta)
            acc = _accept(lpy - lp, generator)
            x = torch.where(acc.unsqueeze(-1), y, x)
            log_lik = torch.where(acc, lly, log_lik)
            lp = torch.where(acc, lpy, lp)
            accepted = accepted + acc.to(accepted.dtype)
        rate = accepted.mean(-1) / num_steps if num_steps > 0 else accepted.mean(-1) * math.nan
        return MoveInfo(x, log_lik, rate)


@dataclass(frozen=True)
class MALA:
    """Preconditioned Metropolis-adjusted Langevin (Roberts & Tweedie 1996):

    ``y = x + (h/2) A grad log pi_beta(x) + sqrt(h) L eps``, ``A = L L^T = Sigma_hat``,
    ``h = scale^2 / d^(1/3)`` with ``scale = 1.65`` (Roberts & Rosenthal 1998, 2001), accepted
    with the Metropolis-Hastings ratio of the Gaussian proposal. Gradients by autograd of
    ``log pi_0 + beta log L``.
    """

    scale: float = 1.65
    needs_grad = True

    def __call__(self, target, x, log_lik, log_w, beta, num_steps, generator) -> MoveInfo:
        d = x.shape[-1]
        h = self.scale**2 / d ** (1.0 / 3.0)
        L = weighted_covariance_cholesky(x, log_w)
        LT = L.transpose(-1, -2)

        def drift(z: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
            return z + 0.5 * h * _matvec(L, _matvec(LT, g))

        lp, _, g = target.evaluate(x, beta, grad=True)
        accepted = torch.zeros_like(lp)
        for _ in range(num_steps):
            eps = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
            y = drift(x, g) + math.sqrt(h) * _matvec(L, eps)
            lpy, lly, gy = target.evaluate(y, beta, grad=True)
            r = (x - drift(y, gy)).transpose(-1, -2)  # [*batch, d, N]
            z = torch.linalg.solve_triangular(L, r, upper=False) / math.sqrt(h)
            log_q_rev = -0.5 * (z * z).sum(-2)
            log_q_fwd = -0.5 * (eps * eps).sum(-1)
            acc = _accept(lpy - lp + log_q_rev - log_q_fwd, generator)
            x = torch.where(acc.unsqueeze(-1), y, x)
            g = torch.where(acc.unsqueeze(-1), gy, g)
            log_lik = torch.where(acc, lly, log_lik)
            lp = torch.where(acc, lpy, lp)
            accepted = accepted + acc.to(accepted.dtype)
        rate = accepted.mean(-1) / num_steps if num_steps > 0 else accepted.mean(-1) * math.nan
        return MoveInfo(x, log_lik, rate)


MOVES: dict[str, type] = {"rwm": RandomWalkMetropolis, "mala": MALA}


def get_move(move: str | MCMCKernel) -> MCMCKernel:
    """``"rwm"`` / ``"mala"`` to a kernel with default scaling, or pass a kernel through."""
    if isinstance(move, str):
        if move not in MOVES:
            raise ValueError(f"unknown move {move!r}; expected one of {sorted(MOVES)} or a kernel")
        return MOVES[move]()
    if not callable(move):
        raise TypeError(f"move must be 'rwm', 'mala' or an MCMC kernel, got {move!r}")
    return move


# ------------------------------------------------------------ choosing the temperature


def next_temperature(
    log_w: torch.Tensor,
    log_lik: torch.Tensor,
    beta: torch.Tensor,
    target_ess: float,
    num_iters: int = NUM_BISECTION_STEPS,
) -> torch.Tensor:
    """Next inverse temperature ``beta' in [beta, 1]`` with CESS ``= target_ess * N``.

    Solves ``CESS(log_w, (beta' - beta) log L) = target_ess N`` (Zhou, Johansen & Aston 2016)
    by bisection on ``delta = beta' - beta in [0, 1 - beta]``, for every batch member at once and
    with a fixed number of halvings (no host synchronisation). If the full step to 1 keeps the
    CESS at or above the target, ``beta' = 1`` exactly; members with ``beta = 1`` keep it. The
    returned point is the lower end of the final bracket, so its CESS is ``>= target_ess N``.

    Args:
        log_w: ``[*batch, N]`` current log-weights.
        log_lik: ``[*batch, N]`` ``log L`` at the particles (finite).
        beta: ``[*batch]`` current inverse temperatures.
        target_ess: fraction of ``N`` in ``(0, 1)``.

    Returns:
        ``[*batch]`` next inverse temperatures.
    """
    level = target_ess * log_w.shape[-1]

    def cess_ok(delta: torch.Tensor) -> torch.Tensor:
        return conditional_ess(log_w, delta.unsqueeze(-1) * log_lik) >= level

    hi = 1.0 - beta
    to_one = cess_ok(hi)
    lo = torch.zeros_like(beta)
    for _ in range(num_iters):
        mid = 0.5 * (lo + hi)
        ok = cess_ok(mid)
        lo = torch.where(ok, mid, lo)
        hi = torch.where(ok, hi, mid)
    one = torch.ones_like(beta)
    return torch.where(to_one, one, torch.minimum(beta + lo, one))


# ----------------------------------------------------------------------- state and step


class TemperingState(NamedTuple):
    """Immutable state after ``step`` tempering steps.

    Attributes:
        step: number of steps done.
        particles: ``[*batch, N, d]``.
        log_w: ``[*batch, N]`` log-weights carried since the last resampling.
        log_z: ``[*batch]`` running estimate of ``log Z_beta``.
        beta: ``[*batch]`` current inverse temperature.
        log_lik: ``[*batch, N]`` ``log L`` at the particles.
    """

    step: int
    particles: torch.Tensor
    log_w: torch.Tensor
    log_z: torch.Tensor
    beta: torch.Tensor
    log_lik: torch.Tensor


class TemperingInfo(NamedTuple):
    """What one step did, per batch member: the new ``beta``, the ESS after reweighting (before
    resampling), the ``log Z`` increment, whether it resampled, the MCMC acceptance rate (NaN
    for members that were already at ``beta = 1`` and did not move) and the ancestors
    ``[*batch, N]`` (``None`` when nobody resampled)."""

    step: int
    beta: torch.Tensor
    ess: torch.Tensor
    log_z_increment: torch.Tensor
    resampled: torch.Tensor
    acceptance: torch.Tensor
    ancestors: torch.Tensor | None


@dataclass(frozen=True)
class AdaptiveTempering:
    """Adaptive tempered SMC from ``pi_0`` to ``pi_0 L`` as pure ``init`` / ``step``, plus ``run``.

    See the module docstring for the algorithm and references.

    Args:
        prior: ``pi_0``, a distribution with ``event_shape = [d]``, sampled through
            :func:`smcdiff.core.random.sample`.
        log_likelihood: ``log L``: ``x [*batch, N, d] -> [*batch, N]``; differentiable by
            autograd for ``move="mala"``. It may depend on the batch index (one likelihood per
            batch member).
        num_particles: ``N >= 1``.
        batch_shape: independent runs sharing the loop.
        target_ess: CESS level in ``(0, 1)`` as a fraction of ``N``.
        move: ``"rwm"``, ``"mala"`` or an :class:`MCMCKernel`.
        num_mcmc_steps: MCMC steps per tempering step (``>= 0``).
        resampler: scheme name or :class:`~smcdiff.core.resampling.Resampler`.
        trigger: when to resample after reweighting; default :class:`Always` (resample-move).
        max_steps: ``run`` raises if some member has not reached ``beta = 1`` by then.
    """

    prior: D.Distribution
    log_likelihood: LogLikelihood
    num_particles: int
    batch_shape: tuple[int, ...] = ()
    target_ess: float = 0.5
    move: MCMCKernel | str = "rwm"
    num_mcmc_steps: int = 5
    resampler: Resampler | str = "systematic"
    trigger: ResamplingTrigger = field(default_factory=Always)
    max_steps: int = 1000
    target: TemperedTarget = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "target", TemperedTarget(self.prior, self.log_likelihood))
        if isinstance(self.num_particles, bool) or not isinstance(self.num_particles, int) \
                or self.num_particles < 1:
            raise ValueError(f"num_particles must be an integer >= 1, got {self.num_particles!r}")
        te = self.target_ess
        if isinstance(te, bool) or not isinstance(te, (int, float)) or not 0.0 < te < 1.0:
            raise ValueError(f"target_ess must lie strictly between 0 and 1, got {te!r}")
        if isinstance(self.num_mcmc_steps, bool) or not isinstance(self.num_mcmc_steps, int) \
                or self.num_mcmc_steps < 0:
            raise ValueError(f"num_mcmc_steps must be an integer >= 0, got {self.num_mcmc_steps!r}")
        if isinstance(self.max_steps, bool) or not isinstance(self.max_steps, int) \
                or self.max_steps < 1:
            raise ValueError(f"max_steps must be an integer >= 1, got {self.max_steps!r}")
        object.__setattr__(self, "batch_shape", tuple(torch.Size(self.batch_shape)))
        object.__setattr__(self, "move", get_move(self.move))
        object.__setattr__(self, "resampler", get_resampler(self.resampler))
        if not callable(self.trigger):
            raise TypeError(f"trigger must be a resampling trigger, got {self.trigger!r}")

    @property
    def nfe_per_step(self) -> int:
        """``log L`` evaluations per particle in one tempering step (MALA: with gradient)."""
        return self.num_mcmc_steps + (1 if getattr(self.move, "needs_grad", False) else 0)

    def init(self, generator: torch.Generator | None = None) -> TemperingState:
        """Draw ``x ~ pi_0`` (``beta = 0``, equal weights, ``log Z_hat = 0``); evaluate ``log L``.

        Raises ``ValueError`` naming the batch members and particles where ``log L`` is not
        finite (one host synchronisation).
        """
        batch, N = torch.Size(self.batch_shape), self.num_particles
        x = sample(self.prior, (*batch, N), generator)
        ll = self.target.log_lik(x.detach())
        bad = ~torch.isfinite(ll)
        if bool(bad.any()):
            where = torch.nonzero(bad).tolist()
            raise ValueError(
                f"log_likelihood is not finite at {len(where)} of the {ll.numel()} prior draws "
                f"(indices [*batch, particle] {where[:5]}{' ...' if len(where) > 5 else ''}, "
                f"first value {ll[bad][0].item()}); tempering needs a finite log-likelihood on "
                "the prior's support"
            )
        zeros = torch.zeros(batch, dtype=x.dtype, device=x.device)
        return TemperingState(0, x.detach(), torch.zeros_like(ll), zeros, zeros.clone(), ll)

    def step(
        self, state: TemperingState, generator: torch.Generator | None = None
    ) -> tuple[TemperingState, TemperingInfo]:
        """Choose ``beta`` by CESS, reweight, resample (trigger), move with the MCMC kernel."""
        t = state.step + 1
        active = state.beta < 1
        beta = next_temperature(state.log_w, state.log_lik, state.beta, self.target_ess)
        delta = (beta - state.beta).unsqueeze(-1)
        # delta = 0 (not 0 * log L) for finished members keeps their weights exactly.
        log_G = torch.where(delta > 0, delta * state.log_lik, torch.zeros_like(state.log_lik))
        log_w, inc = reweight(state.log_w, log_G)
        ess_t = ess(log_w)

        flag = self.trigger(t, log_w)
        if flag is not False:
            flag = active & (flag if isinstance(flag, torch.Tensor) else True)
        (x, ll), carried, anc, flag_t = resample_where(
            flag, log_w, (state.particles, state.log_lik), get_resampler(self.resampler),
            generator,
        )
        move = get_move(self.move)  # already a kernel after __post_init__
        moved = move(self.target, x, ll, carried, beta, self.num_mcmc_steps, generator)
        x = torch.where(active[..., None, None], moved.particles, x)
        ll = torch.where(active.unsqueeze(-1), moved.log_lik, ll)
        acc = torch.where(active, moved.acceptance, torch.full_like(moved.acceptance, math.nan))
        new = TemperingState(t, x, carried, state.log_z + inc, beta, ll)
        return new, TemperingInfo(t, beta, ess_t, inc, flag_t, acc, anc)

    def run(
        self,
        generator: torch.Generator | None = None,
        progress: bool | None = None,
        callback: Callable[[TemperingState, TemperingInfo], None] | None = None,
    ) -> TemperedResult:
        """Step until every batch member has ``beta = 1``; one host synchronisation per step.

        Args:
            generator: source of all randomness.
            progress: show a progress bar (``None``: when stderr is a terminal).
            callback: called as ``callback(state, info)`` after every step.

        Raises:
            RuntimeError: some member has not reached ``beta = 1`` after ``max_steps`` steps.
        """
        state = self.init(generator)
        rows: list[TemperingInfo] = []
        bar = progress_bar(progress, desc="tempering")
        try:
            while True:
                state, info = self.step(state, generator)
                rows.append(info)
                if callback is not None:
                    callback(state, info)
                beta_min = float(state.beta.min()) if state.beta.numel() else 1.0
                bar.update(1)
                bar.set_postfix(beta_min=f"{beta_min:.4g}")
                if beta_min >= 1.0:
                    break
                if state.step >= self.max_steps:
                    raise RuntimeError(
                        f"adaptive tempering did not reach beta = 1 in max_steps={self.max_steps} "
                        f"steps (smallest beta {beta_min:.3g}); raise max_steps or target_ess, "
                        "or check log_likelihood"
                    )
        finally:
            bar.close()
        return TemperedResult(
            particles=state.particles,
            log_w=state.log_w,
            log_z=state.log_z,
            betas=torch.stack([r.beta for r in rows]),
            ess=torch.stack([r.ess for r in rows]),
            acceptance=torch.stack([r.acceptance for r in rows]),
            log_z_increments=torch.stack([r.log_z_increment for r in rows]),
            resampled=torch.stack([r.resampled for r in rows]),
            num_steps=state.step,
            num_particles=self.num_particles,
            nfe=1 + state.step * self.nfe_per_step,
        )


# ------------------------------------------------------------------------- the result


@dataclass(frozen=True)
class TemperedResult:
    """What an adaptive tempering run returns.

    Attributes:
        particles: ``[*batch, N, d]`` final particles (targeting the posterior).
        log_w: ``[*batch, N]`` final log-weights (0 after a final resampling).
        log_z: ``[*batch]`` estimate of ``log Z = log ∫ pi_0(x) L(x) dx``.
        betas: ``[num_steps, *batch]`` inverse temperature after each step (``betas[-1] = 1``).
        ess: ``[num_steps, *batch]`` ESS after each step's reweighting, before resampling.
        acceptance: ``[num_steps, *batch]`` MCMC acceptance rate (NaN once a member is done).
        log_z_increments: ``[num_steps, *batch]``; their sum is ``log_z``.
        resampled: ``[num_steps, *batch]`` whether the step resampled.
        num_steps: number of tempering steps of the loop (the slowest member's).
        num_particles: ``N``.
        nfe: ``log L`` evaluations per particle (MALA counts one with its gradient).
    """

    particles: torch.Tensor
    log_w: torch.Tensor
    log_z: torch.Tensor
    betas: torch.Tensor
    ess: torch.Tensor
    acceptance: torch.Tensor
    log_z_increments: torch.Tensor
    resampled: torch.Tensor
    num_steps: int
    num_particles: int
    nfe: int

    @property
    def steps_per_member(self) -> torch.Tensor:
        """``[*batch]`` tempering steps each batch member needed to reach ``beta = 1``."""
        return (self.betas < 1).sum(0) + 1

    @property
    def weights(self) -> torch.Tensor:
        """Normalized final weights ``[*batch, N]``."""
        return normalize(self.log_w)

    def mean(self, fn: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """Posterior mean estimate ``sum_i W_i fn(x_i)``: ``[*batch, *fn_event]``."""
        from smcdiff.core.collectors import weighted_mean

        v = self.particles if fn is None else fn(self.particles)
        return weighted_mean(v, self.log_w)

    def sample(
        self,
        num_samples: int | None = None,
        *,
        scheme: str | Resampler = "multinomial",
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Equally weighted draws ``[*batch, M, d]`` from the weighted particles."""
        anc = get_resampler(scheme)(self.log_w, num_samples, generator=generator)
        return take_particles(self.particles, anc)


def tempered_smc(
    prior: D.Distribution,
    log_likelihood: LogLikelihood,
    num_particles: int,
    *,
    batch_shape: Iterable[int] = (),
    target_ess: float = 0.5,
    move: str | MCMCKernel = "rwm",
    num_mcmc_steps: int = 5,
    resampling: str | Resampler = "systematic",
    resample: str | ResamplingTrigger = "always",
    ess_threshold: float = 0.5,
    generator: torch.Generator | None = None,
    max_steps: int = 1000,
    progress: bool | None = None,
) -> TemperedResult:
    """Sample ``pi(x) ∝ pi_0(x) L(x)`` and estimate ``log Z`` by adaptive tempered SMC.

    Temperatures are chosen by the conditional ESS (Jasra et al. 2011; Zhou, Johansen & Aston
    2016); each step reweights, resamples and moves with ``num_mcmc_steps`` of random-walk
    Metropolis (``"rwm"``) or preconditioned MALA (``"mala"``) scaled after Roberts & Rosenthal
    (2001); see :class:`AdaptiveTempering`.

    Args:
        prior: ``pi_0`` with ``event_shape = [d]``.
        log_likelihood: ``x [*batch, N, d] -> [*batch, N]``.
        num_particles: ``N``.
        batch_shape: independent runs, vectorised.
        target_ess: CESS fraction in ``(0, 1)`` that sets each temperature increment.
        move: ``"rwm"``, ``"mala"`` or a kernel object.
        num_mcmc_steps: MCMC steps per tempering step.
        resampling: resampling scheme.
        resample: ``"always"`` (default, resample-move), ``"adaptive"`` (ESS below
            ``ess_threshold * N``), ``"never"`` or a trigger object.
        ess_threshold: threshold for ``resample="adaptive"``.
        generator: source of all randomness.
        max_steps: raise ``RuntimeError`` if ``beta = 1`` is not reached by then.
        progress: progress bar (``None``: when stderr is a terminal).

    Example:
        >>> import torch
        >>> from torch.distributions import MultivariateNormal
        >>> prior = MultivariateNormal(torch.zeros(2), torch.eye(2))
        >>> ll = lambda x: -0.5 * ((x - 1.0) ** 2).sum(-1) / 0.1
        >>> res = tempered_smc(prior, ll, 256, batch_shape=(4,),
        ...                    generator=torch.Generator().manual_seed(0))
        >>> res.log_z.shape, bool((res.betas[-1] == 1).all())
        (torch.Size([4]), True)
    """
    sampler = AdaptiveTempering(
        prior, log_likelihood, num_particles, tuple(batch_shape), target_ess, move,
        num_mcmc_steps, resampling, make_trigger(resample, ess_threshold), max_steps,
    )
    return sampler.run(generator, progress=progress)
