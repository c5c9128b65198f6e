"""Feynman-Kac corrector targets: annealing, products of experts, classifier-free guidance.

Each is an instance of the general weighted SDE (:class:`~smcdiff.fk.WeightedSDE`; Skreta
et al. 2025, arXiv 2503.02819; notes ``feynman-kac-correctors.md`` §2 (a)-(c)), so it is a
Feynman-Kac model run by the core engine: ``sd.smc(target, N, ...)``. Keyword arguments
(``event_shape``, ``num_steps``, ``grid``, ``init``, ``init_log_z``, ``clamp``, ...) go to
:class:`~smcdiff.fk.WeightedSDE`. Diffusion time ``t`` in [0, 1], 0 = data, 1 = noise.

=========================  ===================  ==========================================
target                     ``(beta_i)``, ``B``  weight rate ``Gamma``
=========================  ===================  ==========================================
``anneal``  ``q^beta``     ``(beta)``, beta     ``(beta-1) d f + g^2/2 beta(beta-1) |s|^2``
``product`` ``prod q_i^b`` ``(b_i)``, sum b_i   ``(B-1) d f + g^2/2 (|S|^2 - sum b_i |s_i|^2)``
``cfg``  ``q_u^{1-w} q_c^w``  ``(1-w, w)``, 1   ``g^2/2 w(w-1) |s_u - s_c|^2``
=========================  ===================  ==========================================

Example (annealing a 2-D mixture with the target-score SDE, resampling when ESS < N/2)::

    import torch, smcdiff as sd
    from smcdiff.fk import anneal
    data = sd.gaussian.GaussianMixture(weights, means, covs)
    target = anneal(data.model(sd.diffusion.VP()), beta=2.0, event_shape=(2,), num_steps=200)
    out = sd.smc(target, 2000, resample="adaptive", generator=torch.Generator().manual_seed(0))
    out.particles, out.weights, out.log_z, out.nfe
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from smcdiff.fk.weighted_sde import WeightedSDE

__all__ = ["anneal", "cfg", "product"]


def _noise_factor(zeta: Any, B: float) -> Any:
    """``None`` / ``"target"`` -> 1, ``"tempered"`` -> ``1/sqrt(B)``, numbers unchanged."""
    if zeta is None or zeta == "target":
        return 1.0
    if zeta == "tempered":
        return 1.0 / math.sqrt(B)
    return zeta


def anneal(model: Any, beta: float, zeta: float | str | None = None, **kwargs: Any) -> WeightedSDE:
    """Annealed target ``p~_t = q_t^beta`` (FKC Prop. 3.2), any ``beta > 0``.

    Args:
        model: a diffusion model (any parametrization) of ``q``.
        beta: inverse temperature ``> 0`` (``> 1`` sharpens, ``< 1`` flattens).
        zeta: ``None`` / ``"target"``: the target-score SDE (drift ``-f + beta g^2 s``,
            noise ``g``); ``"tempered"``: the tempered-noise SDE (``zeta^2 = 1/beta``: drift
            ``-f + (beta+1)/2 g^2 s``, noise ``g/sqrt(beta)``), whose weights degenerate for
            large ``beta`` (notes §4; see :func:`smcdiff.fk.check_weights_degeneracy`);
            or any number ``>= 0``.
        **kwargs: passed to :class:`~smcdiff.fk.WeightedSDE`.

    The weight rate is ``Gamma = (beta-1) d f + g^2/2 beta(beta-1) |s|^2``; the start law
    ``N(0, sigma_1^2 I / beta)`` by default.
    """
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta) \
            or beta <= 0:
        raise ValueError(f"beta: expected a finite number > 0, got {beta!r}")
    return WeightedSDE([model], [float(beta)], zeta=_noise_factor(zeta, float(beta)), **kwargs)


def product(
    models: Sequence[Any],
    betas: float | Sequence[float] = 1.0,
    zeta: float | str | None = None,
    **kwargs: Any,
) -> WeightedSDE:
    """Product of experts ``p~_t = prod_i (q^i_t)^{beta_i}`` (FKC Prop. 3.3).

    Args:
        models: diffusion models sharing one noising process (any parametrizations).
        betas: one exponent for all (e.g. ``1.0``: the plain product; ``beta``: the
            annealed product ``(prod q^i)^beta``) or one per model; ``B = sum beta_i > 0``.
        zeta: as in :func:`anneal` (``"tempered"`` means ``zeta^2 = 1/B``).
        **kwargs: passed to :class:`~smcdiff.fk.WeightedSDE`.

    Two experts with ``beta_i = beta``: ``Gamma = (2 beta - 1) d f + beta(beta-1) g^2/2
    |s_1 + s_2|^2 + beta g^2 <s_1, s_2>``; start ``N(0, sigma_1^2 I / (2 beta))``.
    """
    models = list(models)
    if isinstance(betas, bool):
        raise TypeError("betas: expected a number or a sequence of numbers, got a bool")
    if isinstance(betas, (int, float)):
        exps = [float(betas)] * len(models)
    else:
        exps = [float(b) for b in betas]
    B = sum(exps)
    return WeightedSDE(models, exps, zeta=_noise_factor(zeta, B) if B > 0 else zeta, **kwargs)


def cfg(
    uncond: Any, cond: Any, w: float, zeta: float | str | None = None, **kwargs: Any
) -> WeightedSDE:
    """Classifier-free guidance as the geometric mixture ``p~_t = q_u^{1-w} q_c^w``
    (FKC Prop. 3.1), any real ``w`` (``w > 1`` extrapolates).

    Args:
        uncond, cond: diffusion models of ``q_u`` and ``q_c`` (the same network called with
            and without conditioning works: pass ``conds=[{}, {"y": label}]``). Autoguidance
            is the same target with a weaker model as ``uncond``.
        w: guidance weight.
        zeta: as in :func:`anneal` (``B = 1``, so ``"tempered"`` equals ``"target"``).
        **kwargs: passed to :class:`~smcdiff.fk.WeightedSDE`.

    ``B = 1``, so there is no divergence term: ``Gamma = g^2/2 w(w-1) |s_u - s_c|^2``
    (``>= 0`` for ``w > 1``); the proposal drift is ``-f + (1+zeta^2)/2 g^2 ((1-w) s_u +
    w s_c)``, the usual CFG sampler. The target is normalisable only while
    ``(1-w) C_u^-1 + w C_c^-1`` stays positive definite (Gaussian case).
    """
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
        raise ValueError(f"w: expected a finite guidance weight, got {w!r}")
    return WeightedSDE([uncond, cond], [1.0 - float(w), float(w)],
                       zeta=_noise_factor(zeta, 1.0), **kwargs)
