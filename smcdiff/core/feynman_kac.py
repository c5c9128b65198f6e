"""The Feynman-Kac model protocol that every SMC algorithm in smcdiff runs.

A Feynman-Kac model (Del Moral 2004; Chopin & Papaspiliopoulos 2020, ch. 5) is a Markov
chain of proposal kernels and potentials,

    X_0 ~ M_0,   X_t | X_{t-1} ~ M_t(X_{t-1}, .),   G_0(x_0),  G_t(x_{t-1}, x_t),

defining the sequence of distributions

    Q_t(dx_{0:t}) = (1 / Z_t) M_0(dx_0) G_0(x_0) prod_{s=1}^t M_s(x_{s-1}, dx_s) G_s(x_{s-1}, x_s).

SMC propagates N weighted particles through it; the product of the mean weights is an
unbiased estimate of ``Z_t``. State-space filters, tempering, and diffusion samplers with
correction or steering weights are all instances; the engine (:mod:`smcdiff.core.engine`)
knows nothing else about them.

Shapes: particles ``[*batch, N, *event]`` (or a container of such tensors, see
:mod:`smcdiff.core.tree`); log-potentials ``[*batch, N]``. ``t`` is the SMC step index
``0 .. T-1`` (for diffusion models it is *not* the diffusion time).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from smcdiff.core.tree import Particles


@runtime_checkable
class FeynmanKac(Protocol):
    """Protocol: ``M0``, ``M``, ``log_G`` and the number of steps ``T``.

    Optional methods the engine and its extensions use when present:

    - ``log_m(t, x_prev, x)``: log transition density ``log m_t(x | x_prev)`` of the
      *model* (not the proposal), needed by ancestor / backward sampling and smoothing. It
      broadcasts over the leading axes like a torch distribution's ``log_prob``:
      ``x_prev: [*batch, N, *event]`` with ``x: [*batch, 1, *event]`` gives ``[*batch, N]``
      (one new state against every previous particle);
    - ``nfe(t) -> int``: network evaluations per particle spent by step ``t``;
    - ``autograd_free = True``: a promise that ``M0``, ``M`` and ``log_G`` never call
      autograd themselves (no gradients of rewards or scores inside a step). Called under
      ``torch.no_grad()`` without collectors or callback, :meth:`SMC.run
      <smcdiff.core.engine.SMC.run>` then runs its loop under ``torch.inference_mode``
      (about 10% less per-op overhead on small problems); the returned tensors are
      ordinary ones.
    """

    T: int

    def M0(
        self, num_particles: int, batch_shape: torch.Size, generator: torch.Generator | None
    ) -> Particles:
        """Draw ``[*batch, N, *event]`` initial particles."""
        ...

    def M(self, t: int, x_prev: Particles, generator: torch.Generator | None) -> Particles:
        """Propose ``x_t`` from (already resampled) ``x_{t-1}``, ``t >= 1``."""
        ...

    def log_G(self, t: int, x_prev: Particles | None, x: Particles) -> torch.Tensor:
        """Log-potential ``[*batch, N]``; ``x_prev`` is ``None`` at ``t = 0``."""
        ...


def has_transition_density(model: object) -> bool:
    """Whether ``model`` provides ``log_m`` (needed for backward sampling)."""
    return callable(getattr(model, "log_m", None))


def is_autograd_free(model: object) -> bool:
    """Whether ``model`` promises that its steps never call autograd (see the protocol)."""
    return getattr(model, "autograd_free", False) is True


def nfe_of_step(model: object, t: int) -> int:
    """Network evaluations per particle that ``model`` declares for step ``t`` (0 if none)."""
    fn = getattr(model, "nfe", None)
    return int(fn(t)) if callable(fn) else 0


def check_model(model: object) -> None:
    """Raise ``TypeError`` naming what is missing if ``model`` is not a Feynman-Kac model."""
    missing = [name for name in ("M0", "M", "log_G") if not callable(getattr(model, name, None))]
    if not hasattr(model, "T"):
        missing.append("T")
    if missing:
        raise TypeError(
            f"{type(model).__name__} is not a FeynmanKac model: missing {', '.join(missing)} "
            "(expected M0(N, batch_shape, generator), M(t, x_prev, generator), "
            "log_G(t, x_prev, x) and the number of steps T)"
        )
    T = model.T  # type: ignore[attr-defined]
    if not isinstance(T, int) or T < 1:
        raise ValueError(f"FeynmanKac model needs an integer number of steps T >= 1, got {T!r}")
