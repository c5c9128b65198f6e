"""Parameter learning in state-space models: score functionals, SA-MLE, Markov score climbing.

**Fisher identity** (Cappé, Moulines & Rydén 2005, Prop. 10.1.6; note section 5). For a model
``p_theta`` with prior ``p_0``, transitions ``m_t`` and observation laws ``g_t``,

    grad_theta log p_theta(y_{0:n}) = E_theta[ h(X_{0:n}) | y_{0:n} ],
    h(x_{0:n}) = h_init(x_0) + sum_{t=1}^{n} h_t(x_{t-1}, x_t),
    h_init(x_0) = grad_theta [log p_0(x_0) + log g_0(y_0 | x_0)],
    h_t(x_{t-1}, x_t) = grad_theta [log m_t(x_t | x_{t-1}) + log g_t(y_t | x_t)],

an *additive functional* of the smoothing law, which PaRIS / FFBSm / PPG estimate.
:class:`FisherScore` is that functional: ``init(x0)`` and ``step(t, x_prev, x)`` return the
per-particle (per-pair) gradients, computed exactly by forward-mode automatic
differentiation (``torch.func.jacfwd``, one tangent per parameter coordinate, vectorised
over all particles and pairs at once).

**Stochastic-approximation MLE** (Robbins & Monro 1951; Delyon, Lavielle & Moulines 1999;
PPG learning: Cardoso et al. 2023): ``theta_{l+1} = theta_l + gamma_l H_l`` with ``H_l`` a
(noisy, possibly biased) estimate of the score at ``theta_l`` and steps
``gamma_l = gamma_0 / (l + 1)^kappa`` (``sum gamma = inf``, ``sum gamma^2 < inf`` for
``1/2 < kappa <= 1``), or Adam (Kingma & Ba 2015) in practice; the Polyak-Ruppert average of
the iterates (Polyak & Juditsky 1992) is returned too. :func:`stochastic_approximation`.

**Markov score climbing** (Naesseth, Lindsten & Blei 2020): fit a Markovian proposal
``q_phi(x_{0:n}) = q_0(x_0) prod_t q_t(x_t | x_{t-1})`` by minimising ``KL(p || q_phi)``, whose
negative gradient ``E_p[grad_phi log q_phi(X_{0:n})]`` is again additive
(:class:`ProposalScore`); the expectation is replaced by the state of a ``p``-invariant Markov
kernel (e.g. conditional SMC using ``q_phi`` as its proposal), run one step per update.
:func:`markov_score_climbing`.

Parameters are a ``dict`` name -> tensor (any shapes; use unconstrained coordinates, e.g.
``log sigma``, and map them in ``build``); flat vectors ``theta: [P]`` concatenate them in
the dict's order (:func:`flatten_params`). A model is rebuilt from the parameters by a
user function ``build(params) -> StateSpaceModel``. ``t`` is the observation index.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch.func import jacfwd

from smcdiff.core.progress import progress_bar
from smcdiff.ssm.model import _check_observations

Params = Mapping[str, torch.Tensor]
Estimator = Callable[[dict[str, torch.Tensor]], torch.Tensor]

__all__ = [
    "FisherScore", "LearningResult", "ParameterScore", "ProposalScore", "flatten_params",
    "markov_score_climbing", "stochastic_approximation", "unflatten_params",
]


# ------------------------------------------------------------------------ parameters


def _check_params(params: Any, name: str = "params") -> dict[str, torch.Tensor]:
    if not isinstance(params, Mapping) or not params:
        raise TypeError(f"{name} must be a non-empty dict of name -> tensor, got "
                        f"{type(params).__name__}")
    out = {}
    for k, v in params.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            v = torch.tensor(float(v), dtype=torch.float64)
        if not isinstance(v, torch.Tensor) or not v.is_floating_point():
            raise TypeError(f"{name}[{k!r}] must be a floating-point tensor or float, got "
                            f"{type(v).__name__}")
        out[str(k)] = v
    dtypes = {v.dtype for v in out.values()}
    if len(dtypes) > 1:
        raise ValueError(f"{name} must share one dtype, got {sorted(map(str, dtypes))}")
    return out


def flatten_params(params: Params) -> torch.Tensor:
    """Concatenate the parameters, in the dict's order, into a flat vector ``[P]``."""
    params = _check_params(params)
    return torch.cat([v.reshape(-1) for v in params.values()])


