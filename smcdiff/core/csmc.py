"""Conditional SMC and the particle Gibbs kernel (Andrieu, Doucet & Holenstein 2010).

Conditional SMC (CSMC) runs the particle filter of a Feynman-Kac model
(:mod:`smcdiff.core.feynman_kac`) with one slot pinned to a reference path
``zeta_{0:T-1}``. With ``N`` particles and the reference in slot ``s``:

    x_0^i ~ M_0 for i != s,            x_0^s = zeta_0,        log w_0^i = log G_0(x_0^i)
    for t = 1 .. T-1:
        A_t^s = s                      (or, with ancestor sampling,
                                        P(A_t^s = j) ∝ w_{t-1}^j m_t(x_{t-1}^j, zeta_t))
        A_t^{-s} ~ law of the scheme given A_t^s   (iid Cat(W_{t-1}) for multinomial)
        x_t^i ~ M_t(x_{t-1}^{A_t^i}, .) for i != s,  x_t^s = zeta_t
        log w_t^i = log G_t(x_{t-1}^{A_t^i}, x_t^i)   (for i = s: the state of its ancestor)

A new path is then drawn from the particle system, by ancestry tracing from
``k ~ Cat(W_{T-1})`` (:func:`trace_path`) or by backward sampling (:func:`backward_sample`;
Whiteley 2010; Godsill, Doucet & West 2004; Lindsten & Schön 2013). Either way the map
``zeta -> new path`` is a Markov kernel that leaves the Feynman-Kac path measure
``Q_{T-1}(dx_{0:T-1})`` invariant (the particle Gibbs kernel). Ancestor sampling (CSMC-AS,
Lindsten, Jordan & Schön 2014) and backward sampling (CSMC-BS) make it mix far better
when paths degenerate.

Implementation rules (each a bug seen in real code, see ``notes/particle-smoothing.md`` §3):
the free ancestors are drawn from the scheme's *conditional* law (never a sorted draw with
one slot overwritten; Chopin & Singh 2015 for systematic / stratified / residual);
the reference's previous state is the state of its (possibly sampled) ancestor, so a
potential ``G_t(x_{t-1}, x_t)`` that depends on ``x_{t-1}`` (guided filters) is right for
it too; the filter resamples at every step.

Input order. The particle Gibbs argument relabels particles freely, so it needs a resampling
law that does not depend on the order of the input particles. Multinomial and residual
resampling have this property; stratified and systematic do not (stratified puts the
reference, always first in the cumulative weights, at a fixed place relative to the strata,
and the one-step kernel is then measurably biased). So every scheme other than multinomial
and residual gets its inputs in a fresh uniformly random order at each step, which makes
its law order-invariant and costs one ``argsort`` of ``[*batch, N]`` per step.

Transition densities. Ancestor and backward sampling need ``model.log_m(t, x_prev, x)``,
the log-density of the model's transition into step ``t`` (``t >= 1``), evaluated on
matched pairs: ``x_prev`` and ``x`` both ``[*batch, M, *event]`` (any ``M``) and the result
``[*batch, M]``. It must satisfy ``M_t(x_prev, dx) G_t(x_prev, x) ∝ m_t(x_prev, x) dx`` up
to a factor that depends on ``x`` only (true of bootstrap and guided state-space filters,
``m`` being the state transition). ``t`` is the SMC step index ``0 .. T-1``, not a
diffusion time.

Shapes: reference ``[T, *batch, *event]``; particle history ``[T, *batch, N, *event]``;
log-weights and ancestors ``[T, *batch, N]``; chains are batch members, run together with
no loop over chains or particles.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from smcdiff.core.engine import raise_if_degenerate
from smcdiff.core.feynman_kac import FeynmanKac, check_model, has_transition_density
from smcdiff.core.genealogy import trace_lineage
from smcdiff.core.progress import progress_bar
from smcdiff.core.resampling import RESAMPLERS, Resampler, get_resampler, multinomial
from smcdiff.core.tree import Particles, take_particles, tree_leaves, tree_map
from smcdiff.core.weights import is_degenerate, normalize

__all__ = [
    "CONDITIONAL_SCHEMES", "CSMCResult", "ParticleGibbs", "ParticleGibbsResult",
    "backward_sample", "conditional_smc", "csmc_kernel", "run_particle_gibbs", "trace_path",
]


def _conditional_schemes() -> list[str]:
    return sorted(name for name, r in RESAMPLERS.items() if r.conditional_fn is not None)


#: Names of the resampling schemes that have a conditional version (usable in CSMC).
CONDITIONAL_SCHEMES: tuple[str, ...] = tuple(_conditional_schemes())

# Schemes (by name) whose law does not depend on the order of the input particles. Any other
# scheme (stratified, systematic, user-defined) gets its inputs in a fresh uniformly random
# order at every step; see "Input order" in the module docstring.
_ORDER_INVARIANT = frozenset({"multinomial", "residual"})


# ----------------------------------------------------------------------------- result


@dataclass(frozen=True)
class CSMCResult:
    """The particle system of one conditional SMC run (per batch member).

    Attributes:
        history: particles of every step, ``[T, *batch, N, *event]`` (or a container of such
            tensors). ``history[t][..., ref_slot, ...]`` is the reference ``zeta_t``.
        log_w: filter log-weights ``log w_t = log G_t(x_{t-1}^{A_t}, x_t)``, ``[T, *batch, N]``
            (the filter resamples at every step, so nothing is carried).
        ancestors: ``A_t`` with ``x_t^i`` descending from ``x_{t-1}^{A_t^i}``,
            ``[T, *batch, N]`` int64; row 0 is the identity.
        log_z: ``[*batch]`` the CSMC log-normalizer ``sum_t log mean_i w_t^i``. Conditioned on
            the reference it is *not* an unbiased estimate of ``Z``; use it for diagnostics.
        ess: ``[T, *batch]`` effective sample size of each step's weights.
        ref_slot: the slot that holds the reference.
        num_particles: ``N``.
    """

    history: Particles
    log_w: torch.Tensor
    ancestors: torch.Tensor
    log_z: torch.Tensor
    ess: torch.Tensor
    ref_slot: int
    num_particles: int

    @property
    def T(self) -> int:
        """Number of steps."""
        return int(self.log_w.shape[0])

    @property
    def particles(self) -> Particles:
        """Final particles ``[*batch, N, *event]``."""
        return tree_map(lambda leaf: leaf[-1], self.history)

    @property
    def weights(self) -> torch.Tensor:
        """Normalized final weights ``W_{T-1}``, ``[*batch, N]``."""
        return normalize(self.log_w[-1])


# -------------------------------------------------------------------------- helpers


def _tree_stack(trees: list[Particles], dim: int = 0) -> Particles:
    """Stack a list of identically structured containers leaf by leaf."""
    stacked = iter([torch.stack(leaves, dim) for leaves in zip(*map(tree_leaves, trees))])
    return tree_map(lambda _: next(stacked), trees[0])


def _at(tree: Particles, t: int) -> Particles:
    return tree_map(lambda leaf: leaf[t], tree)


def _put_slot(x: Particles, value: Particles, slot: int, batch_ndim: int) -> Particles:
    """``x`` ``[*batch, N, *event]`` with particle ``slot`` replaced by ``value``
    ``[*batch, *event]`` (out of place, so autograd and views are safe)."""
    values = iter(tree_leaves(value))

    def put(leaf: torch.Tensor) -> torch.Tensor:
        v = next(values)
        N = leaf.shape[batch_ndim]
        event_ndim = leaf.dim() - batch_ndim - 1
        mask = (torch.arange(N, device=leaf.device) == slot).reshape(N, *([1] * event_ndim))
        return torch.where(mask, v.unsqueeze(batch_ndim), leaf)

    return tree_map(put, x)


def _broadcast_slot(value: Particles, N: int, batch_ndim: int) -> Particles:
    """``[*batch, *event]`` -> ``[*batch, N, *event]`` (a view)."""

    def bc(leaf: torch.Tensor) -> torch.Tensor:
        v = leaf.unsqueeze(batch_ndim)
        return v.expand(*leaf.shape[:batch_ndim], N, *leaf.shape[batch_ndim:])

    return tree_map(bc, value)


def _resolve_resampler(resampling: str | Resampler) -> Resampler:
    r = get_resampler(resampling)
    if not isinstance(r, Resampler) or r.conditional_fn is None:
        raise ValueError(
            f"resampling={getattr(r, 'name', r)!r} has no conditional version, so it cannot "
            f"drive conditional SMC; use one of {list(CONDITIONAL_SCHEMES)}"
        )
    return r


def _validate(
    model: Any,
    num_particles: int,
    ref_slot: int,
    needs_log_m: str | None,
) -> None:
    check_model(model)
    if isinstance(num_particles, bool) or not isinstance(num_particles, int) or num_particles < 2:
        raise ValueError(
            f"num_particles must be an integer >= 2 for conditional SMC (one slot holds the "
            f"reference), got {num_particles!r}"
        )
    if isinstance(ref_slot, bool) or not isinstance(ref_slot, int) or not (
        0 <= ref_slot < num_particles
    ):
        raise ValueError(
            f"ref_slot must be an integer in [0, num_particles={num_particles}), got {ref_slot!r}"
        )
    if needs_log_m is not None and not has_transition_density(model):
        raise TypeError(
            f"{needs_log_m} needs the model's transition log-density "
            f"log_m(t, x_prev, x) -> [*batch, M], which {type(model).__name__} does not define"
        )


def _check_reference(reference: Particles, x0: Particles, T: int, batch: torch.Size) -> None:
    """Reference leaves must be ``[T, *batch, *event]`` with the dtype and device of ``M0``'s."""
    ref_leaves, x_leaves = tree_leaves(reference), tree_leaves(x0)
    if len(ref_leaves) != len(x_leaves):
        raise ValueError(
            f"reference has {len(ref_leaves)} tensor leaves but M0 returns particles with "
            f"{len(x_leaves)}; the reference must have the particles' structure"
        )
    nb = len(batch)
    for r, x in zip(ref_leaves, x_leaves):
        expected = (T, *batch, *x.shape[nb + 1:])
        if tuple(r.shape) != expected:
            raise ValueError(
                f"reference must be stacked time-first as [T, *batch, *event] = {expected} "
                f"(T={T}, batch_shape={tuple(batch)}, event shape {tuple(x.shape[nb + 1:])} from "
                f"M0), got {tuple(r.shape)}; pass batch_shape= when running chains as a batch"
            )
        if r.dtype != x.dtype:
            raise TypeError(f"reference has dtype {r.dtype} but M0 returns {x.dtype}")
        if r.device != x.device:
            raise ValueError(f"reference is on {r.device} but M0 returns particles on {x.device}")


