"""Analytical teleportation: skip the early, noisy part of sampling with the Gaussian solution.

Wang & Vastola (2023), *The Hidden Linear Structure in Score-Based Models and its
Application* (arXiv 2311.10892): at high noise the score of a trained model is close to the
score of the Gaussian with the data's mean and covariance, and for Gaussian data the
probability-flow ODE has the closed-form solution (any process ``x_t = alpha_t x0 +
sigma_t eps``, diffusion time ``t`` in [0, 1], 0 = data, 1 = noise)::

    x_t = alpha_t mu + sum_k sqrt(v_k(t) / v_k(T)) u_k u_k^T (x_T - alpha_T mu),
    v_k(t) = alpha_t^2 d_k + sigma_t^2,   Sigma = sum_k d_k u_k u_k^T.

Teleportation replaces the solver's steps from ``T`` down to ``t_skip`` by this map, then
any solver continues from ``t_skip`` (in the paper, a fresh Karras grid of ``N - skip``
steps starting at ``sigma_skip``; they report 15-30% fewer NFE at equal quality).

Exactness: if the data *are* Gaussian ``N(mu, Sigma)`` the teleported state equals the exact
PF-ODE state at ``t_skip`` (to round-off), for any ``t_skip``; for other data it is an
approximation whose error grows as ``t_skip`` decreases (the Gaussian score is accurate
only at high noise). Use :meth:`Gaussian.from_samples` for a dataset's mean and
covariance; for images stored in [0, 1] but modelled in [-1, 1], rescale first
(``mean * 2 - 1``, ``cov * 4``).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from smcdiff.gaussian.distributions import Gaussian

__all__ = ["teleport"]


def teleport(x_T: Tensor, T: Any, t_skip: Any, process: Any, mean: Tensor | Gaussian,
             cov: Tensor | None = None) -> Tensor:
    """Move noise ``x_T`` at time ``T`` to time ``t_skip <= T`` along the Gaussian PF-ODE.

    Args:
        x_T: states ``[*batch, d]`` at diffusion time ``T`` (usually ``T = 1``, pure noise).
        T, t_skip: diffusion times (0 = data, 1 = noise): Python floats or tensors whose
            shape prefixes ``x_T``'s batch shape; a sampler then continues from ``t_skip``.
        process: a ``NoiseProcess`` (or its name).
        mean, cov: the Gaussian approximation ``N(mean [d], cov [d, d])`` of the data, e.g.
            the dataset's sample mean and covariance; alternatively pass a
            :class:`Gaussian` as ``mean`` and leave ``cov=None``.

    Returns:
        ``[*batch, d]``: ``Gaussian(mean, cov).pf_ode_solution(x_T, T, t_skip, process)``;
        exact for Gaussian data (see the module docstring).
    """
    if isinstance(mean, Gaussian):
        if cov is not None:
            raise ValueError("cov: pass either a Gaussian as `mean` or (mean, cov), not both")
        g = mean
    else:
        if cov is None:
            raise ValueError("cov: the data covariance [d, d] is required with a mean tensor")
        g = Gaussian(mean, cov)
    if isinstance(T, (int, float)) and isinstance(t_skip, (int, float)) and t_skip > T:
        raise ValueError(f"t_skip: expected a time <= T = {T} (teleport towards data), "
                         f"got {t_skip}")
    return g.pf_ode_solution(x_T, T, t_skip, process)
