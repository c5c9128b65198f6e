"""PaRIS particle Gibbs (PPG): PaRIS driven by conditional SMC, batched over chains.

PPG (Cardoso, Janati El Idrissi, Le Corff, Moulines & Olsson, ICML 2023) runs the PaRIS
recursion (Olsson & Westerborn 2017; :func:`smcdiff.ssm.smoothing.paris_update`) inside
conditional SMC (Andrieu, Doucet & Holenstein 2010; :func:`smcdiff.core.csmc.conditional_smc`)
and draws the next frozen path from the stored backward indices. One sweep, given the frozen
path ``zeta_{0:n}``:

    run CSMC with reference zeta (multinomial resampling at every step, ancestor sampling);
    for t = 1 .. n: J_t^{i,k} ~ Lambda_t(i, .) for all N particles (the reference included),
                    tau_t = PaRIS update of tau_{t-1} with J_t;        J_t: [*batch, N, K]
    estimate = sum_i W_n^i tau_n^i
    new zeta: b_n ~ Cat(W_n); for t = n .. 1: k ~ U{1..K}, b_{t-1} = J_t^{b_t, k};
              zeta_t = xi_t^{b_t}

When the ``J`` are exact draws from ``Lambda_t`` given the particle positions, the path
update is backward sampling (CSMC-BS; Whiteley 2010, Lindsten & Schön 2013), so the sweep
leaves the smoothing distribution invariant. This holds for the exact and accept-reject
samplers, and for the IMH sampler started at the ancestors: with multinomial conditional
resampling and ancestor sampling every ancestor is itself an exact draw from ``Lambda``
given the positions (:mod:`smcdiff.ssm.backward`). ``PPG(k0, k)`` discards ``k0`` sweeps
(burn-in) and averages the estimates of the next ``k``; its bias decays with the sweeps, not
only as ``1/N``. The construction follows the method note (notes/particle-smoothing.md §4);
the paper's algorithm boxes were not available to compare defaults.

Chains are batch members ``[*batch]``: all run in one vectorised loop over time. ``t`` is
the observation index (not a diffusion time).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from smcdiff.core.csmc import conditional_smc
from smcdiff.core.feynman_kac import FeynmanKac
from smcdiff.core.genealogy import gather_paths, trace_lineage
from smcdiff.core.resampling import multinomial
from smcdiff.ssm.backward import BackwardSampler, get_backward_sampler
from smcdiff.ssm.smoothing import (
    AdditiveFunctional,
    _check_functional,
    _engine,
    _init_tau,
    paris_update,
    weighted_estimate,
)

__all__ = ["PPGResult", "initial_path", "ppg", "ppg_run", "ppg_sweep"]


@dataclass(frozen=True)
class PPGResult:
    """A PPG run.

    Attributes:
        estimate: ``[*batch, *shape]`` the average of the sweep estimates after burn-in.
        sweep_estimates: ``[k0 + k, *batch, *shape]`` every sweep's estimate (burn-in first).
        path: ``[T, *batch, *event]`` the final frozen path (to continue the chains).
    """

    estimate: torch.Tensor
    sweep_estimates: torch.Tensor
    path: torch.Tensor


def _check_int(name: str, v: Any, low: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {v!r}")
    return v


def initial_path(
    model: FeynmanKac, num_particles: int, *, batch_shape: Iterable[int] = (),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A first frozen path ``[T, *batch, *event]``: one bootstrap filter run (multinomial
    resampling at every step) and ancestry tracing from ``k ~ Cat(W_n)``."""
    engine = _engine(model, num_particles, batch_shape, "multinomial", "always", 0.5)
    res = engine.run(generator, record_ancestors=True, record_particles=True, progress=False)
    k = multinomial(res.log_w, 1, generator=generator)
    lineage = trace_lineage(res.ancestors, k)  # [T, *batch, 1]
    return gather_paths(res.history, lineage).squeeze(lineage.dim() - 1)