def _pair_log_m(
    model: Any, t: int, x_prev: Particles, x: Particles, expected: torch.Size
) -> torch.Tensor:
    out = model.log_m(t, x_prev, x)
    if not isinstance(out, torch.Tensor) or out.shape != expected:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(
            f"log_m({t}, x_prev, x) must evaluate matched pairs and return [*batch, M] = "
            f"{tuple(expected)}, got {shape}"
        )
    return out


def _conditional_ancestors(
    resampler: Resampler,
    log_w: torch.Tensor,
    ref: torch.Tensor,
    slot: int,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Conditional ancestors ``[*batch, N]`` with ``A^slot = ref``, the inputs of an
    order-dependent scheme presented in a uniformly random order."""
    if resampler.name in _ORDER_INVARIANT:
        return resampler.conditional(log_w, ref, slot, generator=generator)
    u = torch.rand(log_w.shape, generator=generator, dtype=torch.float64, device=log_w.device)
    perm = torch.argsort(u, -1)  # position p of the shuffled inputs holds particle perm[p]
    inv = torch.argsort(perm, -1)
    anc = resampler.conditional(
        log_w.gather(-1, perm), inv.gather(-1, ref.unsqueeze(-1)).squeeze(-1), slot,
        generator=generator,
    )
    return perm.gather(-1, anc)


def _log_potential(
    model: Any, t: int, x_prev: Particles | None, x: Particles, expected: torch.Size,
    device: torch.device,
) -> torch.Tensor:
    log_G = model.log_G(t, x_prev, x)
    if not isinstance(log_G, torch.Tensor) or not log_G.is_floating_point():
        what = log_G.dtype if isinstance(log_G, torch.Tensor) else type(log_G).__name__
        raise TypeError(f"log_G at step {t} must return a floating point tensor, got {what}")
    if log_G.shape != expected:
        raise ValueError(
            f"log_G at step {t} returned shape {tuple(log_G.shape)}, expected [*batch, N] = "
            f"{tuple(expected)}"
        )
    if log_G.device != device:
        raise ValueError(f"log_G at step {t} is on {log_G.device}, the particles on {device}")
    return log_G


def _ess(log_w: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """``1 / sum_i W_i^2`` given ``lse = logsumexp(log_w)`` (as :func:`~smcdiff.core.ess`)."""
    return torch.exp(2 * lse - torch.logsumexp(2 * log_w, -1))


def _categorical(logits: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One index per row of ``logits`` ``[..., N]`` drawn ∝ ``exp(logits)``."""
    return multinomial(logits, 1, generator=generator)[..., 0]


# ---------------------------------------------------------------------------- CSMC


def conditional_smc(
    model: FeynmanKac,
    reference: Particles,
    num_particles: int,
    *,
    batch_shape: Iterable[int] = (),
    generator: torch.Generator | None = None,
    ancestor_sampling: bool = False,
    resampling: str | Resampler = "multinomial",
    ref_slot: int = 0,
) -> CSMCResult:
    """Conditional SMC given a reference path (Andrieu, Doucet & Holenstein 2010, §4.3).

    Runs the particle filter of ``model`` with slot ``ref_slot`` pinned to ``reference`` and
    resampling at every step with the scheme's conditional law (Chopin & Singh 2015); with
    ``ancestor_sampling`` the reference's ancestor at step ``t`` is drawn
    ``P(A_t^s = j) ∝ w_{t-1}^j m_t(x_{t-1}^j, zeta_t)`` (Lindsten, Jordan & Schön 2014).
    The reference's previous state in ``log_G(t, x_prev, x)`` is the state of its ancestor.

    Args:
        model: a Feynman-Kac model; ``log_m`` is required with ``ancestor_sampling``.
        reference: the conditioning path ``zeta``, ``[T, *batch, *event]`` (time first).
        num_particles: ``N >= 2`` (the reference included).
        batch_shape: independent chains run together; ``M0`` is called with it.
        generator: source of all randomness.
        ancestor_sampling: draw the reference's ancestors (CSMC-AS).
        resampling: a scheme with a conditional version, one of :data:`CONDITIONAL_SCHEMES`
            (``"multinomial"``, ``"residual"``, ``"stratified"``, ``"systematic"``).
        ref_slot: the slot ``s`` holding the reference.

    Returns:
        a :class:`CSMCResult` with history ``[T, *batch, N, *event]``, log-weights and
        ancestors ``[T, *batch, N]`` and ``log_z`` ``[*batch]``.
    """
    _validate(model, num_particles, ref_slot, "ancestor_sampling" if ancestor_sampling else None)
    resampler = _resolve_resampler(resampling)
    batch = torch.Size(batch_shape)
    nb, N, T, s = len(batch), num_particles, model.T, ref_slot

    x = model.M0(N, batch, generator)
    leaves = tree_leaves(x)
    if not leaves:
        raise TypeError("M0 must return a tensor or a container of tensors")
    for leaf in leaves:
        if leaf.shape[: nb + 1] != (*batch, N):
            raise ValueError(
                f"M0 returned a particle leaf of shape {tuple(leaf.shape)}; expected "
                f"[*batch, N, *event] with batch={tuple(batch)}, N={N}"
            )
    _check_reference(reference, x, T, batch)
    device = leaves[0].device

    x = _put_slot(x, _at(reference, 0), s, nb)
    log_w = _log_potential(model, 0, None, x, torch.Size((*batch, N)), device)
    lse = torch.logsumexp(log_w, -1)
    log_z = lse - math.log(N)
    bad = torch.where(torch.isfinite(lse), -1, 0)  # first degenerate step per member

    identity = torch.arange(N, device=device).expand(*batch, N)
    hist, log_ws, ancs, esss = [x], [log_w], [identity], [_ess(log_w, lse)]
    ref_anc = torch.full(batch, s, dtype=torch.long, device=device)
    for t in range(1, T):
        zeta_t = _at(reference, t)
        if ancestor_sampling:
            lm = _pair_log_m(model, t, x, _broadcast_slot(zeta_t, N, nb), log_w.shape)
            ref_anc = _categorical(log_w + lm, generator)
        anc = _conditional_ancestors(resampler, log_w, ref_anc, s, generator)
        x_prev = take_particles(x, anc)
        x = _put_slot(model.M(t, x_prev, generator), zeta_t, s, nb)
        # Resampled at every step, so nothing is carried: log w_t = log G_t and the
        # log-normalizer increment is log mean_i w_t^i.
        log_w = _log_potential(model, t, x_prev, x, log_w.shape, device)
        lse = torch.logsumexp(log_w, -1)
        log_z = log_z + lse - math.log(N)
        bad = torch.where((bad < 0) & ~torch.isfinite(lse), t, bad)
        hist.append(x)
        log_ws.append(log_w)
        ancs.append(anc)
        esss.append(_ess(log_w, lse))
    raise_if_degenerate(bad)
    return CSMCResult(
        history=_tree_stack(hist),
        log_w=torch.stack(log_ws),
        ancestors=torch.stack(ancs),
        log_z=log_z,
        ess=torch.stack(esss),
        ref_slot=s,
        num_particles=N,
    )


# --------------------------------------------------------------------- path selection


def _select(history: Particles, lineage: torch.Tensor, num_paths: int | None) -> Particles:
    """Paths ``[T, *batch, K, *event]`` for index lineages ``[T, *batch, K]``; the paths
    axis is dropped when ``num_paths`` is ``None``."""
    paths = take_particles(history, lineage)
    if num_paths is None:
        axis = lineage.dim() - 1
        paths = tree_map(lambda leaf: leaf.select(axis, 0), paths)
    return paths


def _num_paths(num_paths: int | None) -> int:
    if num_paths is None:
        return 1
    if isinstance(num_paths, bool) or not isinstance(num_paths, int) or num_paths < 1:
        raise ValueError(f"num_paths must be None or an integer >= 1, got {num_paths!r}")
    return num_paths


def trace_path(
    result: CSMCResult,
    generator: torch.Generator | None = None,
    *,
    num_paths: int | None = None,
) -> Particles:
    """A path drawn by ancestry tracing (Andrieu, Doucet & Holenstein 2010).

    ``k ~ Cat(W_{T-1})``, then ``b_{T-1} = k`` and ``b_{t-1} = A_t^{b_t}``; the path is
    ``x_t^{b_t}``. Used after :func:`conditional_smc` this is the particle Gibbs update.

    Args:
        result: a :class:`CSMCResult`.
        generator: source of randomness.
        num_paths: ``None`` for one path ``[T, *batch, *event]``; ``K`` for ``K`` paths
            drawn conditionally independently given the particle system, ``[T, *batch, K, *event]``.
    """
    K = _num_paths(num_paths)
    final = multinomial(result.log_w[-1], K, generator=generator)
    lineage = trace_lineage(result.ancestors, final)
    return _select(result.history, lineage, num_paths)


def backward_sample(
    result: CSMCResult,
    model: FeynmanKac,
    generator: torch.Generator | None = None,
    *,
    num_paths: int | None = None,
) -> Particles:
    """A path drawn by backward sampling (Godsill, Doucet & West 2004; Whiteley 2010).

    ``b_{T-1} ~ Cat(W_{T-1})`` and, for ``t = T-2 .. 0``,
    ``P(b_t = j) ∝ w_t^j m_{t+1}(x_t^j, x_{t+1}^{b_{t+1}})``; the path is ``x_t^{b_t}``.
    After :func:`conditional_smc` this is the CSMC-BS kernel (Lindsten & Schön 2013). Cost
    ``O(T K N)`` evaluations of ``model.log_m``, made as one call per step on matched pairs
    ``[*batch, K*N, *event]``.

    Args:
        result: a :class:`CSMCResult` (filter log-weights and history).
        model: the model the result came from; needs ``log_m``.
        generator: source of randomness.
        num_paths: ``None`` for one path ``[T, *batch, *event]``; ``K`` for ``K`` paths drawn
            conditionally independently given the particle system, ``[T, *batch, K, *event]``.
    """
    if not has_transition_density(model):
        raise TypeError(
            f"backward sampling needs the model's transition log-density "
            f"log_m(t, x_prev, x) -> [*batch, M], which {type(model).__name__} does not define"
        )
    K = _num_paths(num_paths)
    log_w = result.log_w
    T, batch, N = log_w.shape[0], log_w.shape[1:-1], log_w.shape[-1]
    device = log_w.device
    b = multinomial(log_w[-1], K, generator=generator)  # [*batch, K]
    j_idx = torch.arange(N, device=device).repeat(K).expand(*batch, K * N)
    k_idx = torch.arange(K, device=device).repeat_interleave(N).expand(*batch, K * N)
    lineage = [b]
    bad = torch.zeros(batch, dtype=torch.bool, device=device)
    for t in range(T - 2, -1, -1):
        x_t = _at(result.history, t)
        nxt = take_particles(_at(result.history, t + 1), b)  # [*batch, K, *event]
        lm = _pair_log_m(
            model, t + 1, take_particles(x_t, j_idx), take_particles(nxt, k_idx),
            torch.Size((*batch, K * N)),
        ).reshape(*batch, K, N)
        logits = log_w[t].unsqueeze(-2) + lm
        bad = bad | is_degenerate(logits).any(-1)
        b = _categorical(logits, generator)
        lineage.append(b)
    if bool(bad.any()):
        raise ValueError(
            "backward sampling: every backward weight w_t^j m(x_t^j, x_{t+1}) was zero (or "
            f"NaN) for batch member(s) {torch.nonzero(bad).tolist()[:5]}; check model.log_m"
        )
    return _select(result.history, torch.stack(lineage[::-1]), num_paths)


# ------------------------------------------------------------------ particle Gibbs


@dataclass(frozen=True)
class ParticleGibbs:
    """The particle Gibbs kernel: CSMC given the current path, then a new path from it.

    ``step(zeta)`` runs :func:`conditional_smc` and draws the new path by ancestry tracing,
    or by backward sampling when ``backward_sampling`` (CSMC-BS). The kernel leaves the
    Feynman-Kac path measure ``Q_{T-1}`` invariant (Andrieu, Doucet & Holenstein 2010,
    Thm. 5; Lindsten, Jordan & Schön 2014 for ancestor sampling; Chopin & Singh 2015 for
    the conditional low-variance schemes and backward sampling). Batch members are
    independent chains.

    Args:
        model: a Feynman-Kac model (``log_m`` needed for ancestor or backward sampling).
        num_particles: ``N >= 2``.
        batch_shape: independent chains run together.
        ancestor_sampling: CSMC-AS.
        backward_sampling: CSMC-BS.
        resampling: one of :data:`CONDITIONAL_SCHEMES` or a ``Resampler`` with a
            conditional version.
        ref_slot: slot holding the reference.
    """

    model: FeynmanKac
    num_particles: int
    batch_shape: tuple[int, ...] = ()
    ancestor_sampling: bool = False
    backward_sampling: bool = False
    resampling: str | Resampler = "multinomial"
    ref_slot: int = 0

    def __post_init__(self) -> None:
        needs = [n for n, on in (("ancestor_sampling", self.ancestor_sampling),
                                 ("backward_sampling", self.backward_sampling)) if on]
        _validate(self.model, self.num_particles, self.ref_slot, " and ".join(needs) or None)
        object.__setattr__(self, "resampling", _resolve_resampler(self.resampling))
        object.__setattr__(self, "batch_shape", tuple(torch.Size(self.batch_shape)))

    def step(
        self, reference: Particles, generator: torch.Generator | None = None
    ) -> tuple[Particles, CSMCResult]:
        """One kernel application: ``(new path [T, *batch, *event], the CSMC particle system)``."""
        res = conditional_smc(
            self.model, reference, self.num_particles, batch_shape=self.batch_shape,
            generator=generator, ancestor_sampling=self.ancestor_sampling,
            resampling=self.resampling, ref_slot=self.ref_slot,
        )
        if self.backward_sampling:
            return backward_sample(res, self.model, generator), res
        return trace_path(res, generator), res

    def __call__(
        self, reference: Particles, generator: torch.Generator | None = None
    ) -> Particles:
        """The new path ``[T, *batch, *event]`` after one kernel application."""
        return self.step(reference, generator)[0]


def csmc_kernel(
    model: FeynmanKac,
    reference: Particles,
    num_particles: int,
    *,
    batch_shape: Iterable[int] = (),
    generator: torch.Generator | None = None,
    ancestor_sampling: bool = False,
    backward_sampling: bool = False,
    resampling: str | Resampler = "multinomial",
    ref_slot: int = 0,
) -> Particles:
    """One particle Gibbs update of ``reference`` ``[T, *batch, *event]``; see
    :class:`ParticleGibbs` (Andrieu, Doucet & Holenstein 2010). Returns the new path."""
    kernel = ParticleGibbs(
        model, num_particles, tuple(batch_shape), ancestor_sampling, backward_sampling,
        resampling, ref_slot,
    )
    return kernel(reference, generator)


@dataclass(frozen=True)
class ParticleGibbsResult:
    """A particle Gibbs chain.

    Attributes:
        paths: the path after each iteration, ``[num_iters, T, *batch, *event]``.
        log_z: ``[num_iters, *batch]`` the CSMC log-normalizer of each iteration (a
            diagnostic; not an unbiased evidence estimate).
    """

    paths: Particles
    log_z: torch.Tensor


def run_particle_gibbs(
    model: FeynmanKac,
    init_path: Particles,
    num_iters: int,
    num_particles: int,
    *,
    batch_shape: Iterable[int] = (),
    generator: torch.Generator | None = None,
    ancestor_sampling: bool = False,
    backward_sampling: bool = False,
    resampling: str | Resampler = "multinomial",
    ref_slot: int = 0,
    progress: bool | None = None,
) -> ParticleGibbsResult:
    """Run ``num_iters`` particle Gibbs iterations from ``init_path`` ``[T, *batch, *event]``.

    Each iteration applies :class:`ParticleGibbs` to the previous path. ``progress`` shows a
    tqdm bar; ``None`` shows one only when stderr is a terminal.
    """
    if isinstance(num_iters, bool) or not isinstance(num_iters, int) or num_iters < 1:
        raise ValueError(f"num_iters must be an integer >= 1, got {num_iters!r}")
    kernel = ParticleGibbs(
        model, num_particles, tuple(batch_shape), ancestor_sampling, backward_sampling,
        resampling, ref_slot,
    )
    bar = progress_bar(progress, total=num_iters, desc="particle Gibbs", unit="iter", min_total=1)
    path, paths, log_zs = init_path, [], []
    try:
        for _ in range(num_iters):
            path, res = kernel.step(path, generator)
            paths.append(path)
            log_zs.append(res.log_z)
            bar.update(1)
    finally:
        bar.close()
    return ParticleGibbsResult(paths=_tree_stack(paths), log_z=torch.stack(log_zs))
