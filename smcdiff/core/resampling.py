"""Resampling schemes: one signature, batched over ``[*batch, N]``, injectable uniforms.

Every scheme maps log-weights ``log_w: [*batch, N]`` to ancestor indices
``[*batch, M]`` (``M`` defaults to ``N`` and may differ) such that the expected number
of offspring of particle ``i`` is ``M W_i`` (unbiasedness). They differ in the variance of
the offspring counts and in how many uniforms they consume. References: Douc, Cappé &
Moulines (2005), *Comparison of resampling schemes for particle filtering*; Gerber,
Chopin & Whiteley (2019), *Negative association, ordering and convergence of resampling
methods* (SSP); Del Moral, Doucet & Jasra (2006) (killing); Chopin & Singh (2015),
*On particle Gibbs sampling* (conditional schemes).

| scheme        | uniforms shape    | offspring of particle i               |
| ------------- | ----------------- | ------------------------------------- |
| multinomial   | ``[*batch, M]``   | iid draws (output order is iid)       |
| stratified    | ``[*batch, M]``   | one draw per stratum ``[k/M,(k+1)/M)``|
| systematic    | ``[*batch]``      | one uniform shared by all strata      |
| residual      | ``[*batch, M]``   | ``floor(M W_i)`` + multinomial rest   |
| ssp           | ``[*batch, N-1]`` | ``floor(M W_i)`` or ``ceil(M W_i)``   |
| killing       | ``[*batch, 2, N]``| keep w.p. ``W_i / max W``, else redraw|

Cumulative sums are accumulated in float64 and pinned to end exactly at 1, so float32
weights, zero weights (``-inf`` log-weights, never selected) and a uniform exactly 0 are
all safe. Indices are always clamped into range, so even a degenerate (all ``-inf``)
batch member yields valid indices; the engine reports such members separately.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from smcdiff.core import constants

_BELOW_ONE = 1.0 - 2.0**-53  # the largest float64 below 1
# Systematic resampling keeps its uniform in [2^-28, 1 - 2^-28] (moving a probability of
# 2^-28 at each end onto the bound), so that c_i (M / c_N) - u, rounded to float64, lies in
# (-1, M] for every c_i in [0, c_N] when M < 2^24: its ceiling is a valid cumulative count
# without clipping. (c_N (M / c_N) is M up to two roundings, M 2^-52 < 2^-28 there.)
_SYSTEMATIC_U_MIN = 2.0**-28
_SYSTEMATIC_U_MAX = 1.0 - 2.0**-28
_SYSTEMATIC_EXACT_M = 2**24

# fn(log_w [B, N], M, uniforms, scaled) -> ancestors [B, M]; ``scaled`` is
# exp(log_w - max log_w) when the caller already has it (else None).
SchemeFn = Callable[[torch.Tensor, int, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


# --------------------------------------------------------------------------- helpers


def _probs(log_w: torch.Tensor) -> torch.Tensor:
    """Normalized float64 weights; a degenerate row (all -inf, NaN) becomes uniform so
    that indices stay valid (the engine reports such rows by step)."""
    w = torch.softmax(log_w.to(torch.float64), dim=-1)
    return torch.nan_to_num(w, nan=1.0 / log_w.shape[-1])


def _scaled(log_w: torch.Tensor, scaled: torch.Tensor | None) -> torch.Tensor:
    """``exp(log_w - max log_w)`` (in the input dtype: cheap), unless the caller has it."""
    return torch.exp(log_w - log_w.amax(-1, keepdim=True)) if scaled is None else scaled


def _unnormalized_cdf(log_w: torch.Tensor, scaled: torch.Tensor | None) -> torch.Tensor:
    # Accumulated in float64: exact enough at N = 1e7 even for float32 weights.
    return torch.cumsum(_scaled(log_w, scaled), dim=-1, dtype=torch.float64)


def _cdf(log_w: torch.Tensor, scaled: torch.Tensor | None = None) -> torch.Tensor:
    """Normalized cumulative weights in float64, ``[B, N]``, exactly 1 from the last
    particle of positive weight on (``c / c[-1]`` is exact there). A degenerate row
    (all ``-inf``, NaN) becomes all ones, so every point goes to its first particle: valid
    indices, and the engine reports the row by step."""
    c = _unnormalized_cdf(log_w, scaled)
    return torch.nan_to_num_(c / c[:, -1:], nan=1.0)


def _inverse_cdf(cdf: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Index of the first ``cdf > point`` (so zero-weight particles are never hit)."""
    # Points are kept below 1 so a rounded-up point still lands on the last particle
    # with positive weight (whose cdf is exactly 1), never on a zero-weight tail.
    points = points.clamp(max=_BELOW_ONE).contiguous()
    idx = torch.searchsorted(cdf, points, right=True)
    return idx.clamp_(max=cdf.shape[-1] - 1)


