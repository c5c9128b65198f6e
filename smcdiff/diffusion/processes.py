"""Gaussian noising processes ``x_t = alpha_t x_0 + sigma_t eps``.

Diffusion time ``t`` runs in ``[0, 1]``: ``t = 0`` is data, ``t = 1`` is noise; samplers
integrate from 1 to 0. Every process gives

- ``alpha(t)``, ``sigma(t)`` and their time derivatives ``d_alpha(t)``, ``d_sigma(t)``;
- the half log-SNR ``lambda(t) = log alpha_t - log sigma_t`` (``log_snr``; ``+inf`` where
  ``sigma = 0``) and its inverse ``t_of_log_snr`` (closed form for the built-in processes,
  bisection for :class:`CustomProcess`);
- the coefficients of the forward SDE ``dx = f(t) x dt + g(t) dW`` with the same marginals
  (Kingma et al. 2021, arXiv 2107.00630, App. A; Lu et al. 2022, arXiv 2206.00927, Eq. 2.2)::

      f(t)   = d log(alpha_t) / dt                       (drift_coef)
      g(t)^2 = d sigma_t^2/dt - 2 f(t) sigma_t^2
             = 2 sigma_t^2 d/dt log(sigma_t / alpha_t)     (diffusion_sq)

Time arguments: a Python float, a 0-d tensor, or a tensor of per-particle times whose shape
is a prefix of the state's shape (``[*batch, N]``). Coefficients come back with ``t``'s
shape; :func:`expand_to` right-pads them to broadcast against ``x: [*batch, N, *event]``.
A Python float becomes a float64 0-d tensor (which does not promote a float32 ``x``);
tensor times keep their dtype and device. Times outside ``[0, 1]`` or NaN raise
``ValueError`` (checked for Python floats and CPU tensors; on accelerators the check is
skipped because it would synchronise the device every step).

Formulas are written for float64 accuracy at both ends of ``[0, 1]`` (``expm1`` / ``log1p``,
``cos(pi t/2)`` computed as ``sin(pi (1 - t)/2)`` near ``t = 1``) and stay finite in float32.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

TimeLike = float | Tensor


# --------------------------------------------------------------------------- helpers


def as_time(t: Any, *, name: str = "t", check_range: bool = True) -> Tensor:
    """Diffusion time ``t`` (0 = data, 1 = noise) as a floating tensor, validated.

    Python numbers become float64 0-d tensors; integer tensors become float64; floating
    tensors are returned unchanged. Raises ``TypeError`` for non-numeric input and
    ``ValueError`` for NaN or values outside ``[0, 1]`` (the value check runs for Python
    numbers and CPU tensors only, to avoid a host synchronisation on accelerators).
    """
    if isinstance(t, bool):
        raise TypeError(f"{name} must be a float or a tensor of diffusion times, got bool")
    if isinstance(t, (int, float)):
        tt = torch.tensor(float(t), dtype=torch.float64)
    elif isinstance(t, Tensor):
        tt = t if t.is_floating_point() else t.to(torch.float64)
    else:
        raise TypeError(
            f"{name} must be a float or a torch.Tensor of diffusion times, got {type(t).__name__}"
        )
    if check_range and tt.device.type == "cpu":
        bad = torch.isnan(tt) | (tt < 0) | (tt > 1)
        if bool(bad.any()):
            vals = tt[bad].flatten()[:5].tolist()
            raise ValueError(
                f"{name} must lie in [0, 1] (0 = data, 1 = noise) and not be NaN; got {vals}"
            )
    return tt


def expand_to(coef: Tensor, x: Tensor) -> Tensor:
    """Right-pad ``coef`` with singleton dims so that it broadcasts against ``x``.

    ``coef`` has the shape of a time argument (``[]`` or a prefix of ``x.shape``, e.g.
    ``[*batch, N]``); the result has ``x.ndim`` dims, e.g. ``[*batch, N, 1, ..., 1]``, and
    ``x``'s dtype when ``x`` is floating (so float64 coefficients never promote a float32 state).
    """
    if not isinstance(coef, Tensor):
        coef = torch.as_tensor(coef)
    if coef.ndim > x.ndim:
        raise ValueError(
            f"time coefficient of shape {tuple(coef.shape)} has more dims than x "
            f"{tuple(x.shape)}; times must have a prefix of x's shape"
        )
    for i, (a, b) in enumerate(zip(coef.shape, x.shape)):
        if a != b and a != 1:
            raise ValueError(
                f"time coefficient of shape {tuple(coef.shape)} is not a prefix of x's shape "
                f"{tuple(x.shape)} (dim {i}: {a} vs {b})"
            )
    if x.is_floating_point() and coef.dtype != x.dtype:
        coef = coef.to(x.dtype)
    return coef.reshape(tuple(coef.shape) + (1,) * (x.ndim - coef.ndim))


def _softplus(z: Tensor) -> Tensor:
    """``log(1 + e^z)`` accurate for all ``z`` (no threshold switch)."""
    return torch.clamp(z, min=0) + torch.log1p(torch.exp(-torch.abs(z)))


_INF = float("inf")


# --------------------------------------------------------------------------- base class


@dataclasses.dataclass(frozen=True)
class NoiseProcess:
    """Base class: a Gaussian noising process ``x_t = alpha_t x_0 + sigma_t eps``.

    Subclasses implement ``alpha``, ``sigma``, ``d_alpha``, ``d_sigma`` and
    ``t_of_log_snr``; ``log_snr``, ``drift_coef`` and ``diffusion_sq`` have generic
    definitions (below) that subclasses replace by closed forms.

    Attributes:
        t_min: smallest time a solver should evaluate the model at (grids with
            ``final="t_min"`` stop here; ``final="zero"`` adds a last step to ``t = 0``).
        t_max: largest time with finite ``lambda`` where sampling starts by default.
    """

    name = "process"

    @property
    def t_min(self) -> float:
        raise NotImplementedError

    @property
    def t_max(self) -> float:
        raise NotImplementedError

    # -- schedule
    def alpha(self, t: TimeLike) -> Tensor:
        """Signal scale ``alpha_t`` at diffusion time ``t`` (0 = data, 1 = noise)."""
        raise NotImplementedError

    def sigma(self, t: TimeLike) -> Tensor:
        """Noise scale ``sigma_t`` at diffusion time ``t`` (0 = data, 1 = noise)."""
        raise NotImplementedError

    def d_alpha(self, t: TimeLike) -> Tensor:
        """``d alpha_t / dt``."""
        raise NotImplementedError

    def d_sigma(self, t: TimeLike) -> Tensor:
        """``d sigma_t / dt``."""
        raise NotImplementedError

    def log_snr(self, t: TimeLike) -> Tensor:
        """Half log-SNR ``lambda(t) = log(alpha_t / sigma_t)``; ``+inf`` where ``sigma_t = 0``."""
        return torch.log(self.alpha(t)) - torch.log(self.sigma(t))

    def t_of_log_snr(self, lam: TimeLike) -> Tensor:
        """Inverse of :meth:`log_snr`: the time ``t`` with ``lambda(t) = lam``."""
        raise NotImplementedError

    # -- forward SDE
    def drift_coef(self, t: TimeLike) -> Tensor:
        """``f(t) = alpha_t' / alpha_t`` of the forward SDE ``dx = f(t) x dt + g(t) dW``."""
        return self.d_alpha(t) / self.alpha(t)

    def diffusion_sq(self, t: TimeLike) -> Tensor:
        """``g(t)^2 = 2 sigma sigma' - 2 f sigma^2 = 2 sigma^2 d/dt log(sigma/alpha)``."""
        s = self.sigma(t)
        return 2 * s * self.d_sigma(t) - 2 * self.drift_coef(t) * s * s


