"""smcdiff: diffusion and flow sampling as probabilistic inference with SMC.

``import smcdiff`` needs only torch. Subpackages load on first attribute access
(``smcdiff.ssm``, ``smcdiff.diffusion``, ...), so optional dependencies are only needed
by the parts that use them.
"""

from __future__ import annotations

import importlib
from typing import Any

from smcdiff.core import (
    SMC,
    FeynmanKac,
    Moments,
    SMCResult,
    ess,
    log_mean_exp,
    normalize,
    resample,
    smc,
)

__version__ = "0.1.0"

_SUBPACKAGES = ("core", "ssm", "diagnostics", "diffusion", "gaussian", "fk")


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        return importlib.import_module(f"smcdiff.{name}")
    raise AttributeError(f"module 'smcdiff' has no attribute {name!r}")


__all__ = [
    "SMC", "FeynmanKac", "Moments", "SMCResult", "__version__", "ess", "log_mean_exp",
    "normalize", "resample", "smc", *_SUBPACKAGES,
]
