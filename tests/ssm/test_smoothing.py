"""Smoothers of additive functionals and backward samplers against exact (Kalman / RTS) truth.

Model: ``LinearGaussian.ar1(0.9, 1, 1)`` with the note's data recipe at T = 50. Functional
(shape [2]): ``h = (sum_{t<n} x_t x_{t+1}, sum_t x_t^2)``, exact smoothed expectations
``sum_t C_t + m_t m_{t+1}`` and ``sum_t P_t + m_t^2`` from the RTS smoother. Every smoother
is run as a batch of R independent runs; the mean must lie within 4 standard errors of the
truth. N is large enough that the O(T / N) bias of the particle smoothers stays below one
standard error. The backward samplers are checked in isolation by an exact chi-square test
of their draws for fixed particles against the backward-kernel row.
"""

from __future__ import annotations

import math

import pytest
import torch
from helpers import gen
from scipy import stats

from smcdiff.ssm import LinearGaussian, lgssm_data, rts_smoother
from smcdiff.ssm.backward import (
    ExactBackward,
    IMHBackward,
    RejectionBackward,
    backward_log_kernel,
    get_backward_sampler,
    transition_log_bound,
)
from smcdiff.ssm.smoothing import Additive, ffbsi, ffbsm, paris

ALPHA = 1e-4
T = 50


def _step(t, x_prev, x):
    a = x_prev * x
    return torch.cat([a, (x * x).expand_as(a)], -1)


def _init(x0):
    return torch.cat([torch.zeros_like(x0), x0 * x0], -1)


H = Additive(_step, _init)


def setup(dtype=torch.float64):
    y = lgssm_data(1.0, T=T).y.to(dtype)
    model = LinearGaussian.ar1(0.9, 1.0, 1.0, dtype=dtype)
    sm = rts_smoother(model, y)
    m, P = sm.smoothed_mean[:, 0], sm.smoothed_cov[:, 0, 0]
    C = sm.lag_one_cov[:, 0, 0]
    truth = torch.stack([(C + m[:-1] * m[1:]).sum(), (P + m * m).sum()])
    return model.bootstrap(y), truth


FK, TRUTH = setup()


def assert_matches_truth(est: torch.Tensor, truth: torch.Tensor = TRUTH, k: float = 4.0):
    R = est.shape[0]
    mean, se = est.mean(0), est.std(0) / math.sqrt(R)
    z = (mean - truth) / se
    assert bool((z.abs() < k).all()), f"z-scores {z.tolist()} (mean {mean.tolist()}, " \
                                      f"truth {truth.tolist()}, se {se.tolist()})"


# ------------------------------------------------------------------ smoothers vs RTS

R, N = 32, 128

SMOOTHERS = {
    "ffbsm": lambda g: ffbsm(FK, H, N, batch_shape=(R,), generator=g),
    "ffbsi-exact": lambda g: ffbsi(FK, H, N, batch_shape=(R,), generator=g),
    "ffbsi-rejection": lambda g: ffbsi(FK, H, N, backward="rejection", batch_shape=(R,),
                                       generator=g),
    "ffbsi-imh": lambda g: ffbsi(FK, H, N, backward="imh", batch_shape=(R,), generator=g),
    "paris-exact": lambda g: paris(FK, H, N, backward="exact", batch_shape=(R,), generator=g),
    "paris-imh": lambda g: paris(FK, H, N, backward="imh", batch_shape=(R,), generator=g),
    "paris-rejection": lambda g: paris(FK, H, N, backward="rejection", batch_shape=(R,),
                                       generator=g),
    "paris-hybrid": lambda g: paris(FK, H, N, backward=RejectionBackward(max_trials=2),
                                    batch_shape=(R,), generator=g),
    # IMH after systematic / skipped resampling starts from a point that is not a draw from
    # the backward kernel (not exact); three steps make its bias negligible at this size.
    "paris-imh-systematic": lambda g: paris(
        FK, H, N, backward=IMHBackward(num_steps=3), batch_shape=(R,),
        resampling="systematic", resample="adaptive", generator=g),
}


