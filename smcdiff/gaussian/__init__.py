"""smcdiff.gaussian: exact Gaussian and Gaussian-mixture references under any process.

- :class:`Gaussian`, :class:`GaussianMixture`: data laws with exact marginals, scores,
  denoisers, eps / velocity predictions, exact ``DiffusionModel``\\ s, the Gaussian
  probability-flow-ODE solution and exact reverse transition kernels.
- :mod:`~smcdiff.gaussian.targets`: products, powers, CFG geometric mixtures and reward
  tilts with exact normalizing constants.
- :func:`teleport`: analytical teleportation (Wang & Vastola 2023, arXiv 2311.10892).

Diffusion time ``t`` in [0, 1]: 0 = data, 1 = noise.
"""

from smcdiff.gaussian.distributions import KINDS, Gaussian, GaussianMixture, MixtureKernel
from smcdiff.gaussian.targets import (
    TiltedTarget,
    cfg,
    geometric,
    linear_gaussian_tilt,
    linear_tilt,
    power,
    product,
)
from smcdiff.gaussian.teleport import teleport

__all__ = [
    "KINDS",
    "Gaussian",
    "GaussianMixture",
    "MixtureKernel",
    "TiltedTarget",
    "cfg",
    "geometric",
    "linear_gaussian_tilt",
    "linear_tilt",
    "power",
    "product",
    "teleport",
]
