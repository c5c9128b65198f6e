"""Export of SMC results to ArviZ, and a torch-only ESS summary.

ArviZ is optional (the ``[diag]`` extra) and imported only inside
:func:`to_inference_data`. The conversion goes through ``az.from_dict``, which exists in
both ArviZ lines: 0.x (``from_dict(posterior=..., sample_stats=...)`` returning
``InferenceData``) and 1.x (``from_dict({"posterior": ..., ...})`` returning an
``xarray.DataTree``); nothing else from ArviZ is used.

A weighted particle approximation ``sum_i W_i delta_{x_i}`` is turned into equally
weighted draws by resampling (multinomial by default, so the draws are iid given the
particles and their order carries no structure), and each batch member becomes one
"chain". The per-run diagnostics a user needs to trust the draws (final ESS
``1 / sum W_i^2``, ``log Z_hat``, Pareto-k̂ of the final weights, Vehtari et al. 2024)
travel with them in ``sample_stats`` and in the group attributes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from smcdiff.core.engine import SMCResult
from smcdiff.core.resampling import Resampler, get_resampler
from smcdiff.core.tree import take_particles
from smcdiff.core.weights import ess as _ess
from smcdiff.core.weights import log_normalize
from smcdiff.diagnostics.psis import khat_threshold, pareto_khat

_INSTALL_HINT = (
    "smcdiff.diagnostics.to_inference_data needs arviz; install it with "
    "`pip install 'smcdiff[diag]'` (or `pip install arviz`)"
)


def _import_arviz():
    try:
        import arviz as az
    except ImportError as err:
        raise ImportError(_INSTALL_HINT) from err
    return az


def _check_result(result: Any) -> SMCResult:
    if not isinstance(result, SMCResult):
        raise TypeError(f"result must be an SMCResult, got {type(result).__name__}")
    return result


# ----------------------------------------------------------------------- ESS summary


@dataclass(frozen=True)
class ESSSummary:
    """Per-run weight diagnostics of an SMC result; every tensor is ``[*batch]``.

    Attributes:
        num_particles: ``N``.
        num_steps: ``T``.
        ess: final ESS ``1 / sum_i W_i^2`` (Kong, Liu & Wong 1994).
        ess_fraction: ``ess / N``.
        min_ess_fraction: smallest ESS / N over the steps.
        mean_ess_fraction: mean ESS / N over the steps.
        num_resampled: number of steps that resampled.
        log_z: log-normalizer estimate ``log Z_hat``.
        pareto_k: Pareto-k̂ of the final weights (Vehtari et al. 2024).
        khat_threshold: ``min(1 - 1/log10 N, 0.7)``; below it the final weights are fine.
    """

    num_particles: int
    num_steps: int
    ess: torch.Tensor
    ess_fraction: torch.Tensor
    min_ess_fraction: torch.Tensor
    mean_ess_fraction: torch.Tensor
    num_resampled: torch.Tensor
    log_z: torch.Tensor
    pareto_k: torch.Tensor
    khat_threshold: float

    @property
    def reliable(self) -> torch.Tensor:
        """``[*batch]``: Pareto-k̂ below the sample-size dependent threshold."""
        return self.pareto_k < self.khat_threshold

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values (floats or nested lists), e.g. for logging or JSON."""
        out: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            v = getattr(self, name)
            out[name] = v.tolist() if isinstance(v, torch.Tensor) else v
        out["reliable"] = self.reliable.tolist()
        return out

    def __str__(self) -> str:
        rows = [
            f"SMC weights: N={self.num_particles}, T={self.num_steps}, "
            f"k-hat threshold={self.khat_threshold:.3f}",
            "| member | ESS/N | min ESS/N | resampled | log Z | k-hat |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        flat = [getattr(self, n).reshape(-1).tolist() for n in (
            "ess_fraction", "min_ess_fraction", "num_resampled", "log_z", "pareto_k")]
        for b, (e, me, r, lz, k) in enumerate(zip(*flat)):
            rows.append(f"| {b} | {e:.3f} | {me:.3f} | {int(r)} | {lz:.4g} | {k:.3f} |")
        return "\n".join(rows)


def ess_summary(result: SMCResult) -> ESSSummary:
    """Summarise the weights of an SMC run: final and minimum ESS, resampling count,
    ``log Z_hat`` and the Pareto-k̂ of the final weights, per batch member.

    Needs only torch. ``result.ess`` is ``[T, *batch]``, ``result.log_w`` ``[*batch, N]``.
    """
    result = _check_result(result)
    N = result.log_w.shape[-1]
    ess_final = _ess(result.log_w)
    trace = result.ess / N
    return ESSSummary(
        num_particles=N,
        num_steps=int(result.ess.shape[0]),
        ess=ess_final,
        ess_fraction=ess_final / N,
        min_ess_fraction=trace.min(0).values,
        mean_ess_fraction=trace.mean(0),
        num_resampled=result.resampled.sum(0),
        log_z=result.log_z,
        pareto_k=pareto_khat(result.log_w),
        khat_threshold=khat_threshold(N),
    )


# ------------------------------------------------------------------------- ArviZ