def ancestors_from_counts(counts: torch.Tensor, num_samples: int) -> torch.Tensor:
    """Sorted ancestor indices ``[B, M]`` from offspring counts ``[B, N]`` summing to M.

    The ancestor at output position ``j`` is the number of particles whose inclusive
    cumulative count is ``<= j``: one ``scatter_add`` of ones at the cumulative counts and a
    ``cumsum``. No host synchronisation, and about twice as fast as ``repeat_interleave``
    (which is itself faster than a ``searchsorted`` over the weights) on CPU.
    """
    return _ancestors_from_cumulative(torch.cumsum(counts, dim=-1), num_samples)


def _ancestors_from_cumulative(cum: torch.Tensor, num_samples: int) -> torch.Tensor:
    # cum: [B, N] non-decreasing inclusive cumulative counts ending at num_samples.
    # int32 marks (counts never exceed M < 2^31) halve the memory written; the cumsum of
    # an int32 tensor comes back as int64, the index dtype.
    B, N = cum.shape
    marks = torch.zeros(B, num_samples + 1, dtype=torch.int32, device=cum.device)
    marks.scatter_add_(1, cum, constants.ones((B, N), torch.int32, cum.device))
    return torch.cumsum(marks[:, :num_samples], dim=-1)


def _counts_from_cumulative(cum: torch.Tensor) -> torch.Tensor:
    """Offspring counts from cumulative counts ``[B, N]`` (non-decreasing, last = M)."""
    return torch.diff(cum, dim=-1, prepend=torch.zeros_like(cum[:, :1]))


# --------------------------------------------------------------------------- schemes


def _multinomial(log_w: torch.Tensor, M: int, u: torch.Tensor, scaled=None) -> torch.Tensor:
    return _inverse_cdf(_cdf(log_w, scaled), u)


def _stratified(log_w: torch.Tensor, M: int, u: torch.Tensor, scaled=None) -> torch.Tensor:
    # Points (k + u_k)/M below C_i: all j = floor(M C_i) strata before C_i's own stratum,
    # plus stratum j's point if u_j < M C_i - j. No search needed; where C_i = 1 this is
    # (M - 1) + [u < 1] = M exactly.
    MC = M * _cdf(log_w, scaled)
    j = torch.floor(MC).clamp_(max=M - 1)
    below = (u.gather(1, j.long()) < MC - j).to(MC.dtype)
    return _ancestors_from_cumulative((j + below).long(), M)