def unflatten_params(theta: torch.Tensor, like: Params) -> dict[str, torch.Tensor]:
    """Split a flat vector ``theta: [P]`` into a dict shaped like ``like`` (inverse of
    :func:`flatten_params`); differentiable (views of ``theta``)."""
    out, i = {}, 0
    for k, v in like.items():
        n = v.numel()
        out[k] = theta[i:i + n].reshape(v.shape)
        i += n
    if i != theta.shape[-1]:
        raise ValueError(f"theta has {theta.shape[-1]} entries, the parameters {list(like)} "
                         f"need {i}")
    return out


# ------------------------------------------------------------------- score functionals


def _lead_ndim(*xs: torch.Tensor) -> int:
    return len(torch.broadcast_shapes(*(x.shape[:-1] for x in xs)))


class ParameterScore:
    """Base of the score functionals: exact per-particle gradients in ``theta`` of a
    log-density, by forward-mode autodiff (``torch.func.jacfwd`` over the ``P`` coordinates).

    Args:
        build: ``build(params) -> model``; must use the tensors it is given (so that the
            derivative reaches them) and may map unconstrained coordinates to the model's.
        params: the point ``theta`` at which gradients are taken (detached copies kept).

    Attributes:
        shape: ``(P,)``, the event shape of the functional's values.
        names: parameter names, in the order of the flat vector.
    """

    def __init__(self, build: Callable[[dict[str, torch.Tensor]], Any], params: Params) -> None:
        if not callable(build):
            raise TypeError(f"build must be a callable params -> model, got {type(build).__name__}")
        params = _check_params(params)
        self.build = build
        self.params = {k: v.detach() for k, v in params.items()}
        self.theta = flatten_params(self.params)
        self.names = tuple(self.params)
        self.shape = (int(self.theta.shape[0]),)
        self.model = build(self.params)

    def _grad(self, log_density: Callable[[Any], torch.Tensor]) -> torch.Tensor:
        """``[*lead, P]``: the gradient in ``theta`` of each entry of
        ``log_density(build(theta)) : [*lead]``."""
        def f(theta: torch.Tensor) -> torch.Tensor:
            return log_density(self.build(unflatten_params(theta, self.params)))

        return jacfwd(f)(self.theta)

    def _path_grad(self, path_log_density: Callable[[Any], torch.Tensor]) -> torch.Tensor:
        """``[P]``: gradient of the *mean* over paths of ``path_log_density(model): [*batch]``
        (one reverse pass; exact for the mean, which is all a Monte Carlo average needs)."""
        theta = self.theta.clone().requires_grad_(True)
        value = path_log_density(self.build(unflatten_params(theta, self.params)))
        (g,) = torch.autograd.grad(value.mean(), theta)
        return g


def _check_path(x: torch.Tensor, T: int | None, d: int) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() < 2 or x.shape[-1] != d:
        raise ValueError(f"paths must have shape [*batch, T, d={d}], got "
                         f"{tuple(getattr(x, 'shape', ()))}")
    if T is not None and x.shape[-2] != T:
        raise ValueError(f"paths must have T={T} time steps, got shape {tuple(x.shape)}")


