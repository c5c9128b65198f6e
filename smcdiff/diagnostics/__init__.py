"""Diagnostics that read SMC results: ESS summaries, Pareto-k̂ / PSIS, ArviZ export, plots.

Nothing in :mod:`smcdiff.core` imports this package. ``pareto_khat``, ``psis_smooth`` and
``ess_summary`` need only torch; ``to_inference_data`` needs ArviZ and the plots need
matplotlib (both in the ``[diag]`` extra), imported when called.
"""

from smcdiff.diagnostics.arviz import ESSSummary, ess_summary, to_inference_data
from smcdiff.diagnostics.plots import plot_ess, plot_particles_2d
from smcdiff.diagnostics.psis import (
    gpd_quantile,
    khat_threshold,
    pareto_khat,
    psis_smooth,
    tail_length,
)

__all__ = [
    "ESSSummary", "ess_summary", "gpd_quantile", "khat_threshold", "pareto_khat",
    "plot_ess", "plot_particles_2d", "psis_smooth", "tail_length", "to_inference_data",
]