@pytest.mark.parametrize("name", list(SMOOTHERS))
def test_smoothed_additive_expectations_match_rts(name):
    seed = 100 + list(SMOOTHERS).index(name)
    est = SMOOTHERS[name](gen(seed))
    assert est.shape == (R, 2) and est.dtype == torch.float64
    assert_matches_truth(est)


def test_float32_and_two_batch_dims():
    fk, truth = setup(torch.float32)
    est = paris(fk, H, N, batch_shape=(4, 8), generator=gen(7))
    assert est.shape == (4, 8, 2) and est.dtype == torch.float32
    assert_matches_truth(est.reshape(32, 2).double(), truth.double())


def test_paris_two_backward_draws_reduce_variance():
    # K = 1: variance grows quadratically in n; K = 2: linearly (Olsson & Westerborn 2017).
    # Exact (accept-reject) draws, independent runs; the lower 1 - ALPHA confidence bound of
    # Var(K=1) / Var(K=2) from the F distribution must exceed 2.
    Rv = 128
    e1 = paris(FK, H, N, num_backward=1, backward="rejection", batch_shape=(Rv,),
               generator=gen(11))
    e2 = paris(FK, H, N, num_backward=2, backward="rejection", batch_shape=(Rv,),
               generator=gen(12))
    ratio = e1.var(0) / e2.var(0)
    lower = ratio / stats.f.ppf(1 - ALPHA, Rv - 1, Rv - 1)
    assert bool((lower > 2).all()), f"variance ratio {ratio.tolist()}, lower bound {lower}"


def test_ffbsm_deterministic_and_chunking_invariant():
    a = ffbsm(FK, H, 16, batch_shape=(3,), generator=gen(5))
    b = ffbsm(FK, H, 16, batch_shape=(3,), generator=gen(5))
    assert torch.equal(a, b)
    c = ffbsm(FK, H, 16, batch_shape=(3,), generator=gen(5), chunk_size=5)
    torch.testing.assert_close(a, c)


# ---------------------------------------------------------------- backward samplers


def _fixed_system(seed: int, copies: int):
    g = gen(seed)
    Np = 6
    x_prev = torch.randn(Np, 1, generator=g, dtype=torch.float64) * 1.5
    log_w = torch.randn(Np, generator=g, dtype=torch.float64)
    rows = torch.tensor([[-1.0], [0.3], [2.0]], dtype=torch.float64)
    x = rows.repeat_interleave(copies, 0)  # [3 * copies, 1]
    lam = backward_log_kernel(FK, 1, x_prev, log_w, rows).exp()  # [3, Np]
    return x_prev, log_w, x, lam


def _exact_ancestors(lam: torch.Tensor, copies: int, seed: int) -> torch.Tensor:
    return torch.multinomial(lam, copies, replacement=True, generator=gen(seed)).reshape(-1)


def _chi2_pvalues(J: torch.Tensor, lam: torch.Tensor, copies: int) -> list[float]:
    out = []
    for r in range(lam.shape[0]):
        counts = torch.bincount(J[r * copies:(r + 1) * copies], minlength=lam.shape[1])
        expected = copies * lam[r]
        keep = expected > 0
        out.append(float(stats.chisquare(counts[keep].double().numpy(),
                                         expected[keep].numpy()).pvalue))
    return out