def _lam_tensor(lam: Any) -> Tensor:
    if isinstance(lam, bool):
        raise TypeError("lam must be a float or a tensor of log-SNR values, got bool")
    if isinstance(lam, (int, float)):
        return torch.tensor(float(lam), dtype=torch.float64)
    if isinstance(lam, Tensor):
        return lam if lam.is_floating_point() else lam.to(torch.float64)
    raise TypeError(f"lam must be a float or a torch.Tensor, got {type(lam).__name__}")


def _check_sigma_range(sigma_min: float, sigma_max: float) -> None:
    _check_positive(sigma_min=sigma_min, sigma_max=sigma_max)
    if sigma_max <= sigma_min:
        raise ValueError(f"sigma_max ({sigma_max}) must be > sigma_min ({sigma_min})")


def _check_positive(**kw: float) -> None:
    for k, v in kw.items():
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise ValueError(f"{k} must be a finite positive number, got {v!r}")


# --------------------------------------------------------------------------- VP (linear beta)


@dataclasses.dataclass(frozen=True)
class VP(NoiseProcess):
    """Variance-preserving process with a linear ``beta`` schedule (DDPM / VP-SDE).

    ``beta(t) = beta_min + (beta_max - beta_min) t`` and, with
    ``m(t) = int_0^t beta = beta_min t + (beta_max - beta_min) t^2 / 2``::

        alpha_t = exp(-m/2),  sigma_t = sqrt(-expm1(-m)),  lambda = -log(expm1(m)) / 2
        f = -beta/2,  g^2 = beta,  t(lambda) = 2 m / (beta_min + sqrt(beta_min^2 + 2 dbeta m)),
        m = log1p(exp(-2 lambda)).

    Song et al. 2021 (arXiv 2011.13456, Eq. 11); inverse as in Lu et al. 2022 (DPM-Solver, App.).
    ``t_min = 1e-3`` (the usual sampling end time), ``t_max = 1``.
    """

    beta_min: float = 0.1
    beta_max: float = 20.0
    name = "vp"

    def __post_init__(self) -> None:
        _check_positive(beta_min=self.beta_min, beta_max=self.beta_max)
        if self.beta_max < self.beta_min:
            raise ValueError(f"beta_max ({self.beta_max}) must be >= beta_min ({self.beta_min})")

    @property
    def t_min(self) -> float:
        return 1e-3

    @property
    def t_max(self) -> float:
        return 1.0

    def beta(self, t: TimeLike) -> Tensor:
        """``beta(t) = beta_min + (beta_max - beta_min) t``."""
        t = as_time(t)
        return self.beta_min + (self.beta_max - self.beta_min) * t

    def _m(self, t: Tensor) -> Tensor:
        return t * (self.beta_min + 0.5 * (self.beta_max - self.beta_min) * t)

    def alpha(self, t: TimeLike) -> Tensor:
        return torch.exp(-0.5 * self._m(as_time(t)))

    def sigma(self, t: TimeLike) -> Tensor:
        return torch.sqrt(-torch.expm1(-self._m(as_time(t))))

    def d_alpha(self, t: TimeLike) -> Tensor:
        t = as_time(t)
        return -0.5 * self.beta(t) * torch.exp(-0.5 * self._m(t))

    def d_sigma(self, t: TimeLike) -> Tensor:
        # sigma' = beta alpha^2 / (2 sigma); +inf at t = 0 (sigma ~ sqrt(beta_min t)).
        t = as_time(t)
        m = self._m(t)
        return 0.5 * self.beta(t) * torch.exp(-m) / torch.sqrt(-torch.expm1(-m))

    def log_snr(self, t: TimeLike) -> Tensor:
        return -0.5 * torch.log(torch.expm1(self._m(as_time(t))))

    def t_of_log_snr(self, lam: TimeLike) -> Tensor:
        lam = _lam_tensor(lam)
        m = _softplus(-2 * lam)
        db = self.beta_max - self.beta_min
        t = 2 * m / (self.beta_min + torch.sqrt(self.beta_min**2 + 2 * db * m))
        return torch.where(torch.isinf(m), torch.full_like(m, _INF), t)

    def drift_coef(self, t: TimeLike) -> Tensor:
        return -0.5 * self.beta(t)

    def diffusion_sq(self, t: TimeLike) -> Tensor:
        return self.beta(t)


