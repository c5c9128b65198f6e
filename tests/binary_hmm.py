"""The note's binary hidden Markov model (particle-smoothing note, section 6) and its exact
smoothing law by enumeration, shared by the conditional SMC and PPG invariance tests.

Not a test module; tests/conftest.py puts this folder on ``sys.path``.
"""

from __future__ import annotations

import itertools
import math

import torch
from helpers import gen
from scipy import stats


class BinaryHMM:
    """x_0 ~ Bernoulli(1/2) on {0, 1}, P(x_t = x_{t-1}) = 0.8, likelihood table g_t(x).

    As a Feynman-Kac model with proposal ``P(x_0 = 1) = q0``, ``P(stay) = q_stay``:
    ``G_0 = g_0 chi / q_0``, ``G_t = g_t m / q``. The bootstrap filter has ``q = m``; the
    guided one (``q0 = 0.3``, ``q_stay = 0.5``) has a ``G_t`` that depends on ``x_{t-1}``.
    """

    T = 3
    LIK = ((0.9, 0.1), (0.2, 0.8), (0.7, 0.3))
    STAY = 0.8

    def __init__(self, dtype=torch.float64, guided: bool = False):
        self.dtype = dtype
        self.q0 = 0.3 if guided else 0.5
        self.q_stay = 0.5 if guided else self.STAY
        self.log_lik = torch.tensor(self.LIK, dtype=dtype).log()

    def M0(self, N, batch_shape, generator):
        u = torch.rand(*batch_shape, N, generator=generator, dtype=self.dtype)
        return (u < self.q0).to(self.dtype)

    def M(self, t, x_prev, generator):
        u = torch.rand(x_prev.shape, generator=generator, dtype=self.dtype)
        return torch.where(u < self.q_stay, x_prev, 1 - x_prev)

    def _log_pair(self, p_stay, x_prev, x):
        return torch.where(x_prev == x, math.log(p_stay), math.log(1 - p_stay)).to(self.dtype)

    def log_G(self, t, x_prev, x):
        lg = self.log_lik[t][x.long()]
        if t == 0:
            log_q0 = torch.where(x == 1, math.log(self.q0), math.log(1 - self.q0))
            return lg + math.log(0.5) - log_q0.to(self.dtype)
        return lg + self._log_pair(self.STAY, x_prev, x) - self._log_pair(self.q_stay, x_prev, x)

    def log_m(self, t, x_prev, x):
        return self._log_pair(self.STAY, x_prev, x)


def posterior() -> torch.Tensor:
    """Exact smoothing distribution over the 8 paths, index ``4 x_0 + 2 x_1 + x_2``."""
    p = torch.zeros(8, dtype=torch.float64)
    for x in itertools.product((0, 1), repeat=3):
        w = 0.5
        for t in range(3):
            w *= BinaryHMM.LIK[t][x[t]]
            if t:
                w *= BinaryHMM.STAY if x[t] == x[t - 1] else 1 - BinaryHMM.STAY
        p[4 * x[0] + 2 * x[1] + x[2]] = w
    return p / p.sum()


def encode(paths: torch.Tensor) -> torch.Tensor:
    """Path codes from paths ``[3, *batch]`` with 0/1 states."""
    x = paths.round().long()
    return 4 * x[0] + 2 * x[1] + x[2]


def decode(codes: torch.Tensor, dtype=torch.float64) -> torch.Tensor:
    return torch.stack([(codes >> 2) & 1, (codes >> 1) & 1, codes & 1]).to(dtype)


def posterior_draws(batch_shape, seed: int, dtype=torch.float64) -> torch.Tensor:
    n = math.prod(batch_shape)
    codes = torch.multinomial(posterior(), n, replacement=True, generator=gen(seed))
    return decode(codes, dtype).reshape(3, *batch_shape)


def chi2_pvalue(paths: torch.Tensor, p: torch.Tensor | None = None) -> float:
    p = posterior() if p is None else p
    counts = torch.bincount(encode(paths).reshape(-1), minlength=8).double()
    return float(stats.chisquare(counts.numpy(), (counts.sum() * p).numpy()).pvalue)
