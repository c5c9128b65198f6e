"""FK steering, the twisted diffusion sampler and the rewards (notes feynman-kac-correctors.md
§5, §6, §8.6-8.7).

Exact truth: Gaussian data N(mu, Sigma) with the exact model, particles started from the exact
p_1, linear reward r = a.x. With exact reverse kernels as the proposal the base sampler is
exact, so every potential must give N(mu + lam Sigma a, Sigma) and E[Z_hat] =
E[exp(lam a.x0)] = exp(lam a.mu + lam^2 a.Sigma a / 2). With a DDPM proposal the base law is
the sampler's own, which on Gaussian data is an exactly computable Gaussian (the solver's
transition is affine), so the steered target is its exact tilt: no discretisation bias to
allow for. Statistics: B independent runs (the batch axis); per-run weighted estimates; 4
standard errors of their mean.
"""

from __future__ import annotations

import math

import pytest
import torch

import smcdiff as sd
from smcdiff.diffusion.solvers import prepare_grid, transition
from smcdiff.fk.rewards import (
    Bumps,
    LinearGaussianLogLik,
    LinearReward,
    NegSquaredDistance,
)
from smcdiff.fk.steering import (
    POTENTIALS,
    FKSteering,
    ManySample,
    TwistedDiffusion,
    potential_update,
)
from smcdiff.gaussian import Gaussian, GaussianMixture, linear_gaussian_tilt, linear_tilt

F64 = torch.float64
PROC = sd.diffusion.VP()
MU = torch.tensor([0.5, -1.0], dtype=F64)
SIGMA = torch.tensor([[1.0, 0.3], [0.3, 0.5]], dtype=F64)
DATA = Gaussian(MU, SIGMA)
A = torch.tensor([1.0, -0.5], dtype=F64)
P1 = DATA.marginal(1.0, PROC)  # exact law at the first grid time (VP t_max = 1)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _se(v: torch.Tensor) -> torch.Tensor:
    return v.std(0) / math.sqrt(v.shape[0])