# --------------------------------------------------------------------------- cosine VP


@dataclasses.dataclass(frozen=True)
class CosineVP(NoiseProcess):
    """Variance-preserving cosine schedule (Nichol & Dhariwal 2021, arXiv 2102.09672).

    ``alpha_bar(t) = cos^2(phi(t)) / cos^2(phi_0)``, ``phi(t) = (pi/2)(t + s)/(1 + s)``::

        alpha = cos(phi)/cos(phi_0),  sigma = sqrt(sin(phi - phi_0) sin(phi + phi_0)) / cos(phi_0)
        f = -phi' tan(phi),  g^2 = 2 phi' tan(phi),  phi' = pi / (2 (1 + s))

    (``1 - alpha^2 = sin(phi - phi_0) sin(phi + phi_0)/cos^2 phi_0`` avoids cancellation near
    ``t = 0``). The inverse solves ``tan(phi - phi_0)`` from ``e^{-2 lambda}`` without
    cancellation. ``alpha(1) = 0``, so ``t_max = 0.9946`` (the end time DPM-Solver uses for this
    schedule, Lu et al. 2022); ``t_min = 1e-3``.
    """

    s: float = 0.008
    name = "cosine"

    def __post_init__(self) -> None:
        _check_positive(s=self.s)

    @property
    def t_min(self) -> float:
        return 1e-3

    @property
    def t_max(self) -> float:
        return 0.9946

    @property
    def _phi0(self) -> float:
        return 0.5 * math.pi * self.s / (1 + self.s)

    @property
    def _dphi(self) -> float:
        return 0.5 * math.pi / (1 + self.s)

    def alpha(self, t: TimeLike) -> Tensor:
        t = as_time(t)
        # cos(phi) = sin(pi/2 - phi) = sin(dphi (1 - t)): accurate near t = 1.
        return torch.sin(self._dphi * (1 - t)) / math.cos(self._phi0)

    def sigma(self, t: TimeLike) -> Tensor:
        t = as_time(t)
        a = self._dphi * t  # phi - phi_0
        b = self._dphi * t + 2 * self._phi0  # phi + phi_0
        return torch.sqrt(torch.sin(a) * torch.sin(b)) / math.cos(self._phi0)

    def d_alpha(self, t: TimeLike) -> Tensor:
        t = as_time(t)
        return -self._dphi * torch.cos(self._dphi * (1 - t)) / math.cos(self._phi0)

    def d_sigma(self, t: TimeLike) -> Tensor:
        # sigma sigma' = -alpha alpha'
        t = as_time(t)
        return -self.alpha(t) * self.d_alpha(t) / self.sigma(t)

    def log_snr(self, t: TimeLike) -> Tensor:
        t = as_time(t)
        a = self._dphi * t
        b = a + 2 * self._phi0
        return torch.log(torch.sin(self._dphi * (1 - t))) - 0.5 * (
            torch.log(torch.sin(a)) + torch.log(torch.sin(b))
        )

    def t_of_log_snr(self, lam: TimeLike) -> Tensor:
        lam = _lam_tensor(lam)
        s0, c0 = math.sin(self._phi0), math.cos(self._phi0)
        # q = e^{-lam} = sigma/alpha; w = sqrt(s0^2 + q^2) = tan(phi) c0;
        # tan(delta) = c0 (w - s0) / (c0^2 + w s0), delta = phi - phi_0; divide through by w and
        # write everything with r = s0 e^{lam} so that lam = +-inf stay finite.
        r = s0 * torch.exp(lam)
        root = torch.sqrt(1 + r * r)
        num = c0 / (root * (root + r))
        den = (c0 * c0 / s0) * torch.rsqrt(1 + 1 / (r * r)) + s0
        delta = torch.atan2(num, den)
        return delta / self._dphi

    def drift_coef(self, t: TimeLike) -> Tensor:
        t = as_time(t)
        # tan(phi) = cot(dphi (1 - t))
        return -self._dphi / torch.tan(self._dphi * (1 - t))

    def diffusion_sq(self, t: TimeLike) -> Tensor:
        return -2 * self.drift_coef(t)


