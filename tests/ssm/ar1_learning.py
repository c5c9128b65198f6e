"""Shared pieces of the learning tests: the AR(1) linear Gaussian model in unconstrained
coordinates, its data, and a Gaussian Markov proposal q_phi with E_p[log q_phi] in closed form.

Not a test module (no ``test_`` prefix); imported by test_learning.py and test_ppg_learning.py.
"""

from __future__ import annotations

import math

import torch

from smcdiff.ssm import LinearGaussian, lgssm_data

f64 = torch.float64
SIGMA_0 = 1 / math.sqrt(1 - 0.81)  # the generating stationary std, held fixed while learning
T = 50  # length of the AR(1) series (the note's recipe with T = 50) in these tests


def build_ar1(p):
    """AR(1) in unconstrained coordinates (rho, log sigma_x, log sigma_y); sigma_0 fixed."""
    return LinearGaussian.ar1(p["rho"], torch.exp(p["log_sx"]), torch.exp(p["log_sy"]),
                              sigma_0=SIGMA_0)


def ar1_params(rho=0.9, log_sx=0.0, log_sy=0.0, dtype=f64):
    return {k: torch.tensor(v, dtype=dtype)
            for k, v in (("rho", rho), ("log_sx", log_sx), ("log_sy", log_sy))}


def ar1_data() -> torch.Tensor:
    """The note's AR(1) series with sigma_y = 1, ``[T, 1]``."""
    return lgssm_data(1.0, T=T).y


class GaussMarkovQ:
    """q_phi: x_0 ~ N(mu0, e^{2 ls0}), x_t | x_{t-1} ~ N(a x_{t-1} + b, e^{2 ls})."""

    def __init__(self, p):
        self.p = p

    def prior(self):
        p = self.p
        return torch.distributions.Independent(
            torch.distributions.Normal(p["mu0"].reshape(1), torch.exp(p["ls0"]).reshape(1)), 1)

    def transition(self, t, x_prev):
        p = self.p
        return torch.distributions.Independent(
            torch.distributions.Normal(p["a"] * x_prev + p["b"], torch.exp(p["ls"]).reshape(1)),
            1)


def expected_log_q(phi, m, P, C):
    """E_p[log q_phi(X)] in closed form from the smoothing moments (AR(1) regression)."""
    mu0, ls0, a, b, ls = phi
    e0 = P[0] + (m[0] - mu0) ** 2
    out = -0.5 * math.log(2 * math.pi) - ls0 - e0 / (2 * torch.exp(2 * ls0))
    ex, ey = m[:-1], m[1:]
    exx, eyy = P[:-1] + ex ** 2, P[1:] + ey ** 2
    exy = C + ex * ey
    sq = eyy - 2 * a * exy - 2 * b * ey + a * a * exx + 2 * a * b * ex + b * b
    n = len(ey)
    return out + n * (-0.5 * math.log(2 * math.pi) - ls) - sq.sum() / (2 * torch.exp(2 * ls))
