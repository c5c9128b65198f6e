"""The fixed benchmark data sets of the particle-smoothing note (section 6), exactly.

Both recipes draw with NumPy's ``default_rng(20240601)`` in a fixed order, so the series
are the same on every machine (and in any library that follows the recipe):

- :func:`lgssm_data`: ``x_0 = sigma_0 z``; for ``t = 1 .. T-1`` ``x_t = rho x_{t-1} +
  sigma_x z`` (scalar draws in time order); then ``y = x + sigma_y * rng.standard_normal(T)``
  (one vectorised draw). Fingerprints (T = 100, rho = 0.9, sigma_x = 1):
  ``y[:3] = (1.4769, 1.9372, 0.6869)`` for ``sigma_y = 0.2`` and
  ``(1.4389, 2.4577, -0.4991)`` for ``sigma_y = 1``.
- :func:`sv_data`: ``x_0 = mu + sigma / sqrt(1 - rho^2) z``; ``x_t = mu + rho (x_{t-1} - mu)
  + sigma z``; then ``y = exp(x / 2) * rng.standard_normal(T)``. Fingerprint (defaults):
  ``y[:3] = (-0.0362, 0.5132, -1.0953)``.

Both return :class:`~smcdiff.ssm.model.SSMData` with float64 CPU tensors ``x, y: [T, 1]``;
move them with ``.to(device)``. NumPy is needed here only.
"""

from __future__ import annotations

import math

import torch

from smcdiff.ssm.model import SSMData

SEED = 20240601


def _check_T(T: int) -> None:
    if not isinstance(T, int) or isinstance(T, bool) or T < 1:
        raise ValueError(f"T must be an integer >= 1, got {T!r}")


def _to_data(x, y) -> SSMData:
    return SSMData(
        torch.as_tensor(x, dtype=torch.float64).reshape(-1, 1),
        torch.as_tensor(y, dtype=torch.float64).reshape(-1, 1),
    )


def lgssm_data(
    sigma_y: float, rho: float = 0.9, sigma_x: float = 1.0, sigma_0: float | None = None,
    T: int = 100, seed: int = SEED,
) -> SSMData:
    """The linear Gaussian AR(1) benchmark series (``LinearGaussian.ar1(rho, sigma_x, sigma_y)``).

    Args:
        sigma_y: observation noise std (the note uses 0.2 and 1.0).
        rho, sigma_x: AR(1) coefficient and innovation std.
        sigma_0: std of ``x_0``; default ``sigma_x / sqrt(1 - rho^2)``.
        T: number of observations.
        seed: NumPy ``default_rng`` seed.

    Returns:
        ``SSMData(x [T, 1], y [T, 1])`` in float64.
    """
    import numpy as np

    _check_T(T)
    if sigma_0 is None:
        sigma_0 = sigma_x / math.sqrt(1.0 - rho**2)
    rng = np.random.default_rng(seed)
    x = np.empty(T)
    x[0] = sigma_0 * rng.standard_normal()
    for t in range(1, T):
        x[t] = rho * x[t - 1] + sigma_x * rng.standard_normal()
    y = x + sigma_y * rng.standard_normal(T)
    return _to_data(x, y)


def sv_data(
    mu: float = -1.02, rho: float = 0.9702, sigma: float = 0.178, T: int = 100,
    seed: int = SEED,
) -> SSMData:
    """The stochastic volatility benchmark series (``StochasticVolatility()`` defaults).

    Returns:
        ``SSMData(x [T, 1], y [T, 1])`` in float64.
    """
    import numpy as np

    _check_T(T)
    rng = np.random.default_rng(seed)
    x = np.empty(T)
    x[0] = mu + sigma / math.sqrt(1.0 - rho**2) * rng.standard_normal()
    for t in range(1, T):
        x[t] = mu + rho * (x[t - 1] - mu) + sigma * rng.standard_normal()
    y = np.exp(x / 2) * rng.standard_normal(T)
    return _to_data(x, y)
