"""The basic stochastic volatility model (Pitt & Shephard 1999).

    X_0 ~ N(mu, sigma^2 / (1 - rho^2)),
    X_t = mu + rho (X_{t-1} - mu) + sigma U_t,   U_t ~ N(0, 1),
    Y_t | X_t ~ N(0, exp(X_t)),                 t = 0 .. T-1,

with the defaults ``mu = -1.02``, ``rho = 0.9702``, ``sigma = 0.178`` (as
``particles.state_space_models.StochVol``). ``X_t`` is the log-variance of the return
``Y_t``. No closed-form likelihood: the reference is a large-N particle estimate.
``t`` is the integer observation index, not a diffusion time.

Also here, for speed (the generic code builds ``torch.distributions`` objects at every step):
:class:`StochasticVolatilityBootstrap`, the bootstrap filter with its laws written out
(``model.bootstrap(y)``), and :class:`StochasticVolatilityScore`, the Fisher-identity score
functional written out in the unconstrained coordinates ``(mu, atanh rho, log sigma)``
(:meth:`StochasticVolatility.from_unconstrained`). Both equal their generic counterparts
(:class:`~smcdiff.ssm.model.BootstrapFK`, :class:`~smcdiff.ssm.learning.FisherScore`), which
the tests check.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import distributions as D

from smcdiff.core.random import standard_normal
from smcdiff.ssm.linear_gaussian import scalar_params
from smcdiff.ssm.model import BootstrapFK, StateSpaceModel

_LOG_2PI = math.log(2 * math.pi)
UNCONSTRAINED = ("mu", "z_rho", "log_sigma")


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

    # ------------------------------------------------------------ parametrisation

    @classmethod
    def from_unconstrained(cls, params: Mapping[str, torch.Tensor]) -> StochasticVolatility:
        """The model at ``mu = params["mu"]``, ``rho = tanh(params["z_rho"])``,
        ``sigma = exp(params["log_sigma"])`` (unconstrained coordinates; 0-dim tensors, kept
        differentiable, or floats): a ``build`` for :class:`~smcdiff.ssm.learning.FisherScore`."""
        missing = [k for k in UNCONSTRAINED if k not in params]
        if missing:
            raise ValueError(f"params must have the keys {UNCONSTRAINED}, missing {missing}")
        mu, z, s = (params[k] if isinstance(params[k], torch.Tensor)
                    else torch.tensor(float(params[k]), dtype=torch.float64)
                    for k in UNCONSTRAINED)
        return cls(mu, torch.tanh(z), torch.exp(s))

    def unconstrained(self) -> dict[str, torch.Tensor]:
        """``{"mu": mu, "z_rho": atanh(rho), "log_sigma": log(sigma)}`` (detached), the
        inverse of :meth:`from_unconstrained`."""
        return {"mu": self.mu.detach().clone(), "z_rho": torch.atanh(self.rho.detach()),
                "log_sigma": torch.log(self.sigma.detach())}

    # ------------------------------------------------------------ Feynman-Kac models

    def bootstrap(self, y: torch.Tensor) -> StochasticVolatilityBootstrap:
        """Bootstrap Feynman-Kac model with the Gaussian laws written out (no
        ``torch.distributions`` objects per step): the same model as the generic
        :class:`~smcdiff.ssm.model.BootstrapFK` (same draws for the same generator, same
        densities), several times cheaper per step."""
        return StochasticVolatilityBootstrap(self, y)


class StochasticVolatilityBootstrap(BootstrapFK):
    """:class:`~smcdiff.ssm.model.BootstrapFK` of a :class:`StochasticVolatility` model with
    the laws written out (Gordon, Salmond & Smith 1993):

        x_0 = mu + sigma / sqrt(1 - rho^2) eps_0,    x_t = mu + rho (x_{t-1} - mu) + sigma eps_t,
        log G_t = log N(y_t; 0, e^{x_t}) = -(log 2 pi + x_t + y_t^2 e^{-x_t}) / 2,
        log m_t(x_prev, x) = log N(x; mu + rho (x_prev - mu), sigma^2).

    Same draws as the generic model for the same generator (one standard normal per particle,
    in the same order) and the same densities up to rounding. The parameters are read from
    the model at every call, so autograd sees them. Shapes: particles ``[*batch, N, 1]``,
    log-potentials ``[*batch, N]``; ``log_m`` broadcasts like the generic one.
    """

    ssm: StochasticVolatility

    def M0(self, num_particles: int, batch_shape: torch.Size,
           generator: torch.Generator | None) -> torch.Tensor:
        """``x_0 ~ N(mu, sigma^2 / (1 - rho^2))``: ``[*batch, N, 1]``."""
        batch_shape = torch.Size(batch_shape)
        self._check_batch(batch_shape)
        m = self.ssm
        eps = torch.randn((*batch_shape, num_particles, 1), generator=generator,
                          dtype=m.dtype, device=m.device)
        return m.mu + m.sigma / torch.sqrt(1 - m.rho * m.rho) * eps

    def M(self, t: int, x_prev: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """``x_t ~ N(mu + rho (x_prev - mu), sigma^2)``: ``[*batch, N, 1]``."""
        m = self.ssm
        eps = standard_normal(x_prev.shape, x_prev, generator)
        return m.mu + m.rho * (x_prev - m.mu) + m.sigma * eps

    def log_G(self, t: int, x_prev: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
        """``log N(y_t; 0, e^{x_t})``: ``[*batch, N]``."""
        x = x[..., 0]
        y2 = self.y_at(t)[..., 0] ** 2
        return -0.5 * (_LOG_2PI + x + y2 * torch.exp(-x))

    def log_m(self, t: int, x_prev: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``log N(x; mu + rho (x_prev - mu), sigma^2)``, broadcast over the leading axes."""
        m = self.ssm
        z = (x[..., 0] - m.mu - m.rho * (x_prev[..., 0] - m.mu)) / m.sigma
        return -0.5 * (z * z) - torch.log(m.sigma) - 0.5 * _LOG_2PI

    def gaussian_transition(self, t: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(rho, mu (1 - rho), sigma)`` as ``[1, 1]``, ``[1]``, ``[1, 1]``: the transition
        ``N(x; rho x' + mu (1 - rho), sigma^2)`` declared as affine Gaussian, for the
        closed-form backward kernel (:func:`smcdiff.ssm.backward.row_logits`)."""
        m = self.ssm
        return m.rho.reshape(1, 1), (m.mu * (1 - m.rho)).reshape(1), m.sigma.reshape(1, 1)

    def log_m_bound(self, t: int) -> torch.Tensor:
        """``max log m_t = -log(sigma sqrt(2 pi))`` (for accept-reject backward sampling)."""
        return -0.5 * _LOG_2PI - torch.log(self.ssm.sigma.detach())


class StochasticVolatilityScore:
    """Fisher-identity score of :class:`StochasticVolatility` as an additive functional,
    written out, in the unconstrained coordinates ``theta = (mu, z, s)`` with
    ``rho = tanh z``, ``sigma = e^s`` (Cappé, Moulines & Rydén 2005, Prop. 10.1.6).

    The observation law ``N(0, e^{x_t})`` does not depend on ``theta``, so only the prior and
    the transitions contribute. With ``d_0 = x_0 - mu``, ``k = (1 - rho^2) / sigma^2`` and the
    innovation ``e_t = x_t - mu - rho (x_{t-1} - mu)``,

        init(x_0)       = ( k d_0,   rho (k d_0^2 - 1),   k d_0^2 - 1 ),
        step(t, x', x)  = ( (1 - rho) e / sigma^2,   (1 - rho^2) e (x' - mu) / sigma^2,
                            e^2 / sigma^2 - 1 ),

    the gradients of ``log N(x_0; mu, sigma^2 / (1 - rho^2))`` and of
    ``log N(x; mu + rho (x' - mu), sigma^2)`` (the chain rule through ``d rho / dz = 1 - rho^2``
    and ``d sigma / ds = sigma``). Equal to
    ``FisherScore(StochasticVolatility.from_unconstrained, params, y)`` (the tests check it),
    without the per-step automatic differentiation; ``y`` is not needed.

    Args:
        params: dict with ``"mu"``, ``"z_rho"``, ``"log_sigma"`` (0-dim tensors or floats).

    Attributes:
        shape: ``(3,)``; names: :data:`UNCONSTRAINED`; model: the model at ``params``.

    Shapes: ``init(x0)`` with ``x0: [*batch, N, 1]`` gives ``[*batch, N, 3]``;
    ``step(t, x_prev, x)`` broadcasts like ``log_m`` (``x_prev: [*b, N, 1, 1]`` with
    ``x: [*b, 1, M, 1]`` gives ``[*b, N, M, 3]``).
    """

    names = UNCONSTRAINED
    shape = (3,)

    def __init__(self, params: Mapping[str, torch.Tensor]) -> None:
        if not isinstance(params, Mapping):
            raise TypeError(f"params must be a dict with keys {UNCONSTRAINED}, got "
                            f"{type(params).__name__}")
        detached = {k: v.detach() if isinstance(v, torch.Tensor) else v
                    for k, v in params.items()}
        self.model = StochasticVolatility.from_unconstrained(detached)

    def init(self, x0: torch.Tensor) -> torch.Tensor:
        """Score of the stationary prior at ``x0: [*batch, N, 1]``: ``[*batch, N, 3]``."""
        m = self.model
        d = x0[..., 0] - m.mu
        k = (1 - m.rho * m.rho) / (m.sigma * m.sigma)
        q = k * d * d - 1
        return torch.stack([k * d, m.rho * q, q], -1)

    def step(self, t: int, x_prev: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Score of the transition density ``m_t(x | x_prev)``: ``[*lead, 3]``."""
        m = self.model
        dp = x_prev[..., 0] - m.mu
        e = x[..., 0] - m.mu - m.rho * dp
        s2 = m.sigma * m.sigma
        return torch.stack([(1 - m.rho) * e / s2, (1 - m.rho * m.rho) * e * dp / s2,
                            e * e / s2 - 1], -1)