def _named_leaves(particles: Any, var_name: str) -> dict[str, torch.Tensor]:
    """Variable name -> tensor leaf for a tensor, dict, NamedTuple, tuple or list."""
    if isinstance(particles, torch.Tensor):
        return {var_name: particles}
    if isinstance(particles, dict):
        items = [(str(k), v) for k, v in particles.items()]
    elif isinstance(particles, tuple) and hasattr(particles, "_fields"):
        items = list(zip(particles._fields, particles))
    elif isinstance(particles, (tuple, list)):
        items = [(f"{var_name}_{i}", v) for i, v in enumerate(particles)]
    else:
        raise TypeError(
            f"result.particles must be a tensor or a dict / tuple of tensors, got "
            f"{type(particles).__name__}"
        )
    out: dict[str, torch.Tensor] = {}
    for name, v in items:
        if isinstance(v, torch.Tensor):
            out[name] = v
        else:
            out.update(_named_leaves(v, name))
    return out


def to_inference_data(
    result: SMCResult,
    num_draws: int | None = None,
    generator: torch.Generator | None = None,
    var_name: str = "x",
    *,
    scheme: str | Resampler = "multinomial",
) -> Any:
    """Convert an :class:`~smcdiff.core.engine.SMCResult` to ArviZ data.

    The weighted particles ``x: [*batch, N, *event]`` with ``log_w: [*batch, N]`` are
    resampled into ``D`` equally weighted draws per batch member; the batch axes are
    flattened into ArviZ's ``chain`` axis (``batch_shape == ()`` gives one chain) and the
    draws form the ``draw`` axis, so ``posterior[var_name]`` is ``[chain, draw, *event]``.

    Groups:
        posterior: one variable per particle leaf (``var_name`` for a tensor; the keys of a
            dict / fields of a NamedTuple; ``{var_name}_{i}`` for a tuple).
        sample_stats ``[chain, draw]``: ``particle`` (index of the particle each draw
            copies), ``log_weight`` (its normalized log-weight ``log W_i``), and the
            per-run ``ess`` (final ESS), ``log_z`` and ``pareto_k`` repeated along ``draw``.
        attributes of both groups: ``inference_library="smcdiff"``, ``num_particles``,
            ``num_steps``, ``nfe``, ``khat_threshold`` and the per-chain lists ``ess``,
            ``log_z``, ``pareto_k``.

    Args:
        result: an SMC result.
        num_draws: draws per chain ``D`` (default ``N``).
        generator: randomness of the resampling.
        var_name: name of the posterior variable for tensor particles.
        scheme: resampling scheme used to make the draws (default ``"multinomial"``:
            iid draws; ``"systematic"`` has lower variance but sorted, dependent draws).

    Returns:
        ``arviz.InferenceData`` (ArviZ 0.x) or ``xarray.DataTree`` (ArviZ 1.x).

    Raises:
        ImportError: ArviZ is not installed (install the ``[diag]`` extra).
    """
    result = _check_result(result)
    az = _import_arviz()
    log_w = result.log_w
    batch, N = log_w.shape[:-1], log_w.shape[-1]
    D = N if num_draws is None else num_draws
    if not isinstance(D, int) or D < 1:
        raise ValueError(f"num_draws must be an integer >= 1, got {num_draws!r}")
    C = batch.numel()  # 1 for batch_shape ()
    if C == 0:
        raise ValueError(f"result has an empty batch {tuple(batch)}; nothing to convert")
    anc = get_resampler(scheme)(log_w, D, generator=generator)  # [*batch, D]
    draws = take_particles(result.particles, anc)
    posterior = {
        name: leaf.detach().reshape(C, D, *leaf.shape[len(batch) + 1 :]).cpu().numpy()
        for name, leaf in _named_leaves(draws, var_name).items()
    }

    summ = ess_summary(result)
    per_chain = {
        "ess": summ.ess.detach().reshape(C).double(),
        "log_z": result.log_z.detach().reshape(C).double(),
        "pareto_k": summ.pareto_k.detach().reshape(C).double(),
    }
    log_W = log_normalize(log_w.detach()).gather(-1, anc)
    sample_stats = {
        "particle": anc.reshape(C, D).cpu().numpy(),
        "log_weight": log_W.reshape(C, D).double().cpu().numpy(),
        **{k: v.unsqueeze(-1).expand(C, D).cpu().numpy() for k, v in per_chain.items()},
    }
    attrs = {
        "inference_library": "smcdiff",
        "num_particles": int(N),
        "num_steps": int(result.ess.shape[0]),
        "nfe": int(result.nfe),
        "khat_threshold": float(summ.khat_threshold),
        "resampling_scheme": get_resampler(scheme).name,
        **{k: [float(x) for x in v.tolist()] for k, v in per_chain.items()},
    }
    major = int(str(getattr(az, "__version__", "0")).split(".")[0] or 0)
    if major >= 1:
        return az.from_dict(
            {"posterior": posterior, "sample_stats": sample_stats},
            attrs={"posterior": dict(attrs), "sample_stats": dict(attrs)},
        )
    return az.from_dict(
        posterior=posterior,
        sample_stats=sample_stats,
        posterior_attrs=dict(attrs),
        sample_stats_attrs=dict(attrs),
    )
