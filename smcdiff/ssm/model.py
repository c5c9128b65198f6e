"""State-space models and the Feynman-Kac models (bootstrap, guided) that filter them.

A state-space model (Chopin & Papaspiliopoulos 2020, ch. 2 and 10) is a Markov chain
``X_t`` observed through ``Y_t``:

    X_0 ~ p_0,   X_t | X_{t-1} = x' ~ f_t(. | x'),   Y_t | X_t = x ~ g_t(. | x),

for ``t = 0 .. T-1`` (``T`` observations ``y_0 .. y_{T-1}``, as in the ``particles``
library). Here ``t`` is the integer observation index, not a diffusion time.

Filtering it with SMC means running a Feynman-Kac model (:mod:`smcdiff.core.feynman_kac`)
whose normalizer ``Z_T`` is the likelihood ``p(y_{0:T-1})``:

- bootstrap (Gordon, Salmond & Smith 1993): ``M_0 = p_0``, ``M_t = f_t``,
  ``G_t(x_{t-1}, x_t) = g_t(y_t | x_t)``;
- guided (Doucet, Godsill & Andrieu 2000): ``M_0 = q_0(. | y_0)``,
  ``M_t = q_t(. | x_{t-1}, y_t)``, ``G_0 = p_0 g_0 / q_0`` and
  ``G_t = f_t(x_t | x_{t-1}) g_t(y_t | x_t) / q_t(x_t | x_{t-1}, y_t)``.

Shapes: states ``[*batch, N, d]``, observations ``y: [T, dy]`` (one series shared by
every batch member) or ``[*batch, T, dy]`` (one series per batch member), log-potentials
``[*batch, N]``. Laws are ``torch.distributions`` (or ``pyro.distributions``, which
subclass them) with event shape ``[d]`` / ``[dy]``; every draw goes through
:func:`smcdiff.core.random.sample` with an explicit ``torch.Generator``.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import distributions as D

from smcdiff.core.random import sample

ProposalFn = Callable[[int, torch.Tensor, torch.Tensor], D.Distribution]
Proposal0Fn = Callable[[torch.Tensor], D.Distribution]


class SSMData(NamedTuple):
    """A simulated trajectory: states ``x: [*batch, T, d]``, observations ``y: [*batch, T, dy]``."""

    x: torch.Tensor
    y: torch.Tensor


def draw(
    dist: D.Distribution, batch_shape: torch.Size | tuple[int, ...],
    generator: torch.Generator | None,
) -> torch.Tensor:
    """One draw ``[*batch_shape, *event]`` from ``dist``, broadcast to ``batch_shape``.

    ``dist.batch_shape`` must broadcast to ``batch_shape`` (a prior with batch shape ``()``
    gives ``batch_shape`` independent draws).
    """
    batch_shape = torch.Size(batch_shape)
    if dist.batch_shape != batch_shape:
        try:
            full = torch.broadcast_shapes(dist.batch_shape, batch_shape)
        except RuntimeError:
            full = None
        if full != batch_shape:
            raise ValueError(
                f"a distribution with batch shape {tuple(dist.batch_shape)} cannot be drawn with "
                f"batch shape {tuple(batch_shape)}; expected a batch shape that broadcasts to it"
            )
        dist = dist.expand(batch_shape)
    return sample(dist, (), generator)


class StateSpaceModel(abc.ABC):
    """A state-space model: prior ``p_0``, transitions ``f_t``, observation laws ``g_t``.

    Subclasses set ``state_dim`` (``d``) and ``obs_dim`` (``dy``) and implement
    :meth:`prior`, :meth:`transition` and :meth:`observation`. The laws must broadcast
    over any leading axes of their arguments: ``transition(t, x_prev)`` with ``x_prev:
    [*lead, d]`` has batch shape ``[*lead]``, which is what lets :meth:`BootstrapFK.log_m`
    evaluate all ``N x N`` pairs for backward sampling.

    ``t`` is the integer observation index ``0 .. T-1`` (not a diffusion time).
    """

    state_dim: int
    obs_dim: int

    @abc.abstractmethod
    def prior(self) -> D.Distribution:
        """Law of ``X_0``, event shape ``[d]``."""

    @abc.abstractmethod
    def transition(self, t: int, x_prev: torch.Tensor) -> D.Distribution:
        """Law ``f_t(. | x_prev)`` of ``X_t`` given ``X_{t-1} = x_prev``, ``t >= 1``.

        ``x_prev: [*lead, d]`` gives batch shape ``[*lead]`` and event shape ``[d]``.
        """

    @abc.abstractmethod
    def observation(self, t: int, x: torch.Tensor) -> D.Distribution:
        """Law ``g_t(. | x)`` of ``Y_t`` given ``X_t = x``; ``x: [*lead, d]`` gives batch
        shape ``[*lead]`` and event shape ``[dy]``."""

    # ------------------------------------------------------------------ simulation

    def simulate(
        self, T: int, batch_shape: tuple[int, ...] | torch.Size = (),
        generator: torch.Generator | None = None,
    ) -> SSMData:
        """Draw ``[*batch_shape]`` independent trajectories of length ``T`` from the model.

        Draws ``x_0 ~ p_0``, ``y_0 ~ g_0(. | x_0)``, then for ``t = 1 .. T-1``
        ``x_t ~ f_t(. | x_{t-1})``, ``y_t ~ g_t(. | x_t)``, in that order, all from
        ``generator``.

        Returns:
            :class:`SSMData` with ``x: [*batch, T, d]`` and ``y: [*batch, T, dy]``.
        """
        if not isinstance(T, int) or isinstance(T, bool) or T < 1:
            raise ValueError(f"T must be an integer >= 1, got {T!r}")
        batch = torch.Size(batch_shape)
        xs, ys = [], []
        x = draw(self.prior(), batch, generator)
        for t in range(T):
            if t > 0:
                x = draw(self.transition(t, x), batch, generator)
            xs.append(x)
            ys.append(draw(self.observation(t, x), batch, generator))
        return SSMData(torch.stack(xs, dim=-2), torch.stack(ys, dim=-2))

    # ------------------------------------------------------------ Feynman-Kac models

    def bootstrap(self, y: torch.Tensor) -> BootstrapFK:
        """The bootstrap Feynman-Kac model of this SSM given ``y: [T, dy]`` or
        ``[*batch, T, dy]`` (see :class:`BootstrapFK`)."""
        return BootstrapFK(self, y)

    def guided(
        self, y: torch.Tensor, proposal0: Proposal0Fn, proposal: ProposalFn
    ) -> GuidedFK:
        """The guided Feynman-Kac model with proposals ``q_0 = proposal0(y_0)`` and
        ``q_t = proposal(t, x_prev, y_t)`` (see :class:`GuidedFK`)."""
        return GuidedFK(self, y, proposal0, proposal)


# --------------------------------------------------------------------------- FK models


def _check_observations(ssm: StateSpaceModel, y: torch.Tensor) -> torch.Tensor:
    if not isinstance(y, torch.Tensor):
        raise TypeError(
            f"y must be a torch.Tensor of shape [*batch, T, dy], got {type(y).__name__}"
        )
    if not y.is_floating_point():
        raise TypeError(f"y must be floating point, got dtype {y.dtype}")
    dy = getattr(ssm, "obs_dim", None)
    if y.dim() < 2:
        hint = " (for scalar observations use y.unsqueeze(-1))" if dy == 1 else ""
        raise ValueError(
            f"y must have shape [T, dy] or [*batch, T, dy], got {tuple(y.shape)}{hint}"
        )
    if y.shape[-2] < 1:
        raise ValueError(
            f"y must hold at least one observation (T >= 1), got shape {tuple(y.shape)}"
        )
    if dy is not None and y.shape[-1] != dy:
        raise ValueError(
            f"y must have last dimension dy={dy} for {type(ssm).__name__}, got shape "
            f"{tuple(y.shape)}"
        )
    dtype = getattr(ssm, "dtype", None)
    if dtype is not None and y.dtype != dtype:
        raise ValueError(f"y has dtype {y.dtype} but {type(ssm).__name__} has dtype {dtype}")
    device = getattr(ssm, "device", None)
    if device is not None and y.device != device:
        raise ValueError(f"y is on {y.device} but {type(ssm).__name__} is on {device}")
    if not bool(torch.isfinite(y).all()):
        raise ValueError("y must be finite (missing observations are not supported)")
    return y


class _SSMFeynmanKac:
    """Shared parts of the Feynman-Kac models of a state-space model."""

    def __init__(self, ssm: StateSpaceModel, y: torch.Tensor) -> None:
        if not isinstance(ssm, StateSpaceModel):
            raise TypeError(f"ssm must be a StateSpaceModel, got {type(ssm).__name__}")
        self.ssm = ssm
        self.y = _check_observations(ssm, y)
        # y_t as [*batch_y, 1, dy] views, split once: a list lookup per step, not an index.
        self._y_steps = self.y.unsqueeze(-2).unbind(-3)
        self.T: int = int(y.shape[-2])

    @property
    def y_batch_shape(self) -> torch.Size:
        """Leading batch shape of ``y`` (``()`` when one series is shared)."""
        return self.y.shape[:-2]

    def y_at(self, t: int) -> torch.Tensor:
        """``y_t`` with a singleton particle axis, ``[*batch_y, 1, dy]``, so that it
        broadcasts against particles ``[*batch, N, d]``."""
        return self._y_steps[t]

    def _check_batch(self, batch_shape: torch.Size) -> None:
        yb = self.y_batch_shape
        try:
            ok = torch.broadcast_shapes(yb, batch_shape) == batch_shape
        except RuntimeError:
            ok = False
        if not ok:
            raise ValueError(
                f"y has batch shape {tuple(yb)} (y: {tuple(self.y.shape)}), which does not "
                f"broadcast to the SMC batch_shape {tuple(batch_shape)}; pass y as [T, dy] or "
                "[*batch_shape, T, dy]"
            )

    def log_m(self, t: int, x_prev: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Model transition log-density ``log f_t(x | x_prev)``, ``t >= 1``.

        Broadcasts over the leading axes: ``x_prev: [*b, N, d]`` with ``x: [*b, N, d]``
        or ``[*b, 1, d]`` gives ``[*b, N]``; ``x_prev: [*b, N, 1, d]`` with
        ``x: [*b, 1, M, d]`` gives all pairs ``[*b, N, M]`` (backward sampling).
        """
        return self.ssm.transition(t, x_prev).log_prob(x)


