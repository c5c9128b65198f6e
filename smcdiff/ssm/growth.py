"""The nonlinear growth model (Kitagawa 1987; Gordon, Salmond & Smith 1993).

    X_0 ~ N(0, sigma_0^2),
    X_t = a X_{t-1} + b X_{t-1} / (1 + X_{t-1}^2) + c cos(1.2 t) + sigma_x U_t,
    Y_t = X_t^2 / 20 + sigma_y V_t,            U_t, V_t ~ N(0, 1),  t = 0 .. T-1,

with the classical values ``a = 1/2``, ``b = 25``, ``c = 8``, ``sigma_x^2 = 10``,
``sigma_y^2 = 1``, ``sigma_0^2 = 5``. The observation sees ``X_t^2`` only, so the filtering
law is bimodal (the sign of ``X_t`` is lost), the standard stress test of particle filters.
``t`` is the integer observation index (the forcing term of the step into ``X_t`` is
``c cos(1.2 t)``), not a diffusion time.
"""

from __future__ import annotations

import math

import torch
from torch import distributions as D

from smcdiff.ssm.linear_gaussian import scalar_params
from smcdiff.ssm.model import StateSpaceModel

_SQRT10, _SQRT5 = math.sqrt(10.0), math.sqrt(5.0)


def _normal(loc: torch.Tensor, scale: torch.Tensor) -> D.Distribution:
    return D.Independent(D.Normal(loc, scale, validate_args=False), 1, validate_args=False)


class Growth(StateSpaceModel):
    """Nonlinear growth model (Gordon, Salmond & Smith 1993, section 4.1); ``d = dy = 1``.

    Args:
        a, b, c: drift coefficients of ``a x + b x / (1 + x^2) + c cos(1.2 t)``.
        sigma_x: std of the state noise, ``> 0`` (default ``sqrt(10)``).
        sigma_y: std of the observation noise, ``> 0`` (default 1).
        sigma_0: std of ``X_0``, ``> 0`` (default ``sqrt(5)``).
        dtype: dtype for Python-number arguments; default: that of the tensor arguments,
            else float64. Tensors keep their autograd graph; the laws are rebuilt from the
            parameters on each use, so they can be learned (:mod:`smcdiff.ssm.learning`).
    """

    state_dim = 1
    obs_dim = 1

    def __init__(
        self, a=0.5, b=25.0, c=8.0, sigma_x=_SQRT10, sigma_y=1.0,
        sigma_0=_SQRT5, dtype: torch.dtype | None = None,
    ) -> None:
        conv = scalar_params(
            {"a": a, "b": b, "c": c, "sigma_x": sigma_x, "sigma_y": sigma_y,
             "sigma_0": sigma_0}, dtype,
        )
        self.a, self.b, self.c = conv["a"], conv["b"], conv["c"]
        self.sigma_x, self.sigma_y, self.sigma_0 = (
            conv["sigma_x"], conv["sigma_y"], conv["sigma_0"])
        for name in ("sigma_x", "sigma_y", "sigma_0"):
            if not bool(getattr(self, name).detach() > 0):
                raise ValueError(f"{name} must be > 0, got {float(getattr(self, name))}")

    @property
    def dtype(self) -> torch.dtype:
        return self.a.dtype

    @property
    def device(self) -> torch.device:
        return self.a.device

    def drift(self, t: int, x_prev: torch.Tensor) -> torch.Tensor:
        """``a x + b x / (1 + x^2) + c cos(1.2 t)`` for ``x_prev: [*lead, 1]``."""
        return (self.a * x_prev + self.b * x_prev / (1 + x_prev * x_prev)
                + self.c * math.cos(1.2 * t))

    def prior(self) -> D.Distribution:
        """``N(0, sigma_0^2)``, event shape ``[1]``."""
        return _normal(torch.zeros_like(self.sigma_0).reshape(1), self.sigma_0.reshape(1))

    def transition(self, t: int, x_prev: torch.Tensor) -> D.Distribution:
        """``N(drift(t, x_prev), sigma_x^2)``; ``x_prev: [*lead, 1]`` gives batch ``[*lead]``."""
        return _normal(self.drift(t, x_prev), self.sigma_x.reshape(1))

    def observation(self, t: int, x: torch.Tensor) -> D.Distribution:
        """``N(x^2 / 20, sigma_y^2)``; ``x: [*lead, 1]`` gives batch ``[*lead]``, event ``[1]``."""
        return _normal(x * x / 20, self.sigma_y.reshape(1))

    def __repr__(self) -> str:
        return (f"Growth(a={float(self.a):.4g}, b={float(self.b):.4g}, c={float(self.c):.4g}, "
                f"sigma_x={float(self.sigma_x):.4g}, sigma_y={float(self.sigma_y):.4g}, "
                f"sigma_0={float(self.sigma_0):.4g})")