SAMPLERS = {
    "exact": ExactBackward(),
    "exact-chunked": ExactBackward(chunk_size=1000),
    "imh": IMHBackward(),
    "imh-3": IMHBackward(num_steps=3),
    "rejection": RejectionBackward(),
    "rejection-fallback-only": RejectionBackward(max_trials=0),
    "hybrid": RejectionBackward(max_trials=1),
    "rejection-N": RejectionBackward(max_trials=6),  # particles' rule max_trials = N
    # a loose bound (acceptance / 20): many draws pending, so rounds of several trials each
    "rejection-loose-bound": RejectionBackward(
        max_trials=200, log_m_bound=float(transition_log_bound(FK, 1)) + 3.0),
}


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_backward_sampler_law_matches_kernel_row(name):
    copies = 20_000
    seed = 300 + list(SAMPLERS).index(name)
    x_prev, log_w, x, lam = _fixed_system(seed, copies)
    anc = _exact_ancestors(lam, copies, seed + 1)  # exact starts for IMH
    J = SAMPLERS[name](FK, 1, x_prev, log_w, x, 1, ancestors=anc, generator=gen(seed + 2))
    assert J.shape == (3 * copies, 1) and J.dtype == torch.long
    assert all(p > ALPHA for p in _chi2_pvalues(J[:, 0], lam, copies))


def test_backward_samplers_batched_and_several_draws():
    g = gen(3)
    x_prev = torch.randn(2, 5, 10, 1, generator=g, dtype=torch.float64)
    log_w = torch.randn(2, 5, 10, generator=g, dtype=torch.float64)
    x = torch.randn(2, 5, 7, 1, generator=g, dtype=torch.float64)
    anc = torch.randint(0, 10, (2, 5, 7), generator=g)
    for s in SAMPLERS.values():
        J = s(FK, 1, x_prev, log_w, x, 3, ancestors=anc, generator=gen(4))
        assert J.shape == (2, 5, 7, 3) and int(J.min()) >= 0 and int(J.max()) < 10


def test_imh_from_a_poor_start_is_detected():
    # The chi-square test has power: one IMH step from a Cat(W) start is not exact.
    copies = 20_000
    x_prev, log_w, x, lam = _fixed_system(400, copies)
    J = IMHBackward(1)(FK, 1, x_prev, log_w, x, 1, generator=gen(401))
    assert min(_chi2_pvalues(J[:, 0], lam, copies)) < ALPHA


# --------------------------------------------------------------------------- errors


class NoDensity:
    T = 3

    def M0(self, N, batch_shape, generator):
        return torch.zeros(*batch_shape, N, 1)

    def M(self, t, x_prev, generator):
        return x_prev

    def log_G(self, t, x_prev, x):
        return torch.zeros(x.shape[:-1])


def test_bad_arguments_raise():
    with pytest.raises(TypeError, match="functional"):
        paris(FK, object(), 8)
    with pytest.raises(ValueError, match="num_backward"):
        paris(FK, H, 8, num_backward=0)
    with pytest.raises(ValueError, match="unknown backward sampler"):
        paris(FK, H, 8, backward="nope")
    with pytest.raises(TypeError, match="log_m"):
        paris(NoDensity(), H, 8)
    with pytest.raises(ValueError, match="num_steps"):
        IMHBackward(0)
    with pytest.raises(ValueError, match="max_trials"):
        RejectionBackward(max_trials=-1)
    with pytest.raises(TypeError, match="bound"):
        transition_log_bound(NoDensity(), 1)
    x = torch.zeros(4, 1, dtype=torch.float64)
    with pytest.raises(ValueError, match="ancestors"):
        get_backward_sampler("imh")(FK, 1, x, torch.zeros(4, dtype=torch.float64), x, 1,
                                    ancestors=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="x must be"):
        ExactBackward()(FK, 1, x, torch.zeros(4, dtype=torch.float64), torch.zeros(4, 2), 1)


def test_gaussian_bound_is_a_bound():
    b = float(transition_log_bound(FK, 1))
    assert b == pytest.approx(-0.5 * math.log(2 * math.pi))
    x = torch.linspace(-3, 3, 50, dtype=torch.float64).reshape(50, 1)
    lm = FK.log_m(1, x.unsqueeze(0), x.unsqueeze(1))
    assert float(lm.max()) <= b + 1e-12