def _systematic_cumulative(c: torch.Tensor, M: int, u: torch.Tensor) -> torch.Tensor:
    """Cumulative offspring counts of systematic resampling from cumulative weights
    ``c: [B, N]`` (normalized or not: they are divided by ``c_N`` here).

    The number of points ``(k + u) / M`` below ``C_i = c_i / c_N`` is ``ceil(M C_i - u)``,
    computed as ``c_i (M / c_N) - u`` (a multiply by a per-row scale: twice as fast on the
    CPU as a broadcast division). Where ``c_i = c_N`` (the last particle of positive weight
    and any zero-weight tail) the product is ``M`` up to two roundings, and
    ``2^-28 <= u <= 1 - 2^-28`` keeps its ceiling at ``M`` and every ceiling in ``[0, M]``
    (for ``M < 2^24``; larger ``M`` is clipped). A degenerate row (``c_N = 0``, inf or
    NaN) sends every point to the first particle.
    """
    u = u.clamp(_SYSTEMATIC_U_MIN, _SYSTEMATIC_U_MAX).unsqueeze(-1)
    scale = torch.div(constants.scalar_tensor(float(M), c.dtype, c.device), c[:, -1:])
    pos = torch.mul(c, scale).sub_(u)
    pos = torch.nan_to_num_(pos, nan=M, posinf=M, neginf=0).ceil_()
    pos = pos if M < _SYSTEMATIC_EXACT_M else pos.clamp_(0, M)
    return pos.to(_count_dtype(pos.device, M))


def _count_dtype(device: torch.device, M: int) -> torch.dtype:
    """Integer dtype for cumulative counts used as scatter indices: int32 on the CPU (the
    float-to-int32 conversion is ~3x cheaper than to int64, and CPU scatter/gather take
    int32 indices), int64 elsewhere."""
    return torch.int32 if device.type == "cpu" and M < 2**31 - 1 else torch.int64


def _systematic_counts(cdf: torch.Tensor, M: int, u: torch.Tensor) -> torch.Tensor:
    return _counts_from_cumulative(_systematic_cumulative(cdf, M, u))


def _systematic(log_w: torch.Tensor, M: int, u: torch.Tensor, scaled=None) -> torch.Tensor:
    c = _unnormalized_cdf(log_w, scaled)  # the normalisation happens inside, fused
    return _ancestors_from_cumulative(_systematic_cumulative(c, M, u), M)


def _residual_parts(log_w: torch.Tensor, M: int):
    MW = M * _probs(log_w)
    det = torch.floor(MW).long()
    resid = (MW - det).clamp_(min=0)
    return det, resid


def _residual(log_w: torch.Tensor, M: int, u: torch.Tensor, scaled=None) -> torch.Tensor:
    det, resid = _residual_parts(log_w, M)
    j = torch.arange(M, device=log_w.device)
    det_cum = torch.cumsum(det, dim=-1)
    fixed = torch.searchsorted(det_cum, j.expand(det.shape[0], M).contiguous(), right=True)
    fixed = fixed.clamp_(max=det.shape[-1] - 1)
    rest = _inverse_cdf(_cdf(torch.log(resid)), u)
    return torch.where(j < det_cum[:, -1:], fixed, rest)


def _ssp(log_w: torch.Tensor, M: int, u: torch.Tensor, scaled=None) -> torch.Tensor:
    """Pivotal (SSP-type) sampling with a balanced-tree pairing order.

    SSP (Gerber, Chopin & Whiteley 2019) is the pivotal method of Deville & Tillé (1998)
    with units visited in sequence. Any pairing order gives a valid pivotal scheme with the
    same guarantees (unbiased, counts in ``{floor(M W_i), ceil(M W_i)}``, negatively
    associated); pairing units in a balanced tree lets us vectorise it in ``ceil(log2 N)``
    rounds instead of an N-step sequential loop.
    """
    W = _probs(log_w)
    MW = M * W
    counts = torch.floor(MW)
    frac = (MW - counts).clamp_(0, 1)
    B, N = frac.shape
    alive = torch.arange(N, device=log_w.device).expand(B, N)  # survivors' particle ids
    x = frac
    used = 0
    while x.shape[-1] > 1:
        n = x.shape[-1]
        p = n // 2
        a, b = x[:, 0 : 2 * p : 2], x[:, 1 : 2 * p : 2]
        ia, ib = alive[:, 0 : 2 * p : 2], alive[:, 1 : 2 * p : 2]
        uu = u[:, used : used + p]
        used += p
        s = a + b
        low = s < 1  # mass s moves to one unit; the other is resolved at 0
        # P(a survives with s) = a / s when s < 1; P(a is resolved at 1) = (1-b)/(2-s) else.
        denom = torch.where(low, s, 2 - s)
        numer = torch.where(low, a, 1 - b)
        prob_a = torch.where(denom > 0, numer / denom.clamp_min(1e-300), torch.zeros_like(s))
        pick_a = uu < prob_a
        # low: the winner carries s, loser resolved at 0.  high: the winner is resolved at 1
        # (one extra child), the other carries s - 1.
        survivor_is_a = torch.where(low, pick_a, ~pick_a)
        carried = torch.where(low, s, s - 1)
        resolved_id = torch.where(survivor_is_a, ib, ia)
        gain = (~low).to(counts.dtype)
        counts = counts.scatter_add(1, resolved_id, gain)
        surv_id = torch.where(survivor_is_a, ia, ib)
        if n % 2:
            carried = torch.cat([carried, x[:, -1:]], dim=-1)
            surv_id = torch.cat([surv_id, alive[:, -1:]], dim=-1)
        x, alive = carried, surv_id
    # By conservation the last survivor holds an integer (0 or 1) up to round-off.
    counts = counts.scatter_add(1, alive, torch.round(x))
    counts = counts.long()
    # Guard against round-off leaving the total one off: fix it on the largest weight.
    deficit = M - counts.sum(-1, keepdim=True)
    counts = counts.scatter_add(1, W.argmax(-1, keepdim=True), deficit)
    return ancestors_from_counts(counts, M)


