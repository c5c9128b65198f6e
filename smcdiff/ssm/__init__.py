"""State-space models: models, bootstrap / guided Feynman-Kac filters, exact Kalman reference.

A :class:`StateSpaceModel` describes ``X_0 ~ p_0``, ``X_t | X_{t-1} ~ f_t``,
``Y_t | X_t ~ g_t`` for ``t = 0 .. T-1``; ``model.bootstrap(y)`` and ``model.guided(y, ...)``
turn it into a Feynman-Kac model that :func:`smcdiff.smc` filters, with the likelihood
``p(y_{0:T-1})`` as normalizer. :class:`LinearGaussian` has the exact reference
(:func:`kalman_filter`, :func:`rts_smoother`).

Example:
    >>> import torch, smcdiff as sd
    >>> model = sd.ssm.LinearGaussian.ar1(rho=0.9, sigma_x=1.0, sigma_y=1.0)
    >>> y = sd.ssm.lgssm_data(1.0).y                      # [100, 1]
    >>> res = sd.smc(model.bootstrap(y), 256, batch_shape=(8,),
    ...              generator=torch.Generator().manual_seed(0))
    >>> (res.log_z - sd.ssm.kalman_filter(model, y).log_z).shape
    torch.Size([8])
"""

from smcdiff.ssm.backward import (
    BACKWARD_SAMPLERS,
    BackwardSampler,
    ExactBackward,
    IMHBackward,
    RejectionBackward,
    backward_log_kernel,
    get_backward_sampler,
    transition_log_bound,
)
from smcdiff.ssm.datasets import lgssm_data, sv_data
from smcdiff.ssm.exact import (
    MLEResult,
    exact_log_likelihood,
    exact_mle,
    exact_score,
    expected_complete_log_likelihood,
    fisher_score_rts,
    sample_smoothing_paths,
)
from smcdiff.ssm.growth import Growth
from smcdiff.ssm.kalman import KalmanResult, SmootherResult, kalman_filter, rts_smoother
from smcdiff.ssm.learning import (
    FisherScore,
    LearningResult,
    ParameterScore,
    ProposalScore,
    flatten_params,
    markov_score_climbing,
    stochastic_approximation,
    unflatten_params,
)
from smcdiff.ssm.linear_gaussian import LinearGaussian
from smcdiff.ssm.model import BootstrapFK, GuidedFK, SSMData, StateSpaceModel
from smcdiff.ssm.ppg import PPGResult, initial_path, ppg, ppg_run, ppg_sweep
from smcdiff.ssm.smoothing import (
    Additive,
    AdditiveFunctional,
    ffbsi,
    ffbsm,
    ffbsm_update,
    paris,
    paris_update,
    weighted_estimate,
)
from smcdiff.ssm.stochastic_volatility import (
    StochasticVolatility,
    StochasticVolatilityBootstrap,
    StochasticVolatilityScore,
)

__all__ = [
    "BootstrapFK", "GuidedFK", "KalmanResult", "LinearGaussian", "SSMData", "SmootherResult",
    "StateSpaceModel", "StochasticVolatility", "StochasticVolatilityBootstrap",
    "StochasticVolatilityScore", "kalman_filter", "lgssm_data", "rts_smoother",
    "sv_data",
    # smoothing, particle Gibbs and learning
    "BACKWARD_SAMPLERS", "Additive", "AdditiveFunctional", "BackwardSampler", "ExactBackward",
    "FisherScore", "Growth", "IMHBackward", "LearningResult", "MLEResult", "PPGResult",
    "ParameterScore", "ProposalScore", "RejectionBackward", "backward_log_kernel",
    "exact_log_likelihood", "exact_mle", "exact_score", "expected_complete_log_likelihood",
    "ffbsi", "ffbsm", "ffbsm_update", "fisher_score_rts", "flatten_params",
    "get_backward_sampler", "initial_path", "markov_score_climbing", "paris", "paris_update",
    "ppg", "ppg_run", "ppg_sweep", "sample_smoothing_paths", "stochastic_approximation",
    "transition_log_bound", "unflatten_params", "weighted_estimate",
]
