"""Exact Gaussian and Gaussian-mixture data under any noising process.

For data ``x0 ~ p_0`` and the process ``x_t = alpha_t x0 + sigma_t eps`` (diffusion time
``t`` in [0, 1], ``t = 0`` data, ``t = 1`` noise), Gaussian and Gaussian-mixture laws stay
closed under noising, so every quantity a diffusion sampler needs is available exactly
(Wang & Vastola 2023, *The Hidden Linear Structure in Score-Based Models and its
Application*, arXiv 2311.10892; notes: ``solvers.md`` section 3):

* Gaussian ``x0 ~ N(mu, Sigma)``, ``Sigma = sum_k d_k u_k u_k^T``:
  ``p_t = N(alpha_t mu, C_t)``, ``C_t = alpha_t^2 Sigma + sigma_t^2 I`` with eigenvalues
  ``v_k(t) = alpha_t^2 d_k + sigma_t^2`` on the same eigenvectors ``u_k``.

  - score      ``grad log p_t(x) = -C_t^{-1} (x - alpha_t mu)``
  - denoiser   ``E[x0 | x_t = x] = mu + sum_k (alpha_t d_k / v_k) u_k u_k^T (x - alpha_t mu)``
  - noise      ``E[eps | x_t = x] = sigma_t C_t^{-1} (x - alpha_t mu)``
  - velocity   ``dx/dt = alpha_t' E[x0|x] + sigma_t' E[eps|x]`` (probability-flow ODE)
  - PF-ODE     ``x_t = alpha_t mu + sum_k sqrt(v_k(t) / v_k(s)) u_k u_k^T (x_s - alpha_s mu)``

* Mixture ``p_0 = sum_k pi_k N(mu_k, S_k)``: ``p_t = sum_k pi_k N(alpha_t mu_k, C_{t,k})``
  with ``C_{t,k} = alpha_t^2 S_k + sigma_t^2 I``; with responsibilities
  ``w_k(x) = pi_k N(x; alpha_t mu_k, C_{t,k}) / p_t(x)`` (log-sum-exp) every conditional
  expectation is the ``w``-weighted average of the per-component ones.

* Exact reverse kernels from ``t`` to a cleaner ``u <= t``: the forward kernel is
  ``q(x_t | x_u) = N(a x_u, tau^2 I)``, ``a = alpha_t / alpha_u``,
  ``tau^2 = sigma_t^2 - a^2 sigma_u^2``, and by Bayes, per Gaussian component,
  ``p(x_u | x_t) = N(alpha_u mu + sum_k (a v_k(u) / v_k(t)) u_k u_k^T (x_t - alpha_t mu),
  sum_k (v_k(u) tau^2 / v_k(t)) u_k u_k^T)`` (using ``tau^2 + a^2 v_k(u) = v_k(t)``);
  a mixture mixes these with the time-``t`` responsibilities ``w_k(x_t)``.

All computations run in the eigenbasis of each covariance, so a batch of per-particle
times costs no matrix inversions. Shapes: data points ``x: [*batch, d]``; a time ``t`` is
a Python float, a 0-d tensor or a tensor whose shape is a prefix of ``x``'s batch shape
(``[*batch]`` or shorter). dtype and device follow ``x``; parameters are cast on use.

Stability: at ``sigma_t = 0`` (``t = 0``) the marginal is the data law and the denoiser
is the identity; densities and scores of a *singular* covariance are infinite off its
support there (``v_k = 0``), while ``x0``, ``eps``, ``velocity``, the PF-ODE map and the
reverse kernels stay finite. At ``alpha_t = 0`` (``t = 1`` of an interpolant) the
denoiser returns the data mean.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

__all__ = ["KINDS", "Gaussian", "GaussianMixture", "MixtureKernel"]

KINDS = ("eps", "x0", "score", "velocity", "v")
_LOG_2PI = math.log(2.0 * math.pi)


# --------------------------------------------------------------------------- helpers


def _get_process(process: Any) -> Any:
    """Accept a process object or a registered name (``smcdiff.diffusion.get_process``)."""
    if isinstance(process, str):
        from smcdiff.diffusion.processes import get_process

        return get_process(process)
    for attr in ("alpha", "sigma"):
        if not callable(getattr(process, attr, None)):
            raise TypeError(
                f"process: expected a NoiseProcess (with alpha(t), sigma(t)) or a name, "
                f"got {type(process).__name__}"
            )
    return process


def _check_points(x: Any, dim: int, name: str = "x") -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor of shape [*batch, {dim}], got "
                        f"{type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {x.dtype}")
    if x.ndim < 1 or x.shape[-1] != dim:
        raise ValueError(f"{name}: expected shape [*batch, {dim}], got {tuple(x.shape)}")
    return x


def _time(t: Any, x: Tensor, name: str = "t") -> Tensor:
    """``t`` as a tensor of ``x``'s dtype and device whose shape prefixes x's batch shape."""
    if isinstance(t, bool):
        raise TypeError(f"{name}: expected a float or tensor time in [0, 1], got a bool")
    if isinstance(t, (int, float)):
        if not 0.0 <= float(t) <= 1.0:
            raise ValueError(f"{name}: diffusion time must lie in [0, 1], got {t}")
        return torch.tensor(float(t), dtype=x.dtype, device=x.device)
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: expected a float or a tensor, got {type(t).__name__}")
    batch = x.shape[:-1]
    if t.ndim > len(batch) or any(a != b and a != 1 for a, b in zip(t.shape, batch)):
        raise ValueError(
            f"{name}: shape {tuple(t.shape)} must be a prefix of the batch shape "
            f"{tuple(batch)} of x (shape {tuple(x.shape)})"
        )
    return t.to(dtype=x.dtype, device=x.device)


def _coef(fn: Callable[[Tensor], Any], t: Tensor, ndim: int) -> Tensor:
    """``fn(t)`` cast like ``t`` and right-padded with singleton dims to ``ndim`` dims
    (as ``smcdiff.diffusion.processes.expand_to``)."""
    c = torch.as_tensor(fn(t), dtype=t.dtype, device=t.device)
    return c.reshape(c.shape + (1,) * (ndim - c.ndim))


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
    return kind


def _eig_psd(cov: Tensor, name: str) -> tuple[Tensor, Tensor]:
    """Eigen-decomposition of symmetric PSD matrices ``[..., d, d]`` (computed in float64).

    Returns eigenvalues ``[..., d]`` (clamped at 0) and eigenvectors ``[..., d, d]``
    (columns), both float64. Raises if not symmetric or clearly not PSD.
    """
    c = cov.to(torch.float64)
    scale = c.abs().amax(dim=(-2, -1), keepdim=True).clamp_min(1e-300)
    tol = 1e-6 if cov.dtype in (torch.float32, torch.float16, torch.bfloat16) else 1e-10
    if not torch.all((c - c.transpose(-1, -2)).abs() <= tol * scale):
        raise ValueError(f"{name}: expected a symmetric matrix")
    c = 0.5 * (c + c.transpose(-1, -2))
    lam, U = torch.linalg.eigh(c)
    if not torch.all(lam >= -1e3 * tol * scale.squeeze(-1)):
        raise ValueError(
            f"{name}: expected a positive semi-definite covariance, smallest eigenvalue "
            f"{lam.min().item():.3e}"
        )
    return lam.clamp_min(0.0), U


def _project(x: Tensor, a: Tensor, means: Tensor, U: Tensor) -> Tensor:
    """``z[..., k, :] = U_k^T (x - a mu_k)``: x ``[*b, d]``, a padded to x.ndim;
    returns ``[*b, K, d]``."""
    xc = x.unsqueeze(-2) - a.unsqueeze(-1) * means
    return torch.einsum("...ki,kij->...kj", xc, U)


def _unproject(y: Tensor, U: Tensor) -> Tensor:
    """``x[..., k, :] = U_k y[..., k, :]``: ``[*b, K, d] -> [*b, K, d]``."""
    return torch.einsum("...kj,kij->...ki", y, U)


def _mix(r: Tensor, y: Tensor, U: Tensor) -> Tensor:
    """``sum_k r_k U_k y_k``: r ``[*b, K]``, y ``[*b, K, d]`` -> ``[*b, d]``."""
    return torch.einsum("...kj,kij->...i", r.unsqueeze(-1) * y, U)


def _log_normalize(log_w: Tensor) -> Tensor:
    """``log_w - logsumexp(log_w)`` over the last dim (written out: ``torch.softmax``
    parallelises over rows even for tiny inputs, which stalls on a busy CPU)."""
    return log_w - torch.logsumexp(log_w, dim=-1, keepdim=True)


def _sample_index(log_w: Tensor, u: Tensor) -> Tensor:
    """Categorical index per row of ``log_w [*b, K]`` from uniforms ``u [*b]`` (inverse cdf)."""
    cdf = torch.cumsum(_log_normalize(log_w.to(torch.float64)).exp(), dim=-1)
    idx = (u.to(torch.float64).unsqueeze(-1) >= cdf).sum(-1)
    return idx.clamp_max(log_w.shape[-1] - 1)


def _cov_shape(s: Tensor, nbatch: int, nkeep: int) -> Tensor:
    """Pad leading time dims of a ``[*tshape, <nkeep dims>]`` tensor to broadcast against
    ``[*batch, <nkeep dims>]``; a 0-d time leaves just the trailing dims."""
    tdims = s.ndim - nkeep
    if tdims == 0:
        return s
    return s.reshape(s.shape[:tdims] + (1,) * (nbatch - tdims) + s.shape[tdims:])


def _inv_or_zero(v: Tensor) -> Tensor:
    """``1 / v`` where ``v > 0`` and 0 where ``v = 0`` (a null direction at ``sigma = 0``)."""
    pos = v > 0
    return torch.where(pos, 1.0 / torch.where(pos, v, torch.ones_like(v)), torch.zeros_like(v))


def _log_pk(z: Tensor, v: Tensor, log_w: Tensor, nonsingular: bool) -> Tensor:
    """``log pi_k + log N`` from eigen-coordinates ``z [*b, K, d]`` and variances ``v``
    (broadcastable to z); a null variance gives ``-inf`` off the support, ``+inf`` on it."""
    if nonsingular:  # v > 0 everywhere (alpha and sigma never vanish together)
        quad = (z**2 / v).sum(-1)
    else:
        quad = (z**2 * _inv_or_zero(v)).sum(-1)
        off = ((v == 0) & (z != 0)).any(-1)
        quad = torch.where(off, torch.full_like(quad, math.inf), quad)
    return log_w - 0.5 * (quad + torch.log(v).sum(-1) + z.shape[-1] * _LOG_2PI)


def _align_times(*ts: Tensor) -> list[Tensor]:
    """Right-pad prefix-shaped times to a common ndim and broadcast them."""
    n = max(t.ndim for t in ts)
    return list(torch.broadcast_tensors(*(t.reshape(t.shape + (1,) * (n - t.ndim)) for t in ts)))


class _Params(NamedTuple):
    log_w: Tensor  # [K]
    means: Tensor  # [K, d]
    U: Tensor  # [K, d, d] eigenvectors (columns)
    lam: Tensor  # [K, d] eigenvalues >= 0


class _Terms(NamedTuple):
    t: Tensor  # time tensor (unpadded)
    alpha: Tensor  # padded to x.ndim
    sigma: Tensor
    z: Tensor  # [*b, K, d] eigen-coordinates of x - alpha mu_k
    v: Tensor  # [*b, K, d] eigenvalues of C_{t,k}
    log_pk: Tensor  # [*b, K] log pi_k + log N(x; alpha mu_k, C_{t,k})
    resp: Tensor  # [*b, K] responsibilities w_k(x)


class MixtureKernel(NamedTuple):
    """A Gaussian-mixture transition ``p(x_u | x_t) = sum_k w_k(x_t) N(x_u; m_k(x_t), S_k)``.

    Fields: ``log_weights [*batch, K]`` (normalized), ``means [*batch, K, d]``,
    ``covs [..., K, d, d]`` (``[K, d, d]`` for 0-d times, else the time shape padded
    with singleton dims so it broadcasts against ``[*batch, K, d, d]``).
    """

    log_weights: Tensor
    means: Tensor
    covs: Tensor

    @property
    def weights(self) -> Tensor:
        """Normalized mixture weights ``[*batch, K]``."""
        return self.log_weights.exp()


# --------------------------------------------------------------------------- base class


class _ExactMixture:
    """Shared exact machinery for a mixture of ``K`` full-covariance Gaussians (K >= 1)."""

    def __init__(self, log_weights: Tensor, means: Tensor, covs: Tensor) -> None:
        lam, U = _eig_psd(covs, "covs" if self._is_mixture else "cov")
        dtype = means.dtype
        self._log_w = log_weights.to(dtype)
        self._means = means
        self._covs = 0.5 * (covs + covs.transpose(-1, -2))
        self._lam64 = lam
        self._nonsingular = bool(torch.all(lam > 0))
        self._U64 = U
        self._cache: dict[tuple[torch.dtype, torch.device], _Params] = {}

    _is_mixture = True

    # ---- parameters ------------------------------------------------------------------

    @property
    def dim(self) -> int:
        """Event dimension ``d``."""
        return int(self._means.shape[-1])

    @property
    def dtype(self) -> torch.dtype:
        return self._means.dtype

    @property
    def device(self) -> torch.device:
        return self._means.device

    def _params(self, like: Tensor) -> _Params:
        key = (like.dtype, like.device)
        p = self._cache.get(key)
        if p is None:
            kw: dict[str, Any] = {"dtype": like.dtype, "device": like.device}
            p = _Params(self._log_w.to(**kw), self._means.to(**kw), self._U64.to(**kw),
                        self._lam64.to(**kw))
            self._cache[key] = p
        return p

    def _terms(self, x: Tensor, t: Any, process: Any) -> _Terms:
        x = _check_points(x, self.dim)
        process = _get_process(process)
        tt = _time(t, x)
        alpha = _coef(process.alpha, tt, x.ndim)
        sigma = _coef(process.sigma, tt, x.ndim)
        p = self._params(x)
        z = _project(x, alpha, p.means, p.U)
        v = alpha.unsqueeze(-1) ** 2 * p.lam + sigma.unsqueeze(-1) ** 2
        log_pk = _log_pk(z, v, p.log_w, self._nonsingular)
        if log_pk.shape[-1] == 1:
            resp = torch.ones_like(log_pk)
        else:
            resp = _log_normalize(log_pk).exp()
        return _Terms(tt, alpha, sigma, z, v, log_pk, resp)

    # ---- data law --------------------------------------------------------------------

    def log_prob(self, x: Tensor) -> Tensor:
        """Data log-density ``log p_0(x) = logsumexp_k [log pi_k + log N(x; mu_k, S_k)]``:
        x ``[*batch, d]`` -> ``[*batch]``."""
        x = _check_points(x, self.dim)
        p = self._params(x)
        one = torch.ones((), dtype=x.dtype, device=x.device)
        z = _project(x, one, p.means, p.U)
        return torch.logsumexp(_log_pk(z, p.lam, p.log_w, self._nonsingular), dim=-1)

    # ---- marginals under a process ---------------------------------------------------

    def marginal_log_prob(self, x: Tensor, t: Any, process: Any) -> Tensor:
        """``log p_t(x)`` of the noised law at diffusion time ``t`` (0 = data, 1 = noise).

        x ``[*batch, d]`` -> ``[*batch]``. ``log p_t(x) = logsumexp_k [log pi_k +
        log N(x; alpha_t mu_k, alpha_t^2 S_k + sigma_t^2 I)]``.
        """
        return torch.logsumexp(self._terms(x, t, process).log_pk, dim=-1)

    def responsibilities(self, x: Tensor, t: Any, process: Any) -> Tensor:
        """Posterior component probabilities ``w_k(x) = P(k | x_t = x)``: ``[*batch, K]``."""
        return self._terms(x, t, process).resp

    def score(self, x: Tensor, t: Any, process: Any) -> Tensor:
        """Exact score ``grad_x log p_t(x) = -sum_k w_k(x) C_{t,k}^{-1} (x - alpha_t mu_k)``.

        x ``[*batch, d]``, t diffusion time (0 = data, 1 = noise) -> ``[*batch, d]``.
        """
        T = self._terms(x, t, process)
        p = self._params(T.z)
        return _mix(T.resp, -T.z / T.v, p.U)

    def _x0_eps(self, x: Tensor, t: Any, process: Any) -> tuple[Tensor, Tensor, _Terms]:
        T = self._terms(x, t, process)
        p = self._params(T.z)
        a = T.alpha.unsqueeze(-1)
        s = T.sigma.unsqueeze(-1)
        # Coefficients have the (small) shape of v, not of z.
        inv_v = _inv_or_zero(T.v)
        a_safe = torch.where(a != 0, a, torch.ones_like(a))
        # alpha d / v, and 1/alpha where v = 0 (sigma = 0 on a null direction): x0 = x/alpha.
        ratio = torch.where(T.v > 0, a * p.lam * inv_v, 1.0 / a_safe)
        x0 = T.resp @ p.means + _mix(T.resp, ratio * T.z, p.U)
        eps = _mix(T.resp, (s * inv_v) * T.z, p.U)
        return x0, eps, T

    def x0(self, x: Tensor, t: Any, process: Any) -> Tensor:
        """Exact denoiser ``E[x0 | x_t = x] = sum_k w_k [mu_k + alpha_t S_k C_{t,k}^{-1}
        (x - alpha_t mu_k)]``; equals ``x`` at ``t = 0``. ``[*batch, d] -> [*batch, d]``."""
        return self._x0_eps(x, t, process)[0]

    def eps(self, x: Tensor, t: Any, process: Any) -> Tensor:
        """Exact noise prediction ``E[eps | x_t = x] = sigma_t sum_k w_k C_{t,k}^{-1}
        (x - alpha_t mu_k) = -sigma_t * score``; 0 at ``sigma_t = 0``."""
        return self._x0_eps(x, t, process)[1]

    def velocity(self, x: Tensor, t: Any, process: Any) -> Tensor:
        """Probability-flow ODE velocity ``dx/dt = alpha_t' E[x0|x] + sigma_t' E[eps|x]``
        (time derivative in diffusion time, 0 = data, 1 = noise).

        Computed as ``alpha' E[x0|x] + (sigma sigma') sum_k w_k C_{t,k}^{-1} (x - alpha mu_k)``
        with ``sigma sigma' = g^2/2 + f sigma^2`` where ``sigma = 0``, so it stays finite at
        ``t = 0`` even when ``sigma'`` is infinite there (VP).
        """
        process = _get_process(process)
        x0, eps, T = self._x0_eps(x, t, process)
        p = self._params(x0)
        da = _coef(process.d_alpha, T.t, x0.ndim)
        ss = T.sigma * _coef(process.d_sigma, T.t, x0.ndim)
        if hasattr(process, "diffusion_sq") and hasattr(process, "drift_coef"):
            at_zero = 0.5 * _coef(process.diffusion_sq, T.t, x0.ndim) \
                + _coef(process.drift_coef, T.t, x0.ndim) * T.sigma**2
            ss = torch.where(T.sigma > 0, ss, at_zero)
        return da * x0 + ss * _mix(T.resp, _inv_or_zero(T.v) * T.z, p.U)

    def v(self, x: Tensor, t: Any, process: Any) -> Tensor:
        """v-prediction ``v = alpha_t E[eps|x] - sigma_t E[x0|x]``."""
        x0, eps, T = self._x0_eps(x, t, process)
        return T.alpha * eps - T.sigma * x0

    def predict(self, x: Tensor, t: Any, process: Any, kind: str) -> Tensor:
        """The exact prediction of ``kind`` in ``("eps", "x0", "score", "velocity", "v")``."""
        kind = _check_kind(kind)
        return getattr(self, kind)(x, t, process)

    def model(self, process: Any, kind: str = "eps") -> Any:
        """An exact ``smcdiff.diffusion.DiffusionModel`` whose net predicts ``kind``.

        The net is ``net(x, t) = self.predict(x, t, process, kind)``; it takes no
        conditioning keywords.
        """
        from smcdiff.diffusion.parametrization import DiffusionModel

        process = _get_process(process)
        kind = _check_kind(kind)

        def net(x: Tensor, t: Any, **cond: Any) -> Tensor:
            if cond:
                raise TypeError(f"exact model: unexpected conditioning {sorted(cond)}")
            return self.predict(x, t, process, kind)

        return DiffusionModel(net, process, kind)

    # ---- reverse kernels -------------------------------------------------------------

    def _reverse(self, x_t: Tensor, t: Any, u: Any, process: Any):
        """Per-component reverse kernel in eigen form: (resp, means [*b,K,d],
        cov eigenvalues [*tshape, K, d] unpadded, params)."""
        process = _get_process(process)
        x_t = _check_points(x_t, self.dim, "x_t")
        if isinstance(t, (int, float)) and isinstance(u, (int, float)) and u > t:
            raise ValueError(f"u: expected a time u <= t = {t} (cleaner), got {u}")
        T = self._terms(x_t, t, process)
        uu = _time(u, x_t, "u")
        p = self._params(x_t)
        tt, uu = _align_times(T.t, uu)
        kw: dict[str, Any] = {"dtype": x_t.dtype, "device": x_t.device}
        a_t, a_u, s_t, s_u = torch.broadcast_tensors(
            torch.as_tensor(process.alpha(tt), **kw), torch.as_tensor(process.alpha(uu), **kw),
            torch.as_tensor(process.sigma(tt), **kw), torch.as_tensor(process.sigma(uu), **kw))
        a = a_t / a_u
        tau2 = (s_t**2 - a**2 * s_u**2).clamp_min(0.0)
        tshape = a.shape
        e = lambda c: c.reshape(tshape + (1, 1))  # [*tshape, 1(K), 1(d)]
        v_u = e(a_u) ** 2 * p.lam + e(s_u) ** 2  # [*tshape, K, d]
        v_t = e(a_t) ** 2 * p.lam + e(s_t) ** 2
        vt_safe = torch.where(v_t > 0, v_t, torch.ones_like(v_t))
        gain = torch.where(v_t > 0, e(a) * v_u / vt_safe, torch.zeros_like(v_t))
        s_cov = torch.where(v_t > 0, v_u * e(tau2) / vt_safe, torch.zeros_like(v_t))
        nb = x_t.ndim - 1
        pad = lambda c: c.reshape(c.shape[:len(tshape)] + (1,) * (nb - len(tshape))
                                  + c.shape[len(tshape):])
        au_pad = a_u.reshape(tshape + (1,) * (nb - len(tshape)) + (1, 1))
        means = au_pad * p.means + _unproject(pad(gain) * T.z, p.U)
        return T.resp, means, s_cov, p, T

    def _kernel_covs(self, s_cov: Tensor, U: Tensor, nbatch: int) -> Tensor:
        covs = torch.einsum("...kj,kij,klj->...kil", s_cov, U, U)
        return _cov_shape(covs, nbatch, 3)

    def _reverse_mixture(self, x_t, t, u, process) -> MixtureKernel:
        resp, means, s_cov, p, T = self._reverse(x_t, t, u, process)
        log_w = _log_normalize(T.log_pk)
        return MixtureKernel(log_w, means, self._kernel_covs(s_cov, p.U, x_t.ndim - 1))

    def _reverse_log_prob(self, x_u, x_t, t, u, process) -> Tensor:
        x_u = _check_points(x_u, self.dim, "x_u")
        resp, means, s_cov, p, T = self._reverse(x_t, t, u, process)
        nb = x_t.ndim - 1
        s = _cov_shape(s_cov, nb, 2)
        y = torch.einsum("...ki,kij->...kj", x_u.unsqueeze(-2) - means, p.U)
        lk = -0.5 * ((y**2 / s).sum(-1) + torch.log(s).sum(-1) + self.dim * _LOG_2PI)
        log_w = _log_normalize(T.log_pk) if T.log_pk.shape[-1] > 1 else 0.0
        return torch.logsumexp(log_w + lk, dim=-1)

    def sample_reverse(self, x_t: Tensor, t: Any, u: Any, process: Any,
                       generator: torch.Generator | None = None) -> Tensor:
        """Draw ``x_u ~ p(x_u | x_t)`` exactly, for a cleaner time ``u <= t``.

        x_t ``[*batch, d]`` -> ``[*batch, d]``; ``t``, ``u`` diffusion times (0 = data,
        1 = noise). For a mixture, the component is drawn from the time-``t``
        responsibilities first (one uniform per point), then the Gaussian noise.
        """
        resp, means, s_cov, p, T = self._reverse(x_t, t, u, process)
        nb = x_t.ndim - 1
        s = _cov_shape(s_cov, nb, 2)
        K = means.shape[-2]
        shape = x_t.shape[:-1]
        if K > 1:
            uni = torch.rand(shape, generator=generator, dtype=x_t.dtype, device=x_t.device)
            k = _sample_index(T.log_pk, uni)
        eps = torch.randn(x_t.shape, generator=generator, dtype=x_t.dtype, device=x_t.device)
        noise = _unproject(torch.sqrt(s) * eps.unsqueeze(-2), p.U)  # [*b, K, d]
        draws = means + noise
        if K == 1:
            return draws.squeeze(-2)
        idx = k.unsqueeze(-1).unsqueeze(-1).expand(*shape, 1, self.dim)
        return torch.take_along_dim(draws, idx, dim=-2).squeeze(-2)


# --------------------------------------------------------------------------- Gaussian


class Gaussian(_ExactMixture):
    """Gaussian data ``x0 ~ N(mean, cov)`` with exact quantities under any process.

    mean ``[d]``, cov ``[d, d]`` symmetric positive semi-definite (a singular covariance
    is allowed: its density and score are infinite off the support at ``t = 0``).
    Formulas: module docstring; Wang & Vastola (2023), arXiv 2311.10892.
    """

    _is_mixture = False

    def __init__(self, mean: Tensor, cov: Tensor) -> None:
        mean = torch.as_tensor(mean)
        cov = torch.as_tensor(cov)
        if not mean.is_floating_point():
            mean = mean.to(torch.get_default_dtype())
        if mean.ndim != 1:
            raise ValueError(f"mean: expected shape [d], got {tuple(mean.shape)}")
        d = mean.shape[0]
        if cov.shape != (d, d):
            raise ValueError(f"cov: expected shape [{d}, {d}], got {tuple(cov.shape)}")
        if not torch.all(torch.isfinite(mean)) or not torch.all(torch.isfinite(cov)):
            raise ValueError("mean, cov: expected finite values")
        cov = cov.to(dtype=mean.dtype, device=mean.device)
        log_w = torch.zeros(1, dtype=mean.dtype, device=mean.device)
        super().__init__(log_w, mean.unsqueeze(0), cov.unsqueeze(0))

    @classmethod
    def from_samples(cls, x: Tensor, correction: int = 1) -> Gaussian:
        """The Gaussian with the sample mean and covariance of ``x [n, d]``
        (covariance divided by ``n - correction``; ``correction=1`` is unbiased)."""
        if not isinstance(x, Tensor) or x.ndim != 2:
            raise ValueError("x: expected a tensor of samples with shape [n, d]")
        n = x.shape[0]
        if n - correction < 1:
            raise ValueError(f"x: need more than {correction} samples, got n = {n}")
        m = x.mean(0)
        xc = x - m
        return cls(m, xc.T @ xc / (n - correction))

    @property
    def mean(self) -> Tensor:
        """Mean ``[d]``."""
        return self._means[0]

    @property
    def cov(self) -> Tensor:
        """Covariance ``[d, d]``."""
        return self._covs[0]

    @property
    def eigvals(self) -> Tensor:
        """Covariance eigenvalues ``d_k`` (ascending) ``[d]``."""
        return self._lam64[0].to(self.dtype)

    @property
    def eigvecs(self) -> Tensor:
        """Covariance eigenvectors ``u_k`` as columns ``[d, d]``."""
        return self._U64[0].to(self.dtype)

    def __repr__(self) -> str:
        return f"Gaussian(dim={self.dim}, dtype={self.dtype})"

    def sample(self, n: int | tuple[int, ...], generator: torch.Generator | None = None) -> Tensor:
        """Draw ``x0 ~ N(mean, cov)``: shape ``[n, d]`` (or ``[*n, d]`` for a tuple)."""
        shape = (n,) if isinstance(n, int) else tuple(n)
        p = self._params(self._means)
        eps = torch.randn(shape + (self.dim,), generator=generator, dtype=self.dtype,
                          device=self.device)
        return p.means[0] + (eps * p.lam[0].sqrt()) @ p.U[0].T

    def marginal(self, t: float | Tensor, process: Any) -> Gaussian:
        """The noised law ``p_t = N(alpha_t mean, alpha_t^2 cov + sigma_t^2 I)`` at one time."""
        process = _get_process(process)
        tt = _time(t, self._means[0, :0], "t")  # a 0-d time
        a = torch.as_tensor(process.alpha(tt), dtype=self.dtype)
        s = torch.as_tensor(process.sigma(tt), dtype=self.dtype)
        eye = torch.eye(self.dim, dtype=self.dtype, device=self.device)
        return Gaussian(a * self.mean, a**2 * self.cov + s**2 * eye)

    def pf_ode_solution(self, x_s: Tensor, s: Any, t: Any, process: Any) -> Tensor:
        """Exact probability-flow-ODE map from time ``s`` to time ``t`` (either direction).

        ``x_t = alpha_t mu + sum_k sqrt(v_k(t) / v_k(s)) u_k u_k^T (x_s - alpha_s mu)``,
        ``v_k = alpha^2 d_k + sigma^2`` (Wang & Vastola 2023, arXiv 2311.10892): each
        eigen-coordinate obeys ``d log sqrt(v_k) / dt = f + g^2 / (2 v_k)``. Valid for any
        process and for ``t = 0``; needs ``v_k(s) > 0`` (``s > 0`` or a nonsingular cov).
        x_s ``[*batch, d]`` -> ``[*batch, d]``; ``s``, ``t`` diffusion times (0 = data).
        """
        process = _get_process(process)
        x_s = _check_points(x_s, self.dim, "x_s")
        ss = _time(s, x_s, "s")
        tt = _time(t, x_s, "t")
        p = self._params(x_s)
        a_s = _coef(process.alpha, ss, x_s.ndim)
        a_t = _coef(process.alpha, tt, x_s.ndim)
        v_s = a_s**2 * p.lam[0] + _coef(process.sigma, ss, x_s.ndim) ** 2
        v_t = a_t**2 * p.lam[0] + _coef(process.sigma, tt, x_s.ndim) ** 2
        z = (x_s - a_s * p.means[0]) @ p.U[0]
        return a_t * p.means[0] + (torch.sqrt(v_t / v_s) * z) @ p.U[0].T

    def reverse_kernel(self, x_t: Tensor, t: Any, u: Any, process: Any) -> tuple[Tensor, Tensor]:
        """Exact reverse transition ``p(x_u | x_t) = N(mean, cov)`` for a cleaner ``u <= t``.

        With ``a = alpha_t / alpha_u``, ``tau^2 = sigma_t^2 - a^2 sigma_u^2`` (forward
        kernel ``N(a x_u, tau^2 I)``): ``cov = (C_u^{-1} + a^2/tau^2 I)^{-1} =
        sum_k (v_k(u) tau^2 / v_k(t)) u_k u_k^T``, ``mean = cov (C_u^{-1} alpha_u mu +
        a x_t / tau^2) = alpha_u mu + sum_k (a v_k(u)/v_k(t)) u_k u_k^T (x_t - alpha_t mu)``.
        x_t ``[*batch, d]`` -> mean ``[*batch, d]``, cov ``[d, d]`` for 0-d times, else the
        times' shape padded with singleton dims + ``[d, d]`` (broadcasts against
        ``[*batch, d, d]``). Needs ``alpha_u > 0``; ``u = t`` gives the point mass at x_t.
        """
        resp, means, s_cov, p, T = self._reverse(x_t, t, u, process)
        covs = self._kernel_covs(s_cov, p.U, x_t.ndim - 1)
        return means.squeeze(-2), covs.squeeze(-3)

    def reverse_log_prob(self, x_u: Tensor, x_t: Tensor, t: Any, u: Any, process: Any) -> Tensor:
        """``log p(x_u | x_t)`` of the exact reverse kernel: ``[*batch]``."""
        return self._reverse_log_prob(x_u, x_t, t, u, process)


# --------------------------------------------------------------------------- mixture


class GaussianMixture(_ExactMixture):
    """Gaussian-mixture data ``x0 ~ sum_k pi_k N(mu_k, S_k)`` with exact quantities under
    any process (responsibilities by log-sum-exp; formulas in the module docstring).

    weights ``[K]`` nonnegative with a positive sum (normalized here), means ``[K, d]``,
    covs ``[K, d, d]`` symmetric positive semi-definite. ``from_log_weights`` takes
    (unnormalized) log-weights instead, which keeps tiny weights exact.
    """

    def __init__(self, weights: Tensor, means: Tensor, covs: Tensor) -> None:
        weights = torch.as_tensor(weights)
        if not weights.is_floating_point():
            weights = weights.to(torch.get_default_dtype())
        if weights.ndim != 1:
            raise ValueError(f"weights: expected shape [K], got {tuple(weights.shape)}")
        if not torch.all(weights >= 0) or not torch.isfinite(weights).all() \
                or not weights.sum() > 0:
            raise ValueError("weights: expected finite nonnegative weights with a positive sum")
        self._setup(torch.log(weights), means, covs)

    @classmethod
    def from_log_weights(cls, log_weights: Tensor, means: Tensor, covs: Tensor) -> GaussianMixture:
        """A mixture from (unnormalized) log-weights ``[K]``."""
        log_weights = torch.as_tensor(log_weights)
        if log_weights.ndim != 1:
            raise ValueError(f"log_weights: expected shape [K], got {tuple(log_weights.shape)}")
        if torch.isnan(log_weights).any() or not (log_weights < math.inf).all() \
                or not (log_weights > -math.inf).any():
            raise ValueError("log_weights: expected values in [-inf, inf) with one finite")
        obj = cls.__new__(cls)
        obj._setup(log_weights, means, covs)
        return obj

    def _setup(self, log_weights: Tensor, means: Tensor, covs: Tensor) -> None:
        means = torch.as_tensor(means)
        covs = torch.as_tensor(covs)
        if not means.is_floating_point():
            means = means.to(torch.get_default_dtype())
        K = log_weights.shape[0]
        if means.ndim != 2 or means.shape[0] != K:
            raise ValueError(f"means: expected shape [K={K}, d], got {tuple(means.shape)}")
        d = means.shape[1]
        if covs.shape != (K, d, d):
            raise ValueError(f"covs: expected shape [{K}, {d}, {d}], got {tuple(covs.shape)}")
        if not torch.isfinite(means).all() or not torch.isfinite(covs).all():
            raise ValueError("means, covs: expected finite values")
        covs = covs.to(dtype=means.dtype, device=means.device)
        log_weights = log_weights.to(dtype=means.dtype, device=means.device)
        super().__init__(_log_normalize(log_weights), means, covs)

    @property
    def num_components(self) -> int:
        return int(self._means.shape[0])

    @property
    def log_weights(self) -> Tensor:
        """Normalized log mixture weights ``[K]``."""
        return self._log_w

    @property
    def weights(self) -> Tensor:
        """Mixture weights ``[K]``."""
        return self._log_w.exp()

    @property
    def means(self) -> Tensor:
        """Component means ``[K, d]``."""
        return self._means

    @property
    def covs(self) -> Tensor:
        """Component covariances ``[K, d, d]``."""
        return self._covs

    @property
    def mean(self) -> Tensor:
        """Mixture mean ``sum_k pi_k mu_k`` ``[d]``."""
        return self.weights @ self._means

    @property
    def cov(self) -> Tensor:
        """Mixture covariance ``sum_k pi_k (S_k + mu_k mu_k^T) - mean mean^T`` ``[d, d]``."""
        w = self.weights
        m = self.mean
        second = torch.einsum("k,kij->ij", w, self._covs) \
            + torch.einsum("k,ki,kj->ij", w, self._means, self._means)
        return second - torch.outer(m, m)

    def component(self, k: int) -> Gaussian:
        """Component ``k`` as a :class:`Gaussian`."""
        return Gaussian(self._means[k], self._covs[k])

    def __repr__(self) -> str:
        return f"GaussianMixture(K={self.num_components}, dim={self.dim}, dtype={self.dtype})"

    def sample(self, n: int | tuple[int, ...], generator: torch.Generator | None = None) -> Tensor:
        """Draw ``x0`` from the mixture: shape ``[n, d]`` (or ``[*n, d]``). The component
        of each draw comes from one uniform (inverse cdf), then Gaussian noise."""
        shape = (n,) if isinstance(n, int) else tuple(n)
        p = self._params(self._means)
        uni = torch.rand(shape, generator=generator, dtype=self.dtype, device=self.device)
        k = _sample_index(p.log_w.expand(*shape, -1), uni)
        eps = torch.randn(shape + (self.dim,), generator=generator, dtype=self.dtype,
                          device=self.device)
        means = p.means[k]  # [*n, d]
        # Noise for every component, then keep the drawn one (no per-draw d x d gather).
        noise = torch.einsum("...j,kj,kij->...ki", eps, p.lam.sqrt(), p.U)  # [*n, K, d]
        idx = k.unsqueeze(-1).unsqueeze(-1).expand(*shape, 1, self.dim)
        return means + torch.take_along_dim(noise, idx, dim=-2).squeeze(-2)

    def marginal(self, t: float | Tensor, process: Any) -> GaussianMixture:
        """The noised mixture ``p_t = sum_k pi_k N(alpha_t mu_k, alpha_t^2 S_k + sigma_t^2 I)``."""
        process = _get_process(process)
        tt = _time(t, self._means[0, :0], "t")
        a = torch.as_tensor(process.alpha(tt), dtype=self.dtype)
        s = torch.as_tensor(process.sigma(tt), dtype=self.dtype)
        eye = torch.eye(self.dim, dtype=self.dtype, device=self.device)
        return GaussianMixture.from_log_weights(self._log_w, a * self._means,
                                                a**2 * self._covs + s**2 * eye)

    def reverse_kernel(self, x_t: Tensor, t: Any, u: Any, process: Any) -> MixtureKernel:
        """Exact reverse transition ``p(x_u | x_t)`` for a cleaner ``u <= t``: a mixture
        with weights ``w_k(x_t)`` (time-``t`` responsibilities) of the per-component
        Gaussian reverse kernels (see :meth:`Gaussian.reverse_kernel`).
        Returns :class:`MixtureKernel` ``(log_weights [*batch, K], means [*batch, K, d],
        covs [..., K, d, d])``."""
        return self._reverse_mixture(x_t, t, u, process)

    def reverse_log_prob(self, x_u: Tensor, x_t: Tensor, t: Any, u: Any, process: Any) -> Tensor:
        """``log p(x_u | x_t)`` of the exact reverse kernel: ``[*batch]``."""
        return self._reverse_log_prob(x_u, x_t, t, u, process)
