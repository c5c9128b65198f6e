"""The general weighted SDE of Feynman-Kac correctors, as one Feynman-Kac model.

Skreta et al. 2025, *Feynman-Kac Correctors in Diffusion: Annealing, Guidance, and Product
of Experts* (arXiv 2503.02819), Props. 3.1-3.4; notes ``feynman-kac-correctors.md`` §2-3.

Experts ``q^i_t`` are diffusion models sharing one noising process (any parametrization;
their scores ``s_i = grad log q^i_t`` come from :meth:`DiffusionModel.score`), each with a
real exponent ``beta_i``. The target path is the unnormalised

    p~_t(x) = prod_i q^i_t(x)^{beta_i} * exp(rho_t(x)),

with an optional log-tilt ``rho_t`` (e.g. a reward ``rho_t = lambda_t r(x)``, note §2(d)).
Write ``B = sum_i beta_i`` (``> 0``), ``S = sum_i beta_i s_i``, ``R = grad rho_t``, and let
the forward process be ``dx = f(t) x dt + g(t) dW`` (``f = drift_coef``, ``g^2 =
diffusion_sq``; ``div f = d f(t)`` with ``d`` the number of event entries).

**Time.** Diffusion time ``t`` in [0, 1] (0 = data, 1 = noise). Sampling runs in generation
time ``tau = 1 - t`` along a strictly decreasing grid ``t_0 > t_1 > ... > t_K``
(default: ``K = num_steps`` steps uniform in log-SNR from ``process.t_max`` to ``process.t_min``;
``final="zero"`` appends a last step to ``t = 0``), with positive steps
``Delta_n = t_n - t_{n+1}``. SMC step ``0`` draws ``x`` at ``t_0``; SMC step ``n >= 1``
moves from ``t_{n-1}`` to ``t_n``, so the model has ``T = K + 1`` steps.

**Proposal** (Euler-Maruyama, noise factor ``zeta >= 0``), at the pre-step point ``(x, t_n)``:

    x' = x + u Delta + zeta g sqrt(Delta) eps,
    u  = -f x + (1 + zeta^2)/2 g^2 S + zeta^2/2 g^2 R.

**Weights** ``log G = Gamma(x, t_n) Delta`` at the same pre-step point, with

    Gamma = (B - 1) d f + g^2/2 (|S|^2 - sum_i beta_i |s_i|^2)
            + d rho/d tau - f x.R + g^2/2 S.R.

Derivation (note §2): ``p~`` solves ``d_tau p~ = -div(u p~) + zeta^2 g^2/2 Lap p~ + Gamma p~``
once each ``q^i`` satisfies its forward Fokker-Planck equation; with the drift factors
``(1 + zeta^2)/2`` on ``S`` and ``zeta^2/2`` on ``R`` every divergence of a score and the
Laplacian of ``rho`` cancel, so ``Gamma`` needs scores and ``grad rho`` only. ``Gamma`` does
not depend on ``zeta``. ``zeta = 1`` is the target-score SDE; ``zeta^2 = 1/B`` the
tempered-noise SDE; ``zeta = 0`` the probability-flow ODE plus weights (valid, but copies
made by resampling never separate, so it warns). The term ``(B - 1) d f`` is the same for
every particle: it cancels in normalised weights but matters for ``log Z``. The squared
norms are evaluated as ``(B-1)/B |S|^2 - sum_i beta_i |s_i - S/B|^2`` in float64 (no
cancellation for CFG with large ``w``), and log-potentials are returned in float64, so the
engine accumulates log-weights and ``log Z`` in float64 whatever the particle dtype.

**Initial law** (``init``): ``"prior"`` draws ``N(0, sigma(t_0)^2 I / B)``, the normalised
``prod_i q^i_{t_0}^{beta_i}`` when every ``q^i_{t_0} ~ N(0, sigma(t_0)^2 I)`` (``sigma_1 = 1``
for VP-like processes, ``sigma_max`` for VE/EDM); this ignores the data's residual signal
``alpha_{t_0} x_0``, a small bias the weights do not correct. Pass the exact normalised
``p~_{t_0}`` instead (any object with ``sample(shape, generator=)``, e.g. a
:class:`~smcdiff.gaussian.Gaussian`, or a callable ``init(N, batch_shape, generator)``) to
remove it. A log-tilt contributes ``log G_0 = rho_{t_0}(x)``.

**Evidence.** The engine's ``log_z`` (``SMCResult.log_z``) estimates

    log Z_{t_K} - log Z_{t_0} + init_log_z,     Z_t = int p~_t(x) dx,

i.e. the log-ratio of normalisers of the unnormalised path; pass ``init_log_z = log Z_{t_0}``
(known when you start from the exact normalised ``p~_{t_0}``; :meth:`WeightedSDE.prior_log_z`
is the value matching ``init="prior"``) to estimate ``log Z_{t_K}`` itself. The estimate is
consistent as ``Delta -> 0`` (Euler bias ``O(Delta)``) and, at fixed grid, ``exp(log_z)`` is an
unbiased estimate of the discretised path's normaliser.

**Resampling** is the core engine's (never a second loop): ``sd.smc(model, N, resample=...,
ess_threshold=..., resampling=...)``; log-weights are carried when a step does not resample.
To resample only in an active time window use :meth:`WeightedSDE.window`, e.g.::

    model = WeightedSDE([expert], [2.0], event_shape=(2,), num_steps=200)
    trig = model.window(ESSTrigger(0.5), t_from=1.0, t_to=0.4)   # core Window trigger
    out = sd.smc(model, 2000, resample=trig, generator=gen)
    # or resample at every step inside the window:  model.window("always", t_to=0.4)

Outside the window the weights keep accumulating (the estimator stays consistent); only
discarding them would bias it.

**Stabilisers** (off by default; each *biases* the estimator): ``clamp=c`` clips every
increment ``Gamma Delta`` to ``[-c, c]`` (biases particles and ``log Z``); ``center=True``
subtracts the per-run mean increment over particles (leaves normalised weights unchanged
up to clamping, but ``log_z`` then no longer estimates any normaliser).

**Numerics.** Non-finite increments are never zeroed: a NaN score gives a NaN log-potential
and the engine raises :class:`~smcdiff.core.weights.DegenerateWeightsError` naming the SMC
step; an expert whose wrapper rejects its output (``check_finite=True``) raises ``ValueError``
naming the SMC step and time.

Shapes: particles ``x: [*batch, N, *event]``, log-potentials ``[*batch, N]`` (float64).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol, runtime_checkable

import torch
from torch import Tensor

from smcdiff.core.triggers import ResamplingTrigger, Window, make_trigger
from smcdiff.diffusion.grids import check_grid, time_grid
from smcdiff.diffusion.processes import NoiseProcess

__all__ = ["RewardTilt", "Tilt", "TiltTerms", "WeightedSDE", "WeightedSDETerms"]

_LOG_2PI = math.log(2.0 * math.pi)


# ----------------------------------------------------------------------------- tilts


class TiltTerms(NamedTuple):
    """A log-tilt ``rho_t(x)`` and its derivatives at ``(x, t)``.

    Attributes:
        value: ``rho_t(x)``, ``[*batch, N]``.
        d_tau: ``d rho / d tau = -d rho / dt`` (generation direction), ``[*batch, N]``.
        grad: ``grad_x rho_t(x)``, ``[*batch, N, *event]``.
    """

    value: Tensor
    d_tau: Tensor
    grad: Tensor


@runtime_checkable
class Tilt(Protocol):
    """Protocol of a log-tilt ``rho_t`` of the target path ``p~_t = prod q^beta * exp(rho_t)``.

    ``tilt(x, t) -> TiltTerms`` at particles ``x: [*batch, N, *event]`` and diffusion time
    ``t`` (a float; 0 = data, 1 = noise). An optional integer attribute ``nfe`` declares the
    network evaluations per particle of one call (counted in :meth:`WeightedSDE.nfe`).
    """

    def __call__(self, x: Tensor, t: float) -> TiltTerms: ...


def _schedule_and_rate(schedule: Callable[[Tensor], Any], t: float) -> tuple[float, float]:
    """``lambda(t)`` and ``d lambda / dt`` (autograd; float64)."""
    with torch.enable_grad():
        tt = torch.tensor(float(t), dtype=torch.float64, requires_grad=True)
        lam = schedule(tt)
        if not isinstance(lam, Tensor):
            lam = torch.as_tensor(lam, dtype=torch.float64)
        if lam.numel() != 1:
            raise ValueError(f"schedule(t) must return a scalar, got shape {tuple(lam.shape)}")
        if lam.requires_grad:
            (dlam,) = torch.autograd.grad(lam.reshape(()), tt)
            dlam_f = float(dlam)
        else:
            dlam_f = 0.0
    return float(lam.detach()), dlam_f


class RewardTilt:
    """Reward tilt ``rho_t(x) = lambda(t) r(x)`` (FKC Prop. 3.4; note §2(d)).

    The tilted path ``p~_t = prod q^beta * exp(lambda(t) r)`` ends at
    ``p~_0 = prod q_0^beta * exp(lambda(0) r)``; ``lambda`` should grow from ``0`` at noise
    to the final strength at data.

    Args:
        reward: ``r(x) -> [*batch, N]`` for ``x: [*batch, N, *event]``; differentiable in
            ``x`` unless ``grad`` is given.
        scale: final strength ``lambda(0)`` (used by the default schedule).
        schedule: ``lambda(t)`` as a function of a 0-d float64 diffusion-time tensor
            (0 = data, 1 = noise); default ``scale * (1 - t)``. Its time derivative is taken
            by autograd.
        grad: optional ``grad r(x)`` (same shape as ``x``); by autograd when ``None``
            (with ``create_graph`` when ``x`` itself requires grad, so drifts stay
            differentiable).
        nfe: network evaluations per particle of one reward (+ gradient) evaluation.
    """

    def __init__(
        self,
        reward: Callable[[Tensor], Tensor],
        scale: float = 1.0,
        schedule: Callable[[Tensor], Any] | None = None,
        *,
        grad: Callable[[Tensor], Tensor] | None = None,
        nfe: int = 0,
    ) -> None:
        if not callable(reward):
            raise TypeError(f"reward must be callable r(x) -> [*batch, N], got {type(reward)}")
        if grad is not None and not callable(grad):
            raise TypeError(f"grad must be callable or None, got {type(grad).__name__}")
        if schedule is not None and not callable(schedule):
            raise TypeError(f"schedule must be callable lambda(t) or None, got {type(schedule)}")
        scale = float(scale)
        if not math.isfinite(scale):
            raise ValueError(f"scale must be finite, got {scale}")
        self.reward = reward
        self.scale = scale
        self.schedule = schedule if schedule is not None else (lambda t: scale * (1 - t))
        self.grad = grad
        self.nfe = int(nfe)

    def __repr__(self) -> str:
        return f"RewardTilt(reward={self.reward!r}, scale={self.scale})"

    def _value_and_grad(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.grad is not None:
            return self.reward(x), self.grad(x)
        create = x.requires_grad and torch.is_grad_enabled()
        with torch.enable_grad():
            xx = x if create else x.detach().requires_grad_(True)
            r = self.reward(xx)
            (gr,) = torch.autograd.grad(r.sum(), xx, create_graph=create)
        return (r if create else r.detach()), gr

    def __call__(self, x: Tensor, t: float) -> TiltTerms:
        lam, dlam_dt = _schedule_and_rate(self.schedule, t)
        r, gr = self._value_and_grad(x)
        if r.shape != x.shape[: r.ndim] or gr.shape != x.shape:
            raise ValueError(
                f"reward returned shape {tuple(r.shape)} and gradient {tuple(gr.shape)} for x of "
                f"shape {tuple(x.shape)}; expected [*batch, N] and x's shape"
            )
        return TiltTerms(lam * r, -dlam_dt * r, lam * gr)


# ----------------------------------------------------------------------------- model


class WeightedSDETerms(NamedTuple):
    """Everything one expert evaluation gives at a pre-step point ``(x, t)``.

    Attributes:
        drift: proposal drift ``u`` in generation time, ``[*batch, N, *event]`` (x's dtype).
        rate: weight rate ``Gamma(x, t)`` (float64), ``[*batch, N]``; the log-potential of a
            step of length ``Delta`` is ``rate * Delta``.
        scores: the experts' scores ``s_i``, each ``[*batch, N, *event]``.
        target_score: ``S + R``, the score of ``p~_t``.
    """

    drift: Tensor
    rate: Tensor
    scores: tuple[Tensor, ...]
    target_score: Tensor


def _resolve_zeta(zeta: Any, B: float) -> float:
    if zeta is None or zeta == "target":
        return 1.0
    if zeta == "tempered":
        return 1.0 / math.sqrt(B)
    if isinstance(zeta, bool) or not isinstance(zeta, (int, float)):
        raise TypeError(f"zeta must be a number >= 0, 'target' or 'tempered', got {zeta!r}")
    zeta = float(zeta)
    if not (math.isfinite(zeta) and zeta >= 0):
        raise ValueError(f"zeta must be a finite number >= 0, got {zeta}")
    return zeta


def _sq_norm(v: Tensor, event_ndim: int) -> Tensor:
    """``|v|^2`` over the trailing ``event_ndim`` dims."""
    if event_ndim == 0:
        return v * v
    return v.flatten(start_dim=v.ndim - event_ndim).pow(2).sum(-1)


def _dot(a: Tensor, b: Tensor, event_ndim: int) -> Tensor:
    if event_ndim == 0:
        return a * b
    return (a * b).flatten(start_dim=a.ndim - event_ndim).sum(-1)


class WeightedSDE:
    """Feynman-Kac model of the general weighted SDE (FKC; module docstring for the maths).

    Args:
        experts: diffusion models (``smcdiff.diffusion.DiffusionModel`` or anything with
            ``score(x, t, **cond)`` and ``process``); all must share one noising process.
        betas: real exponents ``beta_i`` (one per expert; any sign) with ``B = sum > 0``.
        zeta: noise factor: a number ``>= 0``, ``"target"`` (``1``; the default) or
            ``"tempered"`` (``1/sqrt(B)``). ``0`` warns: resampled copies never separate.
        event_shape: shape of one particle (an int ``d`` means ``(d,)``); inferred from an
            ``init`` with a ``dim`` attribute.
        num_steps: Euler-Maruyama steps (default 100) on
            ``time_grid(process, num_steps, grid_kind, t_start, t_end, final)``.
        grid: an explicit strictly decreasing grid of diffusion times (overrides the above).
        grid_kind, t_start, t_end, final: grid options (defaults ``"logsnr"``,
            ``process.t_max``, ``process.t_min``, ``"t_min"``), see
            :func:`smcdiff.diffusion.time_grid`. Uniform-in-``t`` grids put too few steps
            where ``f`` and ``g^2`` blow up near ``t = 1`` for flows and cosine schedules
            (rectified flow from ``t_max = 0.999``: ``g^2 = 2000``), which wrecks the Euler
            steps; the log-SNR grid is safe for every process (it is geometric in ``sigma``
            for VE/EDM, as in the FKC reference code).
        init: ``"prior"`` (``N(0, sigma(t_0)^2 I / B)``), an object with
            ``sample(shape, generator=)`` returning ``[*shape, *event]``, or a callable
            ``init(N, batch_shape, generator) -> [*batch, N, *event]``.
        init_log_z: constant added to ``log G_0`` (set it to ``log Z_{t_0}`` to make
            ``log_z`` estimate ``log Z_{t_K}``).
        tilt: optional log-tilt ``rho_t`` (:class:`RewardTilt` or any :class:`Tilt`).
        conds: per-expert conditioning keywords passed to ``score`` (e.g. a class label).
        clamp: clip each increment ``Gamma Delta`` to ``[-clamp, clamp]`` (biased; opt-in).
        center: subtract the per-run mean increment (``log_z`` becomes meaningless; opt-in).
        dtype, device: of the prior draw (default: ``torch.get_default_dtype()``, CPU); a
            sampled ``init`` keeps its own dtype unless ``dtype`` is given.

    Attributes:
        T: number of SMC steps (``len(grid)``); ``grid``: float64 times ``[T]``;
        B, zeta, betas, experts, process, event_shape.

    The engine calls ``M(n, x_prev)`` then ``log_G(n, x_prev, x)`` with the same ``x_prev``;
    the expert scores evaluated by ``M`` are reused by ``log_G`` (one evaluation per expert
    per step, :meth:`nfe`). Called on other inputs, ``log_G`` re-evaluates the experts.
    """

    def __init__(
        self,
        experts: Sequence[Any],
        betas: Sequence[float],
        *,
        zeta: float | str | None = None,
        event_shape: int | Sequence[int] | None = None,
        num_steps: int | None = None,
        grid: Tensor | Sequence[float] | None = None,
        grid_kind: str = "logsnr",
        t_start: float | None = None,
        t_end: float | None = None,
        final: str = "t_min",
        init: Any = "prior",
        init_log_z: float = 0.0,
        tilt: Tilt | None = None,
        conds: Sequence[Mapping[str, Any] | None] | None = None,
        clamp: float | None = None,
        center: bool = False,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        experts = tuple(experts)
        if not experts:
            raise ValueError("experts: expected at least one diffusion model")
        for i, e in enumerate(experts):
            if not callable(getattr(e, "score", None)) or not hasattr(e, "process"):
                raise TypeError(
                    f"experts[{i}]: expected a DiffusionModel (with score(x, t) and process), "
                    f"got {type(e).__name__}"
                )
        process = experts[0].process
        if not isinstance(process, NoiseProcess):
            raise TypeError(f"experts[0].process: expected a NoiseProcess, got {type(process)}")
        for i, e in enumerate(experts[1:], 1):
            if e.process != process:
                raise ValueError(
                    f"experts[{i}].process = {e.process!r} differs from experts[0].process = "
                    f"{process!r}; the weighted SDE needs one forward process for all experts"
                )
        try:
            betas_f = tuple(float(b) for b in betas)
        except TypeError as err:
            raise TypeError(f"betas: expected a sequence of numbers, got {betas!r}") from err
        if len(betas_f) != len(experts):
            raise ValueError(f"betas: expected {len(experts)} exponents, got {len(betas_f)}")
        if not all(math.isfinite(b) for b in betas_f):
            raise ValueError(f"betas: expected finite exponents, got {betas_f}")
        B = sum(betas_f)
        if not B > 0:
            raise ValueError(f"betas: the total exponent B = sum(betas) must be > 0, got {B}")
        self.experts = experts
        self.betas = betas_f
        self.B = B
        self.process = process
        self.zeta = _resolve_zeta(zeta, B)
        if self.zeta == 0:
            warnings.warn(
                "zeta = 0: the proposal is the probability-flow ODE; resampling only duplicates "
                "particles, which then never separate (use zeta > 0 for diversity)",
                UserWarning, stacklevel=2,
            )

        # init and event shape
        if isinstance(init, str):
            if init != "prior":
                raise ValueError(f"init: expected 'prior', a distribution or a callable, got "
                                 f"{init!r}")
        elif not (callable(getattr(init, "sample", None)) or callable(init)):
            raise TypeError("init: expected 'prior', an object with sample(shape, generator=) "
                            f"or a callable init(N, batch_shape, generator), got {type(init)}")
        self.init = init
        if event_shape is None and hasattr(init, "dim") and not isinstance(init, str):
            event_shape = int(init.dim)
        if event_shape is None:
            raise ValueError("event_shape: expected the shape of one particle, e.g. (2,), "
                             "(or an init with a `dim` attribute)")
        if isinstance(event_shape, int):
            event_shape = (event_shape,)
        self.event_shape = tuple(int(s) for s in event_shape)
        if any(s < 1 for s in self.event_shape):
            raise ValueError(f"event_shape: expected positive sizes, got {self.event_shape}")
        self.dim = math.prod(self.event_shape)
        self.init_log_z = float(init_log_z)
        if not math.isfinite(self.init_log_z):
            raise ValueError(f"init_log_z must be finite, got {init_log_z}")

        # time grid
        if grid is not None:
            if num_steps is not None:
                raise ValueError("give either grid or num_steps, not both")
            g = check_grid(grid).detach().to("cpu", torch.float64)
        else:
            n = 100 if num_steps is None else num_steps
            g = time_grid(process, n, kind=grid_kind, t_start=t_start, t_end=t_end, final=final)
        self.grid = g
        self.T = int(g.numel())
        self._times = g.tolist()
        pre = g[:-1]
        f = torch.as_tensor(process.drift_coef(pre), dtype=torch.float64).expand(pre.shape)
        g2 = torch.as_tensor(process.diffusion_sq(pre), dtype=torch.float64).expand(pre.shape)
        bad = ~(torch.isfinite(f) & torch.isfinite(g2))
        if bool(bad.any()):
            i = int(bad.nonzero()[0])
            raise ValueError(
                f"grid: the forward SDE coefficients are not finite at t = {self._times[i]} "
                f"(f = {f[i].item()}, g^2 = {g2[i].item()}); start below process.t_max "
                "(alpha must be > 0 at every pre-step time)"
            )
        self._f = f.tolist()
        self._g2 = g2.tolist()
        self._dt = (g[:-1] - g[1:]).tolist()

        if tilt is not None and not callable(tilt):
            raise TypeError(f"tilt: expected a Tilt (callable tilt(x, t)), got {type(tilt)}")
        self.tilt = tilt
        if conds is None:
            conds = [None] * len(experts)
        conds = list(conds)
        if len(conds) != len(experts):
            raise ValueError(f"conds: expected {len(experts)} entries, got {len(conds)}")
        self.conds = tuple(dict(c or {}) for c in conds)
        if clamp is not None:
            clamp = float(clamp)
            if not clamp > 0:
                raise ValueError(f"clamp: expected a positive bound, got {clamp}")
        self.clamp = clamp
        self.center = bool(center)
        self.dtype = dtype
        self.device = device
        self._cache: tuple[int, Tensor, Tensor] | None = None

    def __repr__(self) -> str:
        return (f"WeightedSDE(experts={len(self.experts)}, betas={self.betas}, zeta={self.zeta}, "
                f"steps={self.T - 1}, process={self.process!r})")

    # ------------------------------------------------------------------ public maths

    def _step_time(self, t: float) -> tuple[float, float]:
        tt = torch.tensor(float(t), dtype=torch.float64)
        f = float(self.process.drift_coef(tt))
        g2 = float(self.process.diffusion_sq(tt))
        return f, g2

    def terms(self, x: Tensor, t: float) -> WeightedSDETerms:
        """Drift, weight rate and scores at ``x: [*batch, N, *event]``, diffusion time ``t``
        (0 = data, 1 = noise).

        One evaluation of every expert (and of the tilt). Differentiable in ``x`` when the
        experts are (used by the pointwise PDE check).
        """
        f, g2 = self._step_time(t)
        return self._terms(x, float(t), f, g2, None)

    def _terms(self, x: Tensor, t: float, f: float, g2: float,
               step: int | None) -> WeightedSDETerms:
        E = len(self.event_shape)
        if tuple(x.shape[x.ndim - E:]) != self.event_shape:
            raise ValueError(f"x: expected shape [*batch, N, *{self.event_shape}], got "
                             f"{tuple(x.shape)}")
        scores = []
        for i, (e, c) in enumerate(zip(self.experts, self.conds)):
            try:
                s = e.score(x, t, **c)
            except ValueError as err:
                where = f"SMC step {step} " if step is not None else ""
                raise ValueError(f"WeightedSDE {where}(t = {t}), experts[{i}]: {err}") from err
            scores.append(s)
        S = sum(b * s for b, s in zip(self.betas, scores))
        s64 = [s.to(torch.float64) for s in scores]
        S64 = sum(b * s for b, s in zip(self.betas, s64))
        B = self.B
        mean = S64 / B
        spread = sum(b * _sq_norm(s - mean, E) for b, s in zip(self.betas, s64))
        rate = (B - 1) * self.dim * f + 0.5 * g2 * ((B - 1) / B * _sq_norm(S64, E) - spread)
        z2 = self.zeta * self.zeta
        drift = -f * x + (0.5 * (1 + z2) * g2) * S
        target = S
        if self.tilt is not None:
            tt = self.tilt(x, t)
            batch = tuple(x.shape[: x.ndim - E])
            if tuple(tt.d_tau.shape) != batch or tuple(tt.value.shape) != batch \
                    or tt.grad.shape != x.shape:
                raise ValueError(
                    f"tilt returned value {tuple(tt.value.shape)}, d_tau "
                    f"{tuple(tt.d_tau.shape)} and grad {tuple(tt.grad.shape)} for x of shape "
                    f"{tuple(x.shape)}; expected [*batch, N] = {batch} and x's shape"
                )
            R = tt.grad
            drift = drift + (0.5 * z2 * g2) * R
            R64 = R.to(torch.float64)
            rate = (rate + tt.d_tau.to(torch.float64) - f * _dot(x.to(torch.float64), R64, E)
                    + 0.5 * g2 * _dot(S64, R64, E))
            target = S + R
        return WeightedSDETerms(drift, rate, tuple(scores), target)

    def drift(self, x: Tensor, t: float) -> Tensor:
        """Proposal drift ``u(x, t) = -f x + (1+zeta^2)/2 g^2 S + zeta^2/2 g^2 R`` (generation
        time), ``[*batch, N, *event]``."""
        return self.terms(x, t).drift

    def rate(self, x: Tensor, t: float) -> Tensor:
        """Weight rate ``Gamma(x, t)`` (float64, ``[*batch, N]``; module docstring)."""
        return self.terms(x, t).rate

    def noise_scale(self, t: float) -> float:
        """``zeta g(t)``: the proposal's diffusion coefficient in generation time."""
        return self.zeta * math.sqrt(self._step_time(t)[1])

    def prior_log_z(self) -> float:
        """``log int prod_i N(x; 0, sigma(t_0)^2 I)^{beta_i} dx
        = d (1 - B)/2 log(2 pi sigma_0^2) - d/2 log B``: the ``init_log_z`` that matches
        ``init="prior"`` (exact when every ``q^i_{t_0}`` is ``N(0, sigma_0^2 I)``)."""
        s0 = float(self.process.sigma(torch.tensor(self._times[0], dtype=torch.float64)))
        d, B = self.dim, self.B
        return 0.5 * d * (1 - B) * (_LOG_2PI + 2 * math.log(s0)) - 0.5 * d * math.log(B)

    def window(
        self,
        trigger: str | ResamplingTrigger = "adaptive",
        *,
        t_from: float = 1.0,
        t_to: float = 0.0,
        ess_threshold: float = 0.5,
    ) -> Window:
        """A core :class:`~smcdiff.core.triggers.Window` that lets ``trigger`` resample only
        while the particles sit at diffusion times in ``[t_to, t_from]``.

        Resampling before SMC step ``n`` happens at time ``grid[n-1]``. ``trigger`` is a core
        trigger or a name (``"adaptive"`` with ``ess_threshold``, ``"always"``).
        Use as ``sd.smc(model, N, resample=model.window("always", t_to=0.4))``.
        """
        if not t_to <= t_from:
            raise ValueError(f"window: need t_to <= t_from, got t_to={t_to}, t_from={t_from}")
        inner = make_trigger(trigger, ess_threshold)
        inside = [n for n in range(1, self.T) if t_to <= self._times[n - 1] <= t_from]
        if not inside:
            return Window(inner, start=1, stop=1)
        return Window(inner, start=inside[0], stop=inside[-1] + 1)

    # ------------------------------------------------------------------ FeynmanKac

    def nfe(self, t: int) -> int:
        """Network evaluations per particle at SMC step ``t``: one per expert (plus the
        tilt's declared ``nfe``) for ``t >= 1``; ``0`` at ``t = 0``."""
        tilt_nfe = int(getattr(self.tilt, "nfe", 0)) if self.tilt is not None else 0
        return 0 if t == 0 else len(self.experts) + tilt_nfe

    def M0(
        self, num_particles: int, batch_shape: torch.Size, generator: torch.Generator | None
    ) -> Tensor:
        """Draw ``x_0 ~ init`` at ``t_0 = grid[0]``: ``[*batch, N, *event]``."""
        shape = (*tuple(batch_shape), num_particles)
        if isinstance(self.init, str):  # "prior"
            dtype = self.dtype or torch.get_default_dtype()
            s0 = float(self.process.sigma(torch.tensor(self._times[0], dtype=torch.float64)))
            z = torch.randn((*shape, *self.event_shape), generator=generator, dtype=dtype,
                            device=self.device)
            return (s0 / math.sqrt(self.B)) * z
        if callable(getattr(self.init, "sample", None)):
            x = self.init.sample(shape, generator=generator)
        else:
            x = self.init(num_particles, torch.Size(batch_shape), generator)
        if not isinstance(x, Tensor) or tuple(x.shape) != (*shape, *self.event_shape):
            raise ValueError(
                f"init returned {tuple(x.shape) if isinstance(x, Tensor) else type(x)}; "
                f"expected [*batch, N, *event] = {(*shape, *self.event_shape)}"
            )
        if self.dtype is not None or self.device is not None:
            x = x.to(dtype=self.dtype or x.dtype, device=self.device or x.device)
        return x

    def _step_terms(self, n: int, x_prev: Tensor) -> WeightedSDETerms:
        with torch.no_grad():
            return self._terms(x_prev, self._times[n - 1], self._f[n - 1], self._g2[n - 1], n)

    def M(self, t: int, x_prev: Tensor, generator: torch.Generator | None) -> Tensor:
        """Euler-Maruyama move of SMC step ``t`` from ``grid[t-1]`` to ``grid[t]``."""
        terms = self._step_terms(t, x_prev)
        dt = self._dt[t - 1]
        self._cache = (t, x_prev, terms.rate * dt)
        x = x_prev + terms.drift * dt
        if self.zeta > 0:
            scale = self.zeta * math.sqrt(self._g2[t - 1] * dt)
            eps = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
            x = x + scale * eps
        return x

    def _stabilise(self, inc: Tensor) -> Tensor:
        if self.clamp is not None:
            inc = inc.clamp(-self.clamp, self.clamp)  # NaN stays NaN
        if self.center:
            inc = inc - inc.mean(-1, keepdim=True)
        return inc

    def log_G(self, t: int, x_prev: Tensor | None, x: Tensor) -> Tensor:
        """``log G_t = Gamma(x_prev, grid[t-1]) * Delta_t`` (float64, ``[*batch, N]``);
        ``log G_0 = init_log_z (+ rho_{t_0}(x))``."""
        E = len(self.event_shape)
        if t == 0 or x_prev is None:
            out = torch.full(x.shape[: x.ndim - E], self.init_log_z, dtype=torch.float64,
                             device=x.device)
            if self.tilt is not None:
                with torch.no_grad():
                    out = out + self.tilt(x, self._times[0]).value.to(torch.float64)
            return out
        cache, self._cache = self._cache, None
        if cache is not None and cache[0] == t and cache[1] is x_prev:
            inc = cache[2]
        else:
            inc = self._step_terms(t, x_prev).rate * self._dt[t - 1]
        return self._stabilise(inc)
