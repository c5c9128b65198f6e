"""The basic stochastic volatility model (Pitt & Shephard 1999).

    X_0 ~ N(mu, sigma^2 / (1 - rho^2)),
    X_t = mu + rho (X_{t-1} - mu) + sigma U_t,   U_t ~ N(0, 1),
    Y_t | X_t ~ N(0, exp(X_t)),                 t = 0 .. T-1,

with the defaults ``mu = -1.02``, ``rho = 0.9702``, ``sigma = 0.178`` (as
``particles.state_space_models.StochVol``). ``X_t`` is the log-variance of the return
``Y_t``. No closed-form likelihood: the reference is a large-N particle estimate.
``t`` is the integer observation index, not a diffusion time.
"""

from __future__ import annotations

import torch
from torch import distributions as D

from smcdiff.ssm.linear_gaussian import scalar_params
from smcdiff.ssm.model import StateSpaceModel


def _normal(loc: torch.Tensor, scale: torch.Tensor) -> D.Distribution:
    return D.Independent(D.Normal(loc, scale, validate_args=False), 1, validate_args=False)


class StochasticVolatility(StateSpaceModel):
    """Stochastic volatility model (Pitt & Shephard 1999); state and observation are scalars
    stored with event shape ``[1]`` (``d = dy = 1``).

    Args:
        mu: long-run mean of the log-variance.
        rho: autoregression coefficient, ``|rho| < 1``.
        sigma: std of the log-variance innovations, ``> 0``.
        dtype: dtype for Python-number arguments; default: that of the tensor arguments,
            else float64. Tensors keep their autograd graph; the laws are rebuilt from the
            parameters on each use.
    """

    state_dim = 1
    obs_dim = 1

    def __init__(
        self, mu=-1.02, rho=0.9702, sigma=0.178, dtype: torch.dtype | None = None
    ) -> None:
        conv = scalar_params({"mu": mu, "rho": rho, "sigma": sigma}, dtype)
        self.mu, self.rho, self.sigma = conv["mu"], conv["rho"], conv["sigma"]
        if not bool(self.rho.detach().abs() < 1):
            raise ValueError(f"rho must satisfy |rho| < 1, got {float(self.rho)}")
        if not bool(self.sigma.detach() > 0):
            raise ValueError(f"sigma must be > 0, got {float(self.sigma)}")

    @property
    def dtype(self) -> torch.dtype:
        return self.mu.dtype

    @property
    def device(self) -> torch.device:
        return self.mu.device

    def prior(self) -> D.Distribution:
        """Stationary law ``N(mu, sigma^2 / (1 - rho^2))``, event shape ``[1]``."""
        scale = self.sigma / torch.sqrt(1 - self.rho * self.rho)
        return _normal(self.mu.reshape(1), scale.reshape(1))

    def transition(self, t: int, x_prev: torch.Tensor) -> D.Distribution:
        """``N(mu + rho (x_prev - mu), sigma^2)``; ``x_prev: [*lead, 1]`` gives batch
        ``[*lead]``."""
        return _normal(self.mu + self.rho * (x_prev - self.mu), self.sigma.reshape(1))

    def observation(self, t: int, x: torch.Tensor) -> D.Distribution:
        """``N(0, exp(x))``; ``x: [*lead, 1]`` gives batch ``[*lead]``, event ``[1]``."""
        return _normal(torch.zeros_like(x), torch.exp(0.5 * x))

    def __repr__(self) -> str:
        return (f"StochasticVolatility(mu={float(self.mu):.4g}, rho={float(self.rho):.4g}, "
                f"sigma={float(self.sigma):.4g})")
