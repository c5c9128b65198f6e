"""Core SMC primitives: particles, log-weights, resampling, Feynman-Kac models, engines.

Nothing here knows about diffusion models or any particular model.
"""

from smcdiff.core.collectors import Moments, Summary, weighted_mean
from smcdiff.core.csmc import (
    CONDITIONAL_SCHEMES,
    CSMCResult,
    ParticleGibbs,
    ParticleGibbsResult,
    backward_sample,
    conditional_smc,
    csmc_kernel,
    run_particle_gibbs,
    trace_path,
)
from smcdiff.core.engine import SMC, SMCResult, SMCState, StepInfo, resample_where, reweight, smc
from smcdiff.core.feynman_kac import FeynmanKac, check_model, has_transition_density
from smcdiff.core.genealogy import gather_paths, num_distinct_ancestors, trace_lineage
from smcdiff.core.random import sample
from smcdiff.core.resampling import (
    RESAMPLERS,
    Resampler,
    ancestors_from_counts,
    get_resampler,
    killing,
    multinomial,
    resample,
    residual,
    ssp,
    stratified,
    systematic,
)
from smcdiff.core.tempering import (
    MALA,
    AdaptiveTempering,
    RandomWalkMetropolis,
    TemperedResult,
    TemperedTarget,
    TemperingInfo,
    TemperingState,
    next_temperature,
    tempered_smc,
)
from smcdiff.core.tree import take_particles, tree_map
from smcdiff.core.triggers import Always, AtSteps, ESSTrigger, Every, Never, Window, make_trigger
from smcdiff.core.weights import (
    DegenerateWeightsError,
    check_weights,
    conditional_ess,
    ess,
    is_degenerate,
    log_mean_exp,
    log_normalize,
    normalize,
)

__all__ = [
    "CONDITIONAL_SCHEMES", "CSMCResult", "ParticleGibbs", "ParticleGibbsResult",
    "backward_sample", "conditional_smc", "csmc_kernel", "run_particle_gibbs", "trace_path",
    "MALA", "AdaptiveTempering", "RandomWalkMetropolis", "TemperedResult", "TemperedTarget",
    "TemperingInfo", "TemperingState", "next_temperature", "tempered_smc", "weighted_mean",
    "RESAMPLERS", "SMC", "Always", "AtSteps", "DegenerateWeightsError", "ESSTrigger", "Every",
    "FeynmanKac", "Moments", "Never", "Resampler", "SMCResult", "SMCState", "StepInfo",
    "Summary", "Window", "ancestors_from_counts", "check_model", "check_weights",
    "conditional_ess", "ess", "gather_paths", "get_resampler", "has_transition_density",
    "is_degenerate", "killing", "log_mean_exp", "log_normalize", "make_trigger", "multinomial",
    "normalize", "num_distinct_ancestors", "resample", "resample_where", "residual", "reweight",
    "sample", "smc", "ssp", "stratified", "systematic", "take_particles", "trace_lineage",
    "tree_map",
]