# --------------------------------------------------------------------------- VE


@dataclasses.dataclass(frozen=True)
class VE(NoiseProcess):
    """Variance-exploding process (Song et al. 2021, arXiv 2011.13456, Eq. 9 / App. C).

    ``alpha = 1`` and ``sigma(t) = sigma_min (sigma_max/sigma_min)^t`` for ``t > 0``;
    ``t = 0`` is the data itself (``sigma(0) = 0``, ``lambda(0) = +inf``), so the schedule
    jumps from ``sigma_min`` to 0 there, as in the SMLD/NCSN construction. Derivatives at
    ``t = 0`` are the right limits. With ``L = log(sigma_max/sigma_min)``::

        lambda = -log sigma_min - L t,  t(lambda) = max(0, (-lambda - log sigma_min) / L)
        f = 0,  g^2 = d sigma^2/dt = 2 L sigma^2

    ``t_min = 1e-5`` (Song et al.'s sampling end time for VE; ``sigma(t_min) ~ sigma_min``),
    ``t_max = 1``.
    """

    sigma_min: float = 0.01
    sigma_max: float = 50.0
    name = "ve"

    def __post_init__(self) -> None:
        _check_sigma_range(self.sigma_min, self.sigma_max)

    @property
    def t_min(self) -> float:
        return 1e-5

    @property
    def t_max(self) -> float:
        return 1.0

    @property
    def _L(self) -> float:
        return math.log(self.sigma_max / self.sigma_min)

    def _sigma_right(self, t: Tensor) -> Tensor:
        return self.sigma_min * torch.exp(self._L * t)

    def alpha(self, t: TimeLike) -> Tensor:
        return torch.ones_like(as_time(t))

    def sigma(self, t: TimeLike) -> Tensor:
        t = as_time(t)
        return torch.where(t == 0, torch.zeros_like(t), self._sigma_right(t))

    def d_alpha(self, t: TimeLike) -> Tensor:
        return torch.zeros_like(as_time(t))

    def d_sigma(self, t: TimeLike) -> Tensor:
        return self._L * self._sigma_right(as_time(t))

    def log_snr(self, t: TimeLike) -> Tensor:
        t = as_time(t)
        lam = -math.log(self.sigma_min) - self._L * t
        return torch.where(t == 0, torch.full_like(t, _INF), lam)

    def t_of_log_snr(self, lam: TimeLike) -> Tensor:
        lam = _lam_tensor(lam)
        return torch.clamp((-lam - math.log(self.sigma_min)) / self._L, min=0.0)

    def drift_coef(self, t: TimeLike) -> Tensor:
        return torch.zeros_like(as_time(t))

    def diffusion_sq(self, t: TimeLike) -> Tensor:
        return 2 * self._L * self._sigma_right(as_time(t)) ** 2


