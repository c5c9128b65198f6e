"""The linear Gaussian state-space model and its locally optimal proposal.

    X_0 ~ N(m0, P0),   X_t = A X_{t-1} + U_t,  U_t ~ N(0, Q),
    Y_t = C X_t + V_t,  V_t ~ N(0, R),          t = 0 .. T-1

(Kalman 1960). Its likelihood, filtering and smoothing laws are exact
(:mod:`smcdiff.ssm.kalman`), which makes it the reference model of every particle filter
and smoother test. ``t`` is the integer observation index, not a diffusion time.
"""

from __future__ import annotations

import math

import torch
from torch import distributions as D

from smcdiff.core.constants import scalar_tensor
from smcdiff.core.random import standard_normal
from smcdiff.ssm.model import BootstrapFK, GuidedFK, StateSpaceModel

_LOG_2PI = math.log(2 * math.pi)


def scalar_params(args: dict, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """Scalar parameters (floats or 0-dim tensors) as tensors of one dtype and device.

    ``dtype`` applies to every argument; by default it is that of the first tensor argument,
    else float64. Tensors keep their autograd graph (``.to`` is differentiable). ``None``
    values are dropped.
    """
    tensors = [v for v in args.values() if isinstance(v, torch.Tensor)]
    if dtype is None:
        dtype = tensors[0].dtype if tensors else torch.float64
    device = tensors[0].device if tensors else torch.device("cpu")
    out = {}
    for name, v in args.items():
        if v is None:
            continue
        if isinstance(v, torch.Tensor):
            if not v.is_floating_point():
                raise TypeError(f"{name} must be a floating-point tensor, got dtype {v.dtype}")
            v = v.to(dtype)
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            v = torch.tensor(float(v), dtype=dtype, device=device)
        else:
            raise TypeError(f"{name} must be a float or a tensor, got {type(v).__name__}")
        if v.dim() != 0:
            raise ValueError(f"{name} must be a scalar (float or 0-dim tensor), got shape "
                             f"{tuple(v.shape)}")
        if v.device != device:
            raise ValueError(f"{name} is on {v.device}, the other parameters on {device}")
        out[name] = v
    return out


def _is_diagonal(M: torch.Tensor) -> bool:
    return bool((M.detach() == torch.diag_embed(torch.diagonal(M.detach()))).all())


def _sym(M: torch.Tensor) -> torch.Tensor:
    return 0.5 * (M + M.mT)


def gaussian(loc: torch.Tensor, cov: torch.Tensor, diagonal: bool = False) -> D.Distribution:
    """``N(loc, cov)`` with event shape ``[d]``: ``Independent(Normal)`` when ``cov`` is
    diagonal (faster, same density), else ``MultivariateNormal`` with a Cholesky factor.

    ``loc: [*lead, d]``, ``cov: [d, d]``. Arguments are not validated (no host sync).
    """
    if diagonal:
        scale = torch.diagonal(cov, dim1=-2, dim2=-1).sqrt()
        return D.Independent(D.Normal(loc, scale, validate_args=False), 1, validate_args=False)
    return D.MultivariateNormal(loc, scale_tril=torch.linalg.cholesky(cov), validate_args=False)


def posterior_gain(P: torch.Tensor, C: torch.Tensor, R: torch.Tensor):
    """Gain and posterior covariance of ``x ~ N(m, P)`` observed as ``y = C x + N(0, R)``.

    ``S = C P C^T + R``, ``K = P C^T S^{-1}`` (by a Cholesky solve) and the Joseph form
    ``P_post = (I - K C) P (I - K C)^T + K R K^T`` (Bucy & Joseph 1968), symmetrised.

    Returns:
        ``(K [.., d, dy], P_post [.., d, d], S [.., dy, dy], chol(S))``.
    """
    if P.shape[-1] == 1 and C.shape[-2] == 1:  # scalar case: plain arithmetic, no LAPACK
        S = C * P * C + R
        K = P * C / S
        IKC = 1 - K * C
        return K, IKC * P * IKC + K * R * K, S, S.sqrt()
    S = _sym(C @ P @ C.mT + R)
    L = torch.linalg.cholesky(S)
    K = torch.cholesky_solve(C @ P, L).mT  # S is symmetric: K^T = S^{-1} C P
    eye = torch.eye(P.shape[-1], dtype=P.dtype, device=P.device)
    IKC = eye - K @ C
    P_post = _sym(IKC @ P @ IKC.mT + K @ R @ K.mT)
    return K, P_post, S, L


class LinearGaussian(StateSpaceModel):
    """Linear Gaussian state-space model (Kalman 1960).

        X_0 ~ N(m0, P0),  X_t | X_{t-1} = x ~ N(A x, Q),  Y_t | X_t = x ~ N(C x, R).

    Args:
        A: ``[d, d]`` transition matrix.
        C: ``[dy, d]`` observation matrix.
        Q: ``[d, d]`` transition noise covariance (positive definite).
        R: ``[dy, dy]`` observation noise covariance (positive definite).
        m0: ``[d]`` mean of ``X_0``.
        P0: ``[d, d]`` covariance of ``X_0`` (positive definite).

    The tensors are used as given, so autograd sees them (pass leaves with
    ``requires_grad=True`` to differentiate the Kalman log-likelihood or a particle
    estimate). All must share one dtype and device, which the model's laws follow.
    """

    def __init__(
        self, A: torch.Tensor, C: torch.Tensor, Q: torch.Tensor, R: torch.Tensor,
        m0: torch.Tensor, P0: torch.Tensor,
    ) -> None:
        self._A, self._C, self._Q, self._R, self._m0, self._P0 = A, C, Q, R, m0, P0
        self._validate()

    def _validate(self) -> None:
        A, C, Q, R, m0, P0 = self.A, self.C, self.Q, self.R, self.m0, self.P0
        named = {"A": A, "C": C, "Q": Q, "R": R, "m0": m0, "P0": P0}
        for name, v in named.items():
            if not isinstance(v, torch.Tensor) or not v.is_floating_point():
                raise TypeError(f"{name} must be a floating-point tensor, got {type(v).__name__}")
        if A.dim() != 2 or A.shape[0] != A.shape[1]:
            raise ValueError(f"A must be a square matrix [d, d], got shape {tuple(A.shape)}")
        d = A.shape[0]
        if C.dim() != 2 or C.shape[1] != d:
            raise ValueError(f"C must be [dy, d] with d={d}, got shape {tuple(C.shape)}")
        dy = C.shape[0]
        expected = {"Q": (d, d), "R": (dy, dy), "m0": (d,), "P0": (d, d)}
        for name, shape in expected.items():
            if tuple(named[name].shape) != shape:
                raise ValueError(
                    f"{name} must have shape {list(shape)} (d={d}, dy={dy}), got "
                    f"{tuple(named[name].shape)}"
                )
        dtypes = {v.dtype for v in named.values()}
        devices = {v.device for v in named.values()}
        if len(dtypes) > 1 or len(devices) > 1:
            raise ValueError(
                "A, C, Q, R, m0, P0 must share one dtype and device, got "
                + ", ".join(f"{k}: {v.dtype}@{v.device}" for k, v in named.items())
            )
        self.state_dim, self.obs_dim = int(d), int(dy)
        self._diag = {k: _is_diagonal(named[k]) for k in ("Q", "R", "P0")}

    # Matrices are properties so that subclasses can derive them from other parameters
    # afresh on each access (a new autograd graph for every use).
    @property
    def A(self) -> torch.Tensor:
        return self._A

    @property
    def C(self) -> torch.Tensor:
        return self._C

    @property
    def Q(self) -> torch.Tensor:
        return self._Q

    @property
    def R(self) -> torch.Tensor:
        return self._R

    @property
    def m0(self) -> torch.Tensor:
        return self._m0

    @property
    def P0(self) -> torch.Tensor:
        return self._P0

    @property
    def dtype(self) -> torch.dtype:
        return self.A.dtype

    @property
    def device(self) -> torch.device:
        return self.A.device

    @classmethod
    def ar1(
        cls, rho, sigma_x, sigma_y, sigma_0=None, dtype: torch.dtype | None = None
    ) -> LinearGaussian:
        """Scalar AR(1) observed in noise (``particles.kalman.LinearGauss``).

            X_0 ~ N(0, sigma_0^2),  X_t = rho X_{t-1} + sigma_x U_t,  Y_t = X_t + sigma_y V_t.

        Args:
            rho, sigma_x, sigma_y: floats or 0-dim tensors (tensors keep their autograd
                graph; ``A``, ``Q``, ``R`` are recomputed from them on each use).
            sigma_0: std of ``X_0``; ``None`` uses the stationary value
                ``sigma_x / sqrt(1 - rho^2)``, *held fixed*: it is computed from the current
                values but detached, so the score in ``rho`` is a pure sum over transitions
                (as in the particle-smoothing note).
            dtype: dtype for Python-number arguments; default: that of the tensor
                arguments, else float64. Tensor arguments are converted to it if given.
        """
        return _AR1(rho, sigma_x, sigma_y, sigma_0, dtype)

    # --------------------------------------------------------------------- the laws

    def prior(self) -> D.Distribution:
        """``N(m0, P0)``, event shape ``[d]``."""
        return gaussian(self.m0, self.P0, self._diag["P0"])

    def transition(self, t: int, x_prev: torch.Tensor) -> D.Distribution:
        """``N(A x_prev, Q)``; ``x_prev: [*lead, d]`` gives batch ``[*lead]``."""
        return gaussian(x_prev @ self.A.mT, self.Q, self._diag["Q"])

    def observation(self, t: int, x: torch.Tensor) -> D.Distribution:
        """``N(C x, R)``; ``x: [*lead, d]`` gives batch ``[*lead]``, event ``[dy]``."""
        return gaussian(x @ self.C.mT, self.R, self._diag["R"])

    def bootstrap(self, y: torch.Tensor) -> BootstrapFK:
        """Bootstrap Feynman-Kac model with the Gaussian laws written out (no
        ``torch.distributions`` objects per step): the same model as the generic
        :class:`~smcdiff.ssm.model.BootstrapFK`, several times cheaper per step."""
        return LinearGaussianBootstrap(self, y)

    # ------------------------------------------------------------ optimal proposal

    def optimal_proposal(self, y: torch.Tensor) -> GuidedFK:
        """Guided Feynman-Kac model with the locally optimal proposal (Doucet et al. 2000).

        ``q_t(x_t | x_{t-1}, y_t) = p(x_t | x_{t-1}, y_t) = N(A x_{t-1} + K (y_t - C A x_{t-1}),
        (I - K C) Q)`` with ``K = Q C^T (C Q C^T + R)^{-1}``, and
        ``q_0(x_0 | y_0) = p(x_0 | y_0)`` (the same update from ``N(m0, P0)``). The incremental
        weight is then ``G_t = p(y_t | x_{t-1}) = N(y_t; C A x_{t-1}, C Q C^T + R)``, a function
        of ``x_{t-1}`` only, and ``G_0 = p(y_0)`` is constant.

        Args:
            y: ``[T, dy]`` or ``[*batch, T, dy]``.
        """
        d = self.state_dim
        diag_post = d == 1

        def proposal0(y0: torch.Tensor) -> D.Distribution:
            K, P, _, _ = posterior_gain(self.P0, self.C, self.R)
            m = self.m0 + (y0 - self.m0 @ self.C.mT) @ K.mT
            return gaussian(m, P, diag_post)

        def proposal(t: int, x_prev: torch.Tensor, y_t: torch.Tensor) -> D.Distribution:
            K, P, _, _ = posterior_gain(self.Q, self.C, self.R)
            pred = x_prev @ self.A.mT
            return gaussian(pred + (y_t - pred @ self.C.mT) @ K.mT, P, diag_post)

        return self.guided(y, proposal0, proposal)

    def _coefficients(self):
        """``(A, chol Q, C, chol R)`` for the written-out bootstrap model; 1 x 1 matrices
        as 0-d tensors so that the scalar case is plain arithmetic."""
        return _matrix(self.A), _factor(self.Q), _matrix(self.C), _factor(self.R)

    def _step_parameters(self) -> tuple[torch.Tensor, ...]:
        """The tensors that :meth:`_coefficients` reads."""
        return (self._A, self._Q, self._C, self._R)

    def _scalar_coefficients(self) -> tuple[float, float, float, float] | None:
        """``(a, sd_x, c, sd_y)`` of a one-dimensional model as Python numbers, or ``None``
        when ``d > 1`` or autograd may need the parameter tensors.

        Cached until a parameter tensor is replaced or changed in place (its version
        counter): at small N the tensor arithmetic of these per-step constants is a visible
        share of a filter step, and reading them costs a host round-trip.
        """
        if self.state_dim != 1 or self.obs_dim != 1:
            return None
        params = self._step_parameters()
        if torch.is_grad_enabled() and any(p.requires_grad for p in params):
            return None  # a graph to keep: the tensor path
        try:
            stamp = [(id(p), p._version) for p in params]
        except RuntimeError:  # an inference tensor: no version counter to trust
            return None
        cached = self.__dict__.get("_scalar_cache")
        if cached is not None and cached[0] == stamp:
            return cached[1]
        A, LQ, C, LR = self._coefficients()
        values = (float(A), float(LQ), 1.0 if C is None else float(C), float(LR))
        # the tensors are kept with their stamp, so no other object can take their ids
        self._scalar_cache = (stamp, values, params)
        return values

    def __repr__(self) -> str:
        return f"{type(self).__name__}(d={self.state_dim}, dy={self.obs_dim}, dtype={self.dtype})"


class _AR1(LinearGaussian):
    """``LinearGaussian.ar1``: matrices derived from ``rho``, ``sigma_x``, ``sigma_y`` on use."""

    def __init__(self, rho, sigma_x, sigma_y, sigma_0, dtype) -> None:
        conv = scalar_params(
            {"rho": rho, "sigma_x": sigma_x, "sigma_y": sigma_y, "sigma_0": sigma_0}, dtype
        )
        self.rho, self.sigma_x, self.sigma_y = conv["rho"], conv["sigma_x"], conv["sigma_y"]
        self._sigma_0 = conv.get("sigma_0")
        if self._sigma_0 is None and not bool(self.rho.detach().abs() < 1):
            raise ValueError(f"the stationary sigma_0 needs |rho| < 1, got rho={float(self.rho)}")
        self._validate()

    @property
    def sigma_0(self) -> torch.Tensor:
        if self._sigma_0 is not None:
            return self._sigma_0
        rho, sx = self.rho.detach(), self.sigma_x.detach()
        return sx / torch.sqrt(1 - rho * rho)

    def _coefficients(self):
        # X_t = rho X_{t-1} + sigma_x U, Y_t = X_t + sigma_y V: no matrices, C = identity.
        return self.rho, self.sigma_x, None, self.sigma_y

    def _step_parameters(self) -> tuple[torch.Tensor, ...]:
        return (self.rho, self.sigma_x, self.sigma_y)

    @property
    def A(self) -> torch.Tensor:
        return self.rho.reshape(1, 1)

    @property
    def C(self) -> torch.Tensor:
        return torch.ones(1, 1, dtype=self.rho.dtype, device=self.rho.device)

    @property
    def Q(self) -> torch.Tensor:
        return (self.sigma_x * self.sigma_x).reshape(1, 1)

    @property
    def R(self) -> torch.Tensor:
        return (self.sigma_y * self.sigma_y).reshape(1, 1)

    @property
    def m0(self) -> torch.Tensor:
        return torch.zeros(1, dtype=self.rho.dtype, device=self.rho.device)

    @property
    def P0(self) -> torch.Tensor:
        s0 = self.sigma_0
        return (s0 * s0).reshape(1, 1)

    def __repr__(self) -> str:
        return (f"LinearGaussian.ar1(rho={float(self.rho):.4g}, sigma_x={float(self.sigma_x):.4g}, "
                f"sigma_y={float(self.sigma_y):.4g}, sigma_0={float(self.sigma_0):.4g})")



# ------------------------------------------------------------------ fast bootstrap


def _apply(x: torch.Tensor, M: torch.Tensor | None) -> torch.Tensor:
    """``x @ M^T`` for ``x: [*lead, d]``; ``M`` may be a 0-d scale or ``None`` (identity)."""
    if M is None:
        return x
    if M.dim() == 0:
        return x * M
    return x @ M.mT


def _factor(S: torch.Tensor) -> torch.Tensor:
    """Cholesky factor of a covariance; a 0-d standard deviation in the 1 x 1 case."""
    return S[0, 0].sqrt() if S.shape == (1, 1) else torch.linalg.cholesky(S)


def _matrix(M: torch.Tensor) -> torch.Tensor:
    return M[0, 0] if M.shape == (1, 1) else M


def gaussian_log_prob(diff: torch.Tensor, L: torch.Tensor) -> torch.Tensor:
    """``log N(diff; 0, L L^T)`` for ``diff: [*lead, k]`` and a Cholesky factor ``L [k, k]``
    (a 0-d standard deviation when ``k = 1``)."""
    k = diff.shape[-1]
    if L.dim() == 0:  # -z^2 / 2 - log L - log(2 pi) / 2 as one fused multiply-add
        z = diff[..., 0] / L
        return torch.addcmul(torch.log(L).add_(0.5 * _LOG_2PI).neg_(), z, z, value=-0.5)
    z = torch.linalg.solve_triangular(L, diff.unsqueeze(-1), upper=False).squeeze(-1)
    z2 = (z * z).sum(-1)
    half_logdet = torch.log(torch.diagonal(L)).sum()
    return -0.5 * z2 - half_logdet - 0.5 * k * _LOG_2PI


class LinearGaussianBootstrap(BootstrapFK):
    """:class:`~smcdiff.ssm.model.BootstrapFK` of a :class:`LinearGaussian` model with the
    Gaussian sampling and densities written out:

        x_t = A x_{t-1} + chol(Q) eps,   log G_t = log N(y_t; C x_t, R),
        log m_t(x_prev, x) = log N(x; A x_prev, Q).

    Equal to the generic model (same draws for the same generator, same densities), which
    the tests check; only the per-step overhead differs. The matrices are read from the
    model at every call, so autograd sees the current parameters; a one-dimensional model
    run without gradients uses its coefficients as cached Python numbers instead (re-read
    whenever a parameter tensor changes), which halves the ops of a step.
    """

    ssm: LinearGaussian

    def __init__(self, ssm: LinearGaussian, y: torch.Tensor) -> None:
        super().__init__(ssm, y)
        # y_t as [*batch_y, 1] views for the scalar path (broadcast against [*batch, N])
        self._y_scalars = [y_t[..., 0] for y_t in self._y_steps] if ssm.obs_dim == 1 else []

    def M(self, t: int, x_prev: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        eps = standard_normal(x_prev.shape, x_prev, generator)
        scalar = self.ssm._scalar_coefficients()
        if scalar is not None:  # d = 1, no gradient: a x + s eps in place, numbers as such
            a, s = scalar[0], scalar[1]
            return (eps if s == 1.0 else eps.mul_(s)).add_(x_prev, alpha=a)
        A, LQ, _, _ = self.ssm._coefficients()
        if LQ.dim() == 0:  # scalar noise scale: one fused multiply-add
            return torch.addcmul(_apply(x_prev, A), eps, LQ)
        return _apply(x_prev, A) + _apply(eps, LQ)

    def log_G(self, t: int, x_prev: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
        scalar = self.ssm._scalar_coefficients()
        if scalar is not None:  # -(y - c x)^2 / (2 s^2) - log s - log(2 pi) / 2
            _, _, c, s = scalar
            x0 = x[..., 0]
            diff = torch.sub(self._y_scalars[t], x0 if c == 1.0 else x0 * c)
            const = scalar_tensor(-math.log(s) - 0.5 * _LOG_2PI, x.dtype, x.device)
            return torch.addcmul(const, diff, diff, value=-0.5 / (s * s))
        _, _, C, LR = self.ssm._coefficients()
        return gaussian_log_prob(self.y_at(t) - _apply(x, C), LR)

    def log_m(self, t: int, x_prev: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        A, LQ, _, _ = self.ssm._coefficients()
        return gaussian_log_prob(x - _apply(x_prev, A), LQ)

    def gaussian_transition(self, t: int) -> tuple[torch.Tensor, None, torch.Tensor]:
        """``(A, None, chol Q)``: ``m_t(x', x) = N(x; A x', Q)`` declared as affine Gaussian,
        which lets the backward samplers and FFBSm use a closed-form kernel
        (:func:`smcdiff.ssm.backward.row_logits`). A subclass that changes ``log_m`` must
        change or remove this too."""
        # cholesky_ex: no error check, hence no host sync on an accelerator (Q was validated)
        return self.ssm.A, None, torch.linalg.cholesky_ex(self.ssm.Q).L