class FisherScore(ParameterScore):
    """Fisher-identity score as an additive functional (Cappé et al. 2005, Prop. 10.1.6).

        init(x_0)          = grad_theta [log p_0(x_0) + log g_0(y_0 | x_0)],
        step(t, x', x)     = grad_theta [log m_t(x | x') + log g_t(y_t | x)],   t >= 1,

    so that ``E[init(X_0) + sum_t step(t, X_{t-1}, X_t) | y] = grad_theta log p_theta(y)``.
    Gradients are exact per particle / per pair (forward-mode autodiff, vectorised).

    Args:
        build: ``build(params) -> StateSpaceModel``.
        params: dict name -> tensor, the point ``theta``.
        y: observations ``[T, dy]`` or ``[*batch_y, T, dy]``; a batch of series occupies the
            *leading* axes of the particles.

    Shapes: ``init(x0)`` with ``x0: [*batch, N, d]`` gives ``[*batch, N, P]``;
    ``step(t, x_prev, x)`` broadcasts like the model's ``log_m``: ``x_prev: [*b, N, 1, d]``
    with ``x: [*b, 1, M, d]`` gives ``[*b, N, M, P]``.
    """

    def __init__(self, build, params: Params, y: torch.Tensor) -> None:
        super().__init__(build, params)
        self.y = _check_observations(self.model, y)
        self.T = int(self.y.shape[-2])

    def _y_at(self, t: int, lead_ndim: int) -> torch.Tensor:
        """``y_t`` as ``[*batch_y, 1, .., 1, dy]`` with ``lead_ndim`` axes before ``dy``."""
        if not 0 <= t < self.T:
            raise ValueError(f"t must be in [0, {self.T - 1}], got {t}")
        yt = self.y[..., t, :]
        k = yt.dim() - 1
        if lead_ndim < k:
            raise ValueError(f"particles have {lead_ndim} leading axes, fewer than the "
                             f"{k} batch axes of y")
        return yt.reshape(*yt.shape[:-1], *([1] * (lead_ndim - k)), yt.shape[-1])

    def init(self, x0: torch.Tensor) -> torch.Tensor:
        """``grad_theta [log p_0(x_0) + log g_0(y_0 | x_0)]``: ``[*batch, N, P]``."""
        y0 = self._y_at(0, _lead_ndim(x0))
        return self._grad(lambda m: m.prior().log_prob(x0) + m.observation(0, x0).log_prob(y0))

    def step(self, t: int, x_prev: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``grad_theta [log m_t(x | x_prev) + log g_t(y_t | x)]``: ``[*lead, P]``."""
        yt = self._y_at(t, _lead_ndim(x_prev, x))
        return self._grad(
            lambda m: m.transition(t, x_prev).log_prob(x) + m.observation(t, x).log_prob(yt))

    def log_joint(self, model, x: torch.Tensor) -> torch.Tensor:
        """``log p_theta(x_{0:T-1}, y_{0:T-1})`` of paths ``x: [*batch, T, d]``: ``[*batch]``."""
        _check_path(x, self.T, self.model.state_dim)
        lead = x.dim() - 1
        out = model.prior().log_prob(x[..., 0, :])
        out = out + model.observation(0, x[..., 0, :]).log_prob(self._y_at(0, lead))
        for t in range(1, self.T):
            out = out + model.transition(t, x[..., t - 1, :]).log_prob(x[..., t, :])
            out = out + model.observation(t, x[..., t, :]).log_prob(self._y_at(t, lead))
        return out

    def path_score(self, x: torch.Tensor) -> torch.Tensor:
        """Mean over paths ``x: [*batch, T, d]`` of ``h(x_{0:T-1})`` (the complete-data score
        ``grad_theta log p_theta(x, y)``): ``[P]``. With ``x`` drawn from the smoothing law
        this is an unbiased Monte Carlo estimate of the score."""
        return self._path_grad(lambda m: self.log_joint(m, x))


class ProposalScore(ParameterScore):
    """Score of a Markovian proposal ``q_phi`` as an additive functional (Naesseth et al. 2020).

        init(x_0) = grad_phi log q_0(x_0),   step(t, x', x) = grad_phi log q_t(x | x'),

    whose smoothing expectation is ``E_p[grad_phi log q_phi(X_{0:n})] = -grad_phi KL(p || q_phi)``.

    Args:
        build: ``build(params) -> q`` with ``q.prior()`` and ``q.transition(t, x_prev)``
            returning distributions as a :class:`~smcdiff.ssm.model.StateSpaceModel` does
            (a proposal that depends on ``y`` closes over it).
        params: dict name -> tensor, the point ``phi``.

    Shapes as :class:`FisherScore`.
    """

    def init(self, x0: torch.Tensor) -> torch.Tensor:
        """``grad_phi log q_0(x_0)``: ``[*batch, N, P]``."""
        return self._grad(lambda q: q.prior().log_prob(x0))

    def step(self, t: int, x_prev: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``grad_phi log q_t(x | x_prev)``: ``[*lead, P]``."""
        return self._grad(lambda q: q.transition(t, x_prev).log_prob(x))

    @staticmethod
    def log_q(q, x: torch.Tensor) -> torch.Tensor:
        """``log q(x_{0:T-1})`` of paths ``x: [*batch, T, d]``: ``[*batch]``."""
        if not isinstance(x, torch.Tensor) or x.dim() < 2:
            raise ValueError(f"paths must have shape [*batch, T, d], got "
                             f"{tuple(getattr(x, 'shape', ()))}")
        out = q.prior().log_prob(x[..., 0, :])
        for t in range(1, x.shape[-2]):
            out = out + q.transition(t, x[..., t - 1, :]).log_prob(x[..., t, :])
        return out

    def path_score(self, x: torch.Tensor) -> torch.Tensor:
        """Mean over paths ``x: [*batch, T, d]`` of ``grad_phi log q_phi(x)``: ``[P]``."""
        return self._path_grad(lambda q: self.log_q(q, x))


# --------------------------------------------------------------------- the update loop


@dataclass(frozen=True)
class LearningResult:
    """Output of :func:`stochastic_approximation` / :func:`markov_score_climbing`.

    Attributes:
        params: the last iterate ``theta_L`` (dict, detached).
        averaged: Polyak-Ruppert average of ``theta_l`` over ``l >= average_from``.
        trace: name -> ``[L + 1, *shape]``, the iterates ``theta_0 .. theta_L``.
        theta: ``[L + 1, P]``, the same trace flat.
        scores: ``[L, P]``, the score estimates ``H_l`` used by the updates.
        step_sizes: ``[L]``, the ``gamma_l`` (Robbins-Monro) or learning rates (Adam).
        state: the final state of the kernel (Markov score climbing), else ``None``.
    """

    params: dict[str, torch.Tensor]
    averaged: dict[str, torch.Tensor]
    trace: dict[str, torch.Tensor]
    theta: torch.Tensor
    scores: torch.Tensor
    step_sizes: torch.Tensor
    state: Any = None


def _step_schedule(step_size, decay: float) -> Callable[[int], float]:
    if callable(step_size):
        return step_size
    if isinstance(step_size, bool) or not isinstance(step_size, (int, float)) or step_size <= 0:
        raise ValueError(f"step_size must be a positive float or a callable l -> gamma_l, "
                         f"got {step_size!r}")
    if not 0 <= decay <= 1:
        raise ValueError(f"decay (kappa in gamma_0 / (l+1)^kappa) must be in [0, 1], got {decay}")
    return lambda ell: float(step_size) / (ell + 1) ** decay


def stochastic_approximation(
    estimator: Estimator, params0: Params, num_iters: int, *, step_size=0.1,
    decay: float = 0.6, optimizer: str = "robbins-monro",
    preconditioner: torch.Tensor | None = None, average_from: int | None = None,
    progress: bool | None = None,
    callback: Callable[[int, dict, torch.Tensor], None] | None = None,
) -> LearningResult:
    """Stochastic-approximation ascent ``theta_{l+1} = theta_l + gamma_l H_l`` (Robbins & Monro
    1951), e.g. MLE with ``H_l`` a particle estimate of the Fisher score (Cardoso et al. 2023).

    Args:
        estimator: ``estimator(params) -> H`` with ``params`` a dict like ``params0`` and
            ``H: [P]`` (or ``[*batch, P]``, averaged over the batch), the flat score estimate
            (:func:`flatten_params` order). It may be stateful (a PPG chain carried between
            calls) and may use its own generator.
        params0: dict name -> tensor, the starting point.
        num_iters: number of updates ``L``.
        step_size: ``gamma_0`` of ``gamma_l = gamma_0 / (l + 1)^decay``, or a callable
            ``l -> gamma_l``. For Adam, the learning rate (same schedule).
        decay: ``kappa``; ``1/2 < kappa <= 1`` satisfies the Robbins-Monro conditions,
            ``0`` gives constant steps.
        optimizer: ``"robbins-monro"`` (plain steps) or ``"adam"`` (``torch.optim.Adam``
            ascending, with the scheduled learning rate).
        preconditioner: optional fixed positive-definite ``B: [P, P]``; the direction is then
            ``B H_l`` (e.g. ``B`` = inverse observed information: stochastic Fisher scoring,
            whose iterates with ``gamma_l = 1 / (l + 1)`` average the Newton steps).
        average_from: first iterate of the Polyak-Ruppert average; default ``L // 2``.
        progress: show a progress bar (``None``: automatic, see
            :func:`smcdiff.core.progress.progress_bar`).
        callback: ``callback(l, params, H)`` after each estimate, e.g. for logging.

    Returns:
        :class:`LearningResult` with the trace of the parameters.
    """
    return _ascend(estimator, params0, num_iters, step_size, decay, optimizer, average_from,
                   progress, callback, desc="SA-MLE", preconditioner=preconditioner)


def _ascend(estimator, params0, num_iters, step_size, decay, optimizer, average_from,
            progress, callback, desc, state_of=None, preconditioner=None) -> LearningResult:
    if not callable(estimator):
        raise TypeError(f"estimator must be a callable params -> score, got "
                        f"{type(estimator).__name__}")
    params0 = _check_params(params0, "params0")
    if isinstance(num_iters, bool) or not isinstance(num_iters, int) or num_iters < 1:
        raise ValueError(f"num_iters must be an integer >= 1, got {num_iters!r}")
    if optimizer not in ("robbins-monro", "adam"):
        raise ValueError(f"optimizer must be 'robbins-monro' or 'adam', got {optimizer!r}")
    if average_from is None:
        average_from = num_iters // 2
    if not 0 <= average_from <= num_iters:
        raise ValueError(f"average_from must be in [0, num_iters={num_iters}], got {average_from}")
    gamma = _step_schedule(step_size, decay)
    like = {k: v.detach() for k, v in params0.items()}
    theta = flatten_params(like).clone()
    P = theta.shape[0]
    if preconditioner is not None:
        if not isinstance(preconditioner, torch.Tensor) or preconditioner.shape != (P, P):
            raise ValueError(f"preconditioner must be a tensor [P, P] with P={P}, got "
                             f"{tuple(getattr(preconditioner, 'shape', ()))}")
        preconditioner = preconditioner.detach().to(theta.dtype)
    opt = None
    if optimizer == "adam":
        theta.requires_grad_(True)
        opt = torch.optim.Adam([theta], lr=gamma(0), maximize=True)

    thetas, scores, steps = [theta.detach().clone()], [], []
    bar = progress_bar(progress, total=num_iters, desc=desc, unit="iter")
    try:
        for ell in range(num_iters):
            params = unflatten_params(theta.detach().clone(), like)
            H = estimator(params)
            if not isinstance(H, torch.Tensor):
                raise TypeError(f"estimator must return a tensor [P] or [*batch, P], got "
                                f"{type(H).__name__}")
            H = H.detach()
            if H.dim() > 1:
                H = H.reshape(-1, H.shape[-1]).mean(0)
            if H.shape != theta.shape:
                raise ValueError(f"estimator returned shape {tuple(H.shape)}, expected "
                                 f"[{theta.shape[0]}] (or [*batch, {theta.shape[0]}])")
            if not bool(torch.isfinite(H).all()):
                raise ValueError(f"the score estimate at iteration {ell} is not finite: "
                                 f"{H.tolist()} at {params}")
            if callback is not None:
                callback(ell, params, H)
            g = float(gamma(ell))
            direction = H.to(theta.dtype)
            if preconditioner is not None:
                direction = preconditioner @ direction
            if opt is None:
                theta = theta + g * direction
            else:
                for group in opt.param_groups:
                    group["lr"] = g
                theta.grad = direction.clone()
                opt.step()
            thetas.append(theta.detach().clone())
            scores.append(H)
            steps.append(g)
            bar.update(1)
            if len(theta) <= 4:
                bar.set_postfix(**{k: f"{float(v):.4g}" for k, v in zip(
                    like, theta.detach()) if like[k].numel() == 1})
    finally:
        bar.close()

    trace_flat = torch.stack(thetas)
    avg = trace_flat[average_from:].mean(0)
    trace = {k: v for k, v in zip(like, _unflatten_rows(trace_flat, like))}
    return LearningResult(
        params=unflatten_params(trace_flat[-1].clone(), like),
        averaged=unflatten_params(avg, like),
        trace=trace,
        theta=trace_flat,
        scores=torch.stack(scores),
        step_sizes=torch.tensor(steps, dtype=trace_flat.dtype),
        state=None if state_of is None else state_of(),
    )


def _unflatten_rows(rows: torch.Tensor, like: Params) -> list[torch.Tensor]:
    out, i = [], 0
    for v in like.values():
        n = v.numel()
        out.append(rows[:, i:i + n].reshape(rows.shape[0], *v.shape))
        i += n
    return out


# ------------------------------------------------------------- Markov score climbing


Kernel = Callable[[torch.Tensor, Any, "torch.Generator | None"], torch.Tensor]


def markov_score_climbing(
    build_q: Callable[[dict[str, torch.Tensor]], Any], params0: Params, kernel: Kernel,
    state0: torch.Tensor, num_iters: int, *, generator: torch.Generator | None = None,
    step_size=0.1, decay: float = 0.6, optimizer: str = "robbins-monro",
    preconditioner: torch.Tensor | None = None, average_from: int | None = None,
    progress: bool | None = None, callback: Callable[[int, dict, torch.Tensor], None] | None = None,
) -> LearningResult:
    """Markov score climbing (Naesseth, Lindsten & Blei 2020, Alg. 1) for a Markovian ``q_phi``.

    Minimises ``KL(p || q_phi)`` over ``phi``: at iteration ``l``,

        x^l ~ M_{phi_l}(x^{l-1}, .)            (a p-invariant kernel, may use q_{phi_l})
        phi_{l+1} = phi_l + gamma_l grad_phi log q_{phi_l}(x^l),

    averaged over the chains held in the batch axes of ``x``. The score of a path is that of
    :class:`ProposalScore` (``log q_0(x_0) + sum_t log q_t(x_t | x_{t-1})``).

    Args:
        build_q: ``build_q(params) -> q`` with ``q.prior()`` and ``q.transition(t, x_prev)``.
        params0: dict name -> tensor, the starting ``phi``.
        kernel: ``kernel(x, q, generator) -> x'``, a Markov kernel leaving the target ``p``
            invariant (conditional SMC with ``q`` as proposal, exact draws, MCMC...), acting on
            paths ``x: [*chains, T, d]``.
        state0: starting paths ``[*chains, T, d]``.
        num_iters, step_size, decay, optimizer, preconditioner, average_from, progress,
            callback: as for :func:`stochastic_approximation`.
        generator: passed to ``kernel``.

    Returns:
        :class:`LearningResult`; ``state`` holds the final paths.
    """
    if not callable(kernel):
        raise TypeError(f"kernel must be a callable (x, q, generator) -> x, got "
                        f"{type(kernel).__name__}")
    if not isinstance(state0, torch.Tensor) or state0.dim() < 2:
        raise ValueError(f"state0 must be paths [*chains, T, d], got "
                         f"{tuple(getattr(state0, 'shape', ()))}")
    holder = {"x": state0}

    def estimator(params: dict[str, torch.Tensor]) -> torch.Tensor:
        score = ProposalScore(build_q, params)
        x = kernel(holder["x"], score.model, generator)
        if not isinstance(x, torch.Tensor) or x.shape != holder["x"].shape:
            raise ValueError(f"kernel must return paths of shape {tuple(holder['x'].shape)}, "
                             f"got {tuple(getattr(x, 'shape', ()))}")
        holder["x"] = x
        return score.path_score(x)

    return _ascend(estimator, params0, num_iters, step_size, decay, optimizer, average_from,
                   progress, callback, desc="MSC", state_of=lambda: holder["x"],
                   preconditioner=preconditioner)
