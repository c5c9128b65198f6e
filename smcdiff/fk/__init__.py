"""smcdiff.fk: Feynman-Kac models built from diffusion models.

Feynman-Kac correctors (Skreta et al. 2025, arXiv 2503.02819): one general weighted SDE
(:class:`WeightedSDE`), a Feynman-Kac model whose proposal is an Euler-Maruyama step of
``dx = [-f x + (1+zeta^2)/2 g^2 S] dtau + zeta g dW`` and whose log-potentials are
``Gamma Delta``, run by the core engine ``smcdiff.smc``; the targets :func:`anneal`,
:func:`product` and :func:`cfg` are instances, and a reward tilt ``exp(lambda_t r)``
(:class:`RewardTilt`, built by :func:`reward_tilt`) is an optional extra term. Reward
steering: FK steering potentials (Singhal et al. 2025, :class:`FKSteering`) and the twisted
diffusion sampler (Wu et al. 2023, :class:`TwistedDiffusion`). Per-run diagnostics in
:mod:`smcdiff.fk.diagnostics`. Diffusion time ``t`` in [0, 1]: 0 = data, 1 = noise.
"""

from smcdiff.fk.diagnostics import (
    FKDiagnostics,
    IncrementSpread,
    WeightDegeneracyWarning,
    check_weights_degeneracy,
    collectors,
    diagnose,
    variance_ratio,
)
from smcdiff.fk.reward_tilt import LinearSchedule, reward_tilt
from smcdiff.fk.rewards import Bumps, LinearGaussianLogLik, LinearReward, NegSquaredDistance
from smcdiff.fk.steering import (
    POTENTIALS,
    ESSAtSteps,
    FKSteering,
    ManySample,
    SteeringParticles,
    TwistedDiffusion,
    TwistedParticles,
    potential_update,
)
from smcdiff.fk.targets import anneal, cfg, product
from smcdiff.fk.weighted_sde import RewardTilt, Tilt, TiltTerms, WeightedSDE, WeightedSDETerms

__all__ = [
    "POTENTIALS",
    "Bumps",
    "ESSAtSteps",
    "FKSteering",
    "LinearGaussianLogLik",
    "LinearReward",
    "LinearSchedule",
    "ManySample",
    "NegSquaredDistance",
    "SteeringParticles",
    "TwistedDiffusion",
    "TwistedParticles",
    "potential_update",
    "reward_tilt",
    "FKDiagnostics",
    "IncrementSpread",
    "RewardTilt",
    "Tilt",
    "TiltTerms",
    "WeightDegeneracyWarning",
    "WeightedSDE",
    "WeightedSDETerms",
    "anneal",
    "cfg",
    "check_weights_degeneracy",
    "collectors",
    "diagnose",
    "product",
    "variance_ratio",
]