def _moments(out) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-run weighted mean [B, d] and covariance [B, d, d] of the final samples; the
    covariance divided by 1 - sum W^2 (reliability weights), which removes the plug-in bias
    -cov / ESS of a weighted covariance around its own weighted mean."""
    mean = out.mean(lambda p: p.x)
    m2 = out.mean(lambda p: p.x.unsqueeze(-1) * p.x.unsqueeze(-2))
    W = out.weights
    shrink = (1.0 - (W * W).sum(-1)).reshape(-1, 1, 1)
    return mean, (m2 - mean.unsqueeze(-1) * mean.unsqueeze(-2)) / shrink


def _assert_matches(out, law: Gaussian, log_z: torch.Tensor, k: float = 4.0) -> None:
    """Weighted mean and covariance within k SE of ``law``; Z_hat / Z within k SE of 1."""
    mean, cov = _moments(out)
    dm = (mean.mean(0) - law.mean).abs()
    assert torch.all(dm <= k * _se(mean)), (dm, _se(mean))
    dc = (cov.mean(0) - law.cov).abs()
    assert torch.all(dc <= k * _se(cov)), (dc, _se(cov))
    zr = torch.exp(out.log_z - log_z)  # E[Z_hat] = Z (unbiased)
    assert abs(float(zr.mean()) - 1.0) <= k * float(_se(zr)), (float(zr.mean()), float(_se(zr)))


def sampler_law(K: int, solver: str = "ddpm") -> Gaussian:
    """Exact law of the base sampler's output on Gaussian data from x ~ p_1 (logsnr grid,
    final denoise): every step is affine in x plus Gaussian noise."""
    model = DATA.model(PROC)
    g = prepare_grid(PROC, sd.diffusion.time_grid(PROC, K))
    m, C = P1.mean.clone(), P1.cov.clone()
    eye = torch.eye(2, dtype=F64)
    for i in range(K):
        tr = transition(model, solver, torch.cat([m[None], m[None] + eye]), None, i, g)
        Amap = (tr.mean[1:] - tr.mean[:1]).T
        m, C = tr.mean[0], Amap @ C @ Amap.T + float(tr.std) ** 2 * eye
    return Gaussian(m, 0.5 * (C + C.T))


# --------------------------------------------------------------------------- FK steering


@pytest.mark.parametrize("potential", POTENTIALS)
def test_every_potential_recovers_the_exact_tilt_with_exact_kernels(potential):
    """Note §8.6: exact reverse kernels (so p_theta = p), rewards at steps 10 and 15 of 20:
    each potential gives N(mu + lam Sigma a, Sigma) and log Z = lam a.mu + lam^2 a.Sigma a/2."""
    lam = 1.0
    truth = linear_tilt(DATA, A * lam)
    m = FKSteering(DATA.model(PROC), LinearReward(A), lam, event_shape=(2,), potential=potential,
                   proposal=DATA, num_steps=20, reward_steps=[10, 15], prior=P1)
    out = sd.smc(m, 256, batch_shape=(64,), resample=m.resample_steps, generator=_gen(1))
    assert out.nfe == 2  # two Tweedie evaluations; the exact kernels cost no network calls
    exact_log_z = lam * A @ MU + 0.5 * lam**2 * A @ SIGMA @ A
    torch.testing.assert_close(truth.log_z, exact_log_z)
    _assert_matches(out, truth.distribution, exact_log_z)
    # prod G = exp(lam r(x0)) along every surviving path (the final-step correction)
    r = LinearReward(A)(out.particles.x)
    torch.testing.assert_close(out.particles.log_pg, lam * r, rtol=1e-12, atol=1e-10)


class _NoFinalCorrection:
    """The bug on purpose: at the last step use exp(lam r(x0)) without dividing by the
    product of the earlier potentials."""

    def __init__(self, inner: FKSteering) -> None:
        self.inner, self.T = inner, inner.T

    def M0(self, *args):
        return self.inner.M0(*args)

    def M(self, *args):
        return self.inner.M(*args)

    def log_G(self, t, x_prev, x):
        lg = self.inner.log_G(t, x_prev, x)
        return lg + x_prev.log_pg if t == self.T - 1 else lg


@pytest.mark.parametrize("potential", ["max", "sum", "last"])
def test_dropping_the_final_correction_breaks_the_target(potential):
    """Without the correction prod G = exp(lam (r(x0) + sum of earlier potentials)): the final
    mean misses N(mu + lam Sigma a, Sigma) by many standard errors."""
    truth = linear_tilt(DATA, A)
    m = FKSteering(DATA.model(PROC), LinearReward(A), 1.0, event_shape=(2,), potential=potential,
                   proposal=DATA, num_steps=20, reward_steps=[5, 10, 15], prior=P1)
    out = sd.smc(_NoFinalCorrection(m), 256, batch_shape=(32,), resample=m.resample_steps,
                 generator=_gen(1))
    mean, _ = _moments(out)
    z = (mean.mean(0) - truth.distribution.mean) / _se(mean)
    assert float(z.abs().max()) > 8, z


@pytest.mark.parametrize("potential,resample", [
    ("diff", "steps"), ("max", "steps"), ("sum", "steps"), ("last", "steps"),
    ("diff", "ess-at-steps"), ("max", "adaptive"),
])
def test_ddpm_proposal_recovers_the_tilt_of_the_sampler_law(potential, resample):
    """DDPM (DDIM eta = 1) proposal, 10 steps, rewards every 4 steps: the target is the exact
    tilt of the sampler's own Gaussian law. Adaptive resampling (ESS-triggered, the reference
    code's issue #12 branch) must give the same answer because weights and the running
    statistics are accumulated at every step. Tweedie estimates are reused by the next step, so
    the NFE equal the base sampler's (10) and the model's own call counter."""
    K = 10
    law = sampler_law(K)
    truth = linear_tilt(law, A)
    model = DATA.model(PROC)
    m = FKSteering(model, LinearReward(A), 1.0, event_shape=(2,), potential=potential,
                   num_steps=K, every=4, prior=P1)
    assert sorted(m.reward_steps) == [4, 8]
    trig = {"steps": m.resample_steps, "ess-at-steps": m.trigger(0.75),
            "adaptive": "adaptive"}[resample]
    model.reset_nfe()
    out = sd.smc(m, 512, batch_shape=(32,), resample=trig, generator=_gen(2))
    assert out.nfe == K and model.nfe == K
    _assert_matches(out, truth.distribution, truth.log_z)
    if resample == "ess-at-steps":  # resampled at some reward steps only, never elsewhere
        rows = out.resampled.any(-1).nonzero().flatten().tolist()
        assert rows and set(rows) <= m.resample_steps


def test_multistep_solver_history_travels_with_the_particles():
    """SDE-DPM-Solver++(2M) keeps the previous data prediction in its History, which is part of
    the particle state and resampled with it. 40 steps, rewards every 10: the tilt of the data
    law within 4 SE plus 0.02 (its second-order sampler bias, ~0.005 here); NFE = 40."""
    truth = linear_tilt(DATA, A)
    model = DATA.model(PROC)
    m = FKSteering(model, LinearReward(A), 1.0, event_shape=(2,), num_steps=40, every=10,
                   proposal="sde-dpmsolver++2m", prior=P1)
    model.reset_nfe()
    out = sd.smc(m, 512, batch_shape=(16,), resample=m.resample_steps, generator=_gen(12))
    assert out.nfe == 40 and model.nfe == 40
    assert out.particles.history.outputs[0].shape == out.particles.x.shape
    mean, _ = _moments(out)
    assert torch.all((mean.mean(0) - truth.distribution.mean).abs() <= 4 * _se(mean) + 0.02)
    assert abs(float(out.log_z.mean() - truth.log_z)) <= 4 * float(_se(out.log_z)) + 0.02


def test_sampler_law_bias_shrinks_with_the_number_of_steps():
    """The steered target is p_theta exp(lam r) for the *sampler's* law; its distance to the
    data law (DDPM, logsnr grid) shrinks about like 1/K."""
    errs = [float((sampler_law(K).cov - SIGMA).norm()) for K in (10, 20, 40)]
    assert errs[0] > errs[1] > errs[2] > 0
    assert 0.6 < math.log(errs[0] / errs[2]) / math.log(4) < 1.2, errs


def test_many_sample_estimate_keeps_the_target_and_counts_nfe():
    """The many-sample reward changes only the intermediate potentials: with exact draws
    x0 ~ p(x0 | x_t) the target is still N(mu + lam Sigma a, Sigma). The default draw (a short
    DDPM chain) is counted as num * steps NFE per particle and reward step."""
    lam = 1.0
    truth = linear_tilt(DATA, A * lam)

    def exact_draws(x, t, num, gen):
        return torch.stack([DATA.sample_reverse(x, t, 0.0, PROC, gen) for _ in range(num)])

    est = ManySample(num=3, sampler=exact_draws)
    m = FKSteering(DATA.model(PROC), LinearReward(A), lam, event_shape=(2,), potential="max",
                   proposal=DATA, num_steps=20, reward_steps=[5, 10, 15], estimate=est,
                   prior=P1)
    out = sd.smc(m, 256, batch_shape=(32,), resample=m.resample_steps, generator=_gen(3))
    _assert_matches(out, truth.distribution, truth.log_z)

    model = DATA.model(PROC)
    m2 = FKSteering(model, LinearReward(A), lam, event_shape=(2,), num_steps=8,
                    reward_steps=[2, 5], estimate=ManySample(num=3, steps=2), prior=P1)
    model.reset_nfe()
    out2 = sd.smc(m2, 16, batch_shape=(2,), resample=m2.resample_steps, generator=_gen(4))
    assert out2.nfe == 8 + 2 * 3 * 2  # moves + (reward steps) x num x steps
    assert model.nfe == 8 + 2 * 2  # network calls: each chain step evaluates all draws at once


def test_float32_particles_and_batch_shapes():
    """float32 data: particles stay float32, log-potentials float64; 2-D batch shape."""
    d32 = Gaussian(MU.float(), SIGMA.float())
    m = FKSteering(d32.model(PROC), LinearReward(A.float()), 1.0, event_shape=(2,), num_steps=6,
                   every=2, prior=d32.marginal(1.0, PROC))
    out = sd.smc(m, 64, batch_shape=(3, 2), resample=m.resample_steps, generator=_gen(5))
    assert out.particles.x.dtype == torch.float32 and out.particles.x.shape == (3, 2, 64, 2)
    assert out.log_w.dtype == F64 and out.log_z.shape == (3, 2)
    assert torch.isfinite(out.log_z).all()


def test_potential_update_table():
    r = torch.tensor([1.0, -2.0], dtype=F64)
    prev = torch.tensor([0.5, 0.5], dtype=F64)
    stat = torch.tensor([0.0, -1.0], dtype=F64)
    torch.testing.assert_close(potential_update("diff", 2.0, r, prev, stat)[0], 2 * (r - prev))
    lg, m = potential_update("max", 2.0, r, prev, stat)
    torch.testing.assert_close(m, torch.tensor([1.0, -1.0], dtype=F64))
    torch.testing.assert_close(lg, 2 * m)
    lg, s = potential_update("sum", 2.0, r, prev, stat)
    torch.testing.assert_close(s, stat + r)
    torch.testing.assert_close(potential_update("last", 2.0, r, prev, stat)[0], 2 * r)


def test_bad_inputs_raise():
    model = DATA.model(PROC)
    kw = dict(event_shape=(2,), num_steps=5)
    with pytest.raises(ValueError, match="unknown potential"):
        FKSteering(model, LinearReward(A), 1.0, potential="mean", **kw)
    with pytest.raises(ValueError, match="stochastic"):
        FKSteering(model, LinearReward(A), 1.0, proposal="ddim", **kw)
    with pytest.raises(ValueError, match="lam"):
        FKSteering(model, LinearReward(A), 0.0, **kw)
    with pytest.raises(ValueError, match="reward_steps"):
        FKSteering(model, LinearReward(A), 1.0, reward_steps=[5], **kw)
    with pytest.raises(ValueError, match="exactly one of grid"):
        FKSteering(model, LinearReward(A), 1.0, event_shape=(2,))
    with pytest.raises(TypeError, match="DiffusionModel"):
        FKSteering(object(), LinearReward(A), 1.0, **kw)
    bad = FKSteering(model, lambda x: x.sum(), 1.0, every=1, **kw)  # a scalar, not [*batch, N]
    with pytest.raises(ValueError, match="reward returned shape"):
        sd.smc(bad, 8, generator=_gen(0))
    with pytest.raises(ValueError, match="one-evaluation solver without history"):
        TwistedDiffusion(model, LinearReward(A), event_shape=(2,), num_steps=5,
                         proposal="sde-dpmsolver++2m")
    with pytest.raises(ValueError, match="stochastic"):
        TwistedDiffusion(model, LinearReward(A), event_shape=(2,), num_steps=5, proposal="ddim")
    nograd = FKSteering(model, LinearReward(A), 1.0, **kw)  # gradient-free rewards are fine
    assert nograd.nfe(0) == 0
    detached = TwistedDiffusion(model, lambda x: LinearReward(A)(x.detach()), event_shape=(2,),
                                num_steps=5)
    with pytest.raises(TypeError, match="differentiable"):
        sd.smc(detached, 8, generator=_gen(0))


# --------------------------------------------------------------------------- TDS


def test_tds_recovers_the_linear_gaussian_posterior_and_evidence():
    """Note §8.7: y = a.x0 + tau noise. TDS (DDPM proposal twisted by grad log p(y | x0_hat),
    20 steps, resampling every step) gives the exact posterior of the sampler's law and the
    evidence log N(y; a.m, tau^2 + a.C a) (m, C: that law; the data law as K grows)."""
    K, tau = 20, 0.8
    y = torch.tensor([1.5], dtype=F64)
    law = sampler_law(K)
    post = linear_gaussian_tilt(law, A, y, tau)
    evidence = post.log_z - 0.5 * math.log(2 * math.pi * tau**2)
    v = tau**2 + A @ law.cov @ A
    exact = -0.5 * (math.log(2 * math.pi * v) + (y[0] - A @ law.mean) ** 2 / v)
    torch.testing.assert_close(evidence, exact)
    model = DATA.model(PROC)
    m = TwistedDiffusion(model, LinearGaussianLogLik(A, y, tau), event_shape=(2,), num_steps=K,
                         prior=P1)
    model.reset_nfe()
    out = sd.smc(m, 512, batch_shape=(32,), resample="always", generator=_gen(6))
    assert out.nfe == K and model.nfe == K  # one Tweedie (+ backward) per state but the last
    _assert_matches(out, post.distribution, evidence)


def test_tds_weights_correct_the_twisted_proposal():
    """Without its weights the twisted proposal is not the posterior (the twist over-steers
    at high noise); with them it is (same runs, resample="never" = importance sampling)."""
    K, tau = 20, 0.8
    y = torch.tensor([1.5], dtype=F64)
    post = linear_gaussian_tilt(sampler_law(K), A, y, tau).distribution
    m = TwistedDiffusion(DATA.model(PROC), LinearGaussianLogLik(A, y, tau), event_shape=(2,),
                         num_steps=K, prior=P1)
    out = sd.smc(m, 512, batch_shape=(32,), resample="never", generator=_gen(7))
    plain = out.particles.x.mean(-2)
    weighted = out.mean(lambda p: p.x)
    assert float(((plain.mean(0) - post.mean) / _se(plain)).abs().max()) > 8
    assert float(((weighted.mean(0) - post.mean) / _se(weighted)).abs().max()) < 4


# --------------------------------------------------------------------------- vs best-of-N


def _gmm_problem():
    gmm = GaussianMixture(torch.tensor([0.45, 0.45, 0.1], dtype=F64),
                          torch.tensor([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.5]], dtype=F64),
                          0.3 * torch.eye(2, dtype=F64).expand(3, 2, 2).clone())
    reward = Bumps(torch.tensor([[0.5, 3.0], [-2.5, -1.0]], dtype=F64),
                   torch.tensor([1.0, 0.6], dtype=F64), width=0.35)
    return gmm.model(PROC), reward


def test_steering_and_tds_beat_best_of_n_at_equal_nfe():
    """2-D GMM, two narrow reward bumps (one beside the 10% mode). Budget: N = 8 samples of
    20 DDPM steps (160 NFE per run). Best-of-N returns the best of 8 independent samples; FK
    steering (DIFF, lam = 10, Tweedie rewards and resampling every step) and TDS (lam = 10,
    resampling every step) return the best of their 8 final particles, for the same NFE. Over
    256 independent runs the mean returned reward is higher (Welch z > 3)."""
    model, reward = _gmm_problem()
    K, N, B, lam = 20, 8, 256, 10.0
    bon = sd.diffusion.sample(model, "ddpm", num_steps=K, shape=(B, N, 2), generator=_gen(8))
    r_bon = reward(bon.x).amax(-1)
    fk = FKSteering(model, reward, lam, event_shape=(2,), num_steps=K)
    out_fk = sd.smc(fk, N, batch_shape=(B,), resample=fk.resample_steps, generator=_gen(9))
    tds = TwistedDiffusion(model, reward, lam, event_shape=(2,), num_steps=K)
    out_tds = sd.smc(tds, N, batch_shape=(B,), resample="always", generator=_gen(10))
    assert bon.nfe == out_fk.nfe == out_tds.nfe == K
    for out in (out_fk, out_tds):
        r = reward(out.particles.x).amax(-1)
        z = (r.mean() - r_bon.mean()) / torch.sqrt(_se(r) ** 2 + _se(r_bon) ** 2)
        assert float(z) > 3, (float(r.mean()), float(r_bon.mean()), float(z))


# --------------------------------------------------------------------------- rewards


def test_rewards_values_shapes_and_gradients():
    x = torch.randn(3, 5, 2, generator=_gen(11), dtype=F64)
    torch.testing.assert_close(LinearReward(A)(x), x @ A)
    c = torch.tensor([[0.0, 1.0], [2.0, -1.0]], dtype=F64)
    d2 = ((x.unsqueeze(-2) - c) ** 2).sum(-1)
    torch.testing.assert_close(NegSquaredDistance(c, scale=2.0)(x), -d2.amin(-1) / 8.0)
    torch.testing.assert_close(NegSquaredDistance(c[0])(x), -d2[..., 0] / 2.0)
    y = torch.tensor([0.3, -0.2], dtype=F64)
    Am = torch.tensor([[1.0, 0.5], [0.0, 2.0]], dtype=F64)
    ref = torch.distributions.Normal(x @ Am.T, 0.7).log_prob(y).sum(-1)
    torch.testing.assert_close(LinearGaussianLogLik(Am, y, 0.7)(x), ref)
    bumps = Bumps(c, torch.tensor([1.0, 0.5], dtype=F64), width=0.5)
    b = torch.tensor([1.0, 0.5], dtype=F64) * torch.exp(-d2 / 0.5)
    torch.testing.assert_close(bumps(x), b.amax(-1))
    soft = Bumps(c, torch.tensor([1.0, 0.5], dtype=F64), width=0.5, softness=0.1)
    assert torch.all(soft(x) >= bumps(x)) and torch.all(soft(x) <= bumps(x) + 0.1 * math.log(2))
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(LinearReward(A)(xr).sum(), xr)
    torch.testing.assert_close(g, A.expand_as(x))
    assert LinearReward(A)(x.float()).dtype == torch.float32
    with pytest.raises(ValueError, match="event shape"):
        LinearReward(A)(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="noise_std"):
        LinearGaussianLogLik(Am, y, 0.0)
    with pytest.raises(ValueError, match="y must have"):
        LinearGaussianLogLik(Am, torch.zeros(3), 1.0)