class BootstrapFK(_SSMFeynmanKac):
    """Bootstrap filter of a state-space model as a Feynman-Kac model (Gordon et al. 1993).

    ``M_0 = p_0``, ``M_t = f_t``, ``log G_t(x_{t-1}, x_t) = log g_t(y_t | x_t)``; ``Z_T`` is
    the likelihood ``p(y_{0:T-1})``. ``t`` is the observation index ``0 .. T-1``.

    Args:
        ssm: the state-space model.
        y: ``[T, dy]`` (shared by all batch members) or ``[*batch, T, dy]``.
    """

    # Sampling and densities of the model's laws: no autograd inside a step (under
    # torch.no_grad the engine may then run its loop in inference mode).
    autograd_free = True

    def M0(
        self, num_particles: int, batch_shape: torch.Size,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """``x_0 ~ p_0``: ``[*batch, N, d]``."""
        batch_shape = torch.Size(batch_shape)
        self._check_batch(batch_shape)
        return draw(self.ssm.prior(), (*batch_shape, num_particles), generator)

    def M(self, t: int, x_prev: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """``x_t ~ f_t(. | x_prev)``: ``[*batch, N, d]``."""
        return draw(self.ssm.transition(t, x_prev), x_prev.shape[:-1], generator)

    def log_G(self, t: int, x_prev: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
        """``log g_t(y_t | x_t)``: ``[*batch, N]``."""
        return self.ssm.observation(t, x).log_prob(self.y_at(t))


class GuidedFK(_SSMFeynmanKac):
    """Guided filter of a state-space model as a Feynman-Kac model (Doucet et al. 2000).

    ``M_0 = q_0(. | y_0)``, ``M_t = q_t(. | x_{t-1}, y_t)`` and

        log G_0(x_0) = log p_0(x_0) + log g_0(y_0 | x_0) - log q_0(x_0 | y_0),
        log G_t(x_{t-1}, x_t) = log f_t(x_t | x_{t-1}) + log g_t(y_t | x_t)
                                - log q_t(x_t | x_{t-1}, y_t),

    so that ``Z_T = p(y_{0:T-1})`` whatever the proposals (if their supports cover the
    model's). ``t`` is the observation index ``0 .. T-1``.

    Args:
        ssm: the state-space model.
        y: ``[T, dy]`` or ``[*batch, T, dy]``.
        proposal0: ``proposal0(y_0)`` returns the law of ``x_0``; ``y_0`` is passed as
            ``[*batch_y, 1, dy]`` (a singleton particle axis) so that its batch shape
            broadcasts to ``[*batch, N]``.
        proposal: ``proposal(t, x_prev, y_t)`` with ``x_prev: [*batch, N, d]`` and
            ``y_t: [*batch_y, 1, dy]`` returns the law of ``x_t`` (batch ``[*batch, N]``).
    """

    def __init__(
        self, ssm: StateSpaceModel, y: torch.Tensor, proposal0: Proposal0Fn, proposal: ProposalFn
    ) -> None:
        super().__init__(ssm, y)
        if not callable(proposal0) or not callable(proposal):
            raise TypeError("proposal0 and proposal must be callables returning distributions")
        self.proposal0 = proposal0
        self.proposal = proposal

    def M0(
        self, num_particles: int, batch_shape: torch.Size,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """``x_0 ~ q_0(. | y_0)``: ``[*batch, N, d]``."""
        batch_shape = torch.Size(batch_shape)
        self._check_batch(batch_shape)
        return draw(self.proposal0(self.y_at(0)), (*batch_shape, num_particles), generator)

    def M(self, t: int, x_prev: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """``x_t ~ q_t(. | x_prev, y_t)``: ``[*batch, N, d]``."""
        return draw(self.proposal(t, x_prev, self.y_at(t)), x_prev.shape[:-1], generator)

    def log_G(self, t: int, x_prev: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
        """Incremental importance weight ``[*batch, N]`` (see the class docstring)."""
        y_t = self.y_at(t)
        log_g = self.ssm.observation(t, x).log_prob(y_t)
        if t == 0:
            return self.ssm.prior().log_prob(x) + log_g - self.proposal0(y_t).log_prob(x)
        if x_prev is None:
            raise ValueError(f"GuidedFK.log_G needs x_prev at step t={t} >= 1")
        log_f = self.ssm.transition(t, x_prev).log_prob(x)
        return log_f + log_g - self.proposal(t, x_prev, y_t).log_prob(x)
