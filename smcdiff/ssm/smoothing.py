"""Smoothing of additive functionals: PaRIS, forward O(N^2) FFBSm, and FFBSi, batched.

For a state-space model filtered by a Feynman-Kac model with transition density ``m_t``
(``model.log_m``), the target is the smoothed expectation of an additive functional

    h_n(x_{0:n}) = h~_init(x_0) + sum_{t=1}^{n} h~_t(x_{t-1}, x_t),        n = T - 1,

``E[h_n(X_{0:n}) | y_{0:n}]``. Each particle ``i`` carries a statistic ``tau_t^i``,
an estimate of ``E[h_t(X_{0:t}) | X_t = xi_t^i, y_{0:t}]``, updated through the backward
kernel ``Lambda_t(i, j) ∝ w_{t-1}^j m_t(xi_{t-1}^j, xi_t^i)`` (:mod:`smcdiff.ssm.backward`):

- forward-only FFBSm, ``O(N^2)`` per step (Del Moral, Doucet & Singh 2010; Douc, Garivier,
  Moulines & Olsson 2011): ``tau_t^i = sum_j Lambda_t(i, j) [tau_{t-1}^j + h~_t(xi_{t-1}^j,
  xi_t^i)]``. It computes exactly the forward-filtering backward-smoothing (FFBSm) estimate
  of an additive functional, online and with ``O(N)`` memory; rows are chunked;
- PaRIS (Olsson & Westerborn 2017): ``J^{i,k} ~ Lambda_t(i, .)``, ``k = 1..K``, and
  ``tau_t^i = (1/K) sum_k [tau_{t-1}^{J^{i,k}} + h~_t(xi_{t-1}^{J^{i,k}}, xi_t^i)]``;
  ``O(NK)`` per step with the IMH or accept-reject samplers (Dau & Chopin 2022). ``K >= 2``
  keeps the variance linear in ``n``; ``K = 1`` makes it grow quadratically;
- FFBSi (Godsill, Doucet & West 2004; Douc et al. 2011): store the filter, draw ``M``
  backward trajectories ``b_n ~ Cat(W_n)``, ``b_{t-1} ~ Lambda_t(b_t, .)``, average
  ``h_n`` over them.

The estimate is ``sum_i W_n^i tau_n^i`` (FFBSi: the trajectory average). The filter is the
core engine (:class:`smcdiff.core.engine.SMC`, driven through ``init`` / ``step``); ``Lambda_t``
uses the weights ``w_{t-1}`` after reweighting at step ``t-1`` (before resampling).

Additive functional interface (shared with :mod:`smcdiff.ssm.learning`): an object with

- ``init(x0) -> [*batch, N, *shape]``: ``h~_init`` on particles ``x0: [*batch, N, *event]``;
- ``step(t, x_prev, x) -> [..., *shape]``: ``h~_t(x_{t-1}, x_t)`` for ``t >= 1`` (the step
  index of ``x``), broadcasting over the leading axes like ``log_m``: matched pairs
  ``[*batch, L, *event]`` give ``[*batch, L, *shape]``; all pairs ``x_prev: [*batch, 1, N,
  *event]``, ``x: [*batch, M, 1, *event]`` give ``[*batch, M, N, *shape]``.

:class:`Additive` builds one from two functions. ``t`` is the observation index (not a
diffusion time). All functions return the estimate ``[*batch, *shape]``; the batch axes are
independent runs in one vectorised loop over time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from smcdiff.core.engine import SMC, SMCState, StepInfo, raise_if_degenerate
from smcdiff.core.feynman_kac import FeynmanKac
from smcdiff.core.resampling import Resampler, get_resampler, multinomial
from smcdiff.core.tree import take_particles
from smcdiff.core.triggers import make_trigger
from smcdiff.core.weights import normalize
from smcdiff.ssm.backward import (
    BackwardSampler,
    _repeat_rows,
    _row_chunk,
    exp_rows_,
    get_backward_sampler,
    row_logits,
)

__all__ = [
    "Additive", "AdditiveFunctional", "ffbsi", "ffbsm", "ffbsm_update", "paris",
    "paris_update", "weighted_estimate",
]


@runtime_checkable
class AdditiveFunctional(Protocol):
    """``h_n = h~_init(x_0) + sum_t h~_t(x_{t-1}, x_t)`` (module docstring for shapes)."""

    def init(self, x0: torch.Tensor) -> torch.Tensor: ...

    def step(self, t: int, x_prev: torch.Tensor, x: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class Additive:
    """An additive functional from two functions: ``init(x0)`` and ``step(t, x_prev, x)``.

    ``init=None`` means ``h~_init = 0`` with the shape of ``step``'s output (it is then
    evaluated once on ``(x0, x0)`` to find that shape).
    """

    step_fn: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]
    init_fn: Callable[[torch.Tensor], torch.Tensor] | None = None

    def init(self, x0: torch.Tensor) -> torch.Tensor:
        if self.init_fn is not None:
            return self.init_fn(x0)
        return torch.zeros_like(self.step_fn(1, x0, x0))

    def step(self, t: int, x_prev: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.step_fn(t, x_prev, x)


# ----------------------------------------------------------------------------- helpers


def _check_functional(functional: Any) -> None:
    if not (callable(getattr(functional, "init", None))
            and callable(getattr(functional, "step", None))):
        raise TypeError(
            f"functional must have init(x0) and step(t, x_prev, x) (an AdditiveFunctional), "
            f"got {type(functional).__name__}"
        )


def _init_tau(functional: Any, x0: torch.Tensor, nb: int, N: int) -> torch.Tensor:
    tau = functional.init(x0)
    if not isinstance(tau, torch.Tensor) or tuple(tau.shape[: nb + 1]) != \
            tuple(x0.shape[: nb + 1]):
        shape = tuple(tau.shape) if isinstance(tau, torch.Tensor) else type(tau).__name__
        raise ValueError(f"functional.init(x0) must return [*batch, N, *shape] with "
                         f"[*batch, N] = {tuple(x0.shape[: nb + 1])}, got {shape}")
    return tau


def _step_values(functional: Any, t: int, x_prev: torch.Tensor, x: torch.Tensor,
                 lead: tuple[int, ...], shape: torch.Size) -> torch.Tensor:
    h = functional.step(t, x_prev, x)
    if not isinstance(h, torch.Tensor):
        raise TypeError(f"functional.step must return a tensor, got {type(h).__name__}")
    try:
        return h.broadcast_to((*lead, *shape))
    except RuntimeError:
        raise ValueError(f"functional.step({t}, ...) returned shape {tuple(h.shape)}, which "
                         f"does not broadcast to {(*lead, *shape)}") from None


def weighted_estimate(tau: torch.Tensor, log_w: torch.Tensor) -> torch.Tensor:
    """``sum_i W^i tau^i``: ``tau: [*batch, N, *shape]``, ``log_w: [*batch, N]`` ->
    ``[*batch, *shape]``."""
    W = normalize(log_w).to(tau.dtype)
    W = W.reshape(*W.shape, *([1] * (tau.dim() - W.dim())))
    return (W * tau).sum(log_w.dim() - 1)


def paris_update(
    functional: Any, t: int, x_prev: torch.Tensor, x: torch.Tensor, tau_prev: torch.Tensor,
    J: torch.Tensor,
) -> torch.Tensor:
    """One PaRIS update (Olsson & Westerborn 2017, Alg. 2) given backward indices.

    ``tau_t^i = (1/K) sum_k [tau_{t-1}^{J^{i,k}} + h~_t(xi_{t-1}^{J^{i,k}}, xi_t^i)]``.

    Args:
        functional: the additive functional.
        t: step index of ``x`` (``>= 1``).
        x_prev: ``[*batch, N, *event]`` particles at ``t-1``.
        x: ``[*batch, M, *event]`` particles at ``t``.
        tau_prev: ``[*batch, N, *shape]``.
        J: ``[*batch, M, K]`` indices into the ``N`` particles.

    Returns:
        ``tau_t: [*batch, M, *shape]``.
    """
    nb = J.dim() - 2
    batch, M, K = J.shape[:nb], J.shape[nb], J.shape[nb + 1]
    shape = tau_prev.shape[nb + 1:]
    idx = J.reshape(*batch, M * K)
    h = _step_values(functional, t, take_particles(x_prev, idx), _repeat_rows(x, K, nb),
                     (*batch, M * K), shape)
    terms = take_particles(tau_prev, idx) + h
    return terms.reshape(*batch, M, K, *shape).mean(nb + 1)


def _row_dot(e: torch.Tensor, h: torch.Tensor, work: torch.Tensor) -> torch.Tensor:
    """``sum_j e_ij h_ijs``: ``e: [*b, m, N]``, ``h: [*b, m, N, S]`` -> ``[*b, m, S]``.

    One component (the common scalar functional): the products go into ``work`` (a spare
    ``[*b, m, N]`` buffer, unless autograd needs them or the dtypes differ) and are summed
    over contiguous rows;
    several: a batched matrix product (where the strided reduction is slow).
    """
    if h.shape[-1] != 1:
        return torch.matmul(e.unsqueeze(-2), h).squeeze(-2)
    h0 = h[..., 0]
    fresh = e.requires_grad or h0.requires_grad or torch.result_type(e, h0) != work.dtype
    prod = e * h0 if fresh else torch.mul(e, h0, out=work)
    return prod.sum(-1, keepdim=True)


def ffbsm_update(
    model: Any, functional: Any, t: int, x_prev: torch.Tensor, log_w_prev: torch.Tensor,
    x: torch.Tensor, tau_prev: torch.Tensor, chunk_size: int | None = None,
) -> torch.Tensor:
    """One exact forward-smoothing update, ``O(MN)`` (Del Moral, Doucet & Singh 2010).

    ``tau_t^i = sum_j Lambda_t(i, j) [tau_{t-1}^j + h~_t(xi_{t-1}^j, xi_t^i)]``, computed as

        tau_t^i = (sum_j e_ij tau_{t-1}^j + sum_j e_ij h~_t(xi_{t-1}^j, xi_t^i)) / sum_j e_ij

    with the unnormalised kernel ``e_ij = c_i Lambda_t(i, j)`` of
    :func:`~smcdiff.ssm.backward.exp_rows_` (row maximum 1): one ``exp`` per pair, the first
    sum one matrix product, and the normalisation once per row instead of once per pair.
    Rows ``i`` in chunks of ``chunk_size`` (default as
    :class:`~smcdiff.ssm.backward.ExactBackward`); the logits of every chunk are written into
    buffers shared by the chunks, so per chunk only the ``h~_t`` values are a fresh ``[m, N]``
    tensor (fewer large temporaries: less allocator traffic and fewer page faults). Shapes
    as :func:`paris_update`; returns ``[*batch, M, *shape]``.
    """
    nb = log_w_prev.dim() - 1
    batch, N, M = log_w_prev.shape[:-1], x_prev.shape[nb], x.shape[nb]
    shape = tau_prev.shape[nb + 1:]
    S = shape.numel()
    c = _row_chunk(chunk_size, batch.numel() * max(1, S), M, N, x.device)
    logits_of = row_logits(model, t, x_prev, log_w_prev)
    # two [*batch, c, N] buffers shared by the chunks: the logits / kernel, and e * h~_t
    buf = torch.empty((2, *batch, c, N), dtype=log_w_prev.dtype, device=log_w_prev.device)
    tau_flat = tau_prev.reshape(*batch, N, S)
    xp = x_prev.unsqueeze(nb)  # [*batch, 1, N, *event]: all pairs with the rows below
    out = []
    for s in range(0, M, c):
        rows = x.narrow(nb, s, min(c, M - s))
        m = rows.shape[nb]
        h = _step_values(functional, t, xp, rows.unsqueeze(nb + 1), (*batch, m, N), shape)
        h = h.reshape(*batch, m, N, S)
        e = exp_rows_(logits_of(rows, out=buf[0].narrow(nb, 0, m))).to(h.dtype)  # [*b, m, N]
        num = torch.matmul(e, tau_flat.to(h.dtype)) + _row_dot(e, h, buf[1].narrow(nb, 0, m))
        out.append(num / e.sum(-1, keepdim=True))
    tau = out[0] if len(out) == 1 else torch.cat(out, dim=nb)
    return tau.reshape(*batch, M, *shape)


def _engine(model: FeynmanKac, N: int, batch_shape: Iterable[int],
            resampling: str | Resampler, resample: Any, ess_threshold: float) -> SMC:
    return SMC(model, N, tuple(batch_shape), get_resampler(resampling),
               make_trigger(resample, ess_threshold))


def _ancestors_or_identity(info: StepInfo, log_w: torch.Tensor) -> torch.Tensor:
    if info.ancestors is not None:
        return info.ancestors
    N = log_w.shape[-1]
    return torch.arange(N, device=log_w.device).expand(log_w.shape)


def _forward_smoother(model, functional, N, batch_shape, resampling, resample,
                      ess_threshold, generator, update) -> torch.Tensor:
    _check_functional(functional)
    if not callable(getattr(model, "log_m", None)):
        raise TypeError(f"smoothing needs the model's transition log-density "
                        f"log_m(t, x_prev, x); {type(model).__name__} does not define it")
    engine = _engine(model, N, batch_shape, resampling, resample, ess_threshold)
    state, _ = engine.init(generator)
    nb = state.log_w.dim() - 1
    tau = _init_tau(functional, state.particles, nb, N)
    for _ in range(1, model.T):
        prev: SMCState = state
        state, info = engine.step(prev, generator)
        tau = update(prev.t, prev, state, info, tau)
    raise_if_degenerate(state.bad_step)  # members flagged on accelerators (check="end")
    return weighted_estimate(tau, state.log_w)


# ------------------------------------------------------------------------------ drivers


def paris(
    model: FeynmanKac,
    functional: AdditiveFunctional,
    num_particles: int,
    *,
    num_backward: int = 2,
    backward: str | BackwardSampler = "imh",
    batch_shape: Iterable[int] = (),
    resampling: str | Resampler = "multinomial",
    resample: Any = "always",
    ess_threshold: float = 0.5,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """PaRIS estimate of ``E[h_n(X_{0:n}) | y_{0:n}]`` (Olsson & Westerborn 2017), batched.

    Online, memory ``O(N K)``: a bootstrap (or guided) filter run by the core engine, with
    ``K = num_backward`` backward draws per particle and step from ``backward``
    (:mod:`smcdiff.ssm.backward`; ``"imh"`` is exact after multinomial resampling at every
    step, the defaults here; Dau & Chopin 2022).

    Args:
        model: a Feynman-Kac model with ``log_m`` (e.g. ``ssm.bootstrap(y)``).
        functional: an :class:`AdditiveFunctional`.
        num_particles: ``N``.
        num_backward: ``K >= 1`` (2 is the usual choice).
        backward: ``"imh"``, ``"exact"``, ``"rejection"`` or a sampler object.
        batch_shape: independent runs.
        resampling, resample, ess_threshold: as :func:`smcdiff.smc`.
        generator: source of all randomness.

    Returns:
        ``[*batch, *shape]``.
    """
    if isinstance(num_backward, bool) or not isinstance(num_backward, int) or num_backward < 1:
        raise ValueError(f"num_backward must be an integer >= 1, got {num_backward!r}")
    sampler = get_backward_sampler(backward)

    def update(t, prev, state, info, tau):
        J = sampler(model, t, prev.particles, prev.log_w, state.particles, num_backward,
                    ancestors=_ancestors_or_identity(info, state.log_w), generator=generator)
        return paris_update(functional, t, prev.particles, state.particles, tau, J)

    return _forward_smoother(model, functional, num_particles, batch_shape, resampling,
                             resample, ess_threshold, generator, update)


def ffbsm(
    model: FeynmanKac,
    functional: AdditiveFunctional,
    num_particles: int,
    *,
    batch_shape: Iterable[int] = (),
    resampling: str | Resampler = "multinomial",
    resample: Any = "always",
    ess_threshold: float = 0.5,
    chunk_size: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """FFBSm estimate of ``E[h_n(X_{0:n}) | y_{0:n}]`` in ``O(N^2)`` per step, online.

    The forward recursion of Del Moral, Doucet & Singh (2010) (``particles``'
    ``Online_smooth_ON2``), which equals the forward-filtering backward-smoothing estimate
    of an additive functional (Douc et al. 2011); rows chunked by ``chunk_size``.
    Arguments as :func:`paris`. Returns ``[*batch, *shape]``.
    """

    def update(t, prev, state, info, tau):
        return ffbsm_update(model, functional, t, prev.particles, prev.log_w, state.particles,
                            tau, chunk_size)

    return _forward_smoother(model, functional, num_particles, batch_shape, resampling,
                             resample, ess_threshold, generator, update)


def ffbsi(
    model: FeynmanKac,
    functional: AdditiveFunctional,
    num_particles: int,
    num_paths: int | None = None,
    *,
    backward: str | BackwardSampler = "exact",
    batch_shape: Iterable[int] = (),
    resampling: str | Resampler = "multinomial",
    resample: Any = "always",
    ess_threshold: float = 0.5,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """FFBSi estimate: the average of ``h_n`` over backward trajectories (Godsill, Doucet &
    West 2004; Douc et al. 2011 for the accept-reject version).

    Stores the filter (memory ``O(T N)``), then draws ``M = num_paths`` (default ``N``)
    trajectories ``b_n ~ Cat(W_n)``, ``b_{t-1} ~ Lambda_t(b_t, .)`` with ``backward``
    (:mod:`smcdiff.ssm.backward`; the IMH sampler starts from the filter ancestor of
    ``b_t``). Other arguments as :func:`paris`. Returns ``[*batch, *shape]``.
    """
    _check_functional(functional)
    sampler = get_backward_sampler(backward)
    engine = _engine(model, num_particles, batch_shape, resampling, resample, ess_threshold)
    state, _ = engine.init(generator)
    hist, log_ws, ancs = [state.particles], [state.log_w], [None]
    for _ in range(1, model.T):
        state, info = engine.step(state, generator)
        hist.append(state.particles)
        log_ws.append(state.log_w)
        ancs.append(_ancestors_or_identity(info, state.log_w))
    raise_if_degenerate(state.bad_step)
    nb = state.log_w.dim() - 1
    M = num_particles if num_paths is None else int(num_paths)
    if M < 1:
        raise ValueError(f"num_paths must be >= 1, got {num_paths!r}")
    b = multinomial(log_ws[-1], M, generator=generator)  # [*batch, M]
    x_b = take_particles(hist[-1], b)
    total = None
    for t in range(model.T - 1, 0, -1):
        a = torch.gather(ancs[t], nb, b)
        bp = sampler(model, t, hist[t - 1], log_ws[t - 1], x_b, 1, ancestors=a,
                     generator=generator)[..., 0]
        xp_b = take_particles(hist[t - 1], bp)
        h = functional.step(t, xp_b, x_b)
        total = h if total is None else total + h
        b, x_b = bp, xp_b
    h0 = functional.init(x_b)
    total = h0 if total is None else total + h0
    return total.mean(nb)
