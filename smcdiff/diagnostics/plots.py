"""Plots of SMC diagnostics: ESS traces and weighted 2-D particle clouds.

matplotlib is optional (the ``[diag]`` extra) and imported when a plot is drawn. Every
function draws on ``ax`` (a new figure's axes when ``None``) and returns the Axes.
"""

from __future__ import annotations

from typing import Any

import torch

from smcdiff.core.engine import SMCResult
from smcdiff.core.weights import normalize

_INSTALL_HINT = (
    "smcdiff.diagnostics plots need matplotlib; install it with "
    "`pip install 'smcdiff[diag]'` (or `pip install matplotlib`)"
)


def _axes(ax: Any) -> Any:
    try:
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError(_INSTALL_HINT) from err
    if ax is None:
        _, ax = plt.subplots()
    return ax


def plot_ess(
    result: SMCResult,
    ax: Any = None,
    *,
    threshold: float | None = None,
    color: str = "C0",
) -> Any:
    """ESS trace ``ESS_t / N`` against the SMC step ``t``, resampling steps marked.

    ``result.ess: [T, *batch]`` is the ESS ``1 / sum_i W_i^2`` after each step's
    reweighting and ``result.resampled: [T, *batch]`` whether step ``t`` resampled before
    moving. A single run is drawn as one line with a marker at every step that resampled;
    for a batched result each member is drawn thinly (same colour, low alpha) with its own
    markers, plus the median over members as a thick line.

    Args:
        result: an :class:`~smcdiff.core.engine.SMCResult`.
        ax: matplotlib Axes to draw on; a new figure when ``None``.
        threshold: optional ESS fraction drawn as a dashed horizontal line (e.g. the
            adaptive-resampling threshold 0.5).
        color: line colour.

    Returns:
        The matplotlib Axes.
    """
    if not isinstance(result, SMCResult):
        raise TypeError(f"result must be an SMCResult, got {type(result).__name__}")
    ax = _axes(ax)
    N = result.log_w.shape[-1]
    T = result.ess.shape[0]
    frac = (result.ess.detach().double() / N).reshape(T, -1).cpu()  # [T, B]
    res = result.resampled.detach().reshape(T, -1).cpu()  # [T, B]
    B = frac.shape[1]
    steps = torch.arange(T)
    batched = B > 1
    lw, alpha = (0.7, 0.35) if batched else (1.5, 1.0)
    for b in range(B):  # plotting: one artist per member is unavoidable
        ax.plot(steps.numpy(), frac[:, b].numpy(), color=color, lw=lw, alpha=alpha,
                label="ESS / N" if b == 0 and not batched else None)
    mark = res.nonzero()
    if mark.numel():
        t_idx, b_idx = mark[:, 0], mark[:, 1]
        ax.plot(t_idx.numpy(), frac[t_idx, b_idx].numpy(), linestyle="none", marker="v",
                color="C3", ms=3 if batched else 5, alpha=alpha, label="resampled")
    if batched:
        ax.plot(steps.numpy(), frac.median(1).values.numpy(), color=color, lw=2.0,
                label=f"median of {B} runs")
    if threshold is not None:
        ax.axhline(threshold, color="gray", ls="--", lw=1, label=f"threshold {threshold:g}")
    ax.set_xlabel("SMC step t")
    ax.set_ylabel("ESS / N")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"Effective sample size (N = {N})")
    ax.legend(loc="lower left", fontsize="small")
    return ax


def plot_particles_2d(
    x: torch.Tensor,
    log_w: torch.Tensor | None = None,
    ax: Any = None,
    *,
    size: float = 12.0,
    cmap: str = "viridis",
) -> Any:
    """Scatter of 2-D particles ``x: [N, 2]``, sized and coloured by their weights.

    With ``log_w: [N]`` each point's area is ``size * N W_i`` (so the mean area is
    ``size``) and its colour is ``W_i``; without weights all points are equal.

    Args:
        x: particle positions ``[N, 2]``.
        log_w: optional unnormalized log-weights ``[N]``.
        ax: matplotlib Axes; a new figure when ``None``.
        size: mean marker area in points^2.
        cmap: colour map for the weights.

    Returns:
        The matplotlib Axes.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[-1] != 2:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a tensor of shape [N, 2], got {shape}")
    N = x.shape[0]
    ax = _axes(ax)
    xy = x.detach().double().cpu()
    if log_w is None:
        ax.scatter(xy[:, 0].numpy(), xy[:, 1].numpy(), s=size, alpha=0.6, lw=0)
    else:
        if not isinstance(log_w, torch.Tensor) or tuple(log_w.shape) != (N,):
            shape = tuple(log_w.shape) if isinstance(log_w, torch.Tensor) else type(log_w)
            raise ValueError(f"log_w must be a tensor of shape [N] = ({N},), got {shape}")
        W = normalize(log_w.detach().double()).cpu()
        order = torch.argsort(W)  # heavy particles drawn last, on top
        sc = ax.scatter(xy[order, 0].numpy(), xy[order, 1].numpy(),
                        s=(size * N * W[order]).numpy(), c=W[order].numpy(), cmap=cmap,
                        alpha=0.8, lw=0)
        ax.figure.colorbar(sc, ax=ax, label="normalized weight W")
    ax.set_xlabel("x[0]")
    ax.set_ylabel("x[1]")
    ax.set_aspect("equal", adjustable="datalim")
    return ax