# --------------------------------------------------------------------------- EDM


@dataclasses.dataclass(frozen=True)
class EDM(NoiseProcess):
    """EDM / Karras process (Karras et al. 2022, arXiv 2206.00364): ``alpha = 1``, ``sigma ∝ t``.

    So ``t = 1`` is ``sigma_max`` and ``t_min = sigma_min / sigma_max``::

        lambda = -log(sigma_max t),  t(lambda) = e^{-lambda} / sigma_max,
        f = 0,  g^2 = 2 sigma sigma' = 2 sigma_max^2 t.
    """

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    name = "edm"

    def __post_init__(self) -> None:
        _check_sigma_range(self.sigma_min, self.sigma_max)

    @property
    def t_min(self) -> float:
        return self.sigma_min / self.sigma_max

    @property
    def t_max(self) -> float:
        return 1.0

    def alpha(self, t: TimeLike) -> Tensor:
        return torch.ones_like(as_time(t))

    def sigma(self, t: TimeLike) -> Tensor:
        return self.sigma_max * as_time(t)

    def d_alpha(self, t: TimeLike) -> Tensor:
        return torch.zeros_like(as_time(t))

    def d_sigma(self, t: TimeLike) -> Tensor:
        return torch.full_like(as_time(t), self.sigma_max)

    def log_snr(self, t: TimeLike) -> Tensor:
        return -torch.log(self.sigma_max * as_time(t))

    def t_of_log_snr(self, lam: TimeLike) -> Tensor:
        return torch.exp(-_lam_tensor(lam)) / self.sigma_max

    def drift_coef(self, t: TimeLike) -> Tensor:
        return torch.zeros_like(as_time(t))

    def diffusion_sq(self, t: TimeLike) -> Tensor:
        return 2 * self.sigma_max**2 * as_time(t)


