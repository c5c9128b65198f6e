"""The SMC engine: pure ``init`` / ``step`` on an immutable state, and a ``run`` driver.

For a Feynman-Kac model (:mod:`smcdiff.core.feynman_kac`) with ``N`` particles, step
``t >= 1`` does (Chopin & Papaspiliopoulos 2020, Alg. 10.1, with adaptive resampling):

1. decide per batch member whether to resample (a trigger, e.g. ESS < 0.5 N);
2. where it does, draw ancestors ``A_t`` and reset the carried log-weights to 0; where it
   does not, ``A_t`` is the identity and the log-weights are carried;
3. move ``x_t ~ M_t(x_{t-1}^{A_t}, .)`` and reweight
   ``log w_t = carried + log G_t(x_{t-1}^{A_t}, x_t)``;
4. update ``log Z_hat += logsumexp(log w_t) - logsumexp(carried)``.

Step 0 draws ``x_0 ~ M_0`` and sets ``log Z_hat = log mean exp(log G_0)``. The product of
the ratios is an unbiased estimate of ``Z_T`` whether or not each step resampled (Del Moral
2004); ``log Z_hat`` itself is biased low by about ``Var(log Z_hat) / 2``.

The decision is taken on the device with ``torch.where`` (no host synchronisation), so a
batch of independent runs ``[*batch]`` shares one loop. Degenerate weights (all ``-inf``,
NaN) are tracked per batch member and reported with the step that produced them.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

from smcdiff.core.constants import arange, scalar_tensor
from smcdiff.core.feynman_kac import FeynmanKac, check_model, is_autograd_free, nfe_of_step
from smcdiff.core.progress import progress_bar
from smcdiff.core.resampling import Resampler, _check_log_w, get_resampler
from smcdiff.core.tree import Particles, take_particles, tree_leaves, tree_map
from smcdiff.core.triggers import ResamplingTrigger, make_trigger
from smcdiff.core.weights import DegenerateWeightsError, normalize

# ----------------------------------------------------------------------------- state


class SMCState(NamedTuple):
    """Immutable state after ``t`` steps (``t`` is the index of the *next* step).

    Attributes:
        t: number of steps done.
        particles: ``[*batch, N, *event]`` (or a container of such tensors).
        log_w: ``[*batch, N]`` unnormalized log-weights carried since the last resampling.
        log_z: ``[*batch]`` running log-normalizer estimate ``log Z_hat_{t-1}``.
        bad_step: ``[*batch]`` first step whose weights were degenerate, ``-1`` if none.
        ess: ``[*batch]`` ESS of ``log_w`` (kept so the next trigger need not recompute it).
        log_sum_w: ``[*batch]`` ``logsumexp(log_w)`` (the next increment's denominator).
        scaled_w: ``[*batch, N]`` ``exp(log_w - max log_w)``, computed for the ESS and
            reused by the resampler (one ``exp`` per step, not two); ``None`` if unknown.
    """

    t: int
    particles: Particles
    log_w: torch.Tensor
    log_z: torch.Tensor
    bad_step: torch.Tensor
    ess: torch.Tensor
    log_sum_w: torch.Tensor
    scaled_w: torch.Tensor | None = None


class StepInfo(NamedTuple):
    """What one step did: ancestors ``[*batch, N]`` (``None`` if no member resampled),
    per-member resampling flags, ESS after reweighting, the log-normalizer increment and
    the log-potentials ``log_G`` of this step."""

    t: int
    ancestors: torch.Tensor | None
    resampled: torch.Tensor
    ess: torch.Tensor
    log_z_increment: torch.Tensor
    log_G: torch.Tensor


# ------------------------------------------------------------------ shared primitives


def resample_where(
    flag: bool | torch.Tensor,
    log_w: torch.Tensor,
    particles: Particles,
    resampler: Resampler,
    generator: torch.Generator | None,
    scaled_w: torch.Tensor | None = None,
) -> tuple[Particles, torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Resample the batch members selected by ``flag``; carry the others unchanged.

    Returns ``(particles, carried_log_w, ancestors, flag_tensor)``. ``carried_log_w`` is 0
    where resampled (equal weights) and ``log_w`` elsewhere; ``ancestors`` is ``None`` when
    ``flag`` is the static ``False`` (nothing is drawn then). ``scaled_w``, if known, is
    ``exp(log_w - max log_w)`` and spares a built-in scheme that ``exp``.
    """
    if isinstance(resampler, Resampler):  # _resample trusts log_w: check the caller's
        _check_log_w(log_w, resampler.name)
        if scaled_w is not None and scaled_w.shape != log_w.shape:
            raise ValueError(f"scaled_w must have the shape of log_w {tuple(log_w.shape)}, "
                             f"got {tuple(scaled_w.shape)}")
    x, carried, anc, flag_t = _resample(_static_flag(flag), flag, log_w, particles, resampler,
                                        generator, scaled_w)
    return x, torch.zeros_like(log_w) if carried is None else carried, anc, flag_t


def _static_flag(flag: bool | torch.Tensor) -> bool | torch.Tensor:
    """The flag as a Python bool when every batch member agrees and that is free to know.

    On the CPU one look at the flags (a single reduction) costs nothing and saves the
    work when all agree; on accelerators the decision stays on the device (no host
    synchronisation) and the tensor is returned as is.
    """
    if not isinstance(flag, torch.Tensor):
        return bool(flag)
    if not flag.is_cpu:
        return flag
    n = int(torch.count_nonzero(flag))
    return False if n == 0 else True if n == flag.numel() else flag


def _resample(
    flag: bool | torch.Tensor,
    raw_flag: bool | torch.Tensor,
    log_w: torch.Tensor,
    particles: Particles,
    resampler: Resampler,
    generator: torch.Generator | None,
    scaled_w: torch.Tensor | None,
) -> tuple[Particles, torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
    """:func:`resample_where` for a flag already through :func:`_static_flag` (``raw_flag``
    is the trigger's own answer, reused as the per-member flags when it has their shape);
    the carried log-weights are ``None`` when every member resampled (all zero)."""
    batch = log_w.shape[:-1]
    if flag is False:
        return particles, log_w, None, _flags_like(raw_flag, batch, False, log_w)
    if isinstance(resampler, Resampler):  # log_w comes from the engine: valid, no re-checks
        anc = resampler._draw(log_w, generator, scaled_w)
    else:  # a user callable with the plain signature
        anc = resampler(log_w, generator=generator)
    carried: torch.Tensor | None
    if flag is True:
        flag_t = _flags_like(raw_flag, batch, True, log_w)
        carried = None
    else:
        flag_t = flag if flag.shape == batch else flag.expand(batch)
        keep = flag_t.unsqueeze(-1)
        anc = torch.where(keep, anc, arange(log_w.shape[-1], log_w.device))
        carried = log_w.masked_fill(keep, 0.0)
    return take_particles(particles, anc), carried, anc, flag_t


def _flags_like(raw_flag: bool | torch.Tensor, batch: torch.Size, value: bool,
                like: torch.Tensor) -> torch.Tensor:
    """Per-member flags all equal to ``value``: the trigger's own tensor when it has the
    batch shape (no new op), else a new one."""
    if isinstance(raw_flag, torch.Tensor) and raw_flag.shape == batch:
        return raw_flag
    return like.new_full(batch, value, dtype=torch.bool)


def reweight(carried_log_w: torch.Tensor, log_G: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``log w = carried + log G`` and the log-normalizer increment
    ``logsumexp(log w) - logsumexp(carried)``."""
    log_w = carried_log_w + log_G
    inc = torch.logsumexp(log_w, -1) - torch.logsumexp(carried_log_w, -1)
    return log_w, inc


def _ess_and_lse(log_w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ESS ``(sum w)^2 / sum w^2``, ``logsumexp(log w)`` and ``exp(log w - max log w)``,
    from one pass of ``exp``.

    Degenerate weights (all ``-inf``, NaN, ``+inf``) give a non-finite logsumexp, which is
    how the engine detects them.
    """
    m = torch.amax(log_w, -1, keepdim=True)
    if m.requires_grad:  # the max is a shift: the values are exact without its gradient
        m = m.detach()
    w = torch.sub(log_w, m).exp_()
    s1 = w.sum(-1)
    ess = torch.div(s1, torch.linalg.vector_norm(w, dim=-1)).square_()  # (sum w)^2 / sum w^2
    return ess, torch.log(s1).add_(m.squeeze(-1)), w


def _check_log_G(log_G: Any, t: int, expected: torch.Size, like: torch.Tensor | None) -> None:
    if not isinstance(log_G, torch.Tensor):
        raise TypeError(f"log_G at step {t} must return a tensor, got {type(log_G).__name__}")
    if log_G.shape != expected:
        raise ValueError(
            f"log_G at step {t} returned shape {tuple(log_G.shape)}, expected [*batch, N] = "
            f"{tuple(expected)}"
        )
    if not log_G.is_floating_point():
        raise TypeError(f"log_G at step {t} returned dtype {log_G.dtype}; expected floating point")
    if like is not None and log_G.device != like.device:
        raise ValueError(
            f"log_G at step {t} is on {log_G.device} but the particles are on {like.device}"
        )


def _mark_bad(bad_step: torch.Tensor, log_z_w: torch.Tensor, t: int) -> torch.Tensor:
    # logsumexp of the weights is NaN, -inf or +inf exactly when they are degenerate.
    bad = ~torch.isfinite(log_z_w)
    return torch.where((bad_step < 0) & bad, torch.full_like(bad_step, t), bad_step)


def raise_if_degenerate(bad_step: torch.Tensor) -> None:
    """Raise :class:`DegenerateWeightsError` naming the first degenerate step, if any."""
    if bool((bad_step >= 0).any()):
        members = torch.nonzero(bad_step >= 0).tolist()
        first = int(bad_step[bad_step >= 0].min())
        raise DegenerateWeightsError(
            f"SMC weights degenerated at step {first}: every log-weight was -inf, or some were "
            f"NaN/+inf, for batch member(s) {members[:5]}{' ...' if len(members) > 5 else ''}. "
            "Check the model's log_G for NaN and whether every particle can have zero weight."
        )


# ------------------------------------------------------------------------- the kernel


@dataclass(frozen=True)
class SMC:
    """Sequential Monte Carlo for a Feynman-Kac model, as pure ``init`` / ``step``.

    Args:
        model: a :class:`~smcdiff.core.feynman_kac.FeynmanKac` model.
        num_particles: ``N >= 1``.
        batch_shape: shape of independent runs sharing the loop.
        resampler: a :class:`~smcdiff.core.resampling.Resampler` or its name.
        trigger: when to resample (see :mod:`smcdiff.core.triggers`).
        check: ``"step"`` raises on degenerate weights at the step they appear (one host
            sync per step), ``"end"`` once after the run, ``"off"`` never. The default
            ``"auto"`` is ``"step"`` on CPU and ``"end"`` on accelerators.
    """

    model: FeynmanKac
    num_particles: int
    batch_shape: tuple[int, ...] = ()
    resampler: Resampler = "systematic"  # type: ignore[assignment]  # a name is looked up
    trigger: ResamplingTrigger = field(default_factory=lambda: make_trigger("adaptive"))
    check: str = "auto"

    def __post_init__(self) -> None:
        check_model(self.model)
        if not isinstance(self.num_particles, int) or self.num_particles < 1:
            raise ValueError(f"num_particles must be an integer >= 1, got {self.num_particles!r}")
        object.__setattr__(self, "resampler", get_resampler(self.resampler))
        object.__setattr__(self, "batch_shape", tuple(torch.Size(self.batch_shape)))
        if self.check not in ("auto", "step", "end", "off"):
            raise ValueError(f"check must be 'auto', 'step', 'end' or 'off', got {self.check!r}")

    def _track_degenerate(self, bad_step: torch.Tensor, lse: torch.Tensor, t: int) -> torch.Tensor:
        """Raise now (check "step", or "auto" on CPU, where looking costs nothing) or record
        the first degenerate step per member for the end-of-run check."""
        if self.check == "step" or (self.check == "auto" and lse.is_cpu):
            # One reduction: the sum is finite exactly when every member's lse is (a
            # non-finite sum is re-checked element-wise before raising).
            total = float((lse.detach() if lse.requires_grad else lse).sum())
            if not math.isfinite(total) and not bool(torch.isfinite(lse).all()):
                raise_if_degenerate(_mark_bad(bad_step, lse, t))
            return bad_step
        if self.check == "off":
            return bad_step
        return _mark_bad(bad_step, lse, t)

    def init(self, generator: torch.Generator | None = None) -> tuple[SMCState, StepInfo]:
        """Step 0: ``x_0 ~ M_0``, ``log w_0 = log G_0(x_0)``."""
        N, batch = self.num_particles, torch.Size(self.batch_shape)
        x = self.model.M0(N, batch, generator)
        leaves = tree_leaves(x)
        if not leaves:
            raise TypeError("M0 must return a tensor or a container of tensors")
        for leaf in leaves:
            if leaf.shape[: len(batch) + 1] != (*batch, N):
                raise ValueError(
                    f"M0 returned a particle leaf of shape {tuple(leaf.shape)}; expected "
                    f"[*batch, N, *event] with batch={tuple(batch)}, N={N}"
                )
        log_G = self.model.log_G(0, None, x)
        _check_log_G(log_G, 0, torch.Size((*batch, N)), leaves[0])
        ess0, lse, scaled = _ess_and_lse(log_G)
        log_z = lse - math.log(N)
        bad = self._track_degenerate(
            torch.full(batch, -1, dtype=torch.long, device=log_G.device), lse, 0)
        state = SMCState(1, x, log_G, log_z, bad, ess0, lse, scaled)
        no = torch.zeros(batch, dtype=torch.bool, device=log_G.device)
        return state, StepInfo(0, None, no, ess0, log_z, log_G)

    def step(
        self, state: SMCState, generator: torch.Generator | None = None
    ) -> tuple[SMCState, StepInfo]:
        """One step ``t = state.t``: (maybe) resample, move with ``M_t``, reweight by ``G_t``."""
        t = state.t
        if t >= self.model.T:
            raise ValueError(f"the model has T={self.model.T} steps; step {t} does not exist")
        raw_flag = self.trigger(t, state.log_w, state.ess)
        flag = _static_flag(raw_flag)
        x_prev, carried, anc, flag_t = _resample(
            flag, raw_flag, state.log_w, state.particles, self.resampler, generator,
            state.scaled_w,
        )
        x = self.model.M(t, x_prev, generator)
        log_G = self.model.log_G(t, x_prev, x)
        _check_log_G(log_G, t, state.log_w.shape, state.log_w)
        log_w = log_G if carried is None else carried + log_G
        ess_t, lse, scaled = _ess_and_lse(log_w)
        # logsumexp of the carried weights: log N where resampled (they are all 0 there),
        # the cached value elsewhere.
        log_n = math.log(self.num_particles)
        if carried is None:
            inc = lse - scalar_tensor(log_n, lse.dtype, lse.device)
        elif flag is False:
            inc = lse - state.log_sum_w
        else:
            inc = lse - state.log_sum_w.masked_fill(flag_t, log_n)
        bad = self._track_degenerate(state.bad_step, lse, t)
        new = SMCState(t + 1, x, log_w, state.log_z + inc, bad, ess_t, lse, scaled)
        return new, StepInfo(t, anc, flag_t, ess_t, inc, log_G)

    def run(
        self,
        generator: torch.Generator | None = None,
        *,
        collectors: Sequence[Callable] = (),
        record_ancestors: bool = False,
        record_particles: bool = False,
        progress: bool | None = None,
        callback: Callable[[SMCState, StepInfo], None] | None = None,
    ) -> SMCResult:
        """Run all ``T`` steps and return an :class:`SMCResult`.

        Args:
            generator: source of all randomness.
            collectors: per-step summaries (see :mod:`smcdiff.core.collectors`).
            record_ancestors: keep ``ancestors: [T, *batch, N]`` (the genealogy).
            record_particles: keep every step's particles (memory ``T`` times the state).
            progress: show a progress bar; ``None`` shows one when stderr is a terminal
                and the run has at least 20 steps.
            callback: called as ``callback(state, info)`` after every step.
        """
        T = self.model.T
        state, info = self.init(generator)
        ess_list, flags, incs = [info.ess], [info.resampled], [info.log_z_increment]
        ancs: list[torch.Tensor] = []
        hist: list[Particles] = []
        collected: dict[str, list[torch.Tensor]] = {}
        N = self.num_particles

        def record(state: SMCState, info: StepInfo) -> None:
            if record_ancestors:
                a = info.ancestors
                if a is None:
                    a = torch.arange(N, device=state.log_w.device).expand(state.log_w.shape)
                ancs.append(a)
            if record_particles:
                hist.append(state.particles)
            for c in collectors:
                out = c(state, info)
                name = getattr(c, "name", type(c).__name__)
                items = out.items() if isinstance(out, dict) else [(None, out)]
                for k, v in items:
                    collected.setdefault(name if k is None else f"{name}.{k}", []).append(v)
            if callback is not None:
                callback(state, info)

        record(state, info)
        # Under torch.no_grad, with a model that promises not to call autograd and nothing
        # else seeing the intermediate tensors, skip autograd's per-op bookkeeping as well.
        no_autograd = (not torch.is_grad_enabled() and is_autograd_free(self.model)
                       and not collectors and callback is None)
        bar = progress_bar(progress, total=T, desc="smc")
        bar.update(1)
        try:
            with torch.inference_mode() if no_autograd else contextlib.nullcontext():
                for _ in range(1, T):
                    state, info = self.step(state, generator)
                    ess_list.append(info.ess)
                    flags.append(info.resampled)
                    incs.append(info.log_z_increment)
                    record(state, info)
                    bar.update(1)
        finally:
            bar.close()
        if self.check != "off":
            raise_if_degenerate(state.bad_step)
        nfe = sum(nfe_of_step(self.model, t) for t in range(T))
        if no_autograd:  # hand back ordinary tensors (inference tensors refuse in-place use)
            state = state._replace(particles=tree_map(torch.clone, state.particles),
                                   log_w=state.log_w.clone(), log_z=state.log_z.clone())
            hist = [tree_map(torch.clone, h) for h in hist] if hist and not isinstance(
                hist[0], torch.Tensor) else hist
        return SMCResult(
            particles=state.particles,
            log_w=state.log_w,
            log_z=state.log_z,
            ess=torch.stack(ess_list),
            resampled=torch.stack(flags),
            log_z_increments=torch.stack(incs),
            ancestors=torch.stack(ancs) if record_ancestors else None,
            history=_stack_history(hist) if record_particles else None,
            collected={k: torch.stack(v) for k, v in collected.items()},
            nfe=nfe,
            num_particles=N,
        )


def _stack_history(hist: list[Particles]) -> Particles:
    first = hist[0]
    if isinstance(first, torch.Tensor):
        return torch.stack(hist)
    return hist


# ------------------------------------------------------------------------- the result


@dataclass(frozen=True)
class SMCResult:
    """What an SMC run returns.

    Attributes:
        particles: final particles ``[*batch, N, *event]``.
        log_w: final unnormalized log-weights ``[*batch, N]``.
        log_z: log-normalizer estimate ``[*batch]`` (``log Z_hat_T``).
        ess: ``[T, *batch]`` ESS after each step's reweighting.
        resampled: ``[T, *batch]`` whether step ``t`` resampled before moving (row 0 False).
        log_z_increments: ``[T, *batch]``; their sum is ``log_z``.
        ancestors: ``[T, *batch, N]`` if recorded (row 0 is the identity).
        history: stacked particles ``[T, *batch, N, *event]`` if recorded.
        collected: per-step collector outputs, each ``[T, ...]``.
        nfe: network evaluations per particle declared by the model (``nfe(t)``).
        num_particles: ``N``.
    """

    particles: Particles
    log_w: torch.Tensor
    log_z: torch.Tensor
    ess: torch.Tensor
    resampled: torch.Tensor
    log_z_increments: torch.Tensor
    ancestors: torch.Tensor | None = None
    history: Any = None
    collected: dict[str, torch.Tensor] = field(default_factory=dict)
    nfe: int = 0
    num_particles: int = 0

    @property
    def weights(self) -> torch.Tensor:
        """Normalized final weights ``[*batch, N]``."""
        return normalize(self.log_w)

    @property
    def total_nfe(self) -> int:
        """Network evaluations over all particles and batch members."""
        return self.nfe * self.num_particles * int(self.log_z.numel())

    def mean(self, fn: Callable | None = None) -> torch.Tensor:
        """Weighted mean ``sum_i W_i fn(x_i)`` over the particle axis."""
        from smcdiff.core.collectors import weighted_mean

        v = self.particles if fn is None else fn(self.particles)
        return weighted_mean(v, self.log_w)

    def sample(
        self, num_samples: int | None = None, *, scheme: str | Resampler = "multinomial",
        generator: torch.Generator | None = None,
    ) -> Particles:
        """Equally weighted draws ``[*batch, M, *event]`` from the weighted particles."""
        anc = get_resampler(scheme)(self.log_w, num_samples, generator=generator)
        return take_particles(self.particles, anc)


def smc(
    model: FeynmanKac,
    num_particles: int,
    *,
    batch_shape: Iterable[int] = (),
    resampling: str | Resampler = "systematic",
    resample: str | ResamplingTrigger | Iterable[int] | None = "adaptive",
    ess_threshold: float = 0.5,
    generator: torch.Generator | None = None,
    collectors: Sequence[Callable] = (),
    record_ancestors: bool = False,
    record_particles: bool = False,
    progress: bool | None = None,
    callback: Callable[[SMCState, StepInfo], None] | None = None,
    check: str = "auto",
) -> SMCResult:
    """Run SMC on a Feynman-Kac model: the one front door.

    Args:
        model: a Feynman-Kac model (``M0``, ``M``, ``log_G``, ``T``).
        num_particles: particles per run.
        batch_shape: independent runs, vectorised (e.g. ``(64,)``).
        resampling: scheme name (``"multinomial"``, ``"stratified"``, ``"systematic"``,
            ``"residual"``, ``"ssp"``, ``"killing"``) or a ``Resampler``.
        resample: ``"adaptive"`` (ESS below ``ess_threshold * N``), ``"always"``,
            ``"never"``, a trigger object, or the list of steps before which to resample.
        ess_threshold: fraction of ``N`` for adaptive resampling.

    Example:
        >>> import torch, smcdiff as sd
        >>> model = sd.ssm.LinearGaussian.ar1(rho=0.9, sigma_x=1.0, sigma_y=0.5)
        >>> data = model.simulate(50, generator=torch.Generator().manual_seed(0))
        >>> res = sd.smc(model.bootstrap(data.y), 500, batch_shape=(4,),
        ...              generator=torch.Generator().manual_seed(1))
        >>> res.log_z.shape
        torch.Size([4])
    """
    engine = SMC(
        model, num_particles, tuple(batch_shape), get_resampler(resampling),
        make_trigger(resample, ess_threshold), check,
    )
    return engine.run(
        generator, collectors=collectors, record_ancestors=record_ancestors,
        record_particles=record_particles, progress=progress, callback=callback,
    )