def _killing(log_w: torch.Tensor, M: int, u: torch.Tensor, scaled=None) -> torch.Tensor:
    N = log_w.shape[-1]
    if M != N:
        raise ValueError(f"killing resampling keeps particle slots, so needs M == N (got {M}, {N})")
    W = _probs(log_w)
    keep_prob = W / W.max(-1, keepdim=True).values
    keep = u[:, 0] < keep_prob
    redraw = _inverse_cdf(_cdf(log_w, scaled), u[:, 1])
    return torch.where(keep, torch.arange(N, device=log_w.device), redraw)


# --------------------------------------------------------------------------- conditional


def _random_permutation(B: int, n: int, device, generator) -> torch.Tensor:
    u = torch.rand(B, n, generator=generator, device=device)
    return torch.argsort(u, dim=-1)


def _finish_conditional(full, remove_at, ref, slot, generator):
    """Drop position ``remove_at`` (a copy of the reference's ancestor) from ``full``,
    shuffle the other N-1 ancestors and put the reference at ``slot``."""
    B, N = full.shape
    j = torch.arange(N - 1, device=full.device).expand(B, N - 1)
    free = full.gather(1, j + (j >= remove_at.unsqueeze(-1)).long())
    free = free.gather(1, _random_permutation(B, N - 1, full.device, generator))
    pos = torch.arange(N, device=full.device).expand(B, N)
    slot_b = slot.unsqueeze(-1)
    src = (pos - (pos > slot_b).long()).clamp(0, max(N - 2, 0))
    out = free.gather(1, src) if N > 1 else full
    return torch.where(pos == slot_b, ref.unsqueeze(-1), out)


def _cond_multinomial(log_w, ref, slot, generator):
    B, N = log_w.shape
    u = torch.rand(B, N, generator=generator, dtype=torch.float64, device=log_w.device)
    full = _inverse_cdf(_cdf(log_w), u)
    pos = torch.arange(N, device=log_w.device)
    return torch.where(pos == slot.unsqueeze(-1), ref.unsqueeze(-1), full)