# --------------------------------------------------------------------------- interpolants


@dataclasses.dataclass(frozen=True)
class LinearInterpolant(NoiseProcess):
    """Linear interpolant / rectified flow (Liu et al. 2022, arXiv 2209.03003; Lipman et al. 2022).

    ``alpha = 1 - t``, ``sigma = t``::

        lambda = log1p(-t) - log t,  t(lambda) = sigmoid(-lambda),
        f = -1/(1 - t),  g^2 = 2 t / (1 - t).

    ``alpha(1) = 0`` (``lambda = -inf``), so ``t_max = 1 - 1e-3`` is where lambda-based grids
    start by default (pass ``t_start=1.0`` to a uniform grid to start at pure noise);
    ``t_min = 1e-3``.
    """

    name = "linear"

    @property
    def t_min(self) -> float:
        return 1e-3

    @property
    def t_max(self) -> float:
        return 1.0 - 1e-3

    def alpha(self, t: TimeLike) -> Tensor:
        return 1 - as_time(t)

    def sigma(self, t: TimeLike) -> Tensor:
        return as_time(t).clone()

    def d_alpha(self, t: TimeLike) -> Tensor:
        return torch.full_like(as_time(t), -1.0)

    def d_sigma(self, t: TimeLike) -> Tensor:
        return torch.ones_like(as_time(t))

    def log_snr(self, t: TimeLike) -> Tensor:
        t = as_time(t)
        return torch.log1p(-t) - torch.log(t)

    def t_of_log_snr(self, lam: TimeLike) -> Tensor:
        return torch.sigmoid(-_lam_tensor(lam))

    def drift_coef(self, t: TimeLike) -> Tensor:
        return -1 / (1 - as_time(t))

    def diffusion_sq(self, t: TimeLike) -> Tensor:
        t = as_time(t)
        return 2 * t / (1 - t)


