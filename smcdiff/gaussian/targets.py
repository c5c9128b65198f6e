"""Closed-form tilted targets of Gaussian and Gaussian-mixture laws, with exact log Z.

Every function takes one or more laws (:class:`~smcdiff.gaussian.Gaussian` or
:class:`~smcdiff.gaussian.GaussianMixture`), forms an *unnormalized* target density
``p~(x)`` and returns ``TiltedTarget(distribution, log_z)``: the normalized law
``p~ / Z`` and ``log Z = log int p~(x) dx`` (a 0-d tensor). These are the exact references
for annealing, products of experts, classifier-free guidance and reward tilting in
Feynman-Kac correctors and SMC steering (Skreta et al. 2025, arXiv 2503.02819; Singhal et
al. 2025, arXiv 2501.06848; notes ``feynman-kac-correctors.md`` section 8). To get the
target at diffusion time ``t``, tilt the noised laws ``dist.marginal(t, process)``.

The common building block is a product of real powers of Gaussian densities
``prod_i N(x; mu_i, C_i)^{beta_i}``: with precisions ``P = sum_i beta_i C_i^{-1}``
(positive definite) and ``h = sum_i beta_i C_i^{-1} mu_i`` it equals
``c N(x; P^{-1} h, P^{-1})`` with

    log c = sum_i beta_i [-1/2 log|2 pi C_i| - 1/2 mu_i^T C_i^{-1} mu_i]
            + 1/2 h^T P^{-1} h + 1/2 log|2 pi P^{-1}|.

Mixtures expand into sums of such products (one per combination of components), so
products and integer powers of mixtures are mixtures again, with weights
``prod pi * (multinomial coefficient) * c`` normalized by their sum ``Z``.
Densities of the inputs must have nonsingular covariances (except the reward tilts).
Everything is computed in float64 and returned in the inputs' dtype.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from smcdiff.gaussian.distributions import Gaussian, GaussianMixture

__all__ = [
    "TiltedTarget",
    "cfg",
    "geometric",
    "linear_gaussian_tilt",
    "linear_tilt",
    "power",
    "product",
]

_LOG_2PI = math.log(2.0 * math.pi)
_MAX_COMPONENTS = 200_000

Law = Gaussian | GaussianMixture


class TiltedTarget(NamedTuple):
    """A normalized tilted law and the log normalizing constant of the unnormalized target.

    ``distribution``: :class:`Gaussian` or :class:`GaussianMixture` equal to ``p~ / Z``;
    ``log_z``: ``log Z = log int p~(x) dx``, a 0-d tensor.
    """

    distribution: Gaussian | GaussianMixture
    log_z: Tensor


# --------------------------------------------------------------------------- helpers


class _Atoms(NamedTuple):
    """Gaussian components in natural form, float64: precision ``L [A, d, d]``,
    ``eta = L mu [A, d]``, ``c = -1/2 log|2 pi C| - 1/2 mu^T L mu [A]``, ``log_pi [A]``."""

    L: Tensor
    eta: Tensor
    c: Tensor
    log_pi: Tensor


def _check_law(dist: object, name: str) -> Law:
    if not isinstance(dist, (Gaussian, GaussianMixture)):
        raise TypeError(f"{name}: expected a Gaussian or GaussianMixture, got "
                        f"{type(dist).__name__}")
    return dist


def _atoms(dist: Law, name: str) -> _Atoms:
    lam, U = dist._lam64, dist._U64  # [K, d], [K, d, d] float64
    if not torch.all(lam > 0):
        raise ValueError(f"{name}: needs nonsingular covariances (an eigenvalue is 0)")
    means = dist._means.to(torch.float64)
    L = torch.einsum("kij,kj,klj->kil", U, 1.0 / lam, U)
    eta = torch.einsum("kij,kj->ki", L, means)
    d = means.shape[-1]
    c = -0.5 * (d * _LOG_2PI + torch.log(lam).sum(-1)) - 0.5 * (means * eta).sum(-1)
    return _Atoms(L, eta, c, dist._log_w.to(torch.float64))


def _combine(atoms: _Atoms, B: Tensor, log_mult: Tensor, what: str):
    """Products ``prod_a N_a^{B[m, a]}`` for each row m: (log weight [M], means, covs)."""
    P = torch.einsum("ma,aij->mij", B, atoms.L)
    P = 0.5 * (P + P.transpose(-1, -2))
    h = B @ atoms.eta
    chol, info = torch.linalg.cholesky_ex(P)
    if torch.any(info > 0):
        m = int(torch.nonzero(info > 0)[0, 0])
        ev = torch.linalg.eigvalsh(P[m]).min().item()
        raise ValueError(
            f"{what}: the combined precision sum_i beta_i C_i^-1 is not positive definite "
            f"(smallest eigenvalue {ev:.3e}), so the target is not normalizable"
        )
    cov = torch.cholesky_inverse(chol)
    cov = 0.5 * (cov + cov.transpose(-1, -2))
    mean = (cov @ h.unsqueeze(-1)).squeeze(-1)
    d = h.shape[-1]
    logdet_P = 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
    log_c = B @ atoms.c + 0.5 * (h * mean).sum(-1) + 0.5 * (d * _LOG_2PI - logdet_P)
    return B @ atoms.log_pi + log_mult + log_c, mean, cov


def _result(log_w: Tensor, means: Tensor, covs: Tensor, like: Law, gaussian: bool) -> TiltedTarget:
    log_z = torch.logsumexp(log_w, dim=0)
    kw: dict[str, Any] = {"dtype": like.dtype, "device": like.device}
    if gaussian:
        return TiltedTarget(Gaussian(means[0].to(**kw), covs[0].to(**kw)), log_z.to(**kw))
    dist = GaussianMixture.from_log_weights((log_w - log_z).to(**kw), means.to(**kw),
                                            covs.to(**kw))
    return TiltedTarget(dist, log_z.to(**kw))


def _same_dim(dists: Sequence[Law], name: str) -> int:
    d = dists[0].dim
    for i, q in enumerate(dists):
        if q.dim != d:
            raise ValueError(f"{name}[{i}]: dimension {q.dim} differs from {d}")
    return d


# --------------------------------------------------------------------------- products, powers


def product(*factors: Law) -> TiltedTarget:
    """Product of densities ``p~(x) = prod_i p_i(x)`` (product of experts).

    Gaussians give a Gaussian: precision ``P = sum_i C_i^{-1}``, mean
    ``P^{-1} sum_i C_i^{-1} mu_i``, ``log Z`` from the module formula (all ``beta_i = 1``).
    Mixtures give a mixture over all combinations ``(k_1, ..., k_m)`` of components
    (``prod_i K_i`` of them, each the normalized product of the chosen Gaussians), with
    weights ``prod_i pi_{i,k_i} c_{k_1...k_m} / Z`` and ``Z = sum_combinations
    prod_i pi_{i,k_i} c_{k_1...k_m}``.
    """
    if not factors:
        raise ValueError("factors: expected at least one Gaussian / GaussianMixture")
    for i, f in enumerate(factors):
        _check_law(f, f"factors[{i}]")
    _same_dim(factors, "factors")
    parts = [_atoms(f, f"factors[{i}]") for i, f in enumerate(factors)]
    sizes = [p.L.shape[0] for p in parts]
    M = math.prod(sizes)
    if M > _MAX_COMPONENTS:
        raise ValueError(f"factors: the product has {M} components (limit {_MAX_COMPONENTS})")
    atoms = _Atoms(*(torch.cat([getattr(p, f) for p in parts]) for f in _Atoms._fields))
    grids = torch.meshgrid(*(torch.arange(k) for k in sizes), indexing="ij")
    offsets = torch.tensor([0, *itertools.accumulate(sizes)][:-1])
    cols = torch.stack([g.reshape(-1) for g in grids], dim=-1) + offsets  # [M, m]
    dev = atoms.L.device
    B = torch.zeros(M, atoms.L.shape[0], dtype=torch.float64, device=dev)
    B.scatter_(1, cols.to(dev), 1.0)
    log_w, means, covs = _combine(atoms, B, torch.zeros(M, dtype=torch.float64, device=dev),
                                  "product")
    all_gauss = all(isinstance(f, Gaussian) for f in factors)
    return _result(log_w, means, covs, factors[0], all_gauss)


def power(dist: Law, beta: float) -> TiltedTarget:
    """Power ``p~(x) = p(x)^beta`` (annealing / tempering).

    * Gaussian, any real ``beta > 0``: ``N(mu, Sigma / beta)`` and
      ``int N(x; mu, Sigma)^beta dx = (2 pi)^{d(1-beta)/2} det(Sigma)^{(1-beta)/2}
      beta^{-d/2}``.
    * Mixture, integer ``beta = n >= 1``: multinomial expansion
      ``(sum_k pi_k N_k)^n = sum_{n_1+...+n_K = n} n!/(prod n_k!) prod_k pi_k^{n_k}
      prod_k N_k^{n_k}``; each term is a Gaussian times the module's constant ``c``, so
      the result is a mixture of ``C(n + K - 1, K - 1)`` components and ``Z`` is the sum of
      the term constants. Non-integer powers of a mixture with ``K > 1`` have no closed
      form (``ValueError``).
    """
    _check_law(dist, "dist")
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta) \
            or beta <= 0:
        raise ValueError(f"beta: expected a finite number > 0, got {beta!r}")
    atoms = _atoms(dist, "dist")
    K = atoms.L.shape[0]
    kw: dict[str, Any] = {"dtype": torch.float64, "device": atoms.L.device}
    if K == 1:
        B = torch.full((1, 1), float(beta), **kw)
        log_mult = torch.zeros(1, **kw)
    else:
        if float(beta) != int(beta):
            raise ValueError(
                f"beta: a mixture with K = {K} components has a closed-form power only for "
                f"integer beta, got {beta}"
            )
        n = int(beta)
        M = math.comb(n + K - 1, K - 1)
        if M > _MAX_COMPONENTS:
            raise ValueError(f"beta: p^{n} has {M} components (limit {_MAX_COMPONENTS})")
        combos = torch.tensor(list(itertools.combinations_with_replacement(range(K), n)),
                              device=atoms.L.device)
        B = torch.zeros(M, K, **kw)
        B.scatter_add_(1, combos, torch.ones(combos.shape, **kw))
        log_mult = math.lgamma(n + 1) - torch.lgamma(B + 1).sum(-1)
    log_w, means, covs = _combine(atoms, B, log_mult, "power")
    return _result(log_w, means, covs, dist, isinstance(dist, Gaussian))


def geometric(gaussians: Sequence[Gaussian], betas: Sequence[float]) -> TiltedTarget:
    """Geometric mixture ``p~(x) = prod_i N(x; mu_i, C_i)^{beta_i}`` with real ``beta_i``
    (any sign), a Gaussian whenever ``P = sum_i beta_i C_i^{-1}`` is positive definite.

    Result ``N(P^{-1} h, P^{-1})``, ``h = sum_i beta_i C_i^{-1} mu_i``; ``log Z`` is the
    module's ``log c``. Raises ``ValueError`` if ``P`` is not positive definite (the
    target is then not normalizable). Covers annealing, products and CFG at any time
    (pass noised laws ``g.marginal(t, process)``).
    """
    gaussians = list(gaussians)
    if not gaussians:
        raise ValueError("gaussians: expected at least one Gaussian")
    for i, g in enumerate(gaussians):
        if not isinstance(g, Gaussian):
            raise TypeError(f"gaussians[{i}]: expected a Gaussian, got {type(g).__name__}")
    betas = [float(b) for b in betas]
    if len(betas) != len(gaussians):
        raise ValueError(f"betas: expected {len(gaussians)} exponents, got {len(betas)}")
    if not all(math.isfinite(b) for b in betas):
        raise ValueError(f"betas: expected finite exponents, got {betas}")
    _same_dim(gaussians, "gaussians")
    parts = [_atoms(g, f"gaussians[{i}]") for i, g in enumerate(gaussians)]
    atoms = _Atoms(*(torch.cat([getattr(p, f) for p in parts]) for f in _Atoms._fields))
    kw: dict[str, Any] = {"dtype": torch.float64, "device": atoms.L.device}
    B = torch.tensor([betas], **kw)
    log_w, means, covs = _combine(atoms, B, torch.zeros(1, **kw),
                                  f"geometric(betas={betas})")
    return _result(log_w, means, covs, gaussians[0], True)


def cfg(unconditional: Gaussian, conditional: Gaussian, w: float) -> TiltedTarget:
    """Classifier-free-guidance target ``p~(x) = q_u(x)^{1-w} q_c(x)^w`` of two Gaussians.

    Any real guidance weight ``w`` (``w > 1`` extrapolates): precision
    ``P = (1-w) C_u^{-1} + w C_c^{-1}``, mean ``P^{-1}((1-w) C_u^{-1} mu_u + w C_c^{-1} mu_c)``,
    ``log Z`` from :func:`geometric`. Raises ``ValueError`` when ``P`` is not positive
    definite (e.g. ``w > 1`` with a conditional variance larger than the unconditional one
    in some direction). Skreta et al. 2025 (arXiv 2503.02819), Prop. 3.1.
    """
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
        raise ValueError(f"w: expected a finite guidance weight, got {w!r}")
    for name, g in (("unconditional", unconditional), ("conditional", conditional)):
        if not isinstance(g, Gaussian):
            raise TypeError(f"{name}: expected a Gaussian, got {type(g).__name__}")
    try:
        return geometric([unconditional, conditional], [1.0 - w, float(w)])
    except ValueError as err:
        raise ValueError(
            f"cfg: guidance weight w = {w} gives a non-positive-definite precision "
            f"(1-w) C_u^-1 + w C_c^-1; q_u^(1-w) q_c^w is not normalizable ({err})"
        ) from None


# --------------------------------------------------------------------------- reward tilts


def linear_tilt(dist: Law, a: Tensor, lam: float = 1.0) -> TiltedTarget:
    """Exponential tilt by a linear reward: ``p~(x) = p(x) exp(a^T x / lam)``, ``lam > 0``.

    A Gaussian ``N(mu, S)`` becomes ``N(mu + S a / lam, S)`` with
    ``log Z = a^T mu / lam + a^T S a / (2 lam^2)`` (the Gaussian moment generating
    function). A mixture tilts every component and reweights it by its own ``Z_k``:
    ``pi_k' = pi_k Z_k / Z``, ``Z = sum_k pi_k Z_k``. Singular covariances are fine.
    """
    _check_law(dist, "dist")
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam) \
            or lam <= 0:
        raise ValueError(f"lam: expected a finite temperature > 0, got {lam!r}")
    a64 = torch.as_tensor(a, dtype=torch.float64, device=dist.device)
    if a64.shape != (dist.dim,):
        raise ValueError(f"a: expected shape [{dist.dim}], got {tuple(a64.shape)}")
    b = a64 / lam
    means = dist._means.to(torch.float64)
    covs = dist._covs.to(torch.float64)
    Sb = covs @ b  # [K, d]
    log_w = dist._log_w.to(torch.float64) + means @ b + 0.5 * (Sb @ b)
    return _result(log_w, means + Sb, covs, dist, isinstance(dist, Gaussian))


def linear_gaussian_tilt(dist: Law, A: Tensor, y: Tensor, s: float) -> TiltedTarget:
    """Tilt by a linear-Gaussian reward: ``p~(x) = p(x) exp(-|A x - y|^2 / (2 s^2))``.

    A ``[m, d]`` (or ``[d]`` for m = 1), y ``[m]`` (or a scalar), noise scale ``s > 0``.
    Per Gaussian component ``N(mu, S)``, with ``G = A S A^T + s^2 I``, ``r = y - A mu``,
    ``K = S A^T G^{-1}`` (the Kalman update): the tilted law is ``N(mu + K r,
    (I - K A) S (I - K A)^T + s^2 K K^T)`` and
    ``Z = (2 pi s^2)^{m/2} N(y; A mu, G)``, i.e.
    ``log Z = (m/2) log s^2 - 1/2 log|G| - 1/2 r^T G^{-1} r``. A mixture reweights its
    components by these ``Z_k`` (as in :func:`linear_tilt`). Singular covariances are fine.
    """
    _check_law(dist, "dist")
    if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) or s <= 0:
        raise ValueError(f"s: expected a finite noise scale > 0, got {s!r}")
    d = dist.dim
    A64 = torch.as_tensor(A, dtype=torch.float64, device=dist.device)
    if A64.ndim == 1:
        A64 = A64.unsqueeze(0)
    if A64.ndim != 2 or A64.shape[1] != d:
        raise ValueError(f"A: expected shape [m, {d}] or [{d}], got {tuple(A64.shape)}")
    m = A64.shape[0]
    y64 = torch.as_tensor(y, dtype=torch.float64, device=dist.device).reshape(-1)
    if y64.shape != (m,):
        raise ValueError(f"y: expected shape [{m}], got {tuple(torch.as_tensor(y).shape)}")
    means = dist._means.to(torch.float64)  # [K, d]
    covs = dist._covs.to(torch.float64)  # [K, d, d]
    SAt = covs @ A64.T  # [K, d, m]
    G = A64 @ SAt + s**2 * torch.eye(m, dtype=torch.float64, device=dist.device)
    G = 0.5 * (G + G.transpose(-1, -2))
    chol = torch.linalg.cholesky(G)
    r = y64 - means @ A64.T  # [K, m]
    Kt = torch.cholesky_solve(SAt.transpose(-1, -2), chol)  # G^{-1} A S = K^T  [K, m, d]
    Kg = Kt.transpose(-1, -2)  # [K, d, m]
    new_means = means + (Kg @ r.unsqueeze(-1)).squeeze(-1)
    I_KA = torch.eye(d, dtype=torch.float64, device=dist.device) - Kg @ A64
    new_covs = I_KA @ covs @ I_KA.transpose(-1, -2) + s**2 * Kg @ Kt
    new_covs = 0.5 * (new_covs + new_covs.transpose(-1, -2))
    Ginv_r = torch.cholesky_solve(r.unsqueeze(-1), chol).squeeze(-1)
    logdet_G = 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
    log_zk = m * math.log(s) - 0.5 * logdet_G - 0.5 * (r * Ginv_r).sum(-1)
    log_w = dist._log_w.to(torch.float64) + log_zk
    return _result(log_w, new_means, new_covs, dist, isinstance(dist, Gaussian))
