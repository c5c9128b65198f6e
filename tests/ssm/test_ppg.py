"""PaRIS particle Gibbs: exact invariance on a binary HMM, bias against PaRIS on the LGSSM.

Invariance (as tests/core/test_csmc.py): C chains started at independent exact posterior
draws of the note's binary HMM (§6), one PPG sweep each; the new frozen paths are then C
independent exact posterior draws, so their counts are Multinomial(C, posterior) exactly and
a chi-square test against the enumerated posterior is exact (threshold ALPHA). A sweep whose
backward draws are not exact must fail the same test.

Bias: on the AR(1) LGSSM (sigma_y = 1, T = 50) with the RTS truth. Budget = particle
trajectories propagated through the T steps, each with K = 2 backward draws per step:
PPG(N, k0, k) costs N (1 + k0 + k) (one filter run for the first frozen path, k0 burn-in and
k averaged CSMC sweeps); PaRIS gets the same N (1 + k0 + k) particles in one run.
"""

from __future__ import annotations

import math

import pytest
import torch
from binary_hmm import BinaryHMM, chi2_pvalue, posterior, posterior_draws
from helpers import gen

from smcdiff.ssm import LinearGaussian, lgssm_data, rts_smoother
from smcdiff.ssm.backward import IMHBackward, RejectionBackward
from smcdiff.ssm.ppg import initial_path, ppg, ppg_run, ppg_sweep
from smcdiff.ssm.smoothing import Additive, paris

ALPHA = 1e-4
C = 20_000


# ---------------------------------------------------------------- binary HMM (note §6)


# h = number of (x_{t-1}, x_t) = (1, 1) pairs plus x_0, shape [1].
HMM_H = Additive(lambda t, xp, x: (xp * x).unsqueeze(-1), lambda x0: x0.unsqueeze(-1))

BACKWARD = {
    "exact": "exact",
    "imh": "imh",
    "rejection": RejectionBackward(log_m_bound=math.log(0.8)),
}


@pytest.mark.parametrize("K", [1, 2])
@pytest.mark.parametrize("name", list(BACKWARD))
def test_ppg_sweep_leaves_posterior_invariant(name, K):
    seed = 10 * list(BACKWARD).index(name) + K
    ref = posterior_draws((C,), seed)
    est, new = ppg_sweep(BinaryHMM(), HMM_H, ref, 3, num_backward=K, backward=BACKWARD[name],
                         batch_shape=(C,), generator=gen(seed + 100))
    assert new.shape == ref.shape and est.shape == (C, 1)
    assert chi2_pvalue(new) > ALPHA


def test_ppg_sweep_estimate_is_unbiased_at_stationarity():
    # Started at the posterior, the sweep estimate averages h over the posterior exactly.
    p = posterior()
    codes = torch.arange(8)
    x = torch.stack([(codes >> 2) & 1, (codes >> 1) & 1, codes & 1]).double()
    truth = float((p * (x[0] + x[0] * x[1] + x[1] * x[2])).sum())
    est, _ = ppg_sweep(BinaryHMM(), HMM_H, posterior_draws((C,), 7), 3, batch_shape=(C,),
                       generator=gen(8))
    z = (float(est.mean()) - truth) / (float(est.std()) / math.sqrt(C))
    assert abs(z) < 4


class _NoStart(IMHBackward):
    """IMH that ignores the ancestors (one step from a Cat(W) draw): not an exact draw."""

    def __call__(self, *args, ancestors=None, **kw):
        return super().__call__(*args, ancestors=None, **kw)


def test_inexact_backward_draws_break_invariance():
    ref = posterior_draws((C,), 50)
    _, new = ppg_sweep(BinaryHMM(), HMM_H, ref, 3, num_backward=1, backward=_NoStart(),
                       batch_shape=(C,), generator=gen(51))
    assert chi2_pvalue(new) < ALPHA


# ------------------------------------------------------------------- LGSSM: bias


def _lg():
    T = 50
    y = lgssm_data(1.0, T=T).y
    model = LinearGaussian.ar1(0.9, 1.0, 1.0)
    sm = rts_smoother(model, y)
    m, P, Cl = sm.smoothed_mean[:, 0], sm.smoothed_cov[:, 0, 0], sm.lag_one_cov[:, 0, 0]
    truth = torch.stack([(Cl + m[:-1] * m[1:]).sum(), (P + m * m).sum()])
    return model.bootstrap(y), truth


def _step(t, x_prev, x):
    a = x_prev * x
    return torch.cat([a, (x * x).expand_as(a)], -1)


LG_H = Additive(_step, lambda x0: torch.cat([torch.zeros_like(x0), x0 * x0], -1))


def test_ppg_has_lower_bias_than_paris_at_equal_budget():
    # PPG(N=8, k0=8, k=2) vs PaRIS with N (1 + k0 + k) = 88 particles, both K = 2 with the
    # default IMH backward sampler, R independent seeds (batch). One-sided z-test of
    # |bias(PaRIS)| - |bias(PPG)| > 0 at z > 3, per component; PaRIS's bias is itself
    # significant (its O(T / N) bias at this budget), so the comparison is not vacuous.
    fk, truth = _lg()
    R, N, k0, k = 3000, 8, 8, 2
    res = ppg_run(fk, LG_H, N, num_sweeps=k, burn_in=k0, batch_shape=(R,), generator=gen(1))
    assert res.sweep_estimates.shape == (k0 + k, R, 2) and res.path.shape == (50, R, 1)
    e_ppg = res.estimate
    e_paris = paris(fk, LG_H, N * (1 + k0 + k), batch_shape=(R,), generator=gen(2))
    b1, s1 = e_ppg.mean(0) - truth, e_ppg.std(0) / math.sqrt(R)
    b2, s2 = e_paris.mean(0) - truth, e_paris.std(0) / math.sqrt(R)
    assert bool((b2 / s2 < -4).all()), f"PaRIS bias z {(b2 / s2).tolist()}"
    z = (b2.abs() - b1.abs()) / (s1**2 + s2**2).sqrt()
    assert bool((z > 3).all()), f"z {z.tolist()}, bias PPG {b1.tolist()}, PaRIS {b2.tolist()}"


def test_ppg_api_shapes_and_initial_path():
    fk, truth = _lg()
    path = initial_path(fk, 16, batch_shape=(2, 3), generator=gen(3))
    assert path.shape == (50, 2, 3, 1)
    est = ppg(fk, LG_H, 16, num_sweeps=2, burn_in=1, batch_shape=(2, 3), init_path=path,
              generator=gen(4))
    assert est.shape == (2, 3, 2) and bool(torch.isfinite(est).all())
    with pytest.raises(ValueError, match="burn_in"):
        ppg(fk, LG_H, 16, burn_in=-1)
    with pytest.raises(ValueError, match="num_sweeps"):
        ppg(fk, LG_H, 16, num_sweeps=0)
    with pytest.raises(ValueError, match="num_backward"):
        ppg(fk, LG_H, 16, num_backward=0)
