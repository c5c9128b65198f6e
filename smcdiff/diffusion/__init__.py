"""smcdiff.diffusion: noising processes, time grids, parametrizations and solvers.

Diffusion time t runs in [0, 1]: t = 0 is data, t = 1 is noise; samplers go from 1 to 0.
``x_t = alpha_t x_0 + sigma_t eps`` and ``lambda = log(alpha_t / sigma_t)``.
"""

from smcdiff.diffusion.grids import GRID_KINDS, check_grid, time_grid
from smcdiff.diffusion.parametrization import KINDS, DiffusionModel, convert
from smcdiff.diffusion.processes import (
    EDM,
    VE,
    VP,
    CosineVP,
    CustomProcess,
    LinearInterpolant,
    NoiseProcess,
    TrigInterpolant,
    as_time,
    expand_to,
    get_process,
)
from smcdiff.diffusion.sample import SampleResult, sample
from smcdiff.diffusion.solvers import (
    DDIM,
    DDPM,
    DEIS,
    IPNDM,
    SOLVERS,
    DPMSolver,
    DPMSolverPP2M,
    DPMSolverPP2S,
    DPMSolverPP3M,
    Euler,
    EulerMaruyama,
    FixedNoise,
    GeneratorNoise,
    Heun,
    History,
    NFETooSmallError,
    NoiseSampler,
    PerParticleNoise,
    SDEDPMSolverPP1,
    SDEDPMSolverPP2M,
    Solver,
    SolverGrid,
    Transition,
    UniPC,
    fast_orders,
    get_solver,
    log_transition_density,
    prepare_grid,
    step,
    transition,
)

# ----------------------------------------------------------------------------------------

__all__ = [
    "EDM",
    "GRID_KINDS",
    "KINDS",
    "VE",
    "VP",
    "CosineVP",
    "CustomProcess",
    "DiffusionModel",
    "LinearInterpolant",
    "NoiseProcess",
    "TrigInterpolant",
    "as_time",
    "check_grid",
    "convert",
    "expand_to",
    "get_process",
    "time_grid",
    "DDIM", "DDPM", "DEIS", "IPNDM", "SOLVERS", "DPMSolver", "DPMSolverPP2M", "DPMSolverPP2S",
    "DPMSolverPP3M", "Euler", "EulerMaruyama", "FixedNoise", "GeneratorNoise", "Heun", "History",
    "NoiseSampler", "PerParticleNoise", "SDEDPMSolverPP1", "SDEDPMSolverPP2M", "SampleResult",
    "Solver", "SolverGrid", "Transition", "UniPC", "get_solver", "log_transition_density",
    "prepare_grid", "sample", "step", "transition", "NFETooSmallError", "fast_orders",
]
