"""Model parametrizations and their exact conversions, and the :class:`DiffusionModel` wrapper.

For ``x = alpha_t x0 + sigma_t eps`` at diffusion time ``t`` (0 = data, 1 = noise), a network
may predict any of five equivalent quantities (all ``[*batch, N, *event]`` like ``x``):

=============  =============================================  =================================
kind           definition                                     reference
=============  =============================================  =================================
``"eps"``      noise ``eps``                                  Ho et al. 2020
``"x0"``       data / denoiser ``x0 = E[x_0 | x_t]``          Karras et al. 2022 (``D``)
``"score"``    ``grad log p_t(x) = -eps / sigma``             Song et al. 2021
``"velocity"`` PF-ODE velocity ``u = alpha' x0 + sigma' eps`` Lipman et al. 2022; Liu et al. 2022
``"v"``        v-prediction ``v = alpha eps - sigma x0``      Salimans & Ho 2022
=============  =============================================  =================================

Every conversion goes through the pair ``(x0, eps)``, recovered exactly from ``x`` and the
prediction by solving the 2x2 linear system ``x = alpha x0 + sigma eps`` together with

- ``score``:    ``eps = -sigma s``, ``x0 = (x + sigma^2 s) / alpha``;
- ``velocity``: ``x0 = (sigma' x - sigma u) / det``, ``eps = (alpha u - alpha' x) / det``,
  ``det = alpha sigma' - alpha' sigma = alpha^2 d/dt (sigma/alpha) > 0``
  (Ma et al. 2024, SiT; inference-time-scaling note §1);
- ``v``:        ``x0 = (alpha x - sigma v) / (alpha^2 + sigma^2)``,
  ``eps = (sigma x + alpha v) / (alpha^2 + sigma^2)`` (any process, not only VP).

Conversions need ``0 < alpha`` and ``0 < sigma`` at ``t`` (i.e. ``0 < t < 1`` for most
processes); at ``t = 0`` or where ``alpha = 0`` they divide by zero.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from smcdiff.diffusion.processes import NoiseProcess, as_time, expand_to, get_process

KINDS = ("eps", "x0", "score", "velocity", "v")


def _check_kind(kind: Any, name: str) -> str:
    if not isinstance(kind, str) or kind not in KINDS:
        raise ValueError(f"unknown {name} {kind!r}; expected one of {KINDS}")
    return kind


def _x0_eps(
    out: Tensor, kind: str, x: Tensor, t: Tensor, proc: NoiseProcess
) -> tuple[Tensor, Tensor]:
    a = expand_to(proc.alpha(t), x)
    s = expand_to(proc.sigma(t), x)
    if kind == "eps":
        return (x - s * out) / a, out
    if kind == "x0":
        return out, (x - a * out) / s
    if kind == "score":
        return (x + s * s * out) / a, -s * out
    if kind == "velocity":
        da = expand_to(proc.d_alpha(t), x)
        ds = expand_to(proc.d_sigma(t), x)
        det = a * ds - da * s
        return (ds * x - s * out) / det, (a * out - da * x) / det
    # "v"
    n2 = a * a + s * s
    return (a * x - s * out) / n2, (s * x + a * out) / n2


def convert(
    out: Tensor,
    from_kind: str,
    to_kind: str,
    x: Tensor,
    t: float | Tensor,
    process: NoiseProcess | str,
) -> Tensor:
    """Convert a model prediction between parametrizations (exact; see module docstring).

    Args:
        out: the prediction of kind ``from_kind``, ``[*batch, N, *event]``.
        from_kind, to_kind: one of ``"eps"``, ``"x0"``, ``"score"``, ``"velocity"``, ``"v"``.
        x: the noisy state ``x_t``, same shape as ``out``.
        t: diffusion time (0 = data, 1 = noise), a float or per-particle times whose shape is
            a prefix of ``x.shape``.
        process: the noising process (or its name).

    Returns:
        the prediction of kind ``to_kind``, shape of ``x``. ``from_kind == to_kind`` returns
        ``out`` itself.
    """
    _check_kind(from_kind, "from_kind")
    _check_kind(to_kind, "to_kind")
    if not isinstance(out, Tensor) or not isinstance(x, Tensor):
        raise TypeError("out and x must be tensors")
    if out.shape != x.shape:
        raise ValueError(
            f"out (kind {from_kind!r}) must have the shape of x {tuple(x.shape)}, "
            f"got {tuple(out.shape)}"
        )
    proc = get_process(process)
    tt = as_time(t)
    if from_kind == to_kind:
        return out
    # Short paths that avoid dividing by alpha (exact either way).
    if {from_kind, to_kind} == {"eps", "score"}:
        s = expand_to(proc.sigma(tt), x)
        return -out / s if from_kind == "eps" else -s * out
    x0, eps = _x0_eps(out, from_kind, x, tt, proc)
    if to_kind == "x0":
        return x0
    if to_kind == "eps":
        return eps
    if to_kind == "score":
        return -eps / expand_to(proc.sigma(tt), x)
    if to_kind == "velocity":
        return expand_to(proc.d_alpha(tt), x) * x0 + expand_to(proc.d_sigma(tt), x) * eps
    a = expand_to(proc.alpha(tt), x)
    s = expand_to(proc.sigma(tt), x)
    return a * eps - s * x0


def _describe_times(t: Any, bad: Tensor | None) -> str:
    """Human-readable times for an error message (the offending particles' times if known)."""
    if not isinstance(t, Tensor):
        return f"t={t}"
    if t.numel() == 1:
        return f"t={t.item()}"
    if bad is not None and bad.shape == t.shape:
        vals = t[bad].flatten()[:5].tolist()
        return f"t={vals} (per-particle times of the offending entries)"
    return f"t in [{t.min().item()}, {t.max().item()}]"


class DiffusionModel:
    """Wrap any network ``net(x, t, **cond)`` predicting ``kind`` into all parametrizations.

    ``net`` takes ``x: [*batch, N, *event]`` and diffusion time ``t`` (0 = data, 1 = noise;
    passed through unchanged: a float or per-particle times ``[*batch, N]``) and returns a
    prediction of ``kind`` with ``x``'s shape. :meth:`eps`, :meth:`x0`, :meth:`score`,
    :meth:`velocity`, :meth:`v` and :meth:`predict` convert it exactly with :func:`convert`.

    Every network call increments ``nfe`` by one (per call, whatever the batch size).
    With ``check_finite=True`` (default) a NaN or infinite output raises ``ValueError``
    naming the time ``t``; this synchronises with the device once per call, so
    ``check_finite=False`` is available for accelerator runs that check elsewhere.
    """

    def __init__(
        self,
        net: Callable[..., Tensor],
        process: NoiseProcess | str,
        kind: str = "eps",
        *,
        check_finite: bool = True,
    ) -> None:
        if not callable(net):
            raise TypeError(f"net must be callable net(x, t, **cond), got {type(net).__name__}")
        self.net = net
        self.process: NoiseProcess = get_process(process)
        self.kind: str = _check_kind(kind, "kind")
        self.check_finite = bool(check_finite)
        self.nfe: int = 0

    def __repr__(self) -> str:
        return f"DiffusionModel(net={self.net!r}, process={self.process!r}, kind={self.kind!r})"

    def reset_nfe(self) -> None:
        """Set the network-call counter ``nfe`` back to 0."""
        self.nfe = 0

    def __call__(self, x: Tensor, t: float | Tensor, **cond: Any) -> Tensor:
        """Raw network output (of kind ``self.kind``) at ``x`` and diffusion time ``t``."""
        as_time(t)  # validates t in [0, 1]
        out = self.net(x, t, **cond)
        self.nfe += 1
        if not isinstance(out, Tensor):
            raise TypeError(f"net must return a tensor, got {type(out).__name__} at t={t}")
        if out.shape != x.shape:
            raise ValueError(
                f"net output (kind {self.kind!r}) must have the shape of x {tuple(x.shape)}, "
                f"got {tuple(out.shape)} at {_describe_times(t, None)}"
            )
        if self.check_finite:
            finite = torch.isfinite(out)
            if not bool(finite.all()):
                bad = None
                if (
                    isinstance(t, Tensor)
                    and 0 < t.ndim <= x.ndim
                    and tuple(x.shape[: t.ndim]) == tuple(t.shape)
                ):
                    bad = (~finite).reshape(*t.shape, -1).any(-1)
                raise ValueError(
                    f"net output (kind {self.kind!r}) contains NaN or inf at "
                    f"{_describe_times(t, bad)}"
                )
        return out

    def predict(self, x: Tensor, t: float | Tensor, kind: str, **cond: Any) -> Tensor:
        """The prediction of ``kind`` (one of :data:`KINDS`)."""
        _check_kind(kind, "kind")
        return convert(self(x, t, **cond), self.kind, kind, x, t, self.process)

    def eps(self, x: Tensor, t: float | Tensor, **cond: Any) -> Tensor:
        """Noise prediction ``eps_hat = (x - alpha x0_hat) / sigma``."""
        return self.predict(x, t, "eps", **cond)

    def x0(self, x: Tensor, t: float | Tensor, **cond: Any) -> Tensor:
        """Data prediction (denoiser) ``x0_hat = E[x_0 | x_t = x]``."""
        return self.predict(x, t, "x0", **cond)

    def score(self, x: Tensor, t: float | Tensor, **cond: Any) -> Tensor:
        """Score ``grad_x log p_t(x) = -eps_hat / sigma``."""
        return self.predict(x, t, "score", **cond)

    def velocity(self, x: Tensor, t: float | Tensor, **cond: Any) -> Tensor:
        """Probability-flow ODE velocity ``dx/dt = alpha' x0_hat + sigma' eps_hat``."""
        return self.predict(x, t, "velocity", **cond)

    def v(self, x: Tensor, t: float | Tensor, **cond: Any) -> Tensor:
        """v-prediction ``alpha eps_hat - sigma x0_hat``."""
        return self.predict(x, t, "v", **cond)


__all__ = ["KINDS", "DiffusionModel", "convert"]