def _cond_systematic(log_w, ref, slot, generator):
    # Draw U with density proportional to o_ref(U), the reference's offspring count
    # (Chopin & Singh 2015): o(U) = floor(y) - floor(x) + [U < frac(y)] - [U < frac(x)]
    # with x = N C_{ref-1}, y = N C_ref, piecewise constant on three intervals.
    B, N = log_w.shape
    cdf = _cdf(log_w)
    hi = cdf.gather(1, ref.unsqueeze(-1)).squeeze(-1) * N
    lo = torch.where(ref > 0, cdf.gather(1, (ref - 1).clamp_min(0).unsqueeze(-1)).squeeze(-1),
                     torch.zeros_like(hi)) * N
    fx, fy = lo - torch.floor(lo), hi - torch.floor(hi)
    base = torch.floor(hi) - torch.floor(lo)
    e1, e2 = torch.minimum(fx, fy), torch.maximum(fx, fy)
    edges = torch.stack([torch.zeros_like(e1), e1, e2, torch.ones_like(e1)], -1)
    mids = (edges[:, :-1] + edges[:, 1:]) / 2
    step_up = (mids < fy.unsqueeze(-1)).double() - (mids < fx.unsqueeze(-1)).double()
    value = base.unsqueeze(-1) + step_up
    mass = (edges[:, 1:] - edges[:, :-1]) * value.clamp_min(0)
    v = torch.rand(B, 2, generator=generator, dtype=torch.float64, device=log_w.device)
    seg_cdf = torch.cumsum(mass, -1)
    seg = torch.searchsorted(seg_cdf / seg_cdf[:, -1:], v[:, :1].contiguous(), right=True)
    seg = seg.clamp_(max=2)
    left, right = edges.gather(1, seg), edges.gather(1, seg + 1)
    U = (left + (right - left) * v[:, 1:]).squeeze(-1)
    counts = _systematic_counts(cdf, N, U)
    full = ancestors_from_counts(counts, N)
    # Sorted output: the reference's first copy sits after all lower-indexed offspring.
    first = torch.cumsum(counts, -1).gather(1, ref.unsqueeze(-1)).squeeze(-1) - counts.gather(
        1, ref.unsqueeze(-1)).squeeze(-1)
    full = full.scatter(1, first.clamp_max(N - 1).unsqueeze(-1), ref.unsqueeze(-1))
    return _finish_conditional(full, first.clamp_max(N - 1), ref, slot, generator)


def _cond_stratified(log_w, ref, slot, generator):
    # The reference's offspring lies in stratum k with probability proportional to the
    # overlap of [k/N, (k+1)/N) with the reference's cdf interval; draw it there.
    B, N = log_w.shape
    cdf = _cdf(log_w)
    hi = cdf.gather(1, ref.unsqueeze(-1))
    lo = torch.where(ref.unsqueeze(-1) > 0, cdf.gather(1, (ref - 1).clamp_min(0).unsqueeze(-1)),
                     torch.zeros_like(hi))
    k = torch.arange(N, device=log_w.device, dtype=torch.float64)
    a = torch.maximum(k / N, lo)
    b = torch.minimum((k + 1) / N, hi)
    overlap = (b - a).clamp_min(0)
    v = torch.rand(B, N + 2, generator=generator, dtype=torch.float64, device=log_w.device)
    oc = torch.cumsum(overlap, -1)
    kstar = torch.searchsorted(oc / oc[:, -1:], v[:, :1].contiguous(), right=True).clamp_(max=N - 1)
    points = (k + v[:, 2:]) / N
    p_star = a.gather(1, kstar) + overlap.gather(1, kstar) * v[:, 1:2]
    points = points.scatter(1, kstar, p_star)
    full = _inverse_cdf(cdf, points)
    full = full.scatter(1, kstar, ref.unsqueeze(-1))
    return _finish_conditional(full, kstar.squeeze(-1), ref, slot, generator)


def _cond_residual(log_w, ref, slot, generator):
    # With probability floor(N W_ref) / (N W_ref) the reference is one of the deterministic
    # copies; otherwise it is one of the residual draws (the others stay iid).
    B, N = log_w.shape
    det, resid = _residual_parts(log_w, N)
    det_cum = torch.cumsum(det, -1)
    n_det = det_cum[:, -1]
    v = torch.rand(B, N + 1, generator=generator, dtype=torch.float64, device=log_w.device)
    full = _residual(log_w, N, v[:, 1:])
    d_ref = det.gather(1, ref.unsqueeze(-1)).squeeze(-1).double()
    r_ref = resid.gather(1, ref.unsqueeze(-1)).squeeze(-1)
    in_det = v[:, 0] * (d_ref + r_ref) < d_ref
    first_copy = det_cum.gather(1, ref.unsqueeze(-1)).squeeze(-1) - d_ref.long()
    q = torch.where(in_det, first_copy, n_det).clamp_max(N - 1)
    full = full.scatter(1, q.unsqueeze(-1), ref.unsqueeze(-1))
    return _finish_conditional(full, q, ref, slot, generator)