def ppg_sweep(
    model: FeynmanKac,
    functional: AdditiveFunctional,
    reference: torch.Tensor,
    num_particles: int,
    *,
    num_backward: int = 2,
    backward: str | BackwardSampler = "imh",
    batch_shape: Iterable[int] = (),
    ancestor_sampling: bool = True,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One PPG sweep (module docstring): ``(estimate [*batch, *shape], new path)``.

    Args:
        model: a Feynman-Kac model with ``log_m``.
        functional: an additive functional (:mod:`smcdiff.ssm.smoothing`).
        reference: the frozen path ``[T, *batch, *event]``.
        num_particles: ``N >= 2`` (the reference included).
        num_backward: ``K >= 1`` backward draws per particle.
        backward: backward sampler (``"imh"``, ``"exact"``, ``"rejection"`` or an object).
        batch_shape: chains.
        ancestor_sampling: CSMC with ancestor sampling (needed for the IMH sampler to stay
            exact on the reference particle; harmless otherwise).
        generator: source of all randomness.
    """
    _check_functional(functional)
    K = _check_int("num_backward", num_backward, 1)
    sampler = get_backward_sampler(backward)
    res = conditional_smc(model, reference, num_particles, batch_shape=batch_shape,
                          generator=generator, ancestor_sampling=ancestor_sampling,
                          resampling="multinomial")
    hist, log_w, anc = res.history, res.log_w, res.ancestors
    T = log_w.shape[0]
    nb = log_w.dim() - 2
    tau = _init_tau(functional, hist[0], nb, num_particles)
    Js = []
    for t in range(1, T):
        J = sampler(model, t, hist[t - 1], log_w[t - 1], hist[t], K, ancestors=anc[t],
                    generator=generator)
        tau = paris_update(functional, t, hist[t - 1], hist[t], tau, J)
        Js.append(J)
    estimate = weighted_estimate(tau, log_w[-1])
    # New frozen path from the stored backward indices.
    batch = log_w.shape[1:-1]
    b = multinomial(log_w[-1], 1, generator=generator)  # [*batch, 1]
    lineage = [b]
    if K > 1:
        ks = torch.randint(0, K, (T, *batch, 1), generator=generator, device=log_w.device)
    for t in range(T - 1, 0, -1):
        rows = torch.gather(Js[t - 1], nb, b.unsqueeze(-1).expand(*batch, 1, K))  # [*b,1,K]
        b = rows[..., 0] if K == 1 else torch.gather(rows[..., 0, :], nb, ks[t])
        lineage.append(b)
    lineage = torch.stack(lineage[::-1])  # [T, *batch, 1]
    path = gather_paths(hist, lineage).squeeze(lineage.dim() - 1)
    return estimate, path


def ppg_run(
    model: FeynmanKac,
    functional: AdditiveFunctional,
    num_particles: int,
    *,
    num_sweeps: int = 10,
    burn_in: int = 5,
    num_backward: int = 2,
    backward: str | BackwardSampler = "imh",
    batch_shape: Iterable[int] = (),
    init_path: torch.Tensor | None = None,
    ancestor_sampling: bool = True,
    generator: torch.Generator | None = None,
) -> PPGResult:
    """``PPG(k0, k)``: ``k0 = burn_in`` discarded sweeps, then the average of ``k = num_sweeps``
    sweep estimates (Cardoso et al. 2023). The first frozen path is ``init_path`` or, by
    default, :func:`initial_path` with the same ``N`` (one more filter run). Other arguments
    as :func:`ppg_sweep`. Returns a :class:`PPGResult`."""
    _check_int("num_sweeps", num_sweeps, 1)
    _check_int("burn_in", burn_in, 0)
    path = init_path
    if path is None:
        path = initial_path(model, num_particles, batch_shape=batch_shape, generator=generator)
    ests = []
    for _ in range(burn_in + num_sweeps):
        est, path = ppg_sweep(model, functional, path, num_particles, num_backward=num_backward,
                              backward=backward, batch_shape=batch_shape,
                              ancestor_sampling=ancestor_sampling, generator=generator)
        ests.append(est)
    sweeps = torch.stack(ests)
    return PPGResult(sweeps[burn_in:].mean(0), sweeps, path)


def ppg(
    model: FeynmanKac,
    functional: AdditiveFunctional,
    num_particles: int,
    *,
    num_sweeps: int = 10,
    burn_in: int = 5,
    num_backward: int = 2,
    backward: str | BackwardSampler = "imh",
    batch_shape: Iterable[int] = (),
    init_path: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """PPG estimate of ``E[h_n(X_{0:n}) | y_{0:n}]``, ``[*batch, *shape]`` (Cardoso et al.
    2023); see :func:`ppg_run` for the arguments and the chain's trace.

    Cost: ``1 + burn_in + num_sweeps`` filter runs of ``N`` particles (the first builds the
    initial path unless ``init_path`` is given), each with ``N K`` backward draws per step.
    """
    return ppg_run(model, functional, num_particles, num_sweeps=num_sweeps, burn_in=burn_in,
                   num_backward=num_backward, backward=backward, batch_shape=batch_shape,
                   init_path=init_path, generator=generator).estimate
