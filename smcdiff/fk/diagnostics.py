"""Per-run diagnostics of Feynman-Kac corrector runs, read from an :class:`SMCResult`.

What is reported (notes ``feynman-kac-correctors.md`` §4):

- ESS per step (always in the result) and its fraction of ``N``;
- the per-step increment spread: the standard deviation over particles of
  ``log G_t = Gamma Delta`` (needs the :class:`IncrementSpread` collector, see
  :func:`collectors`);
- distinct ancestors (needs ``record_ancestors=True``): the number of distinct parents drawn
  at each resampling step, and the lineage width, the number of distinct step-``t``
  ancestors of the final particles (path degeneracy);
- the log-normalizer ``log_z`` and its running value after every step.

Usage::

    out = sd.smc(target, 2000, collectors=sd.fk.collectors(), record_ancestors=True,
                 generator=gen)
    diag = sd.fk.diagnose(out)                     # FKDiagnostics
    sd.fk.check_weights_degeneracy(out, target)    # warns if the weights degenerate

**A caution learnt on Gaussians.** The tempered-noise SDE with ``B >= 2`` fails although
per-step weights look healthy: on 1-D Gaussian data (VP, 100 steps, ``beta = 3``) the
smallest per-step ESS is 5-18 % of ``N`` and the increment spread stays below 0.6 (no
worse than the target-score SDE's), yet the weighted variance is half the target's (0.08
vs 0.167) and does not improve from ``N = 2000`` to ``16000`` (stable but wrong). The
cause is structural: in the high-noise regime, where every score is close to
``-x / sigma^2``, the proposal's variance settles at ``zeta^2 sigma^2 / ((1 + zeta^2) B - 1)``
while the target ``p~_t`` has ``sigma^2 / B`` (VP and VE alike), so the target-to-proposal
variance ratio is

    rho = 1 + (1 - 1/B) / zeta^2,

and Gaussian importance weights have finite variance only when ``rho < 2``, i.e.
``zeta^2 > 1 - 1/B`` (always for the target-score SDE ``zeta = 1``; only for ``B < 2``
with tempered noise ``zeta^2 = 1/B``). :func:`check_weights_degeneracy` therefore checks
this condition when it is given the model, in addition to the empirical weight statistics.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from smcdiff.core.engine import SMCResult
from smcdiff.core.genealogy import num_distinct_ancestors, trace_lineage

__all__ = [
    "FKDiagnostics",
    "IncrementSpread",
    "WeightDegeneracyWarning",
    "check_weights_degeneracy",
    "collectors",
    "diagnose",
    "variance_ratio",
]


class WeightDegeneracyWarning(UserWarning):
    """The importance weights of an FK corrector run degenerated (or must degenerate)."""


@dataclass(frozen=True)
class IncrementSpread:
    """Collector: standard deviation over particles of the step's log-potentials
    ``log G_t`` (float64, ``[*batch]``), stored under ``"fk.increment_std"``."""

    name: str = "fk.increment_std"

    def __call__(self, state: Any, info: Any) -> Tensor:
        lg = info.log_G.to(torch.float64)
        if lg.shape[-1] < 2:
            return torch.zeros(lg.shape[:-1], dtype=torch.float64, device=lg.device)
        return lg.std(-1)


def collectors() -> list[IncrementSpread]:
    """The collectors :func:`diagnose` reads: pass as ``sd.smc(..., collectors=collectors())``."""
    return [IncrementSpread()]


@dataclass(frozen=True)
class FKDiagnostics:
    """Per-run diagnostics of an FK run (``T`` steps, ``[*batch]`` runs).

    Attributes:
        ess: ``[T, *batch]`` ESS after each step's reweighting.
        ess_fraction: ``ess / N``.
        resampled: ``[T, *batch]`` whether step ``t`` resampled before moving.
        increment_std: ``[T, *batch]`` std over particles of ``log G_t`` (``None`` unless the
            :class:`IncrementSpread` collector ran).
        distinct_parents: ``[T, *batch]`` distinct ancestors drawn by step ``t``'s resampling
            (``N`` where it did not resample); ``None`` without ``record_ancestors``.
        lineage_width: ``[T, *batch]`` distinct step-``t`` ancestors of the final particles;
            ``None`` without ``record_ancestors``.
        log_z: ``[*batch]`` log-normalizer estimate.
        log_z_path: ``[T, *batch]`` running log-normalizer after each step.
        num_particles: ``N``.
    """

    ess: Tensor
    ess_fraction: Tensor
    resampled: Tensor
    increment_std: Tensor | None
    distinct_parents: Tensor | None
    lineage_width: Tensor | None
    log_z: Tensor
    log_z_path: Tensor
    num_particles: int

    @property
    def min_ess_fraction(self) -> Tensor:
        """``[*batch]`` smallest ESS fraction over the run."""
        return self.ess_fraction.min(0).values

    @property
    def max_increment_std(self) -> Tensor | None:
        """``[*batch]`` largest per-step increment spread (``None`` if not collected)."""
        return None if self.increment_std is None else self.increment_std.max(0).values

    @property
    def min_parent_fraction(self) -> Tensor | None:
        """``[*batch]`` smallest fraction of distinct parents at a resampling step."""
        if self.distinct_parents is None:
            return None
        return (self.distinct_parents.to(torch.float64) / self.num_particles).min(0).values


def diagnose(result: SMCResult) -> FKDiagnostics:
    """Collect the per-run diagnostics of ``result`` (module docstring)."""
    if not isinstance(result, SMCResult):
        raise TypeError(f"result: expected an SMCResult, got {type(result).__name__}")
    N = int(result.num_particles) or int(result.log_w.shape[-1])
    ess = result.ess
    inc = result.collected.get(IncrementSpread.name)
    parents = width = None
    if result.ancestors is not None:
        anc = result.ancestors
        parents = num_distinct_ancestors(anc)
        width = num_distinct_ancestors(trace_lineage(anc))
    return FKDiagnostics(
        ess=ess,
        ess_fraction=ess.to(torch.float64) / N,
        resampled=result.resampled,
        increment_std=inc,
        distinct_parents=parents,
        lineage_width=width,
        log_z=result.log_z,
        log_z_path=torch.cumsum(result.log_z_increments, 0),
        num_particles=N,
    )


def variance_ratio(model: Any) -> float:
    """Target-to-proposal variance ratio ``1 + (1 - 1/B) / zeta^2`` of a weighted SDE in
    the high-noise regime (``inf`` for ``zeta = 0`` when ``B != 1``); importance weights have
    finite variance only below 2 (module docstring)."""
    B, zeta = float(model.B), float(model.zeta)
    if zeta == 0:
        return 1.0 if B == 1 else float("inf")
    return 1.0 + (1.0 - 1.0 / B) / zeta**2


def check_weights_degeneracy(
    result: SMCResult,
    model: Any = None,
    *,
    min_ess_fraction: float = 0.01,
    max_increment_std: float = 2.0,
    min_parent_fraction: float = 0.01,
    max_variance_ratio: float = 2.0,
) -> list[str]:
    """Warn (:class:`WeightDegeneracyWarning`) when the weights of ``result`` degenerate.

    Checks, each on every batch member:

    - some step's ESS fell below ``min_ess_fraction * N``;
    - some step's increment spread (std of ``log G`` over particles) exceeded
      ``max_increment_std`` (when :class:`IncrementSpread` was collected);
    - some resampling step drew fewer than ``min_parent_fraction * N`` distinct parents
      (when ancestors were recorded);
    - given the ``model`` (a :class:`~smcdiff.fk.WeightedSDE`): its high-noise variance ratio
      :func:`variance_ratio` is ``>= max_variance_ratio`` (the weights have infinite
      variance, e.g. the tempered-noise SDE with ``B >= 2``); this one is needed because
      such runs can show healthy per-step ESS while being badly biased.

    Returns the list of reasons (empty when nothing was flagged); warns once with all of them.
    """
    d = diagnose(result)
    reasons: list[str] = []
    m = d.min_ess_fraction
    if bool((m < min_ess_fraction).any()):
        t = int(d.ess_fraction.reshape(d.ess_fraction.shape[0], -1).min(-1).values.argmin())
        reasons.append(f"ESS fell to {float(m.min()):.3g} N (< {min_ess_fraction} N) at step {t}")
    inc = d.increment_std
    if inc is not None and bool((inc > max_increment_std).any()):
        s = inc.max(0).values
        per_step = inc.reshape(inc.shape[0], -1).max(-1).values
        reasons.append(
            f"increment spread std(log G) reached {float(s.max()):.3g} (> {max_increment_std}) "
            f"at step {int(per_step.argmax())}"
        )
    p = d.min_parent_fraction
    if p is not None and bool((p < min_parent_fraction).any()):
        reasons.append(f"a resampling step kept only {float(p.min()):.3g} N distinct parents "
                       f"(< {min_parent_fraction} N)")
    if model is not None:
        r = variance_ratio(model)
        if r >= max_variance_ratio:
            reasons.append(
                f"the proposal is too narrow for the target: high-noise variance ratio "
                f"1 + (1 - 1/B)/zeta^2 = {r:.3g} >= {max_variance_ratio} (B = {model.B:.3g}, "
                f"zeta = {model.zeta:.3g}), so the importance weights have infinite variance "
                "and the estimate can be biased even when the ESS looks healthy; use a larger "
                "zeta (zeta = 1, the target-score SDE, always passes)"
            )
    if reasons:
        warnings.warn("FK weights degenerate: " + "; ".join(reasons), WeightDegeneracyWarning,
                      stacklevel=2)
    return reasons