@dataclasses.dataclass(frozen=True)
class TrigInterpolant(NoiseProcess):
    """Trigonometric / GVP interpolant (Albergo & Vanden-Eijnden 2023; Ma et al. 2024, SiT).

    ``alpha = cos(pi t/2)``, ``sigma = sin(pi t/2)`` (variance preserving)::

        lambda = -log tan(pi t/2),  t(lambda) = (2/pi) atan(e^{-lambda}),
        f = -(pi/2) tan(pi t/2),  g^2 = pi tan(pi t/2).

    ``cos(pi t/2)`` is evaluated as ``sin(pi (1 - t)/2)`` for ``t > 1/2``. ``alpha(1) = 0``,
    so ``t_max = 1 - 1e-3``; ``t_min = 1e-3``.
    """

    name = "trig"

    @property
    def t_min(self) -> float:
        return 1e-3

    @property
    def t_max(self) -> float:
        return 1.0 - 1e-3

    def alpha(self, t: TimeLike) -> Tensor:
        t = as_time(t)
        h = 0.5 * math.pi
        return torch.where(t < 0.5, torch.cos(h * t), torch.sin(h * (1 - t)))

    def sigma(self, t: TimeLike) -> Tensor:
        t = as_time(t)
        h = 0.5 * math.pi
        return torch.where(t < 0.5, torch.sin(h * t), torch.cos(h * (1 - t)))

    def d_alpha(self, t: TimeLike) -> Tensor:
        return -0.5 * math.pi * self.sigma(t)

    def d_sigma(self, t: TimeLike) -> Tensor:
        return 0.5 * math.pi * self.alpha(t)

    def log_snr(self, t: TimeLike) -> Tensor:
        t = as_time(t)
        return torch.log(self.alpha(t)) - torch.log(self.sigma(t))

    def t_of_log_snr(self, lam: TimeLike) -> Tensor:
        return torch.atan(torch.exp(-_lam_tensor(lam))) * (2 / math.pi)

    def drift_coef(self, t: TimeLike) -> Tensor:
        t = as_time(t)
        return -0.5 * math.pi * self.sigma(t) / self.alpha(t)

    def diffusion_sq(self, t: TimeLike) -> Tensor:
        return -2 * self.drift_coef(t)


# --------------------------------------------------------------------------- custom


def _autograd_derivative(fn: Callable[[Tensor], Tensor], t: Tensor) -> Tensor:
    """Elementwise ``d fn(t) / dt`` by autograd (``fn`` must act elementwise)."""
    with torch.inference_mode(False), torch.enable_grad():
        tt = t.detach().clone().requires_grad_(True)
        y = fn(tt)
        if not isinstance(y, Tensor) or y.shape != tt.shape:
            raise ValueError(
                "alpha_fn / sigma_fn must map a time tensor to a tensor of the same shape "
                f"(elementwise); got {type(y).__name__} "
                f"{tuple(y.shape) if isinstance(y, Tensor) else ''} for input {tuple(tt.shape)}"
            )
        if not y.requires_grad:  # constant in t
            return torch.zeros_like(t)
        (g,) = torch.autograd.grad(y.sum(), tt)
    return g.detach()


