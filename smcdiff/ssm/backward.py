"""Backward index samplers: draws from the backward kernel of a particle filter, batched.

Given the filter particles ``xi_{t-1}^{1:N}`` with weights ``w_{t-1}^{1:N}`` (after the
reweighting at step ``t-1``, before resampling) and new states ``x^{1:M}`` at step ``t``, the
backward kernel (Douc, Garivier, Moulines & Olsson 2011; Olsson & Westerborn 2017) is

    Lambda_t(i, j) = w_{t-1}^j m_t(xi_{t-1}^j, x^i) / sum_l w_{t-1}^l m_t(xi_{t-1}^l, x^i),

with ``m_t`` the model's transition density into step ``t`` (``model.log_m(t, x_prev, x)``,
:mod:`smcdiff.core.feynman_kac`). PaRIS, FFBSi and PaRIS particle Gibbs
(:mod:`smcdiff.ssm.smoothing`, :mod:`smcdiff.ssm.ppg`) need ``K`` draws ``J^{i,k}`` per row.
Three samplers share one call signature (Dau & Chopin 2022, "On backward smoothing
algorithms", compare them):

- :class:`ExactBackward`: all ``M x N`` logits ``log w^j + log m(xi^j, x^i)``, inverse-CDF
  draws; ``O(MN)`` time, memory bounded by chunking the rows. The reference.
- :class:`IMHBackward`: independent Metropolis-Hastings (Dau & Chopin 2022, §3.3) started at
  the filter ancestor ``A^i`` of row ``i``; proposals ``j' ~ Cat(W_{t-1})`` iid and unsorted,
  accepted with probability ``min(1, m(xi^{j'}, x^i) / m(xi^j, x^i))``. The chain leaves
  ``Lambda_t(i, .)`` invariant; the draw is *exact* when the start is itself a draw from
  ``Lambda_t(i, .)``, which holds for a bootstrap filter that resampled with the multinomial
  scheme at that step (and for conditional SMC with ancestor sampling). Otherwise the start
  is only a starting point (use more steps). Fixed cost ``O(MK * steps)``, branch-free,
  all proposals and uniforms drawn up front: the GPU default.
- :class:`RejectionBackward`: accept-reject with a bound ``m_t <= exp(log_m_bound(t))``
  (Douc et al. 2011; the PaRIS paper's sampler), at most ``max_trials`` rounds, then an exact
  ``O(N)`` draw for the rows still pending (the hybrid of Dau & Chopin 2022, which bounds the
  otherwise possibly infinite expected run time). Each round works only on pending draws.

The ``O(MN)`` logits come from :func:`row_logits` (one all-pairs ``log_m`` call, or, for a
model that declares an affine Gaussian transition (:func:`gaussian_transition`), a closed form
with one multiply-add per pair) and :func:`exp_rows_` turns them into the kernel up to a
factor per row; the forward smoother :func:`smcdiff.ssm.smoothing.ffbsm` uses both.

Call signature (:class:`BackwardSampler`)::

    sampler(model, t, x_prev, log_w_prev, x, num_draws, *, ancestors=None, generator=None)
        -> J: [*batch, M, K] int64 indices into the N particles x_prev

with ``x_prev: [*batch, N, *event]``, ``log_w_prev: [*batch, N]``, ``x: [*batch, M, *event]``,
``ancestors: [*batch, M]``. ``t >= 1`` is the SMC step index of ``x`` (an observation index,
not a diffusion time). ``model.log_m`` must broadcast over leading axes like a
``log_prob``: ``x_prev: [*batch, 1, N, *event]`` with ``x: [*batch, M, 1, *event]`` gives
``[*batch, M, N]`` (all pairs) and matched ``[*batch, L, *event]`` pairs give ``[*batch, L]``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from smcdiff.core.resampling import multinomial
from smcdiff.core.tree import take_particles

__all__ = [
    "BACKWARD_SAMPLERS", "BackwardSampler", "ExactBackward", "IMHBackward",
    "RejectionBackward", "backward_log_kernel", "exp_rows_",
    "gaussian_transition", "get_backward_sampler", "row_logits", "transition_log_bound",
]

# Default number of logits (rows x particles x batch) held at once by the O(N^2) methods:
# small enough to stay in cache on a CPU, large enough to fill an accelerator.
_CHUNK_ELEMENTS = {"cpu": 1 << 16}
_CHUNK_ELEMENTS_DEFAULT = 1 << 24
# Adaptive accept-reject: stop the rounds once the exact fallback costs at most
# _FALLBACK_PAIRS pair evaluations, or once a round saved fewer than _ROUND_PAIRS of them
# (about the fixed overhead of one round).
_FALLBACK_PAIRS = 1 << 16
_ROUND_PAIRS = 1 << 14
# Accept-reject: trials per round spread over the pending draws (``R = max(1, 2^12 / P)``), so a
# round with few pending draws costs about its fixed overhead instead of much less.
_ROUND_TRIALS = 1 << 12


@runtime_checkable
class BackwardSampler(Protocol):
    """Draws ``J [*batch, M, K]`` from the backward kernel ``Lambda_t`` (module docstring)."""

    name: str

    def __call__(
        self, model: Any, t: int, x_prev: torch.Tensor, log_w_prev: torch.Tensor,
        x: torch.Tensor, num_draws: int, *, ancestors: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor: ...


# ----------------------------------------------------------------------------- helpers


def _check(model: Any, x_prev: torch.Tensor, log_w_prev: torch.Tensor, x: torch.Tensor,
           num_draws: int, ancestors: torch.Tensor | None) -> int:
    """Validate the common arguments; return the number of batch dims."""
    if not callable(getattr(model, "log_m", None)):
        raise TypeError(
            f"backward sampling needs the model's transition log-density log_m(t, x_prev, x); "
            f"{type(model).__name__} does not define it"
        )
    for name, v in (("x_prev", x_prev), ("log_w_prev", log_w_prev), ("x", x)):
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(v).__name__}")
    if not log_w_prev.is_floating_point() or log_w_prev.dim() < 1:
        raise ValueError(f"log_w_prev must be a floating [*batch, N] tensor, got "
                         f"{log_w_prev.dtype} {tuple(log_w_prev.shape)}")
    nb = log_w_prev.dim() - 1
    if tuple(x_prev.shape[: nb + 1]) != tuple(log_w_prev.shape):
        raise ValueError(f"x_prev must be [*batch, N, *event] matching log_w_prev "
                         f"{tuple(log_w_prev.shape)}, got {tuple(x_prev.shape)}")
    if x.dim() != x_prev.dim() or x.shape[:nb] != x_prev.shape[:nb] or \
            x.shape[nb + 1:] != x_prev.shape[nb + 1:]:
        raise ValueError(f"x must be [*batch, M, *event] like x_prev {tuple(x_prev.shape)}, "
                         f"got {tuple(x.shape)}")
    if isinstance(num_draws, bool) or not isinstance(num_draws, int) or num_draws < 1:
        raise ValueError(f"num_draws must be an integer >= 1, got {num_draws!r}")
    if ancestors is not None and tuple(ancestors.shape) != tuple(x.shape[: nb + 1]):
        raise ValueError(f"ancestors must be [*batch, M] = {tuple(x.shape[: nb + 1])}, got "
                         f"{tuple(ancestors.shape)}")
    return nb


def _repeat_rows(x: torch.Tensor, K: int, nb: int) -> torch.Tensor:
    """``[*batch, M, *event]`` -> ``[*batch, M*K, *event]``, row ``i`` repeated ``K`` times."""
    return x if K == 1 else x.repeat_interleave(K, dim=nb)


def _matched_log_m(model: Any, t: int, x_prev: torch.Tensor, idx: torch.Tensor,
                   x_rows: torch.Tensor) -> torch.Tensor:
    """``log m_t(x_prev^{idx_l}, x_rows_l)`` for matched pairs, ``[*batch, L]``."""
    return model.log_m(t, take_particles(x_prev, idx), x_rows)


def backward_log_kernel(model: Any, t: int, x_prev: torch.Tensor, log_w_prev: torch.Tensor,
                        x: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """Backward-kernel logits ``log w_{t-1}^j + log m_t(xi_{t-1}^j, x^i)``, ``[*batch, M, N]``.

    All pairs in one call (no chunking; see :class:`ExactBackward` for the chunked draw).
    With ``normalize`` each row is log-normalized to ``log Lambda_t(i, .)`` (Douc et al. 2011).
    """
    nb = log_w_prev.dim() - 1
    lm = model.log_m(t, x_prev.unsqueeze(nb), x.unsqueeze(nb + 1))
    logits = log_w_prev.unsqueeze(-2) + lm
    if normalize:
        logits = logits - torch.logsumexp(logits, -1, keepdim=True)
    return logits


def gaussian_transition(model: Any, t: int):
    """``(A, b, L)`` with ``m_t(x', x) = N(x; A x' + b, L L^T)`` if ``model`` declares its
    transition as affine Gaussian (a ``gaussian_transition(t)`` method), else ``None``.

    ``A: [d, d]``, ``b: [d]`` or ``None``, ``L: [d, d]`` lower-triangular. A model that
    declares it must keep its ``log_m`` equal to this law (the smoothers use either).
    """
    fn = getattr(model, "gaussian_transition", None)
    return fn(t) if callable(fn) else None


def row_logits(model: Any, t: int, x_prev: torch.Tensor,
               log_w_prev: torch.Tensor) -> Callable[..., torch.Tensor]:
    """Backward-kernel logits up to a constant per row, as a function of the rows.

    Returns ``f(x, out=None) -> [*batch, M, N]`` with ``f(x)_ij = log w_{t-1}^j +
    log m_t(xi_{t-1}^j, x^i) - r_i`` for some ``r_i`` that does not depend on ``j`` (so
    ``Lambda_t(i, .) = softmax_j f(x)_i.``), for rows ``x: [*batch, M, *event]``; the work
    that depends only on step ``t-1`` is done once, here. ``out`` (a ``[*batch, M, N]``
    buffer) is used unless autograd needs a fresh tensor (or the dtypes differ).

    Generic models: ``r_i = 0``, one all-pairs ``model.log_m`` call. Models that declare an
    affine Gaussian transition ``m_t(x', x) = N(x; A x' + b, L L^T)`` (see
    :func:`gaussian_transition`): with ``p_i = L^{-1} x^i`` and
    ``q_j = L^{-1} (A xi_{t-1}^j + b)``, ``log m_t = -|p_i - q_j|^2 / 2 + const``, so taking
    ``r_i = -|p_i|^2 / 2 + const`` leaves ``log w^j - |q_j|^2 / 2 + p_i . q_j``: one fused
    multiply-add (a matrix product for ``d > 1``) per pair instead of the model's passes.
    """
    nb = log_w_prev.dim() - 1
    factors = gaussian_transition(model, t)
    if factors is None:
        xp, lw = x_prev.unsqueeze(nb), log_w_prev.unsqueeze(-2)

        def generic(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
            lm = model.log_m(t, xp, x.unsqueeze(nb + 1))
            if out is None or lm.requires_grad or lw.requires_grad or \
                    torch.result_type(lm, lw) != out.dtype:
                return lm + lw
            return torch.add(lm, lw, out=out)

        return generic
    A, b_off, L = factors
    eye = torch.eye(L.shape[-1], dtype=L.dtype, device=L.device)
    L_inv = torch.linalg.solve_triangular(L, eye, upper=False)
    mean = x_prev @ A.mT if b_off is None else x_prev @ A.mT + b_off
    q = mean @ L_inv.mT  # [*batch, N, d]
    b = (log_w_prev - 0.5 * (q * q).sum(-1)).unsqueeze(-2)  # [*batch, 1, N]
    q_t = q.mT  # [*batch, d, N]

    def gaussian(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        p = x @ L_inv.mT  # [*batch, M, d]
        if out is not None and (p.requires_grad or b.requires_grad or
                                torch.result_type(p, b) != out.dtype):
            out = None
        if p.shape[-1] == 1:  # an outer product: one fused pass
            return torch.addcmul(b, p, q_t, out=out) if out is not None else \
                torch.addcmul(b, p, q_t)
        return torch.add(b, p @ q_t, out=out) if out is not None else b + p @ q_t

    return gaussian


def exp_rows_(logits: torch.Tensor) -> torch.Tensor:
    """``exp(l_ij - max_k l_ik)`` in place: the backward kernel up to a factor per row.

    For logits ``l`` of :func:`row_logits`, ``e_ij = c_i Lambda_t(i, j)`` with ``max_j e_ij
    = 1``, and ``Lambda_t(i, j) = e_ij / sum_k e_ik``. Subtracting the row maximum keeps
    ``exp`` finite; working in place keeps one ``[M, N]`` buffer and one ``exp`` per pair
    (callers normalise once per row, after their sums over ``j``). The maximum is a constant
    per row that cancels in ``Lambda_t``, so autograd need not see it.
    """
    logits -= logits.detach().amax(-1, keepdim=True)
    return logits.exp_()


def _row_chunk(chunk_size: int | None, batch_numel: int, M: int, N: int,
               device: torch.device) -> int:
    if chunk_size is not None:
        return max(1, min(int(chunk_size), M))
    budget = _CHUNK_ELEMENTS.get(device.type, _CHUNK_ELEMENTS_DEFAULT)
    return max(1, min(M, budget // max(1, batch_numel * N)))


def transition_log_bound(model: Any, t: int) -> torch.Tensor | float:
    """An upper bound of ``log m_t(x_prev, x)`` over both arguments, if the model gives one.

    Uses ``model.log_m_bound(t)`` when defined; otherwise recognises the Gaussian
    transitions of the shipped state-space models (for ``N(mean(x_prev), Q)`` the bound is
    ``-log det(2 pi Q) / 2``): :class:`~smcdiff.ssm.linear_gaussian.LinearGaussian` and
    :class:`~smcdiff.ssm.stochastic_volatility.StochasticVolatility`.

    Raises:
        TypeError: the model provides no bound.
    """
    fn = getattr(model, "log_m_bound", None)
    if callable(fn):
        return fn(t)
    ssm = getattr(model, "ssm", model)
    Q = getattr(ssm, "Q", None)
    if isinstance(Q, torch.Tensor) and Q.dim() == 2:
        d = Q.shape[-1]
        return -0.5 * (d * math.log(2 * math.pi) + torch.logdet(Q.detach()))
    sigma = getattr(ssm, "sigma", None)
    if type(ssm).__name__ == "StochasticVolatility" and isinstance(sigma, torch.Tensor):
        return -0.5 * math.log(2 * math.pi) - torch.log(sigma.detach())
    raise TypeError(
        f"accept-reject backward sampling needs a bound on the transition density: define "
        f"log_m_bound(t) on {type(model).__name__} or pass RejectionBackward(log_m_bound=...)"
    )


# ---------------------------------------------------------------------------- samplers


@dataclass(frozen=True)
class ExactBackward:
    """Exact draws from ``Lambda_t(i, .)`` by inverse CDF over all ``N`` logits per row.

    ``O(M N)`` evaluations of ``log m`` per step (Douc et al. 2011; Olsson & Westerborn 2017,
    the "exact" PaRIS variant; logits by :func:`row_logits`); rows are processed in chunks
    of ``chunk_size`` (default: about 64K logits at once on a CPU, to stay in cache, 16M on
    an accelerator) to bound memory. ``ancestors`` are ignored.
    """

    chunk_size: int | None = None
    name: str = "exact"

    def __call__(self, model, t, x_prev, log_w_prev, x, num_draws, *, ancestors=None,
                 generator=None):
        nb = _check(model, x_prev, log_w_prev, x, num_draws, ancestors)
        M, N = x.shape[nb], x_prev.shape[nb]
        c = _row_chunk(self.chunk_size, log_w_prev.shape[:-1].numel(), M, N, x.device)
        logits_of = row_logits(model, t, x_prev, log_w_prev)  # row constants: no effect
        out = []
        for s in range(0, M, c):
            rows = x.narrow(nb, s, min(c, M - s))
            out.append(multinomial(logits_of(rows), num_draws, generator=generator))
        return out[0] if len(out) == 1 else torch.cat(out, dim=nb)


@dataclass(frozen=True)
class IMHBackward:
    """Independent Metropolis-Hastings backward draws (Dau & Chopin 2022), branch-free.

    Each of the ``K`` draws of row ``i`` is an independent chain of ``num_steps`` IMH steps
    started at ``ancestors[i]`` (a fresh ``Cat(W_{t-1})`` draw if ``ancestors`` is ``None``),
    with iid proposals ``j' ~ Cat(W_{t-1})`` and acceptance ``min(1, m(xi^{j'}, x^i) /
    m(xi^j, x^i))``; all proposals and uniforms are drawn before the loop. Exact when the
    start is a draw from ``Lambda_t(i, .)`` (see the module docstring); otherwise a chain of
    ``num_steps`` steps from it. The ``K`` chains of a row share their start, so its ``K``
    draws are dependent (each one exact): ``K = 2`` gains less variance than with the
    independent draws of the other samplers.
    """

    num_steps: int = 1
    name: str = "imh"

    def __post_init__(self) -> None:
        if isinstance(self.num_steps, bool) or not isinstance(self.num_steps, int) or \
                self.num_steps < 1:
            raise ValueError(f"num_steps must be an integer >= 1, got {self.num_steps!r}")

    def __call__(self, model, t, x_prev, log_w_prev, x, num_draws, *, ancestors=None,
                 generator=None):
        nb = _check(model, x_prev, log_w_prev, x, num_draws, ancestors)
        batch, M, K, S = log_w_prev.shape[:-1], x.shape[nb], num_draws, self.num_steps
        L = M * K
        extra = 0 if ancestors is not None else 1
        props = multinomial(log_w_prev, (S + extra) * L, generator=generator)
        props = props.reshape(*batch, S + extra, L)
        log_u = torch.log(torch.rand((*batch, S, L), generator=generator,
                                     dtype=log_w_prev.dtype, device=log_w_prev.device))
        if ancestors is not None:
            cur = _repeat_rows(ancestors.to(torch.long), K, nb)
        else:
            cur = props[..., S, :]
        x_rows = _repeat_rows(x, K, nb)
        lp = _matched_log_m(model, t, x_prev, cur, x_rows)
        for s in range(S):
            prop = props[..., s, :]
            lp_prop = _matched_log_m(model, t, x_prev, prop, x_rows)
            accept = log_u[..., s, :] < lp_prop - lp
            cur = torch.where(accept, prop, cur)
            lp = torch.where(accept, lp_prop, lp)
        return cur.reshape(*batch, M, K)


@dataclass(frozen=True)
class RejectionBackward:
    """Accept-reject backward draws with an exact fallback (Douc et al. 2011; Dau & Chopin 2022).

    Trial ``r = 1 .. max_trials``: every pending draw proposes ``j ~ Cat(W_{t-1})`` and is
    accepted with probability ``m_t(xi^j, x^i) / exp(bound)``, where ``bound >= log m_t``
    comes from ``log_m_bound(t)`` (argument), else ``model.log_m_bound(t)``, else
    :func:`transition_log_bound`. Draws still pending after ``max_trials`` trials are drawn
    exactly over all ``N`` particles (one vectorised ``O(P N)`` pass for ``P`` pending draws).
    ``max_trials=N`` is the rule of ``particles.collectors.Paris``. The default ``None`` is
    adaptive: rounds go on (at most ``N``) while the fallback would cost more than about 64K
    pair evaluations (``P N > 2^16``) and the last round accepted enough draws to save more
    fallback work than a round's fixed overhead (``accepted N >= 2^14``); this bounds the
    heavy tail of the accept-reject run time (Dau & Chopin 2022) at a few vectorised passes.
    Accepted draws are exact draws from ``Lambda_t(i, .)``, so the law does not depend on
    ``max_trials``; only the cost does.

    Each round touches only the pending draws (one host synchronisation per round, to
    compact them) and gives each of the ``P`` pending draws ``R = max(1, 2^12 / P)`` trials at
    once (fewer if fewer are left), keeping the first accepted one: the same law as ``R``
    sequential rounds, but a handful of hard draws (``x^i`` far from the filter's mass, where
    the acceptance rate is tiny) take a few vectorised rounds instead of up to ``max_trials``.
    The fallback evaluates ``log m`` on ``[P, N]`` pairs, so it assumes ``log_m`` does not
    depend on the batch member (true for one model shared by the batch).
    """

    max_trials: int | None = None
    log_m_bound: Any = None
    name: str = "rejection"

    def __post_init__(self) -> None:
        mt = self.max_trials
        if mt is not None and (isinstance(mt, bool) or not isinstance(mt, int) or mt < 0):
            raise ValueError(f"max_trials must be None or an integer >= 0, got {mt!r}")

    def bound(self, model: Any, t: int) -> torch.Tensor | float:
        """The bound ``log m_t <= bound`` this sampler uses at step ``t``."""
        if self.log_m_bound is not None:
            return self.log_m_bound(t) if callable(self.log_m_bound) else self.log_m_bound
        return transition_log_bound(model, t)

    def __call__(self, model, t, x_prev, log_w_prev, x, num_draws, *, ancestors=None,
                 generator=None):
        nb = _check(model, x_prev, log_w_prev, x, num_draws, ancestors)
        batch, N, M, K = log_w_prev.shape[:-1], x_prev.shape[nb], x.shape[nb], num_draws
        B, L = batch.numel(), M * K
        dev = log_w_prev.device
        event = x_prev.shape[nb + 1:]
        xp = x_prev.reshape(B, N, *event)
        xr = _repeat_rows(x, K, nb).reshape(B * L, *event)
        lw = log_w_prev.reshape(B, N)
        bound = self.bound(model, t)
        # Global cdf over the flattened batch: member b's cumulative weights shifted by b,
        # so one searchsorted draws j ~ Cat(W^b) for draws of any mix of members.
        w = torch.exp(lw - lw.amax(-1, keepdim=True))
        c = torch.cumsum(w, -1, dtype=torch.float64)
        c = torch.nan_to_num(c / c[:, -1:], nan=1.0)
        cdf = (c + torch.arange(B, device=dev, dtype=torch.float64).unsqueeze(-1)).reshape(-1)
        out = torch.zeros(B * L, dtype=torch.long, device=dev)
        pending = torch.arange(B * L, device=dev)
        adaptive = self.max_trials is None
        trials_left = N if adaptive else self.max_trials
        while pending.numel() and trials_left:
            P = pending.numel()
            if adaptive and P * N <= _FALLBACK_PAIRS:
                break
            R = min(trials_left, max(1, _ROUND_TRIALS // P))
            b = torch.div(pending, L, rounding_mode="floor").unsqueeze(-1)  # [P, 1]
            u = torch.rand((P, R), generator=generator, dtype=torch.float64, device=dev)
            pts = (b.to(torch.float64) + u.clamp(max=1.0 - 2.0**-53)).contiguous()
            j = (torch.searchsorted(cdf, pts, right=True) - b * N).clamp_(0, N - 1)  # [P, R]
            lm = model.log_m(t, xp[b, j], xr[pending].unsqueeze(1))  # [P, R]
            v = torch.rand((P, R), generator=generator, dtype=lm.dtype, device=dev)
            acc = torch.log(v) < lm - bound
            # the first accepted trial of each draw, as if the R trials were sequential rounds
            hit = acc.any(-1)
            first = acc.to(torch.uint8).argmax(-1, keepdim=True)
            out[pending[hit]] = j.gather(-1, first)[hit, 0]
            pending = pending[~hit]
            trials_left -= R
            if adaptive and int(hit.sum()) * N < _ROUND_PAIRS:
                break  # the last round gained less than a round costs: fall back
        if pending.numel():  # exact fallback, chunked over the pending draws
            c = _row_chunk(None, 1, pending.numel(), N, dev)
            for s in range(0, pending.numel(), c):
                p = pending[s:s + c]
                b = torch.div(p, L, rounding_mode="floor")
                lm = model.log_m(t, xp[b], xr[p].unsqueeze(1))  # [P, N]
                out[p] = multinomial(lw[b] + lm, 1, generator=generator)[:, 0]
        return out.reshape(*batch, M, K)


BACKWARD_SAMPLERS: dict[str, type] = {
    "exact": ExactBackward, "imh": IMHBackward, "rejection": RejectionBackward,
}


def get_backward_sampler(sampler: str | BackwardSampler) -> BackwardSampler:
    """A backward sampler by name (``"exact"``, ``"imh"``, ``"rejection"``, default
    options) or passed through if it is already callable."""
    if isinstance(sampler, str):
        if sampler not in BACKWARD_SAMPLERS:
            raise ValueError(f"unknown backward sampler {sampler!r}; expected one of "
                             f"{sorted(BACKWARD_SAMPLERS)} or a BackwardSampler object")
        return BACKWARD_SAMPLERS[sampler]()
    if not callable(sampler):
        raise TypeError(f"backward must be a name or a BackwardSampler, got "
                        f"{type(sampler).__name__}")
    return sampler