# --------------------------------------------------------------------------- public API


@dataclass(frozen=True)
class Resampler:
    """A resampling scheme with the shared call signature.

    ``resampler(log_w, num_samples=None, *, uniforms=None, generator=None)`` returns
    ancestor indices ``[*batch, M]`` (int64). ``uniforms`` (float64 in ``[0, 1)``, shape
    from :meth:`uniforms_shape`) make the draw deterministic; otherwise they come from
    ``generator``. ``resampler.conditional(log_w, ref, slot, generator=...)`` draws
    ancestors given that slot ``slot`` descends from ``ref`` (conditional SMC).
    """

    name: str
    fn: SchemeFn
    uniforms_per_sample: bool  # True: M uniforms; False: see _uniform_count
    conditional_fn: Callable | None = None

    def uniforms_shape(self, num_particles: int, num_samples: int | None = None) -> tuple[int, ...]:
        M = num_particles if num_samples is None else num_samples
        if self.name == "systematic":
            return ()
        if self.name == "ssp":
            return (max(num_particles - 1, 0),)
        if self.name == "killing":
            return (2, num_particles)
        return (M,)

    def __call__(
        self,
        log_w: torch.Tensor,
        num_samples: int | None = None,
        *,
        uniforms: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        scaled_weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Ancestors ``[*batch, M]``. ``scaled_weights``, if given, must equal
        ``exp(log_w - max log_w)`` (shape of ``log_w``): a caller that already computed it
        (the SMC engine does, for the ESS) saves the scheme one ``exp``."""
        log_w = _check_log_w(log_w, self.name)
        batch, N = log_w.shape[:-1], log_w.shape[-1]
        M = N if num_samples is None else int(num_samples)
        if M < 1:
            raise ValueError(f"{self.name} resampling: num_samples must be >= 1, got {M}")
        per_run = self.uniforms_shape(N, M)
        ushape = (*batch, *per_run)
        if uniforms is None:
            uniforms = torch.rand(ushape, generator=generator, dtype=torch.float64,
                                  device=log_w.device)
        else:
            if tuple(uniforms.shape) != ushape:
                raise ValueError(
                    f"{self.name} resampling: uniforms must have shape {ushape} for log_w of "
                    f"shape {tuple(log_w.shape)} and M={M}, got {tuple(uniforms.shape)}"
                )
            if uniforms.device != log_w.device:
                raise ValueError(f"{self.name} resampling: uniforms on {uniforms.device}, "
                                 f"log_w on {log_w.device}")
            uniforms = uniforms.to(torch.float64)
        if scaled_weights is not None and scaled_weights.shape != log_w.shape:
            raise ValueError(f"{self.name} resampling: scaled_weights must have the shape of "
                             f"log_w {tuple(log_w.shape)}, got {tuple(scaled_weights.shape)}")
        return self._apply(log_w, M, uniforms, scaled_weights)

    def _draw(
        self, log_w: torch.Tensor, generator: torch.Generator | None,
        scaled_weights: torch.Tensor | None,
    ) -> torch.Tensor:
        """``M = N`` ancestors for log-weights already known to be valid (the engine's
        per-step call: the checks of ``__call__`` are skipped, not the work)."""
        N = log_w.shape[-1]
        ushape = (*log_w.shape[:-1], *self.uniforms_shape(N, N))
        uniforms = torch.rand(ushape, generator=generator, dtype=torch.float64,
                              device=log_w.device)
        return self._apply(log_w, N, uniforms, scaled_weights)

    def _apply(self, log_w: torch.Tensor, M: int, uniforms: torch.Tensor,
               scaled_weights: torch.Tensor | None) -> torch.Tensor:
        """Run the scheme on ``[B, N]`` rows (flattening other batch shapes)."""
        if log_w.dim() == 2:  # already [B, N]: the schemes' layout
            return self.fn(log_w, M, uniforms, scaled_weights)
        batch, N = log_w.shape[:-1], log_w.shape[-1]
        B = batch.numel()
        per_run = uniforms.shape[len(batch):]
        flat_u = uniforms.reshape(B, *per_run) if B else uniforms
        if scaled_weights is not None:
            scaled_weights = scaled_weights.reshape(B, N)
        out = self.fn(log_w.reshape(B, N), M, flat_u, scaled_weights)
        return out.reshape(*batch, M)

    def conditional(
        self,
        log_w: torch.Tensor,
        ref: torch.Tensor,
        slot: torch.Tensor | int = 0,
        *,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Ancestors ``[*batch, N]`` with ``out[..., slot] = ref``, the rest drawn from the
        scheme's law conditioned on that event (never by overwriting a sorted draw)."""
        if self.conditional_fn is None:
            raise ValueError(
                f"no conditional version of {self.name!r} resampling; use one of "
                f"{sorted(n for n, r in RESAMPLERS.items() if r.conditional_fn)}"
            )
        log_w = _check_log_w(log_w, self.name)
        batch, N = log_w.shape[:-1], log_w.shape[-1]
        ref = torch.as_tensor(ref, device=log_w.device).long().expand(batch)
        slot_t = torch.as_tensor(slot, device=log_w.device).long().expand(batch)
        B = batch.numel()
        out = self.conditional_fn(log_w.reshape(B, N), ref.reshape(B), slot_t.reshape(B),
                                  generator)
        return out.reshape(*batch, N)


def _check_log_w(log_w: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(log_w, torch.Tensor):
        raise TypeError(f"{name} resampling: log_w must be a torch.Tensor, got {type(log_w)}")
    if not log_w.is_floating_point():
        raise TypeError(f"{name} resampling: log_w must be floating point, got {log_w.dtype}")
    if log_w.dim() < 1 or log_w.shape[-1] < 1:
        raise ValueError(
            f"{name} resampling: log_w must be [*batch, N] with N >= 1, got {tuple(log_w.shape)}"
        )
    return log_w


multinomial = Resampler("multinomial", _multinomial, True, _cond_multinomial)
stratified = Resampler("stratified", _stratified, True, _cond_stratified)
systematic = Resampler("systematic", _systematic, False, _cond_systematic)
residual = Resampler("residual", _residual, True, _cond_residual)
ssp = Resampler("ssp", _ssp, False)
killing = Resampler("killing", _killing, False)

RESAMPLERS: dict[str, Resampler] = {
    r.name: r for r in (multinomial, stratified, systematic, residual, ssp, killing)
}


def get_resampler(scheme: str | Resampler | Callable) -> Resampler:
    """Look up a scheme by name; a :class:`Resampler` (or any callable with its call
    signature, e.g. one replaying recorded uniforms) passes through."""
    if isinstance(scheme, Resampler) or (callable(scheme) and not isinstance(scheme, str)):
        return scheme  # type: ignore[return-value]
    if isinstance(scheme, str) and scheme in RESAMPLERS:
        return RESAMPLERS[scheme]
    raise ValueError(f"unknown resampling scheme {scheme!r}; expected one of {sorted(RESAMPLERS)}")


def resample(
    log_w: torch.Tensor,
    num_samples: int | None = None,
    *,
    scheme: str | Resampler = "systematic",
    uniforms: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Ancestor indices ``[*batch, M]`` drawn by ``scheme`` from ``log_w: [*batch, N]``."""
    return get_resampler(scheme)(log_w, num_samples, uniforms=uniforms, generator=generator)