@dataclasses.dataclass(frozen=True)
class CustomProcess(NoiseProcess):
    """Any user-given schedule ``x_t = alpha(t) x_0 + sigma(t) eps``.

    ``alpha_fn``, ``sigma_fn``: elementwise functions of a time tensor (0 = data, 1 = noise);
    ``lambda = log alpha - log sigma`` must be strictly decreasing on ``[0, 1]``.
    ``d_alpha_fn`` / ``d_sigma_fn``: their derivatives, by autograd when ``None``.
    ``t_of_log_snr`` bisects on ``[0, 1]`` (``bisection_steps`` halvings, vectorised, no host
    sync); values of ``lam`` outside ``lambda([0, 1])`` map to the nearest end.
    ``drift_coef``/``diffusion_sq`` use the generic formulas of :class:`NoiseProcess`, which
    need ``alpha > 0`` and a finite ``sigma'``.
    """

    alpha_fn: Callable[[Tensor], Tensor]
    sigma_fn: Callable[[Tensor], Tensor]
    d_alpha_fn: Callable[[Tensor], Tensor] | None = None
    d_sigma_fn: Callable[[Tensor], Tensor] | None = None
    t_min: float = 1e-3
    t_max: float = 1.0
    bisection_steps: int = 100
    name = "custom"

    def __post_init__(self) -> None:
        for k in ("alpha_fn", "sigma_fn"):
            if not callable(getattr(self, k)):
                raise TypeError(f"{k} must be callable, got {type(getattr(self, k)).__name__}")
        for k in ("d_alpha_fn", "d_sigma_fn"):
            v = getattr(self, k)
            if v is not None and not callable(v):
                raise TypeError(f"{k} must be callable or None, got {type(v).__name__}")
        if not (0 <= self.t_min < self.t_max <= 1):
            raise ValueError(
                f"need 0 <= t_min < t_max <= 1, got t_min={self.t_min}, t_max={self.t_max}"
            )
        if not (isinstance(self.bisection_steps, int) and self.bisection_steps >= 1):
            raise ValueError(f"bisection_steps must be a positive int, got {self.bisection_steps}")

    def _call(self, fn: Callable[[Tensor], Tensor], t: Tensor) -> Tensor:
        y = fn(t)
        if not isinstance(y, Tensor):
            y = torch.as_tensor(y, dtype=t.dtype, device=t.device)
        return y.expand(t.shape) if y.shape != t.shape else y

    def alpha(self, t: TimeLike) -> Tensor:
        return self._call(self.alpha_fn, as_time(t))

    def sigma(self, t: TimeLike) -> Tensor:
        return self._call(self.sigma_fn, as_time(t))

    def d_alpha(self, t: TimeLike) -> Tensor:
        t = as_time(t)
        if self.d_alpha_fn is not None:
            return self._call(self.d_alpha_fn, t)
        return _autograd_derivative(lambda u: self._call(self.alpha_fn, u), t)

    def d_sigma(self, t: TimeLike) -> Tensor:
        t = as_time(t)
        if self.d_sigma_fn is not None:
            return self._call(self.d_sigma_fn, t)
        return _autograd_derivative(lambda u: self._call(self.sigma_fn, u), t)

    def t_of_log_snr(self, lam: TimeLike) -> Tensor:
        lam = _lam_tensor(lam)
        lo = torch.zeros_like(lam)
        hi = torch.ones_like(lam)
        for _ in range(self.bisection_steps):
            mid = 0.5 * (lo + hi)
            above = self.log_snr(mid) > lam  # lambda decreasing: the root lies right of mid
            lo = torch.where(above, mid, lo)
            hi = torch.where(above, hi, mid)
        t = 0.5 * (lo + hi)
        t = torch.where(torch.isposinf(lam), torch.zeros_like(t), t)
        return t


# --------------------------------------------------------------------------- registry

_REGISTRY: dict[str, Callable[[], NoiseProcess]] = {
    "vp": VP,
    "vp-linear": VP,
    "cosine": CosineVP,
    "cosine-vp": CosineVP,
    "ve": VE,
    "edm": EDM,
    "karras": EDM,
    "linear": LinearInterpolant,
    "rectified-flow": LinearInterpolant,
    "flow": LinearInterpolant,
    "trig": TrigInterpolant,
    "gvp": TrigInterpolant,
}


def get_process(name_or_process: str | NoiseProcess) -> NoiseProcess:
    """A :class:`NoiseProcess` from an instance (returned as is) or a name.

    Names (case-insensitive, ``_`` = ``-``): ``vp`` / ``vp-linear``, ``cosine`` / ``cosine-vp``,
    ``ve``, ``edm`` / ``karras``, ``linear`` / ``rectified-flow`` / ``flow``, ``trig`` / ``gvp``;
    each with its default parameters.
    """
    if isinstance(name_or_process, NoiseProcess):
        return name_or_process
    if isinstance(name_or_process, str):
        key = name_or_process.lower().replace("_", "-")
        if key not in _REGISTRY:
            raise ValueError(
                f"unknown process {name_or_process!r}; expected one of {sorted(_REGISTRY)} "
                "or a NoiseProcess instance"
            )
        return _REGISTRY[key]()
    raise TypeError(
        f"process must be a name or a NoiseProcess, got {type(name_or_process).__name__}"
    )


__all__ = [
    "VE",
    "VP",
    "EDM",
    "CosineVP",
    "CustomProcess",
    "LinearInterpolant",
    "NoiseProcess",
    "TrigInterpolant",
    "as_time",
    "expand_to",
    "get_process",
]
