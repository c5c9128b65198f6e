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

import math
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


def _convert_with(out: Tensor, from_kind: str, to_kind: str, x: Tensor,
                  coef: Callable[[str], Any]) -> Tensor:
    """The conversion of :func:`convert` given the schedule at the evaluation time.

    ``coef(name)`` returns ``alpha``, ``sigma``, ``d_alpha`` or ``d_sigma`` at ``t``, ready to
    broadcast against ``x`` (a tensor ``[*tshape, 1, ..., 1]`` in ``x``'s dtype, or a Python
    float); it is only called for the quantities the conversion needs. No validation here.
    """
    if from_kind == to_kind:
        return out
    # Short paths that avoid dividing by alpha (exact either way).
    if from_kind == "eps" and to_kind == "score":
        return -out / coef("sigma")
    if from_kind == "score" and to_kind == "eps":
        return -coef("sigma") * out
    a = coef("alpha")
    s = coef("sigma")
    if from_kind == "eps":
        x0, eps = (x - s * out) / a, out
    elif from_kind == "x0":
        x0, eps = out, (x - a * out) / s
    elif from_kind == "score":
        x0, eps = (x + s * s * out) / a, -s * out
    elif from_kind == "velocity":
        da = coef("d_alpha")
        ds = coef("d_sigma")
        det = a * ds - da * s
        x0, eps = (ds * x - s * out) / det, (a * out - da * x) / det
    else:  # "v"
        n2 = a * a + s * s
        x0, eps = (a * x - s * out) / n2, (s * x + a * out) / n2
    if to_kind == "x0":
        return x0
    if to_kind == "eps":
        return eps
    if to_kind == "score":
        return -eps / s
    if to_kind == "velocity":
        return coef("d_alpha") * x0 + coef("d_sigma") * eps
    return a * eps - s * x0


def _process_coef(proc: NoiseProcess, t: Tensor, x: Tensor) -> Callable[[str], Tensor]:
    """``coef`` for :func:`_convert_with` from the process at (validated) times ``t``."""
    return lambda name: expand_to(getattr(proc, name)(t), x)


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
    return _convert_with(out, from_kind, to_kind, x, _process_coef(proc, tt, x))


def all_finite(t: Tensor) -> bool:
    """``True`` iff every entry of ``t`` is finite; one host synchronisation.

    A sum over a tensor with a NaN or an infinite entry is NaN or infinite (IEEE 754), so a
    finite sum proves every entry finite; only a non-finite sum (an entry that is not, or an
    overflow of the sum) falls back to the exact elementwise test. On CPU the sum is about
    5x cheaper than ``torch.isfinite(t).all()``.
    """
    if t.is_complex():
        return bool(torch.isfinite(t).all())
    if not t.is_floating_point():
        return True
    with torch.no_grad():
        if math.isfinite(t.sum().item()):
            return True
        return bool(torch.isfinite(t).all())


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
        out = self._raw(x, t, cond)
        if self.check_finite and not all_finite(out):
            raise self._nonfinite_error(out, x, t)
        return out

    def _raw(self, x: Tensor, t: float | Tensor, cond: dict[str, Any]) -> Tensor:
        """``net(x, t, **cond)``, counted, with its type and shape checked (not its values,
        nor ``t``: the caller has validated ``t``)."""
        out = self.net(x, t, **cond)
        self.nfe += 1
        if not isinstance(out, Tensor):
            raise TypeError(f"net must return a tensor, got {type(out).__name__} at t={t}")
        if out.shape != x.shape:
            raise ValueError(
                f"net output (kind {self.kind!r}) must have the shape of x {tuple(x.shape)}, "
                f"got {tuple(out.shape)} at {_describe_times(t, None)}"
            )
        return out

    def _nonfinite_error(self, out: Tensor, x: Tensor, t: float | Tensor) -> ValueError:
        """The error for a NaN or infinite ``out``, naming the (offending particles') time."""
        bad = None
        if isinstance(t, Tensor) and 0 < t.ndim <= x.ndim and \
                tuple(x.shape[: t.ndim]) == tuple(t.shape):
            bad = (~torch.isfinite(out)).reshape(*t.shape, -1).any(-1)
        return ValueError(
            f"net output (kind {self.kind!r}) contains NaN or inf at {_describe_times(t, bad)}"
        )

    def predict(self, x: Tensor, t: float | Tensor, kind: str, **cond: Any) -> Tensor:
        """The prediction of ``kind`` (one of :data:`KINDS`)."""
        _check_kind(kind, "kind")
        out = self(x, t, **cond)
        if type(self).__call__ is DiffusionModel.__call__:  # out: a tensor shaped like x
            tt = as_time(t, check_range=False)  # validated by __call__
            return _convert_with(out, self.kind, kind, x, _process_coef(self.process, tt, x))
        return convert(out, self.kind, kind, x, t, self.process)

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


__all__ = ["KINDS", "DiffusionModel", "all_finite", "convert"]
